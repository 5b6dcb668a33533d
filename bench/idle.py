"""idle: CPU time and PSS of all daemon processes over 60 s idle, with 10k tasks on the board.

The board is built in bulk (10k tasks, 100k events) before the daemon starts,
on production defaults (heartbeat 1 s, tick 5 s). After READY and a settling
pause, the window is split into ``reps`` equal slices; each slice's CPU
(user + system, summed over the supervisor and its roles) is expressed as a
percentage of one core (on-CPU nanoseconds from ``/proc/PID/task/*/schedstat``),
and PSS (psutil ``memory_full_info().pss``, summed)
is sampled at the end of each slice.

The processes are the supervisor and every role on production defaults,
the web board's role included (web.enabled is on by default; no page open).

Baselines: the issue names none, so each row's ratio is against its budget
(CPU 0.1% of a core, PSS 130 MB total with the web role): ratio <= 1 meets the target. A
context row measures, in the same run, the PSS of the same number of bare
``python3`` interpreters idling in ``select()`` (the floor of one process
per role).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

BARE = "import selectors, sys; print('up', flush=True); selectors.DefaultSelector().select(3600)"


def cpu(procs: list) -> float:
    """CPU seconds on core, summed over every thread of ``procs``.

    From ``/proc/PID/task/TID/schedstat`` (nanoseconds), because the tick-based
    user+system times have 10 ms resolution: too coarse for a 0.1% budget.
    """
    total = 0
    for p in procs:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            with open(f"/proc/{p.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


def role_name(p) -> str:
    try:
        return " ".join(p.cmdline()).split(":")[-1].strip() or str(p.pid)
    except Exception:
        return str(p.pid)


def pss(procs: list) -> float:
    return sum(p.memory_full_info().pss for p in procs) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = common.parser("idle", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks on the board (default 10000; quick 20)")
    p.add_argument("--seconds", type=float, help="idle window (default 60; quick 0.5)")
    p.add_argument("--settle", type=float, help="pause after READY before measuring (default 3; quick 0.3)")
    args = p.parse_args(argv)
    n = common.reps(args)
    ntasks = common.pick(args, "tasks", 10000, 20)
    secs = common.pick(args, "seconds", 60.0, 0.5)
    settle = common.pick(args, "settle", 3.0, 0.3)
    import psutil
    d = common.new_daemon(board=lambda path: common.build_board(path, ntasks, ntasks * 10))
    bare = []
    try:
        time.sleep(settle)  # benchmark pacing, not a test wait
        procs = common.daemon_procs(d)
        names = sorted(" ".join(x.cmdline())[:40] for x in procs)
        bare = [subprocess.Popen([common.PYTHON, "-c", BARE], stdout=subprocess.PIPE) for _ in procs]
        for b in bare:
            b.stdout.readline()
        bare_ps = [psutil.Process(b.pid) for b in bare]
        cpu_pct, mem, floor = [], [], []
        per0 = {role_name(x): cpu([x]) for x in procs}
        sw0 = {role_name(x): x.num_ctx_switches().voluntary for x in procs}
        w0 = time.monotonic()
        slice_s = secs / n
        for i in range(n):
            c0, t0 = cpu(procs), time.monotonic()
            time.sleep(slice_s)
            c1, t1 = cpu(procs), time.monotonic()
            cpu_pct.append(100.0 * (c1 - c0) / (t1 - t0))
            mem.append(pss(procs))
            floor.append(pss(bare_ps))
            common.log(args, f"slice {i + 1}/{n}: cpu {cpu_pct[-1]:.4f}% of a core, pss {mem[-1]:.1f} MB "
                             f"(bare interpreters {floor[-1]:.1f} MB)")
        window = time.monotonic() - w0
        per = {role_name(x): round(100.0 * (cpu([x]) - per0[role_name(x)]) / window, 4) for x in procs}
        cpu_seconds = sum(cpu([x]) - per0[role_name(x)] for x in procs)
        # voluntary context switches per second over the window: how often each process sleeps and wakes
        wakeups = {role_name(x): round((x.num_ctx_switches().voluntary - sw0[role_name(x)]) / secs, 2)
                   for x in procs}
        alive = all(x.is_running() for x in procs)
    finally:
        for b in bare:
            b.kill()
            b.wait()
        common.finish(d)
    rows = [
        common.row("CPU, all daemon processes", "% of a core", cpu_pct, 0.1, "budget: 0.1% of one core",
                   common.Target("ratio_max", 1.0, "<= 0.1%")),
        common.row("PSS, all daemon processes", "MB", mem, 130.0, "budget: 130 MB (with the web role)",
                   common.Target("ratio_max", 1.0, "<= 130 MB")),
        common.row("PSS vs bare interpreters", "MB", mem, floor,
                   f"{len(procs)} bare python3 processes idling in select(), same run"),
    ]
    common.report(args, "idle", {"reps": n, "tasks": ntasks, "seconds": secs}, rows,
                  {"processes": names, "daemon_alive_throughout": alive,
                   "cpu_seconds_total": round(cpu_seconds, 4), "window_seconds": round(window, 2),
                   "cpu_percent_by_process": per, "wakeups_per_s_by_process": wakeups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
