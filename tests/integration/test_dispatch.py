"""Dispatcher, spawner and reaper against real worker processes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil

from tests.harness import wait_for, write_script

SLOW_TICK = {"dispatch": {"tick": "30s"}}


def profiles(d, **scripts):
    """Write one shell script per profile and configure it; returns {name: path}."""
    out = {}
    d.cfg.setdefault("profiles", {})
    for name, body in scripts.items():
        path = write_script(f"{d.tmp}/{name}.sh", "#!/bin/sh\n" + body)
        d.cfg["profiles"][name] = {"command": [path]}
        out[name] = path
    d.write_config(d.cfg)
    return out


def runs(d, task_id):
    return d.rpc("task.runs", {"id": task_id})["runs"]


def events(d, task_id, kind=None):
    evs = d.rpc("events.since", {"task": task_id})["events"]
    return [e for e in evs if kind is None or e["kind"] == kind]


def test_worker_environment_cwd_session_and_log(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, envw='env | grep ^KANBAN_ | sort > "$KANBAN_WORKSPACE/../env-$KANBAN_TASK"\n'
                    'pwd > "$KANBAN_WORKSPACE/../cwd-$KANBAN_TASK"\n'
                    'ps -o pid=,pgid=,sid= -p $$ > "$KANBAN_WORKSPACE/../ids-$KANBAN_TASK"\n'
                    'readlink /proc/$$/fd/0 > "$KANBAN_WORKSPACE/../stdin-$KANBAN_TASK"\n'
                    'echo "to stdout"; echo "to stderr" >&2\n'
                    'kanban complete --summary "env ok" >/dev/null\n')
    d.cfg["profiles"]["envw"]["env"] = {"MODEL": "fast"}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "env check", "--assignee", "envw")
    done = d.wait_status(t["id"], "done")
    assert done["summary"] == "env ok"
    root = Path(d.state) / "workspaces"
    env = dict(line.split("=", 1) for line in (root / f"env-{t['id']}").read_text().split())
    assert env["KANBAN_TASK"] == t["id"]
    assert env["KANBAN_RUN"] == runs(d, t["id"])[0]["id"]
    assert env["KANBAN_SOCKET"] == d.socket
    assert env["KANBAN_WORKSPACE"] == str(root / t["id"])
    assert env["KANBAN_BOARD"] == str(Path(d.state) / "board.db")
    assert (root / f"cwd-{t['id']}").read_text().strip() == str(root / t["id"])
    pid, pgid, sid = map(int, (root / f"ids-{t['id']}").read_text().split())
    assert sid == pgid != os.getsid(d.pid), "worker must run in its own session / process group"
    assert (root / f"stdin-{t['id']}").read_text().strip() == "/dev/null"
    log = d.cli("log", t["id"]).stdout
    assert "to stdout" in log and "to stderr" in log
    # the run's part of the log is framed by separator lines (daemon/worklog.py); its last output line
    lines = [ln for ln in d.cli("log", t["id"]).stdout.splitlines() if not ln.startswith("===== run ")]
    assert lines[-1] == "to stderr"
    # the scratch workspace is removed once the task is done and its worker has exited
    wait_for(lambda: not (root / t["id"]).exists(), what="scratch workspace removal")
    assert d.cli_json("show", t["id"])["task"]["workspace"]["kind"] == "scratch"


def test_profile_env_and_placeholders(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    path = write_script(f"{d.tmp}/args.sh", '#!/bin/sh\necho "args: $1 | $2 | MODEL=$MODEL"\nkanban complete\n')
    d.cfg["profiles"] = {"p": {"command": [path, "{task_id}", "{title}"], "env": {"MODEL": "fast"}}}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "my title", "-a", "p")
    d.wait_status(t["id"], "done")
    assert f"args: {t['id']} | my title | MODEL=fast" in d.cli("log", t["id"]).stdout


def test_crash_retry_then_gave_up_with_limit_source(make_daemon):
    d = make_daemon({"dispatch": {"failure_limit": 2}}, start=False)
    profiles(d, crasher='echo "something broke badly"\nexit 3\n')
    d.start()
    t = d.cli_json("create", "crashy", "-a", "crasher")
    blocked = d.wait_status(t["id"], "blocked")
    rs = runs(d, t["id"])
    assert [r["outcome"] for r in rs] == ["crashed", "crashed"]
    assert rs[0]["exit_code"] == 3
    assert "exit code 3" in rs[0]["error"] and "something broke badly" in rs[0]["error"]
    assert blocked["consecutive_failures"] == 2
    gave = events(d, t["id"], "gave_up")
    assert len(gave) == 1 and gave[0]["payload"]["limit"] == 2 and gave[0]["payload"]["source"] == "config"
    # the per-task max_retries wins over the config, and the block is sticky until unblock
    t2 = d.cli_json("create", "crashy 3", "-a", "crasher", "--max-retries", "3")
    d.wait_status(t2["id"], "blocked")
    assert len(runs(d, t2["id"])) == 3
    assert events(d, t2["id"], "gave_up")[0]["payload"]["source"] == "task"
    # unblock resets the counter and the task runs again
    d.cli("unblock", t["id"])
    wait_for(lambda: len(runs(d, t["id"])) == 4 and d.task(t["id"])["status"] == "blocked", what="re-run")


def test_default_limit_source_and_runs_cli(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, crasher="exit 1\n")
    d.start()
    t = d.cli_json("create", "x", "-a", "crasher")
    d.wait_status(t["id"], "blocked")
    gave = events(d, t["id"], "gave_up")[0]["payload"]
    assert gave == {**gave, "limit": 2, "source": "default", "failures": 2}
    # `kanban runs` lists both attempts
    out = d.cli("runs", t["id"]).stdout
    assert out.count("crashed") == 2 and "RUN" in out and "OUTCOME" in out
    js = d.cli_json("runs", t["id"])["runs"]
    assert [r["exit_code"] for r in js] == [1, 1] and all(r["duration"] is not None for r in js)


def test_rate_limited_requeued_not_counted_cooldown_respected(make_daemon):
    d = make_daemon({"dispatch": {"rate_limit_cooldown": "1.5s", "tick": "0.2s", "rate_limit_scope": "task"}},
                    start=False)
    marker = f"{d.tmp}/limited-once"
    profiles(d, api=f'if [ ! -e {marker} ]; then touch {marker}; echo "429 slow down"; exit 75; fi\n'
                    'kanban complete --summary "second try"\n')
    d.start()
    t = d.cli_json("create", "call the api", "-a", "api")
    done = d.wait_status(t["id"], "done")
    rs = runs(d, t["id"])
    assert [r["outcome"] for r in rs] == ["rate_limited", "completed"]
    assert done["consecutive_failures"] == 0
    gap = rs[1]["claimed_at"] - rs[0]["ended_at"]
    assert gap >= 1.4, f"respawned {gap:.2f}s after the rate limit; cooldown is 1.5s"
    req = events(d, t["id"], "requeued")[0]["payload"]
    assert req["outcome"] == "rate_limited" and req["failures"] == 0 and req["cooldown_until"]


def test_exit_zero_without_completing_is_protocol_violation(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, lazy="echo forgot to complete\nexit 0\n")
    d.start()
    t = d.cli_json("create", "lazy", "-a", "lazy", "--max-retries", "1")
    d.wait_status(t["id"], "blocked")
    assert [r["outcome"] for r in runs(d, t["id"])] == ["protocol_violation"]


def test_overrun_ignoring_sigterm_is_killed_and_timed_out(make_daemon):
    d = make_daemon({"dispatch": {"kill_grace": "0.5s"}}, start=False)
    path = write_script(f"{d.tmp}/stubborn.py",
                        "#!/usr/bin/env python3\nimport signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "print('ignoring TERM', flush=True)\nwhile True:\n    signal.pause()\n")
    d.cfg["profiles"] = {"stubborn": {"command": [path], "max_runtime": "1s"}}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "forever", "-a", "stubborn", "--max-retries", "1")
    d.wait_status(t["id"], "blocked", timeout=20)
    (r,) = runs(d, t["id"])
    assert r["outcome"] == "timed_out"
    assert r["signal"] == 9
    assert 1.0 <= r["duration"] < 10
    kinds = [e["kind"] for e in events(d, t["id"])]
    assert "timed_out" in kinds and "gave_up" in kinds
    # the per-task max_runtime overrides the profile's
    t2 = d.cli_json("create", "short", "-a", "stubborn", "--max-retries", "1", "--max-runtime", "300ms")
    d.wait_status(t2["id"], "blocked", timeout=20)
    assert runs(d, t2["id"])[0]["duration"] < 1.0 + 0.5 + 3


def test_spawn_failed_counts_as_failure(make_daemon):
    d = make_daemon({"profiles": {"ghost": {"command": ["/nonexistent/agent-cli", "{task_id}"]}}})
    t = d.cli_json("create", "ghost", "-a", "ghost")
    d.wait_status(t["id"], "blocked")
    rs = runs(d, t["id"])
    assert [r["outcome"] for r in rs] == ["spawn_failed", "spawn_failed"]
    assert "/nonexistent/agent-cli" in rs[0]["error"]


def test_stale_token_refused(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    gate = f"{d.tmp}/go"
    profiles(d, waiter=f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
                       'kanban complete --summary "late"; echo "complete rc=$?"\n')
    d.start()
    t = d.cli_json("create", "w", "-a", "waiter")
    d.wait_status(t["id"], "running")
    run1 = wait_for(lambda: runs(d, t["id"]), what="run")[0]["id"]
    err = d.rpc_error("task.complete", {"ids": [t["id"]], "run": "r_000000000000"})
    assert err.name == "stale_token" and "r_000000000000" in str(err)
    assert d.rpc_error("task.heartbeat", {"id": t["id"], "run": "r_000000000000"}).name == "stale_token"
    # the live token copied into another process (this test) is refused: only the run's own processes hold it
    err = d.rpc_error("task.heartbeat", {"id": t["id"], "run": run1, "note": "halfway"})
    assert err.name == "permission_denied" and run1 in str(err)
    # an operator blocks the task: the worker is fenced out and stopped; unblock starts a new run
    d.cli("block", t["id"], "--reason", "operator says stop")
    wait_for(lambda: runs(d, t["id"])[0]["state"] == "ended", what="fenced run to end")
    assert runs(d, t["id"])[0]["outcome"] == "cancelled"
    res = d.cli("complete", t["id"], check=False, env={"KANBAN_RUN": run1, "KANBAN_TASK": t["id"]})
    assert res.returncode == 1 and "stale_token" in res.stderr
    Path(gate).touch()
    d.cli("unblock", t["id"])
    d.wait_status(t["id"], "done")
    rs = runs(d, t["id"])
    assert [r["outcome"] for r in rs] == ["cancelled", "completed"] and rs[1]["id"] != run1


def test_caps_respected_under_burst(make_daemon):
    d = make_daemon({"dispatch": {"max_in_progress": 4}}, start=False)
    rec = f"{d.tmp}/rec"
    body = (f'echo "start $KANBAN_PROFILE $(date +%s.%N)" >> {rec}\nsleep 0.15\n'
            f'echo "end $KANBAN_PROFILE $(date +%s.%N)" >> {rec}\nkanban complete\n')
    profiles(d, a=body, b=body)
    d.cfg["profiles"]["a"]["max_in_progress"] = 2
    d.cfg["profiles"]["b"]["max_in_progress"] = 3
    d.write_config(d.cfg)
    d.start()
    ids = [d.rpc("task.create", {"title": f"t{i}", "assignee": "ab"[i % 2]})["id"] for i in range(50)]
    wait_for(lambda: d.rpc("board.stats")["by_status"]["done"] == 50, timeout=90, what="50 tasks done")
    timeline = []
    for line in Path(rec).read_text().splitlines():
        kind, prof, ts = line.split()
        timeline.append((float(ts), 0 if kind == "end" else 1, prof))
    timeline.sort()
    cur = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0, "all": 0}
    for _, up, prof in timeline:
        cur[prof] += 1 if up else -1
        peak[prof] = max(peak[prof], cur[prof])
        peak["all"] = max(peak["all"], cur["a"] + cur["b"])
    assert peak["a"] <= 2 and peak["b"] <= 3 and peak["all"] <= 4, peak
    assert peak["all"] >= 3, f"caps were never used: {peak}"
    for task_id in ids[:5]:
        assert [r["outcome"] for r in runs(d, task_id)] == ["completed"]


def test_priority_then_age_order_and_event_driven_dispatch(make_daemon):
    d = make_daemon({"dispatch": {"max_in_progress": 1, "tick": "60s"}}, start=False)
    order = f"{d.tmp}/order"
    profiles(d, one=f'echo "$KANBAN_TASK" >> {order}\nkanban complete\n')
    d.start()
    gate = d.rpc("task.create", {"title": "gate", "triage": True})
    low = d.rpc("task.create", {"title": "low", "assignee": "one", "parents": [gate["id"]]})
    high = d.rpc("task.create", {"title": "high", "assignee": "one", "priority": 5, "parents": [gate["id"]]})
    old = d.rpc("task.create", {"title": "old", "assignee": "one", "parents": [gate["id"]]})
    assert {d.task(x["id"])["status"] for x in (low, high, old)} == {"todo"}
    t0 = time.monotonic()
    d.cli("complete", gate["id"])  # promotes all three at once; no tick needed (tick is 60 s)
    wait_for(lambda: Path(order).exists() and len(Path(order).read_text().split()) == 3, timeout=15,
             what="three runs")
    assert time.monotonic() - t0 < 30, "dispatch waited for the tick"
    assert Path(order).read_text().split() == [high["id"], low["id"], old["id"]]


def test_no_profile_skipped_once_default_assignee_and_plan(make_daemon):
    d = make_daemon({"dispatch": {"tick": "0.2s", "default_assignee": "dflt"}}, start=False)
    profiles(d, dflt="kanban complete --summary by-default\n")
    d.start()
    orphan = d.cli_json("create", "nobody runs me", "-a", "no-such-profile")
    wait_for(lambda: events(d, orphan["id"], "skipped_no_profile"), what="skip event")
    # several ticks later there is still exactly one skip event
    tick_mark = d.rpc("events.since", {})["last_id"]
    d.rpc("task.create", {"title": "marker", "triage": True})
    wait_for(lambda: d.rpc("daemon.status")["uptime"] > 1.5, what="a few ticks")
    assert len(events(d, orphan["id"], "skipped_no_profile")) == 1 and tick_mark > 0
    plan = {p["task"]: p for p in d.cli_json("plan")["plan"]}
    assert plan[orphan["id"]]["decision"] == "skip" and "no profile" in plan[orphan["id"]]["reason"]
    un = d.cli_json("create", "unassigned")
    done = d.wait_status(un["id"], "done")
    assert done["assignee"] == "dflt" and done["summary"] == "by-default"
    assigned = events(d, un["id"], "assigned")[0]["payload"]
    assert assigned["source"] == "default_assignee" and assigned["assignee"] == "dflt"
    dry = d.cli_json("dispatch", "--dry-run")
    assert dry["dry_run"] is True and dry["started"] == []


def test_plan_explains_caps_and_cooldown(make_daemon):
    d = make_daemon({"dispatch": {"max_in_progress": 1, "tick": "60s"}}, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, w=f"while [ ! -e {gate} ]; do sleep 0.05; done\nkanban complete\n")
    d.start()
    first = d.cli_json("create", "first", "-a", "w")
    d.wait_status(first["id"], "running")
    second = d.cli_json("create", "second", "-a", "w")
    plan = {p["task"]: p for p in d.cli_json("plan")["plan"]}
    assert plan[second["id"]]["decision"] == "wait" and "global cap" in plan[second["id"]]["reason"]
    human = d.cli("plan").stdout
    assert second["id"] in human and "global cap reached (1/1)" in human
    Path(gate).touch()
    d.wait_status(second["id"], "done")


def test_stale_heartbeat_is_reclaimed_and_heartbeat_extends(make_daemon):
    d = make_daemon({"dispatch": {"claim_ttl": "0.6s", "heartbeat_max_stale": "1.2s", "tick": "0.2s",
                                  "kill_grace": "0.5s"}}, start=False)
    profiles(d, silent="sleep 30\n",
             chatty='for i in 1 2 3 4 5 6 7 8 9 10; do kanban heartbeat --note "step $i" >/dev/null; sleep 0.3; done\n'
                    'kanban complete --summary chatty\n')
    d.start()
    s = d.cli_json("create", "silent", "-a", "silent", "--max-retries", "1")
    c = d.cli_json("create", "chatty", "-a", "chatty")
    d.wait_status(s["id"], "blocked", timeout=20)
    (r,) = runs(d, s["id"])
    assert r["outcome"] == "stale" and r["kill_reason"] == "stale"
    d.wait_status(c["id"], "done", timeout=30)
    rc = runs(d, c["id"])
    assert [x["outcome"] for x in rc] == ["completed"]
    assert rc[0]["heartbeat_note"] == "step 10"
    assert events(d, c["id"], "heartbeat")


def test_dir_workspace_never_deleted_and_relative_rejected(make_daemon, tmp_path):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, w='pwd > here.txt\nkanban complete\n')
    d.start()
    res = d.cli("create", "bad ws", "--workspace", "dir:relative/path", check=False)
    assert res.returncode == 1 and "absolute" in res.stderr and "workspace" in res.stderr
    t = d.cli_json("create", "dir ws", "-a", "w", "--workspace", f"dir:{tmp_path}")
    d.wait_status(t["id"], "done")
    d.cli("archive", t["id"])
    assert (tmp_path / "here.txt").read_text().strip() == str(tmp_path)
    wait_for(lambda: d.rpc("events.since", {"task": t["id"]})["events"][-1]["kind"] == "archived", what="archive")
    assert tmp_path.is_dir() and (tmp_path / "here.txt").exists()


def test_worktree_workspace(make_daemon, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git[:3] + ["init", "-q", "-b", "main"], check=True)
    (repo / "README").write_text("hi\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    d = make_daemon({"workspaces": {"repo": str(repo)}, **SLOW_TICK}, start=False)
    profiles(d, wt='git rev-parse --abbrev-ref HEAD > "$KANBAN_WORKSPACE/../branch-$KANBAN_TASK"\n'
                   'test -f README && kanban complete\n')
    d.start()
    t = d.cli_json("create", "in a worktree", "-a", "wt", "--workspace", "worktree")
    d.wait_status(t["id"], "done")
    root = Path(d.state) / "workspaces"
    assert (root / f"branch-{t['id']}").read_text().strip() == f"wt/{t['id']}"
    wait_for(lambda: not (root / t["id"]).exists(), what="clean worktree removal")
    wl = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert t["id"] not in wl


def _start_records(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in Path(path).read_text().splitlines():
        kind, task, run = line.split()[:3]
        out.setdefault(task, []).append((kind, run))
    return out


def test_daemon_sigkill_with_running_workers_then_restart(make_daemon):
    d = make_daemon({"dispatch": {"max_in_progress": 8, "crash_grace": "0.5s"}}, start=False)
    gate, rec = f"{d.tmp}/gate", f"{d.tmp}/rec"
    profiles(d, hold=f'echo "start $KANBAN_TASK $KANBAN_RUN" >> {rec}\n'
                     f'while [ ! -e {gate} ]; do sleep 0.05; done\n'
                     f'echo "end $KANBAN_TASK $KANBAN_RUN" >> {rec}\n'
                     'case "$KANBAN_TASK" in *) ;; esac\n'
                     f'if [ -e {d.tmp}/fail-$KANBAN_TASK ]; then exit 4; fi\n'
                     'kanban complete --summary survived\n')
    d.start()
    ids = [d.rpc("task.create", {"title": f"w{i}", "assignee": "hold"})["id"] for i in range(4)]
    wait_for(lambda: len(_start_records(rec)) == 4, what="4 workers running")
    workers = {}
    for r in d.rpc("task.list", {"status": ["running"]})["tasks"]:
        run = runs(d, r["id"])[0]
        workers[r["id"]] = run
    assert len(workers) == 4 and all(w["pid"] for w in workers.values())
    role_pids = list(d.role_pids().values())
    d.kill9()
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in role_pids),
             timeout=5, what="roles to exit after the supervisor died")
    assert all(psutil.pid_exists(w["pid"]) for w in workers.values()), "workers must survive the daemon"
    # one worker will crash while the daemon is down: its status must still be classified
    Path(f"{d.tmp}/fail-{ids[0]}").touch()
    Path(gate).touch()
    wait_for(lambda: not psutil.pid_exists(workers[ids[0]]["pid"]) or
             psutil.Process(workers[ids[0]]["pid"]).status() == "zombie", what="crash while down")
    d.start()
    for task_id in ids[1:]:
        d.wait_status(task_id, "done", timeout=20)
    # the worker that crashed while the daemon was down is classified from its .exit file and retried
    d.wait_status(ids[0], "blocked", timeout=20)
    r0 = runs(d, ids[0])
    assert [x["outcome"] for x in r0] == ["crashed", "crashed"] and r0[0]["exit_code"] == 4
    recs = _start_records(rec)
    for task_id in ids[1:]:
        rs = runs(d, task_id)
        assert [x["outcome"] for x in rs] == ["completed"], rs
        assert [k for k, _ in recs[task_id]] == ["start", "end"], "ran twice"
    assert d.rpc("task.list", {"status": ["running"]})["total"] == 0
    # a run ends once its worker has exited, a moment after its `kanban complete` made the task done
    wait_for(lambda: not [r for t in ids for r in runs(d, t) if r["state"] != "ended"], what="every run ended")
    for w in workers.values():  # every original wrapper is gone and reaped (we are their subreaper)
        wait_for(lambda: not psutil.pid_exists(w["pid"]) or _reaped(w["pid"]), what=f"wrapper {w['pid']} reaped")
    assert not [c for c in psutil.Process(d.pid).children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]


def _reaped(pid):
    from tests.harness import reap_orphans
    reap_orphans()
    return not psutil.pid_exists(pid)


def test_worker_finished_while_down_exit_status_from_file(make_daemon):
    d = make_daemon({"dispatch": {"crash_grace": "0.5s"}}, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, quick=f"while [ ! -e {gate} ]; do sleep 0.05; done\nexit 0\n")
    d.start()
    t = d.cli_json("create", "finishes while down", "-a", "quick", "--max-retries", "1")
    d.wait_status(t["id"], "running")
    wait_for(lambda: runs(d, t["id"])[0]["pid"], what="pid recorded")
    d.stop()  # on_shutdown: leave -> the worker keeps running
    Path(gate).touch()
    exit_files = Path(d.state, "runs")
    wait_for(lambda: list(exit_files.glob("*.exit")), what="exit file written by the wrapper")
    d.start()
    d.wait_status(t["id"], "blocked")
    (r,) = runs(d, t["id"])
    assert r["outcome"] == "protocol_violation" and r["exit_code"] == 0
    wait_for(lambda: not list(exit_files.glob("*.exit")), what="exit file removed after ack")


def test_on_shutdown_kill_interrupts_and_requeues(make_daemon):
    d = make_daemon({"dispatch": {"on_shutdown": "kill", "kill_grace": "0.5s"}}, start=False)
    profiles(d, sleeper="sleep 60\n")
    d.start()
    t = d.cli_json("create", "long", "-a", "sleeper")
    d.wait_status(t["id"], "running")
    pid = wait_for(lambda: runs(d, t["id"])[0]["pid"], what="pid")
    assert d.stop() == 0
    assert not psutil.pid_exists(pid) or _reaped(pid)
    d.start()
    rs = runs(d, t["id"])
    assert rs[0]["outcome"] == "interrupted"
    assert d.task(t["id"])["consecutive_failures"] == 0


def test_on_shutdown_drain_waits_for_workers(make_daemon):
    d = make_daemon({"dispatch": {"on_shutdown": "drain", "max_in_progress": 1}}, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, w=f"while [ ! -e {gate} ]; do sleep 0.05; done\nkanban complete --summary drained\n")
    d.start()
    t = d.cli_json("create", "finish me", "-a", "w")
    queued = d.cli_json("create", "must not start during drain", "-a", "w")
    d.wait_status(t["id"], "running")
    d.proc.send_signal(15)
    wait_for(lambda: d.notify.count("STOPPING=1"), what="STOPPING=1")
    Path(gate).touch()
    assert d.proc.wait(20) == 0
    d.start()
    assert d.task(t["id"])["status"] == "done" and d.task(t["id"])["summary"] == "drained"
    assert len(runs(d, queued["id"])) <= 1
    assert runs(d, queued["id"]) == [] or runs(d, queued["id"])[0]["claimed_at"] > runs(d, t["id"])[0]["ended_at"]


def test_killed_wrapper_takes_its_worker_down_no_double_run(make_daemon):
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    rec, gate = f"{d.tmp}/rec", f"{d.tmp}/gate"
    profiles(d, hold=f'echo "start $KANBAN_RUN $$" >> {rec}\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n'
                     f'echo "end $KANBAN_RUN $$" >> {rec}\nkanban complete\n')
    d.start()
    t = d.cli_json("create", "victim", "-a", "hold")
    first = wait_for(lambda: (r := runs(d, t["id"])) and r[0]["worker_pid"] and r[0], what="first run started")
    os.kill(first["pid"], 9)  # the wrapper dies without recording the worker's end
    wait_for(lambda: len(runs(d, t["id"])) == 2, what="a second run")
    assert not psutil.pid_exists(first["worker_pid"]) or _reaped(first["worker_pid"]), \
        "the first worker must be gone before the task runs again"
    Path(gate).touch()
    d.wait_status(t["id"], "done")
    lines = Path(rec).read_text().split("\n")
    assert not any(line.startswith(f"end {first['id']}") for line in lines), "the first worker kept running"
    assert [r["outcome"] for r in runs(d, t["id"])] == ["crashed", "completed"]
    assert runs(d, t["id"])[0]["signal"] == 9


def test_reaper_restart_readopts_running_workers(make_daemon):
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, hold=f"while [ ! -e {gate} ]; do sleep 0.05; done\nkanban complete --summary adopted\n")
    d.start()
    ids = [d.cli_json("create", f"t{i}", "-a", "hold")["id"] for i in range(3)]
    wait_for(lambda: all(runs(d, i) and runs(d, i)[0]["pid"] for i in ids), what="three workers")
    old = d.role_pids()["reaper"]
    os.kill(old, 9)
    wait_for(lambda: (p := d.role_pids().get("reaper")) and p != old and
             any(e.get("event") == "reaper.attached" and e.get("pid") == p for e in d.log_events()),
             what="a new reaper attached")
    Path(gate).touch()
    for i in ids:
        done = d.wait_status(i, "done")
        assert done["summary"] == "adopted"
        assert [r["outcome"] for r in runs(d, i)] == ["completed"]
    adopted = [e for e in d.log_events() if e.get("event") == "worker.adopted"]
    assert len(adopted) == 3


def test_unassigned_without_default_is_noted_once(make_daemon):
    d = make_daemon({"dispatch": {"tick": "0.2s"}})
    un = d.cli_json("create", "nobody's")
    wait_for(lambda: events(d, un["id"], "skipped_unassigned"), what="skipped_unassigned")
    d.rpc("task.create", {"title": "another write", "triage": True})
    wait_for(lambda: d.rpc("daemon.status")["uptime"] > 1.5, what="a few ticks")
    assert len(events(d, un["id"], "skipped_unassigned")) == 1
    # assigning it (to a profile that does not exist) resets the note: the next skip is reported again
    d.cli("assign", un["id"], "ghost")
    wait_for(lambda: events(d, un["id"], "skipped_no_profile"), what="skipped_no_profile after assign")


def test_run_start_time_is_the_workers_exec_to_the_millisecond(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, quick="kanban complete --summary quick\n")
    d.start()
    t = d.cli_json("create", "quick", "-a", "quick")
    d.wait_status(t["id"], "done")
    (r,) = wait_for(lambda: (rs := runs(d, t["id"]))[0]["state"] == "ended" and rs, what="run ended")
    assert r["claimed_at"] <= r["started_at"] <= r["ended_at"]
    assert r["duration"] < 0.8, f"a run of one kanban call shows {r['duration']:.3f}s"
