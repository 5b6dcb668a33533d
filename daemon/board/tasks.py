"""Task operations: pure functions over an open connection.

Runs in: the dispatcher (inside its group-commit transaction) and unit tests.

Every function takes the connection and ``now`` (injected clock), validates
its input, changes rows through :mod:`daemon.board.transitions`, and appends
one event per mutation. They never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import transitions
from daemon.config import parse_duration

TASK_COLUMNS = ("id, title, body, assignee, status, priority, tenant, created_by, created_at, updated_at, "
                "ready_at, idempotency_key, max_runtime, max_retries, consecutive_failures, result, summary, "
                "block_reason, workspace_kind, workspace_path, current_run, cooldown_until, cooldown_kind, "
                "verify_command, verify_turns, review, verify_rejections")


def new_id(prefix: str, nbytes: int = 4) -> str:
    """``t_`` plus 8 hex characters for tasks; other prefixes for other rows."""
    return prefix + secrets.token_hex(nbytes)


def emit(conn: sqlite3.Connection, now: float, kind: str, task_id: str | None = None,
         run_id: str | None = None, **payload: Any) -> int:
    """Append one event; returns its id."""
    cur = conn.execute("INSERT INTO events (task_id, run_id, kind, payload, at) VALUES (?,?,?,?,?)",
                       (task_id, run_id, kind, json.dumps(payload, separators=(",", ":")), now))
    return cur.lastrowid


def get(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    """The task row, or ``not_found`` naming the id."""
    if not isinstance(task_id, str) or not task_id:
        raise RPCError("invalid_params", "task id must be a non-empty string", field="id")
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
    if row is None:
        raise RPCError("not_found", f"no task {task_id}", id=task_id)
    return row


def to_dict(row: sqlite3.Row, parents: list[str] | None = None) -> dict[str, Any]:
    """A task row as the wire object."""
    d = dict(row)
    d["workspace"] = {"kind": d.pop("workspace_kind"), "path": d.pop("workspace_path")}
    if d.get("verify_command") is not None:
        d["verify_command"] = json.loads(d["verify_command"])
    if d.get("review") is not None:
        d["review"] = bool(d["review"])
    if parents is not None:
        d["parents"] = parents
    return d


def parents_of(conn: sqlite3.Connection, task_id: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT parent FROM links WHERE child=? ORDER BY parent", (task_id,))]


def open_parents(conn: sqlite3.Connection, task_id: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM links l JOIN tasks p ON p.id=l.parent "
        "WHERE l.child=? AND p.status NOT IN ('done','archived')", (task_id,)).fetchone()[0]


def task_dict(conn: sqlite3.Connection, task_id: str) -> dict[str, Any]:
    return to_dict(get(conn, task_id), parents_of(conn, task_id))


def set_status(conn: sqlite3.Connection, now: float, row: sqlite3.Row, move: str, **columns: Any) -> str:
    """Apply ``move`` to the task through the transition table; returns the new status."""
    new = transitions.move(row["id"], row["status"], move, open_parents=open_parents(conn, row["id"]))
    columns["status"] = new
    columns["updated_at"] = now
    if new == "ready" and row["status"] != "ready":
        columns["ready_at"] = now
    if move == "unblock":  # a human looked at it: the verification turns start again
        columns.setdefault("verify_rejections", 0)
    sets = ", ".join(f"{k}=?" for k in columns)
    conn.execute(f"UPDATE tasks SET {sets} WHERE id=?", (*columns.values(), row["id"]))
    return new


def promote_children(conn: sqlite3.Connection, now: float, parent_id: str) -> list[str]:
    """Move every ``todo`` child whose parents are now all closed to ``ready``."""
    promoted = []
    for (child,) in conn.execute(
            "SELECT c.id FROM links l JOIN tasks c ON c.id=l.child WHERE l.parent=? AND c.status='todo'",
            (parent_id,)).fetchall():
        if open_parents(conn, child) == 0:
            set_status(conn, now, get(conn, child), "unpark")
            emit(conn, now, "promoted", child, parent=parent_id)
            promoted.append(child)
    return promoted


def parse_workspace(spec: str | None, default: str = "scratch") -> tuple[str, str | None]:
    """``scratch`` | ``dir:/abs/path`` | ``worktree`` -> (kind, path)."""
    spec = spec or default
    if spec in ("scratch", "worktree"):
        return spec, None
    if spec.startswith("dir:"):
        path = spec[4:]
        if not path or not os.path.isabs(path):
            raise RPCError("invalid_params", f"workspace {spec!r}: dir: needs an absolute path", field="workspace")
        return "dir", os.path.normpath(path)
    raise RPCError("invalid_params", f"workspace {spec!r}: use scratch, worktree or dir:/abs/path",
                   field="workspace")


def create(conn: sqlite3.Connection, now: float, *, title: str, body: str | None = None,
           assignee: str | None = None, priority: int | None = None, tenant: str | None = None,
           parents: list[str] | None = None, triage: bool = False, idempotency_key: str | None = None,
           max_runtime: str | None = None, max_retries: int | None = None, workspace: str | None = None,
           created_by: str | None = None, default_workspace: str = "scratch", verify: str | None = None,
           verify_turns: int | None = None, review: bool | None = None) -> tuple[dict[str, Any], bool]:
    """Create a task. Returns ``(task, created)``; ``created`` is False on an idempotent replay.

    ``verify`` is a command line split like a shell would (no shell runs it); an empty string turns
    the profile's verify command off for this task. ``verify_turns`` bounds its rejected runs.
    """
    if not title.strip():
        raise RPCError("invalid_params", "title must not be empty", field="title")
    if idempotency_key:
        row = conn.execute("SELECT id FROM tasks WHERE idempotency_key=? AND status!='archived'",
                           (idempotency_key,)).fetchone()
        if row:
            return task_dict(conn, row[0]), False
    runtime = None
    if max_runtime is not None:
        try:
            runtime = parse_duration(max_runtime)
        except ValueError as exc:
            raise RPCError("invalid_params", f"max_runtime: {exc}", field="max_runtime") from None
    if max_retries is not None and max_retries < 1:
        raise RPCError("invalid_params", "max_retries must be at least 1", field="max_retries")
    verify_argv = parse_verify(verify) if verify is not None else None
    if verify_turns is not None and verify_turns < 1:
        raise RPCError("invalid_params", "verify_turns must be at least 1", field="verify_turns")
    kind, path = parse_workspace(workspace, default_workspace)
    parents = list(dict.fromkeys(parents or []))
    for p in parents:
        get(conn, p)
    open_count = conn.execute(
        f"SELECT count(*) FROM tasks WHERE id IN ({','.join('?' * len(parents))}) "
        "AND status NOT IN ('done','archived')", parents).fetchone()[0] if parents else 0
    status = "triage" if triage else ("todo" if open_count else "ready")
    task = {"id": None, "title": title, "body": body or "", "assignee": assignee, "status": status,
            "priority": priority or 0, "tenant": tenant, "created_by": created_by or os.environ.get("USER"),
            "created_at": now, "updated_at": now, "ready_at": now if status == "ready" else None,
            "idempotency_key": idempotency_key, "max_runtime": runtime, "max_retries": max_retries,
            "consecutive_failures": 0, "result": None, "summary": None, "block_reason": None,
            "workspace": {"kind": kind, "path": path}, "current_run": None, "cooldown_until": None,
            "verify_command": verify_argv, "verify_turns": verify_turns, "review": review,
            "verify_rejections": 0, "parents": parents}
    for _ in range(8):  # 32 random bits: a collision is rare, and the primary key catches it
        task["id"] = new_id("t_")
        try:
            conn.execute(
                "INSERT INTO tasks (id, title, body, assignee, status, priority, tenant, created_by, created_at, "
                "updated_at, ready_at, idempotency_key, max_runtime, max_retries, workspace_kind, workspace_path, "
                "verify_command, verify_turns, review) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (task["id"], title, task["body"], assignee, status, task["priority"], tenant, task["created_by"],
                 now, now, task["ready_at"], idempotency_key, runtime, max_retries, kind, path,
                 None if verify_argv is None else json.dumps(verify_argv), verify_turns,
                 None if review is None else int(review)))
            break
        except sqlite3.IntegrityError as exc:
            if "tasks.id" not in str(exc):
                raise
    if parents:
        conn.executemany("INSERT INTO links (parent, child) VALUES (?,?)", [(p, task["id"]) for p in parents])
    emit(conn, now, "created", task["id"], title=title, status=status, assignee=assignee, priority=task["priority"],
         tenant=tenant, parents=parents)
    return task, True


def parse_verify(text: str) -> list[str]:
    """A ``--verify`` command line as argv (split like a shell, never run by one); ``[]`` for "none".

    Raises:
        RPCError: ``invalid_params`` naming the value (unbalanced quotes).
    """
    import shlex
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise RPCError("invalid_params", f"verify {text!r}: {exc}", field="verify") from None


def _would_cycle(conn: sqlite3.Connection, parent: str, child: str) -> bool:
    """True if ``child`` is ``parent`` or already an ancestor of it."""
    row = conn.execute(
        "WITH RECURSIVE anc(id) AS (SELECT ? UNION SELECT l.parent FROM links l JOIN anc ON l.child=anc.id) "
        "SELECT 1 FROM anc WHERE id=? LIMIT 1", (parent, child)).fetchone()
    return row is not None


def link(conn: sqlite3.Connection, now: float, parent: str, child: str) -> dict[str, Any]:
    prow, crow = get(conn, parent), get(conn, child)
    if parent == child:
        raise RPCError("conflict", f"cannot link task {parent} to itself", id=parent)
    if _would_cycle(conn, parent, child):
        raise RPCError("conflict", f"linking {parent} -> {child} would make a cycle", parent=parent, child=child)
    if conn.execute("SELECT 1 FROM links WHERE parent=? AND child=?", (parent, child)).fetchone():
        return {"parent": parent, "child": child, "child_status": crow["status"], "changed": False}
    conn.execute("INSERT INTO links (parent, child) VALUES (?,?)", (parent, child))
    status = crow["status"]
    if crow["status"] == "ready" and prow["status"] in transitions.OPEN_STATUSES:
        status = set_status(conn, now, crow, "park")
    emit(conn, now, "linked", child, parent=parent, child_status=status)
    return {"parent": parent, "child": child, "child_status": status, "changed": True}


def unlink(conn: sqlite3.Connection, now: float, parent: str, child: str) -> dict[str, Any]:
    get(conn, parent)
    crow = get(conn, child)
    cur = conn.execute("DELETE FROM links WHERE parent=? AND child=?", (parent, child))
    if cur.rowcount == 0:
        raise RPCError("not_found", f"no link {parent} -> {child}", parent=parent, child=child)
    status = crow["status"]
    if status == "todo" and open_parents(conn, child) == 0:
        status = set_status(conn, now, crow, "unpark")
        emit(conn, now, "promoted", child, parent=parent)
    emit(conn, now, "unlinked", child, parent=parent, child_status=status)
    return {"parent": parent, "child": child, "child_status": status}


def check_token(row: sqlite3.Row, run: str | None) -> None:
    """A worker's request must carry the task's current run id (fencing token)."""
    if run is None:
        return
    if row["current_run"] != run or row["status"] != "running":
        raise RPCError("stale_token",
                       f"run {run} is not the current run of task {row['id']} "
                       f"(status {row['status']}, current run {row['current_run'] or 'none'})",
                       task=row["id"], run=run, current_run=row["current_run"])


def end_run(conn: sqlite3.Connection, now: float, run_id: str, reason: str, outcome: str | None = None,
            emit_event: bool = False) -> bool:
    """Move a run to ``exiting``: the reaper ends its whole tree, and only then does it end.

    See :func:`daemon.board.runs.mark_kill`; the event that carries ``kill_run``
    makes the dispatcher tell the reaper after the commit.
    """
    from daemon.board import runs as runs_mod  # local: runs imports this module
    return runs_mod.mark_kill(conn, now, run_id, reason, emit=emit_event, outcome=outcome)


def _finish_run_by_worker(conn: sqlite3.Connection, now: float, row: sqlite3.Row, run: str | None,
                          outcome: str, **columns: Any) -> None:
    run_id = run or row["current_run"]
    if row["status"] == "running" and run_id:
        sets = ", ".join(f"{k}=?" for k in columns)
        conn.execute(f"UPDATE runs SET outcome=?{', ' if sets else ''}{sets} WHERE id=?",
                     (outcome, *columns.values(), run_id))


def complete(conn: sqlite3.Connection, now: float, ids: list[str], summary: str | None = None,
             result: str | None = None, metadata: dict | None = None, run: str | None = None
             ) -> dict[str, Any]:
    """Mark tasks done; promotes children whose last open parent this was."""
    if not ids:
        raise RPCError("invalid_params", "no task ids given (outside a worker, name the tasks)", field="ids")
    if run is not None and len(ids) != 1:
        raise RPCError("invalid_params", "a run token completes exactly one task", field="ids")
    done, promoted = [], []
    for task_id in ids:
        row = get(conn, task_id)
        check_token(row, run)
        if row["status"] == "running" and run is None:
            raise RPCError("conflict", f"task {task_id} is running (run {row['current_run']}); only its worker "
                           "completes it (pass --run), or block it first", id=task_id, run=row["current_run"])
        _finish_run_by_worker(conn, now, row, run, "completed", summary=summary,
                              metadata=json.dumps(metadata) if metadata else None)
        set_status(conn, now, row, "complete", summary=summary, result=result, consecutive_failures=0,
                   block_reason=None)
        emit(conn, now, "completed", task_id, run, summary=summary, by="worker" if run else "operator",
             workspace={"kind": row["workspace_kind"], "path": row["workspace_path"]})
        promoted += promote_children(conn, now, task_id)
        done.append(task_dict(conn, task_id))
    return {"tasks": done, "promoted": promoted}


def block(conn: sqlite3.Connection, now: float, ids: list[str], reason: str, run: str | None = None
          ) -> dict[str, Any]:
    if not ids:
        raise RPCError("invalid_params", "no task ids given", field="ids")
    if not reason.strip():
        raise RPCError("invalid_params", "a block needs a reason", field="reason")
    out = []
    for task_id in ids:
        row = get(conn, task_id)
        check_token(row, run)
        fenced = row["current_run"] if (row["status"] in ("running", "review") and run is None) else None
        if fenced:
            fenced = fenced if end_run(conn, now, fenced, "cancel", outcome="cancelled") else None
        else:
            _finish_run_by_worker(conn, now, row, run, "blocked")
        set_status(conn, now, row, "block", block_reason=reason,
                   current_run=row["current_run"] if run else None)
        emit(conn, now, "blocked", task_id, run or fenced, reason=reason, by="worker" if run else "operator",
             kill_run=fenced)
        out.append(task_dict(conn, task_id))
    return {"tasks": out}


def _need_ids(ids: list[str]) -> None:
    if not ids:
        raise RPCError("invalid_params", "no task ids given", field="ids")


def unblock(conn: sqlite3.Connection, now: float, ids: list[str]) -> dict[str, Any]:
    _need_ids(ids)
    out = []
    for task_id in ids:
        row = get(conn, task_id)
        status = set_status(conn, now, row, "unblock", block_reason=None, consecutive_failures=0,
                            cooldown_until=None, cooldown_kind=None, skip_noted=None)
        emit(conn, now, "unblocked", task_id, status=status)
        out.append(task_dict(conn, task_id))
    return {"tasks": out}


def archive(conn: sqlite3.Connection, now: float, ids: list[str]) -> dict[str, Any]:
    _need_ids(ids)
    out, promoted = [], []
    for task_id in ids:
        row = get(conn, task_id)
        fenced = row["current_run"] if row["status"] in ("running", "review") else None
        if fenced:
            fenced = fenced if end_run(conn, now, fenced, "cancel", outcome="cancelled") else None
        set_status(conn, now, row, "archive", current_run=None)
        last = emit(conn, now, "archived", task_id, fenced, kill_run=fenced,
                    workspace={"kind": row["workspace_kind"], "path": row["workspace_path"]})
        # the task's subscriptions end here; each is pruned once its sink has delivered up to `last`
        conn.execute("UPDATE subscriptions SET until_id=? WHERE task_id=? AND until_id IS NULL", (last, task_id))
        promoted += promote_children(conn, now, task_id)
        out.append(task_dict(conn, task_id))
    return {"tasks": out, "promoted": promoted}


def promote(conn: sqlite3.Connection, now: float, task_id: str) -> dict[str, Any]:
    row = get(conn, task_id)
    status = set_status(conn, now, row, "promote")
    emit(conn, now, "promoted", task_id, status=status, by="operator")
    return task_dict(conn, task_id)


def assign(conn: sqlite3.Connection, now: float, task_id: str, assignee: str | None,
           source: str = "operator") -> dict[str, Any]:
    """Change the assignee. A running task's run is ended first (``reassigned``, not a
    failure); the task is requeued for its new assignee once the run's processes are gone."""
    row = get(conn, task_id)
    conn.execute("UPDATE tasks SET assignee=?, updated_at=?, skip_noted=NULL WHERE id=?", (assignee, now, task_id))
    fenced = None
    if row["status"] == "running" and row["current_run"] and assignee != row["assignee"]:
        fenced = row["current_run"]
        end_run(conn, now, fenced, "reassign")
    emit(conn, now, "assigned", task_id, fenced, assignee=assignee, previous=row["assignee"], source=source,
         kill_run=fenced, reason="reassign" if fenced else None)
    return task_dict(conn, task_id)


def kill(conn: sqlite3.Connection, now: float, ids: list[str], block_reason: str | None = None
         ) -> dict[str, Any]:
    """End each task's current run now (TERM, KILL after ``kill_grace``).

    Without ``block_reason`` the run's outcome is ``killed`` and the task is
    requeued (not a failure) once the run's processes are gone; with it the
    task is blocked at once, like an operator's block.

    Raises:
        RPCError: ``illegal_transition`` if a task is not running.
    """
    _need_ids(ids)
    out = []
    for task_id in ids:
        row = get(conn, task_id)
        if row["status"] != "running" or not row["current_run"]:
            raise RPCError("illegal_transition", f"task {task_id} is {row['status']}; cannot kill it (no run)",
                           task=task_id, status=row["status"], move="kill")
        if block_reason is not None:
            block(conn, now, [task_id], block_reason)
        else:
            end_run(conn, now, row["current_run"], "kill", emit_event=True)
        out.append(task_dict(conn, task_id))
    return {"tasks": out}


def retry(conn: sqlite3.Connection, now: float, ids: list[str], reason: str | None = None) -> dict[str, Any]:
    """Clear each task's backoff or cooldown (and its failure count); a blocked task (the
    breaker gave up, or a block) is requeued; a ready task starts at the next pass."""
    _need_ids(ids)
    out = []
    for task_id in ids:
        row = get(conn, task_id)
        if row["status"] == "blocked":
            set_status(conn, now, row, "unblock", block_reason=None, consecutive_failures=0, cooldown_until=None,
                       cooldown_kind=None, skip_noted=None)
        elif row["status"] in ("ready", "todo"):
            conn.execute("UPDATE tasks SET cooldown_until=NULL, cooldown_kind=NULL, consecutive_failures=0, "
                         "updated_at=? WHERE id=?", (now, task_id))
        else:
            raise RPCError("illegal_transition", f"task {task_id} is {row['status']}; cannot retry it",
                           task=task_id, status=row["status"], move="retry")
        profiles = {row["assignee"]} | {r[0] for r in conn.execute(
            "SELECT profile FROM runs WHERE task_id=? ORDER BY claimed_at DESC LIMIT 1", (task_id,))}
        for prof in profiles - {None}:  # a rate limit of the profile it runs under is lifted too
            conn.execute("UPDATE profile_state SET cooldown_until=NULL, updated_at=? WHERE profile=? "
                         "AND cooldown_until > ?", (now, prof, now))
        emit(conn, now, "retried", task_id, reason=reason, previous=row["status"])
        out.append(task_dict(conn, task_id))
    return {"tasks": out}


def comment(conn: sqlite3.Connection, now: float, task_id: str, body: str, author: str | None = None
            ) -> dict[str, Any]:
    get(conn, task_id)
    if not body.strip():
        raise RPCError("invalid_params", "comment body must not be empty", field="body")
    author = author or os.environ.get("USER")
    cur = conn.execute("INSERT INTO comments (task_id, author, body, created_at) VALUES (?,?,?,?)",
                       (task_id, author, body, now))
    emit(conn, now, "commented", task_id, author=author, comment=cur.lastrowid)
    return {"id": cur.lastrowid, "task_id": task_id, "author": author, "body": body, "created_at": now}


def edit(conn: sqlite3.Connection, now: float, task_id: str, title: str | None = None,
         body: str | None = None, priority: int | None = None) -> dict[str, Any]:
    get(conn, task_id)
    changes = {k: v for k, v in (("title", title), ("body", body), ("priority", priority)) if v is not None}
    if not changes:
        raise RPCError("invalid_params", "nothing to edit: give --title, --body or --priority", field="title")
    if "title" in changes and not changes["title"].strip():
        raise RPCError("invalid_params", "title must not be empty", field="title")
    sets = ", ".join(f"{k}=?" for k in changes)
    conn.execute(f"UPDATE tasks SET {sets}, updated_at=? WHERE id=?", (*changes.values(), now, task_id))
    emit(conn, now, "edited", task_id, fields=sorted(changes))
    return task_dict(conn, task_id)


_SORTS = {"priority": "priority DESC, created_at, id", "created": "created_at, id",
          "updated": "updated_at DESC, id", "id": "id"}


def list_tasks(conn: sqlite3.Connection, status: list[str] | None = None, assignee: str | None = None,
               tenant: str | None = None, archived: bool = False, sort: str | None = None,
               limit: int | None = None) -> dict[str, Any]:
    where, args = [], []
    if status:
        bad = [s for s in status if s not in transitions.STATUSES]
        if bad:
            raise RPCError("invalid_params", f"unknown status {bad[0]!r} (known: {', '.join(transitions.STATUSES)})",
                           field="status")
        where.append(f"status IN ({','.join('?' * len(status))})")
        args += status
    elif not archived:
        where.append("status != 'archived'")
    if assignee is not None:
        where.append("assignee=?")
        args.append(assignee)
    if tenant is not None:
        where.append("tenant=?")
        args.append(tenant)
    if limit is not None and limit < 0:
        raise RPCError("invalid_params", "limit must not be negative", field="limit")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT count(*) FROM tasks {clause}", args).fetchone()[0]
    rows = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY {_SORTS[sort or 'priority']} "
                        f"LIMIT ?", (*args, -1 if limit is None else limit)).fetchall()
    return {"tasks": [to_dict(r) for r in rows], "total": total}


def show(conn: sqlite3.Connection, task_id: str, events: int = 20) -> dict[str, Any]:
    parents = [{"id": r[0], "title": r[1], "status": r[2]} for r in conn.execute(
        "SELECT t.id, t.title, t.status FROM links l JOIN tasks t ON t.id=l.parent WHERE l.child=? ORDER BY t.id",
        (task_id,))]
    task = to_dict(get(conn, task_id), [p["id"] for p in parents])
    children = [{"id": r[0], "title": r[1], "status": r[2]} for r in conn.execute(
        "SELECT t.id, t.title, t.status FROM links l JOIN tasks t ON t.id=l.child WHERE l.parent=? ORDER BY t.id",
        (task_id,))]
    comments = [dict(r) for r in conn.execute(
        "SELECT id, author, body, created_at FROM comments WHERE task_id=? ORDER BY id", (task_id,))]
    from daemon.board import runs as runs_mod  # local: runs imports this module
    evs = [event_dict(r) for r in conn.execute(
        "SELECT * FROM (SELECT id, task_id, run_id, kind, payload, at FROM events WHERE task_id=? "
        "ORDER BY id DESC LIMIT ?) ORDER BY id", (task_id, events))]
    return {"task": task, "parents": parents, "children": children, "comments": comments,
            "runs": runs_mod.list_runs(conn, task_id, checked=True)["runs"], "events": evs}


def stats(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    by_status = {s: 0 for s in transitions.STATUSES}
    by_assignee: dict[str, dict[str, int]] = {}
    # one pass in the order of the tasks_dispatch index: no temp B-tree, even at 100k tasks
    for s, a, n in conn.execute("SELECT status, assignee, count(*) FROM tasks GROUP BY status, assignee"):
        by_status[s] += n
        if s != "archived":
            per = by_assignee.setdefault(a or "(unassigned)", {})
            per[s] = per.get(s, 0) + n
    oldest = conn.execute("SELECT min(ready_at) FROM tasks WHERE status='ready'").fetchone()[0]
    reviewing = conn.execute("SELECT count(*) FROM tasks t JOIN runs r ON r.id=t.current_run WHERE t.status='review' "
                             "AND r.kind='review' AND r.state != 'ended'").fetchone()[0] if by_status["review"] else 0
    return {"by_status": by_status, "by_assignee": by_assignee, "total": sum(by_status.values()),
            "oldest_ready_age": None if oldest is None else max(0.0, now - oldest),
            "review": {"waiting": by_status["review"] - reviewing, "reviewing": reviewing}}


def event_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["payload"] = json.loads(d["payload"])
    return d


def events_since(conn: sqlite3.Connection, after: int = 0, task: str | None = None,
                 limit: int | None = None) -> dict[str, Any]:
    if limit is not None and limit < 0:
        raise RPCError("invalid_params", "limit must not be negative", field="limit")
    limit = 1000 if limit is None else limit
    if task:
        get(conn, task)
        rows = conn.execute("SELECT id, task_id, run_id, kind, payload, at FROM events WHERE task_id=? AND id>? "
                            "ORDER BY id LIMIT ?", (task, after, limit)).fetchall()
    else:
        rows = conn.execute("SELECT id, task_id, run_id, kind, payload, at FROM events WHERE id>? ORDER BY id "
                            "LIMIT ?", (after, limit)).fetchall()
    evs = [event_dict(r) for r in rows]
    last = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    return {"events": evs, "last_id": last}
