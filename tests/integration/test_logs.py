"""Logs you can follow: run separators, ``log --lines/--run/-f`` across rotations and runs,
``runs`` with times, live elapsed, exit or signal and the error tail, ``events --since/--kind``.

Workers here are gated by marker files the test creates (``<ctl>/<task>.goN``), so every
step happens when the test says, never after a sleep.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from tests.harness import FAST, KANBAN, Daemon, merge, wait_for, write_script

#: Attempt N prints a line, waits for ``.goN``, prints another, then fails (``.failN``),
#: blocks (``.blockN``) or completes. ``.bigN`` makes it print 300 numbered lines first.
STEPS = r"""#!/bin/sh
c="{ctl}/$KANBAN_TASK"
n=$(cat "$c.attempt" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$c.attempt"
echo "attempt $n line 1"
if [ -e "$c.big$n" ]; then i=0; while [ $i -lt 300 ]; do echo "big $n $i ................................"; i=$((i + 1)); done; fi
touch "$c.waiting$n"
while [ ! -e "$c.go$n" ]; do sleep 0.02; done
echo "attempt $n line 2"
if [ -e "$c.fail$n" ]; then echo "attempt $n failing" >&2; exit 3; fi
if [ -e "$c.block$n" ]; then kanban block "blocked on attempt $n" > /dev/null; exit 0; fi
kanban complete --summary "attempt $n done" > /dev/null
"""


def make(config: dict | None = None) -> Daemon:
    dm = Daemon(merge(FAST, config or {}))
    ctl = f"{dm.tmp}/ctl"
    os.makedirs(ctl)
    steps = write_script(f"{dm.tmp}/steps.sh", STEPS.replace("{ctl}", ctl))
    dm.cfg["profiles"] = {"steps": {"command": [steps]},
                          "nosuch": {"command": [f"{dm.tmp}/no-such-worker"]},
                          "nowhere": {"command": ["/bin/true"], "workspace": "dir:/proc/version/cannot-be-a-dir"}}
    dm.write_config(dm.cfg)
    dm.ctl = ctl
    return dm


@pytest.fixture(scope="module")
def d():
    dm = make()
    try:
        dm.start()
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


def js(d, *args, **kw):
    res = d.cli(*args, "--json", **kw)
    assert res.stderr == "", res.stderr
    return json.loads(res.stdout)


def mark(d, tid: str, name: str) -> None:
    open(f"{d.ctl}/{tid}.{name}", "w").close()


def new_task(d, *markers: str, title: str = "steps") -> str:
    """A task whose markers exist before it can run (so the first attempt sees them)."""
    tid = js(d, "create", title, "--triage", "-a", "steps")["id"]
    for m in markers:
        mark(d, tid, m)
    js(d, "promote", tid)
    return tid


def log_lines(d, tid: str, *args: str) -> list[str]:
    return d.cli("log", tid, *args).stdout.splitlines()


class Follower:
    """``kanban log ... -f`` running in the background; its stdout collected line by line."""

    def __init__(self, d, *args: str) -> None:
        self.proc = subprocess.Popen([KANBAN, "log", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=d.env(), cwd=d.tmp)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: any(text in ln for ln in self.lines), timeout, what=f"{text!r} from the follower "
                 f"(so far: {self.lines[-5:]})")

    def finish(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        self.thread.join(5)
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def run_ids(d, tid: str) -> list[str]:
    return [r["id"] for r in js(d, "runs", tid)["runs"]]


# ---- separators, --lines, --run -----------------------------------------------------------------


def test_log_has_a_separator_at_each_run_start_and_end(d):
    tid = new_task(d, "go1", "fail1", "go2")
    d.wait_status(tid, "done")
    r1, r2 = run_ids(d, tid)
    lines = log_lines(d, tid)
    assert lines[0].startswith(f"===== run {r1} started ") and lines[0].endswith("(profile steps) =====")
    body = [ln for ln in lines if not ln.startswith("===== ")]
    assert body == ["attempt 1 line 1", "attempt 1 line 2", "attempt 1 failing", "attempt 2 line 1",
                    "attempt 2 line 2"]
    seps = [ln for ln in lines if ln.startswith("===== ")]
    assert len(seps) == 4
    assert seps[1].startswith(f"===== run {r1} ended ") and ": crashed, exit 3, after " in seps[1]
    assert seps[2].startswith(f"===== run {r2} started ")
    assert seps[3].startswith(f"===== run {r2} ended ") and ": completed, exit 0, after " in seps[3]
    assert lines.index(seps[1]) < lines.index("attempt 2 line 1") < lines.index(seps[3]) == len(lines) - 1


def test_log_lines_and_run(d):
    tid = new_task(d, "go1", "fail1", "go2")
    d.wait_status(tid, "done")
    r1, r2 = run_ids(d, tid)
    everything = log_lines(d, tid)
    assert log_lines(d, tid, "--lines", "3") == everything[-3:]
    assert log_lines(d, tid, "-n", "1") == everything[-1:]
    assert log_lines(d, tid, "--lines", "500") == everything
    assert d.cli("log", tid, "--lines", "0").stdout.strip() == ""
    first = log_lines(d, tid, "--run", r1)
    assert first[0].startswith(f"===== run {r1} started") and first[-1].startswith(f"===== run {r1} ended")
    assert first[1:-1] == ["attempt 1 line 1", "attempt 1 line 2", "attempt 1 failing"]
    second = log_lines(d, tid, "--run", r2)
    assert second[1:-1] == ["attempt 2 line 1", "attempt 2 line 2"] and second[-1].startswith(f"===== run {r2} ended")
    assert js(d, "log", tid, "--run", r1)["text"].count("\n") == 5
    res = d.cli("log", tid, "--run", "r_000000000000", check=False)
    assert res.returncode == 1 and "not_found" in res.stderr and "r_000000000000" in res.stderr
    other = new_task(d, "go1")
    d.wait_status(other, "done")
    res = d.cli("log", other, "--run", r1, check=False)
    assert res.returncode == 1 and f"run {r1} is not a run of task {other}" in res.stderr
    res = d.cli("log", "t_00000000", "-f", check=False)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1 and "t_00000000" in res.stderr
    res = d.cli("log", tid, "--run", r1, "--lines", "2", check=False)
    assert res.returncode == 1 and "at most one of tail, lines and run" in res.stderr


def test_spawn_failures_in_the_log(d):
    tid = js(d, "create", "cannot start", "-a", "nosuch", "--max-retries", "1")["id"]
    d.wait_status(tid, "blocked")
    (run,) = run_ids(d, tid)
    lines = log_lines(d, tid)
    assert lines[0].startswith(f"===== run {run} started")
    assert lines[-1].startswith(f"===== run {run} ended") and ": spawn_failed, cannot start " in lines[-1]
    # no workspace, so no log at all: --run says the run is not there
    tid = js(d, "create", "no workspace", "-a", "nowhere", "--max-retries", "1")["id"]
    d.wait_status(tid, "blocked")
    (run,) = run_ids(d, tid)
    assert js(d, "runs", tid)["runs"][0]["outcome"] == "spawn_failed"
    res = d.cli("log", tid, "--run", run)
    assert res.stdout.strip() == f"run {run} is not in the log (rotated away, or it never started)"
    assert js(d, "log", tid, "--run", run)["missing"] is True
    assert d.cli("log", tid).stdout.startswith("no log yet at ")


# ---- runs -------------------------------------------------------------------------------------------


def test_runs_show_times_outcome_exit_and_the_error_tail(d):
    tid = new_task(d, "go1", "fail1", "go2")
    d.wait_status(tid, "done")
    r1, r2 = run_ids(d, tid)
    out = d.cli("runs", tid).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "STARTED", "ENDED", "ELAPSED", "OUTCOME", "EXIT", "SUMMARY"]
    row1 = lines[1].split()
    assert row1[0] == r1 and ":" in row1[1] and ":" in row1[2] and row1[3].endswith("s")
    assert row1[4:6] == ["crashed", "3"]
    assert lines[2:5] == ["    | attempt 1 line 1", "    | attempt 1 line 2", "    | attempt 1 failing"], \
        "the end of its log, under the failed run, separator lines left out"
    row2 = next(ln for ln in lines if ln.startswith(r2)).split()
    assert row2[4:6] == ["completed", "0"] and " ".join(row2[6:]) == "attempt 2 done"
    assert "None" not in out
    show = d.cli("show", tid).stdout
    assert "exit=None" not in show and "None" not in show and "exit 3" in show


def test_runs_of_a_live_run_and_a_signalled_one(d):
    tid = new_task(d)
    wait_for(lambda: os.path.exists(f"{d.ctl}/{tid}.waiting1"), what="the worker to wait")
    out = d.cli("runs", tid).stdout
    row = out.splitlines()[1].split()
    assert row[2] == "-" and row[4] == "live" and row[5] == "running" and row[6] == "-", out
    js(d, "kill", tid, "--block", "enough")
    wait_for(lambda: js(d, "runs", tid)["runs"][0]["state"] == "ended", what="the run to end")
    run = js(d, "runs", tid)["runs"][0]
    out = d.cli("runs", tid).stdout
    assert run["exit_code"] is None and run["signal"] == 15
    assert "SIGTERM" in out.splitlines()[1] and "None" not in out


# ---- -f ---------------------------------------------------------------------------------------------


def test_follow_across_runs_until_done(d):
    tid = new_task(d)
    f = Follower(d, tid, "-f")
    fj = Follower(d, tid, "--follow", "--json")
    try:
        f.wait_line("attempt 1 line 1")
        mark(d, tid, "fail1")
        mark(d, tid, "go1")
        f.wait_line("attempt 2 line 1")
        assert f.proc.poll() is None, "still following: the task was requeued, not finished"
        mark(d, tid, "go2")
        assert f.finish() == 0, f.stderr
        assert fj.finish() == 0, fj.stderr
    finally:
        f.stop()
        fj.stop()
    r1, r2 = run_ids(d, tid)
    assert f.lines == log_lines(d, tid), "every line once, in order, separators included"
    assert f.lines[-1].startswith(f"===== run {r2} ended") and "completed" in f.lines[-1]
    chunks = [json.loads(ln) for ln in fj.lines]
    assert "".join(c["text"] for c in chunks).splitlines() == f.lines
    assert chunks[-1]["status"] == "done" and chunks[-1]["live"] is False


def test_follow_stops_when_the_task_is_blocked_and_run_when_its_run_ends(d):
    tid = new_task(d, "fail1", "block2")
    wait_for(lambda: os.path.exists(f"{d.ctl}/{tid}.waiting1"), what="the first attempt to wait")
    r1 = js(d, "show", tid)["task"]["current_run"]
    whole = Follower(d, tid, "-f")
    one = Follower(d, tid, "-f", "--run", r1)
    try:
        one.wait_line("attempt 1 line 1")
        assert one.lines[0].startswith(f"===== run {r1} started"), "--run starts at its run's separator"
        mark(d, tid, "go1")
        assert one.finish() == 0, one.stderr
        assert one.lines[-1].startswith(f"===== run {r1} ended") and "crashed" in one.lines[-1]
        whole.wait_line("attempt 2 line 1")
        assert whole.proc.poll() is None
        mark(d, tid, "go2")
        assert whole.finish() == 0, whole.stderr
    finally:
        whole.stop()
        one.stop()
    assert d.task(tid)["status"] == "blocked"
    assert whole.lines[-1].startswith("===== run ") and "blocked" in whole.lines[-1]
    # a finished task: -f prints the last lines and returns at once
    res = d.cli("log", tid, "-f", "--lines", "2", timeout=20)
    assert res.stdout.splitlines() == log_lines(d, tid)[-2:]


def test_follow_across_a_rotation():
    dm = make({"logs": {"worker_log_max": "4KiB"}})
    try:
        dm.start()
        tid = new_task(dm, "big1")
        f = Follower(dm, tid, "-f", "--lines", "100000")
        log = os.path.join(dm.state, "logs", f"{tid}.log")
        try:
            f.wait_line("big 1 299")
            before = js(dm, "log", tid, "--lines", "1")
            wait_for(lambda: os.path.exists(log + ".1"), timeout=20, what="the reaper to rotate the log")
            assert os.path.getsize(log) < 4096
            # a cursor taken before the rotation continues across it: nothing lost, nothing repeated
            after = dm.rpc("task.log", {"id": tid, "offset": before["offset"], "rotation": before["rotation"]})
            assert after["text"] == "" and after["rotation"] != before["rotation"] and after["gap"] is False
            assert log_lines(dm, tid, "--lines", "3")[-1] == "big 1 299 ................................", \
                "--lines reaches into the rotated log"
            mark(dm, tid, "go1")
            assert f.finish() == 0, f.stderr
        finally:
            f.stop()
        body = [ln for ln in f.lines if not ln.startswith("=====")]
        assert body == ["attempt 1 line 1", *[f"big 1 {i} ................................" for i in range(300)],
                        "attempt 1 line 2"]
        assert f.lines[-1].startswith("===== run ") and "completed" in f.lines[-1]
    finally:
        dm.cleanup()


def test_task_log_cursor_reads_across_a_rotation_exactly(tmp_path):
    """The daemon's reads, on a log rotated by the same code the reaper runs."""
    from daemon import worklog
    path = str(tmp_path / "t.log")
    with open(path, "w") as f:
        f.write("one\ntwo\n")
    first = worklog.read_tail(path, lines=1)
    assert first["text"] == "two\n" and first["offset"] == 8 and first["rotation"] == ""
    with open(path, "a") as f:
        f.write("three\n")
    assert worklog.rotate(path, 4)
    with open(path, "a") as f:
        f.write("four\n")
    nxt = worklog.read_follow(path, first["offset"], first["rotation"])
    assert nxt["text"] == "three\nfour\n" and nxt["gap"] is False and nxt["rotation"] != ""
    assert worklog.read_follow(path, nxt["offset"], nxt["rotation"])["text"] == ""
    with open(path, "ab") as f:
        f.write("é".encode()[:1])  # half a character: left for the next read
    half = worklog.read_follow(path, nxt["offset"], nxt["rotation"])
    assert half["text"] == "" and half["offset"] == nxt["offset"]
    with open(path, "ab") as f:
        f.write("é".encode()[1:] + b"\n")
    assert worklog.read_follow(path, half["offset"], half["rotation"])["text"] == "é\n"


# ---- events --since / --kind -----------------------------------------------------------------------


def test_events_since_and_kind(d):
    tid = new_task(d, "go1")
    d.wait_status(tid, "done")
    kinds = [e["kind"] for e in js(d, "events", "--task", tid)["events"]]
    assert {"created", "claimed", "started", "completed", "exited"} <= set(kinds)
    only = js(d, "events", "--task", tid, "--kind", "completed")["events"]
    assert [e["kind"] for e in only] == ["completed"]
    two = js(d, "events", "--task", tid, "--kind", "claimed,exited")["events"]
    assert [e["kind"] for e in two] == ["claimed", "exited"]
    assert [e["kind"] for e in js(d, "events", "--task", tid, "--kinds", "claimed", "--kind", "exited")["events"]] \
        == ["claimed", "exited"]
    assert [e["kind"] for e in d.rpc("events.since", {"task": tid, "kinds": ["started"]})["events"]] == ["started"]
    human = d.cli("events", "--task", tid, "--kind", "completed").stdout.splitlines()
    assert len(human) == 1 and " completed " in human[0]
    every = js(d, "events", "--task", tid)["events"]
    assert js(d, "events", "--task", tid, "--since", "1h")["events"] == every
    cut = every[-1]["at"]
    assert [e["id"] for e in js(d, "events", "--task", tid, "--since", f"@{cut!r}")["events"]] == \
        [e["id"] for e in every if e["at"] >= cut]
    assert js(d, "events", "--since", "2999-01-01")["events"] == []
    assert d.cli("events", "--since", "2999-01-01").stdout.strip() == "no events"
    paged = d.cli("events", "--all", "-n", "2", "--kind", "created", "--json").stdout.splitlines()
    assert paged and all(json.loads(ln)["kind"] == "created" for ln in paged)
    res = d.cli("events", "--since", "whenever", check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1
    assert d.rpc_error("events.since", {"since": "nope"}).error["data"]["field"] == "since"


def test_events_since_finds_its_start_by_time_on_a_long_log(d):
    start = time.time()
    wait_for(lambda: time.time() > start)
    fresh = [js(d, "create", f"late {i}")["id"] for i in range(3)]
    got = d.rpc("events.since", {"since": f"@{start!r}", "kinds": ["created"]})["events"]
    assert [e["task_id"] for e in got] == fresh
