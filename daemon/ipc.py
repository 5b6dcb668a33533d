"""Server side of the JSON-RPC transport: framing, peer checks, timeouts, back-pressure.

Runs in: the dispatcher (the only process that serves the socket). The
supervisor binds the listening socket (:func:`bind`) and the dispatcher
inherits it across the fork, so a dispatcher restart never drops the socket.

Framing is newline-delimited JSON, parsed strictly (:func:`client.protocol.loads`:
no NaN/Infinity, at most ``MAX_DEPTH`` levels). A line longer than ``MAX_FRAME``
is answered with ``frame_too_large`` and skipped; the connection stays usable.
Only peers with the socket owner's uid (``SO_PEERCRED``) are served.

No client can starve the others:

- A connection must send its first request within ``server.first_request_timeout``,
  a half-sent frame must complete within ``server.request_timeout``, and an idle
  client is closed after ``server.idle_timeout``. Role connections (reaper,
  notifier) and followers are never timed out for idleness.
- When ``server.max_clients`` connections are open, a newcomer evicts the
  longest-idle connection that is neither a role nor a follower; only if there
  is none is the newcomer refused.
- A client that does not read its replies stops being read: once its unsent
  output reaches ``HIGH_WATER`` its socket is no longer polled for input and no
  more of its requests are served, until the output drains below ``LOW_WATER``.
  Within a batch a :class:`Budget` defers its requests instead of answering them.
  Above ``TOTAL_HIGH_WATER`` buffered in all, every client gets at most one
  unread answer at a time; past ``TOTAL_LIMIT`` the largest non-role backlogs are
  dropped, as is any single connection past ``WBUF_LIMIT``.
- Input is read at most ``RECV_MAX`` bytes and ``PER_TURN`` requests per
  connection per loop turn; the rest waits in the connection's buffer.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

import structlog

from client.protocol import INT64_MAX, INT64_MIN, MAX_FRAME, FrameError, RPCError, loads, text_problem
from client.rpc import check_socket_path
from daemon import fsguard

log = structlog.get_logger()

WBUF_LIMIT = 16 << 20  # one connection's unsent output past this: dropped (a follower far behind)
HIGH_WATER = 1 << 20  # one connection's unsent output at this: stop reading and serving it
LOW_WATER = 256 << 10  # ... and resume below this
TOTAL_HIGH_WATER = 32 << 20  # all connections' unsent output past this: one unread answer each
TOTAL_LIMIT = 256 << 20  # ... past this: drop the largest non-role backlogs
RECV_MAX = 256 << 10  # bytes read from one connection per loop turn
PER_TURN = 1000  # requests taken from one connection per loop turn
SWEEP_MAX = 5.0  # seconds between timeout sweeps when no deadline is nearer
SWEEP_MIN = 0.02  # never sweep more often than this
BIG_BUFFER = 1 << 20  # a buffer that grew past this is replaced (not just emptied) once drained
ID_MAX = 256  # bytes of a string request id
METHOD_MAX = 128  # bytes of a method name
_PEERCRED = struct.Struct("3i")
READ, WRITE = 1, 2


class SocketInUse(Exception):
    """Another live server answers on the socket path."""


def bind(path: str | os.PathLike) -> socket.socket:
    """Create the listening socket: mode 0600 in a private directory.

    The directory is created 0700, or must already be ours, a real directory,
    with no group or other write (:func:`daemon.fsguard.ensure_private_dir`):
    in a directory someone else can write to, they could swap the socket. A
    leftover socket file with no server behind it is replaced.

    Raises:
        client.rpc.PathTooLong: ``path`` does not fit in ``sun_path``.
        fsguard.UnsafePath: The directory is not private to us.
        SocketInUse: Something answers on ``path``.
    """
    check_socket_path(os.fspath(path))
    path = Path(path)
    fsguard.ensure_private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise SocketInUse(f"another server is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Connection:
    """One client connection with its buffers and per-connection state.

    Times (``connected_at``, ``last_active``, ``partial_since``) are ``time.monotonic()``.
    """

    def __init__(self, sock: socket.socket, now: float, peer: tuple[int, int, int]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_pid, self.peer_uid, self.peer_gid = peer
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.wbuf_limit = WBUF_LIMIT  # dropped past this much unsent output
        self.queue: collections.deque[Request] = collections.deque()  # parsed, deferred requests
        self.connected_at = now
        self.last_active = now
        self.spoke = False  # has sent at least one complete frame
        self.partial_since: float | None = None
        self.skipping = False  # discarding the rest of an oversize frame
        self.paused = False  # its output is over HIGH_WATER: not read, not served
        self.events = 0  # selector interest currently registered (0: not registered)
        self.follow: dict[str, Any] | None = None  # events.follow filter
        self.role: str | None = None  # "reaper" / "notifier" for internal streams
        self.scope: tuple[str, str | None] | None = None  # who the peer is (containment.identify)
        self.closed = False
        self.close_after_flush = False

    def __repr__(self) -> str:
        return f"<Connection fd={self.fd} pid={self.peer_pid}>"


def peercred(sock: socket.socket) -> tuple[int, int, int]:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(data)


def error_frame(req_id: Any, err: RPCError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": err.to_wire()}


def encode(obj: dict[str, Any]) -> bytes:
    """One frame, newline included. Never emits NaN/Infinity: such a result becomes ``internal_error``."""
    try:
        return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False).encode() + b"\n"
    except ValueError as exc:
        log.error("rpc.encode_failed", error=str(exc))
        err = RPCError("internal_error", f"the answer could not be encoded as JSON: {exc}")
        return json.dumps(error_frame(obj.get("id") if _valid_id(obj.get("id")) else None, err),
                          separators=(",", ":")).encode() + b"\n"


def _valid_id(req_id: Any) -> bool:
    """JSON-RPC ids kanband echoes: null, a short valid string, a 64-bit integer or a finite number."""
    if req_id is None:
        return True
    if isinstance(req_id, bool) or isinstance(req_id, (dict, list)):
        return False
    if isinstance(req_id, str):
        return text_problem(req_id, ID_MAX) is None
    if isinstance(req_id, int):
        return INT64_MIN <= req_id <= INT64_MAX
    return isinstance(req_id, float)  # loads() only yields finite floats


class Request:
    """A parsed, well-formed request waiting to be served."""

    __slots__ = ("conn", "id", "method", "params", "notify")

    def __init__(self, conn: Connection, req_id: Any, method: str, params: Any, notify: bool) -> None:
        self.conn = conn
        self.id = req_id
        self.method = method
        self.params = params
        self.notify = notify


def parse_frame(conn: Connection, line: bytes) -> Request | dict[str, Any] | None:
    """One line -> a Request, an error frame to send back, or None (blank line)."""
    if not line.strip():
        return None
    try:
        msg = loads(line)
    except FrameError as exc:
        return error_frame(None, RPCError("parse_error", f"invalid JSON: {exc}"))
    if isinstance(msg, list):
        return error_frame(None, RPCError("invalid_request", "batch requests are not supported; send one per line"))
    if not isinstance(msg, dict):
        return error_frame(None, RPCError("invalid_request", "a request must be a JSON object"))
    req_id = msg.get("id")
    if not _valid_id(req_id):
        return error_frame(None, RPCError(
            "invalid_request", f"id must be null, a string of at most {ID_MAX} bytes of valid text, "
            "a signed 64-bit integer or a finite number", field="id"))
    if msg.get("jsonrpc") != "2.0":
        return error_frame(req_id, RPCError("invalid_request", "jsonrpc must be \"2.0\"", field="jsonrpc"))
    method = msg.get("method")
    if not isinstance(method, str) or text_problem(method, METHOD_MAX):
        return error_frame(req_id, RPCError(
            "invalid_request", f"method must be a string of at most {METHOD_MAX} bytes of valid text",
            field="method"))
    return Request(conn, req_id, method, msg.get("params"), "id" not in msg)


class Budget:
    """How much output each connection may still be given in one batch before it must read.

    The dispatcher asks :meth:`allows` before serving a request and reports each answer's
    size with :meth:`spend`; a refused request is handed back with :meth:`Server.defer`.
    A connection may take answers while its unsent output is under ``HIGH_WATER``; while all
    connections together hold more than ``TOTAL_HIGH_WATER``, only one that holds none.
    """

    def __init__(self, conns: dict[int, Connection]) -> None:
        self.total = sum(len(c.wbuf) for c in conns.values())
        self.extra: dict[int, int] = {}

    def allows(self, conn: Connection) -> bool:
        mine = len(conn.wbuf) + self.extra.get(conn.fd, 0)
        if mine >= HIGH_WATER:
            return False
        return mine == 0 or self.total < TOTAL_HIGH_WATER

    def spend(self, conn: Connection, nbytes: int) -> None:
        self.extra[conn.fd] = self.extra.get(conn.fd, 0) + nbytes
        self.total += nbytes


class Server:
    """Accepts connections, reads frames, buffers writes. The dispatcher drives it.

    Every ``now`` passed in is ``time.monotonic()``. The dispatcher calls :meth:`sweep` when
    ``sweep_at`` has passed, serves what :meth:`read` and :meth:`backlog` return, and keeps
    its poll timeout at zero while :attr:`has_backlog` holds.
    """

    def __init__(self, listener: socket.socket, selector: Any, cfg: dict[str, Any]) -> None:
        self.listener = listener
        self.sel = selector
        self.cfg = cfg
        self.conns: dict[int, Connection] = {}
        self.uid = os.getuid()
        self.waiting: dict[int, Connection] = {}  # connections with requests left to serve
        self.sweep_at = time.monotonic() + SWEEP_MAX
        self.next_trim = 0.0
        self.trim_wanted = False

    # ---- accepting ------------------------------------------------------------

    def accept(self, now: float) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("socket.accept_failed", error=str(exc))
                    return
                raise
            sock.setblocking(False)
            peer = peercred(sock)
            conn = Connection(sock, now, peer)
            if peer[1] != self.uid:
                log.warning("socket.peer_refused", peer_uid=peer[1], peer_pid=peer[0])
                self._refuse(sock, RPCError("permission_denied", f"uid {peer[1]} may not use this socket",
                                            uid=peer[1]))
                continue
            limit = self.cfg["server"]["max_clients"]
            if len(self.conns) >= limit and not self._evict(limit):
                log.warning("socket.too_many_clients", limit=limit)
                self._refuse(sock, RPCError("unavailable", "too many clients connected", limit=limit))
                continue
            self.conns[conn.fd] = conn
            self._watch(conn)
            self.sweep_at = min(self.sweep_at, now + self._first_timeout())

    def _evict(self, limit: int) -> bool:
        """Make room by closing the longest-idle connection that is not a role or a follower."""
        victims = [c for c in self.conns.values() if c.role is None and c.follow is None]
        if not victims:
            return False
        victim = min(victims, key=lambda c: c.last_active)
        log.info("socket.client_evicted", peer_pid=victim.peer_pid, limit=limit, spoke=victim.spoke,
                 idle=round(time.monotonic() - victim.last_active, 3))
        self.close(victim)
        return True

    def _first_timeout(self) -> float:
        srv = self.cfg["server"]
        return min(srv["first_request_timeout"], srv["idle_timeout"])

    @staticmethod
    def _refuse(sock: socket.socket, err: RPCError) -> None:
        try:
            sock.send(encode(error_frame(None, err)))
        except OSError:
            pass
        sock.close()

    # ---- reading ----------------------------------------------------------------

    def read(self, conn: Connection, now: float) -> list[Request]:
        """Read what the socket holds (up to ``RECV_MAX``) and return the requests to serve now.

        Malformed frames are answered directly. Requests beyond ``PER_TURN``, or any while the
        connection is paused, stay buffered and come back from :meth:`backlog`.
        """
        if conn.paused or conn.closed:
            return []
        got = 0
        while got < RECV_MAX:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close(conn)
                return []
            conn.rbuf += chunk
            got += len(chunk)
            if len(chunk) < 65536:
                break
        if got:
            conn.last_active = now
        return self._take(conn, now)

    def backlog(self, now: float) -> list[Request]:
        """Requests already buffered on connections that may be served again."""
        out: list[Request] = []
        for conn in list(self.waiting.values()):
            if not conn.paused and not conn.closed:
                out += self._take(conn, now)
        return out

    @property
    def has_backlog(self) -> bool:
        """Whether :meth:`backlog` would return something now (poll without waiting)."""
        return any(not c.paused for c in self.waiting.values())

    def defer(self, reqs: list[Request]) -> None:
        """Hand back requests the dispatcher did not serve (see :class:`Budget`), keeping their order."""
        for r in reversed(reqs):
            if not r.conn.closed:
                r.conn.queue.appendleft(r)
                self.waiting[r.conn.fd] = r.conn
        for r in reqs:
            if not r.conn.closed:
                if r.conn.wbuf:  # served again once its output drains (flush resumes it)
                    r.conn.paused = True
                self._watch(r.conn)

    def _take(self, conn: Connection, now: float) -> list[Request]:
        out: list[Request] = []
        while conn.queue and len(out) < PER_TURN:
            out.append(conn.queue.popleft())
        while len(out) < PER_TURN and not conn.paused and not conn.closed:
            nl = conn.rbuf.find(b"\n")
            if nl < 0:
                if len(conn.rbuf) > MAX_FRAME:
                    if not conn.skipping:
                        self.send(conn, error_frame(None, RPCError(
                            "frame_too_large", f"request exceeds {MAX_FRAME} bytes", limit=MAX_FRAME)))
                    conn.skipping = True
                    conn.rbuf = bytearray()
                break
            line = bytes(conn.rbuf[:nl])
            del conn.rbuf[:nl + 1]
            conn.spoke = True
            conn.partial_since = None  # a frame completed: a half-sent next one starts its own clock
            if conn.skipping:
                conn.skipping = False
                continue
            if len(line) + 1 > MAX_FRAME:
                self.send(conn, error_frame(None, RPCError(
                    "frame_too_large", f"request exceeds {MAX_FRAME} bytes", limit=MAX_FRAME)))
                continue
            parsed = parse_frame(conn, line)
            if parsed is None:
                continue
            if isinstance(parsed, dict):
                self.send(conn, parsed)
            else:
                out.append(parsed)
        if conn.closed:
            return out
        if conn.queue or conn.rbuf.find(b"\n") >= 0:
            self.waiting[conn.fd] = conn
        else:
            self.waiting.pop(conn.fd, None)
            if conn.rbuf and conn.partial_since is None:  # a half-sent frame: its deadline starts now
                conn.partial_since = now
                self.sweep_at = min(self.sweep_at, now + self.cfg["server"]["request_timeout"])
            elif not conn.rbuf:
                conn.partial_since = None
            if not conn.rbuf:
                conn.rbuf = bytearray()  # a drained buffer gives its memory back
        self._watch(conn)
        return out

    # ---- writing ----------------------------------------------------------------

    def budget(self) -> Budget:
        """A fresh :class:`Budget` for one batch."""
        return Budget(self.conns)

    def send(self, conn: Connection, obj: dict[str, Any] | bytes) -> None:
        """Queue one frame (a message, or an already encoded line) and try to send it."""
        if conn.closed:
            return
        data = obj if isinstance(obj, bytes) else encode(obj)
        if not conn.wbuf:  # one answer larger than the limit is still delivered
            conn.wbuf_limit = max(WBUF_LIMIT, len(data) + HIGH_WATER)
        conn.wbuf += data
        self.flush(conn)

    def flush(self, conn: Connection) -> None:
        """Send what the socket takes; pause or resume the connection; drop it past the limits."""
        if conn.closed:
            return
        sent = 0
        while conn.wbuf:
            try:
                n = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            del conn.wbuf[:n]
            sent += n
        if sent:
            conn.last_active = time.monotonic()
        size = len(conn.wbuf)
        if size > conn.wbuf_limit:
            log.warning("socket.slow_client_dropped", peer_pid=conn.peer_pid, buffered=size)
            self.close(conn)
            return
        if not conn.wbuf and conn.close_after_flush:
            self.close(conn)
            return
        if size >= HIGH_WATER and not conn.paused:
            conn.paused = True
            self._check_total()
            if conn.closed:
                return
        elif conn.paused and size <= LOW_WATER:
            conn.paused = False
            if conn.queue or conn.rbuf.find(b"\n") >= 0:
                self.waiting[conn.fd] = conn
        if not conn.wbuf:
            conn.wbuf_limit = WBUF_LIMIT
        if not conn.wbuf and sent > BIG_BUFFER:
            conn.wbuf = bytearray()  # bytearrays keep their capacity; a fresh one frees it
            self.trim_wanted = True
        self._watch(conn)

    def _check_total(self) -> None:
        """Past ``TOTAL_LIMIT`` buffered in all, drop the largest non-role backlogs."""
        total = sum(len(c.wbuf) for c in self.conns.values())
        while total > TOTAL_LIMIT:
            victims = [c for c in self.conns.values() if c.role is None and c.wbuf]
            if not victims:
                return
            victim = max(victims, key=lambda c: len(c.wbuf))
            total -= len(victim.wbuf)
            log.warning("socket.slow_client_dropped", peer_pid=victim.peer_pid, buffered=len(victim.wbuf),
                        total=total, limit=TOTAL_LIMIT)
            self.close(victim)

    def _watch(self, conn: Connection) -> None:
        """Keep the selector interest in step: read unless paused or requests are waiting; write if any."""
        if conn.closed:
            return
        want = (0 if conn.paused or conn.fd in self.waiting else READ) | (WRITE if conn.wbuf else 0)
        if want == conn.events:
            return
        if want & READ and not conn.events & READ and conn.partial_since is not None:
            conn.partial_since = time.monotonic()  # its half frame waited on us, not on the client
        try:
            if not want:
                self.sel.unregister(conn.sock)
            elif not conn.events:
                self.sel.register(conn.sock, want, ("conn", conn))
            else:
                self.sel.modify(conn.sock, want, ("conn", conn))
        except (KeyError, ValueError, OSError):
            pass
        conn.events = want

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        self.waiting.pop(conn.fd, None)
        if conn.events:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.events = 0
        if len(conn.wbuf) + len(conn.rbuf) > BIG_BUFFER:
            self.trim_wanted = True
        conn.rbuf = conn.wbuf = bytearray()
        conn.queue.clear()
        conn.sock.close()

    # ---- timeouts -----------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close clients past a deadline; set ``sweep_at`` to the next one.

        Deadlines: a half-sent frame (``request_timeout``), no request yet
        (``first_request_timeout``), idle (``idle_timeout``). Roles and followers are
        exempt from the last two. Also gives freed memory back to the OS now and then.
        """
        srv = self.cfg["server"]
        first, idle, partial = self._first_timeout(), srv["idle_timeout"], srv["request_timeout"]
        nearest = now + min(SWEEP_MAX, first / 2, partial / 2)
        for conn in list(self.conns.values()):
            deadlines = []
            if conn.partial_since is not None and conn.events & READ:  # only while we read it
                deadlines.append((conn.partial_since + partial, "partial frame"))
            if conn.role is None and conn.follow is None and not (conn.fd in self.waiting and not conn.paused):
                if conn.spoke:
                    deadlines.append((conn.last_active + idle, "idle"))
                else:
                    deadlines.append((conn.connected_at + first, "no request"))
            for at, reason in deadlines:
                if now >= at:
                    log.info("socket.client_timeout", peer_pid=conn.peer_pid, reason=reason)
                    self.close(conn)
                    break
                nearest = min(nearest, at)
        self.sweep_at = max(nearest, now + SWEEP_MIN)
        if self.trim_wanted and now >= self.next_trim:
            self.trim_wanted = False
            self.next_trim = now + 1.0
            malloc_trim()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)


_LIBC: Any = None


def malloc_trim() -> None:
    """Ask glibc to return freed heap pages to the OS (no-op elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def monotonic() -> float:
    return time.monotonic()
