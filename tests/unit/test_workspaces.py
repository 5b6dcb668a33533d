"""Workspace cleanup cannot be raced or redirected: it never deletes outside the root, never
follows a symlink, and never touches a sibling's workspace."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.harness import wait_for

from daemon import spawner, workspaces


def precious_dir(path, name="keep.txt"):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text("do not delete")
    return path / name


def test_scratch_cleanup_refuses_paths_outside_the_root(tmp_path):
    root = tmp_path / "workspaces"
    root.mkdir()
    keep = precious_dir(tmp_path / "precious")
    # a symlink in the task's place is unlinked, never followed
    (root / "t_evil0000").symlink_to(tmp_path / "precious")
    res = workspaces.cleanup_workspace("scratch", str(root / "t_evil0000"), str(root), None)
    assert res.startswith("refused") and "symlink" in res
    assert keep.exists() and not os.path.lexists(root / "t_evil0000")
    # a path that escapes with .., the root itself, a dotted name: not an entry of the root
    res = workspaces.cleanup_workspace("scratch", str(root / ".." / "precious"), str(root), None)
    assert res.startswith("refused") and keep.exists()
    assert workspaces.cleanup_workspace("scratch", str(root), str(root), None).startswith("refused")
    assert workspaces.cleanup_workspace("scratch", str(root / ".trash"), str(root), None).startswith("refused")
    assert root.is_dir()
    # a real scratch dir is removed, and the trash is left empty
    (root / "t_ok000000" / "sub").mkdir(parents=True)
    (root / "t_ok000000" / "sub" / "f").write_text("x")
    assert workspaces.cleanup_workspace("scratch", str(root / "t_ok000000"), str(root), None) == "removed"
    assert not (root / "t_ok000000").exists() and os.listdir(root / ".trash") == []
    assert workspaces.cleanup_workspace("scratch", str(root / "t_gone0000"), str(root), None) == "absent"
    # dir: workspaces are never removed
    assert workspaces.cleanup_workspace("dir", str(tmp_path / "precious"), str(root), None) == "kept"
    assert keep.exists()
    # the spawner still exports the functions it used to define
    assert spawner.cleanup_workspace is workspaces.cleanup_workspace


def test_strictly_inside_resolves_symlinked_roots(tmp_path):
    real = tmp_path / "real"
    (real / "t_a").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert workspaces.strictly_inside(str(link / "t_a"), str(real))
    assert workspaces.strictly_inside(str(real / "t_a"), str(link))
    assert not workspaces.strictly_inside(str(tmp_path), str(real))
    assert not workspaces.strictly_inside(str(tmp_path / "realish"), str(real))


def test_workspace_replaced_by_a_symlink_to_a_sibling_leaves_the_sibling_alone(tmp_path):
    root = tmp_path / "ws"
    sibling = precious_dir(root / "t_sibling0", "work-in-progress.txt")
    (root / "t_mine0000").symlink_to(root / "t_sibling0")  # inside the root, so realpath checks pass
    res = workspaces.cleanup_workspace("scratch", str(root / "t_mine0000"), str(root), None)
    assert res.startswith("refused")
    assert sibling.read_text() == "do not delete"


def test_symlinks_inside_the_tree_are_unlinked_not_followed(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    keep = precious_dir(outside)
    ws = root / "t_links000"
    (ws / "a" / "b").mkdir(parents=True)
    (ws / "a" / "b" / "f").write_text("x")
    (ws / "to-outside").symlink_to(outside)
    (ws / "a" / "to-file").symlink_to(keep)
    (ws / "a" / "b" / "to-root").symlink_to(tmp_path)
    assert workspaces.cleanup_workspace("scratch", str(ws), str(root), None) == "removed"
    assert not os.path.lexists(ws) and keep.read_text() == "do not delete"
    assert os.listdir(root / ".trash") == []


def test_read_only_and_deep_trees_are_purged(tmp_path):
    root = tmp_path / "ws"
    ws = root / "t_ro000000"
    locked = ws / "modcache" / "pkg@v1"
    locked.mkdir(parents=True)
    (locked / "go.mod").write_text("module x")
    os.chmod(locked, 0o500)        # like Go's module cache
    (ws / "noread").mkdir()
    (ws / "noread" / "f").write_text("x")
    os.chmod(ws / "noread", 0o000)
    deep = ws / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):      # deeper than Python's recursion limit
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    assert workspaces.cleanup_workspace("scratch", str(ws), str(root), None) == "removed"
    assert not os.path.lexists(ws) and os.listdir(root / ".trash") == []


def test_a_planted_trash_symlink_is_replaced_not_followed(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    keep = precious_dir(outside)
    root.mkdir()
    (root / ".trash").symlink_to(outside)
    (root / "t_task0000").mkdir()
    (root / "t_task0000" / "f").write_text("x")
    assert workspaces.cleanup_workspace("scratch", str(root / "t_task0000"), str(root), None) == "removed"
    assert keep.exists() and os.listdir(outside) == ["keep.txt"]
    assert (root / ".trash").is_dir() and not (root / ".trash").is_symlink()


def test_prepare_refuses_a_scratch_workspace_that_is_a_symlink(tmp_path):
    root = tmp_path / "ws"
    precious_dir(root / "t_sibling0")
    (root / "t_mine0000").symlink_to(root / "t_sibling0")
    spec = {"kind": "scratch", "path": str(root / "t_mine0000"), "root": str(root)}
    with pytest.raises(workspaces.WorkspaceError, match="symlink"):
        workspaces.prepare_workspace(spec, "t_mine0000")
    spec["path"] = str(root / "t_new00000")
    assert workspaces.prepare_workspace(spec, "t_new00000") == str(root / "t_new00000")
    assert (root / "t_new00000").is_dir() and oct((root / "t_new00000").stat().st_mode & 0o777) == "0o700"
    spec["path"] = str(tmp_path / "elsewhere")
    with pytest.raises(workspaces.WorkspaceError, match="not an entry"):
        workspaces.prepare_workspace(spec, "t_x")


SWAPPER = r"""
import os, sys
root, ws, outside, sibling = sys.argv[1:5]
link_tmp, dir_tmp = os.path.join(root, ".swap-link"), os.path.join(root, ".swap-dir")
i = 0
while True:
    i += 1
    try:
        if i % 4 == 0:   # a real directory in the task's place
            os.makedirs(dir_tmp, exist_ok=True)
            open(os.path.join(dir_tmp, "f"), "w").close()
            if os.path.islink(ws):
                os.unlink(ws)
            os.rename(dir_tmp, ws)
        else:            # a symlink, flipped atomically between a sibling and a directory outside the root
            target = outside if i % 2 else sibling
            if os.path.lexists(link_tmp):
                os.unlink(link_tmp)
            os.symlink(target, link_tmp)
            os.replace(link_tmp, ws)
    except OSError:
        pass
"""


def test_symlink_swap_race_never_deletes_outside_the_root(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    keep_out = precious_dir(outside)
    keep_sib = precious_dir(root / "t_sibling0")
    ws = root / "t_race0000"
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(root), str(ws), str(outside),
                                str(root / "t_sibling0")])
    results: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        wait_for(lambda: os.path.lexists(ws), timeout=60, what="the swapper at work")
        calls = 0
        # at least 3000 calls, and until both a directory and a symlink were met in the task's place
        while (calls < 3000 or not (results.get("removed") and results.get("refused"))) \
                and time.monotonic() < deadline:
            res = workspaces.cleanup_workspace("scratch", str(ws), str(root), None)
            key = res.split(":")[0].split(" ")[0]
            results[key] = results.get(key, 0) + 1
            calls += 1
            assert keep_out.exists() and keep_sib.exists(), f"deleted outside the workspace after {calls} calls"
    finally:
        swapper.kill()
        swapper.wait()
    assert calls >= 3000, calls
    assert results.get("removed", 0) > 0 and results.get("refused", 0) > 0, results
    assert keep_out.read_text() == keep_sib.read_text() == "do not delete"
    assert sorted(os.listdir(outside)) == ["keep.txt"] and sorted(os.listdir(root / "t_sibling0")) == ["keep.txt"]
    workspaces.purge(str(root))
    assert os.listdir(root / ".trash") == []
