#!/usr/bin/env python3
"""Example worker: does a trivial piece of work and completes its task.

Try it (examples/config.yaml maps the assignee ``echo-worker`` to this file):

    kanban create "say hello" --assignee echo-worker
    kanban show t_xxxxxxxx        # status done, summary "echoed t_xxxxxxxx"
    kanban log t_xxxxxxxx         # what this script printed

kanband starts it with KANBAN_TASK, KANBAN_RUN, KANBAN_SOCKET,
KANBAN_WORKSPACE, KANBAN_BOARD and KANBAN_PROFILE set, the task's workspace
as the working directory, stdout/stderr appended to the task's log, and the
directory of the ``kanban`` client first on PATH. It reports back through
the client: ``kanban complete`` reads the task id and the run id (the fencing
token) from the environment. Exiting 0 without completing would be a
``protocol_violation``.
"""
import json
import os
import subprocess
import sys

task = os.environ["KANBAN_TASK"]
show = subprocess.run(["kanban", "show", task, "--json"], capture_output=True, text=True, check=True)
title = json.loads(show.stdout)["task"]["title"]
print(f"echo-worker: working on {task} ({title!r}) in {os.getcwd()}", flush=True)
with open("result.txt", "w") as f:
    f.write(f"done {task}\n")
res = subprocess.run(["kanban", "complete", "--summary", f"echoed {task}"], capture_output=True, text=True)
if res.returncode != 0:
    print(res.stderr, file=sys.stderr)
sys.exit(res.returncode)
