"""Reopen: send finished work back, and what that means for the tasks built on it.

Runs in: the dispatcher (inside its group-commit transaction) and unit tests.

``kanban reopen ID --reason R`` (the ``reopen`` row) and ``kanban retry ID`` on a
done task (the ``retry`` row) move the task from ``done`` to ``ready``, or to
``todo`` while one of its own parents is open. Its summary and result are
cleared (they stay in the event, and the runs keep theirs). Being open again,
the task holds back what depends on it:

- a direct child in ``ready`` (promoted because this task finished, or filed
  after it) is parked back in ``todo`` (the ``repark`` row);
- a direct child that is ``running`` keeps running: its worker is **not**
  killed. The child is flagged (``parent_reopened``) and gets a
  ``parent_reopened`` event, and the reopen's answer lists it under
  ``running``. While the parent is open its ``kanban complete`` is refused with
  ``conflict`` (as for any child); when its run ends it waits in ``todo``.
  ``kanban kill CHILD`` stops it at once;
- every ``done`` descendant is left done, flagged, and gets a
  ``parent_reopened`` event; ``kanban show`` marks it. With ``cascade`` the done
  descendants are reopened too (each with a ``reopened`` event naming
  ``cascade_from``), and their own ready children are parked in turn;
- children in ``todo``, ``triage``, ``scheduled`` or ``blocked`` already wait;
  they move on to ``todo`` (not ``ready``) while the parent is open.

Archived tasks cannot be reopened: the table has no ``archived --reopen-->`` row
(``illegal_transition``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

#: Keys of the effects a reopen reports, each a list of task ids.
EFFECTS = ("reparked", "running", "flagged", "reopened")


def reopen(conn: sqlite3.Connection, now: float, ids: list[str], reason: str, cascade: bool = False
           ) -> dict[str, Any]:
    """Reopen done tasks (see the module docstring).

    Args:
        conn: The board, inside the caller's transaction.
        now: Epoch seconds.
        ids: Task ids, each ``done``.
        reason: Why (required; recorded in the ``reopened`` event).
        cascade: Reopen done descendants too instead of only flagging them.

    Returns:
        ``{tasks: [task], reparked: [id], running: [id], flagged: [id], reopened: [id]}``; ``reopened``
        lists the descendants reopened by ``cascade``.

    Raises:
        RPCError: ``invalid_params`` without ids or reason; ``not_found``; ``illegal_transition`` unless
            the task is done (an archived task included).
    """
    if not ids:
        raise RPCError("invalid_params", "no task ids given", field="ids")
    if not reason or not reason.strip():
        raise RPCError("invalid_params", "a reopen needs a reason (--reason TEXT)", field="reason")
    effects: dict[str, list[str]] = {k: [] for k in EFFECTS}
    out = []
    for task_id in ids:
        reopen_one(conn, now, tasks.get(conn, task_id), "reopen", reason, effects, cascade=cascade)
        out.append(tasks.task_dict(conn, task_id))
    return {"tasks": out, **effects}


def reopen_one(conn: sqlite3.Connection, now: float, row: sqlite3.Row, move: str, reason: str | None,
               effects: dict[str, list[str]], *, cascade: bool = False, cascade_from: str | None = None
               ) -> str:
    """Move one done task back through ``move`` (``reopen`` or ``retry``) and hold back its dependents.

    Emits ``reopened`` (or ``retried`` for the ``retry`` move) on the task, then one
    ``parent_reopened`` per affected descendant. Appends the affected ids to ``effects``.

    Returns:
        The task's new status.

    Raises:
        RPCError: ``illegal_transition`` if the task is not done.
    """
    task_id = row["id"]
    status = tasks.set_status(conn, now, row, move, summary=None, result=None, block_reason=None,
                              consecutive_failures=0, cooldown_until=None, cooldown_kind=None, current_run=None,
                              parent_reopened=None, skip_noted=None)
    payload: dict[str, Any] = {"reason": reason, "status": status, "previous": row["status"],
                               "previous_summary": row["summary"], "previous_result": row["result"]}
    if cascade_from:
        payload["cascade_from"] = cascade_from
    tasks.emit(conn, now, "retried" if move == "retry" else "reopened", task_id, **payload)
    children = conn.execute(f"SELECT {', '.join('c.' + c.strip() for c in tasks.TASK_COLUMNS.split(','))} "
                            "FROM links l JOIN tasks c ON c.id=l.child WHERE l.parent=? ORDER BY c.id",
                            (task_id,)).fetchall()
    for child in children:
        if child["status"] == "ready":
            tasks.set_status(conn, now, child, "repark")
            tasks.emit(conn, now, "parent_reopened", child["id"], parent=task_id, action="parked", status="todo")
            effects["reparked"].append(child["id"])
        elif child["status"] == "running":
            conn.execute("UPDATE tasks SET parent_reopened=?, updated_at=? WHERE id=?", (task_id, now, child["id"]))
            tasks.emit(conn, now, "parent_reopened", child["id"], child["current_run"], parent=task_id,
                       action="left_running", status="running")
            effects["running"].append(child["id"])
        elif child["status"] == "done" and cascade:
            if child["id"] not in effects["reopened"]:
                effects["reopened"].append(child["id"])
            reopen_one(conn, now, child, "reopen", reason, effects, cascade=True, cascade_from=cascade_from or task_id)
    if not cascade:
        for (desc,) in conn.execute(
                "WITH RECURSIVE d(id) AS (SELECT child FROM links WHERE parent=? "
                "UNION SELECT l.child FROM links l JOIN d ON l.parent=d.id) "
                "SELECT t.id FROM d JOIN tasks t ON t.id=d.id WHERE t.status='done' ORDER BY t.id",
                (task_id,)).fetchall():
            conn.execute("UPDATE tasks SET parent_reopened=?, updated_at=? WHERE id=?", (task_id, now, desc))
            tasks.emit(conn, now, "parent_reopened", desc, parent=task_id, action="flagged", status="done")
            if desc not in effects["flagged"]:
                effects["flagged"].append(desc)
    return status
