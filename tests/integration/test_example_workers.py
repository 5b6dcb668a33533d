"""The example workers in examples/workers/ do what their README lines (and README.md) say.

The daemon runs the profiles of examples/config.yaml itself, with `{config_dir}`
pointing at examples/, and only the timings shortened.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.harness import REPO, wait_for

EXAMPLES = REPO / "examples"


def example_config(**dispatch) -> dict:
    cfg = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    for prof in cfg["profiles"].values():
        prof["command"] = [a.replace("{config_dir}", str(EXAMPLES)) for a in prof["command"]]
        if prof.get("verify"):
            prof["verify"]["command"] = [a.replace("{config_dir}", str(EXAMPLES)) for a in prof["verify"]["command"]]
    cfg["dispatch"].update(dispatch)
    return cfg


def test_echo_worker_completes_and_its_workspace_is_removed(make_daemon):
    d = make_daemon(example_config())
    t = d.cli_json("create", "say hello", "--assignee", "echo-worker")
    done = d.wait_status(t["id"], "done")
    assert done["summary"] == f"echoed {t['id']}"
    runs = wait_for(lambda: [r for r in d.rpc("task.runs", {"id": t["id"]})["runs"] if r["state"] == "ended"],
                    what="the worker's exit to be recorded")
    assert [(r["outcome"], r["exit_code"]) for r in runs] == [("completed", 0)]
    log = d.cli("log", t["id"]).stdout
    assert f"echo-worker: working on {t['id']} ('say hello') in {done['workspace']['path']}" in log
    wait_for(lambda: not os.path.exists(done["workspace"]["path"]), what="the scratch workspace to be removed")


def test_fanout_children_wait_in_todo_and_run_after_the_parent_completes(make_daemon):
    d = make_daemon(example_config())
    parent = d.cli_json("create", "split the work", "--assignee", "fanout")["id"]
    d.wait_status(parent, "done")
    children = d.rpc("task.show", {"id": parent})["children"]
    assert len(children) == 3
    for child in children:
        d.wait_status(child["id"], "done")
        task = d.task(child["id"])
        assert task["assignee"] == "echo-worker"
        assert task["parents"] == [parent]
        events = d.rpc("events.since", {"task": child["id"]})["events"]
        kinds = [e["kind"] for e in events]
        assert events[0]["kind"] == "created" and events[0]["payload"]["status"] == "todo"
        assert kinds.index("promoted") < kinds.index("claimed")
        assert any(e["kind"] == "promoted" and e["payload"].get("parent") == parent for e in events)
    summary = d.task(parent)["summary"]
    assert summary.startswith("fanned out 3 children")
    assert sorted(summary.split(": ")[1].split()) == sorted(c["id"] for c in children)


def test_fanout_retry_reuses_children_through_idempotency_keys(make_daemon):
    """A retried fan-out finds the children it already made instead of creating more."""
    d = make_daemon(example_config())
    parent = d.cli_json("create", "split", "--assignee", "nobody-yet")["id"]
    first = d.cli_json("create", f"part 1 of {parent}", "--parent", parent, "--assignee", "echo-worker",
                       "--idempotency-key", f"{parent}/part-1")
    d.cli("assign", parent, "fanout")
    d.wait_status(parent, "done")
    children = {c["id"] for c in d.rpc("task.show", {"id": parent})["children"]}
    assert len(children) == 3 and first["id"] in children


def test_rate_limited_worker_exits_75_is_requeued_without_failure_then_completes(make_daemon, tmp_path):
    cooldown = 1.5
    cfg = example_config(rate_limit_cooldown=f"{cooldown}s", failure_limit=1)
    marker = Path(f"{tmp_path}/rate-limited")
    cfg["profiles"]["flaky-api"]["env"] = {"RATE_LIMIT_MARKER": str(marker)}
    marker.touch()
    d = make_daemon(cfg)
    t = d.cli_json("create", "call the API", "--assignee", "flaky-api")["id"]

    first = wait_for(lambda: [r for r in d.rpc("task.runs", {"id": t})["runs"] if r["outcome"]],
                     what="the first run to end")[0]
    assert (first["outcome"], first["exit_code"]) == ("rate_limited", 75)
    task = d.task(t)
    assert task["consecutive_failures"] == 0          # failure_limit 1: a failure would have blocked it
    assert task["status"] in ("ready", "running")
    marker.unlink()

    done = d.wait_status(t, "done", timeout=20)
    assert done["summary"] == f"called the API for {t}"
    runs = d.rpc("task.runs", {"id": t})["runs"]
    outcomes = [r["outcome"] for r in runs]
    assert outcomes[0] == "rate_limited" and outcomes[-1] == "completed"
    assert set(outcomes[1:-1]) <= {"rate_limited"}
    for prev, nxt in zip(runs, runs[1:]):               # the cooldown was respected every time
        assert nxt["claimed_at"] >= prev["ended_at"] + cooldown - 0.05
    assert "rate limited" in d.cli("log", t).stdout


def test_implementer_is_verified_then_reviewed_until_the_reviewer_approves(make_daemon):
    """The implementer/reviewer pair: a sloppy first turn is rejected by check_greeting.py, the fix
    passes, the reviewer asks for a signature, the implementer adds it, the reviewer approves."""
    d = make_daemon(example_config())
    t = d.cli_json("create", "write the greeting", "--assignee", "implementer")["id"]
    done = d.wait_status(t, "done", timeout=60)
    runs = wait_for(lambda: (rs := d.rpc("task.runs", {"id": t})["runs"]) and all(r["state"] == "ended" for r in rs)
                    and rs, what="every run to end")
    assert [(r["profile"], r["kind"], r["outcome"]) for r in runs] == [
        ("implementer", "work", "rejected"), ("implementer", "work", "completed"),
        ("reviewer", "review", "changes_requested"), ("implementer", "work", "completed"),
        ("reviewer", "review", "approved")]
    assert [r["verify"] for r in runs] == ["failed", "passed", None, "passed", None]
    assert done["summary"] == "greeting.txt has 2 line(s)"
    comments = d.rpc("task.show", {"id": t})["comments"]
    assert [c["author"] for c in comments] == ["kanban-verify", "reviewer (review)", "reviewer (review)"]
    assert "expected first line: Hello, world!" in comments[0]["body"]
    assert "add a line '-- kanband'" in comments[1]["body"] and comments[2]["body"] == "Looks good (2 lines)."
    log = d.cli("log", t).stdout
    assert "greeting.txt: first line is 'hello world'" in log and log.count("greeting.txt: OK") == 2
    kinds = [e["kind"] for e in d.rpc("events.since", {"task": t})["events"]]
    assert kinds.count("rejected") == 1 and kinds.count("review_requested") == 2
    assert kinds.count("changes_requested") == 1 and kinds.count("completed") == 1
    wait_for(lambda: not os.path.exists(done["workspace"]["path"]), what="the scratch workspace to be removed")
