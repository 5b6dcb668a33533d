"""Agents as workers without ceremony: agent profiles, rate-limit patterns, output as heartbeat, the context file.

Real daemon, real worker scripts: a worker that prints a provider's 429 and exits 1 is rate_limited
under a profile with the pattern and crashed without it; a worker that keeps printing outlives
``heartbeat_max_stale`` while a silent one is reclaimed; ``{context_file}`` is the rendered context.
The shipped profiles (examples/agents/) are checked as far as this machine can: valid YAML, added by
``kanban init --agent`` to a config kanband loads, and their patterns against the providers' messages.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from client import agentinit, cli
from daemon import agentprofile
from daemon import config as config_mod
from daemon.board import runs
from tests.harness import KANBAND, REPO, wait_for, write_script

AGENTS_DIR = REPO / "examples" / "agents"

#: Messages the providers (and the agent CLIs around them) print when a rate limit or quota stops them,
#: as reported in the agents' issue trackers and the providers' documentation.
RATE_LIMITED = {
    "anthropic": [
        'Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed '
        'your account\'s rate limit. Please try again later."}}',
        "Claude AI usage limit reached|1753077600",
        "You've hit your limit · resets 7pm (Asia/Shanghai)",
        '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
    ],
    "openai": [
        "exceeded retry limit, last status: 429 Too Many Requests, request id: c4fc59ca",
        "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000.",
        "You exceeded your current quota, please check your plan and billing details.",
        '{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}',
    ],
    "google": [
        '[API Error: got status: 429 Too Many Requests. {"error":{"code":429,"message":"You exceeded your current '
        'quota.","status":"RESOURCE_EXHAUSTED"}}]',
        "Resource has been exhausted (e.g. check quota).",
    ],
    "litellm": ["litellm.RateLimitError: AnthropicException - rate_limit_error"],
    "generic": ["HTTP 429 Too Many Requests: retry later"],
}
#: Which providers each shipped profile must recognise (what the agent talks to by default, and the generic 429).
PROVIDERS = {"claude": ("anthropic", "generic"), "codex": ("openai", "generic"), "gemini": ("google", "generic"),
             "aider": ("litellm", "generic"), "opencode": ("generic",), "goose": ("generic",),
             "hermes": ("generic",)}
#: Ordinary output that must not count as a rate limit.
BENIGN = ["Fixed the 429 handler in api/client.py", "Added rate limiting middleware to the server",
          "All 429 tests passed", "quota.py: refactored the usage limits table", "Too many requests to list"]


def _profile_text(name: str) -> str:
    return (AGENTS_DIR / f"{name}.yaml").read_text()


def _load_profile(name: str) -> dict:
    return yaml.safe_load(_profile_text(name))[name]


# ---- the shipped profiles ----------------------------------------------------------------------------


def test_every_shipped_agent_has_a_profile_and_a_verb():
    files = sorted(p.stem for p in AGENTS_DIR.glob("*.yaml"))
    assert files == sorted(agentinit.AGENTS) == sorted(cli.AGENT_NAMES)
    assert set(PROVIDERS) == set(agentinit.AGENTS)
    for name in agentinit.AGENTS:  # the package ships them (client/agents links to examples/agents)
        assert Path(agentinit.profile_file(name)).read_text() == _profile_text(name)


@pytest.mark.parametrize("name", agentinit.AGENTS)
def test_a_shipped_profile_says_what_is_verified_and_uses_the_context_file(name, tmp_path):
    text = _profile_text(name)
    assert re.search(r"^# Verified here", text, re.M) and re.search(r"^# From .*documentation", text, re.M)
    assert re.search(r"^# needs:", text, re.M)
    assert list(yaml.safe_load(text)) == [name]
    prof = _load_profile(name)
    assert "{context_file}" in prof["command"]
    assert prof["rate_limit_patterns"]
    path = tmp_path / "config.yaml"
    path.write_text("profiles:\n" + "".join("  " + ln + "\n" if ln else "\n" for ln in text.splitlines()))
    cfg = config_mod.load(path)  # the schema, the placeholder rules (none inside the sh -c script), the regexes
    assert cfg["profiles"][name]["command"] == prof["command"]


@pytest.mark.parametrize("name", agentinit.AGENTS)
def test_a_shipped_profile_s_patterns_catch_its_providers_rate_limits_and_nothing_else(name):
    patterns = _load_profile(name)["rate_limit_patterns"]
    for provider in PROVIDERS[name]:
        for msg in RATE_LIMITED[provider]:
            assert runs.rate_limit_match(patterns, f"working...\n{msg}\n"), f"{name} misses {msg!r}"
    for line in BENIGN:
        assert runs.rate_limit_match(patterns, line + "\n") is None, f"{name} takes {line!r} for a rate limit"


# ---- kanban init --agent ----------------------------------------------------------------------------------


def test_init_agent_adds_the_profile_to_a_new_config_and_kanband_loads_it(daemon, tmp_path):
    path = tmp_path / "cfg" / "config.yaml"
    res = daemon.cli("init", "--agent", "claude", "--config", str(path))
    assert f"created {path}: added profile 'claude'" in res.stdout
    assert "run `kanban reload`" in res.stdout  # a daemon answers on the socket
    assert "needs: `claude` on the PATH" in res.stdout and "claude mcp add --scope user" in res.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = config_mod.load(path)
    assert cfg["profiles"]["claude"]["command"] == _load_profile("claude")["command"]
    assert cfg["profiles"]["claude"]["rate_limit_patterns"] == _load_profile("claude")["rate_limit_patterns"]
    chk = subprocess.run([KANBAND, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert chk.returncode == 0 and "1 profile(s): claude" in chk.stdout, chk.stderr


def test_init_agent_keeps_the_user_s_file_and_refuses_to_overwrite(daemon, tmp_path):
    path = tmp_path / "config.yaml"
    original = ("# my kanband config\n"
                "dispatch:\n"
                "  max_in_progress: 3   # keep it small\n"
                "profiles:\n"
                "    mine:              # my own worker\n"
                "        command: [/bin/true]\n"
                "\n"
                "    # a note about the next section\n"
                "sinks:\n"
                "  log: {type: command, command: [/bin/cat]}\n")
    path.write_text(original)
    path.chmod(0o640)
    daemon.cli("init", "--agent", "aider", "--config", str(path))
    daemon.cli("init", "--agent", "codex", "--config", str(path))
    text = path.read_text()
    for line in original.splitlines():  # every line (and comment) of the user's file is still there
        assert line in text.splitlines()
    assert text.index("    aider:") < text.index("    codex:") < text.index("sinks:")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    cfg = config_mod.load(path)
    assert sorted(cfg["profiles"]) == ["aider", "codex", "mine"] and cfg["dispatch"]["max_in_progress"] == 3
    assert cfg["sinks"]["log"]["command"] == ["/bin/cat"]
    before = path.read_text()
    again = daemon.cli("init", "--agent", "codex", "--config", str(path), check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == (f"kanban init: {path} already has a profile 'codex'; not overwriting it (edit it "
                                    "there, or remove it and run this again)")
    assert path.read_text() == before


def test_init_agent_refuses_what_it_cannot_edit_safely(daemon, tmp_path):
    flow = tmp_path / "flow.yaml"
    flow.write_text("profiles: {mine: {command: [/bin/true]}}\n")
    res = daemon.cli("init", "--agent", "goose", "--config", str(flow), check=False)
    assert res.returncode == 1 and "flow style" in res.stderr and len(res.stderr.splitlines()) == 1
    assert flow.read_text() == "profiles: {mine: {command: [/bin/true]}}\n"
    broken = tmp_path / "broken.yaml"
    broken.write_text("profiles: [\n")
    res = daemon.cli("init", "--agent", "goose", "--config", str(broken), check=False)
    assert res.returncode == 1 and "not valid YAML" in res.stderr
    res = daemon.cli("init", "--agent", "nosuch", "--config", str(broken), check=False)
    assert res.returncode == 2 and "nosuch" in res.stderr
    res = daemon.cli("init", "--config", str(broken), check=False)
    assert res.returncode == 2 and "--config goes with --agent" in res.stderr
    assert not [p for p in tmp_path.iterdir() if "kanban-init" in p.name]  # no temp file left behind


def test_init_agent_writes_the_running_daemon_s_config_and_it_reloads(make_daemon):
    d = make_daemon()
    d.cli("init", "--agent", "hermes")  # no --config: the daemon says which file it reads
    assert "hermes:" in Path(d.config_path).read_text()
    reload = d.cli_json("reload")
    assert reload["result"] == "applied", reload
    assert "hermes" in d.rpc("board.names")["profiles"]


@pytest.mark.parametrize("text, expect", [
    ("", "profiles:\n  x:\n    command: [a]\n"),
    ("profiles:\n", "profiles:\n  x:\n    command: [a]\n"),
    ("profiles: {}  # none yet\n", "profiles:\n  x:\n    command: [a]\n"),
    ("a: 1\nprofiles:\n  y:\n    command: [b]\nz: 2",
     "a: 1\nprofiles:\n  y:\n    command: [b]\n\n  x:\n    command: [a]\nz: 2\n"),
])
def test_insert_profile_layouts(text, expect):
    assert agentprofile.insert_profile(text, "x:\n  command: [a]\n") == expect


# ---- rate-limit patterns at a run's end --------------------------------------------------------------------


def test_a_429_exit_is_rate_limited_with_the_pattern_and_crashed_without(make_daemon):
    d = make_daemon(start=False)
    script = write_script(f"{d.tmp}/limited.sh", "#!/bin/sh\necho 'calling the model...'\n"
                                                 "echo '429 Too Many Requests: please retry later' >&2\nexit 1\n")
    silent = write_script(f"{d.tmp}/silent.sh", "#!/bin/sh\nexit 1\n")
    d.cfg["profiles"] = {
        "patterned": {"command": [script], "rate_limit_patterns": ["(?i)\\b429 too many requests\\b"]},
        "plain": {"command": [script]},
        "then_silent": {"command": [silent], "rate_limit_patterns": ["(?i)\\b429 too many requests\\b"]},
    }
    d.cfg["dispatch"] = {**d.cfg["dispatch"], "rate_limit_cooldown": "1h", "failure_limit": 5}
    d.write_config(d.cfg)
    d.start()
    a = d.cli_json("create", "hits the limit", "-a", "patterned")
    b = d.cli_json("create", "hits it too, unprepared", "-a", "plain")

    def outcome(tid):
        rs = d.rpc("task.runs", {"id": tid})["runs"]
        return rs and rs[-1]["state"] == "ended" and rs[-1]

    ra = wait_for(lambda: outcome(a["id"]), what="the patterned run to end")
    rb = wait_for(lambda: outcome(b["id"]), what="the plain run to end")
    assert (ra["outcome"], ra["exit_code"]) == ("rate_limited", 1)
    assert "rate_limit_patterns" in ra["error"] and "429 Too Many Requests" in ra["error"]
    assert rb["outcome"] == "crashed"
    assert d.task(a["id"])["consecutive_failures"] == 0 and d.task(b["id"])["consecutive_failures"] == 1
    cooled = {p["name"]: p for p in d.rpc("board.assignees")["assignees"]}["patterned"]
    assert cooled["cooldown_until"] and "rate-limit message" in cooled["cooldown_reason"]
    ev = d.rpc("events.since", {"task": a["id"], "kinds": ["rate_limited"]})["events"]
    assert ev and ev[0]["payload"]["matched"] == "(?i)\\b429 too many requests\\b"

    # the same task, later, by a worker that prints nothing: the 429 of the earlier run is not this run's
    d.rpc("task.edit", {"id": a["id"], "assignee": "then_silent"})
    d.cli("retry", a["id"])
    rc = wait_for(lambda: (r := outcome(a["id"])) and r["profile"] == "then_silent" and r, what="the second run")
    assert rc["outcome"] == "crashed"
    assert "429" in Path(d.state, "logs", f"{a['id']}.log").read_text()  # still in the task's log


def test_a_bad_pattern_is_refused_naming_the_file_and_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("profiles:\n  w:\n    command: [/bin/true]\n    rate_limit_patterns: ['ok', '(unclosed']\n")
    with pytest.raises(config_mod.ConfigError, match=re.escape(f"{path}: profiles.w.rate_limit_patterns[1]: "
                                                                "not a valid regular expression")):
        config_mod.load(path)
    res = subprocess.run([KANBAND, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and "profiles.w.rate_limit_patterns[1]" in res.stderr
    assert len(res.stderr.splitlines()) == 1


# ---- output is a heartbeat --------------------------------------------------------------------------------

LIVENESS = {"dispatch": {"claim_ttl": "1s", "heartbeat_max_stale": "2s", "tick": "0.2s"}}


def _liveness_daemon(make_daemon, profiles: dict):
    d = make_daemon(LIVENESS, start=False)
    d.cfg["profiles"] = profiles(d)
    d.write_config(d.cfg)
    d.start()
    return d


def _talker(d, seconds: float, every: float = 1.0) -> str:
    """A worker that prints a line every ``every`` s for ``seconds`` s (3 x heartbeat_max_stale), then completes."""
    n = int(seconds / every)
    return write_script(f"{d.tmp}/talker.sh", f"#!/bin/sh\ni=0\nwhile [ $i -lt {n} ]; do echo \"step $i\"; "
                                              f"i=$((i+1)); sleep {every}; done\n"
                                              "kanban complete --summary 'talked all along'\n")


def test_a_worker_that_prints_is_not_reclaimed_and_a_silent_one_is(make_daemon):
    d = _liveness_daemon(make_daemon, lambda d: {
        "talker": {"command": [_talker(d, 6.0)]},
        "mute": {"command": [write_script(f"{d.tmp}/mute.sh", "#!/bin/sh\nsleep 6\nkanban complete\n")]},
    })
    started = time.monotonic()
    talk = d.cli_json("create", "keeps printing", "-a", "talker", "--max-retries", "1")
    mute = d.cli_json("create", "prints nothing", "-a", "mute", "--max-retries", "1")
    done = d.wait_status(talk["id"], "done", timeout=30)
    assert done["summary"] == "talked all along" and time.monotonic() - started >= 6.0
    (run,) = d.rpc("task.runs", {"id": talk["id"]})["runs"]
    assert run["outcome"] == "completed"
    mruns = wait_for(lambda: (rs := d.rpc("task.runs", {"id": mute["id"]})["runs"]) and rs[0]["state"] == "ended"
                     and rs, what="the silent run to be reclaimed")
    assert mruns[0]["outcome"] == "stale"
    beats = [e for e in d.rpc("events.since", {"task": talk["id"], "kinds": ["heartbeat"]})["events"]]
    assert beats and all(e["payload"]["source"] == "output" for e in beats)
    assert not d.rpc("events.since", {"task": mute["id"], "kinds": ["heartbeat"]})["events"]


def test_output_heartbeats_are_coalesced_to_one_per_quarter_claim(make_daemon):
    d = _liveness_daemon(make_daemon, lambda d: {"chatty": {"command": [write_script(
        f"{d.tmp}/chatty.sh", "#!/bin/sh\ni=0\nwhile [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.01; "
                              "done\nkanban complete\n")]}})
    t = d.cli_json("create", "very chatty", "-a", "chatty")
    d.wait_status(t["id"], "done", timeout=30)
    # the run ends a moment after the task is done: once its worker has exited
    (run,) = wait_for(lambda: (rs := d.rpc("task.runs", {"id": t["id"]})["runs"]) and rs[0]["state"] == "ended"
                      and rs, what="the run to end")
    beats = [e["at"] for e in d.rpc("events.since", {"task": t["id"], "kinds": ["heartbeat"]})["events"]]
    assert len(beats) >= 2  # it did count as alive, more than once
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert min(gaps) >= 0.25 * 0.9, gaps  # claim_ttl/4 = 0.25 s apart at least (a little clock slack)
    assert len(beats) <= (run["ended_at"] - run["started_at"]) / 0.25 + 1


def test_heartbeat_from_output_off_leaves_a_printing_worker_to_be_reclaimed(make_daemon):
    d = _liveness_daemon(make_daemon, lambda d: {"talker": {"command": [_talker(d, 6.0)],
                                                           "heartbeat_from_output": False}})
    t = d.cli_json("create", "prints, but it does not count", "-a", "talker", "--max-retries", "1")
    rs = wait_for(lambda: (rs := d.rpc("task.runs", {"id": t["id"]})["runs"]) and rs[0]["state"] == "ended" and rs,
                  timeout=20, what="the run to be reclaimed")
    assert rs[0]["outcome"] == "stale"


# ---- {context_file} ---------------------------------------------------------------------------------------


def test_the_context_file_is_the_rendered_context_and_goes_with_the_run(make_daemon):
    d = make_daemon(start=False)
    copy = os.path.join(d.tmp, "copy")
    reader = write_script(f"{d.tmp}/reader.sh", "#!/bin/sh\n"
                                                f"cp \"$1\" {copy}.md\n"
                                                f"stat -c %a \"$1\" > {copy}.mode\n"
                                                f"printf '%s' \"$KANBAN_CONTEXT_FILE\" > {copy}.env\n"
                                                "kanban complete --summary read\n")
    d.cfg["profiles"] = {"reader": {"command": [reader, "{context_file}"]},
                         "ok": {"command": [write_script(f"{d.tmp}/ok.sh", "#!/bin/sh\nkanban complete "
                                                         "--summary first --result 'result of the first'\n")]}}
    d.write_config(d.cfg)
    d.start()
    first = d.cli_json("create", "first", "-a", "ok")
    second = d.cli_json("create", "second", "-a", "reader", "--parent", first["id"], "-b", "read your parent")
    d.wait_status(second["id"], "done", timeout=20)
    text = Path(f"{copy}.md").read_text()
    (run,) = d.rpc("task.runs", {"id": second["id"]})["runs"]
    assert text.startswith(f"# Task {second['id']}: second\n\n- status: running")  # as kanban context printed it then
    assert f"run: {run['id']} (attempt 1)" in text and "read your parent" in text
    assert f"### {first['id']}: first (done)" in text and "result of the first" in text
    assert Path(f"{copy}.mode").read_text().strip() == "600"
    path = Path(f"{copy}.env").read_text()
    assert path == os.path.join(d.state, "runs", f"{run['id']}.context.md")
    wait_for(lambda: not os.path.exists(path), what="the context file to go with the run's files")
