"""A non-blocking JSON-RPC peer for roles that talk to the dispatcher.

Runs in: the reaper and the notifier. Each keeps one connection to the
dispatcher's socket, sends requests (answered later, matched by id) and
receives server-pushed notifications (``spawn``, ``kill``, ``cleanup``,
``event``). The owner's selector loop calls :meth:`on_readable` and
:meth:`on_writable`; :meth:`want_write` says whether to watch for writability.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable
from typing import Any

Callback = Callable[[dict[str, Any]], None]


class Peer:
    """One connection to the dispatcher."""

    def __init__(self, path: str, on_notify: Callback) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.on_notify = on_notify
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.ids = itertools.count(1)
        self.waiting: dict[int, Callback | None] = {}
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def call(self, method: str, params: dict[str, Any], on_reply: Callback | None = None) -> None:
        """Queue a request; ``on_reply`` receives the whole response object."""
        rid = next(self.ids)
        self.waiting[rid] = on_reply
        self.wbuf += json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
                                separators=(",", ":")).encode() + b"\n"
        self.on_writable()

    def want_write(self) -> bool:
        return bool(self.wbuf) and not self.closed

    def on_writable(self) -> None:
        while self.wbuf and not self.closed:
            try:
                n = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del self.wbuf[:n]

    def on_readable(self) -> None:
        while not self.closed:
            try:
                chunk = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                break
            self.rbuf += chunk
        while True:
            nl = self.rbuf.find(b"\n")
            if nl < 0:
                return
            line = bytes(self.rbuf[:nl])
            del self.rbuf[:nl + 1]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "method" in msg and "id" not in msg:
                self.on_notify(msg)
            elif msg.get("id") in self.waiting:
                cb = self.waiting.pop(msg["id"])
                if cb is not None:
                    cb(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
