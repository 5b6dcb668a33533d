"""``kanban init --agent NAME`` done where YAML can be read: add a shipped agent profile to a config file.

Runs in: a short-lived ``kanband profile add NAME --to FILE --json`` process that the
``kanban`` client starts (``client/agentinit.py``), so the client itself stays stdlib-only.
The config file is the user's own.

How, keeping the user's file intact (comments, order, layout): PyYAML cannot write YAML
back with its comments, so the profile's text is inserted as text:

- no ``profiles:`` key (or no file): ``profiles:`` and the profile are appended;
- ``profiles:`` in block style: the profile goes at the end of that block, indented like
  the profiles already there (``profiles:`` with nothing, ``{}``, ``null`` or ``~``
  becomes a block);
- ``profiles:`` in flow style (``profiles: {a: …}``): refused, with the file to copy from.

Then the result is parsed again and must equal the old config plus exactly the new
profile, and ``kanband --check-config`` must accept its keys (a missing agent binary
is only a note: install it before the first run). Only then is the file replaced,
atomically, keeping its mode. An existing profile of that name is never overwritten.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import yaml

from client.agentinit import AGENTS, InitError, profile_file
from daemon import checks
from daemon import config as config_mod


def _top_key(line: str) -> str | None:
    """The key a top-level (column 0) mapping line starts, or None (comments, blanks, indented lines)."""
    if not line or line[0] in " \t#\n\r" or line.startswith(("---", "...")):
        return None
    key, sep, _ = line.partition(":")
    return key.strip().strip("'\"") if sep else None


def insert_profile(text: str, profile_text: str) -> str:
    """``text`` (a config file, maybe empty) with ``profile_text`` (``NAME:`` and its keys, at column 0)
    added under ``profiles:``; see the module docstring.

    Raises:
        InitError: ``profiles:`` is written in flow style.
    """
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    block = profile_text.rstrip("\n").splitlines()
    at = next((i for i, ln in enumerate(lines) if _top_key(ln) == "profiles"), None)
    if at is None:
        sep = ["\n"] if lines and lines[-1].strip() else []
        return "".join(lines + sep + ["profiles:\n"] + [("  " + b if b else "") + "\n" for b in block])
    head, _, rest = lines[at].partition(":")
    value = rest.split(" #", 1)[0].strip()
    if value in ("{}", "null", "~"):
        lines[at] = f"{head}:\n"
    elif value:
        raise InitError("the config's profiles: is written in flow style ({...}); add the profile by hand")
    end, indent = at + 1, None
    for i in range(at + 1, len(lines)):  # the block: indented lines; blanks and comments neither end nor extend it
        ln = lines[i]
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        if ln[0] not in " \t":
            break
        if indent is None:
            indent = ln[:len(ln) - len(ln.lstrip())]
        end = i + 1
    pad = indent if indent is not None else "  "
    new = [(pad + b if b else "") + "\n" for b in block]
    if indent is not None and end > at + 1:
        new = ["\n", *new]
    return "".join(lines[:end] + new + lines[end:])


def _load(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InitError(f"{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix it first") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InitError(f"{where}: the top level must be a mapping")
    return data


def _check(path: str, shown: str) -> list[str]:
    """The schema must accept ``path`` (the new file, shown as ``shown``); returns the notes of
    ``--check-config`` about this machine (a missing agent binary: install it before the first run).

    Raises:
        InitError: The schema refused it (naming the file and key).
    """
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise InitError(str(exc).replace(path, shown)) from None
    return checks.problems(cfg)


def add(name: str, path: str) -> dict[str, Any]:
    """Add agent profile ``name`` to the config; see the module docstring.

    Returns:
        ``{profile, config, created, notes, needs}``: ``created`` when the file is new,
        ``notes`` what ``--check-config`` says about this machine, ``needs`` the profile's header lines
        that say what it needs (its ``# needs:`` comments).

    Raises:
        InitError: Unknown agent, a profile of that name already there, a file that is not YAML or
            a mapping, ``profiles:`` in flow style, or a result the schema refuses; nothing is written.
    """
    if name not in AGENTS:
        raise InitError(f"no agent profile {name!r} (known: {', '.join(AGENTS)})")
    with open(profile_file(name)) as f:
        profile_text = f.read()
    wanted = _load(profile_text, profile_file(name))
    try:
        with open(path) as f:
            text = f.read()
        created = False
    except FileNotFoundError:
        text, created = "", True
    except OSError as exc:
        raise InitError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = _load(text, path)
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise InitError(f"{path}: profiles must be a mapping")
    if name in profiles:
        raise InitError(f"{path} already has a profile {name!r}; not overwriting it (edit it there, or remove it "
                        f"and run this again)")
    new_text = insert_profile(text, profile_text)
    after = _load(new_text, path)
    expect = {**data, "profiles": {**profiles, **wanted}}
    if after != expect:
        raise InitError(f"could not add the profile to {path} without changing anything else; add it by hand "
                        f"from {profile_file(name)}")
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    mode = 0o600
    if not created:
        mode = os.stat(path).st_mode & 0o7777
    tmp = os.path.join(folder, f".{os.path.basename(path)}.kanban-init.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
        os.chmod(tmp, mode)
        notes = _check(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    needs, within = [], False
    for ln in profile_text.splitlines():  # the header's "# needs:" lines, with their indented continuations
        within = ln.startswith("# needs:") or (within and ln.startswith("#   "))
        if within:
            needs.append(ln[2:].rstrip())
    return {"profile": name, "config": path, "created": created, "notes": notes, "needs": needs}


def main(name: str, path: str) -> int:
    """``kanband profile add NAME --to FILE``: one JSON line on stdout, the result or ``{"error": …}``;
    exit 0 or 1."""
    try:
        res = add(name, os.path.abspath(os.path.expanduser(path)))
    except InitError as exc:
        print(json.dumps({"error": {"name": "init_refused", "message": str(exc), "data": {}}}))
        return 1
    print(json.dumps(res, separators=(",", ":")))
    sys.stdout.flush()
    return 0
