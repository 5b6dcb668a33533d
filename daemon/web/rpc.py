"""An asyncio JSON-RPC client of the dispatcher: pipelined requests plus the event stream.

Runs in: the ``kanband: web`` role (inside its asyncio loop).

The web role is a client of the dispatcher like the CLI: one Unix-socket
connection, newline-delimited JSON-RPC 2.0. Requests are pipelined and matched
to their answers by id; the same connection carries ``events.follow``, whose
pushed ``event`` notifications go to ``on_event``. The connection comes back
by itself after the dispatcher restarts (backoff 0.05 s doubling to 2 s), and
the stream resumes after the last event seen, so no event is lost or repeated.

Answers are returned as the raw JSON bytes of their ``result`` where the
frame has the dispatcher's compact shape, so a 5 MB ``task.list`` goes to the
browser without being decoded and encoded again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import structlog

from client.protocol import ERRORS, MAX_FRAME, dumps

log = structlog.get_logger()

#: A response line as the dispatcher encodes it (``daemon.ipc.encode``): id first, then result.
_RESULT = re.compile(rb'^\{"jsonrpc":"2\.0","id":(\d+),"result":')
LINE_LIMIT = 256 << 20  # bytes: a task.list of a huge board is one line
BACKOFF = (0.05, 2.0)


class RPCFailure(Exception):
    """The dispatcher answered with an error (``error`` is the JSON-RPC error object), or is unreachable."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "error"))
        self.error = error
        self.name = (error.get("data") or {}).get("name", "error")


def unavailable(message: str) -> RPCFailure:
    return RPCFailure({"code": -32006, "message": message, "data": {"name": "unavailable"}})


class DispatcherLink:
    """The web role's one connection to the dispatcher.

    Args:
        path: The daemon's socket.
        on_event: Called with each pushed event (dict), in order, once each.
        on_state: Called with ``True`` when connected and following, ``False`` when the link dropped.
    """

    def __init__(self, path: str, on_event: Callable[[dict[str, Any]], None],
                 on_state: Callable[[bool], None]) -> None:
        self.path = path
        self.on_event = on_event
        self.on_state = on_state
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.last_id: int | None = None  # the last event seen: a reconnect follows from here
        self.connected = asyncio.Event()
        self.closing = False

    async def run(self) -> None:
        """Connect, follow, read until the connection drops; again, forever (cancel to stop)."""
        delay = BACKOFF[0]
        while not self.closing:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(BACKOFF[1], delay * 2)
                continue
            self.writer = writer
            reading = asyncio.ensure_future(self._read(reader))
            try:
                params = {} if self.last_id is None else {"after": self.last_id}
                res = json.loads(await self.call_raw("events.follow", params, wait=False))
                if self.last_id is None:
                    self.last_id = res["last_id"]
                delay = BACKOFF[0]
                self.connected.set()
                self.on_state(True)
                log.info("web.dispatcher_attached", last_id=self.last_id)
                await reading
            except (RPCFailure, OSError, ValueError, KeyError) as exc:
                log.warning("web.follow_failed", error=str(exc))
            finally:
                reading.cancel()
                self._drop()
            if not self.closing:
                await asyncio.sleep(delay)
                delay = min(BACKOFF[1], delay * 2)

    def _drop(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(unavailable("the connection to the dispatcher dropped; try again"))
        if was:
            self.on_state(False)
            log.warning("web.dispatcher_lost")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                log.error("web.frame_too_large", limit=LINE_LIMIT)
                return
            m = _RESULT.match(line)
            if m:  # the common case: hand the result's bytes on as they are
                fut = self.waiting.pop(int(m.group(1)), None)
                if fut is not None and not fut.done():
                    fut.set_result(line[m.end():line.rindex(b"}")])
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("method") == "event" and "id" not in msg:
                ev = msg["params"]
                if self.last_id is None or ev["id"] > self.last_id:
                    self.last_id = ev["id"]
                    self.on_event(ev)
                continue
            fut = self.waiting.pop(msg.get("id"), None)
            if fut is None or fut.done():
                continue
            if "error" in msg:
                fut.set_exception(RPCFailure(msg["error"]))
            else:
                fut.set_result(json.dumps(msg.get("result"), separators=(",", ":")).encode())

    async def call_raw(self, method: str, params: dict[str, Any] | None = None, wait: bool = True,
                       timeout: float = 30.0) -> bytes:
        """Send one request; returns the JSON bytes of its result.

        Args:
            method: Wire method name.
            params: Its params.
            wait: Wait up to ``timeout`` for the link to come back if it is down.
            timeout: Seconds to wait for the link and for the answer.

        Raises:
            RPCFailure: The dispatcher refused (its error object), or did not answer (``unavailable``).
        """
        if wait and not self.connected.is_set():
            try:
                await asyncio.wait_for(self.connected.wait(), timeout)
            except asyncio.TimeoutError:
                raise unavailable("the dispatcher is not reachable") from None
        if self.writer is None:
            raise unavailable("the dispatcher is not reachable")
        rid = next(self.ids)
        try:  # the registry's encoder: NaN/Infinity refused here, never sent as invalid JSON
            frame = dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}).encode() + b"\n"
        except ValueError as exc:
            raise RPCFailure({"code": ERRORS["invalid_params"], "message": f"{method}: {exc}",
                              "data": {"name": "invalid_params", "field": "params"}}) from None
        if len(frame) > MAX_FRAME:
            raise RPCFailure({"code": ERRORS["frame_too_large"], "message": f"{method}: the request exceeds "
                              f"{MAX_FRAME} bytes", "data": {"name": "frame_too_large", "limit": MAX_FRAME}})
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.writer.write(frame)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.waiting.pop(rid, None)
            raise unavailable(f"the dispatcher did not answer {method} within {timeout:g}s") from None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Like :meth:`call_raw`, decoded."""
        return json.loads(await self.call_raw(method, params))

    def close(self) -> None:
        self.closing = True
        self._drop()
