"""The ``kanban`` command line. Stdlib only; never opens the database.

Runs in: the user's shell, a worker, or an orchestrating agent.

Sub-commands and their arguments are built from ``client.protocol.METHODS``:
each method with a ``verb`` becomes ``kanban VERB``, each param an argument.
Human output comes from :mod:`client.formats`; ``--json`` prints the result
object and nothing else. Errors print one line on stderr and exit 1 (the
daemon refused) or 2 (usage).

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

from client import fastargs, protocol
from client.formats import FORMATTERS, fmt_default, fmt_event, use_color
from client.rpc import (CONNECT_RETRY, Client, NotRunning, ServerError, call_retrying, follow_resuming,
                        new_request_id, retry_for_from_env)

#: Flags whose CLI name differs from the wire name (repeatable singular forms).
FLAG_NAMES = {"parents": "parent", "status": "status", "notify": "notify", "kinds": "kinds"}
#: CLI-only verbs that reuse a method with fixed params.
EXTRA_VERBS = {"tail": ("events.follow", "Stream one task's events (the single-task form of watch)")}
COMMA_LISTS = {"status", "kinds"}
#: Declared params the client acts on itself and does not send (``kanban web --open``).
CLIENT_ONLY = {"web.url": {"open"}}


class UsageError(Exception):
    pass


def parser_class() -> type:
    """argparse is imported only when the fast parser defers (help, usage errors)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, exit 2
            raise UsageError(f"{self.prog}: {message}")

    return Parser


def verbs() -> dict[str, tuple[protocol.Method, str]]:
    out = {}
    for m in protocol.METHODS.values():
        if m.verb and not m.internal:
            out[m.verb] = (m, m.doc)
            for a in m.aliases:
                out[a] = (m, m.doc)
    for verb, (name, doc) in EXTRA_VERBS.items():
        out[verb] = (protocol.METHODS[name], doc)
    return out


def add_params(sp, method: protocol.Method, verb: str) -> None:
    for p in method.params:
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
        names = [flag] + ([f"-{p.short}"] if p.short else [])
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
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
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
    return parser


def collect(ns) -> dict:
    method = protocol.METHODS[ns._method]
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


def stream(client: Client | None, path: str | None, verb: str, params: dict, as_json: bool,
           retry_for: float) -> int:
    """``watch`` and ``tail``: print events as the daemon pushes them, until Ctrl-C.

    The stream survives a daemon restart: it reconnects for up to ``retry_for``
    seconds and resumes after the last event it printed (no gap, no repeat).
    ``client`` is the first connection, or ``None`` to make it with the same retry.
    """
    def emit(e: dict) -> None:
        print(json.dumps(e) if as_json else fmt_event(e), flush=True)

    try:
        if verb == "tail":  # the task's last 20 events, then live from there (no gap, no repeat)
            show = {"id": params["task"]}
            recent = (client.call("task.show", show) if client is not None
                      else call_retrying("task.show", show, path, retry_for=retry_for))["events"]
            if recent:
                params.setdefault("after", recent[-1]["id"])
            for e in recent:
                if not params.get("kinds") or e["kind"] in params["kinds"]:
                    emit(e)
        for e in follow_resuming(params, path, retry_for=retry_for, client=client):
            emit(e)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `kanban watch | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def resendable(method: protocol.Method, params: dict) -> bool:
    """Whether sending ``params`` again after a dropped connection cannot apply them twice."""
    return (not method.writes or "request_id" in params
            or (method.name == "task.create" and "idempotency_key" in params))


def pick_verb(argv: list[str]) -> str | None:
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--socket":
            skip = True
            continue
        if a.startswith("-"):
            continue
        return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = pick_verb(argv)
    known = {v.split()[0] for v in verbs()}
    try:
        ns = fastargs.parse(argv, verbs(), FLAG_NAMES, COMMA_LISTS)
        if ns is None:
            parser = build_parser(first if first in known else None)
            ns = parser.parse_args(argv)
            if not getattr(ns, "verb", None):
                print("kanban: missing VERB (try `kanban --help`)", file=sys.stderr)
                return 2
        params = collect(ns)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    as_json = bool(getattr(ns, "json", False))
    method = protocol.METHODS[ns._method]
    worker = bool(os.environ.get("KANBAN_RUN"))  # inside a worker: ride out a daemon restart
    try:
        retry_for = retry_for_from_env() if worker or method.stream else CONNECT_RETRY
    except ValueError as exc:
        print(f"kanban: {exc}", file=sys.stderr)
        return 2
    if worker and any(p.name == "request_id" for p in method.params):
        params.setdefault("request_id", new_request_id())  # one per invocation, reused by its retries
    try:
        if method.stream:
            return stream(None if worker else Client(ns.socket), ns.socket, ns._verb, params, as_json, retry_for)
        if worker:
            result = call_retrying(ns._method, params, ns.socket, retry_for=retry_for,
                                   resend=resendable(method, params))
        else:
            with Client(ns.socket) as client:
                result = client.call(ns._method, {k: v for k, v in params.items()
                                                          if k not in CLIENT_ONLY.get(ns._method, ())})
    except NotRunning as exc:
        print(f"kanban: {exc}", file=sys.stderr)
        return 1
    except ServerError as exc:
        print(f"kanban: {exc.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"kanban: connection to kanband failed: {exc}", file=sys.stderr)
        return 1
    if ns._method == "web.url" and params.get("open"):
        import webbrowser  # only here: it imports a lot
        webbrowser.open(result["url"])
    if as_json:
        print(json.dumps(result, indent=None, separators=(",", ":")))
    else:
        fmt = FORMATTERS.get(ns._verb, fmt_default)
        out = fmt(result, use_color())
        if out:
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
