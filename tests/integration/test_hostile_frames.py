"""No frame can take a role down: hostile frames against a real kanband.

Each input here once killed the dispatcher or got ``internal_error`` with a logged
traceback. One daemon serves the module; after every test an autouse check proves it
survived (same dispatcher pid, nothing crashed in the log), and every reply is parsed
with the strict parser (:func:`client.protocol.loads`: no NaN, no Infinity).
"""

from __future__ import annotations

import json
import socket

import pytest

from client.protocol import ERRORS, MAX_DEPTH, loads
from tests.harness import Daemon

BAD_EVENTS = ("rpc.handler_crashed", "rpc.db_error", "rpc.encode_failed", "role.died", "role.hung",
              "board.commit_failed", "dispatch.pass_failed")


@pytest.fixture(scope="module")
def d():
    dm = Daemon()
    try:
        dm.start()
        dm.dispatcher_pid = dm.rpc("daemon.status")["dispatcher_pid"]
        dm.task_id = dm.rpc("task.create", {"title": "target"})["id"]
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


@pytest.fixture(autouse=True)
def survives(d):
    yield
    st = d.rpc("daemon.status")
    assert st["dispatcher_pid"] == d.dispatcher_pid, "the dispatcher was restarted"
    assert d.proc.poll() is None
    assert not [e for e in d.log_events() if e.get("event") in BAD_EVENTS]


def exchange(d: Daemon, data: bytes, expect: int = 1) -> list[dict]:
    """Send raw bytes on a fresh connection; return ``expect`` replies, each parsed strictly."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.socket)
    buf = b""
    try:
        s.sendall(data)
        while buf.count(b"\n") < expect:
            chunk = s.recv(65536)
            assert chunk, f"connection closed after {buf!r}"
            buf += chunk
    finally:
        s.close()
    out = []
    for line in buf.splitlines():
        msg = loads(line)  # raises on NaN/Infinity, deep nesting, bad UTF-8
        assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
        assert ("result" in msg) != ("error" in msg), msg
        out.append(msg)
    return out


def error(d: Daemon, data: bytes, name: str) -> dict:
    (reply,) = exchange(d, data)
    assert "error" in reply, reply
    assert reply["error"]["code"] == ERRORS[name] and reply["error"]["data"]["name"] == name, reply
    return reply


def req(method: str, params: dict | None = None, rid: object = 1) -> bytes:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode() + b"\n"


# ---- depth -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1000, 20_000, MAX_DEPTH + 1])
@pytest.mark.parametrize("open_,close", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deep_nesting_is_a_parse_error(d, depth, open_, close):
    reply = error(d, open_ * depth + b"1" + close * depth + b"\n", "parse_error")
    assert reply["id"] is None and f"deeper than {MAX_DEPTH}" in reply["error"]["message"]


def test_deep_params_inside_a_request_are_refused(d):
    deep = b'{"jsonrpc":"2.0","id":7,"method":"task.create","params":{"title":"x","metadata":' + \
        b"[" * 1000 + b"]" * 1000 + b"}}\n"
    error(d, deep, "parse_error")


def test_nesting_at_the_limit_and_brackets_in_strings_are_fine(d):
    # a frame at exactly MAX_DEPTH: the request object (1), params (2), metadata (3) ...
    meta = "[" * 10 + "]" * 10
    frame = (f'{{"jsonrpc":"2.0","id":1,"method":"task.complete","params":{{"ids":["t_00000000"],'
             f'"run":"r_000000000000","metadata":{{"k":{meta}}}}}}}\n').encode()
    error(d, frame, "not_found")  # parsed and validated: only the id is unknown
    title = "[" * 5000 + "{" * 5000
    (reply,) = exchange(d, req("task.create", {"title": title[:1000]}))
    assert reply["result"]["title"] == title[:1000]


# ---- non-standard numbers -------------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_nan_and_infinity_are_refused_not_echoed(d, literal):
    reply = error(d, b'{"jsonrpc":"2.0","id":' + literal + b',"method":"daemon.status"}\n', "parse_error")
    assert reply["id"] is None
    error(d, b'{"jsonrpc":"2.0","id":1,"method":"task.create","params":{"title":"x","priority":' + literal +
          b"}}\n", "parse_error")


# ---- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", [1 << 63, -(1 << 63) - 1, 10 ** 30, "\ud800", "x" * 300, "a\x00b"])
def test_unechoable_request_ids_are_invalid_requests(d, rid):
    reply = error(d, req("daemon.status", rid=rid), "invalid_request")
    assert reply["id"] is None and reply["error"]["data"]["field"] == "id"


def test_ids_within_bounds_are_echoed(d):
    for rid in ((1 << 63) - 1, -(1 << 63), 2.5, "é✓", None):
        (reply,) = exchange(d, req("daemon.status", rid=rid))
        assert reply["id"] == rid and "result" in reply


@pytest.mark.parametrize("method", ["\ud800", "x" * 200, "task.show\x00"])
def test_bad_method_names_are_invalid_requests(d, method):
    reply = error(d, req(method), "invalid_request")
    assert reply["error"]["data"]["field"] == "method"


# ---- text ------------------------------------------------------------------------------------


LONE = "\ud800"


def bad_text_cases(task_id: str) -> list[tuple[str, dict, str]]:
    return [
        ("task.create", {"title": LONE}, "title"),
        ("task.create", {"title": "ok", "body": "x" + LONE}, "body"),
        ("task.create", {"title": "ok", "assignee": "\udfff"}, "assignee"),
        ("task.create", {"title": "ok", "parents": ["t_1", LONE]}, "parents"),
        ("task.create", {"title": "ok", "notify": [LONE]}, "notify"),
        ("task.create", {"title": "a\x00b"}, "title"),
        ("task.create", {"title": "x" * 1025}, "title"),
        ("task.create", {"title": "ok", "body": "x" * (256 * 1024 + 1)}, "body"),
        ("task.create", {"title": "ok", LONE: 1}, ascii(LONE)),  # named, in ASCII
        ("task.show", {"id": LONE}, "id"),
        ("task.comment", {"id": task_id, "body": LONE}, "body"),
        ("task.edit", {"id": task_id, "title": LONE}, "title"),
        ("task.block", {"ids": [task_id], "reason": LONE}, "reason"),
        ("task.complete", {"ids": [task_id], "summary": LONE}, "summary"),
        ("task.complete", {"ids": [task_id], "metadata": {"k": LONE}}, "metadata"),
        ("task.complete", {"ids": [task_id], "metadata": {LONE: 1}}, "metadata"),
        ("task.complete", {"ids": [task_id], "metadata": {"k": [{"deep": ["x", LONE]}]}}, "metadata"),
        ("task.complete", {"ids": [task_id], "metadata": {"k": "a\x00"}}, "metadata"),
        ("task.list", {"assignee": LONE}, "assignee"),
        ("task.list", {"status": [LONE]}, "status"),
        ("task.list", {"cursor": LONE}, "cursor"),
        ("events.since", {"task": LONE}, "task"),
        ("events.follow", {"kinds": [LONE]}, "kinds"),
        ("notify.subscribe", {"sink": LONE}, "sink"),
        ("run.exited", {"run": "r_1", "log_tail": LONE}, "log_tail"),
        ("notifier.ack", {"sink": "s", "error": LONE}, "error"),
    ]


def test_bad_text_is_invalid_params_naming_the_field(d):
    for method, params, field in bad_text_cases(d.task_id):
        reply = error(d, req(method, params), "invalid_params")
        assert reply["error"]["data"]["field"] == field, (method, params, reply)
        assert method in reply["error"]["message"]
    assert d.task(d.task_id)["status"] == "ready", "a refused request changed nothing"


# ---- numbers -----------------------------------------------------------------------------------


def bad_number_cases(task_id: str) -> list[tuple[str, dict, str]]:
    big = 1 << 63
    return [
        ("task.create", {"title": "x", "priority": big}, "priority"),
        ("task.create", {"title": "x", "priority": -big - 1}, "priority"),
        ("task.create", {"title": "x", "priority": 1 << 31}, "priority"),
        ("task.create", {"title": "x", "max_retries": -1}, "max_retries"),
        ("task.create", {"title": "x", "max_retries": big}, "max_retries"),
        ("task.edit", {"id": task_id, "priority": big}, "priority"),
        ("task.list", {"limit": big}, "limit"),
        ("task.list", {"limit": 0}, "limit"),
        ("task.list", {"limit": 10_001}, "limit"),
        ("task.log", {"id": task_id, "tail": big}, "tail"),
        ("task.log", {"id": task_id, "tail": -1}, "tail"),
        ("events.since", {"after": big}, "after"),
        ("events.since", {"after": -1}, "after"),
        ("events.since", {"limit": big}, "limit"),
        ("events.follow", {"after": big}, "after"),
        ("run.started", {"run": "r_1", "pid": big, "start_time": 1.0}, "pid"),
        ("run.started", {"run": "r_1", "pid": 5, "start_time": float(big) ** 2}, "start_time"),
        ("run.started", {"run": "r_1", "pid": 5, "start_time": big * big}, "start_time"),
        ("run.exited", {"run": "r_1", "exit_code": big}, "exit_code"),
        ("run.exited", {"run": "r_1", "signal": 100_000}, "signal"),
        ("notifier.ack", {"sink": "s", "cursor": big}, "cursor"),
        ("notifier.pending", {"sink": "s", "limit": big}, "limit"),
        ("task.complete", {"ids": [task_id], "metadata": {"n": big}}, "metadata"),
        ("task.complete", {"ids": ["t_1"] * 10_001}, "ids"),
    ]


def test_out_of_range_numbers_are_invalid_params_naming_the_field(d):
    for method, params, field in bad_number_cases(d.task_id):
        reply = error(d, req(method, params), "invalid_params")
        assert reply["error"]["data"]["field"] == field, (method, params, reply)
    assert d.task(d.task_id)["priority"] == 0


def test_bounds_themselves_are_accepted(d):
    t = d.rpc("task.create", {"title": "x" * 1024, "body": "b" * (256 * 1024), "priority": (1 << 31) - 1,
                              "max_retries": 1000})
    assert t["priority"] == (1 << 31) - 1 and len(t["body"]) == 256 * 1024
    assert d.rpc("events.since", {"after": (1 << 63) - 1})["events"] == []
    assert d.rpc("task.list", {"limit": 10_000})["tasks"]
    assert d.rpc("task.comment", {"id": t["id"], "body": "é" * 1000})["body"] == "é" * 1000


def test_many_hostile_frames_on_one_connection_each_get_one_answer(d):
    frames = [
        b"[" * 5000 + b"\n",
        b'{"jsonrpc":"2.0","id":NaN,"method":"daemon.status"}\n',
        req("task.create", {"title": LONE}, rid=3),
        req("task.create", {"title": "x", "priority": 1 << 63}, rid=4),
        b'{"jsonrpc":"2.0","id":5,"method":"task.show","params":{"id":"\\ud800"}}\n',
        req("daemon.status", rid=6),
    ]
    replies = exchange(d, b"".join(frames), expect=len(frames))
    assert [r["id"] for r in replies] == [None, None, 3, 4, 5, 6]
    assert [r.get("error", {}).get("data", {}).get("name") for r in replies] == \
        ["parse_error", "parse_error", "invalid_params", "invalid_params", "invalid_params", None]
