"""Every mutating verb against a task in every status, through the real CLI and daemon.

The answer is always either success with the documented effect, or a named error: the
transition table (``illegal_transition`` naming task, status and move; ``conflict`` for an
open parent) or a verb guard (``transitions.VERB_GUARDS``). Never ``internal_error``, never a
silent no-op.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from daemon.board import transitions
from tests.harness import FAST, Daemon, merge, write_script

NO_RUN = "r_000000000000"


@pytest.fixture(scope="module")
def d():
    dm = Daemon(merge(FAST, {"dispatch": {"tick": "30s", "max_in_progress": 64}}))
    try:
        hold = write_script(f"{dm.tmp}/hold.sh", "#!/bin/sh\nexec sleep 600\n")
        dm.cfg["profiles"] = {"hold": {"command": [hold]}}
        dm.cfg["sinks"] = {"s": {"type": "command", "command": ["true"]}}
        dm.write_config(dm.cfg)
        dm.start()
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


def rpc(d, method, **params):
    return d.rpc(method, params)


def make(d, status: str) -> dict:
    """A task X in ``status``, with a done parent P, a child C, and (for todo) an open parent Q."""
    p = rpc(d, "task.create", title="done parent")["id"]
    rpc(d, "task.complete", ids=[p])
    ids = {"P": p}
    extra = {}
    if status == "triage":
        extra["triage"] = True
    if status == "todo":
        ids["Q"] = rpc(d, "task.create", title="open parent")["id"]
    if status == "running":
        extra["assignee"] = "hold"
    x = rpc(d, "task.create", title=f"x in {status}", parents=[p, *([ids["Q"]] if "Q" in ids else [])],
            **extra)["id"]
    ids["X"] = x
    if status == "running":
        d.wait_status(x, "running")
    elif status == "blocked":
        rpc(d, "task.block", ids=[x], reason="held")
    elif status in ("review", "scheduled"):
        # No operation moves a task into these reserved statuses yet; put it there directly.
        with sqlite3.connect(Path(d.state) / "board.db", timeout=10) as db:
            db.execute("UPDATE tasks SET status=? WHERE id=?", (status, x))
    elif status == "done":
        rpc(d, "task.complete", ids=[x])
    elif status == "archived":
        rpc(d, "task.archive", ids=[x])
    assert d.task(x)["status"] == status
    ids["C"] = rpc(d, "task.create", title="child", parents=[x])["id"]
    ids["N"] = rpc(d, "task.create", title="new relative")["id"]
    return ids


#: verb case -> (argv template, kind, move or guard key, subject)
CASES = {
    "assign": (["assign", "{X}", "bob"], "guard", "assign", "task"),
    "edit title": (["edit", "{X}", "--title", "renamed"], "guard", "edit", "task"),
    "edit priority": (["edit", "{X}", "--priority", "5"], "guard", "edit --priority", "task"),
    "comment": (["comment", "{X}", "a note"], "guard", "comment", "task"),
    "link as child": (["link", "{N}", "{X}"], "guard", "link", "child"),
    "link as parent": (["link", "{X}", "{N}"], "guard", "link", "parent"),
    "unlink as child": (["unlink", "{P}", "{X}"], "guard", "unlink", "child"),
    "unlink as parent": (["unlink", "{X}", "{C}"], "guard", "unlink", "parent"),
    "subscribe": (["notify", "subscribe", "{X}", "--sink", "s"], "guard", "subscribe", "task"),
    "complete": (["complete", "{X}", "--summary", "by hand"], "move", "complete", "task"),
    "block": (["block", "{X}", "a reason"], "move", "block", "task"),
    "unblock": (["unblock", "{X}"], "move", "unblock", "task"),
    "archive": (["archive", "{X}"], "move", "archive", "task"),
    "promote": (["promote", "{X}"], "move", "promote", "task"),
    "heartbeat": (["heartbeat", "{X}", "--run", "{RUN}"], "token", "heartbeat", "task"),
}


def expected(status: str, kind: str, key: str, subject: str, open_parents: int) -> tuple[str, str | None]:
    """``("ok", new status or None)`` or ``("error", name)``, from the tables the daemon must follow."""
    if kind == "guard":
        return ("ok", None) if transitions.allowed(status, key, subject) else ("error", "illegal_transition")
    if kind == "token":  # sent from this test (an operator): a live run's token is not its to use
        return ("error", "permission_denied") if status == "running" else ("error", "stale_token")
    row = transitions.lookup(status, key)
    if row is None:
        return "error", "illegal_transition"
    if row.guard == "no_open_parents" and open_parents:
        return "error", "conflict"
    if key == "complete" and status == "running":  # an operator may not complete a run's task
        return "error", "conflict"
    target = ("todo" if open_parents else "ready") if row.target == transitions.READY_OR_TODO else row.target
    return "ok", target


def check_effect(d, case: str, ids: dict, status: str, new_status: str | None) -> None:
    x = d.rpc("task.show", {"id": ids["X"]})
    task = x["task"]
    if new_status is not None:
        assert task["status"] == new_status, (case, status, task["status"])
    elif case == "assign":
        assert task["assignee"] == "bob"
    elif case == "edit title":
        assert task["title"] == "renamed"
    elif case == "edit priority":
        assert task["priority"] == 5
    elif case == "comment":
        assert [c["body"] for c in x["comments"]] == ["a note"]
    elif case == "link as child":
        assert ids["N"] in task["parents"]
        assert task["status"] == ("todo" if status == "ready" else status), "an open parent parks a ready child"
    elif case == "link as parent":
        assert ids["N"] in [c["id"] for c in x["children"]]
    elif case == "unlink as child":
        assert ids["P"] not in task["parents"]
    elif case == "unlink as parent":
        assert ids["C"] not in [c["id"] for c in x["children"]]
    elif case == "subscribe":
        subs = d.rpc("notify.list")["subscriptions"]
        assert any(s["task_id"] == ids["X"] for s in subs)
    elif case == "heartbeat":
        assert x["runs"][0]["heartbeat_note"] is None and any(e["kind"] == "heartbeat" for e in x["events"])


@pytest.mark.parametrize("status", transitions.STATUSES)
def test_every_mutating_verb_in_every_status(d, status):
    problems = []
    for case, (template, kind, key, subject) in CASES.items():
        ids = make(d, status)
        task = d.task(ids["X"])
        run = task["current_run"] or NO_RUN
        argv = [a.format(RUN=run, **ids) for a in template]
        res = d.cli(*argv, "--json", check=False)
        outcome, what = expected(status, kind, key, subject, open_parents=1 if "Q" in ids else 0)
        if outcome == "ok":
            if res.returncode != 0:
                problems.append(f"{status}: {case}: expected success, got exit {res.returncode}: {res.stderr}")
                continue
            try:
                check_effect(d, case, ids, status, what)
            except AssertionError as exc:
                problems.append(f"{status}: {case}: succeeded without its effect: {exc}")
            continue
        if res.returncode != 1 or res.stdout:
            problems.append(f"{status}: {case}: expected {what}, got exit {res.returncode}: {res.stdout}{res.stderr}")
            continue
        err = json.loads(res.stderr)["error"]
        if err["name"] != what:
            problems.append(f"{status}: {case}: expected {what}, got {err['name']}: {err['message']}")
        elif what == "illegal_transition":
            data = err["data"]
            if (data.get("task"), data.get("status"), data.get("move")) != (ids["X"], status, key) \
                    or ids["X"] not in err["message"] or status not in err["message"]:
                problems.append(f"{status}: {case}: illegal_transition does not name task, status, move: {err}")
        if d.task(ids["X"])["status"] != status:
            problems.append(f"{status}: {case}: a refused verb changed the status")
    assert not problems, "\n".join(problems)


def test_refused_inputs_are_not_silently_dropped(d):
    t = rpc(d, "task.create", title="no run")["id"]
    res = d.cli("complete", t, "--metadata", '{"tokens": 1}', "--json", check=False)
    assert res.returncode == 1
    err = json.loads(res.stderr)["error"]
    assert err["name"] == "invalid_params" and err["data"]["field"] == "metadata"
    assert d.task(t)["status"] == "ready", "refused whole, not completed without its metadata"
    a, b = rpc(d, "task.create", title="a")["id"], rpc(d, "task.create", title="b")["id"]
    res = d.cli("block", a, b, "-r", "x", "--run", NO_RUN, "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stderr)["error"]["data"]["field"] == "ids"
