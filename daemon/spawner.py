"""Spawner: builds a worker's argv, env, cwd and log fd, then starts it.

Runs in: the reaper (which must be the parent of every worker) and, after the
fork, in the *wrapper*: a forked copy of the reaper that becomes the session
leader of the run's process group and a child subreaper, starts the worker,
and stays until **no process of the run is left** (see
:mod:`daemon.containment`); only then does it write the worker's exit status
to ``<state>/runs/<run>.exit`` and exit. The wrapper survives a daemon restart
together with its worker, so a worker that ends while the daemon is down
still has its real exit status classified.

Files per run (under ``<state>/runs/``): ``<run>.lock`` (flock'ed by the
wrapper for its whole life, taken before the fork), ``<run>.pid`` (wrapper
pid, its process start time, worker pid, exec time, cgroup) and
``<run>.exit`` (exit code or signal, or the reason the command could not
start). The reaper deletes them once the dispatcher has acknowledged the exit.

Every directory here (logs, runs, the workspaces root, a scratch workspace) is
checked or created 0700 by :func:`daemon.fsguard.ensure_private_dir`, and every
file (logs, rotated logs, run files) is opened 0600 whatever the umask.

A run's verify command runs in a wrapper of its own, with the same files
under the name ``<run>.verify`` (:func:`files_name`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import setproctitle

from daemon import attachstore, containment, roles
from daemon.board import attachments

from daemon.workspaces import cleanup_workspace, prepare_workspace, strictly_inside  # noqa: F401 (re-exported)

from daemon import fsguard, worklog

PLACEHOLDERS = ("task_id", "run_id", "title", "workspace", "config_dir", "context_file")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class SpawnError(Exception):
    """The worker could not be started; the message says why."""


def write_json_atomic(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write-then-rename, so a reader never sees half a file. No fsync: these files only
    have to outlive the daemon's processes, not the machine (a reboot ends the workers too)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = fsguard.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, json.dumps(obj).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def run_files(runs_dir: str, run_id: str) -> tuple[str, str]:
    return os.path.join(runs_dir, f"{run_id}.pid"), os.path.join(runs_dir, f"{run_id}.exit")


def files_name(spec: dict[str, Any]) -> str:
    """The name of a spawn's run files (and cgroup): ``<run>``, or ``<run>.verify`` for a verify command."""
    return f"{spec['run']}.verify" if spec.get("verify") else spec["run"]


def verify_banner(run_id: str) -> str:
    """The line that opens a verify command's output in the task log."""
    return f"===== kanban verify {run_id}: "


def verify_output(log_path: str, run_id: str, max_bytes: int = 8 << 20) -> str:
    """What the run's latest verify command wrote to the task log (after its banner line)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    at = data.rfind(verify_banner(run_id).encode())
    if at < 0:
        return ""
    nl = data.find(b"\n", at)
    return data[nl + 1:].decode(errors="replace") if nl >= 0 else ""


def append_log(log_path: str, text: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def lock_file(runs_dir: str, run_id: str) -> str:
    return os.path.join(runs_dir, f"{run_id}.lock")


def context_file(runs_dir: str, run_id: str) -> str:
    """Where the dispatcher writes a run's rendered context before the spawn (``{context_file}``)."""
    return os.path.join(runs_dir, f"{run_id}.context.md")


def uses_context_file(argv: list[str]) -> bool:
    """Whether a profile's command asks for ``{context_file}``."""
    return any("{context_file}" in arg for arg in argv)


def retry_after_file(runs_dir: str, run_id: str) -> str:
    """Where a worker that exits 75 may write how long to wait (``$KANBAN_RETRY_AFTER_FILE``)."""
    return os.path.join(runs_dir, f"{run_id}.retry-after")


def read_retry_after(path: str) -> float | None:
    """Seconds from a retry-after file: ``120``, ``120.5`` or ``retry-after: 120`` (the HTTP
    header's delta-seconds form, RFC 9110 §10.2.3); ``None`` if absent or unreadable."""
    try:
        with open(path) as f:
            text = f.read(256).strip()
    except OSError:
        return None
    if ":" in text:
        name, _, text = text.partition(":")
        if name.strip().lower() != "retry-after":
            return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if 0 <= value < 86400 * 7 else None


def expand(argv: list[str], values: dict[str, str]) -> list[str]:
    """Replace ``{name}`` placeholders in one pass over each original argument.

    Only the ``{name}`` tokens of the configured argument are replaced; text that a
    value brings in (a title containing ``{workspace}``) is never expanded again.
    Unknown braces are left alone.
    """
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), arg) for arg in argv]


def worker_env(spec: dict[str, Any], paths: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment, plus the ``KANBAN_*`` variables, plus the profile's env."""
    env = dict(os.environ if base is None else base)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    # the kanban client first, but not kanband's virtualenv: the worker's python3, pip and
    # pytest stay the user's own (paths["client_bin"] holds only a `kanban` link)
    own = os.path.dirname(sys.executable)
    bindir = paths.get("client_bin") or own
    inherited = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and (p != own or bindir == own)]
    env["PATH"] = os.pathsep.join([bindir, *inherited])
    env.update({
        "KANBAN_TASK": spec["task"],
        "KANBAN_RUN": spec["run"],
        "KANBAN_SOCKET": paths["socket"],
        "KANBAN_WORKSPACE": spec["workspace"]["path"] or "",
        "KANBAN_BOARD": paths["board"],
        "KANBAN_PROFILE": spec["profile"],
        "KANBAN_RETRY_AFTER_FILE": retry_after_file(paths["runs"], spec["run"]),
        "KANBAN_ATTACHMENTS": attachstore.snapshot_dir(paths["runs"], spec["run"]),
    })
    env.update({k: str(v) for k, v in spec.get("env", {}).items()})
    return env


def client_bin(runs_dir: str) -> str:
    """A directory holding only a ``kanban`` link to this installation's client; returns its path."""
    path = fsguard.ensure_private_dir(os.path.join(runs_dir, "bin"))
    target = os.path.join(os.path.dirname(sys.executable), "kanban")
    link = os.path.join(path, "kanban")
    if os.path.exists(target) and (not os.path.islink(link) or os.readlink(link) != target):
        tmp = f"{link}.tmp{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return path


def rotate_if_needed(path: str, max_bytes: int) -> bool:
    """Copy-truncate rotation to ``PATH.1`` (mode 0600): the worker's O_APPEND fd keeps writing to the same file.

    See :func:`daemon.worklog.rotate` (atomic for readers, under a ``flock``).
    """
    return worklog.rotate(path, max_bytes)


def open_log(logs_dir: str, task_id: str, max_bytes: int) -> tuple[int, str]:
    """The task's log, opened for appending (0600), rotated first if it grew past ``max_bytes``.

    Raises:
        fsguard.UnsafePath: The logs dir or the log is not private to us.
        OSError: The log could not be opened.
    """
    fsguard.ensure_private_dir(logs_dir)
    path = os.path.join(logs_dir, f"{task_id}.log")
    rotate_if_needed(path, max_bytes)
    fd = fsguard.open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return fd, path


def log_tail(path: str, nbytes: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - nbytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _terminate(cgroup: str | None, sig: int) -> int:
    """Signal every process of this wrapper's run (its descendants, and its cgroup's members)."""
    targets = set(containment.descendants(os.getpid()))
    if cgroup:
        if sig == signal.SIGKILL:
            containment.cgroup_kill(cgroup)
        targets.update(containment.cgroup_procs(cgroup))
    targets.discard(os.getpid())
    containment.signal_all(sorted(targets), sig)
    return len(targets)


def _supervise(worker_pid: int, cgroup: str | None, kill_grace: float) -> dict[str, Any]:
    """Wait until no process of the run is left; returns the worker's exit record.

    The wrapper is a child subreaper, so every descendant that outlives its
    parent is re-parented here: ``ECHILD`` from ``waitpid(-1)`` (and, in cgroup
    mode, an empty ``cgroup.procs``) proves the run's tree is gone. A SIGTERM
    (the reaper ending the run) or the worker's own exit starts the end of the
    tree: TERM to every remaining process, KILL after ``kill_grace`` seconds.
    """
    status: int | None = None
    term_at: float | None = None     # monotonic: when the tree was sent TERM
    killing = False
    requested = False
    leftovers = 0
    waitset = [signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    while True:
        try:
            while True:
                pid, st = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == worker_pid:
                    status = st
        except ChildProcessError:
            if not cgroup or not [p for p in containment.cgroup_procs(cgroup) if p != os.getpid()]:
                break
        now = time.monotonic()
        if status is not None and term_at is None:  # the worker is done: its leftovers end with it
            leftovers = _terminate(cgroup, signal.SIGTERM)
            term_at = now
        if term_at is not None and now >= term_at + kill_grace:
            killing = True
        if killing:  # again on every turn: a process forked since the last KILL gets one too
            _terminate(cgroup, signal.SIGKILL)
        timeout = 0.05 if killing else (max(0.01, term_at + kill_grace - now) if term_at is not None else 1.0)
        info = signal.sigtimedwait(waitset, min(timeout, 1.0))
        if info is not None and info.si_signo != signal.SIGCHLD and term_at is None:
            requested = True
            _terminate(cgroup, signal.SIGTERM)
            term_at = time.monotonic()
    if status is None:
        rec: dict[str, Any] = {"exit_code": None, "signal": None, "lost": "wrapper could not wait for worker"}
    elif os.WIFSIGNALED(status):
        rec = {"exit_code": None, "signal": os.WTERMSIG(status)}
    else:
        rec = {"exit_code": os.WEXITSTATUS(status), "signal": None}
    rec.update(ended_at=time.time(), terminated=requested, leftovers=leftovers)
    return rec


def _end_tree_now(cgroup: str | None) -> None:
    """KILL the whole tree and reap it (a spawn that failed after the worker started)."""
    while True:
        _terminate(cgroup, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            if not cgroup or not containment.cgroup_procs(cgroup):
                return
            time.sleep(0.01)


def _spawn_failed(exit_path: str, report: int, msg: str) -> None:
    """In the wrapper: record why the run could not start (if the disk lets us), tell the reaper, exit.
    No process of the run is left by then. Never returns."""
    try:
        write_json_atomic(exit_path, {"spawn_error": msg, "ended_at": time.time()})
    except OSError:
        pass
    os.write(report, b"err " + msg.encode())
    os._exit(127)


def _wrapper(run_id: str, argv: list[str], env: dict[str, str], cwd: str, logfd: int, report: int, lockfd: int,
             pid_path: str, exit_path: str, cgroup: str | None, kill_grace: float) -> None:
    """The body of the forked wrapper process. Never returns.

    Spawn is one step: "ok" goes to the reaper only once the worker exec'd
    and the pid file is written; if anything fails after the exec, the worker's
    tree is killed and reaped before "err" is reported.
    """
    code = 126
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        roles.prctl(roles.PR_SET_CHILD_SUBREAPER, 1)
        setproctitle.setproctitle(f"kanband: run {run_id}")
        blocked = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        for sig in blocked:
            signal.signal(sig, signal.SIG_DFL)
        keep = {logfd, report, lockfd}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        devnull = os.open(os.devnull, os.O_RDWR)
        me = psutil.Process()

        def in_child() -> None:  # between fork and exec, in the worker
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            if cgroup:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write("0")

        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=devnull, stdout=logfd, stderr=logfd,
                                    close_fds=True, restore_signals=True, preexec_fn=in_child)
        except (OSError, subprocess.SubprocessError) as exc:
            _spawn_failed(exit_path, report, f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}")
        exec_at = time.time()  # Popen returns once exec succeeded (its error pipe closed on exec)
        try:
            write_json_atomic(pid_path, {"pid": os.getpid(), "start_time": me.create_time(), "worker_pid": proc.pid,
                                         "exec_at": exec_at, "cgroup": cgroup})
        except OSError as exc:
            _end_tree_now(cgroup)
            _spawn_failed(exit_path, report,
                          f"cannot record the run after its worker started ({exc.strerror or exc}); worker killed")
        try:
            os.write(report, f"ok {proc.pid} {exec_at!r}".encode())
        except OSError:  # EPIPE: the reaper died since the fork; the pid file and the lock tell the next one
            pass
        os.close(report)
        rec = _supervise(proc.pid, cgroup, kill_grace)
        rec["exec_at"] = exec_at
        write_json_atomic(exit_path, rec)
        if cgroup:
            containment.remove_cgroup(cgroup)
        code = 0
    except BaseException:  # never let the wrapper fall back into the reaper's code
        pass
    os._exit(code)


def wrapper_on_record(runs_dir: str, run_id: str, pid: int) -> bool:
    """True if the run's pid file (written by its wrapper once the worker exec'd) names ``pid``
    with that process's start time, so a reused pid is not taken for the wrapper.

    The board learns the wrapper's pid from the reaper (``run.starting``, ``run.started``); after
    a daemon restart those reports may never have committed, and until the new reaper re-adopts
    the run, this file is the only record that the process is the run's wrapper.
    """
    info = read_json(run_files(runs_dir, run_id)[0])
    if not info or info.get("pid") != pid:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - float(info["start_time"])) < 0.05
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def lock_held(lock_path: str) -> bool:
    """True while a wrapper (or a spawn in progress) holds the run's lock file."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start(spec: dict[str, Any], paths: dict[str, str], contain: containment.Containment,
          on_fork: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Start the run's wrapper and worker.

    The run's lock file is created and locked before the fork and inherited by
    the wrapper, so from the fork on, anyone can tell that a wrapper may exist
    for the run (:func:`lock_held`) even before it wrote its pid file.

    Args:
        spec: The dispatcher's spawn request (run, task, command, workspace, kill_grace...).
        paths: The daemon's paths (logs, runs, socket, board).
        contain: The containment mode in force.
        on_fork: Called with the wrapper's pid right after the fork.

    Returns:
        ``{pid, start_time, worker_pid, exec_at, log, cgroup}``: the wrapper
        (session leader, our child), its start time, the worker's pid, the
        wall-clock time of the worker's exec, the log path, the run cgroup.

    Raises:
        SpawnError: The workspace, the log or the command could not be set up,
            or the wrapper failed after the worker started. In every case no
            process of the run is left (the wrapper has been reaped).
    """
    try:
        cwd = prepare_workspace(spec["workspace"], spec["task"])
    except OSError as exc:
        raise SpawnError(f"workspace {spec['workspace']['path']}: {exc.strerror}") from None
    except fsguard.UnsafePath as exc:
        raise SpawnError(str(exc)) from None
    values = {"task_id": spec["task"], "run_id": spec["run"], "title": spec["title"], "workspace": cwd,
              "config_dir": spec.get("config_dir") or "", "context_file": ""}
    env = worker_env(spec, paths)
    if not spec.get("verify") and uses_context_file(spec["command"]):
        values["context_file"] = context_file(paths["runs"], spec["run"])
        if not os.path.isfile(values["context_file"]):  # the dispatcher writes it before the spawn
            raise SpawnError(f"the run's context file {values['context_file']} was not written (see the daemon's "
                             "log: context.write_failed)")
        env["KANBAN_CONTEXT_FILE"] = values["context_file"]
    argv = expand(spec["command"], values)
    try:
        fsguard.ensure_private_dir(paths["runs"])
    except fsguard.UnsafePath as exc:
        raise SpawnError(str(exc)) from None
    if not spec.get("verify"):
        try:  # the run's own read-only copy of its task's attachments ($KANBAN_ATTACHMENTS)
            attachstore.snapshot(attachments.root(paths["state_dir"]), spec["task"], paths["runs"], spec["run"])
        except OSError as exc:
            raise SpawnError(f"cannot copy the task's attachments: {exc.strerror or exc}") from None
    name = files_name(spec)
    pid_path, exit_path = run_files(paths["runs"], name)
    cgroup = contain.run_cgroup(name)
    if cgroup:
        try:
            containment.make_run_cgroup(cgroup)
        except OSError as exc:
            raise SpawnError(f"cannot create the run cgroup {cgroup}: {exc.strerror or exc}") from None
    lockfd = fsguard.open_private(lock_file(paths["runs"], name), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lockfd, fcntl.LOCK_EX)
    try:
        logfd, log_path = open_log(paths["logs"], spec["task"], spec["log_max"])
    except (OSError, fsguard.UnsafePath) as exc:
        os.close(lockfd)
        raise SpawnError(f"task log: {exc}") from None
    if spec.get("verify"):  # a clear separator: the verify command's output follows it in the task log
        os.write(logfd, f"\n{verify_banner(spec['run'])}{' '.join(argv)} (in {cwd}) =====\n".encode())
    else:
        try:  # the separator that opens this run's part of the log (daemon/worklog.py)
            os.write(logfd, worklog.start_line(spec["run"], spec.get("profile"), time.time()).encode())
        except OSError:
            pass
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _wrapper(spec["run"], argv, env, cwd, logfd, w, lockfd, pid_path, exit_path, cgroup,
                     float(spec.get("kill_grace") or 10.0))
        os.close(w)
        os.close(lockfd)  # the wrapper's copy keeps the lock
        if on_fork is not None:
            on_fork(pid)
        chunks = []
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(r)
        os.close(logfd)
    msg = b"".join(chunks).decode(errors="replace")
    if not msg.startswith("ok "):
        os.waitpid(pid, 0)  # the wrapper reaped the worker's tree before it reported
        if cgroup:
            containment.remove_cgroup(cgroup)
        raise SpawnError(msg[4:] if msg.startswith("err ") else f"wrapper failed to start the worker ({msg!r})")
    try:
        start_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        start_time = 0.0
    _, worker_pid, exec_at = msg.split()
    return {"pid": pid, "start_time": start_time, "worker_pid": int(worker_pid), "exec_at": float(exec_at),
            "log": log_path, "cgroup": cgroup}
