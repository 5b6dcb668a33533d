"""Spawner helpers: placeholders, log rotation, environment (workspaces: test_workspaces.py)."""

from __future__ import annotations

import os
import sys

from daemon import spawner


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
