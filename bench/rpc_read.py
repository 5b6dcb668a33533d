"""rpc_read: ``task.show`` throughput with 1 and 8 concurrent client processes.

Baseline, same run: a bare newline-JSON echo server on a Unix socket
(bench/echo_server.py) in the same interpreter, driven by the very same
client processes (bench/loadgen.py), interleaved rep by rep.
Target: >= 0.5x the echo server's throughput.

The target rows cycle through 256 random tasks of the board (a hot set, as a
dashboard or an agent polling its own tasks would). Since the workload is
read-only, the dispatcher's ``task.show`` response cache (cleared on every
board write) serves most of them. A context row therefore also measures 8
clients that never repeat a task within 10k requests (every task of a 10k
board, shuffled, each client its own disjoint eighth), which no cache of
fewer entries can serve: the cost of a ``task.show`` that really reads the
board.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = common.parser("rpc_read", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks on the board (default 10000; quick 20)")
    p.add_argument("--hot", type=int, default=256, help="distinct tasks the target rows cycle through (default 256)")
    p.add_argument("--seconds", type=float, help="duration of one rep (default 2; quick 0.2)")
    p.add_argument("--clients", type=int, nargs="+", help="client process counts (default 1 8; quick 1 2)")
    args = p.parse_args(argv)
    n = common.reps(args)
    ntasks = common.pick(args, "tasks", 10000, 20)
    secs = common.pick(args, "seconds", 2.0, 0.2)
    clients = common.pick(args, "clients", [1, 8], [1, 2])
    ids: list[str] = []

    def board(path: str) -> None:
        common.build_board(path, ntasks, ntasks * 10)
        ids.extend(common.task_id(i) for i in range(ntasks))

    d = common.new_daemon(board=board)
    echo = common.EchoServer(os.path.join(d.tmp, "echo.sock"))
    rows = []
    try:
        rng = random.Random(7)
        hot = rng.sample(ids, min(args.hot, len(ids)))
        params = [{"id": rng.choice(hot)} for _ in range(256)]
        cold = [{"id": i} for i in rng.sample(ids, len(ids))]
        for c in clients:
            base, subj = common.interleave(
                n, lambda i: common.load(echo.path, "task.show", params, c, secs),
                lambda i: common.load(d.socket, "task.show", params, c, secs), args, f"{c} clients")
            rows.append(common.row(f"task.show, {c} client{'s' if c > 1 else ''}", "req/s", subj, base,
                                   f"echo server (same interpreter), same {c} client process(es)",
                                   common.Target("ratio_min", 0.5), better="higher"))
        c = max(clients)
        base, subj = common.interleave(
            n, lambda i: common.load(echo.path, "task.show", cold, c, secs, split=True),
            lambda i: common.load(d.socket, "task.show", cold, c, secs, split=True), args, f"{c} clients, no repeats")
        rows.append(common.row(f"task.show, {c} clients, no repeats in {len(cold)}", "req/s", subj, base,
                               f"echo server (same interpreter), same {c} client process(es)", better="higher",
                               note="every request a different task: no response cache can serve it"))
    finally:
        echo.close()
        common.finish(d)
    common.report(args, "rpc_read", {"reps": n, "tasks": ntasks, "hot": args.hot, "seconds": secs,
                                      "clients": clients}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
