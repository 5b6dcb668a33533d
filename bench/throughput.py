"""throughput: 1000 trivial tasks, ``max_in_progress: 16``, each worker calling ``kanban complete`` once.

Subject: 1000 tasks assigned to a profile whose command is a ``#!/bin/sh``
worker that runs ``kanban complete --json --summary ok``. They wait as
``todo`` children of one parent; the clock starts right before the parent is
completed (which promotes all 1000 in one transaction) and stops when the
1000th run's exit has been recorded (``exited`` event, pushed to a follower).
Global and profile caps are 16.

Baseline, same run: the same worker script, 1000 times, under
``xargs -P16``, with ``KANBAN_SOCKET`` pointing at a trivial echo endpoint
(bench/echo_server.py); the clock runs from xargs' start to its exit.
Each command runs under ``setsid``, in its own session, exactly like the
daemon's workers (the wrapper calls ``setsid()``): with the kernel's
scheduler autogroups a session is a CPU-share unit, so on a loaded machine
16 commands sharing xargs' one session would get far less CPU than 16
workers in 16 sessions.
Interleaved rep by rep. Target: <= 1.5x.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

WORKER = """#!/bin/sh
exec kanban complete --json --summary ok
"""


def main(argv: list[str] | None = None) -> int:
    p = common.parser("throughput", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks per rep (default 1000; quick 20)")
    p.add_argument("--parallel", type=int, default=16, help="max_in_progress and xargs -P (default 16)")
    args = p.parse_args(argv)
    n = common.reps(args)
    ntasks = common.pick(args, "tasks", 1000, 20)
    par = args.parallel
    h = common.harness()
    d = common.new_daemon(start=False)
    script = common.write_exec(os.path.join(d.tmp, "worker.sh"), WORKER)
    d.cfg.update({"profiles": {"w": {"command": [script], "max_in_progress": par}},
                  "dispatch": {"max_in_progress": par}})
    d.write_config(d.cfg)
    d.start(timeout=60)
    echo = common.EchoServer(os.path.join(d.tmp, "echo.sock"))
    xenv = d.env({"KANBAN_SOCKET": echo.path, "KANBAN_TASK": "t_00000000", "KANBAN_RUN": "r_000000000000"})
    outcomes: dict[str, int] = {}
    try:
        client = h.Client(d.socket, timeout=600)

        def baseline(i: int) -> float:
            t0 = time.perf_counter()
            res = subprocess.run(["xargs", "-P", str(par), "-n", "1", "setsid", script], input=("x\n" * ntasks).encode(),
                                 env=xenv, cwd=d.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"xargs exited {res.returncode}: {res.stderr.decode()[-500:]}")
            return dt

        def subject(i: int) -> float:
            parent = client.call("task.create", {"title": f"throughput gate {i}"})["id"]
            kids = set()
            for k in range(ntasks):
                kids.add(client.call("task.create", {"title": f"trivial {i}.{k}", "assignee": "w",
                                                     "parents": [parent]})["id"])
            follower = h.Client(d.socket, timeout=600)
            events = follower.follow({"kinds": ["exited"]})
            seen = 0
            t0 = time.perf_counter()
            client.call("task.complete", {"ids": [parent]})
            for ev in events:
                if ev["task_id"] in kids:
                    seen += 1
                    outcomes[ev["payload"].get("outcome")] = outcomes.get(ev["payload"].get("outcome"), 0) + 1
                    if seen == ntasks:
                        break
            dt = time.perf_counter() - t0
            follower.close()
            return dt

        base, subj = common.interleave(n, baseline, subject, args, f"{ntasks} tasks")
        client.close()
    finally:
        echo.close()
        common.finish(d)
    note = None if set(outcomes) == {"completed"} else f"run outcomes: {outcomes}"
    rows = [common.row(f"{ntasks} trivial tasks, {par} in progress", "s", subj, base,
                       f"same {ntasks} worker commands under xargs -P{par} against an echo endpoint",
                       common.Target("ratio_max", 1.5), note=note,
                       tasks_per_s=ntasks / sorted(subj)[len(subj) // 2])]
    common.report(args, "throughput", {"reps": n, "tasks": ntasks, "parallel": par}, rows, {"outcomes": outcomes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
