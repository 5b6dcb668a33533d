"""Client side of the JSON-RPC transport. Stdlib only.

Runs in: the ``kanban`` CLI, workers, tests and benchmarks; :func:`check_server`
and :func:`check_socket_path` also in the daemon (its roles' connections, its bind).

Every connection checks who serves the socket (``SO_PEERCRED``): only our own
uid or root is trusted, so a socket planted by another local user is refused
instead of being sent our requests.

Two retry regimes:

- :class:`Client` retries a refused or missing socket for ``CONNECT_RETRY``
  (about 2 s): enough for an operator's verb to ride out a quick restart.
- :func:`call_retrying` and :func:`follow_resuming` keep going for as long as
  the caller asks (a worker: ``$KANBAN_RETRY_FOR``, 120 s by default), with
  exponential backoff, through a failed connect *and* through a connection
  that dropped before the answer came. A request is sent again only when that
  is safe: it reads, or it carries a ``request_id`` that the daemon
  de-duplicates (``daemon/board/requests.py``).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator

from client.protocol import FrameError, dumps, loads

CONNECT_RETRY = 2.0  # seconds: an operator's verb rides out a quick daemon restart
#: Seconds a worker's request keeps retrying through a daemon restart (``$KANBAN_RETRY_FOR``).
WORKER_RETRY_FOR = 120.0
#: First and largest pause between two attempts, in seconds (doubling, with jitter).
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0

#: ``sun_path`` holds 108 bytes, the terminating NUL included.
SUN_PATH_MAX = 107


class ConnectError(Exception):
    """No trustworthy kanband could be reached on the socket; the message says why."""


class NotRunning(ConnectError):
    """No daemon answers on the socket."""


class UntrustedServer(ConnectError):
    """The process serving the socket runs as another uid than ours (and is not root)."""


class PathTooLong(ConnectError):
    """The socket path does not fit in ``sun_path``."""


def check_socket_path(path: str) -> None:
    """Raises:
        PathTooLong: ``path`` is longer than ``SUN_PATH_MAX`` bytes; the message names it and the limit.
    """
    n = len(os.fsencode(path))
    if n > SUN_PATH_MAX:
        raise PathTooLong(f"socket path too long: {path} is {n} bytes, and a Unix socket path can have at most "
                          f"{SUN_PATH_MAX} (sun_path is 108 bytes with the NUL); choose a shorter path")


def check_server(sock: socket.socket, path: str) -> None:
    """Check the credentials of the process serving ``sock`` (``SO_PEERCRED``): our uid or root.

    Raises:
        UntrustedServer: Naming the socket and the uid found.
    """
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    me = os.getuid()
    if uid not in (me, 0):
        try:
            import pwd
            name = f" ({pwd.getpwuid(uid).pw_name})"
        except (ImportError, KeyError):
            name = ""
        raise UntrustedServer(
            f"refusing the server on {path}: it runs as uid {uid}{name}, not as you (uid {me}) or root; "
            f"another user may have planted it: remove {os.path.dirname(path) or path} and restart kanband")


class ServerError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message", "error"))
        self.error = error
        self.code = error.get("code")
        self.name = (error.get("data") or {}).get("name", "error")


#: Longest board name (``kanband --board NAME``); it becomes a directory and a socket file name.
BOARD_NAME_MAX = 64
_BOARD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def board_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a board, or ``None``: letters, digits, ``_ . -``, not starting
    with ``.`` or ``-``, at most ``BOARD_NAME_MAX`` characters (no ``re``: the client starts fast)."""
    if not name:
        return "a board name cannot be empty"
    if len(name) > BOARD_NAME_MAX:
        return f"board name {name[:BOARD_NAME_MAX]}... is longer than {BOARD_NAME_MAX} characters"
    if name[0] in ".-" or not set(name) <= _BOARD_CHARS:
        return (f"board name {name!r} may use letters, digits, '_', '.' and '-', and may not start with "
                "'.' or '-'")
    return None


def runtime_dir() -> str:
    """Where sockets live: ``$XDG_RUNTIME_DIR/kanban``, or ``/tmp/kanban-<uid>`` without a runtime dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "kanban")
    return f"/tmp/kanban-{os.getuid()}"


def state_home() -> str:
    """``$XDG_STATE_HOME/kanban`` (``~/.local/state/kanban``): the default board's state dir."""
    base = os.environ.get("XDG_STATE_HOME")
    if not (base and os.path.isabs(base)):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kanban")


def board_state_dir(name: str) -> str:
    """A named board's state dir: ``$XDG_STATE_HOME/kanban/boards/NAME``."""
    return os.path.join(state_home(), "boards", name)


def default_socket(board: str | None = None) -> str:
    """``$XDG_RUNTIME_DIR/kanban/kanband.sock`` (``NAME.sock`` for a named board), or the same
    names under ``/tmp/kanban-<uid>/`` without a runtime dir."""
    return os.path.join(runtime_dir(), f"{board}.sock" if board else "kanband.sock")


def socket_path(explicit: str | None = None, board: str | None = None) -> str:
    """The socket to talk to: ``--socket``, then ``--board NAME``, then ``$KANBAN_SOCKET`` (set in
    every worker, so a worker always talks to its own board), then ``$KANBAN_BOARD_NAME``, then the
    default board's socket.

    Raises:
        ValueError: ``board`` or ``$KANBAN_BOARD_NAME`` is not a valid board name.
    """
    if explicit:
        return explicit
    if board is None and not os.environ.get("KANBAN_SOCKET"):
        board = os.environ.get("KANBAN_BOARD_NAME") or None
    elif board is None:
        return os.environ["KANBAN_SOCKET"]
    if board is not None:
        bad = board_name_problem(board)
        if bad:
            raise ValueError(bad)
    return default_socket(board)


class Client:
    """A connection to kanband. ``call`` sends one request and waits for its answer."""

    def __init__(self, path: str | None = None, retry: float = CONNECT_RETRY, timeout: float | None = 30.0) -> None:
        self.path = socket_path(path)
        self.sock = self._connect(retry)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.ids = itertools.count(1)

    def _connect(self, retry: float) -> socket.socket:
        """Connect, retrying for ``retry`` seconds while nothing listens; then check who serves.

        Raises:
            PathTooLong: The path cannot be a socket path.
            NotRunning: Nothing answered in time.
            UntrustedServer: Another uid serves the socket.
        """
        check_socket_path(self.path)
        deadline = time.monotonic() + retry
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN) \
                        or time.monotonic() >= deadline:
                    raise NotRunning(
                        f"kanband is not running (no socket at {self.path}); start it with `kanband` or "
                        "`systemctl --user start kanband`") from None
                time.sleep(0.05)
                continue
            try:
                check_server(sock, self.path)
            except BaseException:
                sock.close()
                raise
            return sock

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict | None = None) -> int:
        rid = next(self.ids)
        frame = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        self.sock.sendall(dumps(frame).encode() + b"\n")
        return rid

    def read(self) -> dict:
        """The next frame from the daemon (a response or a pushed notification).

        Parsed strictly (:func:`client.protocol.loads`), so a hostile or broken server cannot
        crash the client with deep nesting or non-standard numbers.

        Raises:
            NotRunning: The daemon closed the connection.
            ServerError: ``parse_error``: the frame is not a JSON object kanband may send.
        """
        if not isinstance(self.buf, bytearray):
            self.buf = bytearray(self.buf)
        buf = self.buf
        nl = buf.find(b"\n")
        while nl < 0:  # search only the new bytes: large answers stay linear
            start = len(buf)
            chunk = self.sock.recv(1 << 18)
            if not chunk:
                raise NotRunning("kanband closed the connection")
            buf += chunk
            nl = buf.find(b"\n", start)
        line = bytes(buf[:nl])
        del buf[:nl + 1]
        try:
            msg = loads(line)
        except FrameError as exc:
            raise ServerError({"code": -32700, "message": f"kanband sent an invalid frame: {exc}",
                               "data": {"name": "parse_error"}}) from None
        if not isinstance(msg, dict):
            raise ServerError({"code": -32700, "message": "kanband sent a frame that is not a JSON object",
                               "data": {"name": "parse_error"}})
        return msg

    def call(self, method: str, params: dict | None = None) -> object:
        """Send a request and return its result.

        Raises:
            ServerError: The daemon answered with an error.
        """
        try:
            rid = self.send(method, params)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon refused us (permission_denied, too many clients) and closed the
            # connection before our request went out; its error frame may be waiting.
            rid = None
        while True:
            msg = self.read()
            if msg.get("id") == rid:
                if "error" in msg:
                    raise ServerError(_error_object(msg["error"]))
                return msg.get("result")
            if msg.get("id") is None and "error" in msg:
                raise ServerError(_error_object(msg["error"]))

    def follow(self, params: dict | None = None):
        """``events.follow``: yields events as the daemon pushes them."""
        self.sock.settimeout(None)
        self.call("events.follow", params)
        while True:
            msg = self.read()
            if msg.get("method") == "event":
                yield msg["params"]


def _error_object(err: object) -> dict:
    """A server's error member, shaped so :class:`ServerError` can read it."""
    if isinstance(err, dict) and isinstance(err.get("data", {}), dict):
        return err
    return {"code": None, "message": f"kanband sent a malformed error: {str(err)[:200]}",
            "data": {"name": "parse_error"}}


def call(method: str, params: dict | None = None, path: str | None = None) -> object:
    """One request on a fresh connection."""
    with Client(path) as c:
        return c.call(method, params)


# ---- retrying through a daemon restart ------------------------------------------------------


def new_request_id() -> str:
    """A random client request id (32 hex digits): one per logical request, reused by its retries."""
    return os.urandom(16).hex()


def retry_for_from_env(environ: dict[str, str] | None = None) -> float:
    """``$KANBAN_RETRY_FOR`` in seconds (``120``, ``90s``, ``5m``, ``1h``); 120 when unset.

    Raises:
        ValueError: The value is not a non-negative duration; the message names the variable.
    """
    raw = (os.environ if environ is None else environ).get("KANBAN_RETRY_FOR", "").strip()
    if not raw:
        return WORKER_RETRY_FOR
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(raw[-1:].lower())
    try:
        value = float(raw[:-1] if scale else raw) * (scale or 1.0)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"KANBAN_RETRY_FOR must be a duration in seconds such as 120, 90s or 5m, not {raw!r}")
    return value


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Backoff:
    """Pauses between attempts to reach the daemon, until a deadline.

    The first pause is ``BACKOFF_FIRST`` seconds; each one doubles, up to
    ``BACKOFF_MAX``, with jitter so that many workers do not reconnect in step.
    The first pause says once, through ``say``, that the client is retrying.

    Args:
        path: The socket path (for the message).
        retry_for: Seconds from now after which :meth:`pause` gives up.
        say: Receives the one-line notice (default: stderr).
    """

    def __init__(self, path: str, retry_for: float, say: Callable[[str], None] = _stderr) -> None:
        self.path = path
        self.retry_for = retry_for
        self.say = say
        self.deadline = time.monotonic() + retry_for
        self.delay = BACKOFF_FIRST
        self.said = False

    def pause(self) -> bool:
        """Sleep before the next attempt; ``False`` (without sleeping) once the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        if not self.said:
            self.said = True
            self.say(f"kanban: daemon not reachable at {self.path}; retrying for up to {self.retry_for:g}s")
        jitter = 0.5 + int.from_bytes(os.urandom(2), "big") / 131070  # 0.5 to 1.0; `random` is slow to import
        time.sleep(min(left, self.delay * jitter))
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return True

    def gave_up(self, what: str) -> NotRunning:
        return NotRunning(f"{what}; gave up after retrying for {self.retry_for:g}s (KANBAN_RETRY_FOR)")


def _retryable(exc: ServerError) -> bool:
    """A refusal that applied nothing and may pass later: shutting down, too many clients."""
    return exc.name == "unavailable"


def call_retrying(method: str, params: dict | None = None, path: str | None = None, *,
                  retry_for: float = WORKER_RETRY_FOR, resend: bool = True,
                  say: Callable[[str], None] = _stderr, timeout: float | None = 30.0) -> object:
    """Send one request, retrying through a daemon restart for up to ``retry_for`` seconds.

    A failed connect is always retried: nothing was sent. A connection that
    drops after the request went out (the daemon died mid-request) is retried
    only with ``resend``, which the caller sets when sending twice is safe: the
    method does not write, or ``params`` carry a ``request_id``, so the daemon
    answers a repeat with its first answer.

    Args:
        method: Wire method name.
        params: Its params; not modified.
        path: Socket path (default: :func:`socket_path`).
        retry_for: Seconds to keep trying, from the first attempt.
        resend: Whether a request that may have reached the daemon may be sent again.
        say: Receives the one-line "retrying" notice, said at most once.
        timeout: Seconds to wait for each answer.

    Returns:
        The method's result.

    Raises:
        ServerError: The daemon answered with an error (other than ``unavailable``).
        NotRunning: No answer within ``retry_for``, or the connection dropped after
            sending and ``resend`` is false.
    """
    path = socket_path(path)
    backoff = Backoff(path, retry_for, say)
    while True:
        try:
            client = Client(path, retry=0.0, timeout=timeout)
        except NotRunning as exc:
            if not backoff.pause():
                raise backoff.gave_up(str(exc)) from None
            continue
        try:
            with client:
                return client.call(method, params)
        except ServerError as exc:
            if not _retryable(exc) or not backoff.pause():
                raise
        except (NotRunning, OSError) as exc:
            if not resend:
                raise NotRunning(f"the connection to kanband dropped before it answered ({exc}); "
                                 f"{method} may or may not have been applied") from None
            if not backoff.pause():
                raise backoff.gave_up(f"kanband did not answer {method} ({exc})") from None


def follow_resuming(params: dict | None = None, path: str | None = None, *, retry_for: float = WORKER_RETRY_FOR,
                    say: Callable[[str], None] = _stderr, client: Client | None = None) -> Iterator[dict]:
    """``events.follow`` that reconnects after a daemon restart, with no gap and no repeat.

    It remembers the id of the last event it yielded (before the first one:
    the ``last_id`` the daemon answered the follow with, or ``params["after"]``)
    and follows again with ``after`` set to it, so the new daemon replays what
    happened while the stream was down. Each outage may last up to
    ``retry_for`` seconds.

    Args:
        params: ``events.follow`` params (filters, ``after``); not modified.
        path: Socket path (default: :func:`socket_path`).
        retry_for: Seconds each reconnection may take.
        say: Receives the one-line "retrying" notice, once per outage.
        client: An already connected client to start with (it is closed on the first drop).

    Yields:
        Event objects, oldest first, each once.

    Raises:
        ServerError: The daemon refused the follow (a bad filter, an unknown task).
        NotRunning: The daemon stayed unreachable for ``retry_for`` seconds.
    """
    path = socket_path(path)
    params = dict(params or {})
    cursor = params.get("after")
    backoff: Backoff | None = None
    while True:
        try:
            if client is None:
                client = Client(path, retry=0.0)
            client.sock.settimeout(None)
            answer = client.call("events.follow", params if cursor is None else {**params, "after": cursor})
            if cursor is None:
                cursor = answer["last_id"]
            backoff = None
            while True:
                msg = client.read()
                if msg.get("method") == "event":
                    yield msg["params"]
                    cursor = max(cursor, msg["params"]["id"])
        except ServerError as exc:
            if not _retryable(exc):
                raise
            why = str(exc)
        except (NotRunning, OSError) as exc:
            why = str(exc)
        if client is not None:
            client.close()
            client = None
        backoff = backoff or Backoff(path, retry_for, say)
        if not backoff.pause():
            raise backoff.gave_up(f"lost the event stream ({why})")
