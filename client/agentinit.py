"""``kanban init --agent NAME``: add a ready agent profile (``examples/agents/NAME.yaml``) to the user's config.

Runs in: the ``kanban`` CLI, imported only by that verb (it reads YAML with PyYAML,
a dependency of kanband, so the plain client stays stdlib-only). The config file is
the user's own; the client writes it, never a file of the daemon.

Which file: ``--config FILE``; else the running daemon's (``board.init`` says which);
else the default (``$XDG_CONFIG_HOME/kanban/config.yaml``, ``…/boards/NAME.yaml`` with
``--board NAME``).

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
import shutil
import subprocess
import sys

#: The agents shipped in ``examples/agents/`` (a test keeps this in step with the files).
AGENTS = ("claude", "codex", "gemini", "aider", "opencode", "goose", "hermes")


class InitError(Exception):
    """The profile cannot be added; the message is the one line to print."""


def profile_file(name: str) -> str:
    """The shipped profile ``NAME.yaml`` (``client/agents/`` links to ``examples/agents/``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents", f"{name}.yaml")


def default_config(board: str | None) -> str:
    """The config file kanband reads by default (for ``board``: ``…/boards/NAME.yaml``)."""
    base = os.environ.get("XDG_CONFIG_HOME")
    if not (base and os.path.isabs(base)):
        base = os.path.join(os.path.expanduser("~"), ".config")
    if board:
        return os.path.join(base, "kanban", "boards", f"{board}.yaml")
    return os.path.join(base, "kanban", "config.yaml")


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


def _load(yaml, text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InitError(f"{where} is not valid YAML ({getattr(exc, 'problem', exc)}); fix it first") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InitError(f"{where}: the top level must be a mapping")
    return data


def _check_config(path: str, shown: str) -> list[str]:
    """``kanband --check-config`` on ``path``; returns its notes about this machine.

    Raises:
        InitError: The schema refused the file (a line naming it).
    """
    exe = os.path.join(os.path.dirname(sys.executable), "kanband")
    exe = exe if os.access(exe, os.X_OK) else shutil.which("kanband")
    if not exe:
        return []
    res = subprocess.run([exe, "--check-config", "--config", path], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    lines = [ln.replace("kanband: ", "", 1) for ln in res.stderr.splitlines() if ln.strip()]
    if res.returncode == 0:
        return []
    if any(path in ln for ln in lines):  # the loader names the file: a schema error
        raise InitError("; ".join(ln.replace(path, shown) for ln in lines))
    return [ln.replace("bad config: ", "", 1) for ln in lines]


def _daemon_config(sock: str | None, board: str | None) -> tuple[str | None, bool]:
    """The running daemon's config file (``board.init``), and whether a daemon answered."""
    from client.rpc import Client, ConnectError, ServerError, socket_path
    try:
        with Client(socket_path(sock, board), retry=0.0, timeout=5.0) as c:
            return c.call("board.init").get("config"), True
    except (ConnectError, ServerError, OSError, ValueError):
        return None, False


def add(name: str, config: str | None, sock: str | None, board: str | None) -> dict:
    """Add agent profile ``name`` to the config; see the module docstring.

    Returns:
        ``{profile, config, created, notes, daemon_running, needs}``: ``created`` when the file is new,
        ``notes`` what ``--check-config`` says about this machine, ``needs`` the profile's header lines
        that say what it needs (its ``# needs:`` comments).

    Raises:
        InitError: Unknown agent, a profile of that name already there, a file that is not YAML or
            a mapping, ``profiles:`` in flow style, or a result the schema refuses; nothing is written.
    """
    import yaml
    if name not in AGENTS:
        raise InitError(f"no agent profile {name!r} (known: {', '.join(AGENTS)})")
    with open(profile_file(name)) as f:
        profile_text = f.read()
    wanted = _load(yaml, profile_text, profile_file(name))
    running = False
    if config is None:
        config, running = _daemon_config(sock, board)
    else:
        _, running = _daemon_config(sock, board)
    path = os.path.abspath(os.path.expanduser(config or default_config(board)))
    try:
        with open(path) as f:
            text = f.read()
        created = False
    except FileNotFoundError:
        text, created = "", True
    except OSError as exc:
        raise InitError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = _load(yaml, text, path)
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise InitError(f"{path}: profiles must be a mapping")
    if name in profiles:
        raise InitError(f"{path} already has a profile {name!r}; not overwriting it (edit it there, or remove it "
                        f"and run this again)")
    new_text = insert_profile(text, profile_text)
    after = _load(yaml, new_text, path)
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
        notes = _check_config(tmp, path)
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
    return {"profile": name, "config": path, "created": created, "notes": notes, "daemon_running": running,
            "needs": needs}


def main(name: str, config: str | None, sock: str | None, board: str | None, as_json: bool) -> int:
    """Run ``kanban init --agent NAME``; prints what it did. Exit 0, or 1 with one line on stderr."""
    try:
        res = add(name, config, sock, board)
    except InitError as exc:
        if as_json:
            print(json.dumps({"error": {"name": "init_refused", "message": str(exc), "data": {}}}), file=sys.stderr)
        else:
            print(f"kanban init: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(res, separators=(",", ":")))
        return 0
    print(f"{'created' if res['created'] else 'updated'} {res['config']}: added profile {name!r} "
          f"(from examples/agents/{name}.yaml)")
    for line in res["needs"]:
        print(f"  {line}")
    for line in res["notes"]:
        print(f"  note: {line}")
    if res["daemon_running"]:
        print("  run `kanban reload` to apply it to the running daemon")
    print(f"  try it: kanban create \"say hello\" --assignee {name}")
    return 0
