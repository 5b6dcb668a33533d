#!/usr/bin/env python3
"""Example worker verify command: accepts greeting.txt only if its first line is exactly right.

examples/config.yaml names it as the ``implementer`` profile's ``verify.command``. The daemon runs it
in the task's workspace after the implementer completed and exited, with the worker's environment
plus ``KANBAN_VERIFY=1``. Exit 0 accepts the work; anything else rejects the run, and what this
script prints reaches the next run (``$KANBAN_VERIFY_OUTPUT``, a comment, the task log). A real
profile would run ``make test``, ``pytest -q``, a linter, or an LLM judge here.
"""
import sys

WANTED = "Hello, world!"
try:
    with open("greeting.txt") as f:
        first = f.readline().rstrip("\n")
except FileNotFoundError:
    print("greeting.txt: missing")
    print(f"expected first line: {WANTED}")
    sys.exit(1)
if first != WANTED:
    print(f"greeting.txt: first line is {first!r}")
    print(f"expected first line: {WANTED}")
    sys.exit(1)
print("greeting.txt: OK")
