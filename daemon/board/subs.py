"""Subscriptions and sink cursors: what the notifier must deliver, durably.

Runs in: the dispatcher (on behalf of the notifier, which never writes the
board itself) and unit tests.

Each sink has a cursor on the event log, advanced only after a delivery
succeeds, so delivery is at-least-once across restarts. A new subscription
or a new sink starts at the current end of the log: history is never replayed.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

DEFAULT_KINDS = ("completed", "blocked", "gave_up", "crashed", "timed_out", "rate_limited")


def _last_event(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def subscribe(conn: sqlite3.Connection, now: float, *, sink: str, task_id: str | None, kinds: list[str] | None,
              descendants: bool = False, assignee: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    sub_id = tasks.new_id("s_")
    after = _last_event(conn)
    conn.execute("INSERT INTO subscriptions (id, sink, task_id, descendants, assignee, tenant, kinds, after_id, "
                 "created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                 (sub_id, sink, task_id, int(descendants), assignee, tenant,
                  json.dumps(kinds) if kinds else None, after, now))
    tasks.emit(conn, now, "subscribed", task_id, subscription=sub_id, sink=sink, kinds=kinds)
    return _sub_dict(conn.execute("SELECT * FROM subscriptions WHERE id=?", (sub_id,)).fetchone())


def _sub_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["kinds"] = json.loads(d["kinds"]) if d["kinds"] else None
    d["descendants"] = bool(d["descendants"])
    return d


def unsubscribe(conn: sqlite3.Connection, now: float, ids: list[str]) -> dict[str, Any]:
    for sub_id in ids:
        if not conn.execute("SELECT 1 FROM subscriptions WHERE id=?", (sub_id,)).fetchone():
            raise RPCError("not_found", f"no subscription {sub_id}", id=sub_id)
    for sub_id in ids:
        conn.execute("DELETE FROM subscriptions WHERE id=?", (sub_id,))
        tasks.emit(conn, now, "unsubscribed", None, subscription=sub_id)
    return {"removed": ids}


def _ensure_sinks(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> None:
    last = _last_event(conn)
    for name in cfg["sinks"]:
        conn.execute("INSERT OR IGNORE INTO sinks (name, cursor, updated_at) VALUES (?,?,?)", (name, last, now))


def sink_state(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM sinks WHERE name=?", (name,)).fetchone()
    if row is None:
        raise RPCError("not_found", f"no sink {name!r} on the board", id=name)
    d = dict(row)
    d["paused"] = bool(d["paused"])
    d["lag"] = _last_event(conn) - d["cursor"]
    return d


def attach(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> dict[str, Any]:
    _ensure_sinks(conn, now, cfg)
    return {"sinks": {name: sink_state(conn, name) for name in cfg["sinks"]}, "last_id": _last_event(conn)}


def list_all(conn: sqlite3.Connection, cfg: dict[str, Any]) -> dict[str, Any]:
    subs = [_sub_dict(r) for r in conn.execute("SELECT * FROM subscriptions ORDER BY created_at, id")]
    sinks = []
    for name, sink in cfg["sinks"].items():
        row = conn.execute("SELECT 1 FROM sinks WHERE name=?", (name,)).fetchone()
        state = sink_state(conn, name) if row else {"name": name, "cursor": None, "paused": False, "failures": 0}
        sinks.append({**state, "type": sink["type"]})
    return {"subscriptions": subs, "sinks": sinks}


def ack(conn: sqlite3.Connection, now: float, sink: str, *, cursor: int | None, failed: bool,
        error: str | None, paused: bool) -> dict[str, Any]:
    state = sink_state(conn, sink)
    if cursor is not None and cursor > state["cursor"]:
        conn.execute("UPDATE sinks SET cursor=?, updated_at=? WHERE name=?", (cursor, now, sink))
    if failed:
        conn.execute("UPDATE sinks SET failures=failures+1, last_error=?, updated_at=? WHERE name=?",
                     (error, now, sink))
    elif cursor is not None:
        conn.execute("UPDATE sinks SET failures=0, last_error=NULL WHERE name=?", (sink,))
    if paused and not state["paused"]:
        conn.execute("UPDATE sinks SET paused=1 WHERE name=?", (sink,))
        tasks.emit(conn, now, "sink_paused", None, sink=sink, error=error)
    return sink_state(conn, sink)


def resume(conn: sqlite3.Connection, now: float, sink: str) -> dict[str, Any]:
    sink_state(conn, sink)
    conn.execute("UPDATE sinks SET paused=0, failures=0, updated_at=? WHERE name=?", (now, sink))
    tasks.emit(conn, now, "sink_resumed", None, sink=sink)
    return sink_state(conn, sink)


def _descendants(conn: sqlite3.Connection, root: str) -> set[str]:
    rows = conn.execute("WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT l.child FROM links l JOIN d ON l.parent=d.id) "
                        "SELECT id FROM d", (root,))
    return {r[0] for r in rows}


def pending(conn: sqlite3.Connection, cfg: dict[str, Any], sink: str, limit: int) -> dict[str, Any]:
    """Events after the sink's cursor that match the sink's subscriptions (or all, for ``all`` sinks).

    Returns ``events`` (each with ``subscriptions``, the matching ids) and
    ``scanned_to``: the cursor may move there once the events are delivered.
    """
    state = sink_state(conn, sink)
    spec = cfg["sinks"][sink]
    sink_kinds = set(spec["kinds"] or DEFAULT_KINDS)
    subs = [_sub_dict(r) for r in conn.execute("SELECT * FROM subscriptions WHERE sink=?", (sink,))]
    trees = {s["id"]: _descendants(conn, s["task_id"]) for s in subs if s["task_id"] and s["descendants"]}
    rows = conn.execute(
        "SELECT e.id, e.task_id, e.run_id, e.kind, e.payload, e.at, t.title, t.assignee, t.tenant, t.summary "
        "FROM events e LEFT JOIN tasks t ON t.id=e.task_id WHERE e.id>? ORDER BY e.id LIMIT ?",
        (state["cursor"], limit)).fetchall()
    out = []
    for r in rows:
        matched = []
        if spec["all"] and r["kind"] in sink_kinds:
            matched.append("*")
        for s in subs:
            if r["id"] <= s["after_id"] or r["kind"] not in (set(s["kinds"]) if s["kinds"] else sink_kinds):
                continue
            if s["task_id"] and r["task_id"] != s["task_id"] and r["task_id"] not in trees.get(s["id"], ()):
                continue
            if s["assignee"] and r["assignee"] != s["assignee"]:
                continue
            if s["tenant"] and r["tenant"] != s["tenant"]:
                continue
            matched.append(s["id"])
        if matched:
            ev = tasks.event_dict(r)
            ev["subscriptions"] = matched
            out.append(ev)
    scanned = rows[-1]["id"] if rows else state["cursor"]
    return {"events": out, "scanned_to": scanned, "cursor": state["cursor"], "paused": state["paused"]}
