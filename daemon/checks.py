"""What ``kanband --check-config`` checks beyond the schema: will this config actually work here?

Runs in: the ``kanband`` command (``--check-config``, ``service install``), before any
daemon starts. Nothing here writes anything or starts a worker.

:func:`daemon.config.load` already refused unknown keys and wrong types (its first error
stops it). :func:`problems` then looks at the machine, and reports **every** problem it
finds, each one line naming the dotted key:

- every profile's ``command`` resolves to an executable on the PATH its workers will get
  (kanband's own bin directory first, then the daemon's PATH, or the profile's ``env.PATH``);
- every profile whose workspaces are ``worktree`` has a repository (``profiles.NAME.repo``
  or ``workspaces.repo``), and that repository is a git repository;
- every command sink's ``command`` resolves on the daemon's PATH.

A command whose first word holds a placeholder other than ``{config_dir}``, or is a path
relative to the workspace, cannot be judged before a run and is not reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any


def worker_path(profile: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """The PATH a profile's worker gets: kanband's bin dir, then the daemon's PATH (or ``env.PATH``)."""
    environ = os.environ if environ is None else environ
    if "PATH" in profile.get("env", {}):
        return profile["env"]["PATH"]
    own = os.path.dirname(sys.executable)
    return os.pathsep.join([own, environ.get("PATH", os.defpath)])


def command_problem(argv: list[str], path: str, config_dir: str) -> str | None:
    """Why ``argv[0]`` would not start with ``path`` as PATH, or ``None`` (also when it cannot be judged)."""
    if not argv:
        return "is empty"
    prog = argv[0].replace("{config_dir}", config_dir)
    if "{" in prog and "}" in prog:
        return None  # another placeholder: known only at spawn time
    if "/" in prog:
        if not os.path.isabs(prog):
            return None  # relative to the workspace, which exists only at spawn time
        if not os.path.exists(prog):
            return f"{prog} does not exist"
        if os.path.isdir(prog) or not os.access(prog, os.X_OK):
            return f"{prog} is not an executable file"
        return None
    if shutil.which(prog, path=path) is None:
        return f"{prog!r} is not found on PATH ({path})"
    return None


def repo_problem(repo: str) -> str | None:
    """Why ``repo`` cannot hold worktrees, or ``None``."""
    if not os.path.isdir(repo):
        return f"{repo} is not a directory"
    res = subprocess.run(["git", "-C", repo, "rev-parse", "--git-dir"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "git failed"
        return f"{repo} is not a git repository ({why})"
    return None


def problems(cfg: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """Every reason the (schema-valid) config ``cfg`` would not work on this machine.

    Args:
        cfg: A config from :func:`daemon.config.load`.
        environ: The daemon's environment (default: ours); its PATH is what workers inherit.

    Returns:
        One line per problem, each naming the dotted key; empty if none.
    """
    environ = os.environ if environ is None else environ
    out: list[str] = []
    where = f"{cfg['_file']}: " if cfg.get("_file") else ""
    git = shutil.which("git", path=environ.get("PATH", os.defpath))
    checked: dict[str, str | None] = {}
    for name, prof in cfg["profiles"].items():
        bad = command_problem(prof["command"], worker_path(prof, environ), cfg["_dir"])
        if bad:
            out.append(f"{where}profiles.{name}.command: {bad}")
        kind = prof["workspace"] or cfg["workspaces"]["default"]
        if kind != "worktree":
            continue
        repo = prof.get("repo") or cfg["workspaces"]["repo"]
        if not repo:
            out.append(f"{where}profiles.{name}.workspace: worktree workspaces need a repository: set "
                       f"profiles.{name}.repo or workspaces.repo (or give each task --repo)")
        elif git is None:
            out.append(f"{where}profiles.{name}.workspace: worktree workspaces need git, which is not on PATH")
        else:
            if repo not in checked:
                checked[repo] = repo_problem(repo)
            if checked[repo]:
                key = "repo" if prof.get("repo") else "workspace"
                out.append(f"{where}profiles.{name}.{key}: {checked[repo]}")
    repo = cfg["workspaces"]["repo"]
    if repo and repo not in checked and git is not None:
        bad = repo_problem(repo)
        if bad:
            out.append(f"{where}workspaces.repo: {bad}")
    for name, sink in cfg["sinks"].items():
        if sink["type"] == "command" and sink["command"]:
            bad = command_problem(sink["command"], environ.get("PATH", os.defpath), cfg["_dir"])
            if bad:
                out.append(f"{where}sinks.{name}.command: {bad}")
    return out
