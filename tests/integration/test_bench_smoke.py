"""Smoke test of bench/: every benchmark script runs on tiny sizes and emits a well-formed report.

Each script runs as ``python bench/NAME.py --quick --json`` (20 tasks or
fewer, 1 repetition). The figures of such a run mean nothing, so this test
asserts **no** timings: only that the script worked, cleaned up after itself,
and printed one JSON document whose every row carries result, baseline and
ratio fields.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.harness import reap_orphans

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import common, run_all  # noqa: E402

STAT_KEYS = {"median", "min", "max"}


def leftovers(marker: str, sids: set[int]) -> list[psutil.Process]:
    """Live processes the benchmark started: workers, clients and servers carry ``marker`` in their
    environment; the daemons' roles (whose environ setproctitle overwrote) share their supervisor's
    session, and the benchmark recorded every supervisor pid (= session id) it started."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(p.pid) in sids or p.environ().get("BENCH_SMOKE_ID") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ProcessLookupError):
            continue
    return found


def check_stats(block: dict, where: str) -> None:
    assert STAT_KEYS <= set(block), f"{where}: missing {STAT_KEYS - set(block)}"
    for k in STAT_KEYS:
        v = block[k]
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), f"{where}.{k} = {v!r}"
    assert block["min"] <= block["median"] <= block["max"], where


def check_report(doc: dict, name: str) -> None:
    assert doc["bench"] == name
    assert doc["quick"] is True
    assert {"date", "cores", "python", "sqlite"} <= set(doc["machine"])
    assert isinstance(doc["params"], dict) and doc["params"].get("reps") == 1
    assert doc["results"], f"{name}: no result rows"
    for r in doc["results"]:
        where = f"{name}/{r.get('name')}"
        assert isinstance(r["name"], str) and r["name"] and isinstance(r["unit"], str) and r["unit"], where
        assert r["better"] in ("lower", "higher"), where
        check_stats(r["result"], where + ".result")
        assert r["result"]["n"] == 1, where
        check_stats(r["baseline"], where + ".baseline")
        assert r["baseline"]["kind"] in ("measured", "budget") and r["baseline"]["label"], where
        check_stats(r["ratio"], where + ".ratio")
        assert isinstance(r["target"], str) and r["target"], where
        assert r["met"] in (True, False, None), where
        assert (r["met"] is None) == (r["target_kind"] == "info"), where


@pytest.mark.parametrize("name", run_all.BENCHES)
def test_bench_script_runs(name: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    record = tmp_path / "sids"
    env = {**os.environ, "BENCH_SMOKE_ID": marker, "BENCH_RECORD_SIDS": str(record)}
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "KANBAN_TASK", "KANBAN_RUN", "KANBAN_SOCKET"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick", "--json"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=110)
    reap_orphans()
    sids = {int(x) for x in record.read_text().split()} if record.exists() else set()
    left = leftovers(marker, sids)
    for p in left:  # never leave them to the next test, even when failing
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    reap_orphans()
    assert res.returncode == 0, f"bench/{name}.py exited {res.returncode}:\n{res.stderr[-3000:]}"
    doc = json.loads(res.stdout)  # --json: stdout is one JSON document and nothing else
    check_report(doc, name)
    assert sids, f"bench/{name}.py recorded no daemon"
    assert not left, f"bench/{name}.py left processes running: {left}"


def test_tables_render_from_rows() -> None:
    rows = [common.row("probe", "ms", [2.0, 3.0, 4.0], [1.0, 2.0, 2.0], "a baseline", common.Target("ratio_max", 2)),
            common.row("budget", "MB", [40.0], 100.0, "a budget", common.Target("ratio_max", 1.0, "<= 100 MB")),
            common.row("context", "ms", [1.0], [1.0], "same")]
    assert rows[0]["ratio"] == {"median": 2.0, "min": 1.5, "max": 2.0}
    assert rows[0]["met"] is True and rows[1]["met"] is True and rows[2]["met"] is None
    assert rows[1]["baseline"]["kind"] == "budget"
    doc = {"quick": True, "machine": common.machine(), "results": [{**r, "bench": "x"} for r in rows]}
    md = run_all.markdown(doc)
    assert md.count("\n| `x` |") == 3
    assert "probe" in common.table(doc["results"])
