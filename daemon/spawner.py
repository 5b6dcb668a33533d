"""Spawner: builds a worker's argv, env, cwd and log fd, then starts it.

Runs in: the reaper (which must be the parent of every worker) and, after the
fork, in the *wrapper*: a forked copy of the reaper that becomes the session
leader of the run's process group, starts the worker, waits for it and writes
its exit status to ``<state>/runs/<run>.exit`` before exiting. The wrapper
survives a daemon restart together with its worker, so a worker that ends
while the daemon is down still has its real exit status classified.

Files per run (under ``<state>/runs/``): ``<run>.pid`` (wrapper pid, its
process start time, worker pid) and ``<run>.exit`` (exit code or signal, or
the reason the command could not start). The reaper deletes both once the
dispatcher has acknowledged the exit.

Every directory here (logs, runs, the workspaces root, a scratch workspace) is
checked or created 0700 by :func:`daemon.fsguard.ensure_private_dir`, and every
file (logs, rotated logs, run files) is opened 0600 whatever the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from daemon import fsguard

PLACEHOLDERS = ("task_id", "run_id", "title", "workspace", "config_dir")


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


def expand(argv: list[str], values: dict[str, str]) -> list[str]:
    """Replace ``{name}`` placeholders; unknown braces are left alone."""
    out = []
    for arg in argv:
        for key in PLACEHOLDERS:
            arg = arg.replace("{" + key + "}", values.get(key, ""))
        out.append(arg)
    return out


def worker_env(spec: dict[str, Any], paths: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment, plus the ``KANBAN_*`` variables, plus the profile's env."""
    env = dict(os.environ if base is None else base)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env.update({
        "KANBAN_TASK": spec["task"],
        "KANBAN_RUN": spec["run"],
        "KANBAN_SOCKET": paths["socket"],
        "KANBAN_WORKSPACE": spec["workspace"]["path"] or "",
        "KANBAN_BOARD": paths["board"],
        "KANBAN_PROFILE": spec["profile"],
    })
    env.update({k: str(v) for k, v in spec.get("env", {}).items()})
    return env


def strictly_inside(path: str, root: str) -> bool:
    """True if ``path`` resolves (symlinks included) to somewhere strictly below ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real != real_root and os.path.commonpath([real, real_root]) == real_root


def prepare_workspace(ws: dict[str, Any], task_id: str) -> str:
    """Create (or check) the run's working directory; returns its path."""
    kind, path = ws["kind"], ws["path"]
    if kind == "scratch":
        fsguard.ensure_private_dir(ws["root"])
        if not strictly_inside(path, ws["root"]):
            raise SpawnError(f"scratch workspace {path} is not inside {ws['root']}")
        fsguard.ensure_private_dir(path)
        return path
    if kind == "dir":
        if not os.path.isdir(path):
            raise SpawnError(f"workspace dir {path} does not exist")
        return path
    if kind == "worktree":
        repo = ws.get("repo")
        if not repo:
            raise SpawnError("worktree workspace needs workspaces.repo in the config")
        if not os.path.isdir(path):
            fsguard.ensure_private_dir(ws["root"])
            res = subprocess.run(["git", "-C", repo, "worktree", "add", "-B", f"wt/{task_id}", path],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise SpawnError(f"git worktree add failed: {res.stderr.strip()[-300:]}")
        return path
    raise SpawnError(f"unknown workspace kind {kind!r}")


def cleanup_workspace(kind: str, path: str, root: str, repo: str | None) -> str:
    """Remove a finished task's workspace if it is ours to remove; returns what happened."""
    if kind == "scratch":
        if not os.path.lexists(path):
            return "absent"
        if not strictly_inside(path, root):
            return f"refused: {path} is not strictly inside {root} after resolving symlinks"
        shutil.rmtree(os.path.realpath(path), ignore_errors=True)
        return "removed"
    if kind == "worktree":
        if not os.path.isdir(path):
            return "absent"
        res = subprocess.run(["git", "-C", path, "status", "--porcelain"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0 or res.stdout.strip():
            return "kept: worktree has uncommitted changes"
        res = subprocess.run(["git", "-C", repo or path, "worktree", "remove", path], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        return "removed" if res.returncode == 0 else f"kept: {res.stderr.strip()[-200:]}"
    return "kept"


def rotate_if_needed(path: str, max_bytes: int) -> bool:
    """Copy-truncate rotation to ``PATH.1`` (mode 0600): the worker's O_APPEND fd keeps writing to the same file."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    with open(path, "rb") as src, os.fdopen(fsguard.open_private(path + ".1", os.O_WRONLY | os.O_CREAT
                                                                  | os.O_TRUNC), "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.truncate(path, 0)
    return True


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


def _noop(signum: int, frame: Any) -> None:
    pass


def _wrapper(argv: list[str], env: dict[str, str], cwd: str, logfd: int, report: int, pid_path: str,
             exit_path: str) -> None:
    """The body of the forked wrapper process. Never returns."""
    code = 126
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _noop)  # caught, not ignored: the worker gets default handlers at exec
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        keep = {logfd, report}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        devnull = os.open(os.devnull, os.O_RDWR)
        me = psutil.Process()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=devnull, stdout=logfd, stderr=logfd,
                                    close_fds=True, restore_signals=True)
        except OSError as exc:
            msg = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            write_json_atomic(exit_path, {"spawn_error": msg, "ended_at": time.time()})
            os.write(report, b"err " + msg.encode())
            os._exit(127)
        write_json_atomic(pid_path, {"pid": os.getpid(), "start_time": me.create_time(), "worker_pid": proc.pid})
        try:
            os.write(report, f"ok {proc.pid}".encode())
        except OSError:  # EPIPE: the reaper died since the fork; the pid file tells the next one
            pass
        os.close(report)
        while True:
            try:
                _, status = os.waitpid(proc.pid, 0)
                break
            except ChildProcessError:
                status = None
                break
        if status is None:
            rec: dict[str, Any] = {"exit_code": None, "signal": None, "lost": "wrapper could not wait for worker"}
        elif os.WIFSIGNALED(status):
            rec = {"exit_code": None, "signal": os.WTERMSIG(status)}
        else:
            rec = {"exit_code": os.WEXITSTATUS(status), "signal": None}
        rec["ended_at"] = time.time()
        write_json_atomic(exit_path, rec)
        code = 0
    except BaseException:  # never let the wrapper fall back into the reaper's code
        pass
    os._exit(code)


def start(spec: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """Start the run's wrapper and worker.

    Returns:
        ``{pid, start_time, worker_pid, log}``: the wrapper (process group
        leader, our child), its start time, the worker's pid, the log path.

    Raises:
        SpawnError: The workspace, the log or the command could not be set up.
            An ``.exit`` file may exist; the caller reports and cleans up.
    """
    try:
        cwd = prepare_workspace(spec["workspace"], spec["task"])
    except OSError as exc:
        raise SpawnError(f"workspace {spec['workspace']['path']}: {exc.strerror}") from None
    except fsguard.UnsafePath as exc:
        raise SpawnError(str(exc)) from None
    values = {"task_id": spec["task"], "run_id": spec["run"], "title": spec["title"], "workspace": cwd,
              "config_dir": spec.get("config_dir") or ""}
    argv = expand(spec["command"], values)
    env = worker_env(spec, paths)
    try:
        fsguard.ensure_private_dir(paths["runs"])
        logfd, log_path = open_log(paths["logs"], spec["task"], spec["log_max"])
    except fsguard.UnsafePath as exc:
        raise SpawnError(str(exc)) from None
    pid_path, exit_path = run_files(paths["runs"], spec["run"])
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _wrapper(argv, env, cwd, logfd, w, pid_path, exit_path)
        os.close(w)
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
        os.waitpid(pid, 0)
        raise SpawnError(msg[4:] if msg.startswith("err ") else f"wrapper failed to start the worker ({msg!r})")
    try:
        start_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        start_time = 0.0
    return {"pid": pid, "start_time": start_time, "worker_pid": int(msg[3:]), "log": log_path}
