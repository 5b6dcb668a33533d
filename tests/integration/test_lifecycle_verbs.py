"""Reopen, scheduled start, and the operator verbs (retry of done work, wait, assignees, context),
against a real daemon with real worker processes."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

from tests.harness import KANBAN, wait_for, write_script

SLOW_TICK = {"dispatch": {"tick": "30s"}}


def profiles(d, **scripts):
    """One shell script per profile (``#!/bin/sh`` + body), configured under that name."""
    d.cfg.setdefault("profiles", {})
    for name, body in scripts.items():
        path = write_script(f"{d.tmp}/{name}.sh", "#!/bin/sh\n" + body)
        d.cfg["profiles"][name] = {"command": [path]}
    d.write_config(d.cfg)


def events(d, task_id, kind=None):
    evs = d.rpc("events.since", {"task": task_id})["events"]
    return [e for e in evs if kind is None or e["kind"] == kind]


def runs(d, task_id):
    return d.rpc("task.runs", {"id": task_id})["runs"]


def hold_until(path: str) -> str:
    """Shell: wait (as a worker would, busy with its work) until the test creates ``path``."""
    return f'while [ ! -e "{path}" ]; do sleep 0.05; done\n'


# ---- §3 reopen ---------------------------------------------------------------------------


def test_reopen_runs_the_task_again_and_holds_back_its_dependents(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    out = f"{d.tmp}/out"
    os.mkdir(out)
    profiles(d,
             ok=f'kanban context > "{out}/ctx-$KANBAN_RUN.md"\n'
                f'if [ -e "{out}/ran-once" ]; then {hold_until(out + "/again").strip()}; fi\n'
                f'touch "{out}/ran-once"\n'
                'kanban complete --summary "made by $KANBAN_RUN" --result "r-$KANBAN_RUN"\n',
             hold=hold_until(f"{out}/release") + 'kanban complete --summary "held one done"\n')
    d.start()
    p = d.cli_json("create", "parent", "-a", "ok")["id"]
    ready_child = d.cli_json("create", "ready child", "-a", "nobody", "--parent", p)["id"]  # no profile: waits ready
    done_child = d.cli_json("create", "done child", "--parent", p)["id"]
    grandchild = d.cli_json("create", "grandchild", "--parent", done_child)["id"]
    running_child = d.cli_json("create", "running child", "-a", "hold", "--parent", p)["id"]
    first = d.wait_status(p, "done")
    assert d.wait_status(ready_child, "ready")
    d.cli("complete", done_child)
    d.cli("complete", grandchild)
    d.wait_status(running_child, "running")
    hold_run = d.task(running_child)["current_run"]

    res = d.cli_json("reopen", p, "--reason", "the build is red")
    assert res["tasks"][0]["status"] == "ready" and res["tasks"][0]["summary"] is None
    assert res["reparked"] == [ready_child]
    assert res["running"] == [running_child]
    assert sorted(res["flagged"]) == sorted([done_child, grandchild])
    assert res["reopened"] == []
    # the promoted child waits for its parent again; done descendants stay done, flagged
    assert d.task(ready_child)["status"] == "todo"
    for t in (done_child, grandchild):
        task = d.task(t)
        assert task["status"] == "done" and task["parent_reopened"] == p
        assert [e["payload"]["action"] for e in events(d, t, "parent_reopened")] == ["flagged"]
        assert f"parent {p} was reopened" in d.cli("show", t).stdout
    # the running child is left running (not killed), flagged, and told
    rc = d.task(running_child)
    assert rc["status"] == "running" and rc["current_run"] == hold_run and rc["parent_reopened"] == p
    assert events(d, running_child, "parent_reopened")[0]["payload"]["action"] == "left_running"
    assert not events(d, running_child, "killing")
    assert "FLAGGED" in d.cli("show", running_child).stdout
    reopened = events(d, p, "reopened")[0]["payload"]
    assert reopened["reason"] == "the build is red" and reopened["previous_summary"] == first["summary"]

    # it runs again (a fresh run that sees why it was sent back), and its child is promoted again
    d.wait_status(p, "running")
    assert d.task(ready_child)["status"] == "todo"
    Path(out, "again").touch()
    again = d.wait_status(p, "done")
    rs = runs(d, p)
    assert [r["outcome"] for r in rs] == ["completed", "completed"] and again["summary"] == f"made by {rs[1]['id']}"
    ctx = Path(out, f"ctx-{rs[1]['id']}.md").read_text()
    assert "reopened: the build is red" in ctx and first["summary"] in ctx
    assert d.wait_status(ready_child, "ready")
    Path(out, "release").touch()
    assert d.wait_status(running_child, "done")["parent_reopened"] is None  # a new completion clears the flag


def test_reopen_cascade_reopens_done_descendants(make_daemon):
    d = make_daemon(SLOW_TICK)
    p = d.cli_json("create", "p")["id"]
    c = d.cli_json("create", "c", "--parent", p)["id"]
    g = d.cli_json("create", "g", "--parent", c)["id"]
    for t in (p, c, g):
        d.cli("complete", t, "-m", f"sum {t}")
    res = d.cli_json("reopen", p, "-r", "wrong spec", "--cascade")
    assert res["reopened"] == [c, g] and res["flagged"] == []
    assert [d.task(t)["status"] for t in (p, c, g)] == ["ready", "todo", "todo"]
    for t in (c, g):
        ev = events(d, t, "reopened")[0]["payload"]
        assert ev["cascade_from"] == p and ev["reason"] == "wrong spec" and ev["previous_summary"] == f"sum {t}"
        assert d.task(t)["summary"] is None
    d.cli("complete", p)
    assert [d.task(t)["status"] for t in (c, g)] == ["ready", "todo"]
    human = d.cli("reopen", p, "-r", "again").stdout
    assert p in human and c in human and "back to todo" in human


def test_reopen_refusals(make_daemon):
    d = make_daemon(SLOW_TICK)
    t = d.cli_json("create", "t")["id"]
    err = d.cli("reopen", t, "-r", "x", check=False)
    assert err.returncode == 1 and "illegal_transition" in err.stderr and f"task {t} is ready; cannot reopen" in err.stderr
    d.cli("complete", t)
    d.cli("archive", t)
    err = d.cli("reopen", t, "-r", "x", check=False)
    assert err.returncode == 1 and f"task {t} is archived; cannot reopen it" in err.stderr
    assert len(err.stderr.strip().splitlines()) == 1
    err = d.rpc_error("task.reopen", {"ids": [t], "reason": "  "})
    assert err.name == "invalid_params" and err.error["data"]["field"] == "reason"
    usage = d.cli("reopen", t, check=False)
    assert usage.returncode == 2 and "--reason" in usage.stderr
    assert d.task(t)["status"] == "archived"


# ---- §4 scheduled start -------------------------------------------------------------------


def test_scheduled_in_one_second_starts_on_time_without_the_tick(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, ok='kanban complete --summary "ran"\n')
    d.start()
    d.cli("status")  # the first tick (at start) has passed; the next backstop tick is 30 s away
    t = d.cli_json("create", "later", "-a", "ok", "--in", "1s")
    assert t["status"] == "scheduled"
    due = t["due_at"]
    assert abs(due - (time.time() + 1)) < 1.0
    d.wait_status(t["id"], "done", timeout=10)
    claimed = events(d, t["id"], "claimed")[0]["at"]
    woke = events(d, t["id"], "due")[0]
    assert due <= woke["at"] <= claimed < due + 1.0, (due, woke["at"], claimed)
    assert woke["payload"]["status"] == "ready"


def test_schedule_an_existing_task_in_the_users_time_zone_plan_and_promote(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, ok='kanban complete\n')
    d.start()
    t = d.cli_json("create", "nightly", "-a", "ok", "--triage")["id"]
    # no offset: the caller's local time zone (here UTC+3, whatever the daemon's is)
    res = d.cli("schedule", t, "--at", "2030-06-01T12:00", "--json", env={"TZ": "XYZ-3"})
    want = datetime.datetime(2030, 6, 1, 9, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert json.loads(res.stdout)["due_at"] == want and json.loads(res.stdout)["status"] == "scheduled"
    # an explicit offset wins; rescheduling moves the time
    d.cli("schedule", t, "--at", "2030-06-01T12:00+02:00")
    assert d.task(t)["due_at"] == want + 3600
    d.cli("schedule", t, "--in", "2h")
    assert abs(d.task(t)["due_at"] - (time.time() + 7200)) < 5
    plan = d.cli_json("plan")
    assert [(x["task"], round(x["due_in"] / 60)) for x in plan["scheduled"]] == [(t, 120)]
    human = d.cli("plan").stdout
    assert "scheduled" in human and t in human and "in 2h" in human
    assert "due:" in d.cli("show", t).stdout
    assert all(e["kind"] != "claimed" for e in events(d, t))
    # promote starts it early and drops the due time
    d.cli("promote", t)
    done = d.wait_status(t, "done")
    assert done["due_at"] is None
    assert d.cli_json("plan")["scheduled"] == []


def test_scheduled_child_becomes_todo_while_its_parent_is_open(make_daemon):
    d = make_daemon()
    p = d.cli_json("create", "parent")["id"]
    c = d.cli_json("create", "child", "--parent", p, "--in", "0.3s")
    assert c["status"] == "scheduled"
    d.wait_status(c["id"], "todo")
    assert events(d, c["id"], "due")[0]["payload"]["status"] == "todo"
    d.cli("complete", p)
    d.wait_status(c["id"], "ready")


def test_bad_due_times_are_invalid_params_naming_the_value(make_daemon):
    d = make_daemon(SLOW_TICK)
    cases = [
        (["create", "x", "--at", "2001-01-01T00:00"], "2001-01-01", "in the past"),
        (["create", "x", "--at", "tomorrow-ish"], "'tomorrow-ish'", "ISO 8601"),
        (["create", "x", "--in", "45x"], "'45x'", "not a duration"),
        (["create", "x", "--in", "0s"], "'0s'", "more than zero"),
        (["create", "x", "--in", "1h", "--at", "2099-01-01"], "not both", "--at"),
        (["create", "x", "--in", "1h", "--triage"], "triage", "scheduled"),
    ]
    for argv, named, why in cases:
        res = d.cli(*argv, check=False)
        assert res.returncode == 1, argv
        assert "invalid_params" in res.stderr and named in res.stderr and why in res.stderr, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    assert d.rpc("task.list")["total"] == 0, "a refused create leaves nothing behind"
    t = d.cli_json("create", "x")["id"]
    res = d.cli("schedule", t, check=False)
    assert res.returncode == 1 and "invalid_params" in res.stderr and "--at" in res.stderr
    d.cli("complete", t)
    res = d.cli("schedule", t, "--in", "1h", check=False)
    assert res.returncode == 1 and f"task {t} is done; cannot schedule it" in res.stderr
    err = d.rpc_error("task.schedule", {"id": t, "at": "2001-01-01T00:00:00Z"})
    assert err.name == "invalid_params" and err.error["data"]["value"] == "2001-01-01T00:00:00Z"


# ---- §5 operator verbs ------------------------------------------------------------------------


def test_retry_of_a_done_task_is_a_fresh_run_with_the_reason_recorded(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    profiles(d, ok='kanban complete --summary "by $KANBAN_RUN"\n')
    d.start()
    t = d.cli_json("create", "flaky", "-a", "ok")["id"]
    d.wait_status(t, "done")
    res = d.cli_json("retry", t, "-r", "the result looked wrong")
    assert res["tasks"][0]["status"] in ("ready", "running")
    done = d.wait_status(t, "done")
    rs = runs(d, t)
    assert len(rs) == 2 and done["summary"] == f"by {rs[1]['id']}"
    ev = events(d, t, "retried")[0]["payload"]
    assert ev["reason"] == "the result looked wrong" and ev["previous"] == "done"


def test_wait_follows_events_until_every_task_is_final(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, finisher=hold_until(gate) + "kanban complete\n",
             blocker=hold_until(gate) + 'kanban block -r "cannot"\n')
    d.start()
    early = d.cli_json("create", "early")["id"]
    d.cli("complete", early)
    res = d.cli("wait", early)  # already final: returns at once
    assert res.returncode == 0 and f"{early}  done" in res.stdout
    a = d.cli_json("create", "a", "-a", "finisher")["id"]
    b = d.cli_json("create", "b", "-a", "blocker")["id"]
    d.wait_status(a, "running")
    d.wait_status(b, "running")
    res = d.cli("wait", a, "--timeout", "0.3s", check=False)
    assert res.returncode == 124 and f"{a}  running" in res.stdout and "timed out" in res.stderr
    both = subprocess.Popen([KANBAN, "wait", a, b], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=d.env())
    only_a = subprocess.Popen([KANBAN, "wait", a, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=d.env())
    try:
        # each has its answer (both tasks running) and now follows the event stream
        assert both.stderr.readline().startswith(f"kanban wait: waiting for {a} (running), {b} (running)")
        assert only_a.stderr.readline().startswith(f"kanban wait: waiting for {a} (running)")
        assert both.poll() is None and only_a.poll() is None
        Path(gate).touch()
        out, err = both.communicate(timeout=15)
        assert both.returncode == 1, err
        assert f"{a}  done" in out and f"{b}  blocked" in out
        js = json.loads(only_a.communicate(timeout=15)[0])
        assert only_a.returncode == 0 and js["all_done"] and js["tasks"][0]["status"] == "done"
    finally:
        for p in (both, only_a):
            if p.poll() is None:
                p.kill()
                p.wait()
    res = d.cli("wait", a, "t_00000000", check=False)
    assert res.returncode == 1 and "not_found" in res.stderr and "t_00000000" in res.stderr
    res = d.cli("wait", a, "--timeout", "soon", check=False)
    assert res.returncode == 1 and "invalid_params" in res.stderr and "'soon'" in res.stderr


def test_assignees_lists_every_profile_with_counts_cooldown_and_last_outcome(make_daemon):
    d = make_daemon({"dispatch": {"tick": "30s", "rate_limit_cooldown": "1h"}}, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, hold=hold_until(gate) + "kanban complete\n", limited="exit 75\n", ok="kanban complete\n")
    d.cfg["profiles"]["hold"]["max_in_progress"] = 1
    d.write_config(d.cfg)
    d.start()
    h1 = d.cli_json("create", "h1", "-a", "hold")["id"]
    d.wait_status(h1, "running")
    d.cli_json("create", "h2", "-a", "hold")
    lim = d.cli_json("create", "rl", "-a", "limited")["id"]
    wait_for(lambda: events(d, lim, "cooldown"), what="the profile's rate-limit cooldown")
    ok = d.cli_json("create", "fine", "-a", "ok")["id"]
    d.wait_status(ok, "done")
    d.cli_json("create", "orphan", "-a", "ghost")
    wait_for(lambda: d.rpc("task.runs", {"id": ok})["runs"][0]["state"] == "ended", what="ok's run to end")
    res = d.cli_json("assignees")
    by = {a["name"]: a for a in res["assignees"]}
    assert list(by) == ["hold", "limited", "ok", "ghost"]
    assert by["hold"]["running"] == 1 and by["hold"]["ready"] == 1 and by["hold"]["max_in_progress"] == 1
    assert by["hold"]["command"] == [f"{d.tmp}/hold.sh"] and by["hold"]["last_outcome"] is None
    assert by["limited"]["cooldown_until"] > time.time() + 3000 and by["limited"]["last_outcome"] == "rate_limited"
    assert by["limited"]["ready"] == 1 and by["limited"]["running"] == 0
    assert by["ok"]["last_outcome"] == "completed" and by["ok"]["last_task"] == ok and by["ok"]["cooldown_until"] is None
    assert by["ghost"]["configured"] is False and by["ghost"]["command"] is None and by["ghost"]["ready"] == 1
    assert res["running_total"] == 1
    human = d.cli("assignees").stdout
    assert "RUNNING/CAP" in human and "1/1" in human and "rate_limited" in human and "in 60m" in human
    assert "no profile" in human
    Path(gate).touch()


def test_context_gives_a_child_worker_its_parents_results_in_one_call(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    out = f"{d.tmp}/out"
    os.mkdir(out)
    profiles(
        d,
        producer='kanban complete -m "schema drafted" --result "tables: a, b" --metadata \'{"rows": 42}\'\n',
        consumer=f'if [ ! -e "{out}/crashed-once" ]; then touch "{out}/crashed-once"; '
                 'echo "boom: missing table c" >&2; exit 3; fi\n'
                 f'kanban context > "{out}/context.md" && kanban context --json > "{out}/context.json" '
                 '&& kanban complete -m "consumed"\n')
    d.start()
    p1 = d.cli_json("create", "draft the schema", "-a", "producer")["id"]
    p2 = d.cli_json("create", "pick a name")["id"]
    d.cli("complete", p2, "-m", "named it", "--result", "kanbanzilla")
    child = d.cli_json("create", "build on both", "-a", "consumer", "-b", "Use the schema and the name.",
                       "--parent", p1, "--parent", p2)["id"]
    d.cli("comment", child, "prefer the fast path\nand keep it short", "--author", "alice")
    d.wait_status(child, "done", timeout=20)
    md = Path(out, "context.md").read_text()
    for needle in (f"# Task {child}: build on both", "Use the schema and the name.",
                   f"### {p1}: draft the schema (done)", "Summary: schema drafted", "tables: a, b", '"rows": 42',
                   f"### {p2}: pick a name (done)", "kanbanzilla", "## Earlier runs", "**crashed** (exit 3",
                   "boom: missing table c", "**alice**", "prefer the fast path", "  and keep it short"):
        assert needle in md, f"{needle!r} not in the context:\n{md}"
    js = json.loads(Path(out, "context.json").read_text())
    rs = runs(d, child)
    assert js["current_run"] == rs[1]["id"] and [r["id"] for r in js["runs"]] == [rs[0]["id"]]
    by = {p["id"]: p for p in js["parents"]}
    assert by[p1]["metadata"] == {"rows": 42} and by[p1]["result"] == "tables: a, b"
    assert by[p2]["metadata"] is None and by[p2]["summary"] == "named it"
    assert js["attachments"] == [] and js["comments"][0]["author"] == "alice"
    # an operator names the task; without one (outside a worker) it is a one-line error
    assert d.cli("context", child).stdout.startswith(f"# Task {child}")
    res = d.cli("context", check=False)
    assert res.returncode == 1 and "invalid_params" in res.stderr and "no task id" in res.stderr


def test_wait_rides_out_a_daemon_restart(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    gate = f"{d.tmp}/gate"
    profiles(d, finisher=hold_until(gate) + "kanban complete\n")
    d.start()
    t = d.cli_json("create", "long", "-a", "finisher")["id"]
    d.wait_status(t, "running")
    waiter = subprocess.Popen([KANBAN, "wait", t], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=d.env())
    try:
        assert waiter.stderr.readline().startswith(f"kanban wait: waiting for {t} (running)")
        assert d.stop() == 0  # on_shutdown: leave; the worker survives and is re-adopted
        d.start()
        assert waiter.poll() is None
        Path(gate).touch()
        out, err = waiter.communicate(timeout=20)
        assert waiter.returncode == 0, err
        assert f"{t}  done" in out and "retrying" in err
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
