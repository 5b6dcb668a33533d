"""Text from tasks is data, never code, and the CLI fails well: against a real kanband,
real workers, a real command hook, real pipes and a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import FAST, KANBAN, KANBAND, Daemon, merge, on_tty, wait_for, write_script

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\nforged line\r\tx\x9b31m\u202edrow $(touch {x}) `id` '\"; {kind}"


@pytest.fixture(scope="module")
def d():
    dm = Daemon(merge(FAST, {"dispatch": {"tick": "30s"}}))
    try:
        argv_w = write_script(f"{dm.tmp}/argv.py", f"""#!{sys.executable} -S
import json, subprocess, sys
print("ARGV " + json.dumps(sys.argv[1:]))
print("RAW " + sys.argv[1])
subprocess.run(["kanban", "complete"], check=True)
""")
        blocker = write_script(f"{dm.tmp}/blocker.sh", """#!/bin/sh
kanban complete --metadata notjson
echo "rc=$?"
kanban block "credentials expired"
""")
        out = Path(dm.tmp) / "hook.jsonl"
        hook = write_script(f"{dm.tmp}/hook.py", f"""#!{sys.executable} -S
import json, os, sys
doc = json.load(sys.stdin)
env = {{k: v for k, v in os.environ.items() if k.startswith("KANBAN_")}}
with open({str(out)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "doc": doc, "env": env}}) + "\\n")
""")
        dm.cfg["profiles"] = {
            "argv": {"command": [argv_w, "{title}", "ws={workspace}", "{run_id}"]},
            "blocker": {"command": [blocker]},
        }
        dm.cfg["sinks"] = {"hook": {"type": "command", "command": [hook, "{title}", "{kind}"], "all": True,
                                    "kinds": ["blocked"], "timeout": "5s"}}
        dm.write_config(dm.cfg)
        dm.start()
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


def no_raw_controls(text: str) -> None:
    """Nothing but our own colour codes (SGR) may reach the terminal."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r\n", "\n")
    assert "\x1b" not in plain and "\x07" not in plain and "\x9b" not in plain and "\u202e" not in plain, plain
    assert "\r" not in plain, plain
    assert "forged line" not in [line.strip() for line in plain.splitlines()], plain


# ---- §6: placeholders, hooks, terminals --------------------------------------------------------


def test_title_placeholders_reach_the_worker_literally(d):
    title = "{workspace} {config_dir} {run_id} {task_id}"
    t = d.cli_json("create", title, "-a", "argv")
    d.wait_status(t["id"], "done")
    line = next(x for x in d.cli("log", t["id"]).stdout.splitlines() if x.startswith("ARGV "))
    argv = json.loads(line[5:])
    run = d.rpc("task.runs", {"id": t["id"]})["runs"][0]["id"]
    assert argv == [title, f"ws={Path(d.state) / 'workspaces' / t['id']}", run]


def test_command_hook_gets_task_text_only_as_data(d):
    out = Path(d.tmp) / "hook.jsonl"
    # a NUL cannot get in (the registry refuses it); every other hostile character can
    assert d.rpc_error("task.create", {"title": HOSTILE + "\0nul"}).name == "invalid_params"
    t = d.rpc("task.create", {"title": HOSTILE + "nul", "assignee": "nobody", "tenant": "acme"})
    d.cli("block", t["id"], "why not")
    got = wait_for(lambda: [x for x in map(json.loads, out.read_text().splitlines())
                            if x["doc"]["task_id"] == t["id"]] if out.exists() else None,
                   what="the hook to run")[0]
    assert got["doc"]["title"] == HOSTILE + "nul", "the JSON on stdin is exact"
    assert got["argv"] == [HOSTILE + "nul", "blocked"], "one argument, substituted once"
    env = got["env"]
    assert env["KANBAN_EVENT_TITLE"] == HOSTILE + "nul"
    assert (env["KANBAN_EVENT_KIND"], env["KANBAN_EVENT_TASK"], env["KANBAN_EVENT_ASSIGNEE"],
            env["KANBAN_EVENT_TENANT"], env["KANBAN_SINK"]) == ("blocked", t["id"], "nobody", "acme", "hook")
    assert env["KANBAN_EVENT_ID"] == str(got["doc"]["id"]) and env["KANBAN_EVENT_SUMMARY"] == "why not"
    assert "KANBAN_TASK" not in env and "KANBAN_RUN" not in env
    assert not Path("{x}").exists() and not (Path(d.tmp) / "{x}").exists()


def test_daemon_refuses_a_placeholder_inside_sh_c(make_daemon):
    nd = make_daemon(start=False)
    nd.write_config({"sinks": {"hook": {"type": "command", "command": ["sh", "-c", "notify '{title}'"]}}})
    res = subprocess.run([KANBAND, "--config", nd.config_path, "--state-dir", nd.state, "--socket", nd.socket],
                         capture_output=True, text=True, env=nd.env(), timeout=30, cwd=nd.tmp)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert f"{nd.config_path}: sinks.hook.command[2]: placeholder {{title}}" in res.stderr, res.stderr
    assert "$KANBAN_EVENT_TITLE" in res.stderr
    assert not os.path.exists(nd.socket)


def test_human_output_escapes_task_text_and_json_stays_exact(d):
    t = d.rpc("task.create", {"title": HOSTILE, "body": HOSTILE, "assignee": "nobody"})
    d.rpc("task.comment", {"id": t["id"], "body": HOSTILE, "author": HOSTILE})
    d.rpc("task.block", {"ids": [t["id"]], "reason": HOSTILE})
    d.rpc("task.unblock", {"ids": [t["id"]]})
    for args in (["show", t["id"]], ["list"], ["events", "--task", t["id"]], ["plan"], ["notify", "list"]):
        no_raw_controls(d.cli(*args).stdout)
        no_raw_controls(on_tty(d, *args))
    shown = d.cli("show", t["id"]).stdout
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\nforged line\\r\\tx\\x9b31m\\u202edrow" in shown
    assert d.cli_json("show", t["id"])["task"]["title"] == HOSTILE
    assert d.cli_json("show", t["id"])["comments"][0]["body"] == HOSTILE


def test_log_is_exact_when_piped_and_escaped_on_a_terminal(d):
    t = d.cli_json("create", "\x1b[31mred title\x1b[0m", "-a", "argv")
    d.wait_status(t["id"], "done")
    piped = d.cli("log", t["id"]).stdout
    assert "\x1b[31mred title" in piped, "the log is the user's own data: exact when piped"
    tty = on_tty(d, "log", t["id"])
    assert "\x1b" not in tty and "RAW \\x1b[31mred title\\x1b[0m" in tty
    res = d.cli("--json", "log", t["id"])
    assert "\x1b[31mred title" in json.loads(res.stdout)["text"]


# ---- §7: failing well ------------------------------------------------------------------------


def error_json(res: subprocess.CompletedProcess) -> dict:
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    err = json.loads(lines[0])["error"]
    assert set(err) == {"name", "message", "data"}
    return err


def test_json_errors_are_json_objects_on_stderr(d, tmp_path):
    res = d.cli("show", "t_0badcafe", "--json", check=False)
    assert res.returncode == 1
    err = error_json(res)
    assert err["name"] == "not_found" and err["data"]["id"] == "t_0badcafe" and "t_0badcafe" in err["message"]
    t = d.cli_json("create", "finished")
    d.cli("complete", t["id"])
    res = d.cli("--json", "block", t["id"], "too late", check=False)
    err = error_json(res)
    assert res.returncode == 1 and err["name"] == "illegal_transition"
    assert err["data"] == {"task": t["id"], "status": "done", "move": "block"}
    for argv in (["list", "--limit", "lots", "--json"], ["--json", "nosuchverb"], ["--json"],
                 ["--json", "complete", "t_1a2b3c4d", "--metadata", "[1]"]):
        res = d.cli(*argv, check=False, env={"KANBAN_SOCKET": str(tmp_path / "none.sock")})
        assert res.returncode == 2 and error_json(res)["name"] == "usage_error", (argv, res.stderr)
    res = d.cli("--json", "list", check=False, env={"KANBAN_SOCKET": str(tmp_path / "none.sock")})
    assert res.returncode == 1 and error_json(res)["name"] == "not_running"
    res = d.cli("show", "t_0badcafe", check=False)  # without --json: one plain line
    assert res.returncode == 1 and res.stderr.startswith("kanban: not_found: ") and res.stderr.count("\n") == 1


@pytest.mark.parametrize("verb", ["list", "show", "events", "watch", "log", "tail", "status", "plan"])
def test_a_closed_pipe_ends_every_verb_quietly(d, verb):
    t = d.cli_json("create", "piped", "-a", "argv")
    d.wait_status(t["id"], "done")
    args = {"list": ["list"], "show": ["show", t["id"]], "events": ["events"], "watch": ["watch", "--after", "0"],
            "log": ["log", t["id"]], "tail": ["tail", t["id"]], "status": ["status"], "plan": ["plan"]}[verb]
    for extra in ([], ["--json"]):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before the first byte is written
        p = subprocess.Popen([KANBAN, *args, *extra], stdout=w, stderr=subprocess.PIPE, env=d.env(), cwd=d.tmp)
        os.close(w)
        try:
            _, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 141, (args, extra, p.returncode, err)
        assert err == b"", err.decode()


def test_closed_pipe_through_a_shell_pipeline(d):
    for i in range(3):
        d.rpc("task.create", {"title": f"row {i}"})
    res = subprocess.run(["sh", "-c", f"'{KANBAN}' list | head -c 1 >/dev/null; '{KANBAN}' events | true"],
                         capture_output=True, text=True, env=d.env(), cwd=d.tmp, timeout=30)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_block_id_reason_and_in_a_worker_block_reason(d):
    t = d.cli_json("create", "operator blocks")
    res = d.cli("block", t["id"], "waiting for legal")
    assert d.task(t["id"])["block_reason"] == "waiting for legal", res
    w = d.cli_json("create", "worker blocks", "-a", "blocker")
    task = d.wait_status(w["id"], "blocked")
    assert task["block_reason"] == "credentials expired"
    runs = d.rpc("task.runs", {"id": w["id"]})["runs"]
    assert [r["outcome"] for r in runs] == ["blocked"]
    log = d.cli("log", w["id"]).stdout
    assert "rc=2" in log and "--metadata must be a JSON object" in log
