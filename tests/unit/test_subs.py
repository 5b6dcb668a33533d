"""The subscription kernel (real SQLite file) and the notifier's pure helpers."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from client.protocol import RPCError
from daemon import config, notifier, sinks
from daemon.board import db as boarddb
from daemon.board import subs, tasks


@pytest.fixture
def conn(tmp_path):
    c = boarddb.connect(tmp_path / "board.db")
    yield c
    c.close()


def cfg(**sinks_):
    c = config.defaults()
    for name, spec in sinks_.items():
        c["sinks"][name] = {**{k: f.default for k, f in config.SINK.items()}, **spec}
    return c


CFG = cfg(hook={"type": "command", "command": ["x"]}, every={"type": "command", "command": ["x"], "all": True},
          narrow={"type": "command", "command": ["x"], "all": True, "kinds": ["commented"]})


def new(conn, title, **kw):
    with boarddb.write(conn):
        return tasks.create(conn, 1.0, title=title, **kw)[0]["id"]


def w(conn, fn, *args, **kw):
    with boarddb.write(conn):
        return fn(conn, 2.0, *args, **kw)


def pending(conn, sink, limit=100):
    return subs.pending(conn, CFG, sink, limit)


def kinds_of(p):
    return [(e["task_id"], e["kind"]) for e in p["events"]]


def attach(conn):
    with boarddb.write(conn):
        return subs.attach(conn, 1.0, CFG)


def test_new_sink_and_new_subscription_never_replay_history(conn):
    old = new(conn, "old")
    w(conn, tasks.complete, [old])
    st = attach(conn)
    assert st["sinks"]["every"]["cursor"] == st["last_id"] and st["sinks"]["every"]["lag"] == 0
    assert pending(conn, "every")["events"] == []
    t = new(conn, "t")
    sub = w(conn, subs.subscribe, sink="hook", task_id=old, kinds=["completed", "commented"])
    w(conn, tasks.comment, old, "after the subscription")
    w(conn, tasks.complete, [t])
    assert kinds_of(pending(conn, "hook")) == [(old, "commented")]
    assert pending(conn, "hook")["events"][0]["subscriptions"] == [sub["id"]]
    assert kinds_of(pending(conn, "every")) == [(t, "completed")]


def test_filters_descendants_and_sink_kinds(conn):
    attach(conn)
    root = new(conn, "root", assignee="ann")
    child = new(conn, "child", parents=[root])
    grandchild = new(conn, "grandchild", parents=[child])
    other = new(conn, "other", assignee="bob", tenant="acme")
    tree = w(conn, subs.subscribe, sink="hook", task_id=root, kinds=None, descendants=True)
    only = w(conn, subs.subscribe, sink="hook", task_id=child, kinds=["blocked"])
    by_bob = w(conn, subs.subscribe, sink="hook", task_id=None, kinds=None, assignee="bob")
    by_tenant = w(conn, subs.subscribe, sink="hook", task_id=None, kinds=["commented"], tenant="acme")
    w(conn, tasks.block, [grandchild], "stuck")
    w(conn, tasks.block, [child], "stuck")
    w(conn, tasks.comment, other, "hi")
    w(conn, tasks.complete, [other])
    w(conn, tasks.comment, root, "not a default kind")
    p = pending(conn, "hook")
    assert kinds_of(p) == [(grandchild, "blocked"), (child, "blocked"), (other, "commented"),
                           (other, "completed")]
    assert [sorted(e["subscriptions"]) for e in p["events"]] == [[tree["id"]], sorted([tree["id"], only["id"]]),
                                                         [by_tenant["id"]], [by_bob["id"]]]
    assert p["scanned_to"] == subs._last_event(conn)
    ev = p["events"][3]
    assert (ev["title"], ev["assignee"], ev["tenant"]) == ("other", "bob", "acme")
    assert kinds_of(pending(conn, "narrow")) == [(other, "commented"), (root, "commented")]


def test_limit_scans_in_slices_and_cursor_only_moves_forward(conn):
    attach(conn)
    ids = [new(conn, f"t{i}") for i in range(5)]
    for t in ids:
        w(conn, tasks.complete, [t])
    first = pending(conn, "every", limit=6)
    assert kinds_of(first) == [(ids[0], "completed")]  # 5 created + 1 completed scanned
    st = w(conn, subs.ack, "every", cursor=first["scanned_to"], failed=False, error=None, paused=False)
    assert st["cursor"] == first["scanned_to"]
    w(conn, subs.ack, "every", cursor=1, failed=False, error=None, paused=False)
    assert subs.sink_state(conn, "every")["cursor"] == first["scanned_to"]
    assert kinds_of(pending(conn, "every")) == [(t, "completed") for t in ids[1:]]


def test_failures_pause_once_and_resume_resets(conn):
    attach(conn)
    for i in range(2):
        st = w(conn, subs.ack, "hook", cursor=None, failed=True, error=f"boom {i}", paused=False)
    assert st["failures"] == 2 and st["last_error"] == "boom 1" and not st["paused"]
    st = w(conn, subs.ack, "hook", cursor=None, failed=True, error="boom 2", paused=True)
    assert st["paused"] and st["failures"] == 3
    w(conn, subs.ack, "hook", cursor=None, failed=True, error="again", paused=True)
    paused = [e for e in tasks.events_since(conn)["events"] if e["kind"] == "sink_paused"]
    assert len(paused) == 1 and paused[0]["payload"] == {"sink": "hook", "error": "boom 2", "failures": 3}
    assert pending(conn, "hook")["paused"]
    st = w(conn, subs.resume, "hook")
    assert not st["paused"] and st["failures"] == 0 and st["last_error"] is None and st["was_paused"]
    assert tasks.events_since(conn)["events"][-1]["kind"] == "sink_resumed"


def test_success_resets_failures_and_keeps_a_warning(conn):
    attach(conn)
    w(conn, subs.ack, "hook", cursor=None, failed=True, error="boom", paused=False)
    st = w(conn, subs.ack, "hook", cursor=subs._last_event(conn), failed=False, error="notify-send missing",
           paused=False)
    assert st["failures"] == 0 and st["last_error"] == "notify-send missing"


def test_subscribe_validates_and_is_idempotent(conn):
    attach(conn)
    t = new(conn, "t")
    a = w(conn, subs.subscribe, sink="hook", task_id=t, kinds=["completed", "blocked"])
    b = w(conn, subs.subscribe, sink="hook", task_id=t, kinds=["blocked", "completed", "blocked"])
    assert a["created"] and not b["created"] and a["id"] == b["id"] and b["kinds"] == ["blocked", "completed"]
    with pytest.raises(RPCError) as exc:
        w(conn, subs.subscribe, sink="hook", task_id=t, kinds=["Completed!"])
    assert exc.value.name == "invalid_params" and exc.value.data["field"] == "kinds"
    with pytest.raises(RPCError) as exc:
        w(conn, subs.subscribe, sink="hook", task_id=None, kinds=None, descendants=True)
    assert exc.value.name == "invalid_params"
    with pytest.raises(RPCError) as exc:
        w(conn, subs.subscribe, sink="hook", task_id="t_nope", kinds=None)
    assert exc.value.name == "not_found"
    w(conn, tasks.archive, [t])
    assert subs.list_all(conn, CFG)["subscriptions"] == []  # archiving removed it
    with pytest.raises(RPCError) as exc:
        w(conn, subs.subscribe, sink="hook", task_id=t, kinds=None)
    assert exc.value.name == "conflict"
    with pytest.raises(RPCError) as exc:
        w(conn, subs.unsubscribe, ["s_nope"])
    assert exc.value.name == "not_found" and exc.value.data["id"] == "s_nope"


def test_list_reports_unattached_sinks(conn):
    listed = subs.list_all(conn, CFG)
    assert [s["name"] for s in listed["sinks"]] == ["hook", "every", "narrow"]
    assert listed["sinks"][0]["cursor"] is None and listed["sinks"][0]["kinds"] == list(subs.DEFAULT_KINDS)
    attach(conn)
    assert subs.list_all(conn, CFG)["sinks"][0]["cursor"] == subs._last_event(conn)


# ---- pure helpers -------------------------------------------------------------------


def test_retry_delay_is_exponential_capped_and_jittered():
    assert notifier.retry_delay(0, 1.0, 10.0) == 0.0
    assert [notifier.retry_delay(n, 1.0, 10.0, rand=lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert notifier.retry_delay(3, 1.0, 10.0, rand=lambda: 0.0) == 2.0
    assert notifier.retry_delay(10_000, 0.05, 300.0, rand=lambda: 1.0) == 300.0


EVENT = {"id": 42, "kind": "blocked", "task_id": "t_1", "run_id": None, "at": 5.0, "title": "Fix {kind} bug",
         "assignee": "a", "tenant": None, "payload": {"reason": "needs a key\nmore"}, "subscriptions": ["s_1"]}


def test_document_placeholders_and_summary():
    doc = sinks.document("hook", EVENT)
    assert doc["id"] == 42 and doc["sink"] == "hook" and doc["summary"] == "needs a key"
    argv = sinks.expand(["x", "{task_id}:{kind}", "{title}", "{summary}", "{event_id}", "{other}"], doc)
    assert argv == ["x", "t_1:blocked", "Fix {kind} bug", "needs a key", "42", "{other}"]  # no re-expansion
    gave_up = {**EVENT, "kind": "gave_up", "payload": {"failures": 2, "outcome": "crashed"}}
    assert sinks.describe(gave_up) == "gave up after 2 consecutive failures (last: crashed)"
    assert sinks.describe({**EVENT, "payload": {}}) == ""


def test_signature_is_hmac_sha256_of_the_body():
    body = json.dumps(sinks.document("w", EVENT)).encode()
    assert sinks.signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_archive_ends_subscriptions_without_losing_undelivered_events(conn):
    attach(conn)
    t = new(conn, "watched")
    sub = w(conn, subs.subscribe, sink="hook", task_id=t, kinds=["commented", "archived"])
    w(conn, tasks.comment, t, "before the archive")       # the sink has not delivered this yet
    w(conn, tasks.archive, [t])
    w(conn, tasks.comment, t, "after the archive")        # past the subscription's end
    assert subs.list_all(conn, CFG)["subscriptions"] == []  # ended: no longer listed
    p = pending(conn, "hook")
    assert [e["kind"] for e in p["events"]] == ["commented", "archived"]
    assert all(e["subscriptions"] == [sub["id"]] for e in p["events"])
    with boarddb.write(conn):
        subs.ack(conn, 3.0, "hook", cursor=p["events"][0]["id"], failed=False, error=None, paused=False)
    assert conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0] == 1  # still owed the archive
    with boarddb.write(conn):
        subs.ack(conn, 3.0, "hook", cursor=p["scanned_to"], failed=False, error=None, paused=False)
    assert conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0] == 0  # pruned once delivered
