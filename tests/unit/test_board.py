"""The board kernel against a real SQLite file: transitions, operations, runs, migrations.

No mocks: every test opens a real board with :func:`daemon.board.db.connect`
in ``tmp_path`` and wraps each mutation in one ``db.write`` transaction, the
way the dispatcher does. The clock is injected (``now``).
"""

from __future__ import annotations

import itertools
import json
import sqlite3

import pytest

from client.protocol import RPCError
from daemon import config as config_mod
from daemon.board import db, plan, runs, tasks, transitions

NOW = 1_700_000_000.0
ALL_OPEN = ("triage", "todo", "ready", "running", "blocked", "review", "scheduled")


# ---- helpers -------------------------------------------------------------------------


@pytest.fixture
def conn(tmp_path):
    c = db.connect(tmp_path / "board.db")
    yield c
    c.close()


def w(conn, fn, *args, **kw):
    """Run one kernel mutation in its own BEGIN IMMEDIATE transaction."""
    with db.write(conn):
        return fn(conn, *args, **kw)


def mk(conn, title="task", now=NOW, **kw):
    task, created = w(conn, tasks.create, now, title=title, **kw)
    assert created
    return task


def status(conn, task_id):
    return conn.execute("SELECT status FROM tasks WHERE id=?", (task_id,)).fetchone()[0]


def row(conn, task_id):
    return tasks.get(conn, task_id)


def event_count(conn):
    return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def events(conn, task_id=None, kind=None):
    q, args = "SELECT id, task_id, run_id, kind, payload, at FROM events WHERE 1=1", []
    if task_id:
        q += " AND task_id=?"
        args.append(task_id)
    if kind:
        q += " AND kind=?"
        args.append(kind)
    return [tasks.event_dict(r) for r in conn.execute(q + " ORDER BY id", args)]


def refused(conn, name, fn, *args, **kw) -> RPCError:
    """The mutation fails with ``name`` and, being rolled back, changes nothing."""
    before = conn.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM tasks").fetchone()
    ev_before = event_count(conn)
    with pytest.raises(RPCError) as ei:
        w(conn, fn, *args, **kw)
    assert ei.value.name == name, (ei.value.name, ei.value.message)
    assert event_count(conn) == ev_before, "a refused write left events behind"
    assert tuple(conn.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM tasks").fetchone()) \
        == tuple(before)
    return ei.value


def cfg(failure_limit=None):
    c = config_mod.defaults()
    c["_set"] = set()
    if failure_limit is not None:
        c["dispatch"]["failure_limit"] = failure_limit
        c["_set"].add("dispatch.failure_limit")
    return c


def start_run(conn, task_id, now=NOW + 1):
    run = w(conn, runs.claim, now, task_id, "prof", 900.0, None)
    w(conn, runs.started, now, run["id"], 4242, now, 4243)
    return run["id"]


# ---- the transition table -------------------------------------------------------------

CONFLICT = "conflict"
#: (status, move) -> (target with no open parent, target with an open parent). Anything absent is illegal.
EXPECTED = {
    ("triage", "promote"): ("ready", "todo"),
    ("scheduled", "promote"): ("ready", "todo"),
    ("todo", "promote"): ("ready", CONFLICT),
    ("ready", "park"): ("todo", "todo"),
    ("todo", "unpark"): ("ready", CONFLICT),
    ("ready", "claim"): ("running", "running"),
    ("blocked", "unblock"): ("ready", "todo"),
    ("running", "requeue"): ("ready", "todo"),
    ("running", "give_up"): ("blocked", "blocked"),
    ("review", "give_up"): ("blocked", "blocked"),
    ("running", "reject"): ("ready", "todo"),
    ("running", "submit"): ("review", CONFLICT),
    ("review", "approve"): ("done", CONFLICT),
    ("review", "request_changes"): ("ready", "todo"),
    **{(s, "complete"): ("done", CONFLICT) for s in ("running", "ready", "todo", "review", "triage", "scheduled")},
    **{(s, "block"): ("blocked", "blocked") for s in ("triage", "todo", "ready", "running", "review", "scheduled")},
    **{(s, "archive"): ("archived", "archived") for s in (*ALL_OPEN, "done")},
    ("done", "reopen"): ("ready", "todo"),
    ("done", "retry"): ("ready", "todo"),
    ("ready", "repark"): ("todo", "todo"),
    **{(s, "schedule"): ("scheduled", "scheduled") for s in ("triage", "todo", "ready", "scheduled")},
    ("scheduled", "due"): ("ready", "todo"),
}


def test_statuses_and_moves_are_the_documented_ones():
    assert transitions.STATUSES == ("triage", "todo", "ready", "running", "blocked", "review", "scheduled",
                                    "done", "archived")
    assert set(transitions.MOVES) == {m for _, m in EXPECTED}
    assert transitions.OPEN_STATUSES == frozenset(ALL_OPEN)


@pytest.mark.parametrize("status,move", list(itertools.product(transitions.STATUSES, transitions.MOVES)))
def test_transition_table(status, move):
    for open_parents, idx in ((0, 0), (2, 1)):
        want = EXPECTED.get((status, move), (None, None))[idx]
        if want is None:
            with pytest.raises(RPCError) as ei:
                transitions.move("t_0000abcd", status, move, open_parents=open_parents)
            err = ei.value
            assert err.name == "illegal_transition"
            assert err.data == {"task": "t_0000abcd", "status": status, "move": move}
            assert "t_0000abcd" in err.message and status in err.message and move in err.message
            assert transitions.lookup(status, move) is None
        elif want == CONFLICT:
            with pytest.raises(RPCError) as ei:
                transitions.move("t_0000abcd", status, move, open_parents=open_parents)
            assert ei.value.name == "conflict"
            assert "t_0000abcd" in ei.value.message and move in ei.value.message
            assert ei.value.data["open_parents"] == 2
        else:
            assert transitions.move("t_0000abcd", status, move, open_parents=open_parents) == want


def test_render_markdown_lists_every_row():
    md = transitions.render_markdown()
    for row_ in transitions.TABLE:
        assert f"| `{row_.move}` |" in md


# ---- create ---------------------------------------------------------------------------


def test_create_ready_without_parents_and_todo_with_open_parent(conn):
    p = mk(conn, "parent", assignee="a", priority=3, tenant="x", body="b")
    assert p["id"].startswith("t_") and len(p["id"]) == 10 and int(p["id"][2:], 16) >= 0
    assert (p["status"], p["assignee"], p["priority"], p["tenant"], p["body"], p["parents"]) == \
        ("ready", "a", 3, "x", "b", [])
    assert p["ready_at"] == NOW and p["created_at"] == NOW
    c = mk(conn, "child", parents=[p["id"], p["id"]])  # duplicates collapse
    assert c["status"] == "todo" and c["parents"] == [p["id"]] and c["ready_at"] is None
    ev = events(conn, c["id"], "created")[0]
    assert ev["payload"]["status"] == "todo" and ev["payload"]["parents"] == [p["id"]]


def test_create_with_closed_parents_is_ready_and_triage_parks(conn):
    p1, p2 = mk(conn, "p1"), mk(conn, "p2")
    w(conn, tasks.complete, NOW, [p1["id"]])
    w(conn, tasks.archive, NOW, [p2["id"]])
    assert mk(conn, "c", parents=[p1["id"], p2["id"]])["status"] == "ready"
    assert mk(conn, "t", triage=True)["status"] == "triage"


def test_create_options_and_validation(conn):
    t = mk(conn, "opts", max_runtime="30m", max_retries=3, workspace="dir:/srv/x/../y", created_by="me")
    assert (t["max_runtime"], t["max_retries"], t["created_by"]) == (1800.0, 3, "me")
    assert t["workspace"] == {"kind": "dir", "path": "/srv/y", "repo": None, "branch": None}
    assert mk(conn, "wt", workspace="worktree")["workspace"] == {"kind": "worktree", "path": None, "repo": None,
                                                                 "branch": None}
    assert mk(conn, "dflt")["workspace"]["kind"] == "scratch"
    assert refused(conn, "invalid_params", tasks.create, NOW, title="  ").data["field"] == "title"
    assert refused(conn, "invalid_params", tasks.create, NOW, title="x",
                   workspace="dir:rel").data["field"] == "workspace"
    assert refused(conn, "invalid_params", tasks.create, NOW, title="x",
                   workspace="bogus").data["field"] == "workspace"
    assert refused(conn, "invalid_params", tasks.create, NOW, title="x",
                   max_runtime="soon").data["field"] == "max_runtime"
    assert refused(conn, "invalid_params", tasks.create, NOW, title="x", max_retries=0).data["field"] == \
        "max_retries"
    err = refused(conn, "not_found", tasks.create, NOW, title="x", parents=["t_deadbeef"])
    assert "t_deadbeef" in err.message and err.data["id"] == "t_deadbeef"


def test_idempotency_key(conn):
    a = mk(conn, "first", idempotency_key="k1")
    n = event_count(conn)
    again, created = w(conn, tasks.create, NOW + 5, title="second", idempotency_key="k1")
    assert not created and again["id"] == a["id"] and again["title"] == "first"
    assert event_count(conn) == n
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
    other = mk(conn, "other", idempotency_key="k2")
    assert other["id"] != a["id"]
    # a done task still holds its key
    w(conn, tasks.complete, NOW, [a["id"]])
    assert w(conn, tasks.create, NOW, title="x", idempotency_key="k1")[0]["id"] == a["id"]
    # an archived one does not
    w(conn, tasks.archive, NOW, [a["id"]])
    fresh, created = w(conn, tasks.create, NOW, title="again", idempotency_key="k1")
    assert created and fresh["id"] != a["id"] and fresh["status"] == "ready"
    assert w(conn, tasks.create, NOW, title="x", idempotency_key="k1")[0]["id"] == fresh["id"]


# ---- promotion, complete, archive ----------------------------------------------------------


def test_last_open_parent_promotes_children_in_the_same_transaction(conn, tmp_path):
    p1, p2 = mk(conn, "p1"), mk(conn, "p2")
    c = mk(conn, "c", parents=[p1["id"], p2["id"]])
    g = mk(conn, "grandchild", parents=[c["id"]])
    res = w(conn, tasks.complete, NOW + 10, [p1["id"]], summary="half")
    assert res["promoted"] == [] and status(conn, c["id"]) == "todo"
    assert res["tasks"][0]["status"] == "done" and res["tasks"][0]["summary"] == "half"

    other = sqlite3.connect(tmp_path / "board.db")  # a second reader sees only committed state
    with db.write(conn):
        res = tasks.archive(conn, NOW + 20, [p2["id"]])
        assert res["promoted"] == [c["id"]]
        assert status(conn, c["id"]) == "ready"
        seen = dict(other.execute("SELECT id, status FROM tasks WHERE id IN (?,?)", (p2["id"], c["id"])))
        assert seen == {p2["id"]: "ready", c["id"]: "todo"}
    seen = dict(other.execute("SELECT id, status FROM tasks WHERE id IN (?,?)", (p2["id"], c["id"])))
    assert seen == {p2["id"]: "archived", c["id"]: "ready"}
    other.close()

    promoted = events(conn, c["id"], "promoted")
    assert len(promoted) == 1 and promoted[0]["payload"]["parent"] == p2["id"] and promoted[0]["at"] == NOW + 20
    archived_ev = events(conn, p2["id"], "archived")[0]
    assert archived_ev["id"] < promoted[0]["id"]
    assert row(conn, c["id"])["ready_at"] == NOW + 20
    assert status(conn, g["id"]) == "todo", "a grandchild waits for its own parent"


def test_promotion_rolls_back_with_its_parent(conn):
    p = mk(conn, "p")
    c = mk(conn, "c", parents=[p["id"]])
    with pytest.raises(RuntimeError):
        with db.write(conn):
            tasks.complete(conn, NOW, [p["id"]])
            raise RuntimeError("boom")
    assert (status(conn, p["id"]), status(conn, c["id"])) == ("ready", "todo")


def test_complete_with_unfinished_parent_is_refused(conn):
    p = mk(conn, "p")
    c = mk(conn, "c", parents=[p["id"]])
    err = refused(conn, "conflict", tasks.complete, NOW, [c["id"]])
    assert c["id"] in err.message and "open parent" in err.message
    # a blocked child cannot be completed at all: only unblock ends a block
    w(conn, tasks.block, NOW, [c["id"]], "wait")
    refused(conn, "illegal_transition", tasks.complete, NOW, [c["id"]])
    # several ids complete in order; parent first promotes then completes the child
    w(conn, tasks.unblock, NOW, [c["id"]])
    res = w(conn, tasks.complete, NOW, [p["id"], c["id"]])
    assert [t["status"] for t in res["tasks"]] == ["done", "done"] and res["promoted"] == [c["id"]]


def test_complete_refusals(conn):
    t = mk(conn, "t")
    w(conn, tasks.complete, NOW, [t["id"]])
    err = refused(conn, "illegal_transition", tasks.complete, NOW, [t["id"]])
    assert err.data == {"task": t["id"], "status": "done", "move": "complete"}
    assert refused(conn, "invalid_params", tasks.complete, NOW, []).data["field"] == "ids"
    refused(conn, "not_found", tasks.complete, NOW, ["t_00000000"])
    # one bad id rolls back the whole call
    u = mk(conn, "u")
    refused(conn, "not_found", tasks.complete, NOW, [u["id"], "t_00000000"])
    assert status(conn, u["id"]) == "ready"


def test_archive_many_and_hidden_from_default_lists(conn):
    ids = [mk(conn, f"t{i}")["id"] for i in range(3)]
    keep = mk(conn, "keep")
    res = w(conn, tasks.archive, NOW + 1, ids)
    assert [t["status"] for t in res["tasks"]] == ["archived"] * 3
    assert [e["task_id"] for e in events(conn, kind="archived")] == ids
    listed = tasks.list_tasks(conn)
    assert [t["id"] for t in listed["tasks"]] == [keep["id"]] and listed["total"] == 1
    assert {t["id"] for t in tasks.list_tasks(conn, archived=True)["tasks"]} == {*ids, keep["id"]}
    assert {t["id"] for t in tasks.list_tasks(conn, status=["archived"])["tasks"]} == set(ids)
    err = refused(conn, "illegal_transition", tasks.archive, NOW, [ids[0]])
    assert ids[0] in err.message and "archived" in err.message and "archive" in err.message
    refused(conn, "not_found", tasks.archive, NOW, [keep["id"], "t_00000000"])
    assert status(conn, keep["id"]) == "ready"


# ---- link / unlink ----------------------------------------------------------------------


def test_link_rules(conn):
    a, b, c = mk(conn, "a"), mk(conn, "b"), mk(conn, "c")
    err = refused(conn, "conflict", tasks.link, NOW, a["id"], a["id"])
    assert a["id"] in err.message
    res = w(conn, tasks.link, NOW, a["id"], b["id"])
    assert res == {"parent": a["id"], "child": b["id"], "child_status": "todo", "changed": True}
    assert status(conn, b["id"]) == "todo"
    w(conn, tasks.link, NOW, b["id"], c["id"])
    err = refused(conn, "conflict", tasks.link, NOW, c["id"], a["id"])  # a -> b -> c -> a
    assert "cycle" in err.message and c["id"] in err.message and a["id"] in err.message
    refused(conn, "conflict", tasks.link, NOW, b["id"], a["id"])
    n = event_count(conn)
    assert w(conn, tasks.link, NOW, a["id"], b["id"])["changed"] is False
    assert event_count(conn) == n
    refused(conn, "not_found", tasks.link, NOW, a["id"], "t_00000000")
    refused(conn, "not_found", tasks.link, NOW, "t_00000000", a["id"])
    linked = events(conn, b["id"], "linked")
    assert linked[0]["payload"] == {"parent": a["id"], "child_status": "todo"}


def test_link_closed_parent_keeps_child_ready_and_nonready_children_stay(conn):
    done = mk(conn, "done")
    w(conn, tasks.complete, NOW, [done["id"]])
    child = mk(conn, "child")
    assert w(conn, tasks.link, NOW, done["id"], child["id"])["child_status"] == "ready"
    parent = mk(conn, "open")
    tri = mk(conn, "tri", triage=True)
    assert w(conn, tasks.link, NOW, parent["id"], tri["id"])["child_status"] == "triage"
    # promoting out of triage with an open parent lands in todo
    assert w(conn, tasks.promote, NOW, tri["id"])["status"] == "todo"


def test_unlink_last_open_parent_promotes(conn):
    p1, p2 = mk(conn, "p1"), mk(conn, "p2")
    c = mk(conn, "c", parents=[p1["id"], p2["id"]])
    res = w(conn, tasks.unlink, NOW + 3, p1["id"], c["id"])
    assert res["child_status"] == "todo" and events(conn, c["id"], "promoted") == []
    res = w(conn, tasks.unlink, NOW + 4, p2["id"], c["id"])
    assert res == {"parent": p2["id"], "child": c["id"], "child_status": "ready"}
    assert row(conn, c["id"])["ready_at"] == NOW + 4
    assert [e["kind"] for e in events(conn, c["id"])][-3:] == ["unlinked", "promoted", "unlinked"]
    err = refused(conn, "not_found", tasks.unlink, NOW, p1["id"], c["id"])
    assert p1["id"] in err.message and c["id"] in err.message
    assert tasks.parents_of(conn, c["id"]) == []


# ---- block / unblock / promote --------------------------------------------------------


def test_block_is_sticky(conn):
    p = mk(conn, "p")
    c = mk(conn, "c", parents=[p["id"]])
    w(conn, tasks.block, NOW, [c["id"]], "needs a human")
    assert row(conn, c["id"])["block_reason"] == "needs a human"
    # nothing but unblock leaves blocked
    w(conn, tasks.complete, NOW, [p["id"]])
    assert status(conn, c["id"]) == "blocked"
    refused(conn, "illegal_transition", tasks.promote, NOW, c["id"])
    refused(conn, "illegal_transition", runs.claim, NOW, c["id"], "prof", 900.0, None)
    refused(conn, "illegal_transition", tasks.block, NOW, [c["id"]], "again")
    refused(conn, "illegal_transition", tasks.complete, NOW, [c["id"]])
    q = mk(conn, "q")
    w(conn, tasks.link, NOW, q["id"], c["id"])
    w(conn, tasks.unlink, NOW, q["id"], c["id"])
    assert status(conn, c["id"]) == "blocked"
    res = w(conn, tasks.unblock, NOW + 9, [c["id"]])
    assert res["tasks"][0]["status"] == "ready" and res["tasks"][0]["block_reason"] is None
    assert events(conn, c["id"], "unblocked")[0]["payload"] == {"status": "ready"}


def test_block_many_and_unblock_lands_ready_or_todo(conn):
    p = mk(conn, "p")
    a, b = mk(conn, "a"), mk(conn, "b", parents=[p["id"]])
    res = w(conn, tasks.block, NOW, [a["id"], b["id"]], "why")
    assert [t["status"] for t in res["tasks"]] == ["blocked", "blocked"]
    assert [e["payload"]["reason"] for e in events(conn, kind="blocked")] == ["why", "why"]
    res = w(conn, tasks.unblock, NOW, [a["id"], b["id"]])
    assert [t["status"] for t in res["tasks"]] == ["ready", "todo"]
    err = refused(conn, "illegal_transition", tasks.unblock, NOW, [a["id"]])
    assert err.data == {"task": a["id"], "status": "ready", "move": "unblock"}
    assert refused(conn, "invalid_params", tasks.block, NOW, [a["id"]], " ").data["field"] == "reason"
    assert refused(conn, "invalid_params", tasks.block, NOW, [], "r").data["field"] == "ids"


def test_promote(conn):
    t = mk(conn, "t", triage=True)
    assert w(conn, tasks.promote, NOW, t["id"])["status"] == "ready"
    assert events(conn, t["id"], "promoted")[0]["payload"] == {"status": "ready", "by": "operator"}
    refused(conn, "illegal_transition", tasks.promote, NOW, t["id"])
    p = mk(conn, "p")
    c = mk(conn, "c", parents=[p["id"]])
    err = refused(conn, "conflict", tasks.promote, NOW, c["id"])
    assert c["id"] in err.message
    refused(conn, "not_found", tasks.promote, NOW, "t_00000000")


# ---- assign, comment, edit ----------------------------------------------------------------


def test_assign_comment_edit(conn):
    t = mk(conn, "t", assignee="a")
    assert w(conn, tasks.assign, NOW + 1, t["id"], "b")["assignee"] == "b"
    assert w(conn, tasks.assign, NOW + 2, t["id"], None)["assignee"] is None
    assert [e["payload"]["previous"] for e in events(conn, t["id"], "assigned")] == ["a", "b"]
    com = w(conn, tasks.comment, NOW, t["id"], "hello", author="ann")
    assert com["author"] == "ann" and com["body"] == "hello" and com["task_id"] == t["id"]
    assert refused(conn, "invalid_params", tasks.comment, NOW, t["id"], "  ").data["field"] == "body"
    refused(conn, "not_found", tasks.comment, NOW, "t_00000000", "x")
    e = w(conn, tasks.edit, NOW + 5, t["id"], title="new", body="bb", priority=7)
    assert (e["title"], e["body"], e["priority"], e["updated_at"]) == ("new", "bb", 7, NOW + 5)
    assert events(conn, t["id"], "edited")[0]["payload"] == {"fields": ["body", "priority", "title"]}
    assert w(conn, tasks.edit, NOW, t["id"], priority=0)["priority"] == 0
    refused(conn, "invalid_params", tasks.edit, NOW, t["id"])
    assert refused(conn, "invalid_params", tasks.edit, NOW, t["id"], title=" ").data["field"] == "title"
    refused(conn, "not_found", tasks.edit, NOW, "t_00000000", title="x")


# ---- reads --------------------------------------------------------------------------


def test_list_filters_sort_limit(conn):
    a = mk(conn, "a", now=NOW + 1, assignee="x", priority=1, tenant="one")
    b = mk(conn, "b", now=NOW + 2, assignee="y", priority=5)
    c = mk(conn, "c", now=NOW + 3, assignee="x", priority=5, tenant="one")
    d = mk(conn, "d", now=NOW + 4)
    w(conn, tasks.block, NOW + 10, [d["id"]], "r")
    ids = lambda **kw: [t["id"] for t in tasks.list_tasks(conn, **kw)["tasks"]]  # noqa: E731
    assert ids() == [b["id"], c["id"], a["id"], d["id"]]  # priority desc, then oldest
    assert ids(sort="created") == [a["id"], b["id"], c["id"], d["id"]]
    assert ids(sort="updated")[0] == d["id"]
    assert ids(sort="id") == sorted(ids())
    assert ids(status=["blocked"]) == [d["id"]]
    assert set(ids(status=["ready", "blocked"])) == {a["id"], b["id"], c["id"], d["id"]}
    assert ids(assignee="x") == [c["id"], a["id"]]
    assert ids(tenant="one", assignee="x", sort="created") == [a["id"], c["id"]]
    res = tasks.list_tasks(conn, limit=2)
    assert len(res["tasks"]) == 2 and res["total"] == 4
    assert tasks.list_tasks(conn, limit=0)["tasks"] == []
    with pytest.raises(RPCError) as ei:
        tasks.list_tasks(conn, status=["nope"])
    assert ei.value.data["field"] == "status" and "nope" in ei.value.message
    with pytest.raises(RPCError) as ei:
        tasks.list_tasks(conn, limit=-1)
    assert ei.value.data["field"] == "limit"


def test_show(conn):
    p = mk(conn, "parent")
    t = mk(conn, "me", parents=[p["id"]])
    k = mk(conn, "kid", parents=[t["id"]])
    w(conn, tasks.comment, NOW, t["id"], "c1", author="u")
    for i in range(25):
        w(conn, tasks.edit, NOW + i, t["id"], priority=i)
    s = tasks.show(conn, t["id"])
    assert s["task"]["id"] == t["id"] and s["task"]["parents"] == [p["id"]]
    assert s["parents"] == [{"id": p["id"], "title": "parent", "status": "ready"}]
    assert s["children"] == [{"id": k["id"], "title": "kid", "status": "todo"}]
    assert [c["body"] for c in s["comments"]] == ["c1"]
    assert s["runs"] == []
    assert len(s["events"]) == 20 and [e["id"] for e in s["events"]] == sorted(e["id"] for e in s["events"])
    assert s["events"][-1]["payload"] == {"fields": ["priority"]}
    with pytest.raises(RPCError) as ei:
        tasks.show(conn, "t_00000000")
    assert ei.value.name == "not_found" and "t_00000000" in ei.value.message


def test_stats_counts_and_oldest_ready_age(conn):
    assert tasks.stats(conn, NOW)["oldest_ready_age"] is None
    a = mk(conn, "a", now=NOW, assignee="x")
    mk(conn, "b", now=NOW + 10, assignee="x")
    c = mk(conn, "c", now=NOW + 20)
    mk(conn, "d", now=NOW + 30, parents=[c["id"]])
    e = mk(conn, "e", now=NOW + 40, assignee="x")
    w(conn, tasks.archive, NOW + 40, [e["id"]])
    s = tasks.stats(conn, NOW + 100)
    assert s["oldest_ready_age"] == 100.0
    assert s["by_status"]["ready"] == 3 and s["by_status"]["todo"] == 1 and s["by_status"]["archived"] == 1
    assert set(s["by_status"]) == set(transitions.STATUSES) and s["total"] == 5
    assert s["by_assignee"] == {"x": {"ready": 2}, "(unassigned)": {"ready": 1, "todo": 1}}
    w(conn, tasks.complete, NOW + 50, [a["id"]])
    assert tasks.stats(conn, NOW + 100)["oldest_ready_age"] == 90.0
    assert tasks.stats(conn, NOW - 1000)["oldest_ready_age"] == 0.0  # never negative


def test_events_since(conn):
    a, b = mk(conn, "a"), mk(conn, "b")
    w(conn, tasks.comment, NOW, a["id"], "x")
    allev = tasks.events_since(conn)
    assert [e["kind"] for e in allev["events"]] == ["created", "created", "commented"]
    first = allev["events"][0]["id"]
    assert allev["last_id"] == allev["events"][-1]["id"]
    later = tasks.events_since(conn, after=first)
    assert [e["id"] for e in later["events"]] == [e["id"] for e in allev["events"][1:]]
    assert tasks.events_since(conn, after=allev["last_id"])["events"] == []
    assert [e["kind"] for e in tasks.events_since(conn, task=a["id"])["events"]] == ["created", "commented"]
    assert len(tasks.events_since(conn, limit=1)["events"]) == 1
    assert tasks.events_since(conn, limit=0)["events"] == []
    with pytest.raises(RPCError) as ei:
        tasks.events_since(conn, limit=-1)
    assert ei.value.data["field"] == "limit"
    assert tasks.events_since(conn)["events"][0]["payload"]["title"] == "a"
    with pytest.raises(RPCError):
        tasks.events_since(conn, task="t_00000000")
    assert [e["task_id"] for e in allev["events"]] == [a["id"], b["id"], a["id"]]


def test_every_mutation_writes_an_event(conn):
    p = mk(conn, "p")
    t = mk(conn, "t")
    ops = [
        ("linked", lambda: tasks.link(conn, NOW, p["id"], t["id"])),
        ("unlinked", lambda: tasks.unlink(conn, NOW, p["id"], t["id"])),
        ("assigned", lambda: tasks.assign(conn, NOW, t["id"], "z")),
        ("commented", lambda: tasks.comment(conn, NOW, t["id"], "hi")),
        ("edited", lambda: tasks.edit(conn, NOW, t["id"], title="t2")),
        ("blocked", lambda: tasks.block(conn, NOW, [t["id"]], "r")),
        ("unblocked", lambda: tasks.unblock(conn, NOW, [t["id"]])),
        ("claimed", lambda: runs.claim(conn, NOW, t["id"], "prof", 60.0, None)),
        ("started", lambda: runs.started(conn, NOW, row(conn, t["id"])["current_run"], 1, NOW, None)),
        ("heartbeat", lambda: runs.heartbeat(conn, NOW, t["id"], row(conn, t["id"])["current_run"], "50%", 60.0)),
        ("exited", lambda: runs.exited(conn, NOW, cfg(), row(conn, t["id"])["current_run"], exit_code=1)),
        ("completed", lambda: tasks.complete(conn, NOW, [t["id"]])),
        ("archived", lambda: tasks.archive(conn, NOW, [t["id"]])),
        ("created", lambda: tasks.create(conn, NOW, title="n", triage=True)),
        ("promoted", lambda: tasks.promote(conn, NOW, tasks.list_tasks(conn, status=["triage"])["tasks"][0]["id"])),
    ]
    for kind, op in ops:
        before = tasks.events_since(conn)["last_id"]
        with db.write(conn):
            op()
        kinds = [e["kind"] for e in tasks.events_since(conn, after=before)["events"]]
        assert kind in kinds, (kind, kinds)
        assert all(e["at"] == NOW for e in tasks.events_since(conn, after=before)["events"])


# ---- runs: exit decoding, fencing, breaker ---------------------------------------------


@pytest.mark.parametrize("kw,want", [
    (dict(preset=None, exit_code=0, signal=None), "protocol_violation"),
    (dict(preset="completed", exit_code=0, signal=None), "completed"),
    (dict(preset="completed", exit_code=3, signal=None), "completed"),
    (dict(preset="blocked", exit_code=None, signal=9), "blocked"),
    (dict(preset="cancelled", exit_code=None, signal=15), "cancelled"),
    (dict(preset=None, exit_code=75, signal=None), "rate_limited"),
    (dict(preset=None, exit_code=1, signal=None), "crashed"),
    (dict(preset=None, exit_code=None, signal=9), "crashed"),
    (dict(preset=None, exit_code=None, signal=11), "crashed"),
    (dict(preset=None, exit_code=None, signal=15, timed_out=True), "timed_out"),
    (dict(preset=None, exit_code=0, signal=None, timed_out=True), "timed_out"),
    (dict(preset=None, exit_code=None, signal=15, killed_for="stale"), "stale"),
    (dict(preset=None, exit_code=None, signal=9, killed_for="reclaim"), "reclaimed"),
    (dict(preset=None, exit_code=0, signal=None, killed_for="shutdown"), "interrupted"),
    (dict(preset=None, exit_code=127, signal=None, spawn_error="no such file"), "spawn_failed"),
    (dict(preset=None, exit_code=None, signal=None, lost="pid reused"), "lost"),
    (dict(preset=None, exit_code=None, signal=None), "crashed"),
    # the log matched the profile's rate_limit_patterns: a run that ended without completing cools down
    (dict(preset=None, exit_code=1, signal=None, rate_limit_matched=True), "rate_limited"),
    (dict(preset=None, exit_code=0, signal=None, rate_limit_matched=True), "rate_limited"),
    (dict(preset=None, exit_code=None, signal=9, rate_limit_matched=True), "crashed"),
    (dict(preset="completed", exit_code=1, signal=None, rate_limit_matched=True), "completed"),
    (dict(preset=None, exit_code=1, signal=None, killed_for="stale", rate_limit_matched=True), "stale"),
])
def test_decode_exit(kw, want):
    got = runs.decode_exit(**kw)
    assert got == want
    assert got in runs.OUTCOMES


def test_outcomes_table():
    o = runs.OUTCOMES
    for name in ("completed", "protocol_violation", "crashed", "rate_limited", "timed_out", "spawn_failed", "lost"):
        assert name in o and o[name].doc
    assert not o["rate_limited"].failure and o["rate_limited"].requeue
    assert not o["lost"].failure and o["lost"].requeue
    for name in ("protocol_violation", "crashed", "timed_out", "spawn_failed"):
        assert o[name].failure and o[name].requeue and o[name].event
    for name in ("completed", "blocked", "cancelled"):
        assert not o[name].failure and not o[name].requeue
    assert runs.describe_exit(None, 9) == "killed by SIGKILL"
    assert runs.describe_exit(3, None) == "exit code 3"


def test_claim_is_a_compare_and_swap_and_opens_a_run(conn):
    t = mk(conn, "t")
    run = w(conn, runs.claim, NOW, t["id"], "prof", 60.0, "/ws/x")
    assert run["id"].startswith("r_") and run["state"] == "claimed" and run["claim_expires"] == NOW + 60
    r = row(conn, t["id"])
    assert (r["status"], r["current_run"], r["workspace_path"]) == ("running", run["id"], "/ws/x")
    err = refused(conn, "illegal_transition", runs.claim, NOW, t["id"], "prof", 60.0, None)
    assert err.data == {"task": t["id"], "status": "running", "move": "claim"}
    c = mk(conn, "c", parents=[mk(conn, "p")["id"]])
    refused(conn, "illegal_transition", runs.claim, NOW, c["id"], "prof", 60.0, None)


def test_worker_complete_with_token_and_stale_tokens(conn):
    t = mk(conn, "t")
    r1 = start_run(conn, t["id"])
    # an operator may not complete a running task without the token
    err = refused(conn, "conflict", tasks.complete, NOW, [t["id"]])
    assert t["id"] in err.message and r1 in err.message
    w(conn, runs.exited, NOW + 2, cfg(), r1, exit_code=1)
    assert status(conn, t["id"]) == "ready"
    r2 = start_run(conn, t["id"], NOW + 3)
    err = refused(conn, "stale_token", tasks.complete, NOW, [t["id"]], run=r1)
    assert r1 in err.message and t["id"] in err.message and err.data["current_run"] == r2
    refused(conn, "stale_token", tasks.block, NOW, [t["id"]], "x", run=r1)
    refused(conn, "stale_token", runs.heartbeat, NOW, t["id"], r1, None, 60.0)
    assert refused(conn, "invalid_params", runs.heartbeat, NOW, t["id"], None, None, 60.0).data["field"] == "run"
    hb = w(conn, runs.heartbeat, NOW + 4, t["id"], r2, "half", 60.0)
    assert hb["claim_expires"] == NOW + 64
    res = w(conn, tasks.complete, NOW + 5, [t["id"]], summary="ok", metadata={"k": 1}, run=r2)
    assert res["tasks"][0]["status"] == "done" and res["tasks"][0]["consecutive_failures"] == 0
    out = w(conn, runs.exited, NOW + 6, cfg(), r2, exit_code=0)
    assert out == {"outcome": "completed"}
    rr = runs.get_run(conn, r2)
    assert (rr["outcome"], rr["summary"], json.loads(rr["metadata"]), rr["state"]) == ("completed", "ok", {"k": 1},
                                                                                         "ended")
    assert row(conn, t["id"])["current_run"] is None
    # exited is idempotent
    n = event_count(conn)
    assert w(conn, runs.exited, NOW + 7, cfg(), r2, exit_code=1) == {"outcome": "completed", "duplicate": True}
    assert event_count(conn) == n
    assert [x["outcome"] for x in runs.list_runs(conn, t["id"])["runs"]] == ["crashed", "completed"]


def test_exit_zero_without_completion_is_a_protocol_violation(conn):
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    assert w(conn, runs.exited, NOW + 2, cfg(), r, exit_code=0) == {"outcome": "protocol_violation"}
    tr = row(conn, t["id"])
    assert (tr["status"], tr["consecutive_failures"], tr["current_run"]) == ("ready", 1, None)
    assert events(conn, t["id"], "protocol_violation")
    assert events(conn, t["id"], "requeued")[0]["payload"]["failures"] == 1


def test_rate_limited_task_scope_requeues_with_cooldown_and_does_not_count(conn):
    t = mk(conn, "t")
    c = cfg()
    c["dispatch"]["rate_limit_scope"] = "task"
    r = start_run(conn, t["id"])
    w(conn, runs.exited, NOW + 2, c, r, exit_code=1)
    r = start_run(conn, t["id"], NOW + 3)
    assert w(conn, runs.exited, NOW + 4, c, r, exit_code=75)["outcome"] == "rate_limited"
    tr = row(conn, t["id"])
    assert tr["status"] == "ready" and tr["consecutive_failures"] == 1
    assert tr["cooldown_until"] == NOW + 4 + c["dispatch"]["rate_limit_cooldown"]
    assert tr["cooldown_kind"] == "rate_limit"
    assert runs.get_run(conn, r)["error"] == "exit code 75"


def test_rate_limited_profile_scope_cools_the_profile_for_retry_after(conn):
    t = mk(conn, "t")
    c = cfg()  # default scope: the profile (the quota belongs to the account behind it)
    r = start_run(conn, t["id"])
    assert w(conn, runs.exited, NOW + 4, c, r, exit_code=75, retry_after=42.0)["outcome"] == "rate_limited"
    tr = row(conn, t["id"])
    assert tr["status"] == "ready" and tr["cooldown_until"] is None
    prof = runs.get_run(conn, r)["profile"]
    assert runs.profile_cooldown(conn, prof)[0] == NOW + 4 + 42.0
    assert plan.candidates(conn, NOW + 5, {**c, "profiles": {prof: {"max_in_progress": None}}}) == []
    # `retry` lifts it
    w(conn, tasks.retry, NOW + 6, [t["id"]])
    assert runs.profile_cooldown(conn, prof)[0] is None


def test_counted_failure_waits_a_jittered_exponential_backoff(conn):
    c = cfg()
    c["dispatch"].update(retry_backoff=10.0, retry_backoff_max=60.0)
    import random
    rng = random.Random(1)
    for n, base in ((1, 10), (2, 20), (3, 40), (4, 60), (9, 60)):
        d = runs.retry_backoff(n, c, rng)
        assert base / 2 <= d <= base
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    w(conn, runs.exited, NOW + 2, c, r, exit_code=1)
    tr = row(conn, t["id"])
    assert tr["cooldown_kind"] == "backoff" and NOW + 2 + 5 <= tr["cooldown_until"] <= NOW + 2 + 10


@pytest.mark.parametrize("max_retries,config_limit,want_limit,want_source", [
    (None, None, 2, "default"),
    (None, 3, 3, "config"),
    (1, 3, 1, "task"),
    (4, None, 4, "task"),
])
def test_breaker_gives_up_after_limit(conn, max_retries, config_limit, want_limit, want_source):
    t = mk(conn, "t", max_retries=max_retries)
    c = cfg(config_limit)
    assert runs.failure_limit(row(conn, t["id"]), c) == (want_limit, want_source)
    now = NOW
    for i in range(1, want_limit + 1):
        r = start_run(conn, t["id"], now)
        out = w(conn, runs.exited, now + 1, c, r, exit_code=None, signal=9, log_tail="segfault here")
        assert out["outcome"] == "crashed"
        now += 10
        if i < want_limit:
            assert status(conn, t["id"]) == "ready"
            assert row(conn, t["id"])["consecutive_failures"] == i
    tr = row(conn, t["id"])
    assert (tr["status"], tr["consecutive_failures"], tr["current_run"]) == ("blocked", want_limit, None)
    assert "gave up after" in tr["block_reason"]
    gave = events(conn, t["id"], "gave_up")
    assert len(gave) == 1
    assert gave[0]["payload"] == {"limit": want_limit, "source": want_source, "failures": want_limit,
                                  "outcome": "crashed"}
    assert "killed by SIGKILL\nsegfault here" == runs.list_runs(conn, t["id"])["runs"][-1]["error"]
    # sticky: only an unblock ends it, and that resets the breaker
    res = w(conn, tasks.unblock, now, [t["id"]])
    assert res["tasks"][0]["status"] == "ready" and res["tasks"][0]["consecutive_failures"] == 0


def test_worker_block_and_operator_block_survive_the_exit(conn):
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    w(conn, tasks.block, NOW + 2, [t["id"]], "need creds", run=r)
    assert row(conn, t["id"])["current_run"] == r  # the worker still holds its token until it exits
    assert w(conn, runs.exited, NOW + 3, cfg(), r, exit_code=0)["outcome"] == "blocked"
    tr = row(conn, t["id"])
    assert (tr["status"], tr["current_run"], tr["consecutive_failures"]) == ("blocked", None, 0)

    u = mk(conn, "u")
    r = start_run(conn, u["id"])
    w(conn, tasks.block, NOW + 2, [u["id"]], "stop it")
    ev = events(conn, u["id"], "blocked")[-1]
    assert ev["payload"]["kill_run"] == r and ev["payload"]["by"] == "operator"
    assert row(conn, u["id"])["current_run"] is None
    assert w(conn, runs.exited, NOW + 3, cfg(), r, exit_code=None, signal=15)["outcome"] == "cancelled"
    assert (status(conn, u["id"]), row(conn, u["id"])["consecutive_failures"]) == ("blocked", 0)


def test_archive_running_task_cancels_its_run(conn):
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    w(conn, tasks.archive, NOW + 2, [t["id"]])
    assert events(conn, t["id"], "archived")[0]["payload"]["kill_run"] == r
    assert w(conn, runs.exited, NOW + 3, cfg(), r, signal=15)["outcome"] == "cancelled"
    assert status(conn, t["id"]) == "archived"


def test_requeue_with_a_parent_linked_meanwhile_lands_in_todo(conn):
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    p = mk(conn, "late parent")
    assert w(conn, tasks.link, NOW + 2, p["id"], t["id"])["child_status"] == "running"
    w(conn, runs.exited, NOW + 3, cfg(), r, exit_code=1)
    assert status(conn, t["id"]) == "todo", "a requeued task with an open parent must wait in todo"
    w(conn, tasks.complete, NOW + 4, [p["id"]])
    assert status(conn, t["id"]) == "ready"


def test_spawn_failed_and_lost_errors(conn):
    t = mk(conn, "t")
    r = start_run(conn, t["id"])
    assert w(conn, runs.exited, NOW, cfg(), r, spawn_error="exec: no such file")["outcome"] == "spawn_failed"
    assert runs.get_run(conn, r)["error"] == "exec: no such file"
    r = start_run(conn, t["id"])
    assert w(conn, runs.exited, NOW, cfg(), r, lost="start time mismatch")["outcome"] == "lost"
    assert runs.get_run(conn, r)["error"] == "start time mismatch"
    assert row(conn, t["id"])["consecutive_failures"] == 1  # lost does not count
    refused(conn, "not_found", runs.exited, NOW, cfg(), "r_000000000000", exit_code=0)


# ---- database, migrations ----------------------------------------------------------------


def test_connection_settings(conn):
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.BUSY_TIMEOUT_MS
    with pytest.raises(sqlite3.IntegrityError):
        with db.write(conn):
            conn.execute("INSERT INTO links (parent, child) VALUES ('t_nope', 't_none')")


def test_write_and_savepoint(conn):
    with pytest.raises(ValueError):
        with db.write(conn):
            tasks.create(conn, NOW, title="gone")
            raise ValueError
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    assert not conn.in_transaction
    with db.write(conn):
        tasks.create(conn, NOW, title="kept")
        with pytest.raises(RPCError):
            with db.savepoint(conn):
                tasks.create(conn, NOW, title="inner")
                tasks.create(conn, NOW, title="bad", parents=["t_00000000"])
    assert [r[0] for r in conn.execute("SELECT title FROM tasks")] == ["kept"]


@pytest.mark.parametrize("prepare", ["zero_bytes", "user_version_0"])
def test_migrates_from_version_0(tmp_path, prepare):
    path = tmp_path / "old.db"
    if prepare == "zero_bytes":
        path.write_bytes(b"")
    else:
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA user_version=0")
        raw.execute("CREATE TABLE unrelated (x)")
        raw.commit()
        raw.close()
    c = db.connect(path)
    assert db.version(c) == db.SCHEMA_VERSION >= 1
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tasks", "links", "runs", "comments", "events", "subscriptions", "sinks"} <= names
    mk(c, "works")
    assert db.migrate(c) == db.SCHEMA_VERSION  # already current: no-op
    c.close()
    c = db.connect(path)
    assert c.execute("SELECT title FROM tasks").fetchone()[0] == "works"
    c.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        db.connect(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION + 1
    raw.close()


def test_older_db_upgrades_in_place_and_a_failed_migration_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "b.db"
    c = db.connect(path)
    t = mk(c, "survivor")
    c.close()
    v = db.SCHEMA_VERSION
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS + ("CREATE TABLE extra (x); CREATE TABLE broken (;",))
    monkeypatch.setattr(db, "SCHEMA_VERSION", v + 1)
    with pytest.raises(sqlite3.Error):
        db.connect(path)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == v
    assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name='extra'").fetchone()[0] == 0
    raw.close()
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:v] + ("ALTER TABLE tasks ADD COLUMN note TEXT",))
    c = db.connect(path)
    assert db.version(c) == v + 1
    assert c.execute("SELECT title, note FROM tasks WHERE id=?", (t["id"],)).fetchone()[:] == ("survivor", None)
    c.close()


@pytest.mark.parametrize("value", ["0", "0s", "400d", "99999999999d"])
def test_max_runtime_must_be_a_real_limit(conn, value):
    with pytest.raises(RPCError) as exc:
        w(conn, tasks.create, NOW, title="t", max_runtime=value)
    assert exc.value.name == "invalid_params" and exc.value.data["field"] == "max_runtime"
