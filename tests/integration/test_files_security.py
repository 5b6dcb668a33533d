"""Nobody else's directories, nobody else's sockets (issue 10, section 3), against the real daemon.

- Every directory kanband creates or reuses (state, logs, runs, workspaces, the
  socket's directory) must be a real directory, ours, with no group or other
  write; otherwise the daemon refuses to start with one line naming the path,
  its owner and mode, and the fix.
- Every connection checks who serves the socket: the CLI and the roles refuse a
  server running as another uid (an impostor's socket), and send it nothing.
- Files are private whatever the umask.
- A socket path longer than ``sun_path`` allows says "too long", in the client and the daemon.

The tests run as root (as CI does): an impostor server is a process that binds
as root, then drops to ``nobody`` before ``listen()`` (SO_PEERCRED reports the
listener's credentials at ``listen()``), and foreign directories are chowned
to ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import signal
import sqlite3
import stat
import subprocess
import sys

import pytest

from client.rpc import Client, PathTooLong, UntrustedServer
from tests.harness import KANBAND, wait_for, write_script

NOBODY = pwd.getpwnam("nobody").pw_uid

# A server that binds as root, becomes nobody, then listens: it logs every connection's bytes as hex.
IMPOSTOR = r"""
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o666)
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[2]))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2.0)
    data = b""
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    print("got " + data.hex(), flush=True)
    c.close()
"""


def needs_root() -> None:
    assert os.getuid() == 0, "these tests need root (as in CI): they run servers and own dirs as another uid"


class Impostor:
    """Another user's server on ``path``: records what each connection sent."""

    def __init__(self, path: str, out: str) -> None:
        self.out = out
        with open(out, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-c", IMPOSTOR, path, str(NOBODY)], stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "ready" in self.lines() or self.proc.poll() is not None, what="impostor listening")
        assert self.proc.poll() is None, self.lines()

    def lines(self) -> list[str]:
        with open(self.out) as f:
            return f.read().split("\n")

    def received(self) -> list[str]:
        """The hex of every non-empty connection payload."""
        return [line[4:] for line in self.lines() if line.startswith("got ") and line[4:]]

    def connections(self) -> int:
        return sum(1 for line in self.lines() if line.startswith("got"))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def run_kanband(d, *args: str, wrap: tuple[str, ...] = (), timeout: float = 30) -> subprocess.CompletedProcess:
    """Run kanband in the foreground (for start-up failures): stdout and stderr kept apart."""
    cmd = [*wrap, KANBAND, "--config", d.config_path, "--state-dir", d.state, "--socket", d.socket, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=d.env(), timeout=timeout, cwd=d.tmp,
                          start_new_session=True)


def assert_one_line_failure(res: subprocess.CompletedProcess, code: int = 1) -> str:
    """Exit ``code``; stderr is exactly one ``kanband: ...`` line; no traceback anywhere."""
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kanband: "), res.stderr
    return lines[0]


# ---- directories ----------------------------------------------------------------------


def foreign_dir(path: str, mode: int = 0o777) -> str:
    os.makedirs(path, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("case", ["other-owner-0777", "ours-0777", "ours-0775", "symlink"])
def test_socket_dir_not_ours_is_refused(make_daemon, case):
    """The /tmp case: another local user created the socket dir first (or made it a link)."""
    needs_root()
    d = make_daemon(start=False)
    sock_dir = os.path.join(d.tmp, "kanban-0")
    if case == "other-owner-0777":
        foreign_dir(sock_dir)
        expect = ["belongs to someone else", f"owner uid {NOBODY} (nobody)", "mode 0777", "remove it"]
    elif case == "symlink":
        os.mkdir(os.path.join(d.tmp, "elsewhere"), 0o700)
        os.symlink(os.path.join(d.tmp, "elsewhere"), sock_dir)
        expect = ["is a symlink", "remove the link"]
    else:
        os.mkdir(sock_dir)
        os.chmod(sock_dir, 0o777 if case == "ours-0777" else 0o775)
        expect = ["writable by group", f"chmod 700 {sock_dir}", "owner uid 0 (root)"]
    d.socket = os.path.join(sock_dir, "kanband.sock")
    line = assert_one_line_failure(run_kanband(d))
    assert f"unsafe directory {sock_dir}:" in line, line
    for part in expect:
        assert part in line, (part, line)
    assert not os.path.exists(d.socket)
    # nothing was started: the lock is free and no pidfile is left
    assert not os.path.exists(os.path.join(d.state, "kanband.pid"))


@pytest.mark.parametrize("which", ["state", "logs", "runs", "workspaces"])
def test_state_dirs_not_ours_are_refused(make_daemon, which):
    needs_root()
    d = make_daemon(start=False)
    target = d.state if which == "state" else os.path.join(d.state, which)
    if which != "state":
        os.mkdir(d.state, 0o700)
    foreign_dir(target)
    line = assert_one_line_failure(run_kanband(d))
    assert f"unsafe directory {target}:" in line and f"owner uid {NOBODY} (nobody), mode 0777" in line, line
    assert not os.path.exists(d.socket)


def test_dirs_we_create_are_0700_and_a_private_existing_state_dir_is_kept(make_daemon):
    d = make_daemon(start=False)
    os.mkdir(d.state)
    os.chmod(d.state, 0o755)  # no group/other write: acceptable, left as it is
    sock_dir = os.path.join(d.tmp, "new", "deeper")
    d.socket = os.path.join(sock_dir, "s.sock")
    old = os.umask(0o022)
    try:
        d.start()
    finally:
        os.umask(old)
    for path in (sock_dir, os.path.dirname(sock_dir), *(os.path.join(d.state, x) for x in
                                                          ("logs", "runs", "workspaces"))):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700, path
    assert stat.S_IMODE(os.stat(d.state).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600


# ---- the server's credentials -----------------------------------------------------------


def test_cli_refuses_a_server_of_another_uid_and_sends_it_nothing(make_daemon):
    needs_root()
    d = make_daemon(start=False)
    path = os.path.join(d.tmp, "imp.sock")
    imp = Impostor(path, os.path.join(d.tmp, "impostor.out"))
    try:
        res = d.cli("create", "secret plans", check=False, env={"KANBAN_SOCKET": path})
        assert res.returncode == 1
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kanban: refusing the server on " + path), res.stderr
        assert f"uid {NOBODY} (nobody)" in err[0] and "not as you (uid 0) or root" in err[0], err
        with pytest.raises(UntrustedServer, match=f"refusing the server on {path}: it runs as uid {NOBODY}"):
            Client(path, retry=0)
        wait_for(lambda: imp.connections() >= 2, what="both connections closed")
        assert imp.received() == [], "the client sent a request to another user's server"
    finally:
        imp.stop()


def test_roles_refuse_an_impostor_after_a_restart(make_daemon):
    """Another uid's socket swapped in: after the dispatcher restarts, the reaper and notifier
    reconnect to the path, find the impostor, refuse it and send it nothing."""
    needs_root()
    d = make_daemon()
    pids = d.role_pids()
    os.unlink(d.socket)
    imp = Impostor(d.socket, os.path.join(d.tmp, "impostor.out"))
    try:
        os.kill(pids["dispatcher"], signal.SIGKILL)

        def refused(role: str) -> list[dict]:
            return [e for e in d.log_events() if e.get("event") == "socket.server_refused" and e.get("role") == role]

        for role in ("reaper", "notifier"):
            evs = wait_for(lambda: refused(role), timeout=15, what=f"{role} to refuse the impostor")
            assert evs[0]["socket"] == d.socket and f"uid {NOBODY}" in evs[0]["error"], evs[0]
        wait_for(lambda: imp.connections() >= 2, what="the roles' connections to end")
        assert imp.received() == [], f"a role sent the impostor: {[bytes.fromhex(x) for x in imp.received()]}"
    finally:
        imp.stop()


# ---- sun_path ------------------------------------------------------------------------------


def test_socket_path_too_long_says_so_in_client_and_daemon(make_daemon):
    d = make_daemon(start=False)
    long_path = os.path.join(d.tmp, "x" * (120 - len(d.tmp)), "kanband.sock")
    n = len(long_path.encode())
    assert n > 107
    res = d.cli("status", check=False, env={"KANBAN_SOCKET": long_path})
    assert res.returncode == 1
    assert res.stderr.strip() == (f"kanban: socket path too long: {long_path} is {n} bytes, and a Unix socket "
                                  "path can have at most 107 (sun_path is 108 bytes with the NUL); choose a "
                                  "shorter path"), res.stderr
    with pytest.raises(PathTooLong, match="too long"):
        Client(long_path)
    d.socket = long_path
    line = assert_one_line_failure(run_kanband(d), code=2)
    assert line.startswith(f"kanband: socket path too long: {long_path} is {n} bytes") and "107" in line, line


# ---- file modes ------------------------------------------------------------------------------


def test_every_file_is_private_under_umask_022(make_daemon):
    """A pre-existing 0755 state dir, umask 022, a worker whose log rotates: every file is 0600."""
    d = make_daemon({"logs": {"worker_log_max": 1000}, "dispatch": {"failure_limit": 2}}, start=False)
    noisy = write_script(os.path.join(d.tmp, "noisy.sh"), "#!/bin/sh\nhead -c 3000 /dev/zero | tr '\\0' x\n"
                                                         "echo\nexit 1\n")
    sleeper = write_script(os.path.join(d.tmp, "sleeper.sh"), "#!/bin/sh\necho started\nexec sleep 60\n")
    d.cfg["profiles"] = {"noisy": {"command": [noisy]}, "sleeper": {"command": [sleeper]}}
    d.write_config(d.cfg)
    os.mkdir(d.state)
    os.chmod(d.state, 0o755)
    old = os.umask(0o022)
    try:
        d.start()
    finally:
        os.umask(old)
    noisy_task = d.rpc("task.create", {"title": "noisy", "assignee": "noisy"})["id"]
    sleep_task = d.rpc("task.create", {"title": "sleeps", "assignee": "sleeper"})["id"]
    d.wait_status(noisy_task, "blocked", timeout=30)  # two crashed runs: the second rotated the first's log
    d.wait_status(sleep_task, "running")
    logs = os.path.join(d.state, "logs")
    wait_for(lambda: os.path.exists(os.path.join(logs, f"{sleep_task}.log")) and
             os.path.getsize(os.path.join(logs, f"{sleep_task}.log")) > 0, what="sleeper log")
    runs = os.path.join(d.state, "runs")
    assert [f for f in os.listdir(runs) if f.endswith(".pid")], os.listdir(runs)
    expected = {"board.db", "board.db-wal", "board.db-shm", "board.id", "kanband.pid", "kanband.lock",
                *(f"runs/{f}" for f in os.listdir(runs) if f.endswith((".pid", ".lock"))),
                f"logs/{noisy_task}.log", f"logs/{noisy_task}.log.1", f"logs/{sleep_task}.log"}
    found, bad = set(), []
    for root, dirs, files in os.walk(d.state):
        # a run's copy of its task's attachments is read-only on purpose (0500 dir, 0400 files)
        read_only = root.endswith(".attachments")
        for name in dirs:
            path = os.path.join(root, name)
            want = 0o500 if name.endswith(".attachments") else 0o700
            if stat.S_IMODE(os.lstat(path).st_mode) != want:
                bad.append((path, oct(os.lstat(path).st_mode)))
        for name in files:
            path = os.path.join(root, name)
            found.add(os.path.relpath(path, d.state))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):  # runs/bin/kanban: a link has no mode of its own; its dir is 0700
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode != (0o400 if read_only else 0o600):
                bad.append((path, oct(mode)))
    assert expected <= found, expected - found
    assert not bad, f"not private: {bad}"
    assert stat.S_IMODE(os.stat(d.state).st_mode) == 0o755
    d.stop()


def test_existing_wide_files_are_tightened(make_daemon):
    """Files left by an older kanband (a 0644 board, a 0666 lock file) become 0600 at start."""
    d = make_daemon(start=False)
    os.mkdir(d.state, 0o700)
    board = os.path.join(d.state, "board.db")
    raw = sqlite3.connect(board)
    raw.execute("CREATE TABLE unrelated (x)")
    raw.commit()
    raw.close()
    lock = os.path.join(d.state, "kanband.lock")
    with open(lock, "w"):
        pass
    os.chmod(board, 0o644)
    os.chmod(lock, 0o666)
    d.start()
    for path in (board, lock, os.path.join(d.state, "board.id")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    d.stop()


# ---- start-up failures -------------------------------------------------------------------------


def mounted(opts: str, where: str) -> tuple[str, ...]:
    """Run the command in a private mount namespace with a tmpfs (``opts``) mounted on ``where``."""
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o "$0" tmpfs "$1" && shift && exec "$@"', opts, where)


def test_startup_read_only_state_dir_is_one_line(make_daemon):
    needs_root()
    d = make_daemon(start=False)
    os.mkdir(d.state, 0o700)
    line = assert_one_line_failure(run_kanband(d, wrap=mounted("ro,mode=0700", d.state)))
    assert line == f"kanband: cannot start: {d.state}/kanband.lock: Read-only file system", line


def test_startup_full_disk_is_one_line(make_daemon):
    needs_root()
    d = make_daemon(start=False)
    os.mkdir(d.state, 0o700)
    line = assert_one_line_failure(run_kanband(d, wrap=mounted("size=12k,mode=0700", d.state)))
    assert str(d.state) in line and ("full" in line or "No space left" in line), line


def test_startup_board_is_a_directory_is_one_line(make_daemon):
    d = make_daemon(start=False)
    os.makedirs(os.path.join(d.state, "board.db"), 0o700)
    line = assert_one_line_failure(run_kanband(d))
    assert line.startswith(f"kanband: board {d.state}/board.db is a directory"), line


def test_startup_state_dir_is_a_file_is_one_line(make_daemon):
    d = make_daemon(start=False)
    with open(d.state, "w") as f:
        f.write("not a dir")
    line = assert_one_line_failure(run_kanband(d))
    assert line.startswith(f"kanband: unsafe directory {d.state}: it is not a directory"), line


def test_startup_pidfile_is_a_symlink_is_one_line(make_daemon):
    """A planted link where the lock file goes is never followed."""
    d = make_daemon(start=False)
    os.mkdir(d.state, 0o700)
    target = os.path.join(d.tmp, "victim")
    with open(target, "w") as f:
        f.write("keep me")
    os.symlink(target, os.path.join(d.state, "kanband.lock"))
    line = assert_one_line_failure(run_kanband(d))
    assert f"{d.state}/kanband.lock: it is a symlink" in line, line
    with open(target) as f:
        assert f.read() == "keep me"


def test_unsafe_dir_under_the_running_daemon_fails_the_spawn_not_the_daemon(make_daemon):
    """The reaper checks the logs dir at every spawn: a dir made group-writable meanwhile fails the run."""
    d = make_daemon(start=False)
    w = write_script(os.path.join(d.tmp, "w.sh"), "#!/bin/sh\nexec kanban complete --summary ok\n")
    d.cfg["profiles"] = {"w": {"command": [w]}}
    d.write_config(d.cfg)
    d.start()
    os.chmod(os.path.join(d.state, "logs"), 0o777)
    t = d.rpc("task.create", {"title": "t", "assignee": "w"})["id"]
    run = wait_for(lambda: (r := d.rpc("task.runs", {"id": t})["runs"]) and r[-1]["outcome"] and r[-1],
                   timeout=20, what="the run to end")
    assert run["outcome"] == "spawn_failed" and "unsafe directory" in run["error"] and "chmod 700" in run["error"]
    assert d.rpc("daemon.status")["board_error"] is None  # the daemon itself carries on
