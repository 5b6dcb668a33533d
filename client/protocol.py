"""The protocol registry: every JSON-RPC method kanband speaks, declared once.

Runs in: every process. The daemon builds its dispatch table from ``METHODS``,
the ``kanban`` client builds its argument parser from it, and
``docs/protocol.md`` is generated from it (``python -m client.protocol``).

Stdlib only: the client imports this module and must start fast.

Wire format: JSON-RPC 2.0, one JSON object per line (newline-delimited),
over a Unix stream socket. Frames over ``MAX_FRAME`` bytes are refused, and so
are frames nested deeper than ``MAX_DEPTH`` and non-standard numbers (``NaN``,
``Infinity``, floats that overflow): every peer parses with :func:`loads` and
encodes with ``allow_nan=False``. :func:`check_params` bounds every parameter
(text length and validity, integer ranges, list sizes) so bad input is always
``invalid_params`` naming the field.
"""

from __future__ import annotations

import json

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB, newline included
MAX_DEPTH = 64  # nesting of arrays and objects in one frame
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Defaults for :class:`Param` bounds when a declaration gives none.
STR_MAX = 1024  # bytes of UTF-8
FLOAT_MAX = float(1 << 53)
LIST_MAX = 10_000  # items
DICT_DEPTH = 16  # nesting inside a dict parameter (metadata)
KIB = 1024


# --- strict JSON ---------------------------------------------------------------


class FrameError(ValueError):
    """A frame that is not JSON kanband accepts; the message says why."""


def _no_constant(name: str) -> object:
    raise FrameError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf or nan
        raise FrameError(f"number {text[:32]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``data`` may nest arrays/objects deeper than ``limit`` (brackets in strings ignored).

    A pre-scan that runs in C-speed passes: it never recurses, so a hostile frame cannot
    exhaust the stack. ``True`` is exact for valid JSON; for unbalanced input it may also be
    ``True``, which :func:`loads` then reports as a parse error either way.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    outside = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    rest = outside.translate(_TO_SQUARE, _NOT_BRACKETS)
    deep = b"[" * (limit + 1)
    for _ in range(limit):  # each pass removes the innermost pairs: one level
        if deep in rest:
            return True
        shorter = rest.replace(b"[]", b"")
        if len(shorter) == len(rest):
            break
        rest = shorter
    return b"[" in rest


def loads(data: bytes | str) -> object:
    """Parse one frame strictly.

    Args:
        data: One line (UTF-8 bytes, or str), without or with its newline.

    Returns:
        The decoded value.

    Raises:
        FrameError: Not valid UTF-8 or JSON, a non-standard number (``NaN``,
            ``Infinity``, overflowing floats), or nested deeper than ``MAX_DEPTH``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    deep = too_deep(raw)
    try:
        text = raw.decode("utf-8")
        if deep:
            _DECODER.decode(text)  # only to tell "invalid" from "too deep"; recursion bounded below
            raise FrameError(f"nested deeper than {MAX_DEPTH} levels")
        return _DECODER.decode(text)
    except RecursionError:
        raise FrameError(f"nested deeper than {MAX_DEPTH} levels") from None
    except FrameError:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise FrameError(str(exc)) from None


def dumps(obj: object) -> str:
    """Encode compactly for the wire; ``ValueError`` on NaN/Infinity, never invalid JSON."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)

# --- times ------------------------------------------------------------------

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_since(text: str, now: float) -> float:
    """A ``--since`` value as Unix time (seconds).

    Accepted forms, as in journalctl: a duration back from ``now`` (``90s``, ``30m``,
    ``1h30m``, ``2d``, ``1w``), ``today`` or ``yesterday`` (local midnight), a time of
    day (``14:00``, ``14:00:30``: today), an ISO 8601 date or time (``2025-01-31``,
    ``2025-01-31T14:00``, ``2025-01-31 14:00:00+02:00``; local time unless it carries an
    offset), or ``@EPOCH`` seconds.

    Args:
        text: The value as typed.
        now: The current Unix time, for durations.

    Returns:
        The Unix time the value names.

    Raises:
        ValueError: Not one of those forms; the message says what is accepted.
    """
    raw = text.strip()
    bad = ValueError(f"not a time or duration: {text!r} (use e.g. 1h, 30m, 2d, 14:00, 2025-01-31, "
                     "2025-01-31T14:00 or @1700000000)")
    if not raw:
        raise bad
    if raw.startswith("@"):
        try:
            value = float(raw[1:])
        except ValueError:
            raise bad from None
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
        return value
    total, number, seen = 0.0, "", False
    for ch in raw.lower():  # a duration: one or more NUMBER UNIT pairs
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in _UNIT_SECONDS and number:
            try:
                total += float(number) * _UNIT_SECONDS[ch]
            except ValueError:
                raise bad from None
            number, seen = "", True
        else:
            seen = False
            break
    else:
        if seen and not number:
            return now - total
    import datetime  # only here: the client must start fast
    local_midnight = datetime.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if raw in ("today", "yesterday"):
        return (local_midnight - datetime.timedelta(days=raw == "yesterday")).timestamp()
    try:
        if ":" in raw and "-" not in raw:  # a time of day
            t = datetime.time.fromisoformat(raw)
            return datetime.datetime.combine(local_midnight.date(), t).timestamp()
        return datetime.datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise bad from None


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
    "parse_error": "the frame is not valid UTF-8 JSON, uses NaN/Infinity, or nests deeper than MAX_DEPTH",
    "invalid_request": "the frame is JSON but not a JSON-RPC 2.0 request object",
    "method_not_found": "no such method in the registry",
    "invalid_params": "a parameter is missing, unknown, of the wrong type or out of bounds; data.field names it",
    "internal_error": "a bug in kanband; the request was rolled back and the daemon kept running",
    "not_found": "a task, run or subscription id does not exist; data.id names it",
    "illegal_transition": "the task's status does not allow the move; data has task, status, move",
    "conflict": "the request contradicts the board (a cycle, an open parent, a busy task...)",
    "stale_token": "the run id (fencing token) is not the task's current run",
    "frame_too_large": "the request line exceeds MAX_FRAME bytes",
    "unavailable": "the daemon cannot serve this right now (shutting down, reaper not attached, or the board "
                   "file is damaged: then every write, and every read that fails, names the board file)",
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
        max_len: Longest accepted text in UTF-8 bytes (str params, and each item of a list);
            default ``STR_MAX``.
        min: Smallest accepted number (int and float params); default ``INT64_MIN`` or ``-FLOAT_MAX``.
        max: Largest accepted number; default ``INT64_MAX`` or ``FLOAT_MAX``.
        max_items: Most items in a list param; default ``LIST_MAX``.
    """

    __slots__ = ('name', 'type', 'required', 'doc', 'nullable', 'choices', 'cli', 'short', 'env',
                 'max_len', 'min', 'max', 'max_items')

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
        max_len: int = STR_MAX,
        min: float | None = None,
        max: float | None = None,
        max_items: int = LIST_MAX,
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
        self.max_len = max_len
        self.min = min if min is not None else (INT64_MIN if type == "int" else -FLOAT_MAX)
        self.max = max if max is not None else (INT64_MAX if type == "int" else FLOAT_MAX)
        self.max_items = max_items

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


#: Bounds shared by several declarations.
_BODY = 256 * KIB  # task bodies, comments, results
_SUMMARY = 64 * KIB  # summaries, error texts, log tails
_REASON = 4 * KIB  # block reasons, heartbeat notes
_INT32 = {"min": -(1 << 31), "max": (1 << 31) - 1}
_PID = {"min": 1, "max": (1 << 31) - 1}
_EVENT_ID = {"min": 0, "max": INT64_MAX}
LIST_PAGE = 500  # task.list page size when the request gives no limit
IDS_PAGE = 200  # task.ids answer size when the request gives no limit
EVENTS_PAGE = 1000  # events.since page size when the request gives no limit
PAGE_MAX = 10_000  # largest limit accepted by task.list and events.since

_ID = _p("id", "str", "task id (t_xxxxxxxx)", required=True, cli="pos")
_ID_ENV = _p("id", "str", "task id; defaults to $KANBAN_TASK inside a worker", cli="pos*", env="KANBAN_TASK")
_IDS_ENV = _p("ids", "list", "task ids; defaults to $KANBAN_TASK inside a worker", cli="pos*", env="KANBAN_TASK")
_RUN = _p("run", "str", "fencing token (run id); defaults to $KANBAN_RUN inside a worker", env="KANBAN_RUN")
_RUN_KEY = _p("run", "str", "the commenting worker's run id (defaults to $KANBAN_RUN); keys request_id, "
              "not checked against the task", env="KANBAN_RUN")
#: De-duplication key of a worker verb: a repeat with the same (run, request_id) gets the first answer.
_REQUEST_ID = _p("request_id", "str", "client request id: a retry with the same id (and run) is answered "
                 "with the first answer instead of being applied again (the client picks one)")
#: A due time (task.create, task.schedule): parsed and checked by the daemon (daemon/board/schedule.py).
_AT = _p("at", "str", "start at this time: ISO 8601 (2026-12-01T02:00, ...+01:00, ...Z); without an offset, "
         "the daemon's local time (the kanban client adds yours); scheduled until then")
_IN = _p("in", "str", "start after this delay (45m, 2h, 1d, 1h30m); scheduled until then")
_SINCE_DOC = ("a duration back from now (90s, 30m, 1h, 2d, 1w), a time (2025-01-31, 2025-01-31T14:00, 14:00 "
              "today; local time unless it has an offset), or @EPOCH seconds")
_CONTROLS = ("{paused, paused_at, max_in_progress, config_max_in_progress, overridden, profiles: {name: {paused, "
             "paused_at, max_in_progress, config_max_in_progress, overridden, configured}}}")
_STATUSES = ("triage", "todo", "ready", "running", "blocked", "review", "scheduled", "done", "archived")

_METHOD_LIST: tuple[Method, ...] = (
    Method(
        "board.init", "Make sure the board exists and report where everything lives",
        result="{board, state_dir, socket, config, profiles, sinks, stats, board_name, under_systemd}", verb="init",
        writes=True,
    ),
    Method(
        "task.create", "Create a task; it starts ready, or todo while a parent is open",
        params=(
            _p("title", "str", "short title", required=True, cli="pos"),
            _p("body", "str", "longer description", short="b", max_len=_BODY),
            _p("assignee", "str", "profile name that should run it", short="a"),
            _p("priority", "int", "higher runs first (default 0)", short="p", **_INT32),
            _p("tenant", "str", "namespace for multi-project boards"),
            _p("parents", "list", "parent task ids (repeatable --parent)"),
            _p("triage", "bool", "park in triage until promoted"),
            _p("idempotency_key", "str", "same key on a live task returns it instead of creating"),
            _p("max_runtime", "str", "override the profile's max runtime (e.g. 30m)"),
            _p("max_retries", "int", "consecutive failures before giving up", min=0, max=1000),
            _p("workspace", "str", "scratch (default), dir:/abs/path or worktree", max_len=4100),
            _p("created_by", "str", "who filed it (default: $USER)"),
            _p("notify", "list", "sinks to subscribe at creation (repeatable --notify)"),
            _AT, _IN,
            _p("verify", "str", "acceptance command run when its worker completes, e.g. \"pytest -q\" (split like "
               "a shell, no shell runs it; \"\" turns the profile's off)"),
            _p("verify_turns", "int", "rejected runs in a row before the task is blocked (default: the "
               "profile's verify.max_turns, else 3)"),
            _p("review", "bool", "completed (and verified) work waits in review for kanban approve"),
            _p("repo", "str", "git repository for this task's worktree (absolute; implies --workspace worktree)",
               max_len=4096),
            _p("branch", "str", "pin the worktree's branch (checked out if it exists, else made at HEAD; "
               "default wt/<task id>)", max_len=255),
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
            _p("limit", "int", f"page size (default {LIST_PAGE}; a page also stops at about 1 MiB)", short="n",
               min=1, max=PAGE_MAX),
            _p("cursor", "str", "continue after the page that returned this next_cursor"),
            _p("since", "str", f"only tasks updated (or created) at or after this: {_SINCE_DOC}", max_len=64),
        ),
        result="{tasks: [task], total, next_cursor}: next_cursor is null on the last page, else pass it as "
               "cursor (with the same filters and sort) for the next one", verb="list", aliases=("ls",),
    ),
    Method(
        "task.ids", "Task ids starting with PREFIX, in id order (cheap: for shell completion)",
        params=(_p("prefix", "str", "only ids starting with this (default: all)", cli="pos*", max_len=64),
                _p("archived", "bool", "include archived tasks"),
                _p("limit", "int", f"at most this many (default {IDS_PAGE})", short="n", min=1, max=PAGE_MAX)),
        result="{ids: [id], more}: more is true when the limit cut the list short",
    ),
    Method(
        "board.names", "Profile and sink names from the config (cheap: for shell completion)",
        result="{profiles: [name], sinks: [name]}",
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
        params=(_ID, _p("body", "str", "comment text", required=True, cli="pos", max_len=_BODY),
                _p("author", "str", "who says it (default: $USER)"), _RUN_KEY, _REQUEST_ID),
        result="comment object", errors=("not_found",), writes=True, verb="comment",
    ),
    Method(
        "task.complete", "Mark tasks done (inside a worker: the current task)",
        params=(_IDS_ENV, _p("summary", "str", "what was done", short="m", max_len=_SUMMARY),
                _p("result", "str", "machine-readable result text", max_len=_BODY),
                _p("metadata", "dict", "JSON object stored on the run"), _RUN, _REQUEST_ID),
        result="{tasks: [task], promoted: [id]}",
        errors=("not_found", "illegal_transition", "conflict", "stale_token"), writes=True, verb="complete",
    ),
    Method(
        "task.block", "Block tasks with a reason; sticky until unblocked",
        params=(_IDS_ENV, _p("reason", "str", "why", required=True, short="r", max_len=_REASON), _RUN,
                _REQUEST_ID),
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
                _p("block", "str", "block the task with this reason instead of requeueing it", max_len=_REASON)),
        result="{tasks: [task]}", errors=("not_found", "illegal_transition"), writes=True, verb="kill",
    ),
    Method(
        "task.retry", "Clear a task's retry backoff or rate-limit cooldown; requeue a blocked or gave-up task; "
        "give a done task a fresh run",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),
                _p("reason", "str", "why (recorded in the event)", short="r", max_len=_REASON)),
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
        "task.edit", "Edit a task's fields in one request (with no field flags, the CLI opens $EDITOR)",
        params=(_ID, _p("title", "str", "new title"), _p("body", "str", "new body (- reads stdin)", short="b",
                                                              max_len=_BODY),
                _p("priority", "int", "new priority", short="p", **_INT32),
                _p("assignee", "str", "new assignee (empty or null unassigns; a running task's run is ended "
                   "first, as with assign)", short="a", nullable=True),
                _p("workspace", "str", "scratch, dir:/abs/path or worktree (not while running)", max_len=4100),
                _p("max_runtime", "str", "max runtime such as 30m (empty or null: the profile's); from the "
                   "next run", nullable=True),
                _p("max_retries", "int", "consecutive failures before giving up (null: the config's)",
                   nullable=True, min=0, max=1000)),
        result="task object", errors=("not_found", "illegal_transition"), writes=True, verb="edit",
    ),
    Method(
        "task.heartbeat", "Worker heartbeat: extends the claim on the current run",
        params=(_ID_ENV, _RUN, _p("note", "str", "progress note", max_len=_REASON), _REQUEST_ID),
        result="{task, run, claim_expires}", errors=("not_found", "stale_token", "illegal_transition"),
        writes=True, verb="heartbeat",
    ),
    Method(
        "task.runs", "List a task's attempts: outcome, exit code, duration, summary",
        params=(_ID,), result="{runs: [run]}", errors=("not_found",), verb="runs",
    ),
    Method(
        "task.log", "Show a task's worker log (-f follows it across rotations and runs)",
        params=(_ID, _p("tail", "int", "only the last BYTES bytes", min=0),
                _p("lines", "int", "only the last N lines (reaching into the rotated log if needed)", short="n",
                   min=0, max=1_000_000),
                _p("run", "str", "only this run's part of the log, between its separator lines", max_len=64),
                _p("offset", "int", "follow cursor: bytes already read from the current log", cli="", min=0),
                _p("rotation", "str", "follow cursor: the rotation token the offset belongs to", cli="",
                   max_len=128)),
        result="{path, text, size, truncated, exists, offset, rotation, more, gap, status, live, live_run}: "
               "with offset, the bytes after the cursor (across a rotation); pass offset and rotation back for "
               "the next bytes; more means call again at once; status is the task's; live is true while a run "
               "is not ended, live_run names it",
        errors=("not_found",), verb="log",
    ),
    Method(
        "board.stats", "Counts per status and per assignee, and the oldest ready age",
        result="{by_status, by_assignee, oldest_ready_age, total}", verb="stats",
    ),
    Method(
        "events.since", "Events with id greater than AFTER, oldest first",
        params=(_p("after", "int", "event id to start after (default 0)", cli="pos*", **_EVENT_ID),
                _p("task", "str", "only this task"),
                _p("limit", "int", f"page size (default {EVENTS_PAGE}; a page also stops at about 1 MiB)",
                   short="n", min=1, max=PAGE_MAX),
                _p("since", "str", f"only events at or after this: {_SINCE_DOC}", max_len=64),
                _p("kinds", "list", "only these event kinds (repeatable --kind, or comma-separated)")),
        result="{events: [event], last_id, next_cursor}: next_cursor is null on the last page, else pass it "
               "as after for the next one", verb="events",
    ),
    Method(
        "events.follow", "Stream events as they happen (server push)",
        params=(_p("task", "str", "only this task (and its descendants with --descendants)"),
                _p("descendants", "bool", "with --task: include child tasks"),
                _p("assignee", "str", "only this assignee"), _p("tenant", "str", "only this tenant"),
                _p("kinds", "list", "only these event kinds"),
                _p("after", "int", "replay events after this id first", **_EVENT_ID)),
        result="{following, last_id}; then notifications {method: 'event', params: event}; a pushed event also "
               "carries the task's assignee, tenant, title and task_status (its status when pushed)",
        stream=True, verb="watch",
    ),
    Method(
        "daemon.status", "Daemon version, pid, uptime, board path, per-role state, board summary, dispatch "
        "controls (pauses, caps) and the last config reload",
        result="{version, protocol, pid, uptime, board, board_name, roles, summary, board_error, containment, runs, "
               "controls, reload}",
        verb="status",
    ),
    Method(
        "dispatch.run", "Run one dispatch pass now",
        params=(_p("dry_run", "bool", "only say what would start"),),
        result="{started: [..], deferred: [..]}", errors=("unavailable",), writes=True, verb="dispatch",
    ),
    Method(
        "dispatch.plan", "Explain, for every ready task, why it is or is not starting",
        result="{plan: [{task, title, assignee, decision, reason}], controls, reaper_attached, exiting}",
        verb="plan",
    ),
    Method(
        "dispatch.pause", "Stop starting new runs, everywhere or for these profiles; live runs go on. Kept "
        "across restarts",
        params=(_p("profiles", "list", "profiles to pause (none: all dispatch)", cli="pos*"),),
        result=_CONTROLS, errors=("not_found",), writes=True, verb="pause",
    ),
    Method(
        "dispatch.resume", "Start new runs again: undo the global pause, or these profiles' own pauses",
        params=(_p("profiles", "list", "profiles to resume (none: the global pause)", cli="pos*"),),
        result=_CONTROLS, errors=("not_found",), writes=True, verb="resume",
    ),
    Method(
        "dispatch.parallel", "Change how many runs may be live at once, globally or for one profile; kept "
        "across restarts, overriding the config until --reset",
        params=(_p("limit", "int", "live runs at most", cli="pos*", min=0, max=1_000_000),
                _p("profile", "str", "change this profile's cap instead of the global one"),
                _p("reset", "bool", "drop the override: the config's cap is in force again")),
        result=_CONTROLS, errors=("not_found",), writes=True, verb="parallel",
    ),
    Method(
        "daemon.reload", "Re-read the config file, as SIGHUP does; answers whether it was applied or refused, "
        "and why",
        result="{seq, at, result: applied|refused, error, file, origin}", errors=("unavailable", "permission_denied"),
        verb="reload",
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
    # ---- work loop: reopen, scheduled start, operator verbs (issue 11) ----
    Method(
        "task.reopen", "Send done tasks back to ready (todo while a parent is open); their ready children wait "
        "again, running ones are flagged, done descendants flagged (or reopened with --cascade)",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),
                _p("reason", "str", "why (recorded in the reopened event and shown in kanban context)",
                   required=True, short="r", max_len=_REASON),
                _p("cascade", "bool", "reopen done descendants too instead of flagging them")),
        result="{tasks: [task], reparked: [id], running: [id], flagged: [id], reopened: [id]}",
        errors=("not_found", "illegal_transition", "invalid_params"), writes=True, verb="reopen",
    ),
    Method(
        "task.schedule", "Hold a task in scheduled until a time (--at or --in); then it becomes ready, or todo "
        "while a parent is open",
        params=(_ID, _AT, _IN),
        result="task object (due_at: epoch seconds)", errors=("not_found", "illegal_transition", "invalid_params"),
        writes=True, verb="schedule",
    ),
    Method(
        "task.wait", "Wait until every task is done, archived or blocked; answers each status at once, then "
        "pushes the tasks' events",
        params=(_p("ids", "list", "task ids", required=True, cli="pos+"),
                _p("timeout", "str", "give up after this long (30s, 10m); checked by the daemon, enforced by the "
                   "client (exit 124)")),
        result="{tasks: [{id, title, status, final}], timeout (seconds or null), last_id}; then notifications "
               "{method: 'event', params: event} for those tasks, each event with task_status (the status now)",
        errors=("not_found", "invalid_params"), stream=True, verb="wait",
    ),
    Method(
        "board.assignees", "Every profile: command, caps, running and ready counts, cooldown, last outcome",
        result="{assignees: [{name, configured, command, role, max_in_progress, max_runtime, running, ready, "
               "ready_unassigned, cooldown_until, cooldown_reason, last_outcome, last_task, last_run, "
               "last_ended_at}], running_total, max_in_progress, default_assignee}",
        verb="assignees",
    ),
    Method(
        "task.context", "Everything a worker needs for its prompt in one call: the task, its body and attachments, "
        "its parents' results, its earlier runs and every comment (Markdown; --json for programs)",
        params=(_ID_ENV,),
        result="{task, body, attachments: [..], parents: [{id, title, status, summary, result, metadata, run}], "
               "runs: [{id, profile, outcome, exit_code, signal, summary, error_tail, started_at, ended_at}], "
               "current_run, comments: [{id, author, body, created_at}], history: [{kind, at, reason, ..}]}",
        errors=("not_found", "invalid_params"), verb="context",
    ),
    # ---- attachments and housekeeping (issue 11 §6, §7) ----------------------
    Method(
        "attach.begin", "Attach FILEs to a task: the client streams each file (attach.begin, attach.chunk, "
        "attach.commit); begin checks the name and the size caps and opens a temp file",
        params=(_ID, _p("name", "str", "store it under this name (default: the file's base name; one FILE only); "
                        "sanitised, and suffixed ' (2)' when taken"),
                _p("size", "int", "bytes the upload will send", required=True, cli=""), _RUN),
        result="{upload, name, size, chunk}", errors=("not_found", "conflict"), writes=True, verb="attach",
    ),
    Method(
        "attach.chunk", "Send the next bytes of an upload begun on this connection",
        params=(_p("upload", "str", "upload id from attach.begin", required=True),
                _p("offset", "int", "bytes already sent (the daemon checks it)", required=True),
                _p("data", "str", "base64 of at most 512 KiB", required=True, max_len=700 * KIB)),
        result="{upload, received}", errors=("not_found", "unavailable"),
    ),
    Method(
        "attach.commit", "Store uploads begun on this connection as attachments, all or none",
        params=(_p("uploads", "list", "upload ids", required=True),
                _p("sha256", "list", "each upload's SHA-256 (hex), in the same order", required=True),
                _RUN, _REQUEST_ID),
        result="{attachments: [{task, name, size, sha256, path}]}", errors=("not_found", "conflict", "unavailable"),
        writes=True,
    ),
    Method(
        "attach.abort", "Discard uploads begun on this connection",
        params=(_p("uploads", "list", "upload ids", required=True),),
        result="{aborted: [id]}",
    ),
    Method(
        "task.attachments", "List a task's attachments: name, size, SHA-256 and stored path",
        params=(_ID,), result="{task, attachments: [{name, size, sha256, path, created_at, created_by, run}], "
                              "total}", errors=("not_found",), verb="attachments",
    ),
    Method(
        "task.detach", "Remove an attachment from a task",
        params=(_ID, _p("name", "str", "the attachment's stored name (see kanban attachments)", required=True,
                        cli="pos")),
        result="{task, name, size}", errors=("not_found",), writes=True, verb="detach",
    ),
    Method(
        "board.gc", "Remove logs, run files, attachments and workspaces of tasks archived longer than the "
        "retention, prune their old events and merged wt/ branches, vacuum when worthwhile",
        params=(_p("dry_run", "bool", "only report what would be freed"),
                _p("older_than", "str", "archived longer than this (e.g. 30d, 12h, 0s); default retention.archived")),
        result="{dry_run, tasks, freed: {logs, run_files, attachments, workspaces}, branches, events, vacuum, "
               "kept, bytes}; answered when the work is done", errors=("conflict",), writes=True, verb="gc",
    ),
    # ---- verified completion and review -------------------------------------
    Method(
        "task.approve", "Approve tasks in review: done, children promoted (inside a reviewer run: its task)",
        params=(_IDS_ENV, _p("comment", "str", "a comment to attach", short="m"), _RUN, _REQUEST_ID),
        result="{tasks: [task], promoted: [id]}",
        errors=("not_found", "illegal_transition", "conflict", "stale_token", "permission_denied"), writes=True,
        verb="approve",
    ),
    Method(
        "task.request_changes", "Send a task in review back to ready with a comment; its failure count is "
        "untouched (inside a reviewer run: its task)",
        params=(_ID_ENV, _p("comment", "str", "what to change (attached to the task)", required=True, short="m"),
                _RUN, _REQUEST_ID),
        result="{tasks: [task], comment}",
        errors=("not_found", "illegal_transition", "stale_token", "permission_denied"), writes=True,
        verb="request-changes",
    ),
    # ---- web board ----------------------------------------------------------
    Method(
        "web.url", "The web board's URL, with its access token (--open: also open it in a browser)",
        params=(_p("open", "bool", "client side: open the URL in the default browser (the daemon ignores it)"),),
        result="{url, base, listen, token_file, state}",
        errors=("unavailable", "permission_denied"), verb="web",
    ),
    Method(
        "daemon.whoami", "Who the daemon takes the caller for (by its pid): an operator, or a process of a run "
        "(its task, run, profile and role); kanban mcp picks its tools by it",
        result="{caller: operator|worker|role, pid, run, task, profile, role: worker|orchestrator or null, review, "
               "socket}: run, task and profile are null for an operator; review is true in a reviewer run",
        verb="whoami",
    ),
    # ---- internal: daemon roles talking to the dispatcher -------------------
    Method(
        "reaper.attach", "The reaper announces itself; the dispatcher answers with the active runs",
        params=(_p("pid", "int", "reaper pid", required=True, **_PID),
                _p("tracked", "list", "run ids the reaper already watches")),
        result="{runs: [run]}; then notifications spawn/kill", internal=True, stream=True, writes=True,
    ),
    Method(
        "run.starting", "The reaper forked a run's wrapper (claimed -> starting)",
        params=(_p("run", "str", "run id", required=True), _p("pid", "int", "wrapper pid", required=True, **_PID)),
        result="{ok, state}", internal=True, writes=True,
    ),
    Method(
        "run.started", "The reaper reports that a worker exec'd (-> running)",
        params=(_p("run", "str", "run id", required=True), _p("pid", "int", "wrapper pid", required=True, **_PID),
                _p("start_time", "float", "wrapper process start time", required=True, min=0),
                _p("worker_pid", "int", "worker pid", nullable=True, **_PID),
                _p("exec_at", "float", "wall-clock time of the worker's exec", nullable=True, min=0)),
        result="{ok, state}", internal=True, writes=True,
    ),
    Method(
        "run.output", "The reaper saw these runs write to their logs: output is a heartbeat (profiles with "
        "heartbeat_from_output), reported at most once per claim_ttl/4 per run",
        params=(_p("runs", "list", "run ids whose log grew", required=True, max_items=10_000),),
        result="{runs: [id]}: the runs that got a heartbeat", internal=True, writes=True,
    ),
    Method(
        "run.exiting", "The reaper is ending a run on its own decision (max_runtime) (-> exiting)",
        params=(_p("run", "str", "run id", required=True), _p("reason", "str", "why", required=True)),
        result="{ok}", internal=True, writes=True,
    ),
    Method(
        "run.exited", "The reaper reports how a worker ended",
        params=(_p("run", "str", "run id", required=True),
                _p("exit_code", "int", "exit code", nullable=True, **_INT32),
                _p("signal", "int", "terminating signal", nullable=True, min=0, max=255),
                _p("timed_out", "bool", "killed for overrunning max_runtime"),
                _p("killed_for", "str", "why the daemon killed it (stale, reclaim, shutdown)", nullable=True),
                _p("spawn_error", "str", "why it could not start", nullable=True, max_len=_SUMMARY),
                _p("lost", "str", "why the status is unknowable", nullable=True, max_len=_SUMMARY),
                _p("log_tail", "str", "last bytes of the log", max_len=_SUMMARY),
                _p("ended_at", "float", "when it ended", min=0),
                _p("retry_after", "float", "seconds the worker asked to wait after exit 75", nullable=True,
                   min=0)),
        result="{outcome} (or {outcome: null, verify: spec}: run the verify command now)", internal=True,
        writes=True,
    ),
    Method(
        "run.verified", "The reaper reports how a run's verify command ended (-> ended: completed or rejected)",
        params=(_p("run", "str", "run id", required=True),
                _p("exit_code", "int", "the verify command's exit code", nullable=True),
                _p("signal", "int", "terminating signal", nullable=True),
                _p("timed_out", "bool", "killed for overrunning verify.timeout"),
                _p("killed_for", "str", "why the reaper killed it (timeout, cancel, shutdown)", nullable=True),
                _p("spawn_error", "str", "why it could not start", nullable=True, max_len=_SUMMARY),
                _p("lost", "str", "why its status is unknowable (it is run again)", nullable=True, max_len=_SUMMARY),
                _p("output_tail", "str", "the last part of its output", max_len=_SUMMARY),
                _p("output_path", "str", "the file holding its whole output", nullable=True, max_len=4 * KIB),
                _p("ended_at", "float", "when it ended", min=0)),
        result="{outcome} (or {outcome: null, verify: spec}: run it again)", internal=True, writes=True,
    ),
    Method(
        "notifier.attach", "The notifier announces itself; returns sinks' cursors",
        params=(_p("pid", "int", "notifier pid", required=True, **_PID),),
        result="{sinks: {name: state}, last_id}", internal=True, writes=True,
    ),
    Method(
        "notifier.ack", "Advance a sink's cursor (or record a failure)",
        params=(_p("sink", "str", "sink name", required=True),
                _p("cursor", "int", "new cursor (event id delivered)", **_EVENT_ID),
                _p("failed", "bool", "the delivery failed"),
                _p("error", "str", "failure message", max_len=_SUMMARY),
                _p("paused", "bool", "the sink is now paused")),
        result="sink state", internal=True, writes=True,
    ),
    Method(
        "notifier.pending", "Events a sink should deliver after its cursor, matched to subscriptions",
        params=(_p("sink", "str", "sink name", required=True),
                _p("limit", "int", "at most this many", min=1, max=PAGE_MAX)),
        result="{events: [event], cursor}", internal=True,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _METHOD_LIST}


def text_problem(value: str, max_len: int) -> str | None:
    """Why ``value`` is not acceptable text, or ``None``.

    Text must be valid Unicode scalar values (no lone surrogates, which JSON's ``\\ud800``
    escapes can smuggle in), contain no NUL, and be at most ``max_len`` bytes of UTF-8.
    """
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    if size > max_len:
        return f"is too long ({size} bytes, at most {max_len})"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def _number_problem(value: int | float, lo: float, hi: float) -> str | None:
    if not lo <= value <= hi:
        return f"is out of range ({_num(lo)}..{_num(hi)})"
    return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _nested_problem(value: object, depth: int = 0) -> str | None:
    """Check what a dict param holds, iteratively bounded by ``DICT_DEPTH``."""
    stack = [(value, depth)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            bad = text_problem(v, MAX_FRAME)
            if bad:
                return f"holds a string that {bad}"
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                return "holds an integer outside signed 64-bit"
        elif isinstance(v, (dict, list)):
            if d >= DICT_DEPTH:
                return f"is nested deeper than {DICT_DEPTH} levels"
            if isinstance(v, dict):
                for k, item in v.items():
                    bad = text_problem(k, STR_MAX)
                    if bad:
                        return f"holds a key that {bad}"
                    stack.append((item, d + 1))
            else:
                stack.extend((item, d + 1) for item in v)
    return None


def safe_name(key: object) -> str:
    """``key`` if it is short, valid text, else an ASCII rendering: error data never carries bad text."""
    if isinstance(key, str) and len(key) <= 64 and text_problem(key, 256) is None:
        return key
    return ascii(key)[:66]


def check_params(method: Method, params: object) -> dict:
    """Validate a request's params against the declaration.

    Types, then bounds: text is valid Unicode without NUL and at most ``Param.max_len``
    bytes; numbers lie in ``Param.min``..``Param.max`` (signed 64-bit at most); lists hold
    at most ``Param.max_items`` valid strings; a dict (metadata) nests at most
    ``DICT_DEPTH`` levels and holds only valid text and 64-bit integers.

    Args:
        method: The declared method.
        params: The ``params`` member of the request (object, or absent).

    Returns:
        The params as a dict containing only declared names.

    Raises:
        RPCError: ``invalid_params`` naming the offending field (``data.field``).
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RPCError("invalid_params", f"{method.name}: params must be an object, got {type(params).__name__}",
                       field="params")
    declared = {p.name: p for p in method.params}
    for key in params:
        if key not in declared:
            raise RPCError("invalid_params", f"{method.name}: unknown parameter {ascii(key)[:66]}",
                           field=safe_name(key))
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
        bad = _value_problem(p, value)
        if bad:
            raise RPCError("invalid_params", f"{method.name}: parameter {p.name!r} {bad}", field=p.name)
        if p.choices and value not in p.choices:
            raise RPCError("invalid_params",
                           f"{method.name}: parameter {p.name!r} must be one of {', '.join(p.choices)}",
                           field=p.name)
    return dict(params)


def _value_problem(p: Param, value: object) -> str | None:
    """Why a value of the right type is still unacceptable for ``p``, or ``None``."""
    if p.type == "str":
        return text_problem(value, p.max_len)
    if p.type in ("int", "float"):
        return _number_problem(value, p.min, p.max)
    if p.type == "list":
        if len(value) > p.max_items:
            return f"has too many items ({len(value)}, at most {p.max_items})"
        for item in value:
            if not isinstance(item, str):
                return "must be a list of strings"
            bad = text_problem(item, p.max_len)
            if bad:
                return f"holds an item that {bad}"
        return None
    if p.type == "dict":
        return _nested_problem(value)
    return None


def limits_markdown() -> list[str]:
    """The limits every request is held to, for ``docs/protocol.md``."""
    return [
        "## Limits",
        "",
        "Every peer (the daemon, its roles, the `kanban` client) parses frames strictly and encodes",
        "with `allow_nan=False`, so nothing that is not standard JSON is accepted or sent.",
        "",
        "| limit | value | error |",
        "|---|---|---|",
        f"| frame size, newline included | {MAX_FRAME} bytes | `frame_too_large` |",
        f"| nesting of arrays and objects in a frame | {MAX_DEPTH} levels | `parse_error` |",
        "| `NaN`, `Infinity`, floats that overflow, integers over 4300 digits | refused | `parse_error` |",
        "| request `id` | a string of at most 256 bytes, a signed 64-bit integer, a finite number, "
        "or null | `invalid_request` |",
        f"| text params | valid Unicode (no lone surrogates), no NUL, at most {STR_MAX} bytes of UTF-8 "
        "unless the param says otherwise | `invalid_params` |",
        "| integer params | signed 64-bit unless the param says otherwise | `invalid_params` |",
        f"| list params | at most {LIST_MAX} strings, each held to the text rules | `invalid_params` |",
        f"| dict params (metadata) | nesting at most {DICT_DEPTH} levels; strings held to the text rules; "
        "integers signed 64-bit | `invalid_params` |",
        "",
        f"Large answers come in pages: `task.list` returns {LIST_PAGE} tasks by default and "
        f"`events.since` {EVENTS_PAGE} events (at most {PAGE_MAX}; a page also stops after about 1 MiB).",
        "Each result carries `next_cursor`: null on the last page, otherwise the value to pass back",
        "(`cursor` for `task.list`, `after` for `events.since`) for the next page. `task.list` pages",
        "use a keyset over the sort key and the task id, so the order stays stable while you walk it.",
        "",
    ]


def _param_limits(p: Param) -> str:
    if p.type == "str":
        return f"≤ {p.max_len} B" if p.max_len != STR_MAX else ""
    if p.type in ("int", "float"):
        default = (INT64_MIN, INT64_MAX) if p.type == "int" else (-FLOAT_MAX, FLOAT_MAX)
        return "" if (p.min, p.max) == default else f"{_num(p.min)}..{_num(p.max)}"
    if p.type == "list" and p.max_items != LIST_MAX:
        return f"≤ {p.max_items} items"
    return ""


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
        "A request is applied all or none: when a request that names several tasks is refused for one of",
        "them, none of them changed (the error names the one that was refused).",
        "",
        "## Errors",
        "",
        "| name | code | meaning |",
        "|---|---|---|",
    ]
    for name, code in ERRORS.items():
        out.append(f"| `{name}` | {code} | {ERROR_DOCS[name]} |")
    out += ["", *limits_markdown()]
    for internal in (False, True):
        out += ["", "## Internal methods (daemon roles)" if internal else "## Methods", ""]
        for m in _METHOD_LIST:
            if m.internal != internal:
                continue
            cli = f" — CLI: `kanban {m.verb}`" if m.verb else ""
            out += [f"### `{m.name}`{cli}", "", m.doc + ".", ""]
            if m.params:
                out += ["| param | type | required | limits | doc |", "|---|---|---|---|---|"]
                for p in m.params:
                    out.append(f"| `{p.name}` | {p.type}{' or null' if p.nullable else ''} | "
                               f"{'yes' if p.required else 'no'} | {_param_limits(p)} | {p.doc} |")
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
