"""Verified completion and the review lane, against a real daemon and real worker scripts.

A worker's "done" passes through its verify command (run by the reaper once none of the
worker's processes is alive) and, where asked, through review: ``kanban approve`` or
``kanban request-changes`` by an operator or by a dispatched reviewer run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.harness import KANBAND, wait_for, write_script
from tests.integration.test_notifier import command_sink, lines

#: The implementer: counts its turns in the workspace, keeps what it was told, fixes the work on turn FIX_ON.
CODER = r"""#!/bin/sh
out="$OUT/$KANBAN_TASK"
mkdir -p "$out"
rm -f worker_exited.txt
n=$(cat turns 2>/dev/null || echo 0); n=$((n + 1)); echo $n > turns
echo "coder: turn $n"
[ -n "$KANBAN_VERIFY_OUTPUT" ] && cp "$KANBAN_VERIFY_OUTPUT" "$out/verify-output-seen-$n"
kanban show "$KANBAN_TASK" --json > "$out/show-$n.json"
[ "$n" -ge "${FIX_ON:-99}" ] && echo fixed > fixed.txt
kanban complete --summary "turn $n" --json > "$out/complete-$n.json"
kanban show "$KANBAN_TASK" --json > "$out/after-complete-$n.json"
sleep 0.5
touch worker_exited.txt
"""

#: The acceptance check: it must never run while the worker is alive, and passes once fixed.txt exists.
CHECK = r"""#!/bin/sh
echo "check: KANBAN_VERIFY=$KANBAN_VERIFY task=$KANBAN_TASK"
[ -f worker_exited.txt ] || { echo "VERIFY RAN WHILE THE WORKER WAS ALIVE"; exit 9; }
[ -f fixed.txt ] || { echo "FAIL: fixed.txt is missing"; exit 1; }
echo "PASS"
"""


def setup(d, fix_on: int | None = 2, verify: dict | None = None, **profile) -> Path:
    """Profile ``coder`` (CODER) with the CHECK verify command; returns the directory the coder writes to."""
    out = Path(d.tmp) / "out"
    out.mkdir(exist_ok=True)
    coder = write_script(f"{d.tmp}/coder.sh", CODER)
    check = write_script(f"{d.tmp}/check.sh", CHECK)
    env = {"OUT": str(out)} | ({"FIX_ON": str(fix_on)} if fix_on else {})
    prof = {"command": [coder], "env": env, **profile}
    if verify is not False:
        prof["verify"] = verify or {"command": [check], "max_turns": 3}
    d.cfg.setdefault("profiles", {})["coder"] = prof
    d.write_config(d.cfg)
    return out


def runs(d, task_id):
    return d.rpc("task.runs", {"id": task_id})["runs"]


def ended(d, task_id, n):
    return wait_for(lambda: len(rs := runs(d, task_id)) == n and all(r["state"] == "ended" for r in rs) and rs,
                    what=f"{n} ended runs of {task_id}")


def events(d, task_id, kind=None):
    evs = d.rpc("events.since", {"task": task_id})["events"]
    return [e for e in evs if kind is None or e["kind"] == kind]


def test_rejected_work_goes_back_with_the_output_and_a_later_turn_that_fixes_it_is_done(make_daemon):
    d = make_daemon({"dispatch": {"failure_limit": 1}}, start=False)
    out = setup(d, fix_on=2)
    d.start()
    parent = d.cli_json("create", "make the test pass", "-a", "coder")["id"]
    child = d.cli_json("create", "after it", "--parent", parent)["id"]
    done = d.wait_status(parent, "done", timeout=30)
    first, second = ended(d, parent, 2)
    # turn 1 completed without fixing it: the check ran after the worker was gone, and rejected the run
    assert (first["outcome"], first["verify"], first["verify_exit"]) == ("rejected", "failed", 1)
    assert first["verify_command"] == [f"{d.tmp}/check.sh"]
    assert "FAIL: fixed.txt is missing" in Path(first["verify_output"]).read_text()
    assert "VERIFY RAN WHILE THE WORKER WAS ALIVE" not in d.cli("log", parent).stdout
    # right after `kanban complete` the task was not done: it waited for its verification
    c1 = json.loads((out / parent / "complete-1.json").read_text())
    assert c1["verifying"] == [parent] and c1["tasks"][0]["status"] == "running"
    assert json.loads((out / parent / "after-complete-1.json").read_text())["task"]["status"] == "running"
    # turn 2 saw what the check said, in KANBAN_VERIFY_OUTPUT and in the task's comments
    assert "FAIL: fixed.txt is missing" in (out / parent / "verify-output-seen-2").read_text()
    assert not (out / parent / "verify-output-seen-1").exists()
    shown = json.loads((out / parent / "show-2.json").read_text())
    (note,) = shown["comments"]
    assert note["author"] == "kanban-verify"
    assert f"{d.tmp}/check.sh" in note["body"] and "exit code 1" in note["body"] and "turn 1 of 3" in note["body"]
    assert "FAIL: fixed.txt is missing" in note["body"] and first["verify_output"] in note["body"]
    assert shown["task"]["verify_rejections"] == 1 and shown["runs"][0]["outcome"] == "rejected"
    # turn 2 fixed it: verified, done, the child promoted, counters reset; rejections never counted as failures
    assert (second["outcome"], second["verify"], second["verify_exit"]) == ("completed", "passed", 0)
    assert done["summary"] == "turn 2" and done["consecutive_failures"] == 0 and done["verify_rejections"] == 0
    assert d.task(child)["status"] == "ready"
    (completed,) = events(d, parent, "completed")
    assert completed["payload"]["verified"] is True and completed["run_id"] == second["id"]
    rejected = events(d, parent, "rejected")
    assert [e["payload"]["turn"] for e in rejected] == [1] and rejected[0]["payload"]["exit_code"] == 1
    assert not events(d, parent, "gave_up") and len(events(d, parent, "verifying")) == 2
    # the check's output is in the task log, between separators, with the task's environment
    log = d.cli("log", parent).stdout
    assert log.count(f"===== kanban verify {first['id']}: {d.tmp}/check.sh") == 1
    assert f"===== kanban verify {first['id']} ended: exit code 1 =====" in log
    assert f"===== kanban verify {second['id']} ended: exit code 0 =====" in log
    assert f"check: KANBAN_VERIFY=1 task={parent}" in log and "PASS" in log
    # `kanban show` tells the story
    text = d.cli("show", parent).stdout
    assert "rejected" in text and "kanban-verify" in text


def test_a_worker_that_never_fixes_it_is_blocked_after_max_turns_and_the_notifier_says_so(make_daemon):
    d = make_daemon({"dispatch": {"failure_limit": 1}}, start=False)
    hook = command_sink(d, all=True)  # the sink's default kinds
    setup(d, fix_on=None, verify=False)
    d.start()
    t = d.cli_json("create", "hopeless", "-a", "coder", "--verify", "sh -c 'echo \"still broken\"; exit 3'",
                   "--verify-turns", "2")
    assert t["verify_command"] == ["sh", "-c", 'echo "still broken"; exit 3'] and t["verify_turns"] == 2
    blocked = d.wait_status(t["id"], "blocked", timeout=30)
    assert blocked["block_reason"] == "verification failed 2 times"
    assert blocked["consecutive_failures"] == 0  # the breaker (failure_limit 1) never counted them
    assert [r["outcome"] for r in ended(d, t["id"], 2)] == ["rejected", "rejected"]
    (failed,) = events(d, t["id"], "verify_failed")
    assert failed["payload"]["turns"] == 2 and failed["payload"]["max_turns"] == 2
    wait_for(lambda: any(x["doc"]["kind"] == "verify_failed" for x in lines(hook)), what="verify_failed delivered")
    first, second = d.rpc("task.show", {"id": t["id"]})["comments"]
    assert "turn 1 of 2" in first["body"] and "exit code 3" in first["body"] and "still broken" in first["body"]
    assert "turn 2 of 2" in second["body"]
    # the block is sticky, and an unblock gives it its turns again
    d.cli("unblock", t["id"])
    d.wait_status(t["id"], "blocked", timeout=30)
    assert len(ended(d, t["id"], 4)) == 4


def test_a_verification_that_overruns_its_timeout_is_a_rejection(make_daemon):
    d = make_daemon(start=False)
    setup(d, verify={"command": ["sleep", "60"], "timeout": "0.5s", "max_turns": 1})
    d.start()
    t = d.cli_json("create", "slow check", "-a", "coder")["id"]
    blocked = d.wait_status(t, "blocked", timeout=30)
    assert blocked["block_reason"] == "verification failed 1 times"
    (run,) = ended(d, t, 1)
    assert run["outcome"] == "rejected" and "timed out after 0.5s" in run["error"]
    assert "timed out after 0.5s" in d.rpc("task.show", {"id": t})["comments"][0]["body"]


def test_an_operator_block_during_verification_stops_it_and_cancels_the_run(make_daemon):
    d = make_daemon(start=False)
    marker = Path(d.tmp) / "verify-started"
    setup(d, verify={"command": ["sh", "-c", f"touch {marker}; exec sleep 60"]})
    d.start()
    t = d.cli_json("create", "block me", "-a", "coder")["id"]
    wait_for(marker.exists, what="the verify command to start")
    (run,) = runs(d, t)
    assert run["state"] == "verifying" and d.task(t)["status"] == "running"
    assert "verifying" in d.cli("runs", t).stdout
    d.cli("block", t, "-r", "not like this")
    (run,) = ended(d, t, 1)
    assert run["outcome"] == "cancelled" and run["verify"] == "cancelled"
    task = d.task(t)
    assert task["status"] == "blocked" and task["block_reason"] == "not like this" and not events(d, t, "rejected")


def _restart_during_verification(make_daemon, on_shutdown: str) -> tuple:
    d = make_daemon({"dispatch": {"on_shutdown": on_shutdown}}, start=False)
    starts, go = Path(d.tmp) / "verify-starts", Path(d.tmp) / "go"
    check = write_script(f"{d.tmp}/slow-check.sh", f"""#!/bin/sh
echo "$$" >> {starts}
while [ ! -e {go} ]; do sleep 0.05; done
echo "checked"
""")
    setup(d, verify={"command": [check]})
    d.start()
    t = d.cli_json("create", "restart me", "-a", "coder")["id"]
    wait_for(lambda: starts.exists() and starts.read_text(), what="the verify command to start")
    d.stop()
    return d, t, starts, go


def test_a_verification_cut_short_by_a_shutdown_is_run_again_not_believed(make_daemon):
    d, t, starts, go = _restart_during_verification(make_daemon, "kill")
    assert len(starts.read_text().split()) == 1
    d.start()
    wait_for(lambda: len(starts.read_text().split()) == 2, what="the verification to run again")
    assert d.task(t)["status"] == "running" and runs(d, t)[0]["state"] == "verifying"
    go.touch()
    done = d.wait_status(t, "done", timeout=20)
    (run,) = ended(d, t, 1)
    assert run["outcome"] == "completed" and done["summary"] == "turn 1"
    assert [e["payload"]["reason"] for e in events(d, t, "verify_interrupted")] == ["the daemon shut down"]
    assert len(starts.read_text().split()) == 2


def test_a_verification_that_outlives_a_restart_is_adopted_not_run_twice(make_daemon):
    d, t, starts, go = _restart_during_verification(make_daemon, "leave")
    d.start()
    go.touch()
    d.wait_status(t, "done", timeout=20)
    (run,) = ended(d, t, 1)
    assert run["outcome"] == "completed"
    assert len(starts.read_text().split()) == 1 and not events(d, t, "verify_interrupted")
    assert "checked" in Path(run["verify_output"]).read_text()


def test_a_verification_stopped_from_outside_is_run_again_not_taken_as_a_rejection(make_daemon):
    """What a reaper that died mid-shutdown leaves behind: a wrapper that was told to stop, and no reason."""
    d = make_daemon(start=False)
    starts, go = Path(d.tmp) / "verify-starts", Path(d.tmp) / "go"
    check = write_script(f"{d.tmp}/slow-check.sh", f"#!/bin/sh\necho $$ >> {starts}\n"
                         f"while [ ! -e {go} ]; do sleep 0.05; done\n")
    setup(d, verify={"command": [check]})
    d.start()
    t = d.cli_json("create", "stop me", "-a", "coder")["id"]
    wait_for(lambda: starts.exists() and starts.read_text(), what="the verify command to start")
    (run,) = runs(d, t)
    wrapper = json.loads((Path(d.state) / "runs" / f"{run['id']}.verify.pid").read_text())["pid"]
    os.kill(wrapper, 15)
    wait_for(lambda: len(starts.read_text().split()) == 2, what="the verification to run again")
    go.touch()
    d.wait_status(t, "done", timeout=20)
    assert [r["outcome"] for r in ended(d, t, 1)] == ["completed"] and not events(d, t, "rejected")
    (ev,) = events(d, t, "verify_interrupted")
    assert "stopped" in ev["payload"]["reason"]


# ---- review ---------------------------------------------------------------------------------------

def test_review_required_waits_for_approve_which_promotes_children(make_daemon):
    d = make_daemon(start=False)
    setup(d, verify=False, review="required")
    d.start()
    parent = d.cli_json("create", "needs a look", "-a", "coder")["id"]
    child = d.cli_json("create", "after the review", "--parent", parent)["id"]
    d.wait_status(parent, "review")
    (run,) = ended(d, parent, 1)
    assert run["outcome"] == "completed" and run["kind"] == "work"
    assert d.task(child)["status"] == "todo"
    (req,) = events(d, parent, "review_requested")
    assert req["payload"]["verified"] is False and req["payload"]["reviewer"] is None
    assert [x["id"] for x in d.cli_json("list", "--status", "review")["tasks"]] == [parent]
    stats = d.cli_json("stats")
    assert stats["by_status"]["review"] == 1 and stats["review"] == {"waiting": 1, "reviewing": 0}
    assert "review lane: 1 waiting for a reviewer" in d.cli("stats").stdout
    # only tasks in review can be approved, and request-changes needs a comment
    bad = d.cli("approve", child, check=False)
    assert bad.returncode == 1 and "illegal_transition" in bad.stderr and child in bad.stderr
    bad = d.cli("request-changes", parent, "--comment", " ", check=False)
    assert bad.returncode == 1 and "comment" in bad.stderr
    res = d.cli_json("approve", parent, "--comment", "looks right")
    assert res["tasks"][0]["status"] == "done" and res["promoted"] == [child]
    assert d.task(child)["status"] == "ready"
    done = events(d, parent, "completed")[-1]["payload"]
    assert done["approved"] is True and done["by"] == "operator" and done["comment"] == "looks right"
    assert d.rpc("task.show", {"id": parent})["comments"][-1]["body"] == "looks right"


def test_request_changes_sends_it_back_with_the_comment_and_leaves_the_failure_count(make_daemon):
    # a reviewer that crashes: a counted failure, the task stays in review (long backoff: it waits)
    d = make_daemon({"dispatch": {"retry_backoff": "60s", "retry_backoff_max": "60s", "failure_limit": 3}},
                    start=False)
    out = setup(d, verify=False, review_by="critic")
    write_script(f"{d.tmp}/critic.sh", "#!/bin/sh\necho 'critic: crashing'\nexit 4\n")
    d.cfg["profiles"]["critic"] = {"command": [f"{d.tmp}/critic.sh"]}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "change me", "-a", "coder")["id"]
    wait_for(lambda: [r["outcome"] for r in runs(d, t)] == ["completed", "crashed"], what="the reviewer to crash")
    task = d.task(t)
    assert task["status"] == "review" and task["consecutive_failures"] == 1 and task["cooldown_kind"] == "backoff"
    assert runs(d, t)[1]["kind"] == "review" and runs(d, t)[1]["profile"] == "critic"
    res = d.cli_json("request-changes", t, "--comment", "please handle the empty input")
    assert res["tasks"][0]["status"] == "ready" and res["tasks"][0]["consecutive_failures"] == 1
    (ev,) = events(d, t, "changes_requested")
    assert ev["payload"]["comment"] == "please handle the empty input" and ev["payload"]["by"] == "operator"
    # the next run of the implementer sees the comment
    wait_for(lambda: (out / t / "complete-2.json").exists(), what="the second turn")  # show-2.json is whole
    shown = json.loads((out / t / "show-2.json").read_text())
    assert [c["body"] for c in shown["comments"]] == ["please handle the empty input"]
    d.wait_status(t, "review")


REVIEWER = r"""#!/bin/sh
out="$OUT/$KANBAN_TASK"
env | grep '^KANBAN_' | sort > "$out/reviewer-env"
pwd > "$out/reviewer-cwd"
kanban heartbeat --note "reading the diff" > /dev/null || exit 5
kanban approve --comment "LGTM: $(cat turns) turn(s)"
"""


def test_a_dispatched_reviewer_approves_from_inside_its_run(make_daemon):
    d = make_daemon(start=False)
    out = setup(d, review_by="reviewer")
    write_script(f"{d.tmp}/reviewer.sh", REVIEWER)
    d.cfg["profiles"]["reviewer"] = {"command": [f"{d.tmp}/reviewer.sh"], "env": {"OUT": str(out)},
                                     "max_in_progress": 1}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "review me", "-a", "coder", "--verify", f"{d.tmp}/check.sh", "--verify-turns", "1")
    # verified first: the check passes once fixed.txt exists, which this coder writes on turn 1 only if told
    blocked = d.wait_status(t["id"], "blocked", timeout=30)
    assert blocked["block_reason"] == "verification failed 1 times" and not events(d, t["id"], "review_requested")
    t = d.cli_json("create", "review me", "-a", "coder", "--verify", f"{d.tmp}/check.sh")["id"]
    done = d.wait_status(t, "done", timeout=30)
    work1, work2, review = ended(d, t, 3)
    assert [r["outcome"] for r in (work1, work2)] == ["rejected", "completed"]
    assert (review["kind"], review["profile"], review["outcome"]) == ("review", "reviewer", "approved")
    (req,) = events(d, t, "review_requested")
    assert req["payload"] == {**req["payload"], "reviewer": "reviewer", "verified": True}
    env = dict(line.split("=", 1) for line in (out / t / "reviewer-env").read_text().splitlines())
    assert env["KANBAN_REVIEW"] == "1" and env["KANBAN_TASK"] == t and env["KANBAN_RUN"] == review["id"]
    assert (out / t / "reviewer-cwd").read_text().strip() == done["workspace"]["path"]
    last = d.rpc("task.show", {"id": t})["comments"][-1]
    assert last["body"] == "LGTM: 2 turn(s)" and last["author"] == "reviewer (review)"
    final = events(d, t, "completed")[-1]
    assert final["payload"]["by"] == "reviewer" and final["payload"]["approved"] and final["run_id"] == review["id"]
    assert [e["payload"]["note"] for e in events(d, t, "heartbeat")] == ["reading the diff"]


def test_reviewer_runs_count_against_the_reviewer_profiles_cap(make_daemon):
    d = make_daemon(start=False)
    go = Path(d.tmp) / "go"
    setup(d, verify=False, review_by="reviewer")
    write_script(f"{d.tmp}/slow-reviewer.sh", f"#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.05; done\n"
                 "kanban approve\n")
    d.cfg["profiles"]["reviewer"] = {"command": [f"{d.tmp}/slow-reviewer.sh"], "max_in_progress": 1}
    d.write_config(d.cfg)
    d.start()
    ids = [d.cli_json("create", f"review {i}", "-a", "coder")["id"] for i in (1, 2)]
    wait_for(lambda: d.cli_json("stats")["review"] == {"waiting": 1, "reviewing": 1}, what="one review running")
    live = [r for t in ids for r in runs(d, t) if r["kind"] == "review" and r["state"] != "ended"]
    assert len(live) == 1 and "being reviewed" in d.cli("stats").stdout
    go.touch()
    for t in ids:
        d.wait_status(t, "done")
    assert sorted(r["outcome"] for t in ids for r in ended(d, t, 2)) == ["approved", "approved", "completed",
                                                                          "completed"]


def test_a_worker_that_overruns_after_completing_is_still_verified(make_daemon):
    """The kill of a worker lingering past max_runtime after `kanban complete` is not the verdict."""
    d = make_daemon(start=False)
    setup(d, verify={"command": ["true"]}, max_runtime="1s")
    d.cfg["profiles"]["coder"]["command"] = [write_script(f"{d.tmp}/linger.sh", "#!/bin/sh\n"
                                                          "kanban complete -m lingering\nexec sleep 60\n")]
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "linger", "-a", "coder")["id"]
    done = d.wait_status(t, "done", timeout=20)
    (run,) = ended(d, t, 1)
    assert (run["outcome"], run["verify"], done["summary"]) == ("completed", "passed", "lingering")
    assert run["signal"] == 15 and not events(d, t, "verify_interrupted")


def test_a_worker_may_not_approve_its_own_run(make_daemon):
    d = make_daemon(start=False)
    setup(d, verify=False)
    rogue = write_script(f"{d.tmp}/rogue.sh", r"""#!/bin/sh
kanban complete --summary "done, trust me"
kanban approve --comment "self-approved" 2> "$OUT/approve.err"; echo "approve=$?" >> "$OUT/rogue"
kanban request-changes --comment "self" 2> "$OUT/changes.err"; echo "changes=$?" >> "$OUT/rogue"
""")
    d.cfg["profiles"]["coder"]["command"] = [rogue]
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "self review", "-a", "coder", "--review")["id"]  # the task asks for review
    d.wait_status(t, "review")
    out = Path(d.tmp) / "out"
    wait_for(lambda: (out / "rogue").exists() and "changes=" in (out / "rogue").read_text(), what="the rogue's tries")
    assert (out / "rogue").read_text().split() == ["approve=1", "changes=1"]
    err = (out / "approve.err").read_text()
    assert "permission_denied" in err and "may not approve its own task's run" in err and t in err
    assert "permission_denied" in (out / "changes.err").read_text()
    assert d.task(t)["status"] == "review" and not events(d, t, "changes_requested")
    assert [r["outcome"] for r in ended(d, t, 1)] == ["completed"]


def test_bad_verify_and_review_settings_are_refused_with_a_clear_message(make_daemon, tmp_path):
    d = make_daemon()
    bad = d.cli("create", "x", "--verify", "pytest 'unbalanced", check=False)
    assert bad.returncode == 1 and "invalid_params" in bad.stderr and "unbalanced" in bad.stderr
    bad = d.cli("create", "x", "--verify", "true", "--verify-turns", "0", check=False)
    assert bad.returncode == 1 and "verify_turns" in bad.stderr
    for profile, key in (({"command": ["w"], "verify": {"command": []}}, "profiles.p.verify.command"),
                         ({"command": ["w"], "verify": {"command": ["t"], "turns": 2}}, "profiles.p.verify.turns"),
                         ({"command": ["w"], "verify": {"command": ["t"], "timeout": "soon"}},
                          "profiles.p.verify.timeout"),
                         ({"command": ["w"], "review": "maybe"}, "profiles.p.review"),
                         ({"command": ["w"], "review_by": "p"}, "profiles.p.review_by"),
                         ({"command": ["w"], "review_by": "ghost"}, "profiles.p.review_by")):
        path = tmp_path / "bad.yaml"
        path.write_text(json.dumps({"profiles": {"p": profile}}))
        res = subprocess.run([KANBAND, "--check-config", "--config", str(path)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "KANBAN_TEST_ID": d.tmp})
        assert res.returncode != 0 and str(path) in res.stderr and key in res.stderr, (key, res.stderr)
