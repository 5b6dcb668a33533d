"""A worker's context in one read: everything ``kanban context`` gives a prompt.

Runs in: the dispatcher (the ``task.context`` handler) and unit tests.

:func:`build` returns plain data; the Markdown form is rendered on the client
side by :func:`client.context.render_markdown`, so the CLI and any other client
(an MCP server) render it the same way.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from client.context import render_markdown
from daemon.board import attachments as attachment_rows
from daemon.board import tasks

#: How much of a run's recorded error (exit status and log tail) the context carries, in characters.
ERROR_TAIL = 2000


def attachments(conn: sqlite3.Connection, task_id: str, state_dir: str | None = None) -> list[dict[str, Any]]:
    """The task's attachments, for the context: ``[{name, size, path}]`` (see
    :func:`daemon.board.attachments.listing`); empty without ``state_dir``."""
    if state_dir is None:
        return []
    return [{"name": a["name"], "size": a["size"], "path": a["path"]}
            for a in attachment_rows.listing(conn, state_dir, task_id)]


def _parent_metadata(conn: sqlite3.Connection, parent_id: str) -> tuple[Any, str | None]:
    """The metadata and run id of the parent's completing run (the latest run that completed)."""
    row = conn.execute("SELECT id, metadata FROM runs WHERE task_id=? AND outcome='completed' "
                       "ORDER BY claimed_at DESC, rowid DESC LIMIT 1", (parent_id,)).fetchone()
    if row is None:
        return None, None
    return (json.loads(row["metadata"]) if row["metadata"] else None), row["id"]


def build(conn: sqlite3.Connection, task_id: str, state_dir: str | None = None) -> dict[str, Any]:
    """Everything a worker needs about ``task_id``, in one object.

    Args:
        conn: The board.
        task_id: The task.
        state_dir: The daemon's state dir, where attachments are stored (none listed without it).

    Returns:
        ``{task, body, attachments, parents, runs, current_run, comments, history}`` where

        - ``task``: the task object (``task.show``'s), ``body`` its description;
        - ``attachments``: ``[{name, size, path}]`` (see :func:`attachments`);
        - ``parents``: ``[{id, title, status, summary, result, metadata, run}]``: ``metadata`` is the
          JSON object the parent's completing run stored (``kanban complete --metadata``), ``run`` that run;
        - ``runs``: earlier runs of this task, oldest first, the current one left out:
          ``[{id, profile, outcome, exit_code, signal, summary, error_tail, started_at, ended_at}]``;
        - ``current_run``: the run now working on the task, or null;
        - ``comments``: every comment, oldest first, with its author: ``[{id, author, body, created_at}]``
          (operators' comments, verify rejections and review comments alike);
        - ``history``: the times the task was sent back: ``[{kind, at, reason, previous_summary, parent}]``
          for ``reopened``, ``retried`` and ``parent_reopened`` events.

    Raises:
        RPCError: ``not_found`` naming the id.
    """
    row = tasks.get(conn, task_id)
    parents = []
    for p in conn.execute("SELECT t.id, t.title, t.status, t.summary, t.result FROM links l "
                          "JOIN tasks t ON t.id=l.parent WHERE l.child=? ORDER BY t.id", (task_id,)):
        metadata, run = _parent_metadata(conn, p["id"])
        parents.append({**dict(p), "metadata": metadata, "run": run})
    current = row["current_run"] if row["status"] == "running" else None
    runs = []
    for r in conn.execute("SELECT id, profile, outcome, exit_code, signal, summary, error, started_at, ended_at "
                          "FROM runs WHERE task_id=? ORDER BY claimed_at, rowid", (task_id,)):
        if r["id"] == current:
            continue
        d = dict(r)
        err = d.pop("error")
        d["error_tail"] = err[-ERROR_TAIL:] if err else None
        runs.append(d)
    comments = [dict(c) for c in conn.execute(
        "SELECT id, author, body, created_at FROM comments WHERE task_id=? ORDER BY id", (task_id,))]
    history = []
    for e in conn.execute("SELECT kind, payload, at FROM events WHERE task_id=? "
                          "AND kind IN ('reopened', 'retried', 'parent_reopened') ORDER BY id", (task_id,)):
        p = json.loads(e["payload"])
        history.append({"kind": e["kind"], "at": e["at"], "reason": p.get("reason"),
                        "previous_summary": p.get("previous_summary"), "parent": p.get("parent"),
                        "action": p.get("action")})
    task = tasks.to_dict(row, [p["id"] for p in parents])
    return {"task": task, "body": row["body"], "attachments": attachments(conn, task_id, state_dir),
            "parents": parents, "runs": runs, "current_run": current, "comments": comments, "history": history}


def markdown(conn: sqlite3.Connection, task_id: str, state_dir: str | None = None) -> str:
    """The context as ``kanban context`` prints it (Markdown), for a run's ``{context_file}``.

    Raises:
        RPCError: ``not_found`` naming the id.
    """
    return render_markdown(build(conn, task_id, state_dir))
