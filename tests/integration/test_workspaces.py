"""Workspace cleanup in the real daemon: a hostile worker cannot redirect it, and a big
workspace is deleted by a purge child while the reaper goes on starting workers."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.harness import wait_for, write_script

SLOW_TICK = {"dispatch": {"tick": "30s"}}


def log_events(d, name):
    return [e for e in d.log_events() if e.get("event") == name]


def test_workspace_replaced_by_a_symlink_to_a_running_sibling(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    release = Path(d.tmp) / "release"
    holder = write_script(f"{d.tmp}/holder.sh", f"""#!/bin/sh
echo "live work" > wip.txt
while [ ! -e {release} ]; do sleep 0.05; done
kanban complete --summary held
""")
    evil = write_script(f"{d.tmp}/evil.sh", """#!/bin/sh
ws="$KANBAN_WORKSPACE"
cd /
rm -rf "$ws"
ln -s "$(dirname "$ws")/$1" "$ws"
kanban complete --summary "swapped my workspace for $1"
""")
    d.cfg["profiles"] = {"holder": {"command": [holder]}, "evil": {"command": [evil, "{title}"]}}
    d.write_config(d.cfg)
    d.start()
    root = Path(d.state) / "workspaces"
    b = d.cli_json("create", "sibling", "-a", "holder")
    wip = root / b["id"] / "wip.txt"
    wait_for(wip.exists, what="the sibling's work in progress")
    a = d.cli_json("create", b["id"], "-a", "evil")
    d.wait_status(a["id"], "done")
    cleanup = wait_for(lambda: [e for e in log_events(d, "workspace.cleanup") if e.get("task") == a["id"]],
                       what="the evil task's cleanup")
    assert cleanup[0]["result"].startswith("refused") and "symlink" in cleanup[0]["result"]
    assert wip.read_text() == "live work\n", "the running sibling's workspace was deleted"
    assert d.task(b["id"])["status"] == "running"
    assert not (root / a["id"]).exists(), "the symlink itself is unlinked"
    release.touch()
    d.wait_status(b["id"], "done")
    wait_for(lambda: not (root / b["id"]).exists(), what="the sibling's own cleanup")


def test_a_huge_workspace_does_not_hold_up_the_next_task(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    big = write_script(f"{d.tmp}/big.py", f"""#!{sys.executable}
import os, subprocess
for i in range(100):  # 100k entries; mostly hard links, because creating inodes is slow on some machines
    os.mkdir(f"d{{i}}")
    open(f"d{{i}}/f0", "w").close()
    for j in range(1, 1000):
        os.link(f"d{{i}}/f0", f"d{{i}}/f{{j}}")
subprocess.run(["kanban", "complete", "--summary", "100k files"], check=True)
""")
    seen = Path(d.tmp) / "trash-seen"
    nxt = write_script(f"{d.tmp}/next.sh", f"""#!/bin/sh
ls -A "$(dirname "$KANBAN_WORKSPACE")/.trash" > {seen}
kanban complete
""")
    d.cfg["profiles"] = {"big": {"command": [big]}, "next": {"command": [nxt]}}
    d.write_config(d.cfg)
    d.start()
    root = Path(d.state) / "workspaces"
    a = d.cli_json("create", "make a mess", "-a", "big")
    d.wait_status(a["id"], "done", timeout=60)
    # the reaper logs the cleanup once a's worker has exited and the workspace is out of the way
    wait_for(lambda: [e for e in log_events(d, "workspace.cleanup") if e.get("task") == a["id"]],
             timeout=30, what="a's cleanup")
    b = d.cli_json("create", "then me", "-a", "next")
    d.wait_status(b["id"], "done", timeout=30)
    # b started while a's workspace was still being purged in the background
    trash = seen.read_text().split()
    assert len(trash) == 1 and trash[0].startswith(a["id"] + "."), trash
    pid = [e["child_pid"] for e in log_events(d, "workspace.purge_started") if e["trash"] == trash[0]][0]
    purged = wait_for(lambda: [e for e in log_events(d, "workspace.purged") if e["child_pid"] == pid], timeout=60,
                      what="the purge child to finish")
    assert purged[0]["exit_code"] == 0
    marks = [(e.get("event"), e.get("task") or e.get("child_pid")) for e in d.log_events()]
    assert marks.index(("worker.started", b["id"])) < marks.index(("workspace.purged", pid)), \
        "the next worker started only after the purge had finished"
    assert not (root / a["id"]).exists()
    wait_for(lambda: list((root / ".trash").iterdir()) == [], what="an empty trash")


def test_trash_left_by_a_crash_is_purged_at_the_next_start(make_daemon):
    d = make_daemon(start=False)
    left = Path(d.state) / "workspaces" / ".trash" / "t_0123abcd.00ff00ff"
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "f").write_text("x")
    (left / "link").symlink_to(d.tmp)
    d.start()
    wait_for(lambda: not left.exists(), what="the leftover trash to be purged")
    assert Path(d.config_path).exists(), "a symlink in the trash was followed"
