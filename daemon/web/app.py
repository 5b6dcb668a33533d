"""The web board's ASGI app: the page, its JSON API, the live event stream, attachments.

Runs in: the ``kanband: web`` role, served by uvicorn inside the role's asyncio loop.

Every route is a thin translation to the dispatcher's JSON-RPC methods (the web
role never opens the board):

- ``GET /`` the page (``static/index.html`` with the CSRF value filled in);
  ``GET /static/…`` its ES modules and stylesheet.
- ``GET /api/meta`` the public methods the page may call, statuses, age tiers.
- ``GET /api/board`` ``task.list`` (``?archived=1`` includes archived tasks),
  passed through as the dispatcher's bytes.
- ``POST /api/rpc/METHOD`` any public (non-internal, non-streaming) method,
  JSON body = params. Errors come back as ``{"error": {code, message, data}}``
  with a matching HTTP status (404 not found, 409 illegal move, 400 bad params…).
- ``GET /api/events`` server-sent events: ``{"event": ev, "task": task-or-null}``
  per board event, the task read right after the event so a card needs no
  second request; a ``link`` event says when the dispatcher went away or came back.
- ``PUT /api/tasks/ID/attachments?name=N`` upload (raw body), kept in a private
  temporary file and streamed to the dispatcher like ``kanban attach`` does; ``GET /api/tasks/ID/attachments/NAME``
  downloads with ``Content-Disposition: attachment`` and the stored name.

The security gate (:mod:`daemon.web.security`) wraps all of it.
"""

from __future__ import annotations

import asyncio
import collections
import base64
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from client.protocol import MAX_FRAME, METHODS, loads
from daemon import __version__
from daemon.board.transitions import STATUSES
from daemon.web.rpc import DispatcherLink, RPCFailure
from daemon.web.security import csrf_for

log = structlog.get_logger()

STATIC = Path(__file__).resolve().parent / "static"
#: Methods the page may call: the CLI's, without the streams (the page has /api/events).
PUBLIC = frozenset(m.name for m in METHODS.values() if not m.internal and not m.stream)
HTTP_STATUS = {"not_found": 404, "method_not_found": 404, "illegal_transition": 409, "conflict": 409,
               "stale_token": 409, "invalid_params": 400, "parse_error": 400, "invalid_request": 400,
               "permission_denied": 403, "unavailable": 503, "frame_too_large": 413}
QUEUE_MAX = 10000  # events buffered per page; a page that falls further behind reconnects and reloads
UPLOAD_MAX = 25 << 20  # bytes, unless the config has attachments.max_size


def error_response(exc: RPCFailure) -> JSONResponse:
    return JSONResponse({"error": exc.error}, status_code=HTTP_STATUS.get(exc.name, 500))


def local_error(name: str, message: str, status: int, **data: Any) -> JSONResponse:
    from client.protocol import ERRORS
    return JSONResponse({"error": {"code": ERRORS[name], "message": message, "data": {"name": name, **data}}},
                        status_code=status)


class Hub:
    """Fans the dispatcher's event stream out to every open page (one queue per page).

    Each event is paired with its task, read with ``task.show`` as soon as the event
    arrives; the reads are pipelined and the pairs go out in event order. With no page
    open, nothing is read.
    """

    def __init__(self) -> None:
        self.link: DispatcherLink | None = None
        self.pages: set[asyncio.Queue] = set()
        self.pipeline: collections.deque = collections.deque()
        self.draining = False
        self.up = False

    def on_event(self, ev: dict[str, Any]) -> None:
        if not self.pages:
            return
        fut = None
        if ev.get("task_id") and self.link is not None:
            fut = asyncio.ensure_future(self.link.call_raw("task.show", {"id": ev["task_id"]}, wait=False))
        self.pipeline.append((ev, fut))
        if not self.draining:
            self.draining = True
            asyncio.ensure_future(self._drain())

    def on_state(self, up: bool) -> None:
        self.up = up
        self.broadcast(f"event: link\ndata: {json.dumps({'up': up})}\n\n")

    async def _drain(self) -> None:
        try:
            while self.pipeline:
                ev, fut = self.pipeline.popleft()
                task = None
                if fut is not None:
                    try:
                        task = json.loads(await fut)["task"]
                    except (RPCFailure, ValueError, KeyError):
                        task = None  # gone, or the link dropped: the page reloads on the link event
                data = json.dumps({"event": ev, "task": task}, separators=(",", ":"))
                self.broadcast(f"id: {ev['id']}\ndata: {data}\n\n")
        finally:
            self.draining = False

    def broadcast(self, frame: str) -> None:
        for q in list(self.pages):
            if q.qsize() >= QUEUE_MAX:  # that page stopped reading: end its stream; it reconnects and reloads
                self.pages.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait(frame)

    def close(self) -> None:
        """End every page's stream (shutdown)."""
        for q in self.pages:
            q.put_nowait(None)
        self.pages.clear()


class BoardApp:
    """State behind the routes: the dispatcher link, the hub, the config."""

    def __init__(self, link: DispatcherLink, hub: Hub, cfg: dict[str, Any], paths: dict[str, str], token: str,
                 listen: str) -> None:
        self.link = link
        self.hub = hub
        self.cfg = cfg
        self.paths = paths
        self.listen = listen
        self.index = (STATIC / "index.html").read_text().replace("{{csrf}}", csrf_for(token)).encode()
        self.uploads = os.path.join(paths["state_dir"], "web-uploads")

    # ---- routes -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return Response(self.index, media_type="text/html; charset=utf-8")

    async def meta(self, request: Request) -> Response:
        methods = {name: [p.name for p in METHODS[name].params] for name in sorted(PUBLIC)}
        return JSONResponse({"version": __version__, "methods": methods, "statuses": list(STATUSES),
                             "age_tiers": self.cfg["web"]["age_tiers"], "listen": self.listen,
                             "link": self.hub.up})

    async def board(self, request: Request) -> Response:
        params: dict[str, Any] = {"sort": "priority"}
        if request.query_params.get("archived") == "1":
            params["archived"] = True
        try:
            raw = await self.link.call_raw("task.list", params)
        except RPCFailure as exc:
            return error_response(exc)
        return Response(raw, media_type="application/json")

    async def rpc(self, request: Request) -> Response:
        method = request.path_params["method"]
        if method not in PUBLIC:
            known = method in METHODS
            return local_error("permission_denied" if known else "method_not_found",
                               f"{method} is not available from the web board" if known
                               else f"unknown method {method!r}", 403 if known else 404, method=method)
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_FRAME:
            return local_error("frame_too_large", f"the request body exceeds {MAX_FRAME} bytes", 413, limit=MAX_FRAME)
        body = bytearray()
        async for chunk in request.stream():  # bounded whatever the headers claimed
            body += chunk
            if len(body) > MAX_FRAME:
                return local_error("frame_too_large", f"the request body exceeds {MAX_FRAME} bytes", 413,
                                   limit=MAX_FRAME)
        try:  # the registry's strict parser: bounded depth, no NaN/Infinity, valid UTF-8
            params = loads(bytes(body)) if bytes(body).strip() else {}
        except ValueError as exc:
            return local_error("parse_error", f"request body is not JSON kanband accepts: {exc}", 400)
        if not isinstance(params, dict):
            return local_error("invalid_params", "params must be a JSON object", 400, field="params")
        if method == "task.create":
            params.setdefault("created_by", "web")
        try:
            raw = await self.link.call_raw(method, params)
        except RPCFailure as exc:
            return error_response(exc)
        return Response(raw, media_type="application/json")

    async def events(self, request: Request) -> Response:
        q: asyncio.Queue = asyncio.Queue()  # unbounded; the hub ends a page that lags by QUEUE_MAX frames
        self.hub.pages.add(q)
        hello = json.dumps({"up": self.hub.up, "last_id": self.link.last_id})

        async def stream():
            try:
                yield f"retry: 1000\nevent: hello\ndata: {hello}\n\n"
                while (frame := await q.get()) is not None:
                    yield frame
            finally:
                self.hub.pages.discard(q)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def upload(self, request: Request) -> Response:
        task = request.path_params["id"]
        name = request.query_params.get("name", "")
        limit = (self.cfg.get("attachments") or {}).get("max_size") or UPLOAD_MAX
        if not name.strip():
            return local_error("invalid_params", "give the file's name (?name=)", 400, field="name")
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit:
            return local_error("invalid_params", f"{name}: {declared} bytes is over the {limit}-byte limit", 413,
                               field="size")
        tmpdir = os.path.join(self.uploads, secrets.token_hex(8))
        os.makedirs(tmpdir, mode=0o700)
        # the daemon sanitises the stored name; this copy only needs a harmless one
        path = os.path.join(tmpdir, "upload")
        try:
            size = 0
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return local_error("invalid_params", f"{name}: over the {limit}-byte limit", 413,
                                           field="size")
                    f.write(chunk)
            try:
                raw = await self.store(task, name, path)
            except RPCFailure as exc:
                return error_response(exc)
            return Response(raw, media_type="application/json")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    async def store(self, task: str, name: str, path: str) -> bytes:
        """Stream one uploaded file to the dispatcher as the CLI does (``attach.begin``, ``attach.chunk``
        of base64 in the size it asks for, ``attach.commit`` with the SHA-256); returns the raw answer.
        The upload belongs to the web role's connection; on any refusal it is aborted."""
        size = os.path.getsize(path)
        begin = await self.link.call("attach.begin", {"id": task, "name": name, "size": size})
        upload, step = begin["upload"], int(begin["chunk"])
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                offset = 0
                while data := f.read(step):
                    digest.update(data)
                    await self.link.call("attach.chunk", {"upload": upload, "offset": offset,
                                                          "data": base64.b64encode(data).decode()})
                    offset += len(data)
            return await self.link.call_raw("attach.commit", {"uploads": [upload], "sha256": [digest.hexdigest()]})
        except RPCFailure:
            try:
                await self.link.call("attach.abort", {"uploads": [upload]})
            except RPCFailure:
                pass
            raise

    async def download(self, request: Request) -> Response:
        task, name = request.path_params["id"], request.path_params["name"]
        try:
            res = await self.link.call("task.attachments", {"id": task})
        except RPCFailure as exc:
            return error_response(exc)
        items = res.get("attachments", res) if isinstance(res, dict) else res
        found = next((a for a in items or [] if isinstance(a, dict) and a.get("name") == name), None)
        if found is None or not found.get("path"):
            return local_error("not_found", f"task {task} has no attachment {name!r}", 404, id=task, attachment=name)
        return FileResponse(found["path"], filename=found["name"], media_type="application/octet-stream",
                            content_disposition_type="attachment")

    def asgi(self) -> Starlette:
        return Starlette(routes=[
            Route("/", self.page),
            Route("/api/meta", self.meta),
            Route("/api/board", self.board),
            Route("/api/rpc/{method}", self.rpc, methods=["POST"]),
            Route("/api/events", self.events),
            Route("/api/tasks/{id}/attachments", self.upload, methods=["PUT"]),
            Route("/api/tasks/{id}/attachments/{name}", self.download),
            Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
        ])

