"""Run every benchmark (``make bench``) and print one combined table.

Each benchmark runs as its own process (``bench/NAME.py --json``), one after
the other so they never compete for the cores. Progress goes to stderr.

    python bench/run_all.py                 # full sizes (takes ~15-25 min on 2 cores)
    python bench/run_all.py --quick         # tiny sizes, 1 rep: proves the scripts work
    python bench/run_all.py --only cli,scale
    python bench/run_all.py --json > out.json
    python bench/run_all.py --markdown      # the table for docs/benchmarks.md
    python bench/run_all.py --from out.json --markdown   # re-render a saved run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

BENCHES = ("cli", "rpc_read", "rpc_write", "dispatch_latency", "throughput", "fanout", "idle", "scale", "restart", "web")


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"Run of {m['date']} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, SQLite {m['sqlite']}, "
             f"{m['platform']}{' (QUICK: sizes too small to mean anything)' if doc.get('quick') else ''}.", "",
             "| benchmark | measure | result: median [min–max] | baseline: median [min–max] | ratio: median "
             "[min–max] | target | met |", "|---|---|---|---|---|---|---|"]
    f = common.fmt
    for r in doc["results"]:
        res, base, rat = r["result"], r["baseline"], r["ratio"]
        b = (f"{f(base['median'])} {r['unit']} (budget)" if base.get("kind") == "budget" else
             f"{f(base['median'])} [{f(base['min'])}–{f(base['max'])}] {r['unit']}")
        met = {True: "yes", False: "**NO**", None: "–"}[r["met"]]
        delta = f" (Δ {r['delta']:+.1f})" if r.get("target_kind") == "delta_max" and r.get("delta") is not None else ""
        lines.append(f"| `{r['bench']}` | {r['name'].strip()} | {f(res['median'])} [{f(res['min'])}–{f(res['max'])}] "
                     f"{r['unit']}{delta} | {b} | {f(rat['median'])}× [{f(rat['min'])}–{f(rat['max'])}] | "
                     f"{r['target'].replace('<=', '≤').replace('>=', '≥')} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run_all.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 rep each")
    p.add_argument("--json", action="store_true", help="print the combined JSON only")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--from", dest="from_file", help="render a saved --json output instead of running")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, common._terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.from_file:
        with open(args.from_file) as fh:
            doc = json.load(fh)
    else:
        names = args.only.split(",") if args.only else list(BENCHES)
        unknown = [x for x in names if x not in BENCHES]
        if unknown:
            p.error(f"unknown benchmark {unknown[0]!r}")
        runs, failed = [], []
        for name in names:
            cmd = [common.PYTHON, str(common.BENCH / f"{name}.py"), "--json"] + (["--quick"] if args.quick else [])
            print(f"== {name}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=common.REPO)
            try:
                out, _ = proc.communicate()
            finally:  # interrupted: let the benchmark stop its daemons
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(60)
            if proc.returncode != 0:
                failed.append(name)
                print(f"== {name} FAILED (exit {proc.returncode})", file=sys.stderr, flush=True)
                continue
            one = json.loads(out)
            one["seconds"] = time.monotonic() - t0
            runs.append(one)
        rows = [{**r, "bench": one["bench"]} for one in runs for r in one["results"]]
        doc = {"quick": args.quick, "machine": common.machine(), "benchmarks": runs, "results": rows,
               "failed": failed}
    if args.json:
        print(json.dumps(doc, indent=1))
    elif args.markdown:
        print(markdown(doc))
    else:
        m = doc["machine"]
        print(f"kanband benchmarks: {m['date']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}")
        print(common.table(doc["results"]))
    if doc.get("failed"):
        print(f"failed: {', '.join(doc['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
