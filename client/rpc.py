"""Client side of the JSON-RPC transport. Stdlib only.

Runs in: the ``kanban`` CLI, workers, tests and benchmarks.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import time

from client.protocol import FrameError, dumps, loads

CONNECT_RETRY = 2.0  # seconds: ride out a daemon restart


class NotRunning(Exception):
    """No daemon answers on the socket."""


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
        deadline = time.monotonic() + retry
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN) \
                        or time.monotonic() >= deadline:
                    raise NotRunning(
                        f"kanband is not running (no socket at {self.path}); start it with `kanband` or "
                        "`systemctl --user start kanband`") from None
                time.sleep(0.05)

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
