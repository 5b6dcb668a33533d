"""A small argument parser for the hot path of ``kanban``, built from the registry.

Runs in: the ``kanban`` CLI. ``argparse`` (with ``re``, ``gettext`` and friends)
costs about as much to import as the whole request, and workers call
``kanban complete`` / ``kanban heartbeat`` constantly. This parser accepts the
same command lines as the argparse parser built in :mod:`client.cli` from
the same ``protocol.METHODS`` declarations. Anything it does not fully
understand (``--help``, an unknown flag, a bad value, a missing argument)
returns ``None`` and the caller falls back to argparse, which prints the
proper usage message.
"""

from __future__ import annotations

import types

from client import protocol

GLOBAL_FLAGS = {"--json": "json", "--socket": "socket", "--board": "board"}


def parse(argv: list[str], verbs: dict, flag_names: dict, comma_lists: set, aliases: dict | None = None
          ) -> types.SimpleNamespace | None:
    """Parse ``argv`` like the argparse parser would, or return ``None`` to defer to it.

    ``aliases`` maps a param name to extra flag names (without ``--``) that mean the same.
    """
    ns = types.SimpleNamespace(json=False, socket=None, board=None, none=False)
    rest = list(argv)
    words: list[str] = []
    while rest:  # global options, then the verb (one or two words)
        tok = rest[0]
        if tok == "--json":
            ns.json = True
        elif tok in ("--socket", "--board") and len(rest) > 1:
            setattr(ns, GLOBAL_FLAGS[tok], rest[1])
            rest.pop(0)
        elif tok.startswith(("--socket=", "--board=")):
            name, _, value = tok.partition("=")
            setattr(ns, GLOBAL_FLAGS[name], value)
        elif tok.startswith("-"):
            return None
        else:
            words.append(tok)
            candidate = " ".join(words)
            if candidate in verbs:
                rest.pop(0)
                break
            if len(words) == 2 or not any(v.startswith(candidate + " ") for v in verbs):
                return None
        rest.pop(0)
    verb = " ".join(words)
    if verb not in verbs:
        return None
    method = verbs[verb][0]
    ns._method, ns._verb, ns.verb = method.name, verb, words[0]
    flags: dict[str, protocol.Param] = {}
    positional: list[protocol.Param] = []
    for p in method.params:
        setattr(ns, p.name, None if p.type != "bool" else False)
        if verb == "tail" and p.name == "task":
            positional.append(protocol.Param("task", "str", required=True, cli="pos"))
            continue
        if p.cli.startswith("pos"):
            positional.append(p)
            continue
        if p.cli == "":  # wire only: not on the command line
            continue
        flags["--" + flag_names.get(p.name, p.name).replace("_", "-")] = p
        for alias in (aliases or {}).get(p.name, ()):
            flags["--" + alias] = p
        if p.short:
            flags["-" + p.short] = p
    if method.name == "task.assign":
        flags["--none"] = protocol.Param("none", "bool")
    values: list[str] = []
    only_positional = False
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if only_positional or not tok.startswith("-") or tok == "-":
            values.append(tok)
            continue
        if tok == "--":
            only_positional = True
            continue
        if tok in ("--json",):
            ns.json = True
            continue
        name, eq, inline = tok.partition("=")
        p = flags.get(name)
        if p is None:
            return None
        if p.type == "bool":
            if eq:
                return None
            setattr(ns, p.name, True)
            continue
        if eq:
            raw = inline
        elif i < len(rest):
            raw = rest[i]
            i += 1
        else:
            return None
        value = _convert(p, raw)
        if value is None:
            return None
        if p.type == "list":
            current = getattr(ns, p.name) or []
            current.append(value)
            setattr(ns, p.name, current)
        else:
            setattr(ns, p.name, value)
    for p in positional:
        if p.type == "list":
            if p.cli == "pos+" and not values:
                return None
            setattr(ns, p.name, values or ([] if p.cli != "pos" else None))
            values = []
        elif values:
            value = _convert(p, values.pop(0))
            if value is None:
                return None
            setattr(ns, p.name, value)
        elif p.cli == "pos" and p.required:
            return None
    if values:
        return None
    return ns


def _convert(p: protocol.Param, raw: str) -> object:
    if p.type == "int":
        try:
            return int(raw)
        except ValueError:
            return None
    if p.type == "float":
        try:
            return float(raw)
        except ValueError:
            return None
    if p.choices and raw not in p.choices:
        return None
    return raw
