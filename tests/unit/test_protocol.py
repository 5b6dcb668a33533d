"""The protocol registry: one declaration drives the server's dispatch table and the client's parser."""

from __future__ import annotations

import pytest

from client import cli, protocol
from client.protocol import ERROR_DOCS, ERRORS, METHODS, RPCError, check_params
from daemon.handlers import HANDLERS


def test_registry_and_handlers_are_the_same_set():
    assert set(METHODS) == set(HANDLERS)
    for name, m in METHODS.items():
        assert m.name == name
        assert callable(HANDLERS[name])


def test_every_method_is_well_declared():
    verbs_seen: set[str] = set()
    for m in METHODS.values():
        assert "." in m.name and m.name == m.name.lower(), m.name
        assert m.doc and "\n" not in m.doc, m.name
        assert set(m.errors) <= set(ERRORS), m.name
        names = [p.name for p in m.params]
        assert len(names) == len(set(names)), m.name
        for p in m.params:
            assert p.type in protocol.TYPES, (m.name, p.name)
            assert p.doc, (m.name, p.name)
            assert p.cli in ("pos", "pos*", "pos+", "flag", ""), (m.name, p.name)
        if m.internal:
            assert not m.verb, m.name
        for v in (m.verb, *m.aliases):
            if v:
                assert v not in verbs_seen, v
                verbs_seen.add(v)


def test_every_error_name_has_a_code_and_doc():
    assert set(ERRORS) == set(ERROR_DOCS)
    assert all(ERROR_DOCS[n].strip() for n in ERRORS)
    assert len(set(ERRORS.values())) == len(ERRORS), "codes must be unique"
    assert {ERRORS[n] for n in ("parse_error", "invalid_request", "method_not_found", "invalid_params")} == \
        {-32700, -32600, -32601, -32602}
    for name in ("not_found", "illegal_transition", "conflict", "stale_token"):
        assert name in ERRORS and not -32768 <= ERRORS[name] <= -32100  # outside the reserved range
    assert protocol.ERROR_NAMES == {c: n for n, c in ERRORS.items()}


def test_rpc_error_wire_shape():
    err = RPCError("not_found", "no task t_1", id="t_1")
    assert err.to_wire() == {"code": ERRORS["not_found"], "message": "no task t_1",
                             "data": {"name": "not_found", "id": "t_1"}}
    with pytest.raises(ValueError):
        RPCError("no_such_error", "x")


def _invalid(method: str, params) -> RPCError:
    with pytest.raises(RPCError) as ei:
        check_params(METHODS[method], params)
    assert ei.value.name == "invalid_params" and ei.value.code == -32602
    return ei.value


@pytest.mark.parametrize("method,params,field", [
    ("task.create", {}, "title"),
    ("task.create", {"title": None}, "title"),
    ("task.create", {"title": 5}, "title"),
    ("task.create", {"title": "x", "priority": "high"}, "priority"),
    ("task.create", {"title": "x", "priority": True}, "priority"),
    ("task.create", {"title": "x", "priority": 1.5}, "priority"),
    ("task.create", {"title": "x", "parents": "t_1"}, "parents"),
    ("task.create", {"title": "x", "parents": [1, 2]}, "parents"),
    ("task.create", {"title": "x", "triage": "yes"}, "triage"),
    ("task.create", {"title": "x", "colour": "red"}, "colour"),
    ("task.list", {"sort": "random"}, "sort"),
    ("task.list", {"limit": "10"}, "limit"),
    ("task.complete", {"ids": ["t_1"], "metadata": "{}"}, "metadata"),
    ("task.link", {"parent": "t_1"}, "child"),
    ("run.started", {"run": "r", "pid": 1, "start_time": "now"}, "start_time"),
])
def test_check_params_names_the_field(method, params, field):
    err = _invalid(method, params)
    assert err.data["field"] == field
    assert field in err.message and method in err.message


def test_check_params_accepts_and_normalises():
    assert check_params(METHODS["daemon.status"], None) == {}
    assert check_params(METHODS["task.create"], {"title": "x", "priority": 3, "body": None}) == \
        {"title": "x", "priority": 3}
    # nullable params keep an explicit null (unassign)
    assert check_params(METHODS["task.assign"], {"id": "t_1", "assignee": None}) == {"id": "t_1", "assignee": None}
    # float accepts an int
    assert check_params(METHODS["run.started"], {"run": "r", "pid": 1, "start_time": 5})["start_time"] == 5
    err = _invalid("daemon.status", ["positional"])
    assert "object" in err.message


def test_cli_parser_is_built_from_the_registry():
    verbs = cli.verbs()
    public = {m.verb for m in METHODS.values() if m.verb and not m.internal}
    assert public <= set(verbs)
    for needed in ("init", "create", "list", "ls", "show", "assign", "link", "unlink", "comment", "complete",
                   "block", "unblock", "archive", "promote", "edit", "stats", "tail", "status", "events", "runs",
                   "log", "plan", "dispatch"):
        assert needed in verbs, needed
    assert not any(METHODS[m.name].internal for m, _ in verbs.values())
    parser = cli.build_parser()
    ns = parser.parse_args(["create", "hello", "--parent", "t_1", "--parent", "t_2", "-p", "3"])
    assert cli.collect(ns) == {"title": "hello", "parents": ["t_1", "t_2"], "priority": 3}
    ns = parser.parse_args(["list", "--status", "ready,todo", "-n", "5"])
    assert cli.collect(ns) == {"status": ["ready", "todo"], "limit": 5}
    ns = parser.parse_args(["block", "t_1", "t_2", "--reason", "r"])
    assert cli.collect(ns) == {"ids": ["t_1", "t_2"], "reason": "r"}
    with pytest.raises(cli.UsageError):
        parser.parse_args(["list", "--sort", "random"])


def test_markdown_mentions_every_method_and_error():
    md = protocol.render_markdown()
    for name in METHODS:
        assert f"`{name}`" in md
    for name in ERRORS:
        assert f"`{name}`" in md


@pytest.mark.parametrize("argv", [
    ["create", "hello", "--parent", "t_1", "--parent", "t_2", "-p", "3", "-a", "bob", "--triage"],
    ["create", "t", "--idempotency-key", "k", "--max-retries", "2", "--workspace", "dir:/x", "--json"],
    ["list", "--status", "ready,todo", "-s", "done", "-n", "5", "--sort", "created", "--archived"],
    ["ls", "-a", "bob", "--tenant", "acme"],
    ["show", "t_1"],
    ["assign", "t_1", "bob"],
    ["assign", "t_1", "--none"],
    ["link", "t_1", "t_2"],
    ["comment", "t_1", "some words", "--author", "me"],
    ["complete", "t_1", "t_2", "-m", "done it", "--metadata", '{"a": 1}'],
    ["block", "t_1", "t_2", "--reason", "r"],
    ["unblock", "t_1", "t_2", "t_3"],
    ["archive", "t_1"],
    ["edit", "t_1", "--title", "x", "-b", "body", "-p", "-2"],
    ["events", "7", "--task", "t_1", "-n", "3"],
    ["log", "t_1", "--tail", "100"],
    ["dispatch", "--dry-run"],
    ["--socket", "/tmp/s", "stats"],
    ["tail", "t_1"],
    ["reopen", "t_1", "t_2", "-r", "red build", "--cascade"],
    ["schedule", "t_1", "--in", "45m"],
    ["create", "later", "--at", "2026-12-01T02:00", "-a", "bob"],
    ["wait", "t_1", "t_2", "--timeout", "10m"],
    ["assignees"],
    ["context", "t_1", "--json"],
])
def test_fast_parser_agrees_with_argparse(argv, monkeypatch):
    """The hot-path parser and the argparse fallback are built from the same registry and must agree."""
    from client import fastargs
    for var in ("KANBAN_TASK", "KANBAN_RUN"):
        monkeypatch.delenv(var, raising=False)
    fast = fastargs.parse(argv, cli.verbs(), cli.FLAG_NAMES, cli.COMMA_LISTS)
    slow = cli.build_parser().parse_args(argv)
    assert fast is not None, "the fast parser should handle this command line itself"
    assert cli.collect(fast) == cli.collect(slow)
    assert (fast._method, bool(fast.json), fast.socket) == (slow._method, bool(getattr(slow, "json", False)),
                                                            slow.socket)
