"""Text from tasks is data, never code: config refusals, hook environments, terminal escaping,
verb guards and the CLI's reading of ``block ID REASON``."""

from __future__ import annotations

import re

import pytest
import yaml

from client import cli, fastargs, formats
from client.protocol import RPCError
from daemon import config, sinks, spawner
from daemon.board import transitions


def write(tmp_path, cfg) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# ---- config: placeholders inside scripts -----------------------------------------------------


@pytest.mark.parametrize("command", [
    ["sh", "-c", "notify '{title}'"],
    ["/bin/bash", "-ec", "notify {summary}"],
    ["env", "LANG=C", "dash", "-c", "x {task_id}"],
    ["timeout", "5", "zsh", "--no-rcs", "-c", "x {kind}"],
    ["sh", "-c", "--", "x {title}"],
    ["python3", "-c", "print('{title}')"],
    ["perl", "-ne", "print '{title}'"],
    ["node", "--eval={title}"],
])
def test_sink_placeholder_inside_a_script_is_refused_naming_file_and_key(tmp_path, command):
    path = write(tmp_path, {"sinks": {"hook": {"type": "command", "command": command}}})
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: sinks.hook.command[")
    assert "KANBAN_EVENT_TITLE" in msg and "docs/notifications.md" in msg
    assert re.search(r"placeholder \{\w+\} inside a script run by \w+", msg), msg


@pytest.mark.parametrize("command", [
    ["sh", "-c", 'notify "$1" "$2"', "sh", "{title}", "{summary}"],   # $1, $2: data
    ["sh", "-c", 'notify "$KANBAN_EVENT_TITLE"'],
    ["/usr/local/bin/notify", "{title}", "--kind={kind}"],
    ["sh", "/usr/local/bin/notify.sh", "{title}"],                      # a script file, then its arguments
    ["python3", "hook.py", "-c", "{title}"],                            # -c belongs to hook.py
])
def test_placeholders_as_data_are_accepted(tmp_path, command):
    cfg = config.load(write(tmp_path, {"sinks": {"hook": {"type": "command", "command": command}}}))
    assert cfg["sinks"]["hook"]["command"] == command


def test_profile_placeholder_inside_a_script_is_refused(tmp_path):
    path = write(tmp_path, {"profiles": {"w": {"command": ["bash", "-c", "agent --title '{title}'"]}}})
    with pytest.raises(config.ConfigError, match=r"profiles\.w\.command\[2\]: placeholder \{title\}") as err:
        config.load(path)
    assert "docs/workers.md" in str(err.value) and str(path) in str(err.value)
    ok = write(tmp_path, {"profiles": {"w": {"command": ["bash", "-c", 'agent --title "$1"', "bash", "{title}"]}}})
    assert config.load(ok)["profiles"]["w"]["command"][-1] == "{title}"


def test_placeholder_lists_match_the_code_that_substitutes_them():
    assert config.PROFILE_PLACEHOLDERS == spawner.PLACEHOLDERS
    assert set(config.SINK_PLACEHOLDERS) == set(sinks.PLACEHOLDER.pattern[3:-3].split("|"))


# ---- command hooks ---------------------------------------------------------------------------


def test_hook_env_carries_the_event_and_never_a_worker_identity():
    doc = {"id": 7, "kind": "completed", "task_id": "t_1", "run_id": "r_1", "title": "a\0b $(x)", "assignee": "bob",
           "tenant": None, "summary": "ok", "at": 1.5}
    env = sinks.hook_env({"PATH": "/bin", "KANBAN_TASK": "t_other", "KANBAN_RUN": "r_other"}, "hook", doc)
    assert "KANBAN_TASK" not in env and "KANBAN_RUN" not in env
    assert env["KANBAN_EVENT_TITLE"] == "a\ufffdb $(x)" and env["KANBAN_EVENT_ID"] == "7"
    assert env["KANBAN_EVENT_RUN"] == "r_1" and env["KANBAN_EVENT_ASSIGNEE"] == "bob"
    assert env["KANBAN_EVENT_TENANT"] == "" and env["KANBAN_SINK"] == "hook" and env["KANBAN_EVENT_AT"] == "1.5"


def test_sink_expand_is_one_pass():
    doc = {"id": 1, "kind": "blocked", "task_id": "t_1", "title": "{kind} {summary}", "summary": "s"}
    assert sinks.expand(["{title}", "{kind}:{task_id}"], doc) == ["{kind} {summary}", "blocked:t_1"]


# ---- terminal output -------------------------------------------------------------------------

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\nforged line\r\tx\x9b31m\u202edrow"


def test_escape_shows_every_control_character():
    out = formats.escape(HOSTILE)
    assert out.isprintable() and "\\x1b" in out and "\\n" in out and "\\x9b" in out and "\\u202e" in out
    multi = formats.escape(HOSTILE, multiline=True)
    assert "\n" in multi and "\t" in multi and "\x1b" not in multi and "\r" not in multi
    assert formats.escape("plain título ✓") == "plain título ✓"


def test_every_human_formatter_gets_escaped_text():
    task = {"id": "t_12345678", "status": "ready", "title": HOSTILE, "assignee": HOSTILE, "priority": 0,
            "tenant": HOSTILE, "created_by": HOSTILE, "summary": HOSTILE, "result": HOSTILE,
            "block_reason": HOSTILE, "workspace": {"kind": "scratch", "path": None}, "created_at": 0,
            "updated_at": 0, "consecutive_failures": 0, "body": HOSTILE}
    show = {"task": task, "parents": [{"id": "t_1", "status": "done", "title": HOSTILE}], "children": [],
            "runs": [{"id": "r_1", "outcome": "crashed", "state": "ended", "exit_code": 1, "duration": 1.0,
                      "summary": HOSTILE}],
            "comments": [{"created_at": 0, "author": HOSTILE, "body": HOSTILE}],
            "events": [{"id": 1, "at": 0, "kind": "created"}]}
    outputs = [formats.fmt_show(formats.scrub(show), False),
               formats.fmt_list(formats.scrub({"tasks": [task], "total": 1}), False),
               formats.fmt_event(formats.scrub({"id": 1, "at": 0, "task_id": "t_1", "kind": "blocked",
                                                "payload": {"reason": HOSTILE}})),
               formats.fmt_default(formats.scrub(task), False)]
    for out in outputs:
        assert "\x1b" not in out and "\r" not in out and "\x9b" not in out and "\u202e" not in out
        assert "forged line" not in [line.strip() for line in out.splitlines()]


def test_log_is_exact_when_piped_and_escaped_on_a_terminal():
    r = {"exists": True, "text": "progress\x1b[1A\rdone\n", "path": "/x"}
    assert formats.fmt_log(r, tty=False) == "progress\x1b[1A\rdone"
    assert formats.fmt_log(r, tty=True) == "progress\\x1b[1A\\rdone"


# ---- verb guards -----------------------------------------------------------------------------


def test_verb_guards_refuse_with_a_named_error():
    with pytest.raises(RPCError) as err:
        transitions.check("t_12345678", "done", "assign")
    assert err.value.name == "illegal_transition"
    assert err.value.data == {"task": "t_12345678", "status": "done", "move": "assign", "guard": "open"}
    assert "task t_12345678 is done; cannot assign it" in err.value.message
    with pytest.raises(RPCError, match="cannot link it as a child"):
        transitions.check("t_12345678", "archived", "link", "child")
    transitions.check("t_12345678", "archived", "comment")
    transitions.check("t_12345678", "done", "link", "parent")
    for g in transitions.VERB_GUARDS:
        assert g.guard in transitions.GUARD_STATUSES and g.guard in transitions.GUARDS
        assert f"| `{g.verb}` | {g.subject} |" in transitions.render_markdown()


# ---- the CLI reads `block ID REASON` -----------------------------------------------------------


def parse(argv):
    ns = fastargs.parse(argv, cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS)
    slow = cli.build_parser().parse_args(argv)
    return cli.collect(ns), cli.collect(slow)


def test_block_takes_a_trailing_reason(monkeypatch):
    monkeypatch.delenv("KANBAN_TASK", raising=False)
    monkeypatch.delenv("KANBAN_RUN", raising=False)
    fast, slow = parse(["block", "t_1a2b3c4d", "needs a human"])
    assert fast == slow == {"ids": ["t_1a2b3c4d"], "reason": "needs a human"}
    fast, slow = parse(["block", "t_1a2b3c4d", "t_5e6f7a8b", "-r", "x"])
    assert fast == slow == {"ids": ["t_1a2b3c4d", "t_5e6f7a8b"], "reason": "x"}
    monkeypatch.setenv("KANBAN_TASK", "t_0000beef")
    monkeypatch.setenv("KANBAN_RUN", "r_000000000001")
    fast, slow = parse(["block", "credentials expired"])
    assert fast == slow == {"ids": ["t_0000beef"], "reason": "credentials expired", "run": "r_000000000001"}
    assert cli.is_task_id("t_1a2b3c4d") and not cli.is_task_id("t_1A2B3C4D") and not cli.is_task_id("t_123")
