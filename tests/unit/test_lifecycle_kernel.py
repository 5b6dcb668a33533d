"""Kernel of reopen, scheduled start, assignees and context, against a real SQLite board.

No mocks: a real board in ``tmp_path``, each mutation in its own ``BEGIN IMMEDIATE``
transaction as the dispatcher does, the clock injected.
"""

from __future__ import annotations

import datetime
import json
import os
import time

import pytest

from client import context as context_md
from client import cli
from client.protocol import RPCError
from daemon import config as config_mod
from daemon.board import context, db, plan, reopen, runs, schedule, tasks

NOW = 1_700_000_000.0


@pytest.fixture
def conn(tmp_path):
    c = db.connect(tmp_path / "board.db")
    yield c
    c.close()


def w(conn, fn, *args, **kw):
    with db.write(conn):
        return fn(conn, *args, **kw)


def mk(conn, title="t", **kw):
    return w(conn, tasks.create, NOW, title=title, **kw)[0]["id"]


def st(conn, task_id):
    return tasks.get(conn, task_id)["status"]


def kinds(conn, task_id):
    return [r[0] for r in conn.execute("SELECT kind FROM events WHERE task_id=? ORDER BY id", (task_id,))]


def cfg(**profiles):
    c = config_mod.defaults()
    c["_set"] = set()
    c["profiles"] = {n: {**{k: f.default for k, f in config_mod.PROFILE.items()}, **p} for n, p in profiles.items()}
    return c


# ---- due times ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [("45m", 2700), ("2h", 7200), ("1d", 86400), ("90", 90), ("90s", 90),
                                          ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("1w", 604800)])
def test_parse_in(text, seconds):
    assert schedule.parse_in(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "45x", "m", "-5m", "0", "0s", "1h 30", "soon"])
def test_parse_in_refuses_naming_the_value(text):
    with pytest.raises(RPCError) as ei:
        schedule.parse_in(text)
    assert ei.value.name == "invalid_params" and ei.value.data["field"] == "in" and repr(text) in ei.value.message


def test_parse_at_forms_and_local_time_zone(monkeypatch):
    utc = datetime.datetime(2030, 6, 1, 9, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert schedule.parse_at("2030-06-01T09:00Z") == utc
    assert schedule.parse_at("2030-06-01T12:00:00+03:00") == utc
    assert schedule.parse_at("2030-06-01 09:00+00:00") == utc
    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    try:
        assert schedule.parse_at("2030-06-01T12:00") == utc  # no offset: local time
        assert schedule.parse_at("2030-06-01") == utc - 12 * 3600  # local midnight
        # the client turns a naive --at into the caller's local time before sending it
        assert schedule.parse_at(cli.local_time("2030-06-01T12:00")) == utc
        assert cli.local_time("2030-06-01T12:00+01:00") == "2030-06-01T12:00+01:00"
        assert cli.local_time("not a time") == "not a time"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_due_time_refuses_the_past_both_and_garbage():
    assert schedule.due_time(NOW) is None
    assert schedule.due_time(NOW, delay="1m") == NOW + 60
    for kw, field, needle in (({"at": "2001-01-01T00:00Z"}, "at", "in the past"),
                              ({"at": "yesterday"}, "at", "'yesterday'"),
                              ({"at": "2099-01-01", "delay": "1m"}, "at", "not both")):
        with pytest.raises(RPCError) as ei:
            schedule.due_time(NOW, **kw)
        assert ei.value.name == "invalid_params" and ei.value.data["field"] == field and needle in ei.value.message


def test_schedule_wake_and_next_wake(conn):
    t = mk(conn, due_at=NOW + 60)
    assert st(conn, t) == "scheduled"
    assert plan.next_wake(conn, NOW) == NOW + 60
    assert schedule.listing(conn, NOW)[0] == {"task": t, "title": "t", "assignee": None, "priority": 0,
                                              "due_at": NOW + 60, "due_in": 60}
    assert not schedule.any_due(conn, NOW + 59) and w(conn, schedule.wake_due, NOW + 59) == []
    assert w(conn, schedule.wake_due, NOW + 60.5) == [t]
    row = tasks.get(conn, t)
    assert row["status"] == "ready" and row["due_at"] is None and row["ready_at"] == NOW + 60.5
    assert kinds(conn, t)[-1] == "due" and plan.next_wake(conn, NOW) is None


def test_leaving_scheduled_by_any_move_drops_the_due_time(conn):
    a, b = mk(conn, "a"), mk(conn, "b")
    w(conn, schedule.schedule, NOW, a, NOW + 100)
    w(conn, schedule.schedule, NOW, b, NOW + 100)
    w(conn, tasks.promote, NOW, a)
    w(conn, tasks.block, NOW, [b], "hold on")
    assert [(st(conn, x), tasks.get(conn, x)["due_at"]) for x in (a, b)] == [("ready", None), ("blocked", None)]
    with pytest.raises(RPCError) as ei:
        w(conn, schedule.schedule, NOW, b, NOW + 100)
    assert ei.value.name == "illegal_transition" and "blocked" in ei.value.message


def test_create_refuses_triage_and_a_due_time(conn):
    with pytest.raises(RPCError) as ei:
        mk(conn, triage=True, due_at=NOW + 5)
    assert ei.value.name == "invalid_params"


# ---- reopen ---------------------------------------------------------------------------------------


def start_run(conn, task_id, now=NOW + 1, profile="prof"):
    run = w(conn, runs.claim, now, task_id, profile, 900.0, None)
    w(conn, runs.started, now, run["id"], 4242, now, 4243)
    return run["id"]


def test_reopen_diamond_and_effects(conn):
    p = mk(conn, "p")
    w(conn, tasks.complete, NOW, [p], "first")
    ready = mk(conn, "ready child", parents=[p])
    running = mk(conn, "running child", parents=[p])
    run = start_run(conn, running)
    c1, c2 = mk(conn, "c1", parents=[p]), mk(conn, "c2", parents=[p])
    w(conn, tasks.complete, NOW, [c1, c2])
    g = mk(conn, "g", parents=[c1, c2])  # a diamond: flagged once, reopened once
    w(conn, tasks.complete, NOW, [g])
    blocked = mk(conn, "blocked", parents=[p])
    w(conn, tasks.block, NOW, [blocked], "no")
    res = w(conn, reopen.reopen, NOW + 5, [p], "bad")
    assert (res["reparked"], res["running"], res["flagged"]) == ([ready], [running], sorted([c1, c2, g]))
    assert kinds(conn, g).count("parent_reopened") == 1
    assert st(conn, blocked) == "blocked" and tasks.get(conn, running)["current_run"] == run
    assert tasks.get(conn, p)["consecutive_failures"] == 0 and tasks.get(conn, p)["summary"] is None
    # the flagged running child cannot complete while its parent is open (conflict, as for any child)
    with pytest.raises(RPCError) as ei:
        w(conn, tasks.complete, NOW + 6, [running], run=run)
    assert ei.value.name == "conflict"
    w(conn, tasks.complete, NOW + 7, [p])
    res = w(conn, reopen.reopen, NOW + 8, [p], "again", cascade=True)
    assert sorted(res["reopened"]) == sorted([c1, c2, g]) and res["flagged"] == []
    assert kinds(conn, g).count("reopened") == 1 and st(conn, g) == "todo"
    assert tasks.get(conn, g)["parent_reopened"] is None


def test_reopen_needs_done_and_a_reason(conn):
    t = mk(conn)
    with pytest.raises(RPCError) as ei:
        w(conn, reopen.reopen, NOW, [t], "x")
    assert ei.value.name == "illegal_transition" and ei.value.data == {"task": t, "status": "ready", "move": "reopen"}
    w(conn, tasks.complete, NOW, [t])
    with pytest.raises(RPCError) as ei:
        w(conn, reopen.reopen, NOW, [t], " ")
    assert ei.value.data["field"] == "reason"
    w(conn, tasks.archive, NOW, [t])
    with pytest.raises(RPCError) as ei:
        w(conn, reopen.reopen, NOW, [t], "x")
    assert ei.value.name == "illegal_transition" and ei.value.data["status"] == "archived"


def test_retry_of_a_done_task_holds_back_its_ready_children(conn):
    p = mk(conn)
    w(conn, tasks.complete, NOW, [p])
    c = mk(conn, parents=[p])
    res = w(conn, tasks.retry, NOW, [p], "again")
    assert res["tasks"][0]["status"] == "ready" and res["reparked"] == [c] and st(conn, c) == "todo"
    assert kinds(conn, p).count("retried") == 1


# ---- assignees and context ------------------------------------------------------------------------


def test_assignees_counts(conn):
    c = cfg(a={"command": ["x"], "max_in_progress": 2}, b={"command": ["y"]})
    c["dispatch"]["default_assignee"] = "a"
    mk(conn, assignee="a")
    mk(conn)
    t = mk(conn, assignee="b")
    run = start_run(conn, t, profile="b")
    mk(conn, assignee="ghost")
    res = plan.assignees(conn, NOW, c)
    by = {x["name"]: x for x in res["assignees"]}
    assert list(by) == ["a", "b", "ghost"]
    assert (by["a"]["ready"], by["a"]["ready_unassigned"], by["a"]["running"]) == (1, 1, 0)
    assert (by["b"]["running"], by["b"]["ready"], by["b"]["ready_unassigned"]) == (1, 0, None)
    assert res["running_total"] == 1 and by["ghost"]["configured"] is False and by["ghost"]["ready"] == 1
    assert by["b"]["last_outcome"] is None
    w(conn, runs.set_profile_cooldown, NOW, "a", NOW + 50, "exit 75 from run r_x")
    w(conn, runs.exited, NOW + 3, c, run, exit_code=3, signal=None)
    by = {x["name"]: x for x in plan.assignees(conn, NOW + 4, c)["assignees"]}
    assert (by["b"]["last_outcome"], by["b"]["last_run"], by["b"]["running"]) == ("crashed", run, 0)
    assert (by["a"]["cooldown_until"], by["a"]["cooldown_reason"]) == (NOW + 50, "exit 75 from run r_x")
    assert plan.assignees(conn, NOW + 60, c)["assignees"][0]["cooldown_until"] is None


def test_context_build_and_markdown(conn):
    p = mk(conn, "parent")
    prun = start_run(conn, p)
    w(conn, tasks.complete, NOW + 2, [p], "sum", "res", {"k": [1, 2]}, run=prun)
    c = mk(conn, "child", body="do ```this```", parents=[p])
    w(conn, tasks.comment, NOW + 3, c, "looks off", author="bob")
    data = context.build(conn, c)
    assert data["parents"] == [{"id": p, "title": "parent", "status": "done", "summary": "sum", "result": "res",
                                "metadata": {"k": [1, 2]}, "run": prun}]
    assert data["current_run"] is None and data["runs"] == [] and data["attachments"] == []
    md = context_md.render_markdown(data)
    assert md.startswith(f"# Task {c}: child\n") and "do ```this```" in md and '"k": [' in md
    assert "**bob**" in md and "looks off" in md
    json.dumps(data)  # the wire form
    assert os.linesep == "\n" and md.endswith("\n")
