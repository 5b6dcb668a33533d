"""The notifier against real sinks: command hooks, a webhook server on 127.0.0.1, notify-send.

Every test runs the real daemon; sinks are real processes and a real HTTP
server; the CLI is the installed ``kanban``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import BIN, KANBAN, wait_for, write_script

FAST_NOTIFY = {"notify": {"backoff_initial": "0.05s", "backoff_max": "0.2s", "max_failures": 3}}


def hook(d, name: str = "hook") -> Path:
    """A command hook that appends {argv, doc, env} as one JSON line per delivery; returns the output file."""
    out = Path(d.tmp) / f"{name}.jsonl"
    write_script(f"{d.tmp}/{name}.py", f"""#!{sys.executable} -S
import json, os, sys
doc = json.load(sys.stdin)
with open({str(out)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "doc": doc, "env_id": os.environ.get("KANBAN_EVENT_ID")}}) + "\\n")
""")
    return out


def complete_lines(path: Path) -> list[str]:
    """The newline-terminated lines of a file a hook may be writing right now."""
    try:
        return path.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in complete_lines(path) if x.strip()]


def command_sink(d, name: str = "hook", **extra) -> Path:
    out = hook(d, name)
    d.cfg.setdefault("sinks", {})[name] = {
        "type": "command", "command": [f"{d.tmp}/{name}.py", "{task_id}", "{kind}", "{title}", "{summary}"],
        "timeout": "5s", **extra}
    return out


def sink_state(d, name: str) -> dict:
    return next(s for s in d.cli_json("notify", "list")["sinks"] if s["name"] == name)


def events(d, kind: str | None = None) -> list[dict]:
    return [e for e in d.rpc("events.since", {"after": 0})["events"] if kind is None or e["kind"] == kind]


def notifier_pid(d) -> int | None:
    return d.role_pids().get("notifier")


def done_task(d, title: str, summary: str = "ok", **create) -> str:
    t = d.rpc("task.create", {"title": title, **create})
    d.rpc("task.complete", {"ids": [t["id"]], "summary": summary})
    return t["id"]


class Webhook:
    """A tiny HTTP server on 127.0.0.1 that records every POST and answers from a script of statuses."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # consumed one per request; 200 when empty
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    status = hook.statuses.pop(0) if hook.statuses else 200
                    hook.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def ok(self) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    made: list[Webhook] = []

    def factory(port: int = 0) -> Webhook:
        w = Webhook(port)
        made.append(w)
        return w

    yield factory
    for w in made:
        w.close()


# ---- command sink ------------------------------------------------------------------


def test_command_sink_gets_exactly_the_expected_kinds_in_order(make_daemon):
    d = make_daemon(FAST_NOTIFY, start=False)
    out = command_sink(d)
    fail = write_script(f"{d.tmp}/fail.sh", "#!/bin/sh\necho boom >&2\nexit 3\n")
    d.cfg["profiles"] = {"failer": {"command": [fail]}}
    d.write_config(d.cfg)
    d.start()
    a = d.cli_json("create", "task A", "--notify", "hook")
    d.cli("comment", a["id"], "not a default kind")
    d.cli("block", a["id"], "-r", "need input")
    d.cli("unblock", a["id"])
    d.cli("complete", a["id"], "-m", "all good")
    b = d.cli_json("create", "task B", "--assignee", "failer", "--notify", "hook")  # crashes twice, gives up
    d.wait_status(b["id"], "blocked")
    expected = [(a["id"], "blocked"), (a["id"], "completed"),
                (b["id"], "crashed"), (b["id"], "crashed"), (b["id"], "gave_up")]
    wait_for(lambda: len(lines(out)) >= len(expected), what="5 deliveries")
    got = lines(out)
    assert [(x["doc"]["task_id"], x["doc"]["kind"]) for x in got] == expected
    ids = [x["doc"]["id"] for x in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [x["env_id"] for x in got] == [str(i) for i in ids]
    # placeholders: {task_id} {kind} {title} {summary}
    assert got[0]["argv"] == [a["id"], "blocked", "task A", "need input"]
    assert got[1]["argv"] == [a["id"], "completed", "task A", "all good"]
    assert got[4]["argv"][3] == "gave up after 2 consecutive failures (last: crashed)"
    assert got[2]["doc"]["summary"] == "exit code 3"
    assert got[1]["doc"]["sink"] == "hook" and got[1]["doc"]["payload"]["summary"] == "all good"
    # the cursor has moved past everything, including the events nobody wanted
    wait_for(lambda: sink_state(d, "hook")["lag"] == 0, what="cursor at the end of the log")
    assert len(lines(out)) == len(expected)


def test_failing_and_hanging_hooks_back_off_without_stalling_heartbeats(make_daemon):
    d = make_daemon({**FAST_NOTIFY, "notify": {**FAST_NOTIFY["notify"], "max_failures": 0}}, start=False)
    flag = Path(d.tmp) / "healthy"
    out = Path(d.tmp) / "slow.out"
    write_script(f"{d.tmp}/slow.sh", f"#!/bin/sh\nif [ -e {flag} ]; then cat >> {out}; exit 0; fi\nexec sleep 30\n")
    d.cfg["sinks"] = {"slow": {"type": "command", "command": [f"{d.tmp}/slow.sh"], "timeout": "0.3s", "all": True}}
    d.write_config(d.cfg)
    d.start()
    tid = done_task(d, "hangs the hook")
    wait_for(lambda: (sink_state(d, "slow")["failures"] or 0) >= 3, timeout=15, what="three timeouts")
    state = sink_state(d, "slow")
    assert "timed out after 0.3s" in state["last_error"] and not state["paused"]  # max_failures 0: never pause
    # each timed-out hook's `sleep 30` was killed with its process group: at most the current attempt lives
    assert len([p for p in d.ours() if p.name() == "sleep"]) <= 1
    status = {r["name"]: r for r in d.rpc("daemon.status")["roles"]}
    assert status["notifier"]["state"] == "ok" and status["notifier"]["heartbeat_age"] < 1.0
    flag.touch()
    doc = wait_for(lambda: lines(out), what="delivery once the hook is healthy")[0]
    assert (doc["task_id"], doc["kind"]) == (tid, "completed")
    wait_for(lambda: sink_state(d, "slow")["failures"] == 0, what="failures reset")


# ---- webhook -------------------------------------------------------------------------


def webhook_daemon(make_daemon, url: str):
    """A daemon with the webhook sink ``web`` and, as a witness of what the notifier has seen, ``hook``."""
    d = make_daemon(FAST_NOTIFY, start=False)
    command_sink(d, all=True, kinds=["completed"])
    d.cfg["sinks"]["web"] = {"type": "webhook", "url": url, "secret": "s3cret", "timeout": "2s",
                             "kinds": ["completed"], "all": True}
    d.write_config(d.cfg)
    d.start()
    return d


def test_webhook_500_twice_then_delivered_with_the_same_event_id(make_daemon, webhook):
    w = webhook()
    w.statuses = [500, 500]
    d = webhook_daemon(make_daemon, w.url)
    tid = done_task(d, "post me", summary="posted")
    wait_for(lambda: w.ok(), what="the third attempt to succeed")
    reqs = w.requests
    assert [r["status"] for r in reqs] == [500, 500, 200]
    ids = {r["headers"]["X-Kanban-Event"] for r in reqs}
    assert len(ids) == 1
    body = json.loads(reqs[2]["body"])
    assert str(body["id"]) == ids.pop() and body["task_id"] == tid and body["kind"] == "completed"
    assert body["summary"] == "posted"
    for r in reqs:
        want = "sha256=" + hmac.new(b"s3cret", r["body"], hashlib.sha256).hexdigest()
        assert r["headers"]["X-Kanban-Signature"] == want
        assert r["headers"]["Content-Type"] == "application/json"
    wait_for(lambda: sink_state(d, "web")["failures"] == 0, what="failures reset after the success")
    assert not events(d, "sink_paused")


def test_webhook_down_pauses_the_sink_then_resume_delivers(make_daemon, webhook):
    w = webhook()
    port, url = w.port, w.url
    w.close()  # the receiver is down: connection refused
    d = webhook_daemon(make_daemon, url)
    tid = done_task(d, "while down")
    paused = wait_for(lambda: events(d, "sink_paused"), what="sink_paused event")
    assert paused[0]["payload"]["sink"] == "web" and paused[0]["payload"]["failures"] == 3
    listed = sink_state(d, "web")
    assert listed["paused"] and listed["failures"] == 3 and "refused" in listed["last_error"].lower()
    assert "paused" in d.cli("notify", "list").stdout
    assert any(e.get("event") == "sink.paused" and e.get("level") == "error" for e in d.log_events())
    w2 = webhook(port)  # back up on the same address; a paused sink does not retry by itself
    tid2 = done_task(d, "still paused")
    wait_for(lambda: tid2 in {x["doc"]["task_id"] for x in lines(Path(d.tmp) / "hook.jsonl")},
             what="the witness sink to get the second event")
    assert not w2.requests and sink_state(d, "web")["paused"]
    res = d.cli_json("notify", "resume", "web")
    assert res["was_paused"] and not res["paused"]
    wait_for(lambda: len(w2.ok()) >= 2, what="both events delivered after resume")
    got = [json.loads(r["body"]) for r in w2.ok()]
    assert [(b["task_id"], b["kind"]) for b in got[:2]] == [(tid, "completed"), (tid2, "completed")]
    state = sink_state(d, "web")
    assert not state["paused"] and state["failures"] == 0
    assert [e["kind"] for e in events(d) if e["kind"].startswith("sink_")] == ["sink_paused", "sink_resumed"]


# ---- desktop -----------------------------------------------------------------------------


def test_desktop_sink_uses_notify_send_and_warns_once_without_it(make_daemon, monkeypatch, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls.json"
    write_script(fake / "notify-send", f"#!{sys.executable} -S\nimport json, os, sys\n"
                                       f"json.dump(sys.argv[1:], open('{calls}.tmp', 'w'))\n"
                                       f"os.replace('{calls}.tmp', '{calls}')\n")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{BIN}")  # nothing else: no system notify-send
    d = make_daemon(FAST_NOTIFY, start=False)
    d.cfg["sinks"] = {"desk": {"type": "desktop", "all": True, "timeout": "5s"}}
    d.write_config(d.cfg)
    d.start()
    t1 = done_task(d, "first", summary="shown")
    wait_for(calls.exists, what="notify-send to run")
    args = json.loads(calls.read_text())
    assert args == ["--app-name=kanban", "--urgency=normal", "--", f"kanban: completed {t1}", "first\nshown"]
    (fake / "notify-send").unlink()
    for i in range(4):  # more than max_failures: none of them may count as a failure
        done_task(d, f"unseen {i}")
    wait_for(lambda: sink_state(d, "desk")["lag"] == 0, what="cursor past the unseen events")
    state = sink_state(d, "desk")
    assert not state["paused"] and state["failures"] == 0 and "notify-send not found" in state["last_error"]
    warnings = [e for e in d.log_events() if e.get("event") == "sink.degraded"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert not events(d, "sink_paused")


# ---- restarts and gaps -----------------------------------------------------------------------


def test_notifier_killed_mid_delivery_skips_nothing(make_daemon):
    d = make_daemon(FAST_NOTIFY, start=False)
    release = Path(d.tmp) / "release"
    out = Path(d.tmp) / "blocking.out"
    write_script(f"{d.tmp}/block.sh", f"#!/bin/sh\necho \"start $KANBAN_EVENT_ID\" >> {out}\n"
                                      f"while [ ! -e {release} ]; do sleep 0.02; done\n"
                                      f"cat > /dev/null\necho \"done $KANBAN_EVENT_ID\" >> {out}\n")
    d.cfg["sinks"] = {"slow": {"type": "command", "command": [f"{d.tmp}/block.sh"], "timeout": "60s",
                               "kinds": ["completed"], "all": True}}
    d.write_config(d.cfg)
    d.start()
    before = [done_task(d, f"before {i}") for i in range(3)]
    wait_for(lambda: complete_lines(out), what="the first delivery to start")
    started = time.time()
    # a delivery stuck for longer than heartbeat_interval does not stall the notifier's heartbeats
    wait_for(lambda: next(r for r in d.rpc("daemon.status")["roles"] if r["name"] == "notifier")
             ["last_heartbeat"] > started + 0.5, what="heartbeats during a stuck delivery")
    old = notifier_pid(d)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (p := notifier_pid(d)) and p != old, what="the supervisor to restart the notifier")
    after = [done_task(d, f"after {i}") for i in range(2)]
    release.touch()
    want = {e["id"]: e["task_id"] for e in events(d, "completed")}
    assert set(want.values()) == set(before + after)
    done = lambda: [int(x.split()[1]) for x in complete_lines(out) if x.startswith("done")]  # noqa: E731
    wait_for(lambda: set(want) <= set(done()), what="every event delivered after the restart")
    firsts = list(dict.fromkeys(done()))
    assert firsts == sorted(firsts), "delivered out of order"
    wait_for(lambda: sink_state(d, "slow")["lag"] == 0, what="cursor at the end")


def test_notifier_reconnects_after_a_dispatcher_restart(make_daemon):
    d = make_daemon(FAST_NOTIFY, start=False)
    out = command_sink(d, all=True, kinds=["completed"])
    d.write_config(d.cfg)
    d.start()
    first = done_task(d, "before")
    wait_for(lambda: lines(out), what="the first delivery")
    pids = d.role_pids()
    os.kill(pids["dispatcher"], signal.SIGKILL)
    wait_for(lambda: (p := d.role_pids().get("dispatcher")) and p != pids["dispatcher"],
             what="a new dispatcher")
    second = done_task(d, "after")
    wait_for(lambda: len(lines(out)) >= 2, what="a delivery through the new dispatcher")
    got = [x["doc"]["task_id"] for x in lines(out)]
    # at-least-once: the ack for `first` may have died with the dispatcher, so `first` may come twice,
    # but nothing is skipped and the order holds
    assert list(dict.fromkeys(got)) == [first, second] and got[-1] == second
    assert d.role_pids()["notifier"] == pids["notifier"]  # it reconnected; it did not die
    names = [e.get("event") for e in d.log_events() if e.get("role") == "notifier"]
    assert "notifier.dispatcher_lost" in names and names.count("notifier.attached") >= 2


def test_lagging_notifier_catches_up_in_order(make_daemon):
    d = make_daemon({**FAST_NOTIFY, "notify": {**FAST_NOTIFY["notify"], "lag_warn": 10}}, start=False)
    out = command_sink(d, all=True, kinds=["completed"])
    d.write_config(d.cfg)
    d.start()
    pid = notifier_pid(d)
    os.kill(pid, signal.SIGSTOP)  # down, as far as the board can tell (heartbeats stop too)
    try:
        tids = [done_task(d, f"gap {i}") for i in range(20)]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: len(lines(out)) >= 20, what="20 deliveries after the gap")
    assert [x["doc"]["task_id"] for x in lines(out)] == tids
    lag = [e for e in d.log_events() if e.get("event") == "sink.lagging"]
    assert lag and lag[0]["lag"] > 10
    assert notifier_pid(d) == pid  # it caught up; it was not restarted


# ---- subscriptions -----------------------------------------------------------------------------


def test_subscriptions_filters_no_replay_and_archive(make_daemon):
    d = make_daemon(FAST_NOTIFY, start=False)
    out = command_sink(d)
    d.write_config(d.cfg)
    d.start()
    old = done_task(d, "old news", assignee="bob")
    # a filter subscription made now does not replay the completion above
    sub = d.cli_json("notify", "subscribe", "--sink", "hook", "--assignee", "bob", "--kinds", "completed,blocked")
    assert sub["created"] and sub["task_id"] is None and sub["kinds"] == ["blocked", "completed"]
    again = d.cli_json("notify", "subscribe", "--sink", "hook", "--assignee", "bob", "--kinds", "blocked,completed")
    assert again["id"] == sub["id"] and not again["created"]
    done_task(d, "not bob's", assignee="alice")
    new = done_task(d, "bob's new one", assignee="bob")
    # create --notify subscribes the task and its descendants
    parent = d.cli_json("create", "parent", "--notify", "hook")
    child = d.cli_json("create", "child", "--parent", parent["id"])
    d.cli("block", child["id"], "-r", "child stuck")
    wait_for(lambda: len(lines(out)) >= 2, what="two deliveries")
    got = [(x["doc"]["task_id"], x["doc"]["kind"]) for x in lines(out)]
    assert got == [(new, "completed"), (child["id"], "blocked")]
    assert old not in {x["doc"]["task_id"] for x in lines(out)}
    listed = d.cli_json("notify", "list")["subscriptions"]
    mine = [s for s in listed if s["task_id"] == parent["id"]]
    assert len(mine) == 1 and mine[0]["descendants"] and mine[0]["sink"] == "hook"
    human = d.cli("notify", "list").stdout
    assert parent["id"] in human and sub["id"] in human and "assignee=bob" in human
    # archiving removes the task's subscriptions
    d.cli("archive", parent["id"])
    assert not [s for s in d.cli_json("notify", "list")["subscriptions"] if s["task_id"] == parent["id"]]
    # unsubscribe by id, and errors are one clear line
    assert d.cli_json("notify", "unsubscribe", sub["id"])["removed"] == [sub["id"]]
    assert d.cli_json("notify", "list")["subscriptions"] == []
    bad = d.cli("notify", "unsubscribe", sub["id"], check=False)
    assert bad.returncode == 1 and sub["id"] in bad.stderr and bad.stderr.count("\n") == 1
    bad = d.cli("notify", "subscribe", "--sink", "nope", check=False)
    assert bad.returncode == 1 and "no sink 'nope'" in bad.stderr
    bad = d.cli("create", "x", "--notify", "nope", check=False)
    assert bad.returncode == 1 and "no sink 'nope'" in bad.stderr


def test_sink_added_by_reload_starts_at_the_end_of_the_log(make_daemon):
    d = make_daemon(FAST_NOTIFY)
    old = done_task(d, "before the sink existed")
    out = command_sink(d, "late", all=True)
    d.write_config(d.cfg)
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: any(s["name"] == "late" and s["cursor"] is not None
                         for s in d.cli_json("notify", "list")["sinks"]), what="the reloaded sink to attach")
    new = done_task(d, "after")
    wait_for(lambda: lines(out), what="a delivery to the new sink")
    assert [x["doc"]["task_id"] for x in lines(out)] == [new]
    assert old != new


# ---- live watch ------------------------------------------------------------------------------------


class Watch:
    """A running ``kanban watch``/``tail`` with a reader thread timestamping each line."""

    def __init__(self, d, *args: str) -> None:
        self.proc = subprocess.Popen([KANBAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=d.env(), bufsize=1)
        d.procs.append(self.proc)
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def events(self) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, json.loads(x)) for t, x in self.lines]

    def wait(self, pred, what: str) -> tuple[float, dict]:
        return wait_for(lambda: next(((t, e) for t, e in self.events() if pred(e)), None), interval=0.002,
                        what=what)

    def interrupt(self) -> subprocess.CompletedProcess:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        self.thread.join(5)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "", self.proc.stderr.read())


def test_watch_json_sees_events_within_100ms(make_daemon):
    d = make_daemon()
    w = Watch(d, "watch", "--json", "--kinds", "commented")
    t = d.rpc("task.create", {"title": "watched"})
    # live once it has seen a warm-up comment
    wait_for(lambda: w.lines or d.rpc("task.comment", {"id": t["id"], "body": "warm-up"}) and False,
             interval=0.1, what="the watch to be live")
    latencies = []
    for i in range(10):
        t0 = time.monotonic()
        c = d.rpc("task.comment", {"id": t["id"], "body": f"c{i}"})
        arrived, _ = w.wait(lambda e: e["payload"].get("comment") == c["id"], f"comment {i}")
        latencies.append(arrived - t0)
    assert statistics.median(latencies) < 0.100, latencies
    assert all(e["kind"] == "commented" for _, e in w.events())
    res = w.interrupt()
    assert res.returncode == 0 and "Traceback" not in res.stderr


def test_watch_filters_and_tail(make_daemon):
    d = make_daemon()
    a = d.rpc("task.create", {"title": "mine", "assignee": "bob"})
    d.rpc("task.comment", {"id": a["id"], "body": "history"})
    by_bob = Watch(d, "watch", "--json", "--assignee", "bob")
    finished = Watch(d, "watch", "--json", "--kinds", "completed,blocked")
    tail = Watch(d, "tail", a["id"], "--json")
    human = Watch(d, "tail", a["id"])
    w = d.rpc("task.create", {"title": "warm-up", "assignee": "bob"})

    def warm_up() -> bool:  # the streams are live once each has seen a warm-up block
        if by_bob.events() and finished.events():
            return True
        d.rpc("task.block", {"ids": [w["id"]], "reason": "warm-up"})
        d.rpc("task.unblock", {"ids": [w["id"]]})
        return False

    wait_for(warm_up, interval=0.1, what="the watches to be live")
    tail.wait(lambda e: e["kind"] == "commented", "tail to print recent history")
    b = d.rpc("task.create", {"title": "other", "assignee": "alice"})
    d.rpc("task.comment", {"id": b["id"], "body": "x"})
    d.rpc("task.block", {"ids": [b["id"]], "reason": "r"})
    d.rpc("task.comment", {"id": a["id"], "body": "live"})
    d.rpc("task.complete", {"ids": [a["id"]], "summary": "s"})
    for x in (by_bob, finished, tail):
        x.wait(lambda e: e["kind"] == "completed" and e["task_id"] == a["id"], "a's completion")
    assert {e["task_id"] for _, e in by_bob.events()} == {a["id"], w["id"]}
    seen = [(e["task_id"], e["kind"]) for _, e in finished.events() if e["task_id"] != w["id"]]
    assert seen == [(b["id"], "blocked"), (a["id"], "completed")]
    assert {e["kind"] for _, e in finished.events()} == {"blocked", "completed"}
    kinds = [e["kind"] for _, e in tail.events() if e["kind"] != "skipped_no_profile"]  # bob has no profile
    assert kinds == ["created", "commented", "commented", "completed"]
    assert {e["task_id"] for _, e in tail.events()} == {a["id"]}
    wait_for(lambda: len(human.lines) >= 4, what="human tail lines")
    assert all(f" {a['id']} " in line for _, line in human.lines)
    assert human.lines[-1][1].split()[3] == "completed"
    for x in (by_bob, finished, tail, human):
        res = x.interrupt()
        assert res.returncode == 0 and "Traceback" not in res.stderr
