"""Server side of the JSON-RPC transport: framing, peer checks, timeouts.

Runs in: the dispatcher (the only process that serves the socket). The
supervisor binds the listening socket (:func:`bind`) and the dispatcher
inherits it across the fork, so a dispatcher restart never drops the socket.

Framing is newline-delimited JSON. A line longer than ``MAX_FRAME`` is
answered with ``frame_too_large`` and skipped; the connection stays usable.
Only peers with the socket owner's uid (``SO_PEERCRED``) are served.
"""

from __future__ import annotations

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

from client.protocol import MAX_FRAME, RPCError
from client.rpc import check_socket_path
from daemon import fsguard

log = structlog.get_logger()

WBUF_LIMIT = 16 << 20  # a follower that falls this far behind is dropped
_PEERCRED = struct.Struct("3i")


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
    """One client connection with its buffers and per-connection state."""

    def __init__(self, sock: socket.socket, now: float, peer: tuple[int, int, int]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_pid, self.peer_uid, self.peer_gid = peer
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.last_active = now
        self.partial_since: float | None = None
        self.skipping = False  # discarding the rest of an oversize frame
        self.follow: dict[str, Any] | None = None  # events.follow filter
        self.role: str | None = None  # "reaper" / "notifier" for internal streams
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
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


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
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return error_frame(None, RPCError("parse_error", f"invalid JSON: {exc}"))
    if isinstance(msg, list):
        return error_frame(None, RPCError("invalid_request", "batch requests are not supported; send one per line"))
    if not isinstance(msg, dict):
        return error_frame(None, RPCError("invalid_request", "a request must be a JSON object"))
    req_id = msg.get("id")
    if isinstance(req_id, (dict, list)) or isinstance(req_id, bool):
        return error_frame(None, RPCError("invalid_request", "id must be a string, number or null", field="id"))
    if msg.get("jsonrpc") != "2.0":
        return error_frame(req_id, RPCError("invalid_request", "jsonrpc must be \"2.0\"", field="jsonrpc"))
    method = msg.get("method")
    if not isinstance(method, str):
        return error_frame(req_id, RPCError("invalid_request", "method must be a string", field="method"))
    return Request(conn, req_id, method, msg.get("params"), "id" not in msg)


class Server:
    """Accepts connections, reads frames, buffers writes. The dispatcher drives it."""

    def __init__(self, listener: socket.socket, selector: Any, cfg: dict[str, Any]) -> None:
        self.listener = listener
        self.sel = selector
        self.cfg = cfg
        self.conns: dict[int, Connection] = {}
        self.uid = os.getuid()

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
            if len(self.conns) >= self.cfg["server"]["max_clients"]:
                log.warning("socket.too_many_clients", limit=self.cfg["server"]["max_clients"])
                self._refuse(sock, RPCError("unavailable", "too many clients connected"))
                continue
            self.conns[conn.fd] = conn
            self.sel.register(sock, 1, ("conn", conn))

    @staticmethod
    def _refuse(sock: socket.socket, err: RPCError) -> None:
        try:
            sock.send(encode(error_frame(None, err)))
        except OSError:
            pass
        sock.close()

    def read(self, conn: Connection, now: float) -> list[Request]:
        """Drain the socket; returns complete requests (errors are answered directly)."""
        out: list[Request] = []
        while True:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close(conn)
                return out
            conn.rbuf += chunk
            if len(chunk) < 65536:
                break
        conn.last_active = now
        while True:
            nl = conn.rbuf.find(b"\n")
            if nl < 0:
                if len(conn.rbuf) > MAX_FRAME:
                    if not conn.skipping:
                        self.send(conn, error_frame(None, RPCError(
                            "frame_too_large", f"request exceeds {MAX_FRAME} bytes", limit=MAX_FRAME)))
                    conn.skipping = True
                    conn.rbuf.clear()
                conn.partial_since = (conn.partial_since or now) if conn.rbuf else None
                break
            line = bytes(conn.rbuf[:nl])
            del conn.rbuf[:nl + 1]
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
        return out

    def send(self, conn: Connection, obj: dict[str, Any] | bytes) -> None:
        """Queue one frame (a message, or an already encoded line) and try to send it."""
        if conn.closed:
            return
        conn.wbuf += obj if isinstance(obj, bytes) else encode(obj)
        if len(conn.wbuf) > WBUF_LIMIT:
            log.warning("socket.slow_client_dropped", peer_pid=conn.peer_pid, buffered=len(conn.wbuf))
            self.close(conn)
            return
        self.flush(conn)

    def flush(self, conn: Connection) -> None:
        if conn.closed:
            return
        while conn.wbuf:
            try:
                n = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            del conn.wbuf[:n]
        events = 1 | (2 if conn.wbuf else 0)
        try:
            self.sel.modify(conn.sock, events, ("conn", conn))
        except (KeyError, ValueError):
            pass
        if not conn.wbuf and conn.close_after_flush:
            self.close(conn)

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def sweep(self, now: float) -> None:
        """Close idle clients and clients stuck mid-frame. Streams are exempt from idleness."""
        idle = self.cfg["server"]["idle_timeout"]
        partial = self.cfg["server"]["request_timeout"]
        for conn in list(self.conns.values()):
            if conn.partial_since is not None and now - conn.partial_since > partial:
                log.info("socket.client_timeout", peer_pid=conn.peer_pid, reason="partial frame")
                self.close(conn)
            elif conn.follow is None and conn.role is None and now - conn.last_active > idle:
                self.close(conn)

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            self.close(conn)


def monotonic() -> float:
    return time.monotonic()
