"""The ``kanban`` command line. Stdlib only; never opens the database.

Runs in: the user's shell, a worker, or an orchestrating agent.

Sub-commands and their arguments are built from ``client.protocol.METHODS``:
each method with a ``verb`` becomes ``kanban VERB``, each param an argument.
Human output comes from :mod:`client.formats`; ``--json`` prints the result
object and nothing else. Errors print one line on stderr and exit 1 (the
daemon refused) or 2 (usage).
"""

from __future__ import annotations

import json
import os
import sys

from client import fastargs, protocol
from client.formats import FORMATTERS, fmt_default, fmt_event, use_color
from client.rpc import Client, ConnectError, ServerError

#: Flags whose CLI name differs from the wire name (repeatable singular forms).
FLAG_NAMES = {"parents": "parent", "status": "status", "notify": "notify", "kinds": "kinds"}
#: CLI-only verbs that reuse a method with fixed params.
EXTRA_VERBS = {"tail": ("events.follow", "Stream one task's events (the single-task form of watch)")}
COMMA_LISTS = {"status", "kinds"}


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


def stream(client: Client, verb: str, params: dict, as_json: bool) -> int:
    """``watch`` and ``tail``: print events as the daemon pushes them, until Ctrl-C."""
    def emit(e: dict) -> None:
        print(json.dumps(e) if as_json else fmt_event(e), flush=True)

    try:
        if verb == "tail":  # the task's last 20 events, then live from there (no gap, no repeat)
            recent = client.call("task.show", {"id": params["task"]})["events"]
            if recent:
                params.setdefault("after", recent[-1]["id"])
            for e in recent:
                if not params.get("kinds") or e["kind"] in params["kinds"]:
                    emit(e)
        for e in client.follow(params):
            emit(e)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `kanban watch | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


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
    try:
        with Client(ns.socket) as client:
            if protocol.METHODS[ns._method].stream:
                return stream(client, ns._verb, params, as_json)
            result = client.call(ns._method, params)
    except ConnectError as exc:
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
