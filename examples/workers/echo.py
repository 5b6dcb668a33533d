#!/usr/bin/env python3
"""Example worker: does a trivial piece of work and completes its task.

kanband starts it with KANBAN_TASK, KANBAN_RUN, KANBAN_SOCKET and
KANBAN_WORKSPACE set and the task's workspace as the working directory.
"""
import os
import subprocess
import sys

task = os.environ["KANBAN_TASK"]
show = subprocess.run(["kanban", "show", task, "--json"], capture_output=True, text=True, check=True)
print(f"echo-worker: working on {task} in {os.getcwd()}", flush=True)
with open("result.txt", "w") as f:
    f.write(f"done {task}\n")
res = subprocess.run(["kanban", "complete", "--summary", f"echoed {task}"], capture_output=True, text=True)
if res.returncode != 0:
    print(res.stderr, file=sys.stderr)
sys.exit(res.returncode)
