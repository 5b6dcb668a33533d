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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from daemon.workspaces import cleanup_workspace, prepare_workspace, strictly_inside  # noqa: F401 (re-exported)

PLACEHOLDERS = ("task_id", "run_id", "title", "workspace", "config_dir")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class SpawnError(Exception):
    """The worker could not be started; the message says why."""


def write_json_atomic(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write-then-rename, so a reader never sees half a file. No fsync: these files only
    have to outlive the daemon's processes, not the machine (a reboot ends the workers too)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


def rotate_if_needed(path: str, max_bytes: int) -> bool:
    """Copy-truncate rotation: the worker's O_APPEND fd keeps writing to the same file."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    shutil.copyfile(path, path + ".1")
    os.truncate(path, 0)
    return True


def open_log(logs_dir: str, task_id: str, max_bytes: int) -> tuple[int, str]:
    os.makedirs(logs_dir, mode=0o700, exist_ok=True)
    path = os.path.join(logs_dir, f"{task_id}.log")
    rotate_if_needed(path, max_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
    values = {"task_id": spec["task"], "run_id": spec["run"], "title": spec["title"], "workspace": cwd,
              "config_dir": spec.get("config_dir") or ""}
    argv = expand(spec["command"], values)
    env = worker_env(spec, paths)
    logfd, log_path = open_log(paths["logs"], spec["task"], spec["log_max"])
    os.makedirs(paths["runs"], mode=0o700, exist_ok=True)
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
