"""Fuzz the real daemon's socket with generated frames (fixed seed, so failures replay).

Frames cover every method in the registry, with params that are mostly of the right
shape and often out of bounds or of the wrong type, aimed at tasks in every status, plus
malformed JSON-RPC and raw garbage (deep nesting, NaN, invalid UTF-8, lone surrogates).
The daemon must stay up, answer every frame with a valid JSON-RPC 2.0 response (parsed
strictly: no NaN, no Infinity), never with ``internal_error``, and its dispatcher's fd
count and RSS must stay flat.

``reaper.attach`` hands the connection the reaper's role and closes the real reaper's:
that is a question of who may call internal methods (peer checks), not of bad input, so
it is fuzzed only with params that fail validation.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import time

import pytest

from client.protocol import METHODS, loads
from daemon.board.transitions import STATUSES
from tests.harness import Daemon, wait_for, write_script

BAD_EVENTS = ("rpc.handler_crashed", "rpc.db_error", "rpc.encode_failed", "role.died", "role.hung",
              "board.commit_failed", "dispatch.pass_failed")
WINDOW = 80  # at most this many frames pipelined before reading the answers
SEED = 20240610


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---- the board: a task in every status ----------------------------------------------------


def board_in_every_status(tmp_path) -> tuple[Daemon, dict[str, str]]:
    worker = write_script(tmp_path / "worker.sh", "#!/bin/sh\nexec sleep 600\n")
    cfg = {"profiles": {"w": {"command": [worker], "max_in_progress": 2}},
           "sinks": {"log": {"type": "command", "command": ["true"]}}}
    d = Daemon(cfg)
    d.start()
    by_status: dict[str, str] = {}
    c = d.rpc
    by_status["triage"] = c("task.create", {"title": "triage", "triage": True})["id"]
    parent = c("task.create", {"title": "parent"})["id"]
    by_status["todo"] = c("task.create", {"title": "todo", "parents": [parent]})["id"]
    by_status["ready"] = c("task.create", {"title": "ready"})["id"]
    blocked = c("task.create", {"title": "blocked"})["id"]
    c("task.block", {"ids": [blocked], "reason": "r"})
    by_status["blocked"] = blocked
    done = c("task.create", {"title": "done"})["id"]
    c("task.complete", {"ids": [done]})
    by_status["done"] = done
    archived = c("task.create", {"title": "archived"})["id"]
    c("task.archive", {"ids": [archived]})
    by_status["archived"] = archived
    review = c("task.create", {"title": "review", "triage": True})["id"]
    scheduled = c("task.create", {"title": "scheduled", "triage": True})["id"]
    d.stop()
    # no move leads into review or scheduled yet: put two tasks there while the daemon is down
    db = sqlite3.connect(os.path.join(d.state, "board.db"))
    db.execute("UPDATE tasks SET status='review' WHERE id=?", (review,))
    db.execute("UPDATE tasks SET status='scheduled' WHERE id=?", (scheduled,))
    db.commit()
    db.close()
    by_status["review"], by_status["scheduled"] = review, scheduled
    d.start()
    running = c("task.create", {"title": "running", "assignee": "w"})["id"]
    d.wait_status(running, "running")
    by_status["running"] = running
    got = {s: d.task(t)["status"] for s, t in by_status.items()}
    assert got == {s: s for s in STATUSES}, got
    return d, by_status


# ---- the generator -------------------------------------------------------------------------


class Fuzzer:
    """Generates frames from a seeded RNG; ``task_ids`` are tasks in every status."""

    def __init__(self, seed: int, task_ids: list[str]) -> None:
        self.rng = random.Random(seed)
        self.task_ids = task_ids
        self.next_id = 1
        self.methods = sorted(METHODS)

    def text(self) -> str:
        r = self.rng
        return r.choice([
            "", "x", "hello world", "é✓ 漢字 🙂", "\ud800", "a\udfffb", "nul\x00", "\n\t\r", "x" * 1024,
            "x" * 1025, "y" * r.randint(1, 5000), "dir:/tmp", "dir:relative", "worktree", "scratch", "30m",
            "-5", "1e9", "r_00000000", "t_zzzzzzzz", "log", "w", "priority", "ready", "{}", "[[[[", "\\",
            '"', "\u2028", "\ufeff", "\U0010ffff",
        ] + self.task_ids)

    def number(self) -> object:
        return self.rng.choice([0, 1, -1, 2, 75, 255, 256, 1 << 31, (1 << 31) - 1, -(1 << 31) - 1,
                                (1 << 63) - 1, 1 << 63, -(1 << 63), -(1 << 63) - 1, 10 ** 30, 0.5, -2.5,
                                1e308, -1e308, 1e15, 5e-324])

    def anything(self, depth: int = 0) -> object:
        r = self.rng
        kind = r.randrange(8 if depth < 4 else 5)
        if kind == 0:
            return self.text()
        if kind == 1:
            return self.number()
        if kind == 2:
            return r.choice([True, False])
        if kind == 3:
            return None
        if kind == 4:
            return r.choice(self.task_ids)
        if kind == 5:
            return [self.anything(depth + 1) for _ in range(r.randrange(4))]
        if kind == 6:
            return {self.text(): self.anything(depth + 1) for _ in range(r.randrange(4))}
        return self.nested(r.randint(1, 30))

    def nested(self, depth: int) -> object:
        value: object = self.text()
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def value_for(self, p) -> object:
        r = self.rng
        if r.random() < 0.15:
            return self.anything()
        if p.choices and r.random() < 0.7:
            return r.choice(p.choices)
        if p.type == "str":
            if p.name in ("id", "parent", "child", "task") and r.random() < 0.7:
                return r.choice(self.task_ids)
            return self.text()
        if p.type == "int":
            return self.number() if r.random() < 0.5 else r.randint(-3, 50)
        if p.type == "float":
            return self.number() if r.random() < 0.5 else r.uniform(0, 2e9)
        if p.type == "bool":
            return r.random() < 0.5
        if p.type == "list":
            if p.name in ("ids", "parents") and r.random() < 0.7:
                return r.sample(self.task_ids, r.randint(1, 3))
            if p.name == "status":
                return r.sample(list(STATUSES) + ["nope", "\ud800"], r.randint(1, 3))
            return [self.text() for _ in range(r.randrange(4))]
        if p.type == "dict":
            return {self.text(): self.anything(1) for _ in range(r.randrange(5))}
        return self.anything()

    def params(self, method: str) -> object:
        r = self.rng
        m = METHODS[method]
        roll = r.random()
        if roll < 0.03:
            return self.anything()
        out = {p.name: self.value_for(p) for p in m.params if p.required or r.random() < 0.5}
        if roll < 0.08:
            out[self.text()] = self.anything()
        if method == "reaper.attach":
            out["pid"] = r.choice([0, -1, 1 << 63, "1", None, 2.5])  # always invalid: see the module doc
        return out

    def request(self) -> tuple[bytes, object]:
        """One frame, and the id its answer must carry (``...``: no answer expected)."""
        r = self.rng
        rid = self.next_id
        self.next_id += 1
        method = r.choice(self.methods) if r.random() < 0.97 else self.text()
        msg: dict = {"jsonrpc": "2.0", "id": rid, "method": method}
        if isinstance(method, str) and method in METHODS:
            msg["params"] = self.params(method)
        roll = r.random()
        if roll < 0.03:  # a notification: no answer unless it is malformed
            del msg["id"]
            rid = ...
        elif roll < 0.06:
            msg["jsonrpc"] = r.choice(["1.0", 2, None])
        elif roll < 0.08:
            msg["id"] = r.choice([[1], {"a": 1}, True, 1 << 64, "\ud800"])
            rid = None
        data = json.dumps(msg).encode()
        return data + b"\n", rid

    def garbage(self) -> tuple[bytes, object]:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            depth = r.choice([65, 100, 1000, 5000, 50_000])
            return b"[" * depth + b"]" * depth + b"\n", None
        if kind == 1:
            return b'{"jsonrpc":"2.0","id":' + r.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]) + \
                b',"method":"daemon.status"}\n', None
        if kind == 2:
            noise = bytes(r.randrange(256) for _ in range(r.randint(1, 200))).replace(b"\n", b"")
            return b"\x01" + noise + b"\n", None
        if kind == 3:
            full, _ = self.request()
            return full[:r.randint(1, max(1, len(full) - 2))].replace(b"\n", b"") + b"\n", None
        if kind == 4:
            return b'{"jsonrpc":"2.0","id":null,"method":"task.show","params":{"id":"\\udc00"}}\n', None
        if kind == 5:
            return json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "daemon.status"}]).encode() + b"\n", None
        if kind == 6:
            return r.choice([b"1", b'"x"', b"null", b"true", b"[]", b"{}", b"\xc3\x28", b"\xed\xa0\x80"]) + \
                b"\n", None
        if kind == 7:
            return b'{"jsonrpc":"2.0","id":1' + b"0" * r.randint(19, 5000) + b',"method":"daemon.status"}\n', None
        return b"   \n", ...  # blank line: ignored

    def frame(self) -> tuple[bytes, object]:
        return self.garbage() if self.rng.random() < 0.12 else self.request()


# ---- the driver ------------------------------------------------------------------------------


def check_reply(msg: object) -> None:
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    if "method" in msg and "id" not in msg:  # a pushed notification (events.follow)
        return
    assert "id" in msg and (("result" in msg) != ("error" in msg)), msg
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str) and err["message"], msg
        assert err["data"]["name"] != "internal_error", msg


def run_windows(d: Daemon, fuzz: Fuzzer, n: int) -> dict[str, int]:
    """Send ``n`` frames, ``WINDOW`` at a time on fresh connections; check every answer."""
    stats = {"frames": 0, "answers": 0, "errors": 0}
    while stats["frames"] < n:
        frames = [fuzz.frame() for _ in range(min(fuzz.rng.randint(1, WINDOW), n - stats["frames"]))]
        sync = f"sync-{fuzz.next_id}"
        fuzz.next_id += 1
        expected = [rid for _, rid in frames if rid is not ... and rid is not None]
        nulls = sum(1 for _, rid in frames if rid is None)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(d.socket)
        try:
            s.sendall(b"".join(f for f, _ in frames) +
                      json.dumps({"jsonrpc": "2.0", "id": sync, "method": "daemon.status"}).encode() + b"\n")
            f = s.makefile("rb")
            seen: list[object] = []
            null_answers = 0
            synced = False
            # an answer may come after a later request's (daemon.reload answers once the supervisor
            # has reloaded): read on past the sync until every expected id has been answered
            while not synced or len(seen) < len(expected):
                line = f.readline()
                assert line.endswith(b"\n"), f"connection closed; sent {frames!r}"
                msg = loads(line)
                check_reply(msg)
                if "id" not in msg:
                    continue
                stats["answers"] += 1
                stats["errors"] += "error" in msg
                if msg["id"] == sync:
                    synced = True
                elif msg["id"] is None:
                    null_answers += 1
                else:
                    seen.append(msg["id"])
            f.close()
        finally:
            s.close()
        assert sorted(seen, key=str) == sorted(expected, key=str), (seen, expected)
        assert null_answers >= nulls
        stats["frames"] += len(frames)
    return stats


def fuzz_daemon(tmp_path, n: int, budget: float) -> None:
    d, by_status = board_in_every_status(tmp_path)
    try:
        pid = d.rpc("daemon.status")["dispatcher_pid"]
        fuzz = Fuzzer(SEED, list(by_status.values()) + ["t_00000000"])
        run_windows(d, fuzz, 1000)  # warm up: caches, the show cache, sqlite pages
        fds0, rss0 = fd_count(pid), rss_kib(pid)
        t0 = time.monotonic()
        stats = run_windows(d, fuzz, n)
        took = time.monotonic() - t0
        assert stats["answers"] >= n * 0.85 and stats["errors"] > n * 0.3, stats
        assert d.rpc("daemon.status")["dispatcher_pid"] == pid, "the dispatcher was restarted"
        assert d.proc.poll() is None
        bad = [e for e in d.log_events() if e.get("event") in BAD_EVENTS]
        assert not bad, bad[:3]
        wait_for(lambda: fd_count(pid) <= fds0 + 2, timeout=10, what=f"fds back near {fds0}")
        rss1 = rss_kib(pid)
        assert rss1 <= rss0 + 24 * 1024, f"dispatcher RSS grew from {rss0} KiB to {rss1} KiB"
        assert took < budget, f"{n} frames took {took:.1f}s"
        print(f"{n} frames in {took:.1f}s: {stats}; rss {rss0} -> {rss1} KiB; fds {fds0} -> {fd_count(pid)}")
    finally:
        d.cleanup()
    assert not d.ours()


def test_fuzz_10k_frames(tmp_path):
    fuzz_daemon(tmp_path, 10_000, budget=60)


@pytest.mark.slow
def test_fuzz_100k_frames(tmp_path):
    fuzz_daemon(tmp_path, 100_000, budget=900)
