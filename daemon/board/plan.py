"""Dispatch decisions: which ready tasks start now, and why the others wait.

Runs in: the dispatcher and unit tests.

:func:`candidates` is the hot path of every dispatch pass: it only reads as
many ready tasks per profile as there are free slots, through the
``tasks_dispatch`` index, so a pass costs the same with 10 or 100k ready
tasks. :func:`explain` is the slow, complete form behind ``kanban plan``.

Operator controls (``kanban pause``, ``resume``, ``parallel``) live on the board,
so they survive a restart: the global ones in ``settings``, a profile's on its
``profile_state`` row. :func:`controls` reads them merged with the config, and
both :func:`candidates` and :func:`explain` honour them. A pause stops new
claims only; live runs go on, and caps count them as before.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from client.protocol import RPCError
from daemon.board import schedule


_READY_COLS = ("id, title, assignee, priority, created_at, cooldown_until, cooldown_kind, consecutive_failures, "
               "max_retries")
#: A task is never claimed again while it has a run that has not ended (its processes may be alive).
_NO_LIVE_RUN = "NOT EXISTS (SELECT 1 FROM runs r WHERE r.task_id=tasks.id AND r.state != 'ended')"


def running_counts(conn: sqlite3.Connection) -> tuple[int, dict[str, int]]:
    """Live runs (every run not ``ended``), in total and per profile: what the caps count.

    A run counts from its claim until the reaper confirmed that none of its
    processes is alive, whatever its task's status: a worker that lingers
    after ``kanban complete``, or one that takes its ``kill_grace`` to stop
    after a block, holds its slot until it is gone.
    """
    by: dict[str, int] = {}
    for a, n in conn.execute("SELECT profile, count(*) FROM runs WHERE state != 'ended' GROUP BY profile"):
        by[a] = n
    return sum(by.values()), by


def profile_cooldowns(conn: sqlite3.Connection, now: float) -> dict[str, float]:
    """Profiles cooling down after a rate limit: name -> until (epoch seconds)."""
    return {p: u for p, u in conn.execute(
        "SELECT profile, cooldown_until FROM profile_state WHERE cooldown_until > ?", (now,))}


def live_run(conn: sqlite3.Connection, task_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT id, state, kill_reason FROM runs WHERE task_id=? AND state != 'ended' "
                        "ORDER BY claimed_at DESC LIMIT 1", (task_id,)).fetchone()


def controls(conn: sqlite3.Connection, cfg: dict[str, Any]) -> dict[str, Any]:
    """The operator controls in force, merged with the config.

    Returns:
        ``{paused, paused_at, max_in_progress, config_max_in_progress, overridden, profiles}``;
        ``profiles`` maps every configured profile (and any profile with a stored control) to
        ``{paused, paused_at, max_in_progress, config_max_in_progress, overridden, configured}``.
        ``max_in_progress`` is the cap in force (``None``: no profile cap); ``paused_at`` is epoch
        seconds or ``None``.
    """
    settings = dict(conn.execute("SELECT key, value FROM settings"))
    paused_at = float(settings["paused_at"]) if "paused_at" in settings else None
    cap = int(settings["max_in_progress"]) if "max_in_progress" in settings else None
    rows = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT profile, paused_at, cap_override FROM profile_state "
        "WHERE paused_at IS NOT NULL OR cap_override IS NOT NULL")}
    profiles = {}
    for name in [*cfg["profiles"], *(n for n in rows if n not in cfg["profiles"])]:
        p_at, p_cap = rows.get(name, (None, None))
        conf = cfg["profiles"].get(name, {}).get("max_in_progress")
        profiles[name] = {"paused": p_at is not None, "paused_at": p_at,
                          "max_in_progress": p_cap if p_cap is not None else conf, "config_max_in_progress": conf,
                          "overridden": p_cap is not None, "configured": name in cfg["profiles"]}
    conf = cfg["dispatch"]["max_in_progress"]
    return {"paused": paused_at is not None, "paused_at": paused_at,
            "max_in_progress": cap if cap is not None else conf, "config_max_in_progress": conf,
            "overridden": cap is not None, "profiles": profiles}


def _known_profile(conn: sqlite3.Connection, cfg: dict[str, Any], name: str) -> None:
    if name not in cfg["profiles"] and conn.execute(
            "SELECT 1 FROM profile_state WHERE profile=? AND (paused_at IS NOT NULL OR cap_override IS NOT NULL)",
            (name,)).fetchone() is None:
        known = ", ".join(sorted(cfg["profiles"])) or "none"
        raise RPCError("not_found", f"no profile {name!r} in the config (profiles: {known})", id=name,
                       field="profiles")


def _profile_row(conn: sqlite3.Connection, now: float, name: str) -> None:
    conn.execute("INSERT INTO profile_state (profile, updated_at) VALUES (?, ?) ON CONFLICT(profile) DO UPDATE "
                 "SET updated_at=excluded.updated_at", (name, now))


def pause(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], profiles: list[str] | None) -> dict[str, Any]:
    """Stop claiming new runs: everywhere (no ``profiles``), or for these profiles. Live runs go on.
    Pausing what is already paused keeps the first pause's time.

    Returns:
        :func:`controls` after the change.

    Raises:
        RPCError: ``not_found`` naming a profile that is not in the config.
    """
    if not profiles:
        conn.execute("INSERT OR IGNORE INTO settings (key, value, updated_at) VALUES ('paused_at', ?, ?)",
                     (repr(now), now))
    for name in profiles or []:
        _known_profile(conn, cfg, name)
        _profile_row(conn, now, name)
        conn.execute("UPDATE profile_state SET paused_at=coalesce(paused_at, ?) WHERE profile=?", (now, name))
    return controls(conn, cfg)


def resume(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], profiles: list[str] | None) -> dict[str, Any]:
    """Undo :func:`pause`: the global pause (no ``profiles``), or these profiles' own pauses.

    Raises:
        RPCError: ``not_found`` naming an unknown profile.
    """
    if not profiles:
        conn.execute("DELETE FROM settings WHERE key='paused_at'")
    for name in profiles or []:
        _known_profile(conn, cfg, name)
        conn.execute("UPDATE profile_state SET paused_at=NULL, updated_at=? WHERE profile=?", (now, name))
    return controls(conn, cfg)


def set_cap(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], limit: int | None, profile: str | None,
            reset: bool) -> dict[str, Any]:
    """Override ``dispatch.max_in_progress`` (or a profile's ``max_in_progress``) with ``limit``
    live runs, or drop the override (``reset``) so the config's value is in force again.

    Raises:
        RPCError: ``invalid_params`` without exactly one of ``limit`` and ``reset``;
            ``not_found`` for an unknown profile.
    """
    if (limit is None) == (not reset):
        raise RPCError("invalid_params", "give a number of parallel runs, or --reset to go back to the config",
                       field="limit")
    if profile is None:
        if reset:
            conn.execute("DELETE FROM settings WHERE key='max_in_progress'")
        else:
            conn.execute("INSERT INTO settings (key, value, updated_at) VALUES ('max_in_progress', ?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                         (str(limit), now))
        return controls(conn, cfg)
    _known_profile(conn, cfg, profile)
    _profile_row(conn, now, profile)
    conn.execute("UPDATE profile_state SET cap_override=? WHERE profile=?", (None if reset else limit, profile))
    return controls(conn, cfg)


def candidates(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Ready tasks to claim now, in dispatch order (priority, then age), within every cap and pause."""
    d = cfg["dispatch"]
    ctl = controls(conn, cfg)
    if ctl["paused"]:
        return []
    total, by = running_counts(conn)
    free = ctl["max_in_progress"] - total
    if free <= 0:
        return []
    picked: list[dict[str, Any]] = []
    default = d["default_assignee"]
    cooling = profile_cooldowns(conn, now)
    for name in cfg["profiles"]:
        pc = ctl["profiles"][name]
        cap = pc["max_in_progress"]
        slots = free if cap is None else min(free, cap - by.get(name, 0))
        if slots <= 0 or name in cooling or pc["paused"]:
            continue
        rows = conn.execute(
            f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' AND assignee=? "
            f"AND (cooldown_until IS NULL OR cooldown_until <= ?) AND {_NO_LIVE_RUN} "
            "ORDER BY priority DESC, created_at LIMIT ?", (name, now, slots)).fetchall()
        if name == default:
            rows += conn.execute(
                f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' AND assignee IS NULL "
                f"AND (cooldown_until IS NULL OR cooldown_until <= ?) AND {_NO_LIVE_RUN} "
                "ORDER BY priority DESC, created_at LIMIT ?", (now, slots)).fetchall()
            rows.sort(key=lambda r: (-r["priority"], r["created_at"]))
            rows = rows[:slots]
        mine = [{**dict(r), "profile": name} for r in rows] + review_candidates(conn, now, cfg, name, slots)
        mine.sort(key=lambda r: (-r["priority"], r["created_at"]))
        picked += mine[:slots]
    picked.sort(key=lambda r: (-r["priority"], r["created_at"]))
    return picked[:free]


#: ``skip_noted`` value for an unassigned task already reported (an assignee is never this).
UNASSIGNED_NOTE = "\x00unassigned"


def review_candidates(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], reviewer: str, slots: int
                      ) -> list[dict[str, Any]]:
    """Tasks in ``review`` that ``reviewer`` may start reviewing now: their profile names it in
    ``review_by``, no run of theirs is alive, and no backoff holds them."""
    reviewed = [n for n, p in cfg["profiles"].items() if p.get("review_by") == reviewer]
    if not reviewed or slots <= 0:
        return []
    rows = conn.execute(
        f"SELECT {_READY_COLS} FROM tasks WHERE status='review' AND assignee IN ({','.join('?' * len(reviewed))}) "
        f"AND current_run IS NULL AND (cooldown_until IS NULL OR cooldown_until <= ?) AND {_NO_LIVE_RUN} "
        "ORDER BY priority DESC, created_at LIMIT ?", (*reviewed, now, slots)).fetchall()
    return [{**dict(r), "profile": reviewer, "kind": "review"} for r in rows]


def unprofiled(conn: sqlite3.Connection, cfg: dict[str, Any]) -> list[sqlite3.Row]:
    """Ready tasks that cannot start and have not been noted yet: an assignee with no profile,
    or no assignee and no ``dispatch.default_assignee`` (``assignee`` is then ``None``)."""
    names = list(cfg["profiles"])
    marks = ",".join("?" * len(names))
    clause = f"AND assignee NOT IN ({marks})" if names else ""
    rows = conn.execute(
        f"SELECT id, assignee FROM tasks WHERE status='ready' AND assignee IS NOT NULL {clause} "
        "AND (skip_noted IS NULL OR skip_noted != assignee)", names).fetchall()
    if cfg["dispatch"]["default_assignee"] is None:
        rows += conn.execute("SELECT id, assignee FROM tasks WHERE status='ready' AND assignee IS NULL "
                             "AND skip_noted IS NULL").fetchall()
    return rows


def next_wake(conn: sqlite3.Connection, now: float) -> float | None:
    """The earliest future time a time-based rule fires (cooldowns, claim expiry, a scheduled task's due time)."""
    row = conn.execute("SELECT min(cooldown_until) FROM tasks WHERE status IN ('ready', 'review') "
                       "AND cooldown_until > ?", (now,)).fetchone()
    row2 = conn.execute("SELECT min(claim_expires) FROM runs WHERE state != 'ended' AND kill_reason IS NULL"
                        ).fetchone()
    row3 = conn.execute("SELECT min(cooldown_until) FROM profile_state WHERE cooldown_until > ?", (now,)).fetchone()
    due = schedule.next_due(conn, now)
    times = [t for t in (row[0], row2[0], row3[0], due) if t is not None]
    return min(times) if times else None


def assignees(conn: sqlite3.Connection, now: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every profile with its command, caps, live and ready counts, cooldown and last outcome.

    Assignees named by open tasks but missing from the config are listed too, with
    ``configured: false`` (their tasks are skipped until a profile exists).

    Returns:
        ``{assignees: [{name, configured, command, role, max_in_progress, max_runtime, running, ready,
        ready_unassigned, cooldown_until, cooldown_reason, last_outcome, last_task, last_run, last_ended_at}],
        running_total, max_in_progress, default_assignee}``. ``running`` counts live runs (not ``ended``),
        as the caps do; ``ready_unassigned`` is set on the ``dispatch.default_assignee`` only; times are
        epoch seconds; ``cooldown_until`` is null unless the profile is cooling down now.
    """
    d = cfg["dispatch"]
    total, live = running_counts(conn)
    ready = {a: n for a, n in conn.execute("SELECT assignee, count(*) FROM tasks WHERE status='ready' "
                                           "GROUP BY assignee")}
    waiting = {a for (a,) in conn.execute("SELECT DISTINCT assignee FROM tasks WHERE assignee IS NOT NULL "
                                          "AND status NOT IN ('done','archived')")}
    cooling = {p: (u, r) for p, u, r in conn.execute(
        "SELECT profile, cooldown_until, cooldown_reason FROM profile_state WHERE cooldown_until > ?", (now,))}
    last = {r["profile"]: r for r in conn.execute(  # SQLite: the bare columns come from the max() row
        "SELECT profile, outcome, task_id, id, max(ended_at) AS ended_at FROM runs WHERE state='ended' "
        "GROUP BY profile")}
    out = []
    for name in [*cfg["profiles"], *sorted(waiting - set(cfg["profiles"]))]:
        prof = cfg["profiles"].get(name)
        lr = last.get(name)
        until, why = cooling.get(name, (None, None))
        out.append({
            "name": name, "configured": prof is not None,
            "command": prof["command"] if prof else None, "role": prof.get("role") if prof else None,
            "max_in_progress": prof.get("max_in_progress") if prof else None,
            "max_runtime": prof.get("max_runtime") if prof else None,
            "running": live.get(name, 0), "ready": ready.get(name, 0),
            "ready_unassigned": ready.get(None, 0) if name == d["default_assignee"] else None,
            "cooldown_until": until, "cooldown_reason": why,
            "last_outcome": lr["outcome"] if lr else None, "last_task": lr["task_id"] if lr else None,
            "last_run": lr["id"] if lr else None, "last_ended_at": lr["ended_at"] if lr else None})
    return {"assignees": out, "running_total": total, "max_in_progress": d["max_in_progress"],
            "default_assignee": d["default_assignee"]}


def explain(conn: sqlite3.Connection, now: float, cfg: dict[str, Any], limit: int = 500) -> list[dict[str, Any]]:
    """For every ready task (up to ``limit``), whether it starts now and why or why not."""
    d = cfg["dispatch"]
    ctl = controls(conn, cfg)
    total, by = running_counts(conn)
    by = dict(by)
    cooling = profile_cooldowns(conn, now)
    cap = ctl["max_in_progress"]
    set_by = " (kanban parallel; the config says {})"
    out = []
    rows = conn.execute(f"SELECT {_READY_COLS} FROM tasks WHERE status='ready' "
                        "ORDER BY priority DESC, created_at LIMIT ?", (limit,)).fetchall()
    for r in rows:
        assignee = r["assignee"] or d["default_assignee"]
        limit_n = r["max_retries"] if r["max_retries"] is not None else d["failure_limit"]
        item = {"task": r["id"], "title": r["title"], "assignee": assignee, "priority": r["priority"],
                "failures": r["consecutive_failures"], "failure_limit": limit_n}
        prof = cfg["profiles"].get(assignee) if assignee else None
        live = live_run(conn, r["id"])
        if live is not None:
            what = "still exiting" if live["state"] == "exiting" else f"still {live['state']}"
            item.update(decision="wait", reason=f"previous run {live['id']} {what}", wait_run=live["id"])
        elif assignee is None:
            item.update(decision="skip", reason="unassigned and no dispatch.default_assignee")
        elif prof is None:
            item.update(decision="skip", reason=f"no profile for assignee {assignee!r}")
        elif r["cooldown_until"] and r["cooldown_until"] > now:
            what = "retry backoff" if r["cooldown_kind"] == "backoff" else "rate-limit cooldown"
            item.update(decision="wait", reason=f"{what}, {r['cooldown_until'] - now:.0f}s left",
                        wait_until=r["cooldown_until"])
        elif assignee in cooling:
            item.update(decision="wait", reason=f"profile {assignee} rate-limit cooldown, "
                                                f"{cooling[assignee] - now:.0f}s left", wait_until=cooling[assignee])
        elif ctl["paused"]:
            item.update(decision="wait", reason="dispatch is paused (kanban resume)")
        elif ctl["profiles"][assignee]["paused"]:
            item.update(decision="wait", reason=f"profile {assignee} is paused (kanban resume {assignee})")
        elif total >= cap:
            item.update(decision="wait", reason=f"global cap reached ({total}/{cap})"
                        + (set_by.format(ctl["config_max_in_progress"]) if ctl["overridden"] else ""))
        elif (pc := ctl["profiles"][assignee])["max_in_progress"] is not None \
                and by.get(assignee, 0) >= pc["max_in_progress"]:
            conf = pc["config_max_in_progress"]
            item.update(decision="wait", reason=f"profile cap reached ({by.get(assignee, 0)}/"
                                                f"{pc['max_in_progress']} for {assignee})"
                        + (set_by.format(conf if conf is not None else "no cap") if pc["overridden"] else ""))
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
