"""Scheduled start: due times, the ``schedule`` move, and waking tasks when they are due.

Runs in: the dispatcher (its handlers and its tick) and unit tests.

A scheduled task has status ``scheduled`` and ``due_at`` (epoch seconds, UTC).
When that time comes the dispatcher moves it ``due`` -> ``ready`` (or ``todo``
while a parent is open). It does not wait for its periodic tick:
:func:`daemon.board.plan.next_wake` includes the earliest ``due_at``, and the
dispatcher re-arms its wake-up after every write.

Wire format of a due time (``task.create``, ``task.schedule``), validated here,
on the server:

- ``at``: an ISO 8601 string (``2026-12-01T02:00``, ``2026-12-01 02:00:00+01:00``,
  ``2026-12-01T01:00Z``, ``2026-12-01``). A time without an offset is in the
  daemon's local time zone; the ``kanban`` client adds the caller's own offset
  before sending, so on the command line it is the user's local time.
- ``in``: a duration from now: ``45m``, ``2h``, ``1d``, ``90s``, ``1h30m``, or
  plain seconds (``90``).

A due time that is not after now, or that does not parse, is ``invalid_params``
naming the value.
"""

from __future__ import annotations

import datetime
import re
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.I)
_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_in(value: str) -> float:
    """A delay such as ``45m``, ``2h``, ``1d``, ``1h30m`` or ``90`` (seconds), in seconds.

    Raises:
        RPCError: ``invalid_params`` (field ``in``) naming the value, if it does not parse or is not positive.
    """
    text = value.strip().replace(" ", "")
    pos, total, parts, bare = 0, 0.0, 0, False
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m or m.end() == pos:
            break
        total += float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
        parts, bare, pos = parts + 1, bare or not m.group(2), m.end()
    if not text or pos != len(text) or (bare and parts > 1):  # "1h30" is ambiguous: say 1h30m
        raise RPCError("invalid_params", f"--in {value!r}: not a duration (use e.g. 45m, 2h, 1d, 1h30m)",
                       field="in", value=value)
    if total <= 0:
        raise RPCError("invalid_params", f"--in {value!r}: the delay must be more than zero", field="in",
                       value=value)
    return total


def parse_at(value: str) -> float:
    """An ISO 8601 date or date-time as epoch seconds; no offset means the daemon's local time zone.

    Raises:
        RPCError: ``invalid_params`` (field ``at``) naming the value, if it does not parse.
    """
    try:
        dt = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise RPCError("invalid_params", f"--at {value!r}: not an ISO 8601 time (use e.g. 2026-12-01T02:00 "
                       "or 2026-12-01T02:00+01:00)", field="at", value=value) from None
    return dt.timestamp()  # a naive datetime is taken as local time


def due_time(now: float, at: str | None = None, delay: str | None = None) -> float | None:
    """The due time asked for by ``at`` or ``in`` (``delay``), or None if neither was given.

    Raises:
        RPCError: ``invalid_params`` if both are given, one does not parse, or the time is not in the future.
    """
    if at is not None and delay is not None:
        raise RPCError("invalid_params", "give --at or --in, not both", field="at")
    if delay is not None:
        return now + parse_in(delay)
    if at is None:
        return None
    due = parse_at(at)
    if due <= now:
        when = datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds")
        raise RPCError("invalid_params", f"--at {at!r} is in the past (it is now {when})", field="at", value=at)
    return due


def schedule(conn: sqlite3.Connection, now: float, task_id: str, due_at: float) -> dict[str, Any]:
    """Make the task wait in ``scheduled`` until ``due_at`` (epoch seconds); rescheduling moves the time.

    Raises:
        RPCError: ``illegal_transition`` unless the task is triage, todo, ready or scheduled.
    """
    row = tasks.get(conn, task_id)
    tasks.set_status(conn, now, row, "schedule", due_at=due_at)
    tasks.emit(conn, now, "scheduled", task_id, due_at=due_at, previous=row["status"],
               previous_due_at=row["due_at"])
    return tasks.task_dict(conn, task_id)


def wake_due(conn: sqlite3.Connection, now: float) -> list[str]:
    """Move every scheduled task whose time has come to ready (or todo); returns their ids."""
    woke = []
    for row in conn.execute(f"SELECT {tasks.TASK_COLUMNS} FROM tasks WHERE status='scheduled' AND due_at <= ? "
                            "ORDER BY due_at", (now,)).fetchall():
        status = tasks.set_status(conn, now, row, "due")
        tasks.emit(conn, now, "due", row["id"], status=status, due_at=row["due_at"],
                   late=max(0.0, now - row["due_at"]))
        woke.append(row["id"])
    return woke


def any_due(conn: sqlite3.Connection, now: float) -> bool:
    """Whether a scheduled task is due (a read, so that an idle tick writes nothing)."""
    return conn.execute("SELECT 1 FROM tasks WHERE status='scheduled' AND due_at <= ? LIMIT 1",
                        (now,)).fetchone() is not None


def next_due(conn: sqlite3.Connection, now: float) -> float | None:
    """The earliest future due time (epoch seconds), or None."""
    return conn.execute("SELECT min(due_at) FROM tasks WHERE status='scheduled' AND due_at > ?",
                        (now,)).fetchone()[0]


def listing(conn: sqlite3.Connection, now: float, limit: int = 500) -> list[dict[str, Any]]:
    """Scheduled tasks, soonest first: ``[{task, title, assignee, priority, due_at, due_in}]`` (seconds)."""
    return [{"task": r["id"], "title": r["title"], "assignee": r["assignee"], "priority": r["priority"],
             "due_at": r["due_at"], "due_in": None if r["due_at"] is None else r["due_at"] - now}
            for r in conn.execute("SELECT id, title, assignee, priority, due_at FROM tasks WHERE status='scheduled' "
                                  "ORDER BY due_at IS NULL, due_at, priority DESC LIMIT ?", (limit,))]
