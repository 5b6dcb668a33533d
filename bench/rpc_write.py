"""rpc_write: durable ``task.create`` throughput with 1 and 8 concurrent client processes.

Baseline, same run: a raw loop of single-row insert transactions
(``BEGIN IMMEDIATE; INSERT; COMMIT``) into a WAL database with
``synchronous=FULL`` in the same temp dir (same filesystem) as the board,
interleaved rep by rep. Target: >= 1.0x with 8 clients, which needs group
commit (many requests, one fsync) without acknowledging before the commit.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def raw_loop(path: str, seconds: float) -> float:
    """The baseline in its own process and session (the daemon has its own too: scheduler autogroups)."""
    res = subprocess.run([common.PYTHON, __file__, "--raw-loop", path, repr(seconds)], stdout=subprocess.PIPE,
                         check=True, start_new_session=True)
    return float(res.stdout)


def raw_inserts(path: str, seconds: float) -> float:
    """Single-row durable commits per second, back to back, for ``seconds``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, title TEXT NOT NULL, at REAL NOT NULL)")
    n = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (title, at) VALUES (?, ?)", (f"bench task {n}", now))
        conn.execute("COMMIT")
        n += 1
    elapsed = time.monotonic() - start
    conn.close()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    p = common.parser("rpc_write", __doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, help="duration of one rep (default 2; quick 0.2)")
    p.add_argument("--clients", type=int, nargs="+", help="client process counts (default 1 8; quick 1 2)")
    args = p.parse_args(argv)
    n = common.reps(args)
    secs = common.pick(args, "seconds", 2.0, 0.2)
    clients = common.pick(args, "clients", [1, 8], [1, 2])
    d = common.new_daemon()
    raw = os.path.join(d.tmp, "baseline.db")
    rows = []
    try:
        params = [{"title": f"bench task {i}", "body": "created by bench/rpc_write.py"} for i in range(64)]
        for c in clients:
            base, subj = common.interleave(
                n, lambda i: raw_loop(raw, secs),
                lambda i: common.load(d.socket, "task.create", params, c, secs), args, f"{c} clients")
            target = common.Target("ratio_min", 1.0) if c >= 8 else common.Target("info")
            rows.append(common.row(f"task.create, {c} client{'s' if c > 1 else ''}", "req/s", subj, base,
                                   "raw single-row INSERT+COMMIT loop, WAL + synchronous=FULL, same dir",
                                   target, better="higher"))
        total = d.rpc("board.stats")["total"]
    finally:
        common.finish(d)
    common.report(args, "rpc_write", {"reps": n, "seconds": secs, "clients": clients}, rows,
                  {"tasks_created": total})
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--raw-loop"]:
        print(raw_inserts(sys.argv[2], float(sys.argv[3])))
        sys.exit(0)
    sys.exit(main())
