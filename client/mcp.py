"""``kanban mcp``: a stdio Model Context Protocol server, so an agent works the board through tools.

Runs in: a process an agent CLI (the MCP host) starts, usually inside a run: the
worker's own descendant, so the daemon counts it as part of that run (it identifies
callers by pid, see :func:`daemon.containment.identify`). It is a client of the
daemon over the socket, like the ``kanban`` CLI, and never opens the board.

The protocol is the official ``mcp`` Python SDK's (its low-level ``Server`` over
stdio); the SDK is imported only by :func:`main`, so the rest of the ``kanban``
client stays stdlib-only and fast. Everything above :func:`main` is stdlib: the
tool table, the JSON Schemas (generated from :data:`client.protocol.METHODS`, the
one registry behind RPC, CLI, docs and these tools) and the calls themselves.

Which tools (:func:`tools_for`), from ``daemon.whoami`` (who the daemon takes this
process for):

- a worker's run: ``kanban_context``, ``kanban_complete``, ``kanban_block``,
  ``kanban_heartbeat``, ``kanban_comment``, ``kanban_create`` (children of the current
  task), ``kanban_link``, ``kanban_attach``; a reviewer run adds ``kanban_approve`` and
  ``kanban_request_changes``. The run token and a ``request_id`` are added to every call.
- an operator, or a run of a ``role: orchestrator`` profile: the board tools
  ``kanban_list``, ``kanban_show``, ``kanban_context``, ``kanban_create``,
  ``kanban_link``, ``kanban_assign``, ``kanban_plan``, ``kanban_stats``,
  ``kanban_approve``, ``kanban_request_changes``, ``kanban_retry`` (an orchestrator's
  run has the worker tools too, the in-run forms winning where names meet).

Each task is also a resource, ``kanban://task/{id}``: its context as Markdown.

A refusal is a tool error (``isError``) whose text starts with the daemon's error
name (``not_found: no task t_...``) and whose structured content is
``{"error": {"name", "message", "data"}}``; the server itself never fails on one.
Every call rides out a daemon restart for ``$KANBAN_RETRY_FOR`` seconds (120):
reads and calls carrying a ``request_id`` are resent, others only reconnect.

MCP hosts often start servers with a scrubbed environment (the SDKs pass only
``HOME``, ``PATH`` and a few more unless told otherwise). Without ``--socket`` or
``$KANBAN_SOCKET``, the server looks for ``KANBAN_SOCKET`` in its ancestors'
environments (same uid, ``/proc/PID/environ``), so it finds its run's daemon anyway;
its identity always comes from the daemon, never from the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from client import protocol
from client.rpc import (ConnectError, NotRunning, ServerError, call_retrying, new_request_id, retry_for_from_env,
                        socket_path)

#: How long the server waits for the daemon at start to learn who it is (then it guesses from the environment).
WHOAMI_RETRY = 10.0
#: The resource template of a task's context.
TASK_URI = "kanban://task/{id}"
TASK_URI_PREFIX = "kanban://task/"

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
               "dict": "object"}


@dataclasses.dataclass(frozen=True)
class Tool:
    """One MCP tool: a registry method, with the params the server fills itself hidden.

    Attributes:
        name: The tool name (``kanban_*``).
        method: The ``client.protocol.METHODS`` name it calls.
        doc: Its description for the model (the method's doc when empty).
        hide: Params not in the schema: the server fills them (run token, request id, the current task).
        current: The param that defaults to the current task (``"id"`` or ``"ids"`` or ``"parents"``).
        extra: Params the server reads itself and never sends (``kanban_attach``'s files).
        required: Params required by the tool although optional on the wire.
    """

    name: str
    method: str
    doc: str = ""
    hide: tuple[str, ...] = ()
    current: str = ""
    extra: tuple[protocol.Param, ...] = ()
    required: tuple[str, ...] = ()


#: Params every tool leaves to the server: the fencing token and the de-duplication key.
SERVER_FILLED = ("run", "request_id")
_FILES = protocol.Param("files", "list", required=True, max_items=100, max_len=4096,
                        doc="paths of files to attach (relative to the server's working directory, the agent's "
                            "workspace); read by the server and streamed to the daemon")

WORKER_TOOLS: tuple[Tool, ...] = (
    Tool("kanban_context", "task.context", "Everything about your task as Markdown: its description, "
         "attachments, the parents' results, earlier attempts and every comment. Read it first. (id: another "
         "task's context; default: yours)", current="id"),
    Tool("kanban_complete", "task.complete", "Mark your task done with a summary (and a machine-readable "
         "result and metadata for the tasks that depend on it). Your last call: exit after it.",
         hide=("ids",), current="ids"),
    Tool("kanban_block", "task.block", "Block your task with a reason a human must resolve (sticky until "
         "`kanban unblock`). Exit after it.", hide=("ids",), current="ids"),
    Tool("kanban_heartbeat", "task.heartbeat", "Extend your claim with a progress note (your log output counts "
         "as a heartbeat too; this is for long silent steps).", hide=("id",), current="id"),
    Tool("kanban_comment", "task.comment", "Add a comment to your task (progress, findings, questions).",
         hide=("id",), current="id"),
    Tool("kanban_create", "task.create", "Create a task under yours (default parent: your task; a worker may "
         "only create tasks under its own). It starts once all its parents are done.", current="parents"),
    Tool("kanban_link", "task.link", "Make PARENT a parent of CHILD (both under your task)."),
    Tool("kanban_attach", "attach.begin", "Attach files from your workspace to your task (all or none).",
         hide=("id", "size"), current="id", extra=(_FILES,)),
)
REVIEW_TOOLS: tuple[Tool, ...] = (
    Tool("kanban_approve", "task.approve", "Approve the task you review: it is done and its children start.",
         hide=("ids",), current="ids"),
    Tool("kanban_request_changes", "task.request_changes", "Send the task you review back to its worker with "
         "what to change.", hide=("id",), current="id"),
)
BOARD_TOOLS: tuple[Tool, ...] = (
    Tool("kanban_list", "task.list"),
    Tool("kanban_show", "task.show"),
    Tool("kanban_context", "task.context", "A task's context as Markdown: description, attachments, parents' "
         "results, runs and comments", required=("id",)),
    Tool("kanban_create", "task.create"),
    Tool("kanban_link", "task.link"),
    Tool("kanban_assign", "task.assign"),
    Tool("kanban_plan", "dispatch.plan"),
    Tool("kanban_stats", "board.stats"),
    Tool("kanban_approve", "task.approve", required=("ids",)),
    Tool("kanban_request_changes", "task.request_changes", required=("id",)),
    Tool("kanban_retry", "task.retry"),
)


def param_schema(p: protocol.Param) -> dict[str, Any]:
    """The JSON Schema of one registry param.

    Text bounds are the registry's, in characters (the daemon counts UTF-8 bytes and
    answers ``invalid_params`` past them); lists hold strings.
    """
    kind = _JSON_TYPES[p.type]
    out: dict[str, Any] = {"type": [kind, "null"] if p.nullable else kind}
    if p.doc:
        out["description"] = p.doc
    if p.type == "str":
        out["maxLength"] = p.max_len
        if p.choices:
            out["enum"] = [*p.choices, *([None] if p.nullable else [])]
    elif p.type in ("int", "float"):
        out["minimum"] = int(p.min) if p.type == "int" else p.min
        out["maximum"] = int(p.max) if p.type == "int" else p.max
    elif p.type == "list":
        out["items"] = {"type": "string", "maxLength": p.max_len}
        out["maxItems"] = p.max_items
    return out


def tool_params(tool: Tool) -> list[protocol.Param]:
    """The params a tool's schema shows: the method's, less the hidden and server-filled ones, plus its extras."""
    method = protocol.METHODS[tool.method]
    shown = [p for p in method.params if p.name not in tool.hide and p.name not in SERVER_FILLED]
    return [*shown, *tool.extra]


def input_schema(tool: Tool) -> dict[str, Any]:
    """The tool's input JSON Schema, generated from the registry (an object; no other properties)."""
    params = tool_params(tool)
    required = [p.name for p in params if (p.required or p.name in tool.required) and p.name != tool.current]
    schema: dict[str, Any] = {"type": "object", "properties": {p.name: param_schema(p) for p in params},
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def describe(tool: Tool) -> str:
    """The tool's description: its own text, or the method's doc, with what the method returns."""
    method = protocol.METHODS[tool.method]
    text = tool.doc or method.doc
    return f"{text}. Returns {method.result}." if not text.endswith(".") else f"{text} Returns {method.result}."


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the daemon takes this server for (``daemon.whoami``), or a guess before it answered.

    Attributes:
        caller: ``operator`` or ``worker``.
        run: The run this process belongs to (a worker), else ``None``.
        task: That run's task.
        profile: That run's profile.
        role: ``worker`` or ``orchestrator`` (a worker's profile role).
        review: The run is a reviewer run.
        confirmed: The daemon said so (``False``: guessed from the environment).
    """

    caller: str
    run: str | None = None
    task: str | None = None
    profile: str | None = None
    role: str | None = None
    review: bool = False
    confirmed: bool = False

    @property
    def in_run(self) -> bool:
        return self.caller == "worker" and self.run is not None and self.task is not None


def identity_from(answer: dict[str, Any]) -> Identity:
    """An :class:`Identity` from a ``daemon.whoami`` answer."""
    return Identity(caller=answer.get("caller") or "operator", run=answer.get("run"), task=answer.get("task"),
                    profile=answer.get("profile"), role=answer.get("role"), review=bool(answer.get("review")),
                    confirmed=True)


def identity_guess(env: dict[str, str]) -> Identity:
    """Before the daemon answered: a worker if ``KANBAN_RUN`` and ``KANBAN_TASK`` are set, else an operator."""
    if env.get("KANBAN_RUN") and env.get("KANBAN_TASK"):
        return Identity("worker", run=env["KANBAN_RUN"], task=env["KANBAN_TASK"], profile=env.get("KANBAN_PROFILE"),
                        role="worker", review=env.get("KANBAN_REVIEW") == "1")
    return Identity("operator")


def tools_for(who: Identity) -> list[Tool]:
    """The tools this caller gets (see the module docstring), in a stable order, names unique."""
    if not who.in_run:
        return list(BOARD_TOOLS)
    out = list(WORKER_TOOLS)
    if who.review:
        out += REVIEW_TOOLS
    if who.role == "orchestrator":
        names = {t.name for t in out}
        out += [t for t in BOARD_TOOLS if t.name not in names]
    return out


def ancestor_env(keys: tuple[str, ...] = ("KANBAN_SOCKET",), start: int | None = None, max_depth: int = 64
                 ) -> dict[str, str]:
    """The nearest ancestor's environment (``/proc/PID/environ``) that sets ``keys[0]``: its ``KANBAN_*`` values.

    For MCP hosts that start servers with a scrubbed environment. Only our own uid's processes
    can be read; an unreadable one ends the walk. Returns ``{}`` when none is found.
    """
    pid = os.getppid() if start is None else start
    for _ in range(max_depth):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read(1 << 20)
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            break
        env = {}
        for item in raw.split(b"\0"):
            name, sep, value = item.partition(b"=")
            if sep and name.startswith(b"KANBAN_"):
                env[name.decode(errors="replace")] = value.decode(errors="replace")
        if env.get(keys[0]):
            return env
        try:
            pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (ValueError, IndexError):
            break
    return {}


class Bridge:
    """The server's side that talks to the daemon (blocking calls; the SDK runs them in threads).

    Args:
        sock: The socket path (``--socket``, ``$KANBAN_SOCKET`` or an ancestor's).
        env: The ``KANBAN_*`` values to fall back on before ``daemon.whoami`` answers.
        retry_for: Seconds each call rides out a daemon restart.
        say: Receives one-line notices (stderr: the host's log).
    """

    def __init__(self, sock: str, env: dict[str, str], retry_for: float,
                 say: Callable[[str], None] | None = None) -> None:
        self.sock = sock
        self.env = env
        self.retry_for = retry_for
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.who = identity_guess(env)
        self.guessed = False  # the "guessing" notice was said

    # ---- identity -------------------------------------------------------------------------

    def identify(self, retry_for: float) -> Identity:
        """Ask the daemon who we are; keeps the guess (and says why) if it does not answer."""
        try:
            self.who = identity_from(call_retrying("daemon.whoami", {}, self.sock, retry_for=retry_for,
                                                   say=self.say))
        except (ConnectError, ServerError, OSError) as exc:
            if not self.guessed:
                self.guessed = True
                self.say(f"kanban mcp: cannot ask kanband who this process is ({exc}); guessing from the "
                         f"environment: {'run ' + str(self.who.run) if self.who.in_run else 'operator'}")
        return self.who

    def tools(self) -> list[Tool]:
        if not self.who.confirmed:
            self.identify(0.0)
        return tools_for(self.who)

    # ---- calls ----------------------------------------------------------------------------

    def params_for(self, tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
        """The wire params of a call: the arguments, checked against the tool's schema, plus what the server fills.

        Raises:
            RPCError: ``invalid_params`` naming an argument the tool does not take, a missing one, or one the
                registry refuses (type, bounds), as the daemon would.
        """
        method = protocol.METHODS[tool.method]
        shown = {p.name: p for p in tool_params(tool)}
        for key in args:
            if key not in shown:
                raise protocol.RPCError("invalid_params", f"{tool.name}: unknown argument {protocol.safe_name(key)!r}"
                                        f" (it takes: {', '.join(shown) or 'nothing'})", field=protocol.safe_name(key))
        for name in tool.required:
            if args.get(name) in (None, [], ""):
                raise protocol.RPCError("invalid_params", f"{tool.name}: missing required argument {name!r}",
                                        field=name)
        params = {k: v for k, v in args.items() if k not in {p.name for p in tool.extra}}
        who = self.who
        if who.in_run:
            if tool.current and params.get(tool.current) in (None, [], ""):
                params[tool.current] = [who.task] if tool.current in ("ids", "parents") else who.task
            names = {p.name for p in method.params}
            if "run" in names:
                params["run"] = who.run
            if tool.method == "task.comment" and not params.get("author"):
                params["author"] = who.profile or "agent"
            if tool.method == "task.create" and not params.get("created_by"):
                params["created_by"] = who.profile or "agent"
        if any(p.name == "request_id" for p in method.params) and method.writes:
            params["request_id"] = new_request_id()
        if tool.method == "attach.begin":
            for p in tool.extra:
                if args.get(p.name) is None:
                    raise protocol.RPCError("invalid_params", f"{tool.name}: missing required argument {p.name!r}",
                                            field=p.name)
                bad = protocol._value_problem(p, args[p.name]) if isinstance(args[p.name], list) else "must be list"
                if bad:
                    raise protocol.RPCError("invalid_params", f"{tool.name}: argument {p.name!r} {bad}", field=p.name)
            return params
        return protocol.check_params(method, params)

    def call(self, tool: Tool, args: dict[str, Any]) -> Any:
        """Run one tool call against the daemon; returns the method's result.

        Raises:
            RPCError: Refused before sending (bad arguments).
            ServerError: The daemon refused.
            ConnectError: No daemon within ``retry_for`` (or the connection dropped after a write without a
                ``request_id`` was sent).
        """
        params = self.params_for(tool, dict(args))
        method = protocol.METHODS[tool.method]
        if tool.method == "attach.begin":
            from client import attach
            files = [f if os.path.isabs(f) else os.path.abspath(f) for f in args["files"]]
            return attach.send({**params, "files": files}, self.sock, True, self.retry_for)
        resend = not method.writes or "request_id" in params or \
            (method.name == "task.create" and "idempotency_key" in params)
        return call_retrying(method.name, params, self.sock, retry_for=self.retry_for, resend=resend, say=self.say)

    def context_markdown(self, task_id: str) -> str:
        """A task's context rendered as ``kanban context`` prints it."""
        from client.context import render_markdown
        result = call_retrying("task.context", {"id": task_id}, self.sock, retry_for=self.retry_for, say=self.say)
        return render_markdown(result)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """``{name, message, data}`` for a failed call: the daemon's error name, or what went wrong on our side.

    An exception that is none of the expected kinds is a bug of ours: it still becomes a tool error
    (the server stays up for the agent), and its traceback goes to stderr, the MCP host's log."""
    if isinstance(exc, ServerError):
        return {"name": exc.name, "message": str(exc),
                "data": {k: v for k, v in (exc.error.get("data") or {}).items() if k != "name"}}
    if isinstance(exc, protocol.RPCError):
        return {"name": exc.name, "message": exc.message, "data": dict(exc.data)}
    if isinstance(exc, NotRunning):
        return {"name": "not_running", "message": str(exc), "data": {}}
    if isinstance(exc, ConnectError):
        return {"name": "connect_refused", "message": str(exc), "data": {}}
    name = "file_error" if type(exc).__name__ == "FileError" else "connection_failed" if isinstance(exc, OSError) \
        else "internal_error"
    if name == "internal_error":
        import traceback
        traceback.print_exception(exc, file=sys.stderr)
    return {"name": name, "message": f"{type(exc).__name__}: {exc}" if name == "internal_error" else str(exc),
            "data": {}}


def result_text(result: Any) -> str:
    """The text content of a successful call: its result as compact JSON."""
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)


def instructions(who: Identity) -> str:
    """What the server tells the model about itself (the MCP ``instructions``)."""
    if who.in_run:
        text = (f"You are working on kanban task {who.task} (run {who.run}, profile {who.profile}). Start with "
                "kanban_context. End with kanban_complete (summary, result, metadata) or kanban_block (reason). "
                "Tasks you create with kanban_create are children of yours: they run after you are done, and "
                "your result reaches them through their own kanban_context.")
        if who.review:
            text += " This is a review: end it with kanban_approve or kanban_request_changes."
        if who.role == "orchestrator":
            text += " Your profile is an orchestrator: the board tools act on any task."
        return text
    return ("kanban board tools: kanban_list and kanban_show to look, kanban_create and kanban_link to plan "
            "work, kanban_plan for why tasks are (not) starting, kanban_approve / kanban_request_changes for "
            "the review lane.")


# ---- the server (the SDK is imported only from here on) ---------------------------------------


def build_server(bridge: Bridge) -> Any:
    """The SDK's low-level ``Server`` with kanban's tools and the task resource."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    def tool_defs() -> list[Any]:
        return [types.Tool(name=t.name, description=describe(t), input_schema=input_schema(t),
                           annotations=types.ToolAnnotations(read_only_hint=not protocol.METHODS[t.method].writes))
                for t in bridge.tools()]

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=await anyio.to_thread.run_sync(tool_defs))

    def run_call(name: str, args: dict[str, Any]) -> Any:
        tool = next((t for t in bridge.tools() if t.name == name), None)
        if tool is None:
            names = ", ".join(t.name for t in bridge.tools())
            err = {"name": "method_not_found", "message": f"no tool {name!r} here (this server offers: {names})",
                   "data": {"tool": name}}
            return types.CallToolResult(content=[types.TextContent(text=f"method_not_found: {err['message']}")],
                                        structured_content={"error": err}, is_error=True)
        try:
            result = bridge.call(tool, args)
        except Exception as exc:  # every failure is the model's to see, never the server's end
            err = error_payload(exc)
            return types.CallToolResult(content=[types.TextContent(text=f"{err['name']}: {err['message']}")],
                                        structured_content={"error": err}, is_error=True)
        if tool.method == "task.context":
            from client.context import render_markdown
            return types.CallToolResult(content=[types.TextContent(text=render_markdown(result))],
                                        structured_content=result)
        return types.CallToolResult(content=[types.TextContent(text=result_text(result))],
                                    structured_content=result if isinstance(result, dict) else {"result": result})

    async def call_tool(ctx: Any, params: Any) -> Any:
        return await anyio.to_thread.run_sync(run_call, params.name, dict(params.arguments or {}))

    async def list_resources(ctx: Any, params: Any) -> Any:
        who = bridge.who
        res = []
        if who.in_run:
            res.append(types.Resource(uri=f"{TASK_URI_PREFIX}{who.task}", name=f"task {who.task}",
                                      description="your task's context (kanban context)", mime_type="text/markdown"))
        return types.ListResourcesResult(resources=res)

    async def list_templates(ctx: Any, params: Any) -> Any:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
            name="task", uri_template=TASK_URI, mime_type="text/markdown",
            description="a task's context as Markdown: description, attachments, parents' results, runs, comments")])

    def read(uri: str) -> str:
        if not uri.startswith(TASK_URI_PREFIX) or not uri[len(TASK_URI_PREFIX):]:
            raise MCPError(protocol.INVALID_PARAMS, f"invalid_params: not a task resource: {uri[:200]!r} "
                           f"(use {TASK_URI})", {"name": "invalid_params", "uri": uri[:200]})
        try:
            return bridge.context_markdown(uri[len(TASK_URI_PREFIX):])
        except Exception as exc:
            err = error_payload(exc)
            code = protocol.ERRORS.get(err["name"], protocol.INTERNAL_ERROR)
            raise MCPError(code, f"{err['name']}: {err['message']}", {"name": err["name"], **err["data"]}) from None

    async def read_resource(ctx: Any, params: Any) -> Any:
        text = await anyio.to_thread.run_sync(read, str(params.uri))
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=str(params.uri), text=text,
                                                                             mime_type="text/markdown")])

    return Server("kanban", version=_version(), instructions=instructions(bridge.who), on_list_tools=list_tools,
                  on_call_tool=call_tool, on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_read_resource=read_resource)


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("kanband")
    except metadata.PackageNotFoundError:
        return "unknown"


MISSING_SDK = ("kanban mcp: the MCP SDK is not installed (No module named 'mcp'); install it with "
               "`pip install 'kanband[mcp]'` (or `pip install mcp`) in kanband's environment")


def main(sock: str | None, board: str | None = None) -> int:
    """``kanban mcp``: serve MCP on stdin/stdout until the host closes it.

    Args:
        sock: ``--socket``, or ``None``.
        board: ``--board NAME``, or ``None``.

    Returns:
        The exit status: 0 when the host closed stdin, 1 on a startup error (one line on stderr).
    """
    env = dict(os.environ)
    if not sock and not board and not env.get("KANBAN_SOCKET"):
        found = ancestor_env()
        for key, value in found.items():
            env.setdefault(key, value)
        sock = found.get("KANBAN_SOCKET")
    try:
        path = socket_path(sock, board)
        retry_for = retry_for_from_env(env)
    except ValueError as exc:
        print(f"kanban mcp: {exc}", file=sys.stderr)
        return 2
    try:
        import anyio
        from mcp.server.stdio import stdio_server
    except ImportError:
        print(MISSING_SDK, file=sys.stderr)
        return 1
    bridge = Bridge(path, {k: v for k, v in env.items() if k.startswith("KANBAN_")}, retry_for)
    bridge.identify(min(retry_for, WHOAMI_RETRY))
    server = build_server(bridge)

    async def serve() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        return 130
    return 0
