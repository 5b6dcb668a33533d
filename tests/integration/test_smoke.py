"""End-to-end smoke: a real worker script completes a task."""

from tests.harness import write_script


def test_echo_worker_completes(make_daemon, tmp_path):
    d = make_daemon(start=False)
    script = write_script(f"{d.tmp}/w.sh", "#!/bin/sh\necho hi from $KANBAN_TASK\nkanban complete --summary ok\n")
    d.cfg["profiles"] = {"sh": {"command": [script]}}
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "hello", "--assignee", "sh")
    done = d.wait_status(t["id"], "done")
    assert done["summary"] == "ok"
    runs = d.rpc("task.runs", {"id": t["id"]})["runs"]
    assert [r["outcome"] for r in runs] == ["completed"]
    log = d.cli("log", t["id"]).stdout
    assert f"hi from {t['id']}" in log
