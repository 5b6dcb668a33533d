"""Shared helpers for the benchmarks: arguments, statistics, tables, JSON, daemons, boards.

Runs in: the benchmark scripts under ``bench/`` (never in the daemon).

Every benchmark measures a *subject* (something kanband does) against a
*baseline* measured in the same run, on the same machine, with the two
interleaved rep by rep (ABBA order, so neither side always runs first and
drift hits both alike). A row reports:

* ``result``: median, min and max of the subject over the repetitions;
* ``baseline``: the same for the baseline, with a label saying what it is.
  ``kind`` is ``measured`` (timed in this run) or ``budget`` (an absolute
  budget from the issue, used where the issue names no baseline);
* ``ratio``: median, min and max of the *paired* per-rep ratios
  subject_i / baseline_i (so a noisy moment affects both halves of a pair);
* ``target`` and ``met``: the goal from the issue and whether the median
  meets it.

``--json`` prints exactly one JSON document on stdout and nothing else.
Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Measure the product as installed, where bytecode is compiled once: a dev shell with
# PYTHONDONTWRITEBYTECODE=1 and an editable install otherwise leaves stale .pyc files that every
# `kanban`/`kanband` start recompiles (~12 ms per CLI call here). Children inherit this.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
KANBAN = str(BIN / "kanban")


# ---- arguments -------------------------------------------------------------------

def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The common flags: ``--quick`` (tiny sizes, 1 rep: the smoke test), ``--json``, ``--reps``.

    Also makes SIGTERM and SIGINT unwind normally (even when started in the
    background with SIGINT ignored), so every ``finally`` stops the daemons.
    """
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser(prog=f"bench/{name}.py", description=doc)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1 repetition (proves the script works; "
                   "the figures mean nothing)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.add_argument("--reps", type=int, default=None, help="repetitions of subject and baseline (default 5)")
    return p


def reps(args: argparse.Namespace, full: int = 5) -> int:
    if args.reps is not None:
        return max(1, args.reps)
    return 1 if args.quick else full


def pick(args: argparse.Namespace, name: str, full: Any, quick: Any) -> Any:
    """An explicit size flag wins; else the quick or the full default."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return quick if args.quick else full


def log(args: argparse.Namespace, msg: str) -> None:
    """Progress goes to stderr, so ``--json`` keeps stdout clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- statistics --------------------------------------------------------------------

def summary(values: Iterable[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile, ``p`` in [0, 100]."""
    vals = sorted(values)
    if not vals:
        return math.nan
    k = (len(vals) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def interleave(n: int, baseline: Callable[[int], float], subject: Callable[[int], float],
               args: argparse.Namespace | None = None, label: str = "") -> tuple[list[float], list[float]]:
    """Run ``n`` reps of each, in ABBA order; returns (baseline values, subject values)."""
    base, subj = [], []
    for i in range(n):
        order = (("b", baseline), ("s", subject)) if i % 2 == 0 else (("s", subject), ("b", baseline))
        for which, fn in order:
            v = fn(i)
            (base if which == "b" else subj).append(v)
        if args is not None:
            log(args, f"{label} rep {i + 1}/{n}: subject {subj[-1]:.6g}  baseline {base[-1]:.6g}")
    return base, subj


class Target:
    """A goal from the issue. ``kind`` is one of:

    * ``ratio_max`` / ``ratio_min``: the median paired ratio must be at most / at least ``value``;
    * ``abs_max``: the subject's median must be at most ``value`` (in the row's unit);
    * ``delta_max``: subject median minus baseline median must be at most ``value`` (row unit);
    * ``info``: no target; the row is context.
    """

    def __init__(self, kind: str, value: float | None = None, text: str | None = None) -> None:
        self.kind, self.value = kind, value
        self.text = text or {"ratio_max": f"<= {value}x", "ratio_min": f">= {value}x", "abs_max": f"<= {value}",
                             "delta_max": f"<= baseline + {value}", "info": "-"}[kind]

    def met(self, result: dict[str, Any], baseline: dict[str, Any] | None, ratio: dict[str, Any] | None
            ) -> bool | None:
        if self.kind == "info":
            return None
        if self.kind == "ratio_max":
            return ratio is not None and ratio["median"] is not None and ratio["median"] <= self.value
        if self.kind == "ratio_min":
            return ratio is not None and ratio["median"] is not None and ratio["median"] >= self.value
        if self.kind == "abs_max":
            return result["median"] is not None and result["median"] <= self.value
        if self.kind == "delta_max":
            return baseline is not None and result["median"] - baseline["median"] <= self.value
        raise ValueError(self.kind)


def row(name: str, unit: str, result: list[float], baseline: list[float] | float | None, baseline_label: str,
        target: Target | None = None, better: str = "lower", baseline_kind: str = "measured",
        note: str | None = None, **extra: Any) -> dict[str, Any]:
    """One result row. ``baseline`` is a list (measured, paired with ``result``) or a number (a budget)."""
    res = summary(result)
    if isinstance(baseline, (int, float)):
        base_vals = [float(baseline)] * len(result)
        baseline_kind = "budget" if baseline_kind == "measured" else baseline_kind
    else:
        base_vals = list(baseline or [])
    base = summary(base_vals)
    base.update(label=baseline_label, kind=baseline_kind)
    pairs = [s / b for s, b in zip(result, base_vals) if b]
    ratio = summary(pairs)
    ratio.pop("n")
    target = target or Target("info")
    out = {"name": name, "unit": unit, "better": better, "result": res, "baseline": base, "ratio": ratio,
           "delta": (res["median"] - base["median"]) if res["median"] is not None and base["median"] is not None
           else None,
           "target": target.text, "target_kind": target.kind, "met": target.met(res, base, ratio)}
    if note:
        out["note"] = note
    out.update(extra)
    return out


# ---- output -----------------------------------------------------------------------

def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
            "loadavg_at_end": [round(x, 2) for x in load]}


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        s = f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
        return s
    return str(v)


def table(rows: list[dict[str, Any]], bench: str | None = None) -> str:
    head = ["benchmark", "measure", "unit", "result med [min-max]", "baseline med [min-max]", "ratio med [min-max]",
            "target", "met"]
    lines = []
    for r in rows:
        res, base, rat = r["result"], r["baseline"], r["ratio"]
        b = f"{fmt(base['median'])} [{fmt(base['min'])}-{fmt(base['max'])}]" if base["median"] is not None else "-"
        if base.get("kind") == "budget":
            b = f"{fmt(base['median'])} (budget)"
        delta = f" (delta {r['delta']:+.1f})" if r.get("target_kind") == "delta_max" and r.get("delta") is not None \
            else ""
        lines.append([r.get("bench", bench or ""), r["name"], r["unit"],
                      f"{fmt(res['median'])} [{fmt(res['min'])}-{fmt(res['max'])}]{delta}", b,
                      f"{fmt(rat['median'])} [{fmt(rat['min'])}-{fmt(rat['max'])}]" if rat["median"] is not None
                      else "-", r["target"], {True: "yes", False: "NO", None: "-"}[r["met"]]])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in lines]
    labels = {(r.get("bench", bench or ""), r["baseline"]["label"]) for r in rows}
    out.append("")
    out += [f"baseline of {b}: {lab}" for b, lab in sorted(labels)]
    notes = [f"{r.get('bench', bench or '')}/{r['name']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def report(args: argparse.Namespace, bench: str, params: dict[str, Any], rows: list[dict[str, Any]],
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {"bench": bench, "quick": bool(args.quick), "params": params, "machine": machine(), "results": rows}
    if extra:
        doc.update(extra)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        m = doc["machine"]
        print(f"{bench}: {m['date']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}; "
              f"params {json.dumps(params)}")
        print(table(rows, bench))
    return doc


# ---- daemons ------------------------------------------------------------------------

def harness():
    """tests.harness, imported lazily (it pulls psutil and yaml)."""
    from tests import harness as h
    return h


def new_daemon(config: dict[str, Any] | None = None, board: Callable[[str], Any] | None = None,
               start: bool = True):
    """A real kanband on production defaults (not the harness' fast test timings).

    ``board(path)`` builds ``<state>/board.db`` before the daemon starts.
    """
    h = harness()
    d = h.Daemon(config or {}, fast=False)
    if board is not None:
        os.makedirs(d.state, exist_ok=True)
        board(os.path.join(d.state, "board.db"))
    if start:
        d.start(timeout=120.0)
    return d


def finish(*daemons) -> None:
    """Stop each daemon and everything it started (the harness' cleanup), then delete its temp dir
    (boards of 100k tasks weigh 130 MB each)."""
    import shutil
    record = os.environ.get("BENCH_RECORD_SIDS")  # the smoke test checks these sessions are empty afterwards
    for d in daemons:
        if record:
            with open(record, "a") as f:
                f.write("".join(f"{proc.pid}\n" for proc in d.procs))
        try:
            d.cleanup()
        finally:
            shutil.rmtree(d.tmp, ignore_errors=True)


def daemon_procs(d) -> list:
    """The supervisor and its roles (workers excluded: they run under their own wrappers)."""
    import psutil
    sup = psutil.Process(d.pid)
    out = [sup]
    for c in sup.children():
        try:
            if c.name().startswith("kanband") or "kanband" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            continue
    return out


def role_pid(d, name: str) -> int:
    return d.role_pids()[name]


class EchoServer:
    """The bare newline-JSON echo server (bench/echo_server.py) in a child process of the same interpreter.

    It gets its own session, like the daemon: with the kernel's scheduler
    autogroups (one CPU share per session) anything else would hand the
    baseline a smaller share of a loaded machine than the subject gets.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen([PYTHON, str(BENCH / "echo_server.py"), path], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith(b"listening"):
            raise RuntimeError(f"echo server did not start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def load(path: str, method: str, params: list[dict[str, Any]], clients: int, seconds: float,
         split: bool = False) -> float:
    """``clients`` processes (bench/loadgen.py) call ``method`` back to back for ``seconds``; returns calls/s.

    Each client cycles through ``params``; with ``split``, client k gets ``params[k::clients]`` only,
    so no two clients ever send the same request.
    """
    import tempfile
    files = []
    for k in range(clients if split else 1):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(params[k::clients] if split else params, f)
        files.append(f.name)
    procs = [subprocess.Popen([PYTHON, str(BENCH / "loadgen.py"), path, method, "@" + files[k % len(files)]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for k in range(clients)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith(b"ready"):
                raise RuntimeError(f"load generator failed to connect: {line!r}")
        start = time.monotonic() + 0.05
        end = start + seconds
        for p in procs:
            p.stdin.write(f"go {start!r} {end!r}\n".encode())
            p.stdin.flush()
        total, last = 0, end
        for p in procs:
            out = json.loads(p.stdout.readline())
            if out.get("error"):
                raise RuntimeError(f"load generator: {out['error']}")
            total += out["calls"]
            last = max(last, out["finished"])
        return total / (last - start)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(5)
        for name in files:
            os.unlink(name)


# ---- boards built in bulk ---------------------------------------------------------------

STATUS_MIX = (("done", 0.70), ("archived", 0.12), ("ready", 0.06), ("todo", 0.04), ("blocked", 0.03),
              ("triage", 0.03), ("review", 0.02))
ASSIGNEES = ("alice", "bob", "researcher", "coder", None)


def task_id(i: int) -> str:
    return f"t_{i:08x}"


def build_board(path: str, tasks: int, events: int, seed: int = 1, ready_assignee: str | None = None) -> str:
    """A realistic board in the kernel's schema, written in bulk (one transaction, raw executemany).

    ``tasks`` tasks with the ``STATUS_MIX`` statuses (ready ones unassigned unless ``ready_assignee``),
    a parent link on every 10th task, one run per finished task, a comment on every 20th task, and
    ``events`` events spread over the tasks (the task's ``created`` event first). Returns the id of a
    typical task (ready, with a parent, a comment and its share of events) for ``show``.
    """
    import random

    from daemon.board import db as boarddb
    rng = random.Random(seed)
    conn = boarddb.connect(path)
    conn.execute("PRAGMA synchronous=OFF")  # the build only; the daemon opens its own FULL connection
    now = time.time()
    statuses, weights = zip(*STATUS_MIX)
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    rows, runs, links, comments = [], [], [], []
    show_id = None
    for i in range(tasks):
        tid = task_id(i)
        x = (i * 0.6180339887) % 1.0  # low-discrepancy: the mix holds even for tiny boards
        status = next(s for s, c in zip(statuses, cum) if x < c) if x < cum[-1] else "done"
        created = now - 86400 * 30 + i * (86400 * 29 / max(1, tasks))
        assignee = ASSIGNEES[i % len(ASSIGNEES)]
        if status == "ready":
            assignee = ready_assignee
        rows.append((tid, f"task {i}: do the thing number {i}", "body text " * (i % 5), assignee, status,
                     rng.randrange(0, 4), "acme" if i % 3 else None, "bench", created, created + 60,
                     created if status == "ready" else None, None, None, None, 0,
                     "ok" if status == "done" else None, "done" if status == "done" else None,
                     "waiting" if status == "blocked" else None, "scratch", None))
        if status in ("done", "archived", "review"):
            runs.append((f"r_{i:010x}", tid, assignee or "coder", "ended",
                         "completed", 0, created + 1, created + 2, created + 30, "ok"))
        if i % 10 == 5 and i > 10:
            links.append((task_id(i - 5), tid))
        if i % 20 == 3:
            comments.append((tid, "alice", f"comment on {tid}", created + 5))
        if show_id is None and status == "ready" and i % 10 == 5 and i % 20 != 3 and i > 10:
            show_id = tid
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO tasks (id, title, body, assignee, status, priority, tenant, created_by, created_at, updated_at, "
        "ready_at, idempotency_key, max_runtime, max_retries, consecutive_failures, result, summary, block_reason, "
        "workspace_kind, workspace_path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany(
        "INSERT INTO runs (id, task_id, profile, state, outcome, exit_code, claimed_at, started_at, ended_at, summary) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)", runs)
    conn.executemany("INSERT INTO links (parent, child) VALUES (?,?)", links)
    conn.executemany("INSERT INTO comments (task_id, author, body, created_at) VALUES (?,?,?,?)", comments)
    kinds = ("claimed", "started", "heartbeat", "commented", "exited", "completed", "edited", "assigned")

    def evs():
        per = max(1, events // max(1, tasks))
        n = 0
        for i in range(tasks):
            if n >= events:
                return
            tid = task_id(i)
            at = now - 86400 * 30 + i * (86400 * 29 / max(1, tasks))
            yield (tid, None, "created", '{"status":"ready","title":"task"}', at)
            n += 1
            for k in range(per - 1):
                if n >= events:
                    return
                yield (tid, f"r_{i:010x}", kinds[k % len(kinds)], '{"note":"bench"}', at + k + 1)
                n += 1
        while n < events:  # any remainder lands on the first tasks
            yield (task_id(n % max(1, tasks)), None, "heartbeat", '{"note":"bench"}', now)
            n += 1

    conn.executemany("INSERT INTO events (task_id, run_id, kind, payload, at) VALUES (?,?,?,?,?)", evs())
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no ANALYZE: the daemon gets the board as it would grow
    conn.close()
    return show_id or task_id(0)


def write_exec(path: str | Path, body: str) -> str:
    Path(path).write_text(body)
    os.chmod(path, 0o755)
    return str(path)
