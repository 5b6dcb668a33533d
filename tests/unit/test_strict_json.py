"""Strict frames and bounded params: the parser every peer uses, and the registry's bounds.

The client (:class:`client.rpc.Client`) and the roles' peer (:class:`daemon.rpcpeer.Peer`)
are driven by a hostile server on a real Unix socket: no frame it sends may crash them.
"""

from __future__ import annotations

import json
import random
import select
import socket
import threading

import pytest

from client import protocol
from client.protocol import MAX_DEPTH, METHODS, FrameError, RPCError, check_params, loads, too_deep
from client.rpc import Client, ServerError
from daemon.rpcpeer import Peer


def naive_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((naive_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((naive_depth(v) for v in value.values()), default=0)
    return 0


LEAVES = [1, "s", '[{"', "\\", "]]}}", None, 2.5, '\\"[', "x\\\\", [], {}]


def shallow(rng: random.Random, depth: int) -> object:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(LEAVES)
    if rng.random() < 0.5:
        return [shallow(rng, depth - 1) for _ in range(rng.randint(0, 2))]
    return {rng.choice(["a", "[", "}", '"', "\\"]) + str(i): shallow(rng, depth - 1) for i in range(rng.randint(0, 2))}


def random_value(rng: random.Random, depth: int) -> object:
    """A spine ``depth`` levels deep, with shallow siblings at every level."""
    value = shallow(rng, 2)
    for _ in range(depth):
        siblings = [shallow(rng, 3) for _ in range(rng.randint(0, 2))]
        if rng.random() < 0.5:
            value = [*siblings[:1], value, *siblings[1:]]
        else:
            value = {**{f"s{i}[": v for i, v in enumerate(siblings)}, '"k\\': value}
    return value


def test_depth_prescan_agrees_with_the_real_depth():
    rng = random.Random(7)
    for _ in range(3000):
        value = random_value(rng, rng.randint(0, 90))
        data = json.dumps(value).encode()
        assert too_deep(data) == (naive_depth(value) > MAX_DEPTH), data[:200]
        if naive_depth(value) <= MAX_DEPTH:
            assert loads(data) == value


@pytest.mark.parametrize("data,why", [
    (b"[" * 1000 + b"]" * 1000, "deeper"),
    (b"[" * 100_000, "deeper"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "deeper"),
    (b"NaN", "NaN"),
    (b'{"x": Infinity}', "Infinity"),
    (b"[-Infinity]", "Infinity"),
    (b"1e400", "out of range"),
    (b"[-1e400]", "out of range"),
    (b"1" * 5000, "digits"),
    (b"\xff\xfe", "utf-8"),
    (b"\xed\xa0\x80", "utf-8"),  # a surrogate encoded in UTF-8 (CESU)
    (b"{", "Expecting"),
])
def test_loads_refuses(data, why):
    with pytest.raises(FrameError) as ei:
        loads(data)
    assert why in str(ei.value)


def test_loads_accepts_standard_json():
    assert loads(b'{"a": [1, 2.5, -0.0, 1e308, "\\u00e9", null, true]}') == \
        {"a": [1, 2.5, -0.0, 1e308, "é", None, True]}
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) == eval("[" * MAX_DEPTH + "]" * MAX_DEPTH)


def test_dumps_refuses_nan():
    with pytest.raises(ValueError):
        protocol.dumps({"x": float("nan")})


# ---- bounds -------------------------------------------------------------------------------


def _invalid(method: str, params: dict) -> RPCError:
    with pytest.raises(RPCError) as ei:
        check_params(METHODS[method], params)
    assert ei.value.name == "invalid_params"
    return ei.value


@pytest.mark.parametrize("method,params,field,words", [
    ("task.create", {"title": "\ud800"}, "title", "surrogate"),
    ("task.create", {"title": "a\x00"}, "title", "NUL"),
    ("task.create", {"title": "é" * 513}, "title", "too long"),  # 1026 bytes of UTF-8
    ("task.create", {"title": "x", "body": "x" * (256 * 1024 + 1)}, "body", "too long"),
    ("task.create", {"title": "x", "priority": 1 << 63}, "priority", "out of range"),
    ("task.create", {"title": "x", "parents": ["ok", "\udc00"]}, "parents", "surrogate"),
    ("task.create", {"title": "x", "parents": ["t"] * 10_001}, "parents", "too many"),
    ("task.complete", {"metadata": {"a": {"b": ["\ud800"]}}}, "metadata", "surrogate"),
    ("task.complete", {"metadata": {"\x00": 1}}, "metadata", "NUL"),
    ("task.complete", {"metadata": {"n": -(1 << 63) - 1}}, "metadata", "64-bit"),
    ("task.complete", {"metadata": {"a": json.loads("[" * 16 + "]" * 16)}}, "metadata", "deeper"),
    ("run.started", {"run": "r", "pid": 1, "start_time": 1e300}, "start_time", "out of range"),
    ("events.since", {"after": -1}, "after", "out of range"),
])
def test_bounds_name_the_field(method, params, field, words):
    err = _invalid(method, params)
    assert err.data["field"] == field and words in err.message, err.message


def test_every_declared_bound_is_checked_at_its_edges():
    """For each bounded param: the bound itself passes, one past it fails naming the param."""
    for m in METHODS.values():
        for p in m.params:
            base = {q.name: _valid(q) for q in m.params if q.required and q.name != p.name}
            if p.type == "str" and not p.choices:
                check_params(m, {**base, p.name: "x" * p.max_len})
                assert _invalid(m.name, {**base, p.name: "x" * (p.max_len + 1)}).data["field"] == p.name
            elif p.type == "int":
                check_params(m, {**base, p.name: int(p.max)})
                check_params(m, {**base, p.name: int(p.min)})
                assert _invalid(m.name, {**base, p.name: int(p.max) + 1}).data["field"] == p.name
                assert _invalid(m.name, {**base, p.name: int(p.min) - 1}).data["field"] == p.name


def _valid(p: protocol.Param) -> object:
    return {"str": "x", "int": max(1, int(p.min)), "float": 1.0, "bool": True, "list": ["x"], "dict": {}}[p.type]


def test_unknown_keys_are_named_in_ascii():
    err = _invalid("daemon.status", {"\ud800": 1})
    assert err.data["field"] == ascii("\ud800") and err.data["field"].isascii()


# ---- hostile servers ------------------------------------------------------------------------


class HostileServer:
    """Accepts one connection, reads one line, answers with ``frames``."""

    def __init__(self, path: str, frames: list[bytes]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.frames = frames
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"".join(self.frames))
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("frame,words", [
    (b"[" * 100_000 + b"\n", "deeper"),
    (b'{"jsonrpc":"2.0","id":1,"result":NaN}\n', "NaN"),
    (b"[1,2]\n", "not a JSON object"),
    (b'{"jsonrpc":"2.0","id":1,"error":"boom"}\n', "malformed error"),
    (b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m","data":[1]}}\n', "malformed error"),
])
def test_client_survives_a_hostile_server(tmp_path, frame, words):
    path = str(tmp_path / "s.sock")
    srv = HostileServer(path, [frame])
    try:
        with Client(path, retry=1.0, timeout=5) as c:
            with pytest.raises(ServerError) as ei:
                c.call("daemon.status")
        assert words in str(ei.value)
    finally:
        srv.close()


def test_role_peer_skips_hostile_frames(tmp_path):
    path = str(tmp_path / "s.sock")
    srv = HostileServer(path, [b"[" * 100_000 + b"\n", b'{"id":1,"result":Infinity}\n', b"[1]\n",
                               b'{"id":[1],"result":1}\n', b"\xff\n",
                               b'{"jsonrpc":"2.0","id":1,"result":{"ok":true}}\n'])
    replies: list[dict] = []
    try:
        peer = Peer(path, on_notify=lambda msg: replies.append({"notify": msg}))
        peer.call("daemon.status", {}, replies.append)
        while not replies and not peer.closed:
            assert select.select([peer.sock], [], [], 5)[0], "no answer"
            peer.on_readable()
        assert replies == [{"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}]
        peer.close()
    finally:
        srv.close()
