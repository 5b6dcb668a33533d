"""Runs: claims, fencing tokens, heartbeats, and how a run's end is classified.

Runs in: the dispatcher (inside its transactions) and unit tests.

A claim is a compare-and-swap of a ready task to running that opens a run;
the run id is the fencing token every worker request must carry. The way a
run ended is decoded by :func:`decode_exit` and its consequence for the task
comes from the ``OUTCOMES`` table.
"""

from __future__ import annotations

import dataclasses
import json
import signal as signal_mod
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

RUN_COLUMNS = ("id, task_id, profile, state, outcome, exit_code, signal, pid, start_time, worker_pid, claimed_at, "
               "started_at, ended_at, claim_expires, last_heartbeat, heartbeat_note, summary, metadata, error, "
               "kill_reason")
EX_TEMPFAIL = 75


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a run's end means for its task."""

    failure: bool      # counts toward the circuit breaker
    requeue: bool      # the task goes back to ready (if it is still this run's)
    event: bool        # emit an event named after the outcome
    doc: str


OUTCOMES: dict[str, Outcome] = {
    "completed": Outcome(False, False, False, "the worker completed the task through the client"),
    "blocked": Outcome(False, False, False, "the worker blocked the task through the client"),
    "cancelled": Outcome(False, False, False, "an operator blocked or archived the task while it ran"),
    "protocol_violation": Outcome(True, True, True, "exit 0, but the task was still running"),
    "crashed": Outcome(True, True, True, "non-zero exit or killed by a signal"),
    "rate_limited": Outcome(False, True, True, "exit 75 (EX_TEMPFAIL); requeued after the cooldown"),
    "timed_out": Outcome(True, True, True, "ran past max_runtime; TERM, then KILL"),
    "spawn_failed": Outcome(True, True, True, "the command could not be started"),
    "stale": Outcome(True, True, True, "no heartbeat for heartbeat_max_stale; killed and requeued"),
    "reclaimed": Outcome(False, True, True, "the worker vanished without an exit status report"),
    "interrupted": Outcome(False, True, True, "stopped by the daemon's shutdown (on_shutdown: kill)"),
    "lost": Outcome(False, True, True, "the exit status is truly unknowable"),
}

_KILL_OUTCOMES = {"timeout": "timed_out", "stale": "stale", "reclaim": "reclaimed", "shutdown": "interrupted"}


def decode_exit(*, preset: str | None, exit_code: int | None, signal: int | None, timed_out: bool = False,
                killed_for: str | None = None, spawn_error: str | None = None, lost: str | None = None) -> str:
    """Classify how a run ended. Pure: the order of the checks is the policy.

    Args:
        preset: An outcome recorded while the run was alive (the worker
            completed or blocked through the client, or an operator fenced it).
        exit_code: The worker's exit code, if it exited.
        signal: The signal that killed it, if any.
        timed_out: The reaper killed it for overrunning ``max_runtime``.
        killed_for: Why the daemon killed it, if it did.
        spawn_error: Why it could not start.
        lost: Why its status is unknowable.
    """
    if preset in ("completed", "blocked", "cancelled"):
        return preset
    if spawn_error:
        return "spawn_failed"
    if lost:
        return "lost"
    if timed_out:
        return "timed_out"
    if killed_for in _KILL_OUTCOMES:
        return _KILL_OUTCOMES[killed_for]
    if signal is None and exit_code == EX_TEMPFAIL:
        return "rate_limited"
    if signal is None and exit_code == 0:
        return "protocol_violation"
    return "crashed"


def describe_exit(exit_code: int | None, signal: int | None) -> str:
    if signal:
        try:
            name = signal_mod.Signals(signal).name
        except ValueError:
            name = str(signal)
        return f"killed by {name}"
    return f"exit code {exit_code}"


def failure_limit(task: sqlite3.Row, cfg: dict[str, Any]) -> tuple[int, str]:
    """The breaker's limit and where it came from: the task, the config, or the default."""
    if task["max_retries"] is not None:
        return task["max_retries"], "task"
    if "dispatch.failure_limit" in cfg.get("_set", ()):
        return cfg["dispatch"]["failure_limit"], "config"
    return cfg["dispatch"]["failure_limit"], "default"


def get_run(conn: sqlite3.Connection, run_id: str) -> sqlite3.Row:
    row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        raise RPCError("not_found", f"no run {run_id}", id=run_id)
    return row


def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["metadata"] = json.loads(d["metadata"]) if d["metadata"] else None
    end = d["ended_at"]
    d["duration"] = (end - d["started_at"]) if (end and d["started_at"]) else None
    return d


def list_runs(conn: sqlite3.Connection, task_id: str, checked: bool = False) -> dict[str, Any]:
    if not checked:
        tasks.get(conn, task_id)
    rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE task_id=? ORDER BY claimed_at, rowid", (task_id,))
    return {"runs": [run_dict(r) for r in rows]}


def active_runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Runs whose worker may be alive (claimed or running, not yet ended)."""
    rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE state != 'ended' ORDER BY claimed_at")
    return [run_dict(r) for r in rows]


def claim(conn: sqlite3.Connection, now: float, task_id: str, profile: str, claim_ttl: float,
          workspace_path: str | None) -> dict[str, Any]:
    """Atomically move a ready task to running and open its run (the fencing token)."""
    run_id = tasks.new_id("r_", 6)
    cur = conn.execute("UPDATE tasks SET status='running', current_run=?, updated_at=?, workspace_path=?, "
                       "skip_noted=NULL WHERE id=? AND status='ready'", (run_id, now, workspace_path, task_id))
    if cur.rowcount != 1:
        row = tasks.get(conn, task_id)
        raise RPCError("illegal_transition", f"task {task_id} is {row['status']}; cannot claim it",
                       task=task_id, status=row["status"], move="claim")
    conn.execute("INSERT INTO runs (id, task_id, profile, state, claimed_at, claim_expires, last_heartbeat) "
                 "VALUES (?,?,?,?,?,?,?)", (run_id, task_id, profile, "claimed", now, now + claim_ttl, now))
    tasks.emit(conn, now, "claimed", task_id, run_id, profile=profile)
    return run_dict(get_run(conn, run_id))


def started(conn: sqlite3.Connection, now: float, run_id: str, pid: int, start_time: float,
            worker_pid: int | None) -> dict[str, Any]:
    run = get_run(conn, run_id)
    if run["state"] == "ended":
        return {"ok": False, "state": "ended"}
    if run["state"] == "running" and run["pid"] == pid:
        return {"ok": True, "state": "running"}  # a re-sent report (the reaper re-attached)
    # started_at is the wrapper's own start (process start time, wall clock), the same clock the
    # wrapper uses for ended_at, so durations are never negative.
    started_at = start_time if start_time and abs(start_time - now) < 3600 else now
    conn.execute("UPDATE runs SET state='running', pid=?, start_time=?, worker_pid=?, started_at=? WHERE id=?",
                 (pid, start_time, worker_pid, started_at, run_id))
    tasks.emit(conn, now, "started", run["task_id"], run_id, pid=pid, worker_pid=worker_pid)
    return {"ok": True}


def exited(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], run_id: str, *,
           exit_code: int | None = None, signal: int | None = None, timed_out: bool = False,
           killed_for: str | None = None, spawn_error: str | None = None, lost: str | None = None,
           log_tail: str | None = None, ended_at: float | None = None) -> dict[str, Any]:
    """Record how a run ended and apply the consequence to its task. Idempotent."""
    run = get_run(conn, run_id)
    if run["state"] == "ended":
        return {"outcome": run["outcome"], "duplicate": True}
    killed_for = killed_for or run["kill_reason"]
    outcome = decode_exit(preset=run["outcome"], exit_code=exit_code, signal=signal, timed_out=timed_out,
                          killed_for=killed_for, spawn_error=spawn_error, lost=lost)
    spec = OUTCOMES[outcome]
    error = None
    if outcome == "spawn_failed":
        error = spawn_error
    elif outcome == "lost":
        error = lost
    elif spec.failure or outcome == "rate_limited":
        error = describe_exit(exit_code, signal)
        if log_tail:
            error += "\n" + log_tail
    ended = ended_at or now
    conn.execute("UPDATE runs SET state='ended', outcome=?, exit_code=?, signal=?, ended_at=?, error=?, "
                 "started_at=coalesce(started_at, ?) WHERE id=?",
                 (outcome, exit_code, signal, ended, error, run["claimed_at"], run_id))
    task = tasks.get(conn, run["task_id"])
    payload = {"outcome": outcome, "exit_code": exit_code, "signal": signal}
    tasks.emit(conn, now, "exited", task["id"], run_id, **payload)
    if spec.event:
        tasks.emit(conn, now, outcome, task["id"], run_id, **payload, error=(error or "")[-400:])
    if task["current_run"] != run_id:
        return {"outcome": outcome}
    if task["status"] != "running" or not spec.requeue:
        conn.execute("UPDATE tasks SET current_run=NULL WHERE id=?", (task["id"],))
        return {"outcome": outcome}
    failures = task["consecutive_failures"] + (1 if spec.failure else 0)
    limit, source = failure_limit(task, cfg)
    if spec.failure and failures >= limit:
        reason = f"gave up after {failures} consecutive failures (last: {outcome})"
        tasks.set_status(conn, now, task, "give_up", current_run=None, consecutive_failures=failures,
                         block_reason=reason)
        tasks.emit(conn, now, "gave_up", task["id"], run_id, limit=limit, source=source, failures=failures,
                   outcome=outcome)
    else:
        cooldown = now + cfg["dispatch"]["rate_limit_cooldown"] if outcome == "rate_limited" else None
        tasks.set_status(conn, now, task, "requeue", current_run=None, consecutive_failures=failures,
                         cooldown_until=cooldown)
        tasks.emit(conn, now, "requeued", task["id"], run_id, outcome=outcome, failures=failures, limit=limit,
                   cooldown_until=cooldown)
    return {"outcome": outcome}


def heartbeat(conn: sqlite3.Connection, now: float, task_id: str, run: str | None, note: str | None,
              claim_ttl: float) -> dict[str, Any]:
    if not run:
        raise RPCError("invalid_params", "heartbeat needs the run token (--run or $KANBAN_RUN)", field="run")
    row = tasks.get(conn, task_id)
    tasks.check_token(row, run)
    expires = now + claim_ttl
    conn.execute("UPDATE runs SET last_heartbeat=?, claim_expires=?, heartbeat_note=coalesce(?, heartbeat_note) "
                 "WHERE id=?", (now, expires, note, run))
    tasks.emit(conn, now, "heartbeat", task_id, run, note=note)
    return {"task": task_id, "run": run, "claim_expires": expires}


def expired_claims(conn: sqlite3.Connection, now: float) -> list[sqlite3.Row]:
    return conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE state != 'ended' AND claim_expires < ? "
                        "AND kill_reason IS NULL", (now,)).fetchall()


def extend_claim(conn: sqlite3.Connection, now: float, run: sqlite3.Row, claim_ttl: float) -> None:
    conn.execute("UPDATE runs SET claim_expires=? WHERE id=?", (now + claim_ttl, run["id"]))
    tasks.emit(conn, now, "claim_extended", run["task_id"], run["id"], until=now + claim_ttl)


def mark_kill(conn: sqlite3.Connection, now: float, run_id: str, reason: str) -> None:
    """Record why the daemon is stopping a run; the dispatcher then tells the reaper."""
    run = get_run(conn, run_id)
    conn.execute("UPDATE runs SET kill_reason=coalesce(kill_reason, ?) WHERE id=?", (reason, run_id))
    tasks.emit(conn, now, "killing", run["task_id"], run_id, reason=reason, kill_run=run_id)
