"""Containment: finding and ending every process of a run, whatever it does.

Runs in: the reaper (which decides the mode and, when a run's wrapper died,
sweeps what is left of the run), the wrapper (which ends its own run's tree)
and the dispatcher (which maps a peer pid to the run it belongs to).

Two modes, chosen once at start (``containment.mode``, shown by ``kanban status``):

``cgroup``
    Each run gets its own cgroup v2 directory, ``<cgroup_root>/run-<run id>``.
    The worker moves itself into it between fork and exec, so every process
    it ever starts is in it, whatever it does (``setsid``, double fork,
    daemonise). The run's processes are ``cgroup.procs``; the run ends with
    ``cgroup.kill`` (Linux >= 5.14; SIGKILL to each member otherwise).
    Needs a writable cgroup v2 subtree: the unit's own cgroup under
    ``Delegate=yes``, or ``containment.cgroup_root``.

``subreaper``
    The wrapper is a child subreaper (``PR_SET_CHILD_SUBREAPER``, see
    prctl(2)): a descendant that calls ``setsid`` or double-forks is
    re-parented to the wrapper, not to init, so the wrapper's descendants are
    the run's processes and ``waitpid`` failing with ``ECHILD`` proves the
    tree is empty. If the wrapper itself is SIGKILLed, its descendants fall to
    the supervisor (also a subreaper); they are then found by their session
    (the wrapper's pid) or by ``KANBAN_RUN=<run>`` in their initial
    environment, and killed before the run may end.

A process listing reads ``/proc`` directly: the children of a process are in
``/proc/<pid>/task/<tid>/children`` (Linux >= 3.5, CONFIG_PROC_CHILDREN).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
from collections.abc import Callable
from typing import Any

MODES = ("auto", "cgroup", "subreaper")
_RUN_CGROUP = re.compile(r"/run-(r_[0-9a-f]+)(?:\.verify)?$")  # a run's worker, or its verify command


class ContainmentError(Exception):
    """The configured containment cannot be used; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Containment:
    """The mode in force, and for ``cgroup`` the directory under which run cgroups live."""

    mode: str
    root: str | None = None
    why: str = ""

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "cgroup_root": self.root, "why": self.why}

    def run_cgroup(self, run_id: str) -> str | None:
        """The cgroup directory of a run, or ``None`` in subreaper mode."""
        return os.path.join(self.root, f"run-{run_id}") if self.mode == "cgroup" and self.root else None


# ---- cgroup v2 ------------------------------------------------------------------------------

def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid
    systems, ``/sys/fs/cgroup/unified``), or ``None``. Field layout: proc(5)."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def own_cgroup(pid: int | str = "self") -> str | None:
    """The cgroup v2 path of a process (the ``0::`` line of ``/proc/<pid>/cgroup``)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def _usable_cgroup(path: str) -> str | None:
    """Why ``path`` cannot hold run cgroups, or ``None`` if it can."""
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.path.exists(os.path.join(path, "cgroup.procs")):
        return f"{path} is not a cgroup v2 directory (no cgroup.procs)"
    if not os.access(path, os.W_OK) or not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
        return f"{path} is not writable by uid {os.getuid()} (the unit needs Delegate=yes)"
    return None


def choose(cfg: dict[str, Any], environ: dict[str, str] | None = None) -> Containment:
    """Pick the containment mode from ``containment.mode`` and ``containment.cgroup_root``.

    ``auto`` uses cgroups only where they were handed to us: an explicit
    ``cgroup_root``, or systemd's delegation (``INVOCATION_ID`` set and our own
    cgroup writable). It never writes into a cgroup nobody delegated.

    Raises:
        ContainmentError: ``mode: cgroup`` was asked for and cannot work.
    """
    environ = os.environ if environ is None else environ
    c = cfg.get("containment") or {}
    mode, root = c.get("mode", "auto"), c.get("cgroup_root")
    if mode == "subreaper":
        return Containment("subreaper", None, "containment.mode: subreaper")
    if not root:
        mount = cgroup2_mount()
        own = own_cgroup()
        if mount and own is not None and (mode == "cgroup" or environ.get("INVOCATION_ID")):
            root = os.path.join(mount, own.lstrip("/"))
    if root:
        problem = _usable_cgroup(root)
        if problem is None:
            return Containment("cgroup", root, f"run cgroups under {root}")
        if mode == "cgroup":
            raise ContainmentError(f"containment.mode: cgroup, but {problem}")
        return Containment("subreaper", None, f"no usable cgroup ({problem})")
    if mode == "cgroup":
        raise ContainmentError("containment.mode: cgroup, but no cgroup v2 hierarchy is mounted")
    return Containment("subreaper", None, "no delegated cgroup v2 subtree")


def from_paths(paths: dict[str, str]) -> Containment:
    """The mode the supervisor chose, as every role receives it in ``paths``."""
    mode = paths.get("containment") or "subreaper"
    return Containment(mode, paths.get("cgroup_root") or None, paths.get("containment_why", ""))


def make_run_cgroup(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def cgroup_procs(path: str) -> list[int]:
    """The pids in a cgroup; ``[]`` if it does not exist."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # removed under us
            return []
        raise


def cgroup_kill(path: str) -> None:
    """SIGKILL every process in the cgroup (``cgroup.kill``, or one by one on older kernels)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError:
        pass
    for pid in cgroup_procs(path):
        _kill(pid, signal.SIGKILL)


def remove_cgroup(path: str) -> bool:
    """``rmdir`` an empty run cgroup; False while it still holds processes."""
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def run_of_cgroup(cgroup: str | None) -> str | None:
    """``r_…`` if a cgroup path is a run cgroup."""
    m = _RUN_CGROUP.search(cgroup or "")
    return m.group(1) if m else None


# ---- process tree (/proc) ---------------------------------------------------------------------

def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from ``/proc/<pid>/task/*/children``."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (not ``pid`` itself), parents before children."""
    out, todo, seen = [], [pid], {pid}
    while todo:
        for c in children(todo.pop()):
            if c not in seen:
                seen.add(c)
                out.append(c)
                todo.append(c)
    return out


def stat_fields(pid: int) -> tuple[int, int, int, str] | None:
    """``(ppid, pgid, session, state)`` of a process from ``/proc/<pid>/stat``; ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return int(rest[1]), int(rest[2]), int(rest[3]), rest[0].decode()


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    st = stat_fields(pid)
    return st is not None and st[3] not in ("Z", "X")


def run_stragglers(run_id: str, session: int | None) -> list[int]:
    """Processes of a run whose wrapper is gone: same session as the wrapper, or
    ``KANBAN_RUN=<run_id>`` in their initial environment; with their descendants.

    A process that left the session *and* cleared its environment after its
    wrapper was SIGKILLed escapes this scan: only cgroup mode closes that gap.
    """
    marker = f"KANBAN_RUN={run_id}\0".encode()
    me = os.getpid()
    if session is not None and alive(session):  # the wrapper's pid was reused: its session is not ours
        session = None
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me:
            continue
        st = stat_fields(pid)
        if st is None or st[3] in ("Z", "X"):
            continue
        if session is not None and st[2] == session:
            found.add(pid)
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if marker in env or env.endswith(marker[:-1]):
            found.add(pid)
    for pid in list(found):
        found.update(descendants(pid))
    return sorted(p for p in found if alive(p))


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        _kill(pid, sig)


# ---- who is calling: a peer pid -> the run it belongs to ------------------------------------

_TITLE = re.compile(rb"^kanband: run (r_[0-9a-f]+)")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(256)
    except OSError:
        return b""


def identify(pid: int, role_pids: set[int], contain: Containment,
             known_wrapper: Callable[[int, str], bool] | None = None, max_depth: int = 128) -> tuple[str, str | None]:
    """Which side a connected peer is on, from its pid (``SO_PEERCRED``).

    Returns one of ``("role", None)`` (a process the supervisor started, or the
    supervisor), ``("run", run_id)`` (a process of that run: the worker, an MCP
    server or helper it started, anything in its cgroup or under its wrapper),
    ``("orphan", None)`` (inside the daemon's tree but in no run: a leftover of a
    wrapper that died), ``("operator", None)`` (any other process of our uid),
    or ``("gone", None)`` (the peer exited before it could be checked).

    In subreaper mode the ancestry is walked up to the first process whose
    parent is one of the daemon's roles: a run's wrapper (its title names the
    run) or not. A wrapper's parent is the reaper, or the supervisor after a
    reaper restart; no process outside the daemon can make itself their child.
    A wrapper that outlived a whole daemon (re-parented to init) is recognised
    by ``known_wrapper(pid, run)``: the board recorded that pid for that run.
    """
    if pid in role_pids:
        return "role", None
    if contain.mode == "cgroup":
        run = run_of_cgroup(own_cgroup(pid))
        if run:
            return "run", run
    cur = pid
    for _ in range(max_depth):
        st = stat_fields(cur)
        if st is None:
            return ("gone", None) if cur == pid else ("operator", None)
        ppid = st[0]
        if ppid in role_pids:
            m = _TITLE.match(_cmdline(cur))
            return ("run", m.group(1).decode()) if m else ("orphan", None)
        if known_wrapper is not None and cur != pid:
            m = _TITLE.match(_cmdline(cur))
            if m and known_wrapper(cur, m.group(1).decode()):
                return "run", m.group(1).decode()
        if ppid <= 1:
            return "operator", None
        cur = ppid
    return "operator", None
