"""No acknowledged work lost across a daemon restart: worker retries, request de-duplication, resuming streams.

Everything runs against the real kanband: real workers call the real ``kanban`` client while the
daemon is stopped and started again, and duplicate requests go through the raw socket.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.harness import KANBAN, relay_command, wait_for, write_script

RETRY_LINE = "kanban: daemon not reachable at {socket}; retrying for up to 120s"


def _profile(d, name: str, body: str) -> None:
    path = write_script(f"{d.tmp}/{name}.sh", "#!/bin/sh\n" + body)
    d.cfg.setdefault("profiles", {})[name] = {"command": [path]}
    d.write_config(d.cfg)


def _runs(d, task_id: str) -> list[dict]:
    return d.rpc("task.runs", {"id": task_id})["runs"]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def test_worker_complete_rides_out_a_daemon_restart_longer_than_the_connect_retry(make_daemon):
    d = make_daemon(start=False)
    gate, pidf, errf, rcf = (f"{d.tmp}/{n}" for n in ("gate", "kanban.pid", "kanban.err", "kanban.rc"))
    _profile(d, "patient", f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
                           f"kanban complete --summary 'finished during a restart' 2> {errf} &\n"
                           f"echo $! > {pidf}\n"
                           f"wait $!\n"
                           f"echo $? > {rcf}\n")
    d.start()
    t = d.cli_json("create", "finish while the daemon restarts", "-a", "patient", "--max-retries", "1")
    d.wait_status(t["id"], "running")
    wait_for(lambda: _runs(d, t["id"])[0]["state"] == "running", what="the worker's exec reported")

    d.stop()  # dispatch.on_shutdown defaults to leave: the worker keeps running
    Path(gate).touch()
    kanban = psutil.Process(int(wait_for(lambda: _read(pidf).strip(), what="the worker's kanban pid")))
    wait_for(lambda: RETRY_LINE.format(socket=d.socket) in _read(errf), what="the retry notice")
    # longer than the ~2 s an operator's verb retries: the old client had given up (exit 1) by now
    wait_for(lambda: not _alive(kanban) or time.time() - kanban.create_time() > 3.0, what="3 s of retrying")
    assert _alive(kanban), f"kanban complete gave up while the daemon was down: {_read(errf)!r}"
    assert not _read(rcf)

    d.start()
    done = d.wait_status(t["id"], "done", timeout=20)
    assert done["summary"] == "finished during a restart"
    wait_for(lambda: _read(rcf).strip(), what="the worker's kanban to exit")
    assert _read(rcf).strip() == "0"
    (run,) = wait_for(lambda: (rs := _runs(d, t["id"]))[0]["state"] == "ended" and rs, what="the run to end")
    assert run["outcome"] == "completed"
    assert _read(errf).splitlines() == [RETRY_LINE.format(socket=d.socket)]


def _frame(rid: int, method: str, params: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode() + b"\n"


def test_a_repeated_request_id_is_applied_once_and_answered_like_the_first_time(make_daemon):
    d = make_daemon(start=False)
    # the worker relays our frames: they come from a process of the run, as the worker's own would
    argv, relay = relay_command(d.tmp)
    d.cfg.setdefault("profiles", {})["idle"] = {"command": argv}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "dedupe", "-a", "idle")
    d.wait_status(t["id"], "running")
    run = _runs(d, t["id"])[0]["id"]
    relay = relay.replace("$KANBAN_RUN", run)
    wait_for(lambda: os.path.exists(relay), what="the worker's relay socket")
    raw = functools.partial(d.raw, path=relay)

    def comments() -> list[str]:
        return [c["body"] for c in d.rpc("task.show", {"id": t["id"]})["comments"]]

    note = {"id": t["id"], "body": "said once", "run": run, "request_id": "rq-comment"}
    (first,) = raw(_frame(1, "task.comment", note))
    (again,) = raw(_frame(2, "task.comment", note))
    assert "result" in first and again == {**first, "id": 2}
    assert comments() == ["said once"]

    # both copies in one batch (one transaction): the second sees the first's memory
    twice = {"id": t["id"], "body": "batched", "run": run, "request_id": "rq-batch"}
    a, b = raw(_frame(3, "task.comment", twice) + _frame(4, "task.comment", twice), expect_lines=2)
    assert a["result"] == b["result"] and comments() == ["said once", "batched"]

    # without a run token the key is the request id alone
    plain = {"id": t["id"], "body": "operator note", "request_id": "rq-operator"}  # from this test: an operator
    assert d.rpc("task.comment", plain) == d.rpc("task.comment", plain)
    assert comments() == ["said once", "batched", "operator note"]

    # the same id under another method is refused, and names the field
    (misuse,) = raw(_frame(5, "task.heartbeat", {"id": t["id"], "run": run, "request_id": "rq-comment"}))
    assert misuse["error"]["data"]["name"] == "invalid_params"
    assert misuse["error"]["data"]["field"] == "request_id"

    done = {"ids": [t["id"]], "summary": "once", "run": run, "request_id": "rq-complete"}
    (c1,) = raw(_frame(6, "task.complete", done))
    assert c1["result"]["tasks"][0]["status"] == "done"
    # the answer is durable: a worker whose answer was lost in a restart gets it from the next daemon
    d.stop()
    d.start()  # the worker survives the restart (on_shutdown: leave); its relay reconnects per connection
    (c2,) = raw(_frame(7, "task.complete", done))
    assert c2 == {**c1, "id": 7}
    # the memory is what answers: the same complete under a fresh id is refused as stale
    (c3,) = raw(_frame(8, "task.complete", {**done, "request_id": "rq-fresh"}))
    assert c3["error"]["data"]["name"] == "stale_token"
    assert [e["kind"] for e in d.rpc("events.since", {"task": t["id"]})["events"]].count("completed") == 1

    os.kill(_runs(d, t["id"])[0]["worker_pid"], 15)  # done, the worker may go
    (r,) = wait_for(lambda: (rs := _runs(d, t["id"]))[0]["state"] == "ended" and rs, what="the run to end")
    assert r["outcome"] == "completed"


def _ids(path: str) -> list[int]:
    return [json.loads(line)["id"] for line in _read(path).splitlines() if line.strip()]


def _all_events(d, task: str | None = None) -> list[int]:
    params = {"task": task} if task else {}
    return [e["id"] for e in d.rpc("events.since", params)["events"]]


def test_watch_and_tail_resume_after_a_restart_with_no_gap_and_no_repeat(make_daemon):
    d = make_daemon()
    t = d.rpc("task.create", {"title": "tailed"})
    outs = {name: (f"{d.tmp}/{name}.out", f"{d.tmp}/{name}.err") for name in ("watch", "tail")}
    argv = {"watch": ["watch", "--after", "0", "--json"], "tail": ["tail", t["id"], "--json"]}
    procs = {}
    for name, (out, err) in outs.items():
        with open(out, "w") as fo, open(err, "w") as fe:
            procs[name] = subprocess.Popen([KANBAN, *argv[name]], stdout=fo, stderr=fe, env=d.env(), cwd=d.tmp)
    try:
        def caught_up() -> bool:
            return (_ids(outs["watch"][0]) == _all_events(d)
                    and _ids(outs["tail"][0]) == _all_events(d, t["id"]))

        for i in range(3):
            d.rpc("task.comment", {"id": t["id"], "body": f"before {i}"})
            d.rpc("task.create", {"title": f"before {i}"})
        wait_for(caught_up, what="both streams to print the first events")

        d.stop()
        for name in procs:
            wait_for(lambda: RETRY_LINE.format(socket=d.socket) in _read(outs[name][1]), what=f"{name} to retry")
            assert procs[name].poll() is None
        d.start()
        # written while the streams are still backing off: they must be replayed, not skipped
        for i in range(3):
            d.rpc("task.comment", {"id": t["id"], "body": f"after {i}"})
            d.rpc("task.create", {"title": f"after {i}"})
        wait_for(caught_up, what="both streams to resume")
        d.rpc("task.comment", {"id": t["id"], "body": "live again"})  # and live events after the replay
        wait_for(caught_up, what="a live event after the resume")

        watched, tailed = _ids(outs["watch"][0]), _ids(outs["tail"][0])
        assert watched == _all_events(d) and len(watched) == len(set(watched)) >= 14
        assert tailed == _all_events(d, t["id"]) and len(tailed) == 9  # created, skipped_unassigned, 7 comments
        for name in procs:
            assert _read(outs[name][1]).count("retrying") == 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    assert [p.returncode for p in procs.values()] == [0, 0]


def test_a_worker_verb_gives_up_after_kanban_retry_for(make_daemon):
    d = make_daemon()
    d.stop()
    env = {"KANBAN_RUN": "r_000000", "KANBAN_TASK": "t_00000000", "KANBAN_RETRY_FOR": "1.5"}
    started = time.monotonic()
    res = d.cli("heartbeat", check=False, env=env)
    took = time.monotonic() - started
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0] == f"kanban: daemon not reachable at {d.socket}; retrying for up to 1.5s"
    assert "gave up after retrying for 1.5s" in lines[1] and len(lines) == 2
    assert 1.4 < took < 10
    # an operator's verb keeps the short connect retry and says nothing about retrying
    res = d.cli("stats", check=False)
    assert res.returncode == 1 and "retrying" not in res.stderr and "not running" in res.stderr
    bad = d.cli("heartbeat", check=False, env={**env, "KANBAN_RETRY_FOR": "soon"})
    assert bad.returncode == 2 and "KANBAN_RETRY_FOR" in bad.stderr and "'soon'" in bad.stderr


def test_tail_exits_when_its_task_is_done_unless_follow(make_daemon):
    d = make_daemon()
    t = d.rpc("task.create", {"title": "tailed to the end", "triage": True})["id"]
    plain = subprocess.Popen([KANBAN, "tail", t, "--json"], stdout=subprocess.PIPE, env=d.env(), cwd=d.tmp)
    follow = subprocess.Popen([KANBAN, "tail", t, "--follow", "--json"], stdout=subprocess.PIPE, env=d.env(),
                              cwd=d.tmp)
    try:
        # no need to wait for the tails to attach: each replays from the task's last events (no gap)
        d.rpc("task.comment", {"id": t, "body": "first"})
        d.rpc("task.complete", {"ids": [t]})
        assert plain.wait(10) == 0
        kinds = [json.loads(line)["kind"] for line in plain.stdout.read().decode().splitlines()]
        assert kinds[-1] == "completed" and "commented" in kinds
        d.rpc("task.comment", {"id": t, "body": "after done"})
        assert follow.poll() is None, "--follow must keep going after the task is done"
    finally:
        for p in (plain, follow):
            if p.poll() is None:
                p.kill()
            p.wait()
    # a task that is already done: the last events, then exit at once
    done = subprocess.run([KANBAN, "tail", t], capture_output=True, text=True, env=d.env(), timeout=10)
    assert done.returncode == 0 and "completed" in done.stdout
