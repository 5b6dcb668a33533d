"""A non-blocking JSON-RPC peer for roles that talk to the dispatcher.

Runs in: the reaper and the notifier. Each keeps one connection to the
dispatcher's socket, sends requests (answered later, matched by id) and
receives server-pushed notifications (``spawn``, ``kill``, ``cleanup``,
``event``). :class:`Link` adds reconnects and selector upkeep on top.

Frames from the dispatcher are parsed as strictly as the dispatcher parses
requests (:func:`client.protocol.loads`): a frame that is not a JSON object
within ``MAX_DEPTH`` is skipped, so a hostile server cannot crash a role.

Like the CLI, a role checks who serves the socket (``SO_PEERCRED``: our uid
or root) before it sends anything, so a socket swapped in by another user
never receives a reaper's or notifier's traffic.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from typing import Any

from client.protocol import FrameError, dumps, loads

import structlog

from client.rpc import UntrustedServer, check_server

log = structlog.get_logger()

Callback = Callable[[dict[str, Any]], None]
MAX_LINE = 64 << 20  # a frame from the dispatcher longer than this closes the connection


class Peer:
    """One connection to the dispatcher."""

    def __init__(self, path: str, on_notify: Callback, on_close: Callable[[Peer], None] | None = None) -> None:
        """Connect to ``path`` and check the server's uid.

        Raises:
            OSError: The connection failed.
            UntrustedServer: Another uid (not root) serves the socket.
        """
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
            check_server(self.sock, path)
        except (OSError, UntrustedServer):
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.on_notify = on_notify
        self.on_close = on_close
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
        self.wbuf += dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n"
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
                chunk = self.sock.recv(65536)
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
                if len(self.rbuf) > MAX_LINE:  # no server of ours sends that: give up on it
                    self.close()
                return
            line = bytes(self.rbuf[:nl])
            del self.rbuf[:nl + 1]
            try:
                msg = loads(line)
            except FrameError:
                continue
            if not isinstance(msg, dict):
                continue
            if "method" in msg and "id" not in msg:
                self.on_notify(msg)
            elif isinstance(msg.get("id"), int) and msg["id"] in self.waiting:
                cb = self.waiting.pop(msg["id"])
                if cb is not None:
                    cb(msg)

    def close(self) -> None:
        """Close; ``on_close`` runs first, while the fd number still belongs to this socket."""
        if not self.closed:
            self.closed = True
            if self.on_close is not None:
                self.on_close(self)
            self.sock.close()


class Link:
    """A role's connection to the dispatcher: a :class:`Peer` plus reconnects and selector upkeep.

    The owner's loop calls :meth:`poll` once per turn (connects when due, keeps the selector
    registration in step, notices a lost connection), passes selector events for ``key`` to
    :meth:`on_event`, and calls :meth:`attached` when its attach request succeeded, which
    resets the reconnect backoff. A connection refused right after connecting (an attach error)
    therefore backs off instead of spinning.
    """

    BACKOFF = (0.05, 2.0)

    def __init__(self, path: str, sel: Any, key: Any, on_notify: Callback,
                 on_connect: Callable[[Peer], None], on_lost: Callable[[], None]) -> None:
        self.path = path
        self.sel = sel
        self.key = key
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.peer: Peer | None = None
        self.next_connect = 0.0
        self.backoff = self.BACKOFF[0]

    def _unregister(self, peer: Peer) -> None:
        try:
            self.sel.unregister(peer.fd)
        except (KeyError, ValueError):
            pass

    def poll(self, now: float) -> float | None:
        """Connect if due; sync the registration. Returns when to call again if disconnected."""
        if self.peer is not None and self.peer.closed:
            self.peer = None
            self._schedule(now)
            self.on_lost()
        if self.peer is None and now >= self.next_connect:
            try:
                self.peer = Peer(self.path, self.on_notify, on_close=self._unregister)
            except OSError:
                self._schedule(now)
            except UntrustedServer as exc:
                log.error("socket.server_refused", socket=self.path, error=str(exc))
                self._schedule(now)
            else:
                self.sel.register(self.peer.fd, 1, self.key)
                self.on_connect(self.peer)
        if self.peer is None:
            return self.next_connect
        if not self.peer.closed:
            self.sel.modify(self.peer.fd, 1 | (2 if self.peer.want_write() else 0), self.key)
        return None

    def _schedule(self, now: float) -> None:
        self.next_connect = now + self.backoff
        self.backoff = min(self.BACKOFF[1], self.backoff * 2)

    def attached(self) -> None:
        self.backoff = self.BACKOFF[0]

    def on_event(self, mask: int) -> None:
        if self.peer is None:
            return
        if mask & 1:
            self.peer.on_readable()
        if mask & 2 and not self.peer.closed:
            self.peer.on_writable()
