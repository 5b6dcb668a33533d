"""fanout: the cost that 50 ``kanban watch`` followers add to the writer's path, per event.

Subject: the dispatcher (the single writer) with 50 live ``kanban watch
--json`` processes following every event (their stdout goes to files). One
client creates tasks back to back (one ``created`` event each). Measured per
event: the dispatcher's own CPU time (on-CPU nanoseconds from
``/proc/PID/task/*/schedstat``), which is exactly the writer loop's cost and
is not inflated by the 50 followers competing for the cores; and, for
context, the client's wall time per create round trip (which is).

Baseline, same run: the same creates with 0 followers. Each rep runs the
baseline segment, starts the 50 watchers (and waits until every one has
printed a sync event), runs the subject segment, and stops them; reps
alternate the order. Target: the added writer CPU per event
(subject - baseline) < 1 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def oncpu(pid: int) -> float:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def main(argv: list[str] | None = None) -> int:
    p = common.parser("fanout", __doc__.splitlines()[0])
    p.add_argument("--followers", type=int, help="watch processes (default 50; quick 2)")
    p.add_argument("--events", type=int, help="events per segment (default 500; quick 20)")
    args = p.parse_args(argv)
    n = common.reps(args)
    nf = common.pick(args, "followers", 50, 2)
    nev = common.pick(args, "events", 500, 20)
    h = common.harness()
    d = common.new_daemon()
    cpu: dict[str, list[float]] = {"0": [], "n": []}
    wall: dict[str, list[float]] = {"0": [], "n": []}
    received = []
    try:
        disp = common.role_pid(d, "dispatcher")
        client = h.Client(d.socket)
        env = d.env()

        def segment(key: str) -> None:
            c0, t0 = oncpu(disp), time.perf_counter()
            for k in range(nev):
                client.call("task.create", {"title": f"fanout {k}"})
            t1, c1 = time.perf_counter(), oncpu(disp)
            cpu[key].append((c1 - c0) / nev * 1000)
            wall[key].append((t1 - t0) / nev * 1000)

        def with_followers(i: int) -> None:
            outs = [os.path.join(d.tmp, f"watch{i}.{k}.out") for k in range(nf)]
            procs = []
            for path in outs:
                with open(path, "wb") as f:
                    procs.append(subprocess.Popen([common.KANBAN, "watch", "--json"], stdout=f,
                                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
                                                  cwd=d.tmp))
            try:
                sync = client.call("task.create", {"title": f"sync {i}"})["id"]

                def synced() -> bool:  # every watcher is attached once each has seen one sync event
                    nonlocal sync
                    ok = all(sync in open(path).read() for path in outs)
                    if not ok:
                        sync = client.call("task.create", {"title": f"sync {i}"})["id"]
                    return ok
                h.wait_for(synced, 120, interval=0.2, what="all watchers attached")
                segment("n")
                last = client.call("task.create", {"title": f"end {i}"})["id"]
                h.wait_for(lambda: all(last in open(path).read() for path in outs), 120, interval=0.2,
                           what="watchers caught up")
                received.append(min(open(path).read().count("\n") for path in outs))
            finally:
                for pr in procs:
                    pr.terminate()
                for pr in procs:
                    pr.wait(10)

        for i in range(n):
            if i % 2 == 0:
                segment("0")
                with_followers(i)
            else:
                with_followers(i)
                segment("0")
            common.log(args, f"rep {i + 1}/{n}: writer cpu/event {cpu['n'][-1]:.3f} ms with {nf} followers, "
                             f"{cpu['0'][-1]:.3f} ms with 0")
        client.close()
    finally:
        common.finish(d)
    added = [a - b for a, b in zip(cpu["n"], cpu["0"])]
    rows = [
        common.row(f"writer CPU per event, {nf} followers", "ms", cpu["n"], cpu["0"],
                   "same creates, 0 followers", common.Target("delta_max", 1.0, "added < 1 ms"),
                   added_ms=common.summary(added)),
        common.row(f"client wall per create, {nf} followers", "ms", wall["n"], wall["0"],
                   "same creates, 0 followers", note="wall time includes the followers' own CPU on shared cores"),
    ]
    common.report(args, "fanout", {"reps": n, "followers": nf, "events_per_segment": nev}, rows,
                  {"min_lines_received_per_watcher": received})
    return 0


if __name__ == "__main__":
    sys.exit(main())
