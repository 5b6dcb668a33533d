"""A load-generating client process for the throughput benchmarks.

Runs in: its own process (several at once), started by bench/common.load().
Connects with the project's stdlib client (client/rpc.py), prints ``ready``,
waits for ``go START END`` on stdin (CLOCK_MONOTONIC is system-wide), then
calls METHOD back to back, cycling through PARAMS, until END, and prints
``{"calls": N, "finished": T}``. The same code drives the daemon and the
echo baseline.

Usage: python bench/loadgen.py SOCKET METHOD PARAMS_JSON_LIST|@FILE
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client.rpc import Client, ServerError  # noqa: E402


def main() -> None:
    raw = sys.argv[3]
    if raw.startswith("@"):  # a file: argv strings are capped at 128 KiB
        with open(raw[1:]) as f:
            raw = f.read()
    path, method, params = sys.argv[1], sys.argv[2], json.loads(raw) or [{}]
    client = Client(path, retry=5.0)
    print("ready", flush=True)
    go = sys.stdin.readline().split()
    start, end = float(go[1]), float(go[2])
    time.sleep(max(0.0, start - time.monotonic()))
    calls, err = 0, None
    n = len(params)
    try:
        while time.monotonic() < end:
            client.call(method, params[calls % n])
            calls += 1
    except (ServerError, OSError) as exc:
        err = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"calls": calls, "finished": time.monotonic(), "error": err}), flush=True)


if __name__ == "__main__":
    main()
