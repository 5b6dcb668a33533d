"""Runs: claims, fencing tokens, heartbeats, and how a run's end is classified.

Runs in: the dispatcher (inside its transactions) and unit tests.

A claim is a compare-and-swap of a ready task to running that opens a run;
the run id is the fencing token every worker request must carry. A run has
its own state machine, the ``RUN_TABLE`` below: ``claimed -> starting ->
running -> exiting -> ended``, and only the reaper, once it has confirmed that
no process of the run is alive, may move a run to ``ended``. The way a run
ended is decoded by :func:`decode_exit` and its consequence for the task comes
from the ``OUTCOMES`` table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import re
import signal as signal_mod
import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import tasks

RUN_COLUMNS = ("id, task_id, profile, state, outcome, exit_code, signal, pid, start_time, worker_pid, claimed_at, "
               "started_at, ended_at, claim_expires, last_heartbeat, heartbeat_note, summary, metadata, error, "
               "kill_reason, kind, verify, verify_command, verify_exit, verify_output")
EX_TEMPFAIL = 75
#: Characters of the log tail kept in a failed run's ``error`` (the reaper sends more, for the patterns).
LOG_TAIL_KEPT = 400

RUN_STATES = ("claimed", "starting", "running", "exiting", "verifying", "ended")
#: Kills that come from an operator's decision: they cancel a pending or running verification too.
OPERATOR_KILLS = frozenset({"cancel", "kill", "reassign"})


@dataclasses.dataclass(frozen=True)
class RunMove:
    """One row of the run state table: ``sources`` --``move``--> ``target``, made by ``by``."""

    move: str
    sources: frozenset[str]
    target: str
    by: str
    doc: str


def _rm(move: str, sources: str, target: str, by: str, doc: str) -> RunMove:
    return RunMove(move, frozenset(sources.split()), target, by, doc)


#: Who may move a run, and where. A move not in the table leaves the run where it is.
RUN_TABLE: tuple[RunMove, ...] = (
    _rm("claim", "", "claimed", "dispatcher", "the claim transaction committed; no process yet"),
    _rm("spawning", "claimed", "starting", "reaper", "the reaper forked the run's wrapper (run.starting)"),
    _rm("started", "claimed starting", "running", "reaper",
        "the worker exec'd; the wrapper reported it with the exec time (run.started)"),
    _rm("kill", "claimed starting running", "exiting", "dispatcher or reaper",
        "the run must end (complete with a lingering worker excepted: block, archive, kill, reassign, "
        "timeout, stale, reclaim, shutdown); TERM now, KILL after kill_grace"),
    _rm("exited", "claimed starting running exiting", "ended", "reaper",
        "no process of the run is alive (wrapper's ECHILD, empty cgroup, or a sweep found nothing) "
        "and the outcome is recorded (run.exited)"),
    _rm("verify", "claimed starting running exiting", "verifying", "reaper",
        "as exited, but the worker completed and the work must pass its verify command first: the answer to "
        "run.exited tells the reaper to run it, under the same containment, in the run's workspace"),
    _rm("cancel_verify", "verifying", "verifying", "dispatcher",
        "an operator blocked, archived, killed or reassigned the task: the verify command is stopped, and the "
        "run ends with that outcome once it is gone"),
    _rm("verified", "verifying", "ended", "reaper",
        "no process of the verify command is alive; outcome completed (exit 0) or rejected (run.verified); a "
        "verification cut short by a shutdown or lost with its wrapper stays verifying and is run again"),
)
_RUN_INDEX = {(src, row.move): row for row in RUN_TABLE for src in row.sources}


def run_move(state: str, move: str) -> str | None:
    """The state a run in ``state`` reaches by ``move``, or ``None`` if the move does not apply."""
    row = _RUN_INDEX.get((state, move))
    return row.target if row else None


def render_run_table() -> str:
    """The run table as Markdown, for ``docs/architecture.md``."""
    rows = ["| move | from | to | made by | when |", "|---|---|---|---|---|"]
    for r in RUN_TABLE:
        rows.append(f"| `{r.move}` | {', '.join(sorted(r.sources)) or '(new)'} | {r.target} | {r.by} | {r.doc} |")
    return "\n".join(rows) + "\n"


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
    "rate_limited": Outcome(False, True, True, "exit 75 (EX_TEMPFAIL), or an exit (non-zero, or 0 without completing) "
                            "whose log tail matches one of the profile's rate_limit_patterns; requeued after the "
                            "cooldown"),
    "timed_out": Outcome(True, True, True, "ran past max_runtime; TERM, then KILL"),
    "spawn_failed": Outcome(True, True, True, "the command could not be started"),
    "stale": Outcome(True, True, True, "no heartbeat for heartbeat_max_stale; killed and requeued"),
    "reclaimed": Outcome(False, True, True, "the worker vanished without an exit status report"),
    "interrupted": Outcome(False, True, True, "stopped by the daemon's shutdown (on_shutdown: kill)"),
    "lost": Outcome(False, True, True, "the exit status is truly unknowable"),
    "killed": Outcome(False, True, True, "an operator ended the run (kanban kill); requeued"),
    "reassigned": Outcome(False, True, True, "the task was assigned elsewhere while it ran; requeued"),
    "rejected": Outcome(False, False, True, "the worker completed but the verify command failed; the task is "
                        "back in ready with the output as a comment (max_turns bounds these, not the breaker)"),
    "approved": Outcome(False, False, False, "a reviewer run approved the task (kanban approve)"),
    "changes_requested": Outcome(False, False, False, "a reviewer run sent the task back (kanban request-changes)"),
}

_KILL_OUTCOMES = {"timeout": "timed_out", "stale": "stale", "reclaim": "reclaimed", "shutdown": "interrupted",
                  "kill": "killed", "reassign": "reassigned"}


def decode_exit(*, preset: str | None, exit_code: int | None, signal: int | None, timed_out: bool = False,
                killed_for: str | None = None, spawn_error: str | None = None, lost: str | None = None,
                rate_limit_matched: bool = False) -> str:
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
        rate_limit_matched: The log's tail matched one of the profile's ``rate_limit_patterns``
            (see :func:`rate_limit_match`): an exit that would be ``crashed`` (non-zero) or
            ``protocol_violation`` (0 with the task still running) is ``rate_limited`` instead.
    """
    if preset in ("completed", "blocked", "cancelled", "approved", "changes_requested"):
        return preset
    if spawn_error:
        return "spawn_failed"
    if lost:
        return "lost"
    if timed_out:
        return "timed_out"
    if killed_for in _KILL_OUTCOMES:
        return _KILL_OUTCOMES[killed_for]
    if signal is None and (exit_code == EX_TEMPFAIL or (rate_limit_matched and exit_code is not None)):
        return "rate_limited"  # an agent that gave up on a 429 and exited 0 is cooled down too, not failed
    if signal is None and exit_code == 0:
        return "protocol_violation"
    return "crashed"


@functools.lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text, re.MULTILINE)


def rate_limit_match(patterns: list[str], log_tail: str | None) -> str | None:
    """The first of a profile's ``rate_limit_patterns`` found in ``log_tail``, or ``None``.

    Args:
        patterns: Regexes, already checked when the config was loaded (``daemon.config``).
        log_tail: The end of the run's log output (the reaper sends the last 4 KiB after the run's start line).
    """
    if not log_tail:
        return None
    for text in patterns:
        try:
            if _pattern(text).search(log_tail):
                return text
        except re.error:  # checked at load; a config that skipped the check must not break run.exited
            continue
    return None


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
    if "verify_command" in d:
        d["verify_command"] = json.loads(d["verify_command"]) if d["verify_command"] else None
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


def starting(conn: sqlite3.Connection, now: float, run_id: str, pid: int) -> dict[str, Any]:
    """The reaper forked the run's wrapper (``pid``): claimed -> starting."""
    run = get_run(conn, run_id)
    target = run_move(run["state"], "spawning")
    if target is None:
        conn.execute("UPDATE runs SET pid=coalesce(pid, ?) WHERE id=?", (pid, run_id))
        return {"ok": False, "state": run["state"]}
    conn.execute("UPDATE runs SET state=?, pid=? WHERE id=?", (target, pid, run_id))
    return {"ok": True, "state": target}


def started(conn: sqlite3.Connection, now: float, run_id: str, pid: int, start_time: float,
            worker_pid: int | None, exec_at: float | None = None) -> dict[str, Any]:
    """The worker exec'd: claimed|starting -> running. A run already ``exiting`` stays so,
    with its pids recorded; ``started_at`` is the wrapper's exec time of the worker."""
    run = get_run(conn, run_id)
    if run["state"] == "ended":
        return {"ok": False, "state": "ended"}
    if run["state"] in ("running", "exiting") and run["pid"] == pid and run["worker_pid"] == worker_pid:
        return {"ok": True, "state": run["state"]}  # a re-sent report (the reaper re-attached)
    started_at = exec_at if exec_at and abs(exec_at - now) < 86400 * 7 else (
        start_time if start_time and abs(start_time - now) < 3600 else now)
    state = run_move(run["state"], "started") or run["state"]
    conn.execute("UPDATE runs SET state=?, pid=?, start_time=?, worker_pid=?, started_at=? WHERE id=?",
                 (state, pid, start_time, worker_pid, started_at, run_id))
    tasks.emit(conn, now, "started", run["task_id"], run_id, pid=pid, worker_pid=worker_pid)
    return {"ok": True, "state": state}


def retry_backoff(failures: int, cfg: dict[str, Any], rng: random.Random | None = None) -> float:
    """Seconds before a task that failed ``failures`` times in a row is retried:
    ``retry_backoff * 2**(failures-1)``, capped at ``retry_backoff_max``, times 0.5-1.0
    ("full jitter" halved, as in the supervisor's restart backoff)."""
    d = cfg["dispatch"]
    if failures <= 0 or d["retry_backoff"] <= 0:
        return 0.0
    base = min(d["retry_backoff_max"], d["retry_backoff"] * (2 ** (failures - 1)))
    return base * (0.5 + (rng or random).random() / 2)


def profile_cooldown(conn: sqlite3.Connection, profile: str) -> tuple[float | None, str | None]:
    row = conn.execute("SELECT cooldown_until, cooldown_reason FROM profile_state WHERE profile=?",
                       (profile,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def set_profile_cooldown(conn: sqlite3.Connection, now: float, profile: str, until: float | None,
                         reason: str | None) -> None:
    conn.execute("INSERT INTO profile_state (profile, cooldown_until, cooldown_reason, updated_at) VALUES (?,?,?,?) "
                 "ON CONFLICT(profile) DO UPDATE SET cooldown_until=excluded.cooldown_until, "
                 "cooldown_reason=excluded.cooldown_reason, updated_at=excluded.updated_at",
                 (profile, until, reason, now))


def exited(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], run_id: str, *,
           exit_code: int | None = None, signal: int | None = None, timed_out: bool = False,
           killed_for: str | None = None, spawn_error: str | None = None, lost: str | None = None,
           log_tail: str | None = None, ended_at: float | None = None, retry_after: float | None = None
           ) -> dict[str, Any]:
    """Record how a run ended and apply the consequence to its task. Idempotent.

    Only the reaper calls this (``run.exited``), once no process of the run is
    alive. A counted failure requeues after :func:`retry_backoff`; a rate limit
    cools down the profile (``dispatch.rate_limit_scope: profile``) or the task
    for ``retry_after`` seconds if the worker said, else ``rate_limit_cooldown``.
    """
    run = get_run(conn, run_id)
    if run["state"] == "ended":
        return {"outcome": run["outcome"], "duplicate": True}
    if run["state"] == "verifying":  # a report sent again: the verification is already under way
        return {"outcome": None, "verify": True}
    if run["verify"] == "pending" and run["outcome"] == "completed":
        # the worker completed and none of its processes is alive: now its work is verified (a kill
        # reason of the worker's, such as its max_runtime after it completed, says nothing about that)
        conn.execute("UPDATE runs SET state='verifying', verify='running', exit_code=?, signal=?, kill_reason=NULL "
                     "WHERE id=?", (exit_code, signal, run_id))
        tasks.emit(conn, now, "exited", run["task_id"], run_id, outcome=None, exit_code=exit_code, signal=signal,
                   verifying=True)
        return {"outcome": None, "verify": True}
    killed_for = killed_for or run["kill_reason"]
    matched = None
    if exit_code not in (None, EX_TEMPFAIL) and signal is None and run["outcome"] is None:
        prof = cfg["profiles"].get(run["profile"] or "", {})
        matched = rate_limit_match(prof.get("rate_limit_patterns") or [], log_tail)
    outcome = decode_exit(preset=run["outcome"], exit_code=exit_code, signal=signal, timed_out=timed_out,
                          killed_for=killed_for, spawn_error=spawn_error, lost=lost,
                          rate_limit_matched=matched is not None)
    spec = OUTCOMES[outcome]
    error = None
    if outcome == "spawn_failed":
        error = spawn_error
    elif outcome == "lost":
        error = lost
    elif spec.failure or outcome == "rate_limited":
        error = describe_exit(exit_code, signal)
        if outcome == "rate_limited" and matched is not None:
            error += f" (log matched rate_limit_patterns: {matched})"
        if log_tail:
            error += "\n" + log_tail[-LOG_TAIL_KEPT:]
    ended = ended_at or now
    conn.execute("UPDATE runs SET state='ended', outcome=?, exit_code=?, signal=?, ended_at=?, error=?, "
                 "started_at=coalesce(started_at, ?) WHERE id=?",
                 (outcome, exit_code, signal, ended, error, run["claimed_at"], run_id))
    task = tasks.get(conn, run["task_id"])
    payload = {"outcome": outcome, "exit_code": exit_code, "signal": signal}
    if matched is not None and outcome == "rate_limited":
        payload["matched"] = matched
    tasks.emit(conn, now, "exited", task["id"], run_id, **payload)
    if spec.event:
        tasks.emit(conn, now, outcome, task["id"], run_id, **payload, error=(error or "")[-400:])
    if task["current_run"] != run_id:
        return {"outcome": outcome}
    review = run["kind"] == "review"  # a reviewer that ended without a verdict: the task stays in review
    if task["status"] != ("review" if review else "running") or not spec.requeue:
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
        cooldown, kind = None, None
        if outcome == "rate_limited":
            wait = retry_after if retry_after is not None and 0 <= retry_after <= 86400 * 7 \
                else cfg["dispatch"]["rate_limit_cooldown"]
            if cfg["dispatch"]["rate_limit_scope"] == "profile" and run["profile"]:
                why = "a rate-limit message" if matched is not None else "exit 75"
                set_profile_cooldown(conn, now, run["profile"], now + wait, f"{why} from run {run_id}")
                tasks.emit(conn, now, "cooldown", task["id"], run_id, profile=run["profile"], until=now + wait,
                           scope="profile")
            else:
                cooldown, kind = now + wait, "rate_limit"
        elif spec.failure:
            delay = retry_backoff(failures, cfg)
            if delay > 0:
                cooldown, kind = now + delay, "backoff"
        if review:
            conn.execute("UPDATE tasks SET current_run=NULL, consecutive_failures=?, cooldown_until=?, "
                         "cooldown_kind=?, updated_at=? WHERE id=?", (failures, cooldown, kind, now, task["id"]))
        else:
            tasks.set_status(conn, now, task, "requeue", current_run=None, consecutive_failures=failures,
                             cooldown_until=cooldown, cooldown_kind=kind)
        tasks.emit(conn, now, "requeued", task["id"], run_id, outcome=outcome, failures=failures, limit=limit,
                   cooldown_until=cooldown, wait=kind, review=review or None)
    return {"outcome": outcome}


def heartbeat(conn: sqlite3.Connection, now: float, task_id: str, run: str | None, note: str | None,
              claim_ttl: float) -> dict[str, Any]:
    if not run:
        raise RPCError("invalid_params", "heartbeat needs the run token (--run or $KANBAN_RUN)", field="run")
    row = tasks.get(conn, task_id)
    if not (row["status"] == "review" and row["current_run"] == run):  # a reviewer run heartbeats too
        tasks.check_token(row, run)
    expires = now + claim_ttl
    conn.execute("UPDATE runs SET last_heartbeat=?, claim_expires=?, heartbeat_note=coalesce(?, heartbeat_note) "
                 "WHERE id=?", (now, expires, note, run))
    tasks.emit(conn, now, "heartbeat", task_id, run, note=note)
    return {"task": task_id, "run": run, "claim_expires": expires}


def output_heartbeat(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], run_ids: list[str]
                     ) -> dict[str, Any]:
    """The reaper saw these runs write to their logs: each one that is live and whose profile has
    ``heartbeat_from_output`` gets a heartbeat (claim extended, ``last_heartbeat`` now) and a
    ``heartbeat`` event with ``source: output``. The reaper reports a run at most once per
    ``claim_ttl/4``, so these events stay that rare.

    Returns:
        ``{runs: [id]}``: the runs that got a heartbeat (others had ended, were being killed, or
        their profile turned it off).
    """
    ttl = cfg["dispatch"]["claim_ttl"]
    done = []
    for run_id in dict.fromkeys(run_ids):
        row = conn.execute("SELECT task_id, profile, state, kill_reason FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None or row["state"] not in ("starting", "running") or row["kill_reason"] is not None:
            continue
        if not cfg["profiles"].get(row["profile"] or "", {}).get("heartbeat_from_output", True):
            continue
        conn.execute("UPDATE runs SET last_heartbeat=?, claim_expires=max(claim_expires, ?) WHERE id=?",
                     (now, now + ttl, run_id))
        tasks.emit(conn, now, "heartbeat", row["task_id"], run_id, source="output")
        done.append(run_id)
    return {"runs": done}


def expired_claims(conn: sqlite3.Connection, now: float) -> list[sqlite3.Row]:
    return conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE state NOT IN ('ended', 'verifying') "
                        "AND claim_expires < ? AND kill_reason IS NULL", (now,)).fetchall()


def extend_claim(conn: sqlite3.Connection, now: float, run: sqlite3.Row, claim_ttl: float) -> None:
    conn.execute("UPDATE runs SET claim_expires=? WHERE id=?", (now + claim_ttl, run["id"]))
    tasks.emit(conn, now, "claim_extended", run["task_id"], run["id"], until=now + claim_ttl)


def mark_kill(conn: sqlite3.Connection, now: float, run_id: str, reason: str, emit: bool = True,
              outcome: str | None = None) -> bool:
    """The run must end: -> ``exiting`` with ``kill_reason`` (the first reason wins).

    With ``emit``, a ``killing`` event carries ``kill_run`` and the dispatcher
    tells the reaper after the commit. ``outcome`` presets the outcome the run
    will get when it ends (``cancelled`` for an operator's block or archive).
    Returns False if the run had already ended.
    """
    run = get_run(conn, run_id)
    if run["state"] == "verifying":  # the worker is gone; its verify command is what the reaper stops
        conn.execute("UPDATE runs SET kill_reason=coalesce(kill_reason, ?) WHERE id=?", (reason, run_id))
    else:
        target = run_move(run["state"], "kill")
        if target is None and run["state"] != "exiting":
            return False
        conn.execute("UPDATE runs SET state='exiting', kill_reason=coalesce(kill_reason, ?), "
                     "outcome=coalesce(outcome, ?) WHERE id=?", (reason, outcome, run_id))
    if run["verify"] in ("pending", "running") and reason in OPERATOR_KILLS:
        # completed but not yet accepted: the operator's decision wins over the worker's "completed"
        conn.execute("UPDATE runs SET verify='cancelled', outcome=? WHERE id=?", (outcome, run_id))
    if emit:
        tasks.emit(conn, now, "killing", run["task_id"], run_id, reason=reason, kill_run=run_id)
    return True
