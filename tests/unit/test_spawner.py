"""Spawner helpers: workspace safety, placeholders, log rotation, environment."""

from __future__ import annotations

import os
import sys

from daemon import spawner


def test_scratch_cleanup_refuses_paths_outside_the_root(tmp_path):
    root = tmp_path / "workspaces"
    root.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("do not delete")
    # a symlink inside the root that points outside it
    (root / "t_evil").symlink_to(precious)
    res = spawner.cleanup_workspace("scratch", str(root / "t_evil"), str(root), None)
    assert res.startswith("refused") and (precious / "keep.txt").exists()
    # a path that escapes with ..
    res = spawner.cleanup_workspace("scratch", str(root / ".." / "precious"), str(root), None)
    assert res.startswith("refused") and (precious / "keep.txt").exists()
    # the root itself is not strictly inside the root
    assert spawner.cleanup_workspace("scratch", str(root), str(root), None).startswith("refused")
    assert root.is_dir()
    # a real scratch dir is removed
    (root / "t_ok" / "sub").mkdir(parents=True)
    (root / "t_ok" / "sub" / "f").write_text("x")
    assert spawner.cleanup_workspace("scratch", str(root / "t_ok"), str(root), None) == "removed"
    assert not (root / "t_ok").exists()
    assert spawner.cleanup_workspace("scratch", str(root / "t_gone"), str(root), None) == "absent"
    # dir: workspaces are never removed
    assert spawner.cleanup_workspace("dir", str(precious), str(root), None) == "kept"
    assert precious.is_dir()


def test_strictly_inside_resolves_symlinked_roots(tmp_path):
    real = tmp_path / "real"
    (real / "t_a").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert spawner.strictly_inside(str(link / "t_a"), str(real))
    assert spawner.strictly_inside(str(real / "t_a"), str(link))
    assert not spawner.strictly_inside(str(tmp_path), str(real))
    assert not spawner.strictly_inside(str(tmp_path / "realish"), str(real))


def test_expand_placeholders_leaves_unknown_braces():
    argv = spawner.expand(["agent", "--task={task_id}", "{title}", "{nope}", "{workspace}/x"],
                          {"task_id": "t_1", "title": "Fix it", "workspace": "/w"})
    assert argv == ["agent", "--task=t_1", "Fix it", "{nope}", "/w/x"]


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
