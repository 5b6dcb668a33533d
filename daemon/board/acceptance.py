"""Verified completion and the review lane: when a worker's "done" is accepted.

Runs in: the dispatcher (inside its transactions) and unit tests.

A worker's ``kanban complete`` (with its run token) passes through a *gate*
(:func:`gate`): the task's or its profile's verify command, and whether the
work needs review. Without either, the task is done at once
(:func:`daemon.board.tasks.complete`). Otherwise :func:`submit` records the
completion on the run and:

- with a verify command, leaves the task ``running``: once the reaper has
  confirmed that no process of the worker is alive, the answer to its
  ``run.exited`` report moves the run to ``verifying`` and tells it to run the
  command (:func:`daemon.board.runs.exited`); its ``run.verified`` report
  ends the run (:func:`verified`): exit 0 accepts the work, anything else
  *rejects* it (outcome ``rejected``, the task back to ready with the output as
  a comment, blocked after ``max_turns`` rejections in a row);
- accepted work goes to ``review`` instead of ``done`` when the task or the
  profile asks for it (:func:`accept`); ``kanban approve`` (:func:`approve`)
  and ``kanban request-changes`` (:func:`request_changes`) end the review, by
  an operator or by a run of the ``review_by`` profile (:func:`claim_review`).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import runs, tasks

#: Default verification settings when a task names a command but its profile has no ``verify``.
DEFAULT_TIMEOUT = 600.0
DEFAULT_TURNS = 3
#: How much of the verify output goes into the rejection comment and the event.
TAIL_CHARS = 2000


def gate(cfg: dict[str, Any], task: sqlite3.Row, profile: str | None) -> dict[str, Any]:
    """What accepting this task's work takes, from the task first, then the run's profile.

    Returns:
        ``{"verify": argv or None, "timeout": seconds, "max_turns": n, "review": bool,
        "review_by": profile name or None}``.
    """
    prof = cfg["profiles"].get(profile or "") or {}
    pv = prof.get("verify") or {}
    argv = json.loads(task["verify_command"]) if task["verify_command"] is not None else pv.get("command")
    turns = task["verify_turns"] if task["verify_turns"] is not None else pv.get("max_turns", DEFAULT_TURNS)
    review_by = prof.get("review_by")
    if task["review"] is not None:
        review = bool(task["review"])
    else:
        review = prof.get("review") == "required" or (prof.get("review") is None and review_by is not None)
    return {"verify": argv or None, "timeout": pv.get("timeout", DEFAULT_TIMEOUT), "max_turns": turns,
            "review": review, "review_by": review_by}


def submit(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], task_id: str, run_id: str,
           summary: str | None = None, result: str | None = None, metadata: dict | None = None
           ) -> dict[str, Any] | None:
    """A worker completed its task: verify and/or review it, or return ``None`` for a plain complete.

    Args:
        task_id: The task; ``run_id`` must be its current run (the fencing token).

    Returns:
        The ``task.complete`` result (``{tasks, promoted, verifying}``), or ``None`` when the
        task needs neither verification nor review (the caller completes it as usual).

    Raises:
        RPCError: ``stale_token``; ``conflict`` when the run already completed and waits for its
            verification, or a parent is open.
    """
    row = tasks.get(conn, task_id)
    tasks.check_token(row, run_id)
    run = runs.get_run(conn, run_id)
    if run["verify"] in ("pending", "running"):
        raise RPCError("conflict", f"run {run_id} of task {task_id} already completed; its verification is "
                       "pending", task=task_id, run=run_id)
    g = gate(cfg, row, run["profile"])
    if not g["verify"] and not g["review"]:
        return None
    open_parents = tasks.open_parents(conn, task_id)
    if open_parents:
        raise RPCError("conflict", f"task {task_id} has {open_parents} open parent(s); cannot complete it",
                       task=task_id, status=row["status"], move="complete", open_parents=open_parents)
    conn.execute("UPDATE runs SET outcome='completed', summary=?, metadata=? WHERE id=?",
                 (summary, json.dumps(metadata) if metadata else None, run_id))
    conn.execute("UPDATE tasks SET summary=?, result=?, updated_at=? WHERE id=?", (summary, result, now, task_id))
    verifying = []
    if g["verify"]:
        conn.execute("UPDATE runs SET verify='pending', verify_command=? WHERE id=?",
                     (json.dumps(g["verify"]), run_id))
        tasks.emit(conn, now, "verifying", task_id, run_id, summary=summary, command=g["verify"],
                   turn=row["verify_rejections"] + 1, max_turns=g["max_turns"])
        verifying.append(task_id)
    else:
        accept(conn, now, cfg, tasks.get(conn, task_id), run_id, verified=False)
    return {"tasks": [tasks.task_dict(conn, task_id)], "promoted": [], "verifying": verifying}


def accept(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], row: sqlite3.Row, run_id: str,
           verified: bool) -> list[str]:
    """The work is accepted: to ``review`` if the task or its run's profile asks for it, else ``done``.

    Returns:
        The children promoted (none while the task waits in review).
    """
    run = runs.get_run(conn, run_id)
    g = gate(cfg, row, run["profile"])
    if g["review"]:
        tasks.set_status(conn, now, row, "submit", consecutive_failures=0, block_reason=None,
                         verify_rejections=0 if verified else row["verify_rejections"])
        tasks.emit(conn, now, "review_requested", row["id"], run_id, reviewer=g["review_by"], verified=verified,
                   summary=row["summary"])
        return []
    tasks.set_status(conn, now, row, "complete", consecutive_failures=0, block_reason=None, verify_rejections=0)
    tasks.emit(conn, now, "completed", row["id"], run_id, summary=row["summary"], by="worker", verified=verified,
               workspace={"kind": row["workspace_kind"], "path": row["workspace_path"]})
    return tasks.promote_children(conn, now, row["id"])


def verified(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], run_id: str, *,
             exit_code: int | None = None, signal: int | None = None, timed_out: bool = False,
             killed_for: str | None = None, spawn_error: str | None = None, lost: str | None = None,
             output_tail: str | None = None, output_path: str | None = None, ended_at: float | None = None
             ) -> dict[str, Any]:
    """The reaper reports how a run's verify command ended (``run.verified``). Idempotent.

    - The verification was cancelled (an operator blocked, archived, killed or reassigned the
      task): the run ends as :func:`daemon.board.runs.exited` decides for that kill.
    - It was cut short by the daemon's shutdown, or its wrapper vanished: nothing is believed;
      the run stays ``verifying`` and the answer ``{"verify": true}`` has it run again.
    - Exit 0: the run ends ``completed`` and the work is accepted (:func:`accept`).
    - Anything else (a non-zero exit, a signal, the timeout, a command that cannot start): the run
      ends ``rejected``; the task goes back to ready with a comment holding the command, its exit
      and the tail of its output, or is blocked after ``max_turns`` rejections in a row.

    Returns:
        ``{"outcome": ...}``, or ``{"outcome": None, "verify": True}`` to run it again.

    Raises:
        RPCError: ``conflict`` if the run is not verifying.
    """
    run = runs.get_run(conn, run_id)
    if run["state"] == "ended":
        return {"outcome": run["outcome"], "duplicate": True}
    if run["state"] != "verifying":
        raise RPCError("conflict", f"run {run_id} is {run['state']}, not verifying", run=run_id, state=run["state"])
    if run["verify"] == "cancelled":  # the verify command is gone: the run ends as the operator's kill says
        conn.execute("UPDATE runs SET state='exiting' WHERE id=?", (run_id,))
        return runs.exited(conn, now, cfg, run_id, killed_for=run["kill_reason"], ended_at=ended_at)
    task = tasks.get(conn, run["task_id"])
    if lost or killed_for == "shutdown":
        tasks.emit(conn, now, "verify_interrupted", task["id"], run_id, reason=lost or "the daemon shut down")
        return {"outcome": None, "verify": True}
    argv = json.loads(run["verify_command"])
    code = None if (signal or spawn_error or timed_out) else exit_code
    ended = ended_at or now
    passed = exit_code == 0 and not signal and not timed_out and not spawn_error
    if passed:
        conn.execute("UPDATE runs SET state='ended', outcome='completed', verify='passed', verify_exit=0, "
                     "verify_output=?, ended_at=?, started_at=coalesce(started_at, claimed_at) WHERE id=?",
                     (output_path, ended, run_id))
        tasks.emit(conn, now, "exited", task["id"], run_id, outcome="completed", exit_code=run["exit_code"],
                   signal=run["signal"], verified=True)
        promoted: list[str] = []
        if task["status"] == "running" and task["current_run"] == run_id:
            if tasks.open_parents(conn, task["id"]):  # a parent was linked while it was verified
                tasks.set_status(conn, now, task, "requeue", current_run=None)
                tasks.emit(conn, now, "requeued", task["id"], run_id, outcome="completed",
                           reason="verified, but a parent was linked meanwhile")
            else:
                conn.execute("UPDATE tasks SET current_run=NULL WHERE id=?", (task["id"],))
                promoted = accept(conn, now, cfg, tasks.get(conn, task["id"]), run_id, verified=True)
        return {"outcome": "completed", "promoted": promoted}
    g = gate(cfg, task, run["profile"])
    if spawn_error:
        how = spawn_error
    elif timed_out:
        how = f"timed out after {g['timeout']:g}s"
    else:
        how = runs.describe_exit(exit_code, signal)
    tail = (output_tail or "")[-TAIL_CHARS:]
    conn.execute("UPDATE runs SET state='ended', outcome='rejected', verify='failed', verify_exit=?, "
                 "verify_output=?, ended_at=?, error=?, started_at=coalesce(started_at, claimed_at) WHERE id=?",
                 (code if code is not None else -1, output_path, ended, f"verification: {how}\n{tail}"[:4000],
                  run_id))
    tasks.emit(conn, now, "exited", task["id"], run_id, outcome="rejected", exit_code=run["exit_code"],
               signal=run["signal"])
    if task["status"] != "running" or task["current_run"] != run_id:
        return {"outcome": "rejected"}
    turn = task["verify_rejections"] + 1
    command = " ".join(argv)
    body = (f"verification rejected run {run_id} (turn {turn} of {g['max_turns']}): `{command}` {how}\n"
            + (f"--- output (tail) ---\n{tail.rstrip()}\n" if tail.strip() else "(no output)\n")
            + (f"full output: {output_path}" if output_path else ""))
    tasks.comment(conn, now, task["id"], body.rstrip(), author="kanban-verify")
    tasks.emit(conn, now, "rejected", task["id"], run_id, command=argv, exit_code=code, signal=signal,
               timed_out=timed_out or None, turn=turn, max_turns=g["max_turns"], output=output_path,
               output_tail=tail[-400:])
    if turn >= g["max_turns"]:
        reason = f"verification failed {turn} times"
        tasks.set_status(conn, now, task, "give_up", current_run=None, verify_rejections=turn, block_reason=reason)
        tasks.emit(conn, now, "verify_failed", task["id"], run_id, reason=reason, turns=turn,
                   max_turns=g["max_turns"], command=argv)
    else:
        tasks.set_status(conn, now, task, "reject", current_run=None, verify_rejections=turn)
    return {"outcome": "rejected"}


def last_rejection_output(conn: sqlite3.Connection, task_id: str) -> str | None:
    """The output file of the task's latest verification, if that verification rejected the work."""
    row = conn.execute("SELECT outcome, verify_output FROM runs WHERE task_id=? AND verify IN ('passed', 'failed') "
                       "ORDER BY claimed_at DESC, rowid DESC LIMIT 1", (task_id,)).fetchone()
    return row["verify_output"] if row and row["outcome"] == "rejected" else None


def claim_review(conn: sqlite3.Connection, now: float, task_id: str, profile: str, claim_ttl: float
                 ) -> dict[str, Any]:
    """Open a reviewer run on a task in ``review``: the task stays in review, the run is its current run.

    Raises:
        RPCError: ``illegal_transition`` if the task is not in review (or already being reviewed).
    """
    run_id = tasks.new_id("r_", 6)
    cur = conn.execute("UPDATE tasks SET current_run=?, updated_at=? WHERE id=? AND status='review' "
                       "AND current_run IS NULL", (run_id, now, task_id))
    if cur.rowcount != 1:
        row = tasks.get(conn, task_id)
        raise RPCError("illegal_transition", f"task {task_id} is {row['status']}; cannot start a review of it",
                       task=task_id, status=row["status"], move="claim")
    conn.execute("INSERT INTO runs (id, task_id, profile, state, claimed_at, claim_expires, last_heartbeat, kind) "
                 "VALUES (?,?,?,?,?,?,?,?)", (run_id, task_id, profile, "claimed", now, now + claim_ttl, now, "review"))
    tasks.emit(conn, now, "claimed", task_id, run_id, profile=profile, review=True)
    return runs.run_dict(runs.get_run(conn, run_id))


def _reviewer_token(row: sqlite3.Row, run: str | None) -> None:
    """A reviewer's request must carry the task's current (reviewer) run id."""
    if run is None:
        return
    if row["current_run"] != run or row["status"] != "review":
        raise RPCError("stale_token", f"run {run} is not the current review run of task {row['id']} "
                       f"(status {row['status']}, current run {row['current_run'] or 'none'})",
                       task=row["id"], run=run, current_run=row["current_run"])


def _author(conn: sqlite3.Connection, run: str | None, author: str | None) -> str | None:
    """Who wrote a verdict's comment: as given, else the reviewer run's profile (else the daemon's $USER)."""
    if author or run is None:
        return author
    row = conn.execute("SELECT profile FROM runs WHERE id=?", (run,)).fetchone()
    return f"{row['profile']} (review)" if row and row["profile"] else None


def _end_review(conn: sqlite3.Connection, now: float, row: sqlite3.Row, run: str | None, outcome: str
                ) -> str | None:
    """Record the reviewer run's verdict, or fence a live reviewer run an operator overrules."""
    if run is not None:
        conn.execute("UPDATE runs SET outcome=? WHERE id=?", (outcome, run))
        return None
    live = row["current_run"]
    if live and conn.execute("SELECT 1 FROM runs WHERE id=? AND kind='review' AND state != 'ended'",
                             (live,)).fetchone():
        tasks.end_run(conn, now, live, "cancel", outcome="cancelled")
        return live
    return None


def approve(conn: sqlite3.Connection, now: float, ids: list[str], comment: str | None = None,
            run: str | None = None, author: str | None = None) -> dict[str, Any]:
    """Approve tasks in review: done, children promoted (``kanban approve``).

    Raises:
        RPCError: ``illegal_transition`` if a task is not in review; ``stale_token`` for a
            reviewer run that is not the task's current run; ``conflict`` for an open parent.
    """
    if not ids:
        raise RPCError("invalid_params", "no task ids given (outside a reviewer run, name the tasks)", field="ids")
    if run is not None and len(ids) != 1:
        raise RPCError("invalid_params", "a run token approves exactly one task", field="ids")
    done, promoted = [], []
    for task_id in ids:
        row = tasks.get(conn, task_id)
        _reviewer_token(row, run)
        tasks.set_status(conn, now, row, "approve", current_run=None, consecutive_failures=0, block_reason=None)
        fenced = _end_review(conn, now, row, run, "approved")
        if comment and comment.strip():
            tasks.comment(conn, now, task_id, comment, author=_author(conn, run, author))
        tasks.emit(conn, now, "completed", task_id, run or fenced, summary=row["summary"],
                   by="reviewer" if run else "operator", approved=True, comment=comment or None, kill_run=fenced,
                   workspace={"kind": row["workspace_kind"], "path": row["workspace_path"]})
        promoted += tasks.promote_children(conn, now, task_id)
        done.append(tasks.task_dict(conn, task_id))
    return {"tasks": done, "promoted": promoted}


def request_changes(conn: sqlite3.Connection, now: float, task_id: str, comment: str, run: str | None = None,
                    author: str | None = None) -> dict[str, Any]:
    """Send a task in review back to ready (todo while a parent is open) with a comment.

    The failure count and the verification turns are untouched.

    Raises:
        RPCError: ``invalid_params`` for an empty comment; ``illegal_transition`` if the task is
            not in review; ``stale_token`` for a reviewer run that is not its current run.
    """
    if not comment or not comment.strip():
        raise RPCError("invalid_params", "request-changes needs a --comment saying what to change", field="comment")
    row = tasks.get(conn, task_id)
    _reviewer_token(row, run)
    status = tasks.set_status(conn, now, row, "request_changes", current_run=None, cooldown_until=None,
                              cooldown_kind=None)  # a reviewer's backoff is not the implementer's
    fenced = _end_review(conn, now, row, run, "changes_requested")
    c = tasks.comment(conn, now, task_id, comment, author=_author(conn, run, author))
    tasks.emit(conn, now, "changes_requested", task_id, run or fenced, by="reviewer" if run else "operator",
               comment=comment, comment_id=c["id"], status=status, kill_run=fenced)
    return {"tasks": [tasks.task_dict(conn, task_id)], "comment": c}


def implemented_by(conn: sqlite3.Connection, task_id: str, run_id: str | None, profile: str | None) -> str | None:
    """Why the caller may not review ``task_id``: its run did the work, or its profile did the latest
    work on it. ``None`` when it may."""
    if run_id and conn.execute("SELECT 1 FROM runs WHERE id=? AND task_id=? AND kind='work'",
                               (run_id, task_id)).fetchone():
        return f"run {run_id} did the work on task {task_id}; a reviewer may not approve its own task's run"
    last = conn.execute("SELECT id, profile FROM runs WHERE task_id=? AND kind='work' ORDER BY claimed_at DESC, "
                        "rowid DESC LIMIT 1", (task_id,)).fetchone()
    if last is not None and profile and last["profile"] == profile:
        return (f"profile {profile} did the work on task {task_id} (run {last['id']}); a reviewer may not "
                "approve its own task's run")
    return None
