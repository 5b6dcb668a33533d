#!/usr/bin/env python3
"""Example worker: an implementer whose work is verified, then reviewed (with reviewer.py).

Try it (examples/config.yaml maps ``implementer`` to this file, with check_greeting.py as its
verify command and ``review_by: reviewer``):

    kanban create "write the greeting" --assignee implementer
    kanban runs t_xxxxxxxx        # rejected, completed, changes_requested (review), completed, approved (review)
    kanban show t_xxxxxxxx        # done; the comments hold the check's output and the reviewer's notes

Its job is ``greeting.txt`` in the task's workspace. Like a hasty agent, its first try is sloppy and it
says "done" anyway: the daemon runs the verify command once this worker has exited, rejects the run, and
requeues the task with the check's output in ``$KANBAN_VERIFY_OUTPUT`` and in a comment. Each turn it acts
on that feedback, and on the review comments (``kanban request-changes``) it finds in ``kanban show``.
The workspace is kept between turns, so each turn starts from the last one's files.
"""
import json
import os
import re
import subprocess
import sys

task = os.environ["KANBAN_TASK"]
show = json.loads(subprocess.run(["kanban", "show", task, "--json"], capture_output=True, text=True,
                                 check=True).stdout)
lines = open("greeting.txt").read().splitlines() if os.path.exists("greeting.txt") else ["hello world"]

feedback = ""
if os.environ.get("KANBAN_VERIFY_OUTPUT"):  # the check rejected the last turn: it says what it expected
    with open(os.environ["KANBAN_VERIFY_OUTPUT"]) as f:
        feedback = f.read()
expected = re.search(r"^expected first line: (.*)$", feedback, re.M)
if expected:
    lines[0] = expected.group(1)
for c in show["comments"]:  # review notes: "add a line '...'"
    if (c["author"] or "").endswith("(review)"):
        for wanted in re.findall(r"add a line '([^']*)'", c["body"]):
            if wanted not in lines:
                lines.append(wanted)

with open("greeting.txt", "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"implementer: wrote greeting.txt for {task}: {lines!r}", flush=True)
res = subprocess.run(["kanban", "complete", "--summary", f"greeting.txt has {len(lines)} line(s)"],
                     capture_output=True, text=True)
if res.returncode != 0:
    print(res.stderr, file=sys.stderr)
sys.exit(res.returncode)
