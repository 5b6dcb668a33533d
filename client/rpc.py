"""Client side of the JSON-RPC transport. Stdlib only.

Runs in: the ``kanban`` CLI, workers, tests and benchmarks; :func:`check_server`
and :func:`check_socket_path` also in the daemon (its roles' connections, its bind).

Every connection checks who serves the socket (``SO_PEERCRED``): only our own
uid or root is trusted, so a socket planted by another local user is refused
instead of being sent our requests.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import struct
import time

CONNECT_RETRY = 2.0  # seconds: ride out a daemon restart

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


def default_socket() -> str:
    """``$XDG_RUNTIME_DIR/kanban/kanband.sock``, or ``/tmp/kanban-<uid>/kanband.sock`` without a runtime dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "kanban", "kanband.sock")
    return f"/tmp/kanban-{os.getuid()}/kanband.sock"


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("KANBAN_SOCKET") or default_socket()


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
        self.sock.sendall(json.dumps(frame, separators=(",", ":")).encode() + b"\n")
        return rid

    def read(self) -> dict:
        """The next frame from the daemon (a response or a pushed notification)."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise NotRunning("kanband closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

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
                    raise ServerError(msg["error"])
                return msg["result"]
            if msg.get("id") is None and "error" in msg:
                raise ServerError(msg["error"])

    def follow(self, params: dict | None = None):
        """``events.follow``: yields events as the daemon pushes them."""
        self.sock.settimeout(None)
        self.call("events.follow", params)
        while True:
            msg = self.read()
            if msg.get("method") == "event":
                yield msg["params"]


def call(method: str, params: dict | None = None, path: str | None = None) -> object:
    """One request on a fresh connection."""
    with Client(path) as c:
        return c.call(method, params)
