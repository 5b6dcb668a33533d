"""No client can starve the others: silent, hoarding and non-reading clients against a real kanband.

- Connections that never send a request are closed after ``server.first_request_timeout``,
  and when ``server.max_clients`` are open a newcomer evicts the longest-idle one (never a
  role), so workers' ``kanban complete`` and everyone else still get through.
- Clients that pipeline requests and never read their answers stop being read once their
  unsent output reaches the high-water mark: the dispatcher's memory stays bounded and
  returns near its baseline once they leave, and other clients are served meanwhile.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import pytest

from tests.harness import Daemon, wait_for, write_script


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def silent(d: Daemon, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(d.socket)
        out.append(s)
    return out


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.endswith(b"\n")  # EOF (or the refusal frame, then EOF)


def worker_profile(d: Daemon) -> dict:
    script = write_script(f"{d.tmp}/done.sh", "#!/bin/sh\nkanban complete --summary ok\n")
    return {"profiles": {"w": {"command": [script]}}}


@pytest.fixture
def socks():
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def test_silent_connections_cannot_lock_out_workers(make_daemon, socks):
    """256 (and more) connections that never speak: the CLI and a worker's complete still get through."""
    d = make_daemon(start=False)
    d.cfg = {**d.cfg, "server": {"first_request_timeout": "1s"}, **worker_profile(d)}
    d.write_config(d.cfg)
    d.start()
    roles_before = d.role_pids()
    socks += silent(d, 300)
    t0 = time.monotonic()
    status = d.cli_json("status", timeout=10)
    assert status["reaper_attached"], "the reaper's connection must never be evicted"
    task = d.rpc("task.create", {"title": "work", "assignee": "w"})
    d.wait_status(task["id"], "done", timeout=10)
    assert d.task(task["id"])["summary"] == "ok", "the worker's kanban complete got through"
    assert time.monotonic() - t0 < 8
    # the silent ones are gone within the first-request deadline (plus the sweep's slack)
    wait_for(lambda: all(closed_by_server(s) for s in socks), timeout=4, what="silent connections closed")
    assert d.role_pids() == roles_before
    events = [e.get("event") for e in d.log_events()]
    assert "reaper.detached" not in events and "socket.client_evicted" in events


def test_full_server_evicts_the_longest_idle_client_not_the_newcomer(make_daemon, socks):
    d = make_daemon({"server": {"first_request_timeout": "60s", "max_clients": 40}})
    follower = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(follower)
    follower.connect(d.socket)
    follower.sendall(b'{"jsonrpc":"2.0","id":1,"method":"events.follow","params":{}}\n')
    follower.settimeout(5)
    assert b'"following":true' in follower.recv(4096)
    oldest = silent(d, 1)[0]
    socks.append(oldest)
    d.rpc("daemon.status")  # a round trip: the oldest was accepted in an earlier turn than the rest
    socks += silent(d, 60)
    # every newcomer was admitted by evicting an idle one: the oldest went first
    assert d.rpc("daemon.status")["reaper_attached"]
    assert closed_by_server(oldest)
    # the follower is never evicted: it still gets events
    t = d.rpc("task.create", {"title": "seen by the follower"})
    buf = b""
    while t["id"].encode() not in buf:
        chunk = follower.recv(65536)
        assert chunk, "the follower was evicted"
        buf += chunk


def test_first_request_deadline_is_kept_precisely(make_daemon, socks):
    """The sweep follows the nearest deadline instead of a fixed 5 s period."""
    d = make_daemon({"server": {"first_request_timeout": "0.3s", "idle_timeout": "300s"}})
    s = silent(d, 1)[0]
    socks.append(s)
    talker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(talker)
    talker.connect(d.socket)
    talker.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.status"}\n')
    talker.settimeout(5)
    assert b'"result"' in talker.recv(65536)
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    took = time.monotonic() - t0
    assert took < 1.5, f"closed after {took:.2f}s"
    # a silent connection opened after the talker's last request is closed once its own deadline has
    # passed: by then the talker, which spoke, has outlived a whole first-request deadline too
    later = silent(d, 1)[0]
    socks.append(later)
    wait_for(lambda: closed_by_server(later), timeout=5, what="a later silent connection to be closed")
    assert not closed_by_server(talker), "a client that spoke is held to idle_timeout, not the first deadline"


class Hoarder(threading.Thread):
    """Pipelines requests as fast as the socket takes them and never reads an answer."""

    def __init__(self, path: str, frames: bytes, seconds: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.frames = frames
        self.seconds = seconds
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        view = memoryview(self.frames)
        pos = 0
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                n = self.sock.send(view[pos:pos + 65536])
            except BlockingIOError:  # the daemon stopped reading us: wait until the socket takes more
                select.select([], [self.sock], [], 0.1)
                continue
            except OSError:
                return
            self.sent += n
            pos = (pos + n) % len(self.frames)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close()


def test_clients_that_never_read_cannot_exhaust_memory(make_daemon):
    d = make_daemon()
    body = "b" * 2000
    first = d.rpc("task.create", {"title": "t0", "body": body})["id"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # a board of 300 tasks, fast
        s.connect(d.socket)
        s.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "task.create",
                                       "params": {"title": f"t{i}", "body": body}}).encode() + b"\n"
                           for i in range(299)))
        f = s.makefile("rb")
        for _ in range(299):
            f.readline()
        f.close()
    pid = d.rpc("daemon.status")["dispatcher_pid"]
    base = rss_mib(pid)
    # each answer is ~700 KiB (task.list), ~1 KiB (daemon.status) or ~2 KiB (task.show)
    frames = b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode() + b"\n"
                      for i, (m, p) in enumerate([("task.list", {})] + [("daemon.status", {})] * 20 +
                                                 [("task.show", {"id": first})] * 20))
    hoarders = [Hoarder(d.socket, frames, 60) for _ in range(20)]
    peak = base
    try:
        for h in hoarders:
            h.start()
        t_end = time.monotonic() + 6
        served = 0
        while time.monotonic() < t_end:
            peak = max(peak, rss_mib(pid))
            t0 = time.monotonic()
            assert d.rpc("task.show", {"id": first})["task"]["id"] == first
            assert time.monotonic() - t0 < 2, "another client must be served while they hoard"
            served += 1
        assert served > 10
        assert all(h.is_alive() for h in hoarders) and all(h.sent > 0 for h in hoarders)
        assert d.cli("list", "-n", "5").returncode == 0
        peak = max(peak, rss_mib(pid))
    finally:
        for h in hoarders:
            h.close()
    assert peak < base + 150, f"dispatcher RSS {base:.0f} MiB -> peak {peak:.0f} MiB"
    wait_for(lambda: rss_mib(pid) < base + 25, timeout=15, what=f"RSS back near {base:.0f} MiB")
    assert d.rpc("daemon.status")["dispatcher_pid"] == pid
    print(f"rss base {base:.0f} MiB, peak {peak:.0f} MiB, after {rss_mib(pid):.0f} MiB")


def test_a_burst_of_pipelined_writes_is_served_in_order(make_daemon):
    """Read pausing and deferral keep each connection's requests in order and answer them all."""
    d = make_daemon()
    n = 1500
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket)
        s.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode() + b"\n"
                           for i in range(n)
                           for m, p in [("task.create", {"title": f"n{i}", "idempotency_key": f"k{i}"})
                                        if i % 3 else ("task.list", {"limit": 100})]))
        f = s.makefile("rb")
        ids = [json.loads(f.readline())["id"] for _ in range(n)]
        f.close()
    assert ids == list(range(n))
    assert d.rpc("task.list", {"limit": 5000})["total"] == n - (n + 2) // 3
    assert os.path.exists(d.socket)
