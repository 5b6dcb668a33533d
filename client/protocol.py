"""The protocol registry: every JSON-RPC method kanband speaks, declared once.

Runs in: every process. The daemon builds its dispatch table from ``METHODS``,
the ``kanban`` client builds its argument parser from it, and
``docs/protocol.md`` is generated from it (``python -m client.protocol``).

Stdlib only: the client imports this module and must start fast.

Wire format: JSON-RPC 2.0, one JSON object per line (newline-delimited),
over a Unix stream socket. Frames over ``MAX_FRAME`` bytes are refused.
"""

from __future__ import annotations


PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB, newline included

# --- error codes -------------------------------------------------------------

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

#: Named application error codes. ``error.data.name`` carries the name.
ERRORS: dict[str, int] = {
    "parse_error": PARSE_ERROR,
    "invalid_request": INVALID_REQUEST,
    "method_not_found": METHOD_NOT_FOUND,
    "invalid_params": INVALID_PARAMS,
    "internal_error": INTERNAL_ERROR,
    "not_found": -32001,
    "illegal_transition": -32002,
    "conflict": -32003,
    "stale_token": -32004,
    "frame_too_large": -32005,
    "unavailable": -32006,
    "permission_denied": -32007,
}
ERROR_NAMES: dict[int, str] = {code: name for name, code in ERRORS.items()}

ERROR_DOCS: dict[str, str] = {
    "parse_error": "the frame is not valid JSON",
    "invalid_request": "the frame is JSON but not a JSON-RPC 2.0 request object",
    "method_not_found": "no such method in the registry",
    "invalid_params": "a parameter is missing, unknown or of the wrong type; data.field names it",
    "internal_error": "a bug in kanband; the request was rolled back and the daemon kept running",
    "not_found": "a task, run or subscription id does not exist; data.id names it",
    "illegal_transition": "the task's status does not allow the move; data has task, status, move",
    "conflict": "the request contradicts the board (a cycle, an open parent, a busy task...)",
    "stale_token": "the run id (fencing token) is not the task's current run",
    "frame_too_large": "the request line exceeds MAX_FRAME bytes",
    "unavailable": "the daemon cannot serve this right now (shutting down, reaper not attached)",
    "permission_denied": "the caller may not do this: another uid, an internal method from outside the "
                         "daemon's roles, or a worker acting outside its own run; data names the run and task",
}


class RPCError(Exception):
    """An error that travels over the wire as a JSON-RPC error object.

    Args:
        name: One of ``ERRORS``' keys.
        message: A one-line message naming the offending field or id.
        **data: Extra structured detail, merged into ``error.data``.
    """

    def __init__(
        self,
        name: str,
        message: str, **data: object,
    ) -> None:
        super().__init__(message)
        if name not in ERRORS:
            raise ValueError(f"unknown error name {name!r}")
        self.name = name
        self.code = ERRORS[name]
        self.message = message
        self.data = data

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "data": {"name": self.name, **self.data}}


# --- declarations ------------------------------------------------------------

#: Parameter types: name -> python types accepted on the wire.
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


class Param:
    """One named parameter of a method.

    Attributes:
        name: Wire name (JSON key).
        type: One of ``TYPES``. Lists hold strings.
        required: Whether the request must carry it.
        doc: One line for ``--help`` and the docs.
        nullable: ``null`` is accepted (for example to unassign).
        choices: Allowed values, if restricted.
        cli: How the client exposes it: ``"pos"`` (positional), ``"pos*"``
            (zero or more positionals), ``"pos+"`` (one or more), ``"flag"``
            (``--name``), ``""`` (not on the command line).
        short: Optional one-letter alias for a flag.
        env: Environment variable the client falls back to (worker context).
    """

    __slots__ = ('name', 'type', 'required', 'doc', 'nullable', 'choices', 'cli', 'short', 'env')

    def __init__(
        self,
        name: str,
        type: str,
        required: bool = False,
        doc: str = "",
        nullable: bool = False,
        choices: tuple[str, ...] = (),
        cli: str = "flag",
        short: str = "",
        env: str = "",
    ) -> None:
        self.name = name
        self.type = type
        self.required = required
        self.doc = doc
        self.nullable = nullable
        self.choices = choices
        self.cli = cli
        self.short = short
        self.env = env

    def __repr__(self) -> str:
        return f"Param({self.name!r})"


class Method:
    """One RPC method.

    Attributes:
        name: Namespaced wire name, ``noun.verb``.
        doc: One line for ``--help`` and the docs.
        params: Declared parameters; anything else is refused.
        result: One line describing the result object.
        errors: Application error names the method may return.
        writes: Mutates the board (runs inside a group-committed transaction).
        verb: The ``kanban`` sub-command, or ``""`` for none.
        aliases: Extra sub-command names.
        internal: Used by daemon roles, hidden from the CLI.
        stream: The server keeps pushing notifications after the result.
    """

    __slots__ = ('name', 'doc', 'params', 'result', 'errors', 'writes', 'verb', 'aliases', 'internal', 'stream')

    def __init__(
        self,
        name: str,
        doc: str,
        params: tuple[Param, ...] = (),
        result: str = "object",
        errors: tuple[str, ...] = (),
        writes: bool = False,
        verb: str = "",
        aliases: tuple[str, ...] = (),
        internal: bool = False,
        stream: bool = False,
    ) -> None:
        self.name = name
        self.doc = doc
        self.params = params
        self.result = result
        self.errors = errors
        self.writes = writes
        self.verb = verb
        self.aliases = aliases
        self.internal = internal
        self.stream = stream

    def __repr__(self) -> str:
        return f"Method({self.name!r})"


def _p(name: str, type_: str, doc: str, **kw: object) -> Param:
    return Param(name=name, type=type_, doc=doc, **kw)


_ID = _p("id", "str", "task id (t_xxxxxxxx)", required=True, cli="pos")
_ID_ENV = _p("id", "str", "task id; defaults to $KANBAN_TASK inside a worker", cli="pos*", env="KANBAN_TASK")
_IDS_ENV = _p("ids", "list", "task ids; defaults to $KANBAN_TASK inside a worker", cli="pos*", env="KANBAN_TASK")
_RUN = _p("run", "str", "fencing token (run id); defaults to $KANBAN_RUN inside a worker", env="KANBAN_RUN")
_RUN_KEY = _p("run", "str", "the commenting worker's run id (defaults to $KANBAN_RUN); keys request_id, "
              "not checked against the task", env="KANBAN_RUN")
#: De-duplication key of a worker verb: a repeat with the same (run, request_id) gets the first answer.
_REQUEST_ID = _p("request_id", "str", "client request id: a retry with the same id (and run) is answered "
                 "with the first answer instead of being applied again (the client picks one)")
_STATUSES = ("triage", "todo", "ready", "running", "blocked", "review", "scheduled", "done", "archived")

_METHOD_LIST: tuple[Method, ...] = (
    Method(
        "board.init", "Make sure the board exists and report where everything lives",
        result="{board, state_dir, socket, config, created}", verb="init", writes=True,
    ),
    Method(
        "task.create", "Create a task; it starts ready, or todo while a parent is open",
        params=(
            _p("title", "str", "short title", required=True, cli="pos"),
            _p("body", "str", "longer description", short="b"),
            _p("assignee", "str", "profile name that should run it", short="a"),
            _p("priority", "int", "higher runs first (default 0)", short="p"),
            _p("tenant", "str", "namespace for multi-project boards"),
            _p("parents", "list", "parent task ids (repeatable --parent)"),
            _p("triage", "bool", "park in triage until promoted"),
            _p("idempotency_key", "str", "same key on a live task returns it instead of creating"),
            _p("max_runtime", "str", "override the profile's max runtime (e.g. 30m)"),
            _p("max_retries", "int", "consecutive failures before giving up"),
            _p("workspace", "str", "scratch (default), dir:/abs/path or worktree"),
            _p("created_by", "str", "who filed it (default: $USER)"),
            _p("notify", "list", "sinks to subscribe at creation (repeatable --notify)"),
        ),
        result="task object", errors=("not_found", "conflict"), writes=True, verb="create",
    ),
    Method(
        "task.list", "List tasks (archived ones are hidden unless asked for)",
        params=(
            _p("status", "list", "only these statuses (repeatable)", short="s"),
            _p("assignee", "str", "only this assignee", short="a"),
            _p("tenant", "str", "only this tenant"),
            _p("archived", "bool", "include archived tasks"),
            _p("sort", "str", "ordering", choices=("priority", "created", "updated", "id")),
            _p("limit", "int", "at most this many rows", short="n"),
        ),
        result="{tasks: [task], total}", verb="list", aliases=("ls",),
    ),
    Method(
        "task.show", "Show a task with its parents, children, comments, runs and recent events",
        params=(_ID,), result="{task, parents, children, comments, runs, events}",
        errors=("not_found",), verb="show",
    ),
    Method(
        "task.assign", "Assign a task to a profile (or unassign with --none)",
        params=(_ID, _p("assignee", "str", "new assignee (null unassigns)", required=True, nullable=True,
                        cli="pos*")),
        result="task object", errors=("not_found",), writes=True, verb="assign",
    ),
    Method(
        "task.link", "Make PARENT a parent of CHILD",
        params=(_p("parent", "str", "parent id", required=True, cli="pos"),
                _p("child", "str", "child id", required=True, cli="pos")),
        result="{parent, child, child_status}", errors=("not_found", "conflict"), writes=True, verb="link",
    ),
    Method(
        "task.unlink", "Remove the PARENT -> CHILD link",
        params=(_p("parent", "str", "parent id", required=True, cli="pos"),
                _p("child", "str", "child id", required=True, cli="pos")),
        result="{parent, child, child_status}", errors=("not_found",), writes=True, verb="unlink",
    ),
    Method(
        "task.comment", "Add a comment to a task",
        params=(_ID, _p("body", "str", "comment text", required=True, cli="pos"),
                _p("author", "str", "who says it (default: $USER)"), _RUN_KEY, _REQUEST_ID),
        result="comment object", errors=("not_found",), writes=True, verb="comment",
    ),
    Method(
        "task.complete", "Mark tasks done (inside a worker: the current task)",
        params=(_IDS_ENV, _p("summary", "str", "what was done", short="m"),
                _p("result", "str", "machine-readable result text"),
                _p("metadata", "dict", "JSON object stored on the run"), _RUN, _REQUEST_ID),
        result="{tasks: [task], promoted: [id]}",
        errors=("not_found", "illegal_transition", "conflict", "stale_token"), writes=True, verb="complete",
    ),
    Method(
        "task.block", "Block tasks with a reason; sticky until unblocked",
        params=(_IDS_ENV, _p("reason", "str", "why", required=True, short="r"), _RUN, _REQUEST_ID),
        result="{tasks: [task]}", errors=("not_found", "illegal_transition", "stale_token"),
        writes=True, verb="block",
    ),
    Method(
        "task.unblock", "Unblock tasks: back to ready, or todo while a parent is open",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),),
        result="{tasks: [task]}", errors=("not_found", "illegal_transition"), writes=True, verb="unblock",
    ),
    Method(
        "task.kill", "End tasks' current runs now (TERM, KILL after kill_grace); requeued, or blocked with --block",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),
                _p("block", "str", "block the task with this reason instead of requeueing it")),
        result="{tasks: [task]}", errors=("not_found", "illegal_transition"), writes=True, verb="kill",
    ),
    Method(
        "task.retry", "Clear a task's retry backoff or rate-limit cooldown; requeue a blocked or gave-up task",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),
                _p("reason", "str", "why (recorded in the event)", short="r")),
        result="{tasks: [task]}", errors=("not_found", "illegal_transition"), writes=True, verb="retry",
    ),
    Method(
        "task.archive", "Archive tasks; they vanish from default lists",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),),
        result="{tasks: [task], promoted: [id]}", errors=("not_found", "illegal_transition", "conflict"),
        writes=True, verb="archive",
    ),
    Method(
        "task.promote", "Move a triage or todo task to ready (refused while a parent is open)",
        params=(_ID,), result="task object", errors=("not_found", "illegal_transition", "conflict"),
        writes=True, verb="promote",
    ),
    Method(
        "task.edit", "Edit a task's title, body or priority",
        params=(_ID, _p("title", "str", "new title"), _p("body", "str", "new body", short="b"),
                _p("priority", "int", "new priority", short="p")),
        result="task object", errors=("not_found",), writes=True, verb="edit",
    ),
    Method(
        "task.heartbeat", "Worker heartbeat: extends the claim on the current run",
        params=(_ID_ENV, _RUN, _p("note", "str", "progress note"), _REQUEST_ID),
        result="{task, run, claim_expires}", errors=("not_found", "stale_token", "illegal_transition"),
        writes=True, verb="heartbeat",
    ),
    Method(
        "task.runs", "List a task's attempts: outcome, exit code, duration, summary",
        params=(_ID,), result="{runs: [run]}", errors=("not_found",), verb="runs",
    ),
    Method(
        "task.log", "Show a task's worker log",
        params=(_ID, _p("tail", "int", "only the last BYTES bytes")),
        result="{path, text, size, truncated}", errors=("not_found",), verb="log",
    ),
    Method(
        "board.stats", "Counts per status and per assignee, and the oldest ready age",
        result="{by_status, by_assignee, oldest_ready_age, total}", verb="stats",
    ),
    Method(
        "events.since", "Events with id greater than AFTER, oldest first",
        params=(_p("after", "int", "event id to start after (default 0)", cli="pos*"),
                _p("task", "str", "only this task"), _p("limit", "int", "at most this many", short="n")),
        result="{events: [event], last_id}", verb="events",
    ),
    Method(
        "events.follow", "Stream events as they happen (server push)",
        params=(_p("task", "str", "only this task (and its descendants with --descendants)"),
                _p("descendants", "bool", "with --task: include child tasks"),
                _p("assignee", "str", "only this assignee"), _p("tenant", "str", "only this tenant"),
                _p("kinds", "list", "only these event kinds"),
                _p("after", "int", "replay events after this id first")),
        result="{following, last_id}; then notifications {method: 'event', params: event}",
        stream=True, verb="watch",
    ),
    Method(
        "daemon.status", "Daemon version, pid, uptime, board path, per-role state and board summary",
        result="{version, pid, uptime, board, roles, summary}", verb="status",
    ),
    Method(
        "dispatch.run", "Run one dispatch pass now",
        params=(_p("dry_run", "bool", "only say what would start"),),
        result="{started: [..], deferred: [..]}", errors=("unavailable",), writes=True, verb="dispatch",
    ),
    Method(
        "dispatch.plan", "Explain, for every ready task, why it is or is not starting",
        result="{plan: [{task, title, assignee, decision, reason}]}", verb="plan",
    ),
    Method(
        "notify.subscribe", "Subscribe a sink to a task's events, or to a filter",
        params=(_p("id", "str", "task id (omit for a filter subscription)", cli="pos*"),
                _p("sink", "str", "sink name from the config", required=True),
                _p("kinds", "list", "event kinds (default: the sink's kinds)"),
                _p("descendants", "bool", "include the task's descendants"),
                _p("assignee", "str", "filter: assignee"), _p("tenant", "str", "filter: tenant")),
        result="subscription object", errors=("not_found",), writes=True, verb="notify subscribe",
    ),
    Method(
        "notify.list", "List subscriptions and sink states",
        result="{subscriptions: [..], sinks: [..]}", verb="notify list",
    ),
    Method(
        "notify.unsubscribe", "Remove subscriptions by id",
        params=(_p("ids", "list", "subscription ids", required=True, cli="pos+"),),
        result="{removed: [id]}", errors=("not_found",), writes=True, verb="notify unsubscribe",
    ),
    Method(
        "notify.resume", "Resume a paused sink",
        params=(_p("sink", "str", "sink name", required=True, cli="pos"),),
        result="sink state", errors=("not_found",), writes=True, verb="notify resume",
    ),
    # ---- web board ----------------------------------------------------------
    Method(
        "web.url", "The web board's URL, with its access token (--open: also open it in a browser)",
        params=(_p("open", "bool", "client side: open the URL in the default browser (the daemon ignores it)"),),
        result="{url, base, listen, token_file, state}",
        errors=("unavailable", "permission_denied"), verb="web",
    ),
    # ---- internal: daemon roles talking to the dispatcher -------------------
    Method(
        "reaper.attach", "The reaper announces itself; the dispatcher answers with the active runs",
        params=(_p("pid", "int", "reaper pid", required=True),
                _p("tracked", "list", "run ids the reaper already watches")),
        result="{runs: [run]}; then notifications spawn/kill", internal=True, stream=True, writes=True,
    ),
    Method(
        "run.starting", "The reaper forked a run's wrapper (claimed -> starting)",
        params=(_p("run", "str", "run id", required=True), _p("pid", "int", "wrapper pid", required=True)),
        result="{ok, state}", internal=True, writes=True,
    ),
    Method(
        "run.started", "The reaper reports that a worker exec'd (-> running)",
        params=(_p("run", "str", "run id", required=True), _p("pid", "int", "wrapper pid", required=True),
                _p("start_time", "float", "wrapper process start time", required=True),
                _p("worker_pid", "int", "worker pid", nullable=True),
                _p("exec_at", "float", "wall-clock time of the worker's exec", nullable=True)),
        result="{ok, state}", internal=True, writes=True,
    ),
    Method(
        "run.exiting", "The reaper is ending a run on its own decision (max_runtime) (-> exiting)",
        params=(_p("run", "str", "run id", required=True), _p("reason", "str", "why", required=True)),
        result="{ok}", internal=True, writes=True,
    ),
    Method(
        "run.exited", "The reaper reports how a worker ended",
        params=(_p("run", "str", "run id", required=True),
                _p("exit_code", "int", "exit code", nullable=True),
                _p("signal", "int", "terminating signal", nullable=True),
                _p("timed_out", "bool", "killed for overrunning max_runtime"),
                _p("killed_for", "str", "why the daemon killed it (stale, reclaim, shutdown)", nullable=True),
                _p("spawn_error", "str", "why it could not start", nullable=True),
                _p("lost", "str", "why the status is unknowable", nullable=True),
                _p("log_tail", "str", "last bytes of the log"),
                _p("ended_at", "float", "when it ended"),
                _p("retry_after", "float", "seconds the worker asked to wait after exit 75", nullable=True)),
        result="{outcome}", internal=True, writes=True,
    ),
    Method(
        "notifier.attach", "The notifier announces itself; returns sinks' cursors",
        params=(_p("pid", "int", "notifier pid", required=True),),
        result="{sinks: {name: state}, last_id}", internal=True, writes=True,
    ),
    Method(
        "notifier.ack", "Advance a sink's cursor (or record a failure)",
        params=(_p("sink", "str", "sink name", required=True),
                _p("cursor", "int", "new cursor (event id delivered)"),
                _p("failed", "bool", "the delivery failed"),
                _p("error", "str", "failure message"),
                _p("paused", "bool", "the sink is now paused")),
        result="sink state", internal=True, writes=True,
    ),
    Method(
        "notifier.pending", "Events a sink should deliver after its cursor, matched to subscriptions",
        params=(_p("sink", "str", "sink name", required=True), _p("limit", "int", "at most this many")),
        result="{events: [event], cursor}", internal=True,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _METHOD_LIST}


def check_params(method: Method, params: object) -> dict:
    """Validate a request's params against the declaration.

    Args:
        method: The declared method.
        params: The ``params`` member of the request (object, or absent).

    Returns:
        The params as a dict containing only declared names.

    Raises:
        RPCError: ``invalid_params`` naming the offending field.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RPCError("invalid_params", f"{method.name}: params must be an object, got {type(params).__name__}",
                       field="params")
    declared = {p.name: p for p in method.params}
    for key in params:
        if key not in declared:
            raise RPCError("invalid_params", f"{method.name}: unknown parameter {key!r}", field=key)
    for p in method.params:
        if p.name not in params or params[p.name] is None:
            if p.required and not (p.nullable and p.name in params):
                raise RPCError("invalid_params", f"{method.name}: missing required parameter {p.name!r}",
                               field=p.name)
            if p.name in params and not p.nullable:
                del params[p.name]
            continue
        value = params[p.name]
        ok_types = TYPES[p.type]
        if isinstance(value, bool) and bool not in ok_types:
            ok = False
        else:
            ok = isinstance(value, ok_types)
        if not ok:
            raise RPCError("invalid_params",
                           f"{method.name}: parameter {p.name!r} must be {p.type}, got {type(value).__name__}",
                           field=p.name)
        if p.type == "list" and not all(isinstance(v, str) for v in value):
            raise RPCError("invalid_params", f"{method.name}: parameter {p.name!r} must be a list of strings",
                           field=p.name)
        if p.choices and value not in p.choices:
            raise RPCError("invalid_params",
                           f"{method.name}: parameter {p.name!r} must be one of {', '.join(p.choices)}",
                           field=p.name)
    return dict(params)


def render_markdown() -> str:
    """Render the registry as the Markdown page ``docs/protocol.md``."""
    out = [
        "# kanband JSON-RPC protocol",
        "",
        "Generated from `client/protocol.py` by `python -m client.protocol > docs/protocol.md`;",
        "do not edit by hand. A test checks that this page matches the registry.",
        "",
        "JSON-RPC 2.0, newline-delimited, over the Unix stream socket "
        "(`$XDG_RUNTIME_DIR/kanban/kanband.sock` by default).",
        f"Frames are capped at {MAX_FRAME} bytes; only the socket owner's uid may connect.",
        "",
        "## Errors",
        "",
        "| name | code | meaning |",
        "|---|---|---|",
    ]
    for name, code in ERRORS.items():
        out.append(f"| `{name}` | {code} | {ERROR_DOCS[name]} |")
    for internal in (False, True):
        out += ["", "## Internal methods (daemon roles)" if internal else "## Methods", ""]
        for m in _METHOD_LIST:
            if m.internal != internal:
                continue
            cli = f" — CLI: `kanban {m.verb}`" if m.verb else ""
            out += [f"### `{m.name}`{cli}", "", m.doc + ".", ""]
            if m.params:
                out += ["| param | type | required | doc |", "|---|---|---|---|"]
                for p in m.params:
                    out.append(f"| `{p.name}` | {p.type}{' or null' if p.nullable else ''} | "
                               f"{'yes' if p.required else 'no'} | {p.doc} |")
                out.append("")
            out.append(f"Result: {m.result}.")
            if m.errors:
                out.append("Errors: " + ", ".join(f"`{e}`" for e in m.errors) + ".")
            if m.writes:
                out.append("Writes: yes (group-committed, acknowledged only after the commit).")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
