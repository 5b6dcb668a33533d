"""cli: wall time of ``kanban show ID`` and ``kanban create TITLE``, one process each.

Baseline, same run: bench/bare_request.py, a script that imports only socket
and json and sends the same one request to the same daemon (same
interpreter, same environment, same spawn path), interleaved rep by rep.
Target: <= 1.25x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def timed(argv: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{argv} exited {res.returncode}: {res.stderr.decode()[-500:]}")
    return dt * 1000.0


def bare(sock: str, method: str, params: dict) -> list[str]:
    return [common.PYTHON, str(common.BENCH / "bare_request.py"), sock, method, json.dumps(params)]


def main(argv: list[str] | None = None) -> int:
    p = common.parser("cli", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="tasks on the board (default 1000; quick 20)")
    args = p.parse_args(argv)
    n = common.reps(args, full=20)
    ntasks = common.pick(args, "tasks", 1000, 20)
    show: list[str] = []
    d = common.new_daemon(board=lambda path: show.append(common.build_board(path, ntasks, ntasks * 10)))
    rows = []
    try:
        env, cwd, sid = d.env(), d.tmp, show[0]
        for i in range(2):  # warm the page cache and the pyc files of both sides
            timed([common.KANBAN, "show", sid], env, cwd)
            timed(bare(d.socket, "task.show", {"id": sid}), env, cwd)
        base, subj = common.interleave(n, lambda i: timed(bare(d.socket, "task.show", {"id": sid}), env, cwd),
                                       lambda i: timed([common.KANBAN, "show", sid], env, cwd), args, "show")
        rows.append(common.row("kanban show ID", "ms", subj, base, "bare socket+json script, same request",
                               common.Target("ratio_max", 1.25)))
        base, subj = common.interleave(
            n, lambda i: timed(bare(d.socket, "task.create", {"title": f"bare {i}"}), env, cwd),
            lambda i: timed([common.KANBAN, "create", f"cli {i}"], env, cwd), args, "create")
        rows.append(common.row("kanban create TITLE", "ms", subj, base, "bare socket+json script, same request",
                               common.Target("ratio_max", 1.25)))
    finally:
        common.finish(d)
    common.report(args, "cli", {"reps": n, "tasks": ntasks}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
