"""scale: on a board of 100k tasks and 1M events, time ``kanban list --status ready --limit 100``,
``kanban stats`` and ``kanban show ID``.

The board is built in bulk with the kernel's schema (bench/common.build_board:
raw executemany, one transaction) before the daemon starts. Each command is
one ``kanban`` process; wall time per invocation.

Baseline, same run: the ``cli`` baseline, bench/bare_request.py (imports only
socket and json) sending one ``task.show`` for the same task to the same
daemon, interleaved rep by rep. Target: each <= baseline + 30 ms.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.cli import bare, timed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = common.parser("scale", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks on the board (default 100000; quick 20)")
    p.add_argument("--events", type=int, help="events on the board (default 1000000; quick 200)")
    args = p.parse_args(argv)
    n = common.reps(args, full=10)
    ntasks = common.pick(args, "tasks", 100_000, 20)
    nevents = common.pick(args, "events", 1_000_000, 200)
    show: list[str] = []
    built = {}

    def board(path: str) -> None:
        t0 = time.perf_counter()
        show.append(common.build_board(path, ntasks, nevents))
        built["seconds"] = time.perf_counter() - t0
        built["bytes"] = os.path.getsize(path)

    common.log(args, f"building a board of {ntasks} tasks and {nevents} events")
    d = common.new_daemon(board=board)
    common.log(args, f"built in {built['seconds']:.1f}s ({built['bytes'] / 1e6:.0f} MB); daemon READY")
    rows = []
    try:
        env, cwd, sid = d.env(), d.tmp, show[0]
        commands = [("kanban list --status ready --limit 100", ["list", "--status", "ready", "--limit", "100"]),
                    ("kanban stats", ["stats"]),
                    ("kanban show ID", ["show", sid])]
        base_argv = bare(d.socket, "task.show", {"id": sid})
        for _, cmd in commands:  # warm the page cache and pyc files
            timed([common.KANBAN, *cmd], env, cwd)
        timed(base_argv, env, cwd)
        for name, cmd in commands:
            base, subj = common.interleave(n, lambda i: timed(base_argv, env, cwd),
                                           lambda i, cmd=cmd: timed([common.KANBAN, *cmd], env, cwd), args, name)
            rows.append(common.row(name, "ms", subj, base, "cli baseline: bare socket+json script, one task.show",
                                   common.Target("delta_max", 30.0, "<= baseline + 30 ms")))
        stats = d.rpc("board.stats")
    finally:
        common.finish(d)
    common.report(args, "scale", {"reps": n, "tasks": ntasks, "events": nevents}, rows,
                  {"board_build_seconds": built["seconds"], "board_bytes": built["bytes"],
                   "by_status": stats["by_status"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
