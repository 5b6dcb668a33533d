"""Test harness: start the real kanband in a temp dir and drive it for real.

Used by tests/integration and by bench/. Nothing here is mocked: the daemon
is the installed ``kanband`` console script, the CLI is the installed
``kanban``, the socket is a real Unix socket, and ``NOTIFY_SOCKET`` points at
a datagram socket this harness binds, so sd_notify messages are observed
exactly as systemd would receive them.

Every process the daemon starts inherits ``KANBAN_TEST_ID`` (a unique temp
path); :meth:`Daemon.cleanup` kills exactly those processes and no others.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

BIN = Path(sys.executable).parent
KANBAND = str(BIN / "kanband")
KANBAN = str(BIN / "kanban")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from client.rpc import Client, ServerError  # noqa: E402

FAST = {
    "supervisor": {"heartbeat_interval": "0.2s", "heartbeat_stale": "2s", "role_timeout": "20s",
                   "backoff_initial": "0.05s", "backoff_max": "1s"},
    "dispatch": {"tick": "0.5s", "kill_grace": "1s", "crash_grace": "1s", "retry_backoff": "0.05s",
                 "retry_backoff_max": "0.2s"},
    # The web board is on by default; tests that need it turn it on (tests/integration/test_web*.py),
    # the others are spared a fourth process per daemon on a 2-core machine.
    "web": {"enabled": False},
}


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


#: A worker body that relays connections from ``$1`` (a socket path) to the daemon: requests a test sends
#: through it come from a process of the run, as a worker's own would (the daemon checks the caller's pid).
RELAY = r"""
import os, socket, sys, threading
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path + ".tmp")
os.rename(path + ".tmp", path)
srv.listen(8)
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        u.connect(os.environ["KANBAN_SOCKET"])
    except OSError:
        c.close()
        continue
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()
"""


def relay_command(tmp: str, name: str = "relay") -> tuple[list[str], str]:
    """A worker command that relays a socket in ``tmp`` to the daemon; returns ``(argv, socket path)``."""
    script = os.path.join(tmp, f"{name}.py")
    with open(script, "w") as f:
        f.write(RELAY)
    path = os.path.join(tmp, f"{name}-$KANBAN_RUN.sock")
    return ["/bin/sh", "-c", f'exec {sys.executable} {script} "{path}"'], path


def drain_pty(master: int) -> bytes:
    """Read a pseudo-terminal's master side until every writer closed its end (EIO), then close it."""
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed its end
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return out


def on_tty(d: "Daemon", *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``kanban ARGS`` with stdout on a pseudo-terminal; returns what it printed (exit 0 asserted)."""
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([KANBAN, *args], stdout=slave, stderr=subprocess.PIPE, env=d.env(env), cwd=d.tmp)
    os.close(slave)
    out = drain_pty(master)
    assert p.wait(20) == 0, p.stderr.read()
    p.stderr.close()
    return out.decode()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``extra`` merged in: a test that edits its daemon's ``cfg``
    in place can never change ``FAST`` (or another test's config) behind everyone's back."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Notifications:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                for line in data.decode().splitlines():
                    self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str = "") -> list[tuple[float, str]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    def count(self, prefix: str) -> int:
        return len(self.lines(prefix))

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Daemon:
    """One kanband under test, with its own state dir, config, socket and notify socket."""

    def __init__(self, config: dict[str, Any] | None = None, fast: bool = True, watchdog_usec: int | None = None,
                 tmp: str | None = None) -> None:
        self.remove_tmp = tmp is None  # a dir we made is ours to delete in cleanup()
        self.tmp = tmp or tempfile.mkdtemp(prefix="kb", dir="/tmp")
        self.state = os.path.join(self.tmp, "state")
        self.socket = os.path.join(self.tmp, "s.sock")
        self.config_path = os.path.join(self.tmp, "config.yaml")
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.cfg = merge(FAST, config or {}) if fast else (config or {})
        self.write_config(self.cfg)
        self.watchdog_usec = watchdog_usec
        self.notify: Notifications | None = None
        self.proc: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []

    # ---- lifecycle -------------------------------------------------------------

    def write_config(self, cfg: dict[str, Any] | str) -> None:
        with open(self.config_path, "w") as f:
            f.write(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "KANBAN_TASK", "KANBAN_RUN"):
            env.pop(k, None)
        env["KANBAN_TEST_ID"] = self.tmp
        env["KANBAN_SOCKET"] = self.socket
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra or {})
        return env

    def start(self, wait: bool = True, timeout: float = 15.0, args: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        if self.notify is None:
            self.notify = Notifications(os.path.join(self.tmp, "n.sock"))
        env = self.env({"NOTIFY_SOCKET": self.notify.path, **(env or {})})
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        ready_before = self.notify.count("READY=1")
        logf = open(self.log_path, "ab")
        proc = subprocess.Popen([KANBAND, "--config", self.config_path, "--state-dir", self.state,
                                 "--socket", self.socket, *(args or [])],
                                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=self.tmp)
        logf.close()
        self.proc = proc
        self.procs.append(proc)
        if wait:
            wait_for(lambda: self.notify.count("READY=1") > ready_before or proc.poll() is not None,
                     timeout, what="READY=1")
            if proc.poll() is not None:
                raise AssertionError(f"kanband exited with {proc.returncode}:\n{self.log()}")
        return proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in Path(self.log_path).read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("<") and ">" in line[:4]:
                line = line[line.index(">") + 1:]
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the supervisor and wait for it to exit; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"kanband did not stop within {timeout}s:\n{self.log()}")

    def kill9(self) -> None:
        """SIGKILL the supervisor only (its roles must notice and exit by themselves)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def ours(self) -> list[psutil.Process]:
        """Every live process this daemon started.

        Workers carry our ``KANBAN_TEST_ID`` in their environment. The supervisor's roles and the
        worker wrappers are forks whose environ setproctitle has overwritten, so they are found by
        session instead: a role shares the session of the kanband we started, a wrapper leads the
        session of the worker it runs.
        """
        tagged, by_sid = [], {}
        for p in psutil.process_iter(["pid"]):
            if p.pid == os.getpid():
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                by_sid.setdefault(os.getsid(p.pid), []).append(p)
                if p.environ().get("KANBAN_TEST_ID") == self.tmp:
                    tagged.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError):
                continue
        sids = {proc.pid for proc in self.procs}
        for p in tagged:
            try:
                sids.add(os.getsid(p.pid))
            except ProcessLookupError:
                continue
        found = {p.pid: p for p in tagged}
        for sid in sids:
            for p in by_sid.get(sid, []):
                found[p.pid] = p
        return list(found.values())

    def cleanup(self) -> list[int]:
        """Stop the daemon, kill every process it left behind, reap; returns the pids that were left."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
        left = self.ours()
        for p in left:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        reap_orphans()
        if self.notify is not None:
            self.notify.close()
        if self.remove_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return [p.pid for p in left]

    # ---- talking to it ------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
            timeout: float = 20.0) -> subprocess.CompletedProcess:
        res = subprocess.run([KANBAN, *args], capture_output=True, text=True, env=self.env(env), timeout=timeout,
                             cwd=self.tmp)
        if check and res.returncode != 0:
            raise AssertionError(f"kanban {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def cli_json(self, *args: str, **kw: Any) -> Any:
        res = self.cli(*args, "--json", **kw)
        return json.loads(res.stdout)

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with Client(self.socket, retry=5.0) as c:
            return c.call(method, params or {})

    def rpc_error(self, method: str, params: dict[str, Any] | None = None) -> ServerError:
        try:
            self.rpc(method, params)
        except ServerError as exc:
            return exc
        raise AssertionError(f"{method} unexpectedly succeeded")

    def raw(self, data: bytes, expect_lines: int = 1, timeout: float = 5.0, path: str | None = None
            ) -> list[dict[str, Any]]:
        """Send raw bytes on a fresh connection (to ``path``, default the daemon's socket); read
        ``expect_lines`` response lines."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(path or self.socket)
        try:
            s.sendall(data)
            buf = b""
            while buf.count(b"\n") < expect_lines:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        return [json.loads(line) for line in buf.splitlines() if line.strip()]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.rpc("task.show", {"id": task_id})["task"]

    def wait_status(self, task_id: str, status: str | tuple[str, ...], timeout: float = 15.0) -> dict[str, Any]:
        want = (status,) if isinstance(status, str) else status
        return wait_for(lambda: (t := self.task(task_id))["status"] in want and t, timeout,
                        what=f"task {task_id} to be {'/'.join(want)} (daemon log tail:\n{self.log()[-1500:]})")

    def role_pids(self) -> dict[str, int]:
        return {r["name"]: r["pid"] for r in self.rpc("daemon.status")["roles"]}


def restore_default_signals() -> None:
    """Undo the SIGINT/SIGQUIT dispositions a background job inherits (``make test &``).

    A non-interactive shell starts a background job with SIGINT and SIGQUIT ignored; an
    ignored signal stays ignored across ``exec``, so every daemon and client a test starts
    would inherit it, and a test that ends ``kanban watch`` with SIGINT (Ctrl-C) would hang.
    Python's own handler in the test process makes the children start with the default.
    """
    import signal
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def reap_orphans() -> None:
    """Reap zombie children that were re-parented to this (subreaper) test process."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue


def write_script(path: str | Path, body: str, mode: int = 0o755) -> str:
    Path(path).write_text(body)
    os.chmod(path, mode)
    return str(path)


def become_subreaper() -> None:
    """Orphaned worker wrappers re-parent to us instead of PID 1, so we can prove they are reaped."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)
