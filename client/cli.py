"""The ``kanban`` command line. Stdlib only; never opens the database.

Runs in: the user's shell, a worker, or an orchestrating agent.

Sub-commands and their arguments are built from ``client.protocol.METHODS``:
each method with a ``verb`` becomes ``kanban VERB``, each param an argument.
Human output comes from :mod:`client.formats`; ``--json`` prints the result
object and nothing else. Errors print one line on stderr and exit 1 (the
daemon refused, or it is not running) or 2 (usage); with ``--json`` that line
is a JSON object, ``{"error": {"name", "message", "data"}}``. A reader that
closes the pipe early (``kanban list | head``) ends any verb quietly with
status 141, as if SIGPIPE had killed it, like ``cat`` or ``grep`` would.

Through a daemon restart: an operator's verb retries its connect for about
2 s. Inside a worker (``$KANBAN_RUN`` set) every verb keeps retrying for
``$KANBAN_RETRY_FOR`` seconds (120), and the worker verbs carry a random
``request_id`` so that a request resent after a dropped connection is applied
once. ``watch`` and ``tail`` reconnect and resume after the last event printed.
"""

from __future__ import annotations

import json
import os
import sys
import time

from client import fastargs, protocol
from client.formats import FORMATTERS, PagedList, escape, fmt_default, fmt_event, scrub, use_color
from client.rpc import (CONNECT_RETRY, Client, ConnectError, NotRunning, ServerError, call_retrying,
                        follow_resuming, new_request_id, retry_for_from_env, socket_path)

EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away

#: Flags whose CLI name differs from the wire name (repeatable singular forms).
FLAG_NAMES = {"parents": "parent", "status": "status", "notify": "notify", "kinds": "kinds"}
#: Extra flag names for a param (``--kind`` as well as ``--kinds``).
FLAG_ALIASES = {"kinds": ("kind",)}
#: CLI-only verbs that reuse a method with fixed params.
EXTRA_VERBS = {"tail": ("events.follow", "Stream one task's events (the single-task form of watch)")}
#: ``kanban boards``: a CLI-only verb that asks every board's daemon, not one method of one daemon.
BOARDS_HELP = "List the boards on this machine: running or not, and their task counts"
BOARDS_TIMEOUT = 1.0  # seconds each board's daemon has to answer
COMMA_LISTS = {"status", "kinds"}
#: Paged methods: the param that continues a walk, and the result's list.
PAGED = {"task.list": ("cursor", "tasks"), "events.since": ("after", "events")}
#: ``--all`` (CLI only, for paged verbs): walk every page.
ALL_HELP = ("fetch every page, printing each as it arrives (with --json: one JSON object per line, "
            "JSON Lines)")
#: ``kanban init --agent NAME`` (client/agentinit.py; the names are examples/agents/NAME.yaml's).
AGENT_NAMES = ("claude", "codex", "gemini", "aider", "opencode", "goose", "hermes")
#: Arguments a verb reads on the client side and never sends (``kanban attach`` streams FILE… itself,
#: ``kanban init --agent`` writes the user's config file).
LOCAL_PARAMS = {"attach": (protocol.Param("files", "list", required=True, cli="pos+",
                                          doc="files to attach (read by the client and streamed to the daemon)"),),
                "init": (protocol.Param("agent", "str", choices=AGENT_NAMES,
                                        doc="add this agent's ready profile (examples/agents/NAME.yaml) to your "
                                            "config; an existing profile of that name is never overwritten"),
                         protocol.Param("config", "str", doc="with --agent: the config file to add it to (default: "
                                                             "the running daemon's, else the XDG default)"))}
#: ``kanban mcp``: a CLI-only verb (client/mcp.py) that serves MCP on stdio instead of calling one method.
MCP_HELP = ("Serve the Model Context Protocol on stdin/stdout for an agent (register `kanban mcp` with it); "
            "inside a run: the worker tools, else the board tools (see docs/agents.md)")
#: Methods whose answer may take long (gc walks and deletes files): no client-side timeout.
UNBOUNDED = {"board.gc", "daemon.reload"}
#: CLI-only switches, per verb: ``(names, dest, help)``. Never sent to the daemon.
CLI_OPTIONS: dict[str, tuple[tuple[tuple[str, ...], str, str], ...]] = {
    "list": ((("-q", "--quiet"), "quiet", "print only the task ids, one per line"),),
    "show": ((("--no-pager",), "no_pager", "print directly, even when the output is taller than the terminal"),),
    "tail": ((("-f", "--follow"), "follow", "keep following after the task is done or archived"),),
    "log": ((("-f", "--follow"), "follow", "follow the log as it grows, across rotations and runs, until the "
             "task is done, archived or blocked (with --run: until that run ends); shows the last 10 lines "
             "first unless --lines or --run says otherwise"),),
}
CLI_OPTIONS["ls"] = CLI_OPTIONS["list"]
#: What ``kanban completion`` generates scripts for.
SHELLS = ("bash", "zsh", "fish")


def cli_options(verb: str) -> tuple[tuple[tuple[str, ...], str, str], ...]:
    """The CLI-only switches of ``verb`` (its first word), ``--all`` included for paged verbs."""
    opts = CLI_OPTIONS.get(verb, ())
    found = verbs().get(verb)
    if found is not None and found[0].name in PAGED:
        opts = (*opts, (("--all",), "all", ALL_HELP))
    return opts
#: Declared params the client acts on itself and does not send (``kanban web --open``).
CLIENT_ONLY = {"web.url": {"open"}}


class UsageError(Exception):
    """A bad command line; the message is the one line to print."""


def is_task_id(text: str) -> bool:
    """``t_`` and 8 lowercase hex digits (no ``re``: the client must start fast)."""
    return len(text) == 10 and text.startswith("t_") and all(c in "0123456789abcdef" for c in text[2:])


def parser_class() -> type:
    """argparse is imported only when the fast parser defers (help, usage errors)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, exit 2
            raise UsageError(f"{self.prog}: {message}")

    return Parser


def cli_method(m: protocol.Method) -> protocol.Method:
    """The method as the command line sees it: params with ``cli=""`` hidden, ``LOCAL_PARAMS`` added
    after the positionals."""
    local = LOCAL_PARAMS.get(m.verb, ())
    if not local and all(p.cli for p in m.params):
        return m
    shown = [p for p in m.params if p.cli]
    at = sum(1 for p in shown if p.cli.startswith("pos"))
    return protocol.Method(m.name, m.doc, params=(*shown[:at], *local, *shown[at:]), result=m.result,
                           errors=m.errors, writes=m.writes, verb=m.verb, aliases=m.aliases, stream=m.stream)


def verbs() -> dict[str, tuple[protocol.Method, str]]:
    out = {}
    for m in protocol.METHODS.values():
        if m.verb and not m.internal:
            m = cli_method(m)
            out[m.verb] = (m, m.doc)
            for a in m.aliases:
                out[a] = (m, m.doc)
    for verb, (name, doc) in EXTRA_VERBS.items():
        out[verb] = (protocol.METHODS[name], doc)
    return out


def add_params(sp, method: protocol.Method, verb: str) -> None:
    for p in method.params:
        if p.cli == "":  # wire only (a follow cursor, ...)
            continue
        kw: dict = {"help": p.doc}
        if verb == "tail" and p.name == "task":
            sp.add_argument("task", metavar="ID", help="task id")
            continue
        if p.cli.startswith("pos"):
            if p.type == "list":
                kw["nargs"] = "+" if p.cli == "pos+" else "*"
            elif p.cli != "pos" or not p.required:
                kw["nargs"] = "?"
            if p.type == "int":
                kw["type"] = int
            sp.add_argument(p.name, metavar=p.name.upper(), **kw)
            continue
        flag = "--" + FLAG_NAMES.get(p.name, p.name).replace("_", "-")
        names = [flag] + [f"--{a}" for a in FLAG_ALIASES.get(p.name, ())] + ([f"-{p.short}"] if p.short else [])
        if p.type == "bool":
            kw["action"] = "store_true"
        elif p.type == "list":
            kw["action"] = "append"
        elif p.type == "int":
            kw["type"] = int
        elif p.type == "float":
            kw["type"] = float
        if p.choices:
            kw["choices"] = p.choices
        sp.add_argument(*names, dest=p.name, **kw)
    if method.name == "task.assign":
        sp.add_argument("--none", action="store_true", help="unassign")


def build_parser(only: str | None = None):
    import argparse
    Parser = parser_class()
    parser = Parser(prog="kanban", description="kanban: talk to the kanband task board.")
    parser.add_argument("--socket", help="daemon socket (default: $KANBAN_SOCKET or the XDG runtime dir)")
    parser.add_argument("--board", metavar="NAME", help="talk to the named board's daemon (kanband --board NAME; "
                        "default: $KANBAN_BOARD_NAME, else the default board)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    parser.add_argument("--version", action="store_true",
                        help="print the client's and the daemon's versions (warns if their protocols differ)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    if only in (None, "completion"):
        cp = sub.add_parser("completion", help="print a shell completion script",
                            description="Print a completion script for SHELL; load it with "
                                        "`source <(kanban completion bash)` (see README: Shell completion)")
        cp.add_argument("shell", metavar="SHELL", choices=SHELLS)
    groups: dict = {}
    for verb, (method, doc) in verbs().items():
        if only is not None and verb.split()[0] != only:
            continue
        if " " in verb:
            group, leaf = verb.split(" ", 1)
            if group not in groups:
                gp = sub.add_parser(group, help=f"{group} sub-commands")
                groups[group] = gp.add_subparsers(dest="leaf", metavar="ACTION", required=True, parser_class=Parser)
            sp = groups[group].add_parser(leaf, help=doc, description=doc)
        else:
            sp = sub.add_parser(verb, help=doc, description=doc)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON only")
        sp.set_defaults(_method=method.name, _verb=verb)
        add_params(sp, method, verb)
        for names, dest, help_text in cli_options(verb):
            sp.add_argument(*names, dest=dest, action="store_true", help=help_text)
    if only is None or only == "mcp":
        sub.add_parser("mcp", help=MCP_HELP, description=MCP_HELP).set_defaults(_verb="mcp")
    if only is None or only == "boards":
        bp = sub.add_parser("boards", help=BOARDS_HELP, description=BOARDS_HELP)
        bp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON only")
        bp.set_defaults(_verb="boards")
    return parser


def strip_cli_options(argv: list[str], verb: str | None) -> tuple[list[str], set[str]]:
    """Take ``verb``'s CLI-only switches out of ``argv`` (before any ``--``); returns the rest and their dests.

    With ``--help`` the line is left alone, so the help lists them.
    """
    opts = {name: dest for names, dest, _ in cli_options(verb or "") for name in names}
    if not opts or "--help" in argv or "-h" in argv:
        return argv, set()
    at = argv.index(verb) + 1
    out, found, plain = argv[:at], set(), False
    for a in argv[at:]:
        plain = plain or a == "--"
        if not plain and a in opts:
            found.add(opts[a])
        else:
            out.append(a)
    return out, found


def block_reason_from_positionals(ns) -> None:
    """``kanban block ID "reason"`` and, in a worker, ``kanban block "reason"``: a trailing
    positional that is not a task id is the reason (when ``--reason`` is not given)."""
    ids = list(getattr(ns, "ids", None) or [])
    if getattr(ns, "reason", None) is None and ids and not is_task_id(ids[-1]):
        ns.reason = ids.pop()
        ns.ids = ids or None


def collect(ns) -> dict:
    method = cli_method(protocol.METHODS[ns._method])
    if method.name == "task.block":
        block_reason_from_positionals(ns)
    params: dict = {}
    for p in method.params:
        if not hasattr(ns, p.name):
            continue
        value = getattr(ns, p.name)
        if p.type == "list" and value is not None:
            if p.name in COMMA_LISTS:
                value = [v for item in value for v in item.split(",") if v]
            if not value:
                value = None
        if p.type == "dict" and value is not None:
            try:
                value = json.loads(value)
            except ValueError:
                raise UsageError(f"kanban {ns._verb}: --{p.name} must be a JSON object") from None
            if not isinstance(value, dict):
                raise UsageError(f"kanban {ns._verb}: --{p.name} must be a JSON object")
        if p.type == "bool" and value is False:
            value = None
        if value is None and p.env and os.environ.get(p.env):
            value = [os.environ[p.env]] if p.type == "list" else os.environ[p.env]
        if value is not None:
            params[p.name] = value
    if method.name == "task.assign":
        if getattr(ns, "none", False):
            params["assignee"] = None
        elif "assignee" not in params:
            raise UsageError("kanban assign: give an ASSIGNEE, or --none to unassign")
    for p in method.params:
        if p.required and p.name not in params:
            raise UsageError(f"kanban {ns._verb}: missing {p.name.upper() if p.cli.startswith('pos') else '--' + p.name}")
    return params


#: Event kinds after which a task is final for ``kanban tail`` (done or archived).
FINAL_KINDS = frozenset({"completed", "archived"})


def stream(client: Client | None, path: str | None, verb: str, params: dict, as_json: bool,
           retry_for: float, follow: bool = False) -> int:
    """``watch`` and ``tail``: print events as the daemon pushes them.

    ``watch`` runs until Ctrl-C. ``tail`` exits once its task is done or
    archived (at once if it already is), unless ``follow`` (``--follow``).
    The stream survives a daemon restart: it reconnects for up to ``retry_for``
    seconds and resumes after the last event it printed (no gap, no repeat).
    ``client`` is the first connection, or ``None`` to make it with the same retry.
    """
    def emit(e: dict) -> None:
        print(json.dumps(e) if as_json else fmt_event(scrub(e)), flush=True)

    restore_sigint()
    try:
        if verb == "tail":  # the task's last 20 events, then live from there (no gap, no repeat)
            show = {"id": params["task"]}
            shown = (client.call("task.show", show) if client is not None
                     else call_retrying("task.show", show, path, retry_for=retry_for))
            recent = shown["events"]
            if recent:
                params.setdefault("after", recent[-1]["id"])
            for e in recent:
                if not params.get("kinds") or e["kind"] in params["kinds"]:
                    emit(e)
            if not follow and shown["task"]["status"] in ("done", "archived"):
                return 0
        asked = set(params.get("kinds") or ())
        stop = verb == "tail" and not follow
        if stop and asked:  # the stop condition must reach us through the kinds filter
            params["kinds"] = sorted(asked | FINAL_KINDS)
        for e in follow_resuming(params, path, retry_for=retry_for, client=client):
            final = stop and e["kind"] in FINAL_KINDS and e["task_id"] == params["task"]
            if not asked or e["kind"] in asked:
                emit(e)
            if final:
                return 0
    except KeyboardInterrupt:
        return 0
    return 0


def restore_sigint() -> None:
    """Make Ctrl-C (SIGINT) end a stream even when it was inherited as ignored.

    A shell starts a background job (``make test &``, ``cmd &`` in a script) with SIGINT
    ignored, and Python then installs no handler of its own, so ``KeyboardInterrupt`` never
    comes and ``kill -INT`` does nothing. ``watch`` and ``tail`` rely on it to stop cleanly.
    """
    import signal
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def boards(as_json: bool) -> int:
    """``kanban boards``: every board on this machine, and whether its daemon answers.

    Boards are found on disk (the default board's state dir, and ``boards/NAME/`` below it);
    each one's socket is asked for ``daemon.status`` with a short timeout. The client never
    opens a board file: counts come only from a daemon that answers.
    """
    from client.rpc import board_state_dir, default_socket, state_home
    found = []
    home = state_home()
    if os.path.exists(os.path.join(home, "board.db")) or os.path.exists(os.path.join(home, "board.id")):
        found.append((None, home))
    try:
        names = sorted(n for n in os.listdir(os.path.join(home, "boards")) if not n.startswith("."))
    except OSError:
        names = []
    found += [(n, board_state_dir(n)) for n in names if os.path.isdir(board_state_dir(n))]
    rows = []
    for name, state in found:
        sock = default_socket(name)
        row = {"name": name or "(default)", "board": name, "state_dir": state, "socket": sock, "running": False,
               "pid": None, "summary": None, "paused": None, "error": None}
        try:
            with Client(sock, retry=0.0, timeout=BOARDS_TIMEOUT) as c:
                st = c.call("daemon.status")
            row.update(running=True, pid=st.get("pid"), summary=st.get("summary"),
                       paused=(st.get("controls") or {}).get("paused"), error=st.get("board_error"))
        except NotRunning:
            pass
        except (ConnectError, ServerError, OSError) as exc:
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        print(json.dumps({"boards": rows}, separators=(",", ":")))
        return 0
    if not rows:
        print(f"no boards under {home} (start one with `kanband` or `kanband --board NAME`)")
        return 0
    from client.formats import table
    out = []
    for r in rows:
        s = r["summary"] or {}
        state = ("running" + (", paused" if r["paused"] else "")) if r["running"] else "stopped"
        if r["error"]:
            state += f" ({r['error']})"
        counts = (f"{s.get('running', 0)} running, {s.get('ready', 0)} ready, {s.get('blocked', 0)} blocked"
                  if r["running"] else "-")
        out.append([r["name"], state, str(r["pid"] or "-"), counts, r["state_dir"]])
    print(escape(table(out, ["board", "state", "pid", "tasks", "state dir"]), multiline=True))
    return 0


def init_not_running(path: str, board: str | None) -> None:
    """``kanban init`` with no daemon: what to start, and the profiles its config has (from
    ``kanband --check-config``, next to this client; the client itself reads no YAML)."""
    import shutil
    import subprocess
    flag = f" --board {board}" if board else ""
    print(f"kanband is not running (no socket at {path}); start it first:")
    print(f"  kanband{flag}                       # in the foreground, in this terminal")
    print(f"  kanband{flag} service install        # or as a systemd user service (then the commands it prints)")
    exe = os.path.join(os.path.dirname(sys.executable), "kanband")
    exe = exe if os.access(exe, os.X_OK) else shutil.which("kanband")
    if exe:
        res = subprocess.run([exe, *(["--board", board] if board else []), "--check-config"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        line = (res.stdout.strip() or res.stderr.strip()).splitlines()
        if line:
            print(f"its config: {line[0].replace('kanband: ', '')}")
    print("then run `kanban init` again")


def resendable(method: protocol.Method, params: dict) -> bool:
    """Whether sending ``params`` again after a dropped connection cannot apply them twice."""
    return (not method.writes or "request_id" in params
            or (method.name == "task.create" and "idempotency_key" in params))


def walk(client: Client, method: str, params: dict, as_json: bool, quiet: bool = False) -> int:
    """``--all``: fetch page after page on one connection and print each as it arrives.

    Human output is the usual table (tasks) or event lines; ``--json`` prints one JSON
    object per task or event, one per line (JSON Lines), so the output can be consumed
    while it streams.
    """
    key, items = PAGED[method]
    color = use_color()
    pager = PagedList(color) if method == "task.list" else None
    seen = 0
    while True:
        page = client.call(method, params)
        if as_json:
            text = "\n".join(json.dumps(x, separators=(",", ":")) for x in page[items])
        elif quiet:
            text = "\n".join(t["id"] for t in page[items])
        elif pager is not None:
            text = pager.page(scrub(page[items]))
        else:
            text = "\n".join(fmt_event(scrub(e)) for e in page[items])
        seen += len(page[items])
        if text:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        if page.get("next_cursor") is None:
            break
        params[key] = page["next_cursor"]
    if not as_json and not quiet and not seen:
        print("no tasks" if pager is not None else "no events")
    return 0


def more_hint(verb: str, method: str, result: dict) -> str | None:
    """The stderr line that says how to see the rest of a paged answer, or ``None``."""
    if method not in PAGED or not isinstance(result, dict) or result.get("next_cursor") is None:
        return None
    if method == "task.list":
        return (f"kanban: showing {len(result['tasks'])} of {result['total']} tasks; "
                f"`kanban {verb} --all` lists every one")
    return (f"kanban: more events after #{result['next_cursor']}; `kanban {verb} {result['next_cursor']}` "
            f"shows the next page, `kanban {verb} --all` all of them")


def local_time(value: str) -> str:
    """``--at`` without a UTC offset gets the caller's own offset, so the daemon reads it as the
    user's local time; anything else (an offset given, or a value that does not parse, which the
    daemon then refuses naming it) is sent unchanged."""
    import datetime
    try:
        dt = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return value
    return value if dt.tzinfo is not None else dt.astimezone().isoformat()


def pick_verb(argv: list[str]) -> str | None:
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--socket", "--board"):
            skip = True
            continue
        if a.startswith("-"):
            continue
        return a
    return None


def socket_arg(argv: list[str], flag: str = "--socket") -> str | None:
    """The ``--socket`` (or another global ``flag``) given before the verb, if any."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if not a.startswith("-"):
            break
    return None


def client_version() -> str:
    """The installed kanband distribution's version (the client ships in it)."""
    from importlib import metadata  # slow to import: only for --version
    try:
        return metadata.version("kanband")
    except metadata.PackageNotFoundError:
        return "unknown"


def print_version(argv: list[str]) -> int:
    """``kanban --version``: the client's version and protocol, then the daemon's (``daemon.status``).

    Warns on stderr when the two protocol versions differ. Exit 0 even when no daemon
    runs (the client's version is still known); with ``--json`` one object
    ``{client: {version, protocol}, daemon: {version, protocol, socket} or null, protocol_mismatch}``.
    """
    as_json = wants_json(argv)
    mine = {"version": client_version(), "protocol": protocol.PROTOCOL_VERSION}
    daemon, why = None, None
    try:
        with Client(socket_arg(argv), retry=0.0, timeout=5.0) as c:
            st = c.call("daemon.status")
        daemon = {"version": st["version"], "protocol": st.get("protocol"), "socket": st["socket"]}
    except (ConnectError, ServerError, OSError) as exc:
        why = str(exc)
    mismatch = daemon is not None and daemon["protocol"] != mine["protocol"]
    if as_json:
        print(json.dumps({"client": mine, "daemon": daemon, "protocol_mismatch": mismatch}))
    else:
        print(f"kanban {mine['version']} (protocol {mine['protocol']})")
        print(f"kanband {daemon['version']} (protocol {daemon['protocol'] or 'unknown'}) on {daemon['socket']}"
              if daemon else f"kanband: not reachable: {why}")
    if mismatch:
        fail(False, "protocol_mismatch", f"kanban: warning: this client speaks protocol {mine['protocol']} but "
             f"kanband speaks {daemon['protocol'] or 'an older one'}; upgrade the older one, or expect "
             "refused requests")
    return 0


def edit_interactively(socket: str | None, task_id: str, as_json: bool) -> int:
    """``kanban edit ID`` with no field flags: the task's fields in ``$EDITOR``, applied in one request."""
    from client import interactive
    with Client(socket) as c:
        task = c.call("task.show", {"id": task_id})["task"]
    try:
        changed, path = interactive.edit_in_editor(task, list(protocol.METHODS["task.edit"].params))
    except interactive.FormError as exc:
        fail(as_json, "usage_error", f"kanban edit: {exc}")
        return 1
    if not changed:
        os.unlink(path)
        print("kanban edit: nothing changed" if changed == {} else "kanban edit: empty file; nothing changed",
              file=sys.stderr)
        return 0
    try:
        with Client(socket) as c:
            result = c.call("task.edit", {"id": task_id, **changed})
    except ServerError as exc:
        fail(as_json, exc.name, f"{exc} (your text is in {path})", line=f"kanban: {exc.name}: {exc} "
             f"(your text is in {path})")
        return 1
    os.unlink(path)
    print(json.dumps(result, separators=(",", ":")) if as_json else
          f"edited {result['id']}: {', '.join(sorted(changed))}")
    return 0


def wants_json(argv: list[str]) -> bool:
    """``--json`` anywhere before a ``--`` (known even when the rest of the line does not parse)."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def fail(as_json: bool, name: str, message: str, data: dict | None = None, line: str | None = None) -> None:
    """Print an error on stderr: ``line`` (default: ``message``) as one line, or with ``--json``
    the object ``{"error": {"name", "message", "data"}}`` on one line."""
    if as_json:
        line = json.dumps({"error": {"name": name, "message": message, "data": data or {}}})
    else:  # the message may quote task text or argv: one line, no control characters
        line = escape(message if line is None else line)
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass


def _quiet_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            code = run(argv)
        except SystemExit as exc:  # argparse after --help
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
        if sys.stdout is not None:  # None when started with fd 1 closed
            sys.stdout.flush()  # here, not at exit: a closed pipe must be handled like any other
        return code
    except BrokenPipeError:  # `kanban … | head`: the reader has what it wanted
        _quiet_stdout()
        return EXIT_SIGPIPE


def run(argv: list[str]) -> int:
    """Parse, call the daemon, print; returns the exit status."""
    first = pick_verb(argv)
    known = {v.split()[0] for v in verbs()} | {"completion", "mcp"}
    if first is None and "--version" in argv and "--help" not in argv and "-h" not in argv:
        return print_version(argv)
    if first == "completion" and "--help" not in argv and "-h" not in argv:
        from client import completion
        return completion.main(argv[argv.index(first) + 1:], socket_arg(argv))
    argv, switches = strip_cli_options(argv, first)
    follow, walk_all = "follow" in switches, "all" in switches
    as_json = wants_json(argv)
    if first == "mcp" and "--help" not in argv and "-h" not in argv:
        extra = argv[argv.index("mcp") + 1:]
        if extra:
            fail(as_json, "usage_error", f"kanban mcp: unexpected {extra[0]!r} (give --socket or --board before "
                 "the verb)")
            return 2
        from client import mcp
        return mcp.main(socket_arg(argv), socket_arg(argv, "--board"))
    if first == "boards" and "--help" not in argv and "-h" not in argv:
        extra = [a for a in argv if a not in ("boards", "--json")]
        if extra:
            fail(as_json, "usage_error", f"kanban boards: unexpected {extra[0]!r} (it takes only --json)")
            return 2
        return boards(as_json)
    try:
        ns = fastargs.parse(argv, verbs(), FLAG_NAMES, COMMA_LISTS, FLAG_ALIASES)
        if ns is None:
            parser = build_parser(first if first in known else None)
            ns = parser.parse_args(argv)
            if not getattr(ns, "verb", None):
                raise UsageError("kanban: missing VERB (try `kanban --help`)")
        params = collect(ns)
        if params.get("since") is not None:  # local times are the user's: send Unix time
            try:
                params["since"] = f"@{protocol.parse_since(params['since'], time.time())!r}"
            except ValueError as exc:
                raise UsageError(f"kanban {ns._verb}: --since: {exc}") from None
        if params.get("body") == "-" and ns._method in ("task.create", "task.edit"):
            params["body"] = sys.stdin.read()
        try:
            path = socket_path(ns.socket, getattr(ns, "board", None))
        except ValueError as exc:
            raise UsageError(f"kanban: {exc}") from None
        if params.get("repo"):  # the daemon runs elsewhere: a relative --repo means from here
            params["repo"] = os.path.abspath(params["repo"])
        if ns._verb == "init" and (params.get("agent") or params.get("config")):
            if not params.get("agent"):
                raise UsageError("kanban init: --config goes with --agent NAME")
            from client import agentinit
            return agentinit.main(params["agent"], params.get("config"), ns.socket, getattr(ns, "board", None),
                                  as_json or bool(getattr(ns, "json", False)))
    except UsageError as exc:
        fail(as_json, "usage_error", str(exc))
        return 2
    as_json = bool(getattr(ns, "json", False))
    method = protocol.METHODS[ns._method]
    worker = bool(os.environ.get("KANBAN_RUN"))  # inside a worker: ride out a daemon restart
    try:
        retry_for = retry_for_from_env() if worker or method.stream else CONNECT_RETRY
    except ValueError as exc:
        fail(as_json, "usage_error", f"kanban: {exc}")
        return 2
    if worker and any(p.name == "request_id" for p in method.params):
        params.setdefault("request_id", new_request_id())  # one per invocation, reused by its retries
    if method.name in ("task.create", "task.schedule") and isinstance(params.get("at"), str):
        params["at"] = local_time(params["at"])
    if ns._verb == "wait":
        from client.wait import wait_verb
        return wait_verb(params, ns.socket, as_json, retry_for)
    try:
        if ns._method == "task.edit" and set(params) == {"id"}:
            return edit_interactively(ns.socket, params["id"], as_json)
        if ns._method == "task.log" and follow:
            from client import logs
            return logs.follow(ns.socket, params, as_json, retry_for_from_env())
        if method.stream:
            return stream(None if worker else Client(path), path, ns._verb, params, as_json, retry_for,
                          follow=follow)
        if walk_all:
            with Client(path) as client:
                return walk(client, ns._method, params, as_json, quiet="quiet" in switches)
        if ns._verb == "attach":
            from client import attach
            try:
                result = attach.send(params, path, worker, retry_for)
            except attach.FileError as exc:
                print(f"kanban attach: {exc}", file=sys.stderr)
                return 2
        elif worker:
            result = call_retrying(ns._method, params, path, retry_for=retry_for,
                                   resend=resendable(method, params))
        else:
            with Client(path, timeout=None if ns._method in UNBOUNDED else 30.0) as client:
                result = client.call(ns._method, {k: v for k, v in params.items()
                                                  if k not in CLIENT_ONLY.get(ns._method, ())})
    except ConnectError as exc:  # not running, an untrusted server, a socket path too long
        if ns._verb == "init" and isinstance(exc, NotRunning) and not as_json:
            init_not_running(path, getattr(ns, "board", None))
        fail(as_json, "not_running" if isinstance(exc, NotRunning) else "connect_refused", str(exc),
             line=f"kanban: {exc}")
        return 1
    except ServerError as exc:
        data = {k: v for k, v in (exc.error.get("data") or {}).items() if k != "name"}
        fail(as_json, exc.name, str(exc), data, line=f"kanban: {exc.name}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except OSError as exc:
        fail(as_json, "connection_failed", f"connection to kanband failed: {exc}",
             line=f"kanban: connection to kanband failed: {exc}")
        return 1
    refused = ns._method == "daemon.reload" and isinstance(result, dict) and result.get("result") == "refused"
    if refused and not as_json:  # the daemon answered, but kept its old config: an error line, exit 1
        fail(False, "reload_refused", f"kanban: {FORMATTERS['reload'](scrub(result), False)}")
        return 1
    if ns._method == "web.url" and params.get("open"):
        import webbrowser  # only here: it imports a lot
        webbrowser.open(result["url"])
    if as_json:
        print(json.dumps(result, indent=None, separators=(",", ":")))
    elif "quiet" in switches:
        for t in result["tasks"]:
            print(t["id"])
    else:
        fmt = FORMATTERS.get(ns._verb, fmt_default)
        out = fmt(result if ns._verb == "log" else scrub(result), use_color())
        if out and ns._verb == "show" and "no_pager" not in switches and sys.stdout.isatty():
            from client import interactive
            interactive.page(out)
        elif out:
            print(out)
    hint = more_hint(ns._verb, ns._method, result)
    if hint:
        print(hint, file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
