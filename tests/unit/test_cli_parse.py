"""The fast parser and the argparse parser accept the same command lines the same way."""

from __future__ import annotations

import pytest

from client import cli, fastargs

LINES = [
    ["create", "hello world"],
    ["--json", "create", "t", "-a", "bob", "--priority", "3", "--parent", "t_1", "--parent", "t_2", "--triage"],
    ["create", "t", "--body=long text", "--max-runtime", "30m", "--workspace", "dir:/tmp/x", "--json"],
    ["create", "t", "--notify", "file", "--idempotency-key", "k1", "--max-retries", "4", "--tenant", "acme"],
    ["list", "--status", "ready,todo", "-a", "x", "--limit", "5", "--sort", "created"],
    ["ls", "--archived"],
    ["show", "t_12345678"],
    ["assign", "t_1", "alice"],
    ["assign", "t_1", "--none"],
    ["link", "t_1", "t_2"],
    ["comment", "t_1", "looks good", "--author", "me"],
    ["complete", "t_1", "t_2", "--summary", "done", "--result", "42"],
    ["complete", "t_1", "--metadata", '{"a": 1}'],
    ["block", "t_1", "t_2", "--reason", "waiting"],
    ["unblock", "t_1", "t_2", "t_3"],
    ["archive", "t_1"],
    ["edit", "t_1", "--title", "new", "-p", "9"],
    ["heartbeat", "--note", "half"],
    ["runs", "t_1"],
    ["log", "t_1", "--tail", "400"],
    ["events", "10", "--task", "t_1", "-n", "5"],
    ["watch", "--kinds", "completed,blocked", "--assignee", "a"],
    ["tail", "t_1"],
    ["dispatch", "--dry-run"],
    ["plan"],
    ["stats"],
    ["status", "--json"],
    ["--socket", "/tmp/s.sock", "show", "t_1"],
    ["notify", "subscribe", "t_1", "--sink", "file", "--kinds", "completed"],
    ["notify", "list"],
    ["notify", "unsubscribe", "s_1", "s_2"],
    ["notify", "resume", "hook"],
    ["create", "--", "-starts-with-dash"],
    ["attach", "t_1", "a.txt", "b.bin"],
    ["attach", "t_1", "a.txt", "--name", "spec.md", "--json"],
    ["attachments", "t_1"],
    ["detach", "t_1", "spec (2).md"],
    ["gc", "--dry-run", "--older-than", "0s"],
    ["list", "--since", "1h", "--sort", "updated"],
    ["events", "--since", "2025-01-31", "--kind", "completed,exited", "--kinds", "claimed"],
    ["edit", "t_1", "-a", "alice", "--workspace", "worktree", "--max-runtime", "30m", "--max-retries", "3"],
    ["log", "t_1", "--lines", "20", "--run", "r_1"],
    ["log", "t_1", "-n", "5"],
    ["watch", "--kind", "completed"],
]


@pytest.mark.parametrize("argv", LINES, ids=[" ".join(a) for a in LINES])
def test_fast_parser_matches_argparse(argv, monkeypatch):
    monkeypatch.delenv("KANBAN_TASK", raising=False)
    monkeypatch.delenv("KANBAN_RUN", raising=False)
    fast = fastargs.parse(argv, cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS, cli.FLAG_ALIASES)
    assert fast is not None, "the fast path should handle this line"
    slow = cli.build_parser().parse_args(argv)
    assert fast._method == slow._method
    assert bool(fast.json) == bool(getattr(slow, "json", False))
    assert fast.socket == slow.socket
    assert cli.collect(fast) == cli.collect(slow)


@pytest.mark.parametrize("argv", [["--help"], ["create", "--help"], ["create"], ["show"], ["list", "--bogus"],
                                  ["list", "--limit", "x"], ["nosuchverb"], ["list", "--sort", "sideways"],
                                  ["show", "a", "b"], [], ["log", "t_1", "--offset", "5"],
                                  ["log", "t_1", "--rotation", "x"]])
def test_fast_parser_defers_what_it_does_not_understand(argv):
    assert fastargs.parse(argv, cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS) is None


def test_worker_env_fills_ids_and_run(monkeypatch):
    monkeypatch.setenv("KANBAN_TASK", "t_env")
    monkeypatch.setenv("KANBAN_RUN", "r_env")
    ns = fastargs.parse(["complete", "--summary", "x"], cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS)
    assert cli.collect(ns) == {"ids": ["t_env"], "summary": "x", "run": "r_env"}


def test_kind_is_an_alias_of_kinds_in_both_parsers():
    argv = ["events", "--kind", "a,b", "--kinds", "c"]
    fast = fastargs.parse(argv, cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS, cli.FLAG_ALIASES)
    assert cli.collect(fast)["kinds"] == ["a", "b", "c"]
    assert cli.collect(cli.build_parser().parse_args(argv))["kinds"] == ["a", "b", "c"]


@pytest.mark.parametrize("argv,rest,found", [
    (["list", "-q", "--all", "-s", "ready"], ["list", "-s", "ready"], {"quiet", "all"}),
    (["--json", "log", "t_1", "-f", "--lines", "5"], ["--json", "log", "t_1", "--lines", "5"], {"follow"}),
    (["show", "t_1", "--no-pager"], ["show", "t_1"], {"no_pager"}),
    (["create", "--", "-q"], ["create", "--", "-q"], set()),
    (["list", "--", "-q"], ["list", "--", "-q"], set()),
    (["list", "-q", "--help"], ["list", "-q", "--help"], set()),
])
def test_cli_only_switches_are_taken_out_before_parsing(argv, rest, found):
    assert cli.strip_cli_options(argv, cli.pick_verb(argv)) == (rest, found)
