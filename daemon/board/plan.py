"""Dispatch decisions: which ready tasks start now, and why the others wait.

Runs in: the dispatcher and unit tests.

:func:`candidates` is the hot path of every dispatch pass: it only reads as
many ready tasks per profile as there are free slots, through the
``tasks_dispatch`` index, so a pass costs the same with 10 or 100k ready
tasks. :func:`explain` is the slow, complete form behind ``kanban plan``.
"""

from __future__ import annotations

import sqlite3
from typing import Any


_READY_COLS = "id, title, assignee, priority, created_at, cooldown_until, consecutive_failures, max_retries"


def running_counts(conn: sqlite3.Connection) -> tuple[int, dict[str, int]]:
    by: dict[str, int] = {}
    for a, n in conn.execute("SELECT assignee, count(*) FROM tasks WHERE status='running' GROUP BY assignee"):
        by[a] = n
    return sum(by.values()), by


def candidates(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Ready tasks to claim now, in dispatch order (priority, then age), within every cap."""
    d = cfg["dispatch"]
    total, by = running_counts(conn)
    free = d["max_in_progress"] - total
    if free <= 0:
        return []
    picked: list[dict[str, Any]] = []
    default = d["default_assignee"]
    for name, prof in cfg["profiles"].items():
        cap = prof["max_in_progress"]
        slots = free if cap is None else min(free, cap - by.get(name, 0))
        if slots <= 0:
            continue
        rows = conn.execute(
            f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' AND assignee=? "
            "AND (cooldown_until IS NULL OR cooldown_until <= ?) ORDER BY priority DESC, created_at LIMIT ?",
            (name, now, slots)).fetchall()
        if name == default:
            rows += conn.execute(
                f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' AND assignee IS NULL "
                "AND (cooldown_until IS NULL OR cooldown_until <= ?) ORDER BY priority DESC, created_at LIMIT ?",
                (now, slots)).fetchall()
            rows.sort(key=lambda r: (-r["priority"], r["created_at"]))
            rows = rows[:slots]
        picked += [{**dict(r), "profile": name} for r in rows]
    picked.sort(key=lambda r: (-r["priority"], r["created_at"]))
    return picked[:free]


def unprofiled(conn: sqlite3.Connection, cfg: dict[str, Any]) -> list[sqlite3.Row]:
    """Ready tasks whose assignee has no profile and that have not been noted yet."""
    names = list(cfg["profiles"])
    marks = ",".join("?" * len(names))
    clause = f"AND assignee NOT IN ({marks})" if names else ""
    return conn.execute(
        f"SELECT id, assignee FROM tasks WHERE status='ready' AND assignee IS NOT NULL {clause} "
        "AND (skip_noted IS NULL OR skip_noted != assignee)", names).fetchall()


def next_wake(conn: sqlite3.Connection, now: float) -> float | None:
    """The earliest future time a time-based rule fires (cooldowns, claim expiry)."""
    row = conn.execute("SELECT min(cooldown_until) FROM tasks WHERE status='ready' AND cooldown_until > ?",
                       (now,)).fetchone()
    row2 = conn.execute("SELECT min(claim_expires) FROM runs WHERE state != 'ended' AND kill_reason IS NULL"
                        ).fetchone()
    times = [t for t in (row[0], row2[0]) if t is not None]
    return min(times) if times else None


def explain(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], limit: int = 500) -> list[dict[str, Any]]:
    """For every ready task (up to ``limit``), whether it starts now and why or why not."""
    d = cfg["dispatch"]
    total, by = running_counts(conn)
    by = dict(by)
    out = []
    rows = conn.execute(f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' "
                        "ORDER BY priority DESC, created_at LIMIT ?", (limit,)).fetchall()
    for r in rows:
        assignee = r["assignee"] or d["default_assignee"]
        limit_n = r["max_retries"] if r["max_retries"] is not None else d["failure_limit"]
        item = {"task": r["id"], "title": r["title"], "assignee": assignee, "priority": r["priority"],
                "failures": r["consecutive_failures"], "failure_limit": limit_n}
        prof = cfg["profiles"].get(assignee) if assignee else None
        if assignee is None:
            item.update(decision="skip", reason="unassigned and no dispatch.default_assignee")
        elif prof is None:
            item.update(decision="skip", reason=f"no profile for assignee {assignee!r}")
        elif r["cooldown_until"] and r["cooldown_until"] > now:
            item.update(decision="wait", reason=f"rate-limit cooldown, {r['cooldown_until'] - now:.0f}s left")
        elif total >= d["max_in_progress"]:
            item.update(decision="wait", reason=f"global cap reached ({total}/{d['max_in_progress']})")
        elif prof["max_in_progress"] is not None and by.get(assignee, 0) >= prof["max_in_progress"]:
            item.update(decision="wait", reason=f"profile cap reached ({by.get(assignee, 0)}/"
                                                f"{prof['max_in_progress']} for {assignee})")
        else:
            reason = "starts now"
            if r["consecutive_failures"]:
                reason += f" (breaker: {r['consecutive_failures']}/{limit_n} failures so far)"
            if not r["assignee"]:
                reason += f" (via default_assignee {assignee})"
            item.update(decision="start", reason=reason)
            total += 1
            by[assignee] = by.get(assignee, 0) + 1
        out.append(item)
    return out
