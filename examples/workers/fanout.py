#!/usr/bin/env python3
"""Example worker: fans a task out into child tasks, then completes itself.

Try it (examples/config.yaml maps the assignee ``fanout`` to this file):

    kanban create "split the work" --assignee fanout
    kanban show t_xxxxxxxx        # done; children: three tasks
    kanban list                   # the children run on echo-worker and finish

Each child is created with ``kanban create --parent $KANBAN_TASK``. While this
task is still running the children wait in ``todo``; completing this task
promotes them to ``ready`` in the same transaction, and the dispatcher starts
them at once. Every child carries an idempotency key derived from this task,
so if this worker crashes after creating some children and is retried, the
retry finds them instead of creating duplicates.

Environment (set in the profile's ``env:``): FANOUT_COUNT (default 3) and
FANOUT_ASSIGNEE (default echo-worker).
"""
import os
import subprocess
import sys

task = os.environ["KANBAN_TASK"]
count = int(os.environ.get("FANOUT_COUNT", "3"))
assignee = os.environ.get("FANOUT_ASSIGNEE", "echo-worker")

children = []
for i in range(1, count + 1):
    res = subprocess.run(
        ["kanban", "create", f"part {i} of {task}", "--parent", task, "--assignee", assignee,
         "--idempotency-key", f"{task}/part-{i}", "--body", f"child {i}/{count} of {task}"],
        capture_output=True, text=True)
    if res.returncode != 0:
        print(f"fanout: creating child {i} failed: {res.stderr.strip()}", file=sys.stderr)
        sys.exit(1)  # a crash: kanband requeues this task, and the retry reuses the children made so far
    children.append(res.stdout.strip())
    print(f"fanout: created {children[-1]} (waits in todo until {task} completes)", flush=True)

res = subprocess.run(["kanban", "complete", "--summary", f"fanned out {len(children)} children: "
                      + " ".join(children)], capture_output=True, text=True)
if res.returncode != 0:
    print(res.stderr, file=sys.stderr)
sys.exit(res.returncode)
