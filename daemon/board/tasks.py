"""Task operations: pure functions over an open connection.

Runs in: the dispatcher (inside its group-commit transaction) and unit tests.

Every function takes the connection and ``now`` (injected clock), validates
its input, changes rows through :mod:`daemon.board.transitions`, and appends
one event per mutation. They never commit: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
from typing import Any

from client.protocol import EVENTS_PAGE, IDS_PAGE, INT64_MAX, INT64_MIN, LIST_PAGE, RPCError, loads, text_problem
from daemon.board import transitions
from daemon.config import parse_duration

TASK_COLUMNS = ("id, title, body, assignee, status, priority, tenant, created_by, created_at, updated_at, "
                "ready_at, idempotency_key, max_runtime, max_retries, consecutive_failures, result, summary, "
                "block_reason, workspace_kind, workspace_path, current_run, cooldown_until, cooldown_kind, "
                "due_at, parent_reopened, verify_command, verify_turns, review, verify_rejections, workspace_repo, "
                "workspace_branch")


def new_id(prefix: str, nbytes: int = 4) -> str:
    """``t_`` plus 8 hex characters for tasks; other prefixes for other rows."""
    return prefix + secrets.token_hex(nbytes)


def emit(conn: sqlite3.Connection, now: float, kind: str, task_id: str | None = None,
         run_id: str | None = None, **payload: Any) -> int:
    """Append one event; returns its id."""
    cur = conn.execute("INSERT INTO events (task_id, run_id, kind, payload, at) VALUES (?,?,?,?,?)",
                       (task_id, run_id, kind, json.dumps(payload, separators=(",", ":"), allow_nan=False), now))
    return cur.lastrowid


def get(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    """The task row, or ``not_found`` naming the id."""
    if not isinstance(task_id, str) or not task_id:
        raise RPCError("invalid_params", "task id must be a non-empty string", field="id")
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id=?", (task_id,)).fetchone()
    if row is None:
        raise RPCError("not_found", f"no task {task_id}", id=task_id)
    return row


def get_for(conn: sqlite3.Connection, task_id: str, verb: str, subject: str = "task") -> sqlite3.Row:
    """The task row, if ``verb``'s guard (``transitions.VERB_GUARDS``) accepts its status.

    Raises:
        RPCError: ``not_found``, or ``illegal_transition`` naming the task, status and verb.
    """
    row = get(conn, task_id)
    transitions.check(task_id, row["status"], verb, subject)
    return row


def to_dict(row: sqlite3.Row, parents: list[str] | None = None) -> dict[str, Any]:
    """A task row as the wire object."""
    d = dict(row)
    d["workspace"] = {"kind": d.pop("workspace_kind"), "path": d.pop("workspace_path"),
                      "repo": d.pop("workspace_repo", None), "branch": d.pop("workspace_branch", None)}
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
    if row["status"] == "scheduled" and new != "scheduled":
        columns.setdefault("due_at", None)  # leaving scheduled, by any move, drops the due time
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


def branch_problem(branch: str) -> str | None:
    """Why ``branch`` cannot name a git branch for a worktree, or ``None`` (the rules of
    ``git check-ref-format --branch``, checked here so a bad name fails at create, not at spawn)."""
    bad = (not branch or branch.startswith(("-", "/", ".")) or branch.endswith(("/", ".", ".lock"))
           or ".." in branch or "//" in branch or "@{" in branch or branch == "@" or "/." in branch
           or any(c in branch for c in " ~^:?*[\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in branch))
    return f"--branch {branch!r} is not a valid git branch name" if bad else None


def worktree_params(kind: str, repo: str | None, branch: str | None) -> None:
    """``--repo`` and ``--branch`` are for worktree workspaces: a repository path that is
    absolute, and a valid branch name.

    Raises:
        RPCError: ``invalid_params`` naming the field.
    """
    if (repo or branch) and kind != "worktree":
        field = "repo" if repo else "branch"
        raise RPCError("invalid_params", f"--{field} is for worktree workspaces, not {kind}", field=field)
    if repo is not None and not os.path.isabs(repo):
        raise RPCError("invalid_params", f"--repo {repo!r}: give an absolute path", field="repo")
    if branch is not None and branch_problem(branch):
        raise RPCError("invalid_params", branch_problem(branch), field="branch")


def create(conn: sqlite3.Connection, now: float, *, title: str, body: str | None = None,
           assignee: str | None = None, priority: int | None = None, tenant: str | None = None,
           parents: list[str] | None = None, triage: bool = False, idempotency_key: str | None = None,
           max_runtime: str | None = None, max_retries: int | None = None, workspace: str | None = None,
           created_by: str | None = None, default_workspace: str = "scratch", due_at: float | None = None,
           verify: str | None = None, verify_turns: int | None = None, review: bool | None = None,
           repo: str | None = None, branch: str | None = None) -> tuple[dict[str, Any], bool]:
    """Create a task. Returns ``(task, created)``; ``created`` is False on an idempotent replay.

    With ``due_at`` (epoch seconds, already validated by :mod:`daemon.board.schedule`) the task
    starts ``scheduled`` and becomes ready (or todo) at that time. ``verify`` is a command line
    split like a shell would (no shell runs it); an empty string turns the profile's verify
    command off for this task. ``verify_turns`` bounds its rejected runs. ``repo`` and ``branch``
    (worktree workspaces only; they imply one when no workspace is given) are stored on the task:
    its worktree is made in ``repo`` (else the profile's, else ``workspaces.repo``) on ``branch``
    (else ``wt/<task id>``).
    """
    if not title.strip():
        raise RPCError("invalid_params", "title must not be empty", field="title")
    if triage and due_at is not None:
        raise RPCError("invalid_params", "a task is either parked in triage or scheduled (--at/--in), not both",
                       field="triage")
    if idempotency_key:
        row = conn.execute("SELECT id FROM tasks WHERE idempotency_key=? AND status!='archived'",
                           (idempotency_key,)).fetchone()
        if row:
            return task_dict(conn, row[0]), False
    runtime = None if max_runtime is None else parse_runtime(max_runtime)
    if max_retries is not None and max_retries < 1:
        raise RPCError("invalid_params", "max_retries must be at least 1", field="max_retries")
    verify_argv = parse_verify(verify) if verify is not None else None
    if verify_turns is not None and verify_turns < 1:
        raise RPCError("invalid_params", "verify_turns must be at least 1", field="verify_turns")
    if (repo or branch) and workspace is None:
        workspace = "worktree"
    kind, path = parse_workspace(workspace, default_workspace)
    worktree_params(kind, repo, branch)
    repo = os.path.normpath(repo) if repo else None
    parents = list(dict.fromkeys(parents or []))
    for p in parents:
        get(conn, p)
    open_count = conn.execute(
        f"SELECT count(*) FROM tasks WHERE id IN ({','.join('?' * len(parents))}) "
        "AND status NOT IN ('done','archived')", parents).fetchone()[0] if parents else 0
    status = "triage" if triage else "scheduled" if due_at is not None else ("todo" if open_count else "ready")
    task = {"id": None, "title": title, "body": body or "", "assignee": assignee, "status": status,
            "priority": priority or 0, "tenant": tenant, "created_by": created_by or os.environ.get("USER"),
            "created_at": now, "updated_at": now, "ready_at": now if status == "ready" else None,
            "idempotency_key": idempotency_key, "max_runtime": runtime, "max_retries": max_retries,
            "consecutive_failures": 0, "result": None, "summary": None, "block_reason": None,
            "workspace": {"kind": kind, "path": path, "repo": repo, "branch": branch}, "current_run": None,
            "cooldown_until": None, "due_at": due_at, "parent_reopened": None,
            "verify_command": verify_argv, "verify_turns": verify_turns, "review": review,
            "verify_rejections": 0, "parents": parents}
    for _ in range(8):  # 32 random bits: a collision is rare, and the primary key catches it
        task["id"] = new_id("t_")
        try:
            conn.execute(
                "INSERT INTO tasks (id, title, body, assignee, status, priority, tenant, created_by, created_at, "
                "updated_at, ready_at, idempotency_key, max_runtime, max_retries, workspace_kind, workspace_path, "
                "due_at, verify_command, verify_turns, review, workspace_repo, workspace_branch) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (task["id"], title, task["body"], assignee, status, task["priority"], tenant, task["created_by"],
                 now, now, task["ready_at"], idempotency_key, runtime, max_retries, kind, path, due_at,
                 None if verify_argv is None else json.dumps(verify_argv), verify_turns,
                 None if review is None else int(review), repo, branch))
            break
        except sqlite3.IntegrityError as exc:
            if "tasks.id" not in str(exc):
                raise
    if parents:
        conn.executemany("INSERT INTO links (parent, child) VALUES (?,?)", [(p, task["id"]) for p in parents])
    emit(conn, now, "created", task["id"], title=title, status=status, assignee=assignee, priority=task["priority"],
         tenant=tenant, parents=parents, **({"due_at": due_at} if due_at is not None else {}))
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


#: The longest max_runtime a task may ask for (a year): anything longer is a typo, not a limit.
MAX_RUNTIME = 366 * 86400.0


def parse_runtime(value: str) -> float:
    """A task's ``max_runtime`` in seconds: more than 0 and at most :data:`MAX_RUNTIME`.

    Raises:
        RPCError: ``invalid_params`` naming ``max_runtime`` (0 is refused: it is not "no limit";
            a task without ``--max-runtime`` has the profile's limit, or none).
    """
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise RPCError("invalid_params", f"max_runtime: {exc}", field="max_runtime") from None
    if not 0 < seconds <= MAX_RUNTIME:
        raise RPCError("invalid_params", f"max_runtime {value!r} must be more than 0 and at most 366d",
                       field="max_runtime")
    return seconds


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
    transitions.check(parent, prow["status"], "link", "parent")
    transitions.check(child, crow["status"], "link", "child")
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
    get_for(conn, parent, "unlink", "parent")
    crow = get_for(conn, child, "unlink", "child")
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
    if metadata is not None and run is None:
        raise RPCError("invalid_params", "metadata is stored on the run: only the run's worker (with --run) "
                       "can give it", field="metadata")
    done, promoted = [], []
    for task_id in ids:
        row = get(conn, task_id)
        check_token(row, run)
        if row["status"] == "running" and run is None:
            raise RPCError("conflict", f"task {task_id} is running (run {row['current_run']}); only its worker "
                           "completes it (pass --run), or block it first", id=task_id, run=row["current_run"])
        _finish_run_by_worker(conn, now, row, run, "completed", summary=summary,
                              metadata=json.dumps(metadata, allow_nan=False) if metadata else None)
        set_status(conn, now, row, "complete", summary=summary, result=result, consecutive_failures=0,
                   block_reason=None, parent_reopened=None)
        emit(conn, now, "completed", task_id, run, summary=summary, by="worker" if run else "operator",
             workspace={"kind": row["workspace_kind"], "path": row["workspace_path"],
                        "repo": row["workspace_repo"]})
        promoted += promote_children(conn, now, task_id)
        done.append(task_dict(conn, task_id))
    return {"tasks": done, "promoted": promoted}


def block(conn: sqlite3.Connection, now: float, ids: list[str], reason: str, run: str | None = None
          ) -> dict[str, Any]:
    if not ids:
        raise RPCError("invalid_params", "no task ids given", field="ids")
    if not reason.strip():
        raise RPCError("invalid_params", "a block needs a reason", field="reason")
    if run is not None and len(ids) != 1:
        raise RPCError("invalid_params", "a run token blocks exactly one task", field="ids")
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
        # any live run ends with the task: a running one, a reviewer's, or a worker that lingers after
        # completing (its outcome stays what its worker said)
        fenced = live_run(conn, task_id)
        if fenced:
            fenced = fenced if end_run(conn, now, fenced, "cancel", outcome="cancelled") else None
        set_status(conn, now, row, "archive", current_run=None)
        last = emit(conn, now, "archived", task_id, fenced, kill_run=fenced,
                    workspace={"kind": row["workspace_kind"], "path": row["workspace_path"],
                        "repo": row["workspace_repo"]})
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
    row = get_for(conn, task_id, "assign")
    conn.execute("UPDATE tasks SET assignee=?, updated_at=?, skip_noted=NULL WHERE id=?", (assignee, now, task_id))
    fenced = None
    if row["status"] == "running" and row["current_run"] and assignee != row["assignee"]:
        fenced = row["current_run"]
        end_run(conn, now, fenced, "reassign")
    emit(conn, now, "assigned", task_id, fenced, assignee=assignee, previous=row["assignee"], source=source,
         kill_run=fenced, reason="reassign" if fenced else None)
    return task_dict(conn, task_id)


def live_run(conn: sqlite3.Connection, task_id: str) -> str | None:
    """The id of the task's run that has not ended (some process of it may be alive), if any:
    also after the task left ``running`` (a worker that lingers after ``kanban complete``)."""
    row = conn.execute("SELECT id FROM runs WHERE task_id=? AND state != 'ended' ORDER BY claimed_at DESC LIMIT 1",
                       (task_id,)).fetchone()
    return row[0] if row else None


def kill(conn: sqlite3.Connection, now: float, ids: list[str], block_reason: str | None = None
         ) -> dict[str, Any]:
    """End each task's live run now (TERM, KILL after ``kill_grace``), whatever the task's status.

    For a running task, without ``block_reason`` the run's outcome is ``killed`` and
    the task is requeued (not a failure) once the run's processes are gone; with it
    the task is blocked at once, like an operator's block. For a task that already
    left ``running`` (its worker completed, or blocked itself, and lingers), the run
    is ended and the task keeps its status; the run keeps the outcome its worker gave;
    ``block_reason`` then blocks the task too where the transition table allows it.

    Raises:
        RPCError: ``illegal_transition`` if a task has no live run (naming its status), or
            ``block_reason`` is given and the task's status cannot be blocked (done).
    """
    _need_ids(ids)
    out = []
    for task_id in ids:
        row = get(conn, task_id)
        run = live_run(conn, task_id)
        if run is None:
            raise RPCError("illegal_transition", f"task {task_id} is {row['status']} and has no live run; "
                           "nothing to kill", task=task_id, status=row["status"], move="kill")
        if block_reason is not None:  # through the transition table: refused where a block is (done...)
            transitions.move(task_id, row["status"], "block", open_parents=0)
            block(conn, now, [task_id], block_reason)  # a running task's run ends with its block
        if block_reason is None or row["status"] != "running":
            end_run(conn, now, run, "kill", emit_event=True)
        out.append(task_dict(conn, task_id))
    return {"tasks": out}


def retry(conn: sqlite3.Connection, now: float, ids: list[str], reason: str | None = None) -> dict[str, Any]:
    """Clear each task's backoff or cooldown (and its failure count); a blocked task (the
    breaker gave up, or a block) is requeued; a ready task starts at the next pass; a done
    task gets a fresh run (the ``retry`` row, with the dependents held back as by a reopen:
    :mod:`daemon.board.reopen`)."""
    from daemon.board import reopen  # local: reopen imports this module
    _need_ids(ids)
    out = []
    effects: dict[str, list[str]] = {k: [] for k in reopen.EFFECTS}
    for task_id in ids:
        row = get(conn, task_id)
        if row["status"] == "done":
            reopen.reopen_one(conn, now, row, "retry", reason, effects)
        elif row["status"] == "blocked":
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
        if row["status"] != "done":  # a done task's `retried` event came from reopen_one
            emit(conn, now, "retried", task_id, reason=reason, previous=row["status"])
        out.append(task_dict(conn, task_id))
    return {"tasks": out, **{k: v for k, v in effects.items() if v}}


def comment(conn: sqlite3.Connection, now: float, task_id: str, body: str, author: str | None = None
            ) -> dict[str, Any]:
    get_for(conn, task_id, "comment")  # always allowed; through the guard table all the same
    if not body.strip():
        raise RPCError("invalid_params", "comment body must not be empty", field="body")
    author = author or os.environ.get("USER")
    cur = conn.execute("INSERT INTO comments (task_id, author, body, created_at) VALUES (?,?,?,?)",
                       (task_id, author, body, now))
    emit(conn, now, "commented", task_id, author=author, comment=cur.lastrowid)
    return {"id": cur.lastrowid, "task_id": task_id, "author": author, "body": body, "created_at": now}


#: Fields ``edit`` changes with a plain UPDATE, in the order the event lists them.
EDIT_FIELDS = ("title", "body", "priority", "assignee", "workspace", "max_runtime", "max_retries")
#: Fields that may be null (cleared) in an edit.
EDIT_NULLABLE = frozenset({"assignee", "max_runtime", "max_retries"})


def edit(conn: sqlite3.Connection, now: float, task_id: str, title: str | None = None,
         body: str | None = None, priority: int | None = None, **more: Any) -> dict[str, Any]:
    """Change a task's fields in one step; every change is checked before any is applied.

    Args:
        conn: The board.
        now: The clock.
        task_id: The task.
        title: New title (not empty).
        body: New body.
        priority: New priority (open tasks only).
        **more: ``assignee`` (``None`` or ``""`` unassigns; a running task's run is ended
            first, as with :func:`assign`), ``workspace`` (a spec as for :func:`create`; not
            while running), ``max_runtime`` (a duration; ``None`` or ``""`` clears it),
            ``max_retries`` (at least 1; ``None`` clears it). A key that is present is a
            change, even when its value is ``None``.

    Returns:
        The task object.

    Raises:
        RPCError: ``invalid_params`` for nothing to change or a bad value (naming the
            field); ``illegal_transition`` when the task's status refuses a field (the verb
            guards ``edit --priority``, ``assign``, ``edit --workspace``, ...);
            ``not_found``.
    """
    unknown = set(more) - set(EDIT_FIELDS)
    if unknown:
        raise TypeError(f"edit() got unknown fields {sorted(unknown)}")
    row = get_for(conn, task_id, "edit")
    changes: dict[str, Any] = {k: v for k, v in (("title", title), ("body", body), ("priority", priority))
                               if v is not None}
    changes.update(more)
    if not changes:
        raise RPCError("invalid_params", "nothing to edit: give --title, --body, --priority, --assignee, "
                       "--workspace, --max-runtime or --max-retries", field="title")
    if "title" in changes and not (changes["title"] or "").strip():
        raise RPCError("invalid_params", "title must not be empty", field="title")
    for name in changes:
        if changes[name] is None and name not in EDIT_NULLABLE:
            raise RPCError("invalid_params", f"{name} cannot be cleared", field=name)
    cols: dict[str, Any] = {}
    if "priority" in changes:
        transitions.check(task_id, row["status"], "edit --priority")
    if "max_runtime" in changes:
        transitions.check(task_id, row["status"], "edit --max-runtime")
        value = changes["max_runtime"]
        if value in (None, "", "none"):
            cols["max_runtime"] = None
        else:
            cols["max_runtime"] = parse_runtime(value)
    if "max_retries" in changes:
        transitions.check(task_id, row["status"], "edit --max-retries")
        if changes["max_retries"] is not None and changes["max_retries"] < 1:
            raise RPCError("invalid_params", "max_retries must be at least 1", field="max_retries")
        cols["max_retries"] = changes["max_retries"]
    if "workspace" in changes:
        transitions.check(task_id, row["status"], "edit --workspace")
        cols["workspace_kind"], cols["workspace_path"] = parse_workspace(changes["workspace"])
    assignee = changes.pop("assignee", None) or None
    reassign = "assignee" in more and assignee != row["assignee"]
    if reassign:
        transitions.check(task_id, row["status"], "assign")
    for name in ("title", "body", "priority"):
        if name in changes:
            cols[name] = changes[name]
    if reassign:  # through assign: a running task's run ends first (reassigned, not a failure)
        assign(conn, now, task_id, assignee, source="edit")
    if cols:
        sets = ", ".join(f"{k}=?" for k in cols)
        conn.execute(f"UPDATE tasks SET {sets}, updated_at=? WHERE id=?", (*cols.values(), now, task_id))
    fields = [f for f in EDIT_FIELDS if f in changes or (f == "assignee" and reassign)]
    emit(conn, now, "edited", task_id, fields=sorted(fields))
    return task_dict(conn, task_id)


_SORTS = {"priority": "priority DESC, created_at, id", "created": "created_at, id",
          "updated": "updated_at DESC, id", "id": "id"}
#: Each sort's key columns (all NOT NULL), and whether each descends: the keyset for cursors.
_KEYS: dict[str, tuple[tuple[str, bool], ...]] = {
    "priority": (("priority", True), ("created_at", False), ("id", False)),
    "created": (("created_at", False), ("id", False)),
    "updated": (("updated_at", True), ("id", False)),
    "id": (("id", False),),
}
#: A page also ends once its rows hold about this much text (bodies can be 256 KiB each).
PAGE_BYTES = 1 << 20


def _row_bytes(row: sqlite3.Row) -> int:
    return 64 + sum(len(v) for v in row if isinstance(v, str))


def _encode_cursor(sort: str, row: sqlite3.Row) -> str:
    key = [sort, *(row[col] for col, _ in _KEYS[sort])]
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(sort: str, cursor: str) -> list[Any]:
    """The key values a cursor made by :func:`_encode_cursor` for ``sort`` carries.

    Raises:
        RPCError: ``invalid_params`` (field ``cursor``) for anything else.
    """
    bad = RPCError("invalid_params", f"cursor is not a task.list cursor for sort {sort!r} "
                   "(pass back next_cursor unchanged, with the same sort)", field="cursor")
    try:
        key = loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:  # binascii.Error, FrameError
        raise bad from None
    cols = _KEYS[sort]
    if not isinstance(key, list) or len(key) != len(cols) + 1 or key[0] != sort:
        raise bad
    for value, (col, _) in zip(key[1:], cols):
        if col == "id":
            ok = isinstance(value, str) and text_problem(value, 256) is None
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (col != "priority" or isinstance(value, int)) and INT64_MIN <= value <= INT64_MAX
        if not ok:
            raise bad
    return key[1:]


def _after(sort: str, values: list[Any]) -> tuple[str, list[Any]]:
    """SQL for "strictly after this key" in ``sort``'s order (mixed directions, so no row values)."""
    cols = _KEYS[sort]
    ors, args = [], []
    for i, (col, desc) in enumerate(cols):
        terms = [f"{c}=?" for c, _ in cols[:i]] + [f"{col}{'<' if desc else '>'}?"]
        ors.append("(" + " AND ".join(terms) + ")")
        args += [*values[:i], values[i]]
    return "(" + " OR ".join(ors) + ")", args


def list_tasks(conn: sqlite3.Connection, status: list[str] | None = None, assignee: str | None = None,
               tenant: str | None = None, archived: bool = False, sort: str | None = None,
               limit: int | None = None, cursor: str | None = None, since: float | None = None
               ) -> dict[str, Any]:
    """One page of tasks, in ``sort`` order.

    Args:
        conn: The board.
        status: Only these statuses (default: all but archived, unless ``archived``).
        assignee: Only this assignee.
        tenant: Only this tenant.
        archived: Include archived tasks when ``status`` is not given.
        sort: ``priority`` (default), ``created``, ``updated`` or ``id``; ties broken by id.
        limit: Page size (default ``LIST_PAGE``); a page also ends past ``PAGE_BYTES`` of text.
        cursor: The ``next_cursor`` of the previous page (same filters and sort).
        since: Only tasks updated at or after this Unix time (a new task's ``updated_at`` is
            its creation time, so new tasks are included).

    Returns:
        ``{tasks, total, next_cursor}``: ``total`` counts every match (not just this page);
        ``next_cursor`` is ``None`` on the last page. The cursor is a keyset over the sort key
        and the id, so a walk stays in order while the board changes (a task whose key
        changes mid-walk may be seen twice or not at all).

    Raises:
        RPCError: ``invalid_params`` for an unknown status, a negative limit or a foreign cursor.
    """
    sort = sort or "priority"
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
    if since is not None:
        where.append("updated_at>=?")
        args.append(since)
    if limit is not None and limit < 0:
        raise RPCError("invalid_params", "limit must not be negative", field="limit")
    limit = LIST_PAGE if limit is None else limit
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = conn.execute(f"SELECT count(*) FROM tasks {clause}", args).fetchone()[0]
    if cursor is not None:
        after_sql, after_args = _after(sort, _decode_cursor(sort, cursor))
        where.append(after_sql)
        args += after_args
        clause = f"WHERE {' AND '.join(where)}"
    rows = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY {_SORTS[sort]} LIMIT ?",
                        (*args, limit + 1))
    page, size, more = [], 0, False
    for row in rows:
        if len(page) >= limit or (page and size >= PAGE_BYTES):
            more = True
            break
        page.append(row)
        size += _row_bytes(row)
    return {"tasks": [to_dict(r) for r in page], "total": total,
            "next_cursor": _encode_cursor(sort, page[-1]) if more and page else None}


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


def first_event_at(conn: sqlite3.Connection, since: float) -> int:
    """The id just before the first event at or after ``since`` (a binary search over ids:
    events are appended in time order, so it takes a few index lookups even on a long log)."""
    lo_hi = conn.execute("SELECT min(id), max(id) FROM events").fetchone()
    if lo_hi[0] is None:
        return 0
    lo, hi = lo_hi[0], lo_hi[1] + 1  # the answer lies in [lo, hi]; hi means "none"
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT id, at FROM events WHERE id>=? ORDER BY id LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= since:
            hi = mid
        else:
            lo = row[0] + 1
    return lo - 1


def events_since(conn: sqlite3.Connection, after: int = 0, task: str | None = None,
                 limit: int | None = None, since: float | None = None, kinds: list[str] | None = None
                 ) -> dict[str, Any]:
    """One page of events with id greater than ``after``, oldest first.

    Args:
        conn: The board.
        after: Event id to start after.
        task: Only this task's events.
        limit: Page size (default ``EVENTS_PAGE``); a page also ends past ``PAGE_BYTES`` of payload.
        since: Only events at or after this Unix time.
        kinds: Only events of these kinds.

    Returns:
        ``{events, last_id, next_cursor}``: ``last_id`` is the newest event on the board;
        ``next_cursor`` is ``None`` on the last page, else the id to pass as ``after``.

    Raises:
        RPCError: ``invalid_params`` for a negative limit; ``not_found`` for an unknown task.
    """
    if limit is not None and limit < 0:
        raise RPCError("invalid_params", "limit must not be negative", field="limit")
    limit = EVENTS_PAGE if limit is None else limit
    where, args = ["id>?"], [after]
    if since is not None:
        args[0] = max(after, first_event_at(conn, since))
        where.append("at>=?")
        args.append(since)
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        args += kinds
    if task:
        get(conn, task)
        where.insert(0, "task_id=?")
        args.insert(0, task)
    rows = conn.execute(f"SELECT id, task_id, run_id, kind, payload, at FROM events WHERE {' AND '.join(where)} "
                        "ORDER BY id LIMIT ?", (*args, limit + 1))
    evs, size, more = [], 0, False
    for row in rows:
        if len(evs) >= limit or (evs and size >= PAGE_BYTES):
            more = True
            break
        evs.append(event_dict(row))
        size += _row_bytes(row)
    last = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    return {"events": evs, "last_id": last, "next_cursor": evs[-1]["id"] if more and evs else None}


def ids(conn: sqlite3.Connection, prefix: str = "", archived: bool = False, limit: int | None = None
        ) -> dict[str, Any]:
    """Task ids starting with ``prefix``, in id order: a range scan of the primary key.

    Returns:
        ``{ids, more}``: ``more`` is true when ``limit`` (default ``IDS_PAGE``) cut the list.
    """
    limit = IDS_PAGE if limit is None else limit
    where, args = ["id>=?"], [prefix]
    if prefix:
        where.append("id<?")
        args.append(prefix + "\U0010ffff")
    if not archived:
        where.append("status!='archived'")
    found = [r[0] for r in conn.execute(f"SELECT id FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                                        (*args, limit + 1))]
    return {"ids": found[:limit], "more": len(found) > limit}
