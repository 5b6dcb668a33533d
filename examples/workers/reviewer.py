#!/usr/bin/env python3
"""Example worker: a reviewer, dispatched on tasks in review (``review_by: reviewer``).

examples/config.yaml sets ``review_by: reviewer`` on the ``implementer`` profile, so once an
implementer's work has passed its verify command the task waits in ``review`` and the daemon starts
this script on it: same task (``KANBAN_TASK``), same workspace, and ``KANBAN_REVIEW=1``. It ends the
review from inside its run with ``kanban approve`` (done; children promoted) or ``kanban
request-changes --comment`` (back to ready; the implementer's next run reads the comment). A run
may not review work it did itself: the daemon refuses that.
"""
import os
import subprocess
import sys

if os.environ.get("KANBAN_REVIEW") != "1":
    sys.exit("reviewer.py: not started as a reviewer (KANBAN_REVIEW is not 1)")
with open("greeting.txt") as f:
    text = f.read()
if "-- kanband" not in text.splitlines():
    verdict = ["request-changes", "--comment", "Please sign it: add a line '-- kanband' at the end."]
else:
    verdict = ["approve", "--comment", f"Looks good ({len(text.splitlines())} lines)."]
print(f"reviewer: {verdict[0]} {os.environ['KANBAN_TASK']}", flush=True)
res = subprocess.run(["kanban", *verdict], capture_output=True, text=True)
if res.returncode != 0:
    print(res.stderr, file=sys.stderr)
sys.exit(res.returncode)
