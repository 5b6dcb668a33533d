"""restart: SIGTERM -> READY with 100k tasks on the board and 16 live workers to re-adopt.

Subject: a daemon on a bulk-built board (100k tasks, 1M events) running 16
workers (``exec sleep``; ``on_shutdown: leave``, so they outlive the
daemon). One rep: SIGTERM the supervisor, wait for it to exit, start a new
``kanband`` on the same state dir, and wait for its ``READY=1`` datagram on
the ``NOTIFY_SOCKET`` the harness binds (READY is sent only after the reaper
has re-adopted every live worker by pid + start time). Time = READY's
arrival - the moment SIGTERM was sent (CLOCK_MONOTONIC), split into stop
and start. After each rep the bench checks all 16 tasks are still running
under their original runs.

Baseline, same run (context): the same restart of a daemon with an empty
board and no workers, interleaved rep by rep. Target (absolute): <= 1 s.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

SLEEPER = "#!/bin/sh\nexec sleep 3600\n"


def restart(d) -> tuple[float, float, float]:
    """(total, stop, start) seconds for one SIGTERM -> READY."""
    before = d.notify.count("READY=1")
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(60)
    t_exit = time.monotonic()
    d.start(timeout=120)
    ready = d.notify.lines("READY=1")
    if len(ready) <= before:
        raise RuntimeError("no READY=1 after restart")
    t_ready = ready[-1][0]
    return t_ready - t0, t_exit - t0, t_ready - t_exit


def main(argv: list[str] | None = None) -> int:
    p = common.parser("restart", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks on the board (default 100000; quick 20)")
    p.add_argument("--events", type=int, help="events on the board (default 1000000; quick 200)")
    p.add_argument("--workers", type=int, help="live workers to re-adopt (default 16; quick 2)")
    args = p.parse_args(argv)
    n = common.reps(args)
    ntasks = common.pick(args, "tasks", 100_000, 20)
    nevents = common.pick(args, "events", 1_000_000, 200)
    nworkers = common.pick(args, "workers", 16, 2)
    h = common.harness()
    h.become_subreaper()  # wrappers orphaned by a stopped daemon re-parent to us, and we reap them
    common.log(args, f"building a board of {ntasks} tasks and {nevents} events")
    d = common.new_daemon(board=lambda path: common.build_board(path, ntasks, nevents), start=False)
    b = common.new_daemon(start=False)
    sleeper = common.write_exec(os.path.join(d.tmp, "sleeper.sh"), SLEEPER)
    d.cfg.update({"profiles": {"sleeper": {"command": [sleeper], "max_in_progress": nworkers}},
                  "dispatch": {"max_in_progress": nworkers, "on_shutdown": "leave"}})
    d.write_config(d.cfg)
    b.cfg.update({"dispatch": {"on_shutdown": "leave"}})
    b.write_config(b.cfg)
    parts: dict[str, list[float]] = {"stop": [], "start": [], "bstop": [], "bstart": []}
    try:
        d.start(timeout=120)
        b.start(timeout=60)
        ids = [d.rpc("task.create", {"title": f"long worker {k}", "assignee": "sleeper"})["id"]
               for k in range(nworkers)]
        runs = {}
        for tid in ids:
            t = h.wait_for(lambda tid=tid: (x := d.task(tid))["status"] == "running" and x["current_run"] and x,
                           60, what=f"{tid} running")
            runs[tid] = t["current_run"]
        h.wait_for(lambda: all(any(e["kind"] == "started" for e in d.rpc("events.since", {"task": tid})["events"])
                               for tid in ids), 60, what="all workers started")
        common.log(args, f"{nworkers} workers running; restarting")

        def subject(i: int) -> float:
            total, stop, start = restart(d)
            parts["stop"].append(stop)
            parts["start"].append(start)
            for tid in ids:
                t = d.task(tid)
                if t["status"] != "running" or t["current_run"] != runs[tid]:
                    raise RuntimeError(f"{tid} lost its worker across the restart: {t['status']} {t['current_run']}")
            return total

        def baseline(i: int) -> float:
            total, stop, start = restart(b)
            parts["bstop"].append(stop)
            parts["bstart"].append(start)
            return total

        base, subj = common.interleave(n, baseline, subject, args, "restart")
        ev = d.rpc("events.since", {"after": 0, "limit": 1})["last_id"]
        lost = [e for tid in ids for e in d.rpc("events.since", {"task": tid})["events"] if e["kind"] == "exited"]
    finally:
        common.finish(d, b)
    label = "same restart, empty board, no workers"
    rows = [common.row(f"SIGTERM -> READY, {ntasks} tasks, {nworkers} workers", "s", subj, base, label,
                       common.Target("abs_max", 1.0, "<= 1 s")),
            common.row("  of which: SIGTERM -> exit", "s", parts["stop"], parts["bstop"], label),
            common.row("  of which: exec -> READY", "s", parts["start"], parts["bstart"], label)]
    if lost:
        rows[0]["note"] = f"{len(lost)} worker exits recorded during the restarts"
    common.report(args, "restart", {"reps": n, "tasks": ntasks, "events": nevents, "workers": nworkers}, rows,
                  {"last_event_id": ev, "exits_during_restarts": len(lost)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
