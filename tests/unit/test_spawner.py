"""Spawner helpers: placeholders, log rotation, environment (workspaces: test_workspaces.py)."""

from __future__ import annotations

import os
import sys

from daemon import containment, spawner


def test_expand_placeholders_leaves_unknown_braces():
    argv = spawner.expand(["agent", "--task={task_id}", "{title}", "{nope}", "{workspace}/x"],
                          {"task_id": "t_1", "title": "Fix it", "workspace": "/w"})
    assert argv == ["agent", "--task=t_1", "Fix it", "{nope}", "/w/x"]


def test_expand_substitutes_once_so_a_title_cannot_name_placeholders():
    values = {"task_id": "t_1", "run_id": "r_1", "title": "{workspace} {config_dir} {run_id}",
              "workspace": "/w", "config_dir": "/etc/kanban"}
    argv = spawner.expand(["agent", "{title}", "--ws={workspace}", "{title}{task_id}"], values)
    assert argv == ["agent", "{workspace} {config_dir} {run_id}", "--ws=/w", "{workspace} {config_dir} {run_id}t_1"]


def test_rotate_if_needed_keeps_one_generation(tmp_path):
    log = tmp_path / "t.log"
    log.write_bytes(b"a" * 100)
    assert not spawner.rotate_if_needed(str(log), 200)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"b" * 150)
    assert spawner.rotate_if_needed(str(log), 200)
    assert (tmp_path / "t.log.1").read_bytes() == b"a" * 100 + b"b" * 150
    assert log.read_bytes() == b""
    os.write(fd, b"after")  # an O_APPEND writer keeps writing to the fresh file
    os.close(fd)
    assert log.read_bytes() == b"after"
    log.write_bytes(b"c" * 300)
    assert spawner.rotate_if_needed(str(log), 200)
    assert (tmp_path / "t.log.1").read_bytes() == b"c" * 300, "only one old generation is kept"


def test_worker_env_sets_kanban_vars_and_drops_systemd_ones():
    spec = {"task": "t_1", "run": "r_1", "workspace": {"path": "/w"}, "profile": "p", "env": {"MODEL": "x"}}
    paths = {"socket": "/s", "board": "/b.db", "runs": "/r", "client_bin": "/r/bin"}
    env = spawner.worker_env(spec, paths, base={"PATH": "/usr/bin", "NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "1",
                                               "HOME": "/h"})
    # the kanban client first, kanband's own virtualenv not at all: python3, pip, pytest stay the user's
    assert env["PATH"] == "/r/bin:/usr/bin"
    assert env["KANBAN_RETRY_AFTER_FILE"] == "/r/r_1.retry-after"
    assert env["KANBAN_TASK"] == "t_1" and env["KANBAN_RUN"] == "r_1" and env["KANBAN_SOCKET"] == "/s"
    assert env["KANBAN_WORKSPACE"] == "/w" and env["KANBAN_BOARD"] == "/b.db" and env["MODEL"] == "x"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env and env["HOME"] == "/h"
    assert env["PATH"].endswith("/usr/bin")
    venv = os.path.dirname(sys.executable)
    env = spawner.worker_env(spec, paths, base={"PATH": f"{venv}:/usr/bin"})
    assert env["PATH"] == "/r/bin:/usr/bin", "an activated virtualenv of kanband's leaks into workers"


def test_log_tail(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"x" * 1000 + b"THE END")
    assert spawner.log_tail(str(p), 7) == "THE END"
    assert spawner.log_tail(str(tmp_path / "missing")) == ""


def test_a_wrapper_outside_the_daemon_is_known_by_its_pid_file(tmp_path):
    """After a daemon restart the run's wrapper is no role's child, and the board may not have
    its pid yet (the dead reaper's report never committed). Its worker is still the run's: the
    wrapper's pid file, with the start time, says so; a process merely titled like a wrapper,
    or a pid file whose start time does not match (a reused pid), does not."""
    paths = {name: str(tmp_path / name) for name in ("runs", "logs", "workspaces")}
    paths.update(socket=str(tmp_path / "s.sock"), board=str(tmp_path / "board.db"), state_dir=str(tmp_path))
    go = tmp_path / "go"
    run_id, task = "r_0123456789ab", "t_01234567"
    spec = {"run": run_id, "task": task, "title": "x", "profile": "p", "env": {}, "log_max": 1 << 20,
            "command": ["/bin/sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done"], "kill_grace": 1,
            "workspace": {"kind": "scratch", "path": str(tmp_path / "workspaces" / task),
                          "root": str(tmp_path / "workspaces")}}
    info = spawner.start(spec, paths, containment.Containment("subreaper"))
    try:
        def board_has_no_pid(pid: int, run: str) -> bool:
            return False

        def on_record(pid: int, run: str) -> bool:
            return spawner.wrapper_on_record(paths["runs"], run, pid)

        # no role is an ancestor of this wrapper: its parent is this test, as after a daemon restart
        contain = containment.Containment("subreaper")
        worker = info["worker_pid"]
        assert containment.identify(worker, set(), contain, board_has_no_pid) == ("operator", None)
        assert containment.identify(worker, set(), contain, on_record) == ("run", run_id)
        assert spawner.wrapper_on_record(paths["runs"], run_id, info["pid"])
        assert not spawner.wrapper_on_record(paths["runs"], run_id, worker)
        assert not spawner.wrapper_on_record(paths["runs"], "r_ffffffffffff", info["pid"])
        pid_path = spawner.run_files(paths["runs"], run_id)[0]
        rec = spawner.read_json(pid_path)
        spawner.write_json_atomic(pid_path, {**rec, "start_time": rec["start_time"] - 60})
        assert not spawner.wrapper_on_record(paths["runs"], run_id, info["pid"])
        assert containment.identify(worker, set(), contain, on_record) == ("operator", None)
    finally:
        go.touch()
        _, status = os.waitpid(info["pid"], 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spawner.read_json(spawner.run_files(paths["runs"], run_id)[1])["exit_code"] == 0
