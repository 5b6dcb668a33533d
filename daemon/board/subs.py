"""Subscriptions and sink cursors: what the notifier must deliver, durably.

Runs in: the dispatcher (on behalf of the notifier, which never writes the
board itself) and unit tests.

A subscription ties a sink to a task (optionally with its descendants) or to
a filter (assignee, tenant, event kinds). Each sink has a cursor on the event
log, advanced only after a delivery succeeds, so delivery is at-least-once
across restarts. A new subscription or a new sink starts at the current end of
the log (``after_id``, the sink row's initial cursor): history is never
replayed. A sink with ``all: true`` gets every event of its kinds without a
subscription.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

DEFAULT_KINDS = ("completed", "blocked", "gave_up", "crashed", "timed_out", "rate_limited", "verify_failed",
                 "review_requested")
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_CHUNK = 500  # ids per IN (...) clause


def _last_event(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]


def _sub_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["kinds"] = json.loads(d["kinds"]) if d["kinds"] else None
    d["descendants"] = bool(d["descendants"])
    return d


def subscribe(conn: sqlite3.Connection, now: float, *, sink: str, task_id: str | None, kinds: list[str] | None,
              descendants: bool = False, assignee: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    """Subscribe ``sink`` to a task's events or to a filter, from now on.

    An identical subscription is returned as is (``created`` false), so
    repeating a subscribe is harmless.

    Raises:
        RPCError: ``invalid_params`` for a malformed kind or ``--descendants``
            without a task; ``not_found``/``conflict`` for a missing or
            archived task.
    """
    if kinds:
        kinds = list(dict.fromkeys(kinds))
        bad = [k for k in kinds if not _KIND.match(k)]
        if bad:
            raise RPCError("invalid_params", f"event kind {bad[0]!r} is not a kind name (e.g. completed, blocked)",
                           field="kinds")
    if descendants and not task_id:
        raise RPCError("invalid_params", "--descendants needs a task id", field="descendants")
    if task_id:
        row = tasks.get(conn, task_id)
        if row["status"] == "archived":
            raise RPCError("conflict", f"task {task_id} is archived; it will have no more events", id=task_id)
    kinds_json = json.dumps(sorted(kinds)) if kinds else None
    same = conn.execute(
        "SELECT * FROM subscriptions WHERE sink=? AND task_id IS ? AND descendants=? AND assignee IS ? "
        "AND tenant IS ? AND kinds IS ? AND until_id IS NULL", (sink, task_id, int(descendants), assignee, tenant, kinds_json)).fetchone()
    if same is not None:
        return {**_sub_dict(same), "created": False}
    sub_id = tasks.new_id("s_")
    after = _last_event(conn)
    conn.execute("INSERT INTO subscriptions (id, sink, task_id, descendants, assignee, tenant, kinds, after_id, "
                 "created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                 (sub_id, sink, task_id, int(descendants), assignee, tenant, kinds_json, after, now))
    tasks.emit(conn, now, "subscribed", task_id, subscription=sub_id, sink=sink, kinds=kinds,
               descendants=descendants, assignee=assignee, tenant=tenant)
    return {**_sub_dict(conn.execute("SELECT * FROM subscriptions WHERE id=?", (sub_id,)).fetchone()),
            "created": True}


def unsubscribe(conn: sqlite3.Connection, now: float, ids: list[str]) -> dict[str, Any]:
    rows = []
    for sub_id in ids:
        row = conn.execute("SELECT * FROM subscriptions WHERE id=?", (sub_id,)).fetchone()
        if row is None:
            raise RPCError("not_found", f"no subscription {sub_id}", id=sub_id)
        rows.append(row)
    for row in rows:
        conn.execute("DELETE FROM subscriptions WHERE id=?", (row["id"],))
        tasks.emit(conn, now, "unsubscribed", row["task_id"], subscription=row["id"], sink=row["sink"])
    return {"removed": ids}


def _ensure_sinks(conn: sqlite3.Connection, now: float, names: list[str]) -> None:
    """A sink first seen starts at the end of the log: it never replays history."""
    last = _last_event(conn)
    for name in names:
        conn.execute("INSERT OR IGNORE INTO sinks (name, cursor, updated_at) VALUES (?,?,?)", (name, last, now))


def sink_state(conn: sqlite3.Connection, name: str, last: int | None = None) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM sinks WHERE name=?", (name,)).fetchone()
    if row is None:
        raise RPCError("not_found", f"no sink {name!r} on the board", id=name)
    d = dict(row)
    d["paused"] = bool(d["paused"])
    d["lag"] = (_last_event(conn) if last is None else last) - d["cursor"]
    return d


def attach(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """The notifier starts: make sure every configured sink has a row; return their states."""
    _ensure_sinks(conn, now, list(cfg["sinks"]))
    last = _last_event(conn)
    return {"sinks": {name: sink_state(conn, name, last) for name in cfg["sinks"]}, "last_id": last}


def list_all(conn: sqlite3.Connection, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every subscription (with its task's title) and every configured sink's state."""
    subs = []
    for r in conn.execute("SELECT s.*, t.title AS task_title FROM subscriptions s LEFT JOIN tasks t "
                          "ON t.id=s.task_id WHERE s.until_id IS NULL ORDER BY s.created_at, s.id"):
        subs.append(_sub_dict(r))
    last = _last_event(conn)
    sinks = []
    for name, sink in cfg["sinks"].items():
        row = conn.execute("SELECT 1 FROM sinks WHERE name=?", (name,)).fetchone()
        state = sink_state(conn, name, last) if row else {
            "name": name, "cursor": None, "paused": False, "failures": 0, "last_error": None, "lag": None}
        sinks.append({**state, "type": sink["type"], "kinds": sink["kinds"] or list(DEFAULT_KINDS),
                      "all": sink["all"]})
    return {"subscriptions": subs, "sinks": sinks, "last_id": last}


def ack(conn: sqlite3.Connection, now: float, sink: str, *, cursor: int | None, failed: bool,
        error: str | None, paused: bool) -> dict[str, Any]:
    """Record a delivery outcome for ``sink``.

    ``cursor`` only ever moves forward. A failure counts one more consecutive
    failure and stores ``error``; a success resets the count and stores
    ``error`` as a standing warning (``None`` clears it). ``paused`` pauses the
    sink and emits ``sink_paused`` (once).
    """
    state = sink_state(conn, sink)
    if cursor is not None and cursor > state["cursor"]:
        conn.execute("UPDATE sinks SET cursor=?, updated_at=? WHERE name=?", (cursor, now, sink))
        conn.execute("DELETE FROM subscriptions WHERE sink=? AND until_id IS NOT NULL AND until_id <= ?",
                     (sink, cursor))
    if failed:
        conn.execute("UPDATE sinks SET failures=failures+1, last_error=?, updated_at=? WHERE name=?",
                     (error, now, sink))
    elif cursor is not None:
        conn.execute("UPDATE sinks SET failures=0, last_error=? WHERE name=?", (error, sink))
    if paused and not state["paused"]:
        failures = conn.execute("SELECT failures FROM sinks WHERE name=?", (sink,)).fetchone()[0]
        conn.execute("UPDATE sinks SET paused=1 WHERE name=?", (sink,))
        tasks.emit(conn, now, "sink_paused", None, sink=sink, error=error, failures=failures)
    return sink_state(conn, sink)


def resume(conn: sqlite3.Connection, now: float, sink: str) -> dict[str, Any]:
    """Unpause a sink and clear its failures; the ``sink_resumed`` event wakes the notifier."""
    _ensure_sinks(conn, now, [sink])
    was = sink_state(conn, sink)
    conn.execute("UPDATE sinks SET paused=0, failures=0, last_error=NULL, updated_at=? WHERE name=?", (now, sink))
    tasks.emit(conn, now, "sink_resumed", None, sink=sink, was_paused=was["paused"])
    return {**sink_state(conn, sink), "was_paused": was["paused"]}


def _lineage(conn: sqlite3.Connection, task_id: str) -> set[str]:
    """The task and all its ancestors."""
    rows = conn.execute("WITH RECURSIVE a(id) AS (SELECT ? UNION SELECT l.parent FROM links l JOIN a "
                        "ON l.child=a.id) SELECT id FROM a", (task_id,))
    return {r[0] for r in rows}


def _candidate_subs(conn: sqlite3.Connection, sink: str, task_ids: set[str]) -> list[dict[str, Any]]:
    """The sink's filter subscriptions plus those on any of ``task_ids``."""
    out = [_sub_dict(r) for r in conn.execute(
        "SELECT * FROM subscriptions WHERE sink=? AND task_id IS NULL", (sink,))]
    ids = sorted(task_ids)
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        out += [_sub_dict(r) for r in conn.execute(
            f"SELECT * FROM subscriptions WHERE sink=? AND task_id IN ({','.join('?' * len(chunk))})",
            (sink, *chunk))]
    return out


def matches(sub: dict[str, Any], ev: dict[str, Any], lineage: set[str], sink_kinds: frozenset[str]) -> bool:
    """Whether one event (with its task's current assignee and tenant) matches one subscription.

    Args:
        sub: The subscription.
        ev: The event row, joined with its task.
        lineage: The event's task and its ancestors (for ``descendants``).
        sink_kinds: The sink's kinds, used when the subscription names none.
    """
    if ev["id"] <= sub["after_id"] or (sub.get("until_id") is not None and ev["id"] > sub["until_id"]):
        return False
    if ev["kind"] not in (sub["kinds"] or sink_kinds):
        return False
    if sub["task_id"]:
        if ev["task_id"] != sub["task_id"] and not (sub["descendants"] and sub["task_id"] in lineage):
            return False
    if sub["assignee"] and ev["assignee"] != sub["assignee"]:
        return False
    if sub["tenant"] and ev["tenant"] != sub["tenant"]:
        return False
    return True


def pending(conn: sqlite3.Connection, cfg: dict[str, Any], sink: str, limit: int) -> dict[str, Any]:
    """Events after the sink's cursor that match its subscriptions (or all of its kinds, for ``all`` sinks).

    Scans at most ``limit`` events. Returns ``events`` (each with
    ``subscriptions``, the matching ids, ``"*"`` for ``all``), ``scanned_to``
    (the cursor may move there once those events are delivered), ``cursor``
    and ``paused``.
    """
    state = sink_state(conn, sink)
    spec = cfg["sinks"][sink]
    sink_kinds = frozenset(spec["kinds"] or DEFAULT_KINDS)
    rows = conn.execute(
        "SELECT e.id, e.task_id, e.run_id, e.kind, e.payload, e.at, t.title, t.assignee, t.tenant "
        "FROM events e LEFT JOIN tasks t ON t.id=e.task_id WHERE e.id>? ORDER BY e.id LIMIT ?",
        (state["cursor"], max(1, limit))).fetchall()
    lineage = {tid: _lineage(conn, tid) for tid in {r["task_id"] for r in rows if r["task_id"]}}
    subs = _candidate_subs(conn, sink, set().union(*lineage.values())) if rows else []
    out = []
    for r in rows:
        matched = ["*"] if spec["all"] and r["kind"] in sink_kinds else []
        line = lineage.get(r["task_id"], set())
        for s in subs:
            if s["task_id"] and s["task_id"] not in line:
                continue
            if matches(s, r, line, sink_kinds):
                matched.append(s["id"])
        if matched:
            ev = tasks.event_dict(r)
            ev["subscriptions"] = matched
            out.append(ev)
    scanned = rows[-1]["id"] if rows else state["cursor"]
    return {"events": out, "scanned_to": scanned, "cursor": state["cursor"], "paused": state["paused"]}
