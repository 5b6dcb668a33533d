"""``kanban init --agent NAME``: add a ready agent profile (``examples/agents/NAME.yaml``) to the user's config.

Runs in: the ``kanban`` CLI, imported only by that verb. Stdlib only like the rest of
the client: the YAML is read, edited and checked by ``kanband profile add``
(:mod:`daemon.agentprofile`), which this starts. The config file is the user's own.

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


def _daemon_config(sock: str | None, board: str | None) -> tuple[str | None, bool]:
    """The running daemon's config file (``board.init``), and whether a daemon answered."""
    from client.rpc import Client, ConnectError, ServerError, socket_path
    try:
        with Client(socket_path(sock, board), retry=0.0, timeout=5.0) as c:
            return c.call("board.init").get("config"), True
    except (ConnectError, ServerError, OSError, ValueError):
        return None, False


def add(name: str, config: str | None, sock: str | None, board: str | None) -> dict:
    """Add agent profile ``name`` to the config (see :mod:`daemon.agentprofile`, run as
    ``kanband profile add``, which reads and checks the YAML).

    Returns:
        ``{profile, config, created, notes, needs, daemon_running}``.

    Raises:
        InitError: Whatever ``kanband profile add`` refused, as its one line.
    """
    if name not in AGENTS:
        raise InitError(f"no agent profile {name!r} (known: {', '.join(AGENTS)})")
    daemon_config, running = _daemon_config(sock, board)
    path = os.path.abspath(os.path.expanduser(config or daemon_config or default_config(board)))
    exe = os.path.join(os.path.dirname(sys.executable), "kanband")
    exe = exe if os.access(exe, os.X_OK) else shutil.which("kanband")
    if not exe:
        raise InitError("kanband is not installed next to this kanban client (it adds the profile)")
    res = subprocess.run([exe, "profile", "add", name, "--to", path], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InitError(f"kanband profile add failed: {(res.stderr or res.stdout).strip()[-300:]}") from None
    if "error" in out:
        raise InitError(out["error"]["message"])
    return {**out, "daemon_running": running}


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
