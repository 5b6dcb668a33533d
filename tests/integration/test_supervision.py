"""Supervision and systemd integration (issue 4), against the real daemon.

Every test starts the real ``kanband``; sd_notify datagrams are read from the
``NOTIFY_SOCKET`` the harness binds (timestamps are CLOCK_MONOTONIC on
arrival). Waits poll observables (``wait_for``); the only pauses are the
stimulus itself, expressed as "wait until N watchdog intervals passed with no
ping".
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.harness import KANBAND, merge, reap_orphans, wait_for, write_script

ROLE_NAMES = ("dispatcher", "reaper", "notifier")
WD_USEC = 400_000          # WATCHDOG_USEC: a ping is due every 0.2 s
WD_HALF = WD_USEC / 2e6


# ---- helpers ----------------------------------------------------------------------


def status(d) -> dict:
    """``kanban status --json``: the real CLI, so the user-visible view is what we check."""
    return d.cli_json("status")


def role(st: dict, name: str) -> dict:
    found = [r for r in st["roles"] if r["name"] == name]
    return found[0] if found else {"name": name, "pid": None, "state": None, "restarts": None}


def pings(d, after: float = 0.0) -> list[float]:
    return [t for t, _ in d.notify.lines("WATCHDOG=1") if t > after]


def last_status_line(d) -> str:
    lines = d.notify.lines("STATUS=")
    return lines[-1][1] if lines else ""


def status_states(line: str) -> dict[str, str]:
    """``STATUS=1 running, ...; dispatcher ok, reaper unresponsive, ...`` -> ``{role: state}``."""
    roles_part = line.split("; ", 1)[1]
    return dict(item.split(" ", 1) for item in roles_part.split(", "))


def assert_watchdog_truthful(d) -> None:
    """In datagram order, WATCHDOG=1 never follows a STATUS= naming a role unresponsive, restarting or flapping."""
    current = ""
    for _, m in d.notify.lines():
        if m.startswith("STATUS="):
            current = m
        elif m == "WATCHDOG=1" and current:
            bad = {n: s for n, s in status_states(current).items() if s in ("unresponsive", "restarting", "flapping")}
            assert not bad, f"WATCHDOG=1 sent while {current!r}"


def events(d, event: str, **match) -> list[dict]:
    return [e for e in d.log_events() if e.get("event") == event and all(e.get(k) == v for k, v in match.items())]


def event_index(d, event: str, **match) -> int:
    evs = d.log_events()
    for i, e in enumerate(evs):
        if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
            return i
    raise AssertionError(f"no {event} {match} in the log:\n{d.log()}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def quiet_for(d, seconds: float, since: float) -> bool:
    """True once ``seconds`` passed since ``since`` and since the last WATCHDOG ping."""
    p = pings(d)
    return time.monotonic() - max([since, *p[-1:]]) >= seconds


def ts(e: dict) -> float:
    """An event's wall-clock timestamp (ISO, UTC) as epoch seconds."""
    from datetime import datetime
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


def kill_role_and_wait(d, name: str) -> tuple[int, int]:
    """SIGKILL one role; wait until the supervisor has a new, checked-in one. Returns (old, new) pids."""
    old = wait_for(lambda: (r := role(status(d), name))["state"] == "ok" and r["pid"], what=f"{name} ok")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (r := role(status(d), name))["pid"] not in (None, old) and r["state"] == "ok"
                   and r["pid"], timeout=20, what=f"{name} restarted")
    return old, new


def gate_worker(d) -> str:
    """A worker that waits for ``<tmp>/go-<task>`` to appear, then completes its task."""
    return write_script(f"{d.tmp}/gate.sh", f"""#!/bin/sh
echo "worker $$ for $KANBAN_TASK"
while [ ! -e "{d.tmp}/go-$KANBAN_TASK" ]; do sleep 0.05; done
exec kanban complete --summary "finished by $$"
""")


def task_run(d, task_id: str) -> dict:
    runs = d.rpc("task.runs", {"id": task_id})["runs"]
    return runs[-1]


# ---- READY ------------------------------------------------------------------------


def test_ready_only_after_every_role_checked_in(make_daemon):
    d = make_daemon(start=False, watchdog_usec=WD_USEC)
    proc = d.start()
    # At READY time every role already runs, and `kanban status` shows it ok.
    st = status(d)
    assert st["pid"] == proc.pid
    assert {r["name"]: r["state"] for r in st["roles"]} == {n: "ok" for n in ROLE_NAMES}, st["roles"]
    for r in st["roles"]:
        assert alive(r["pid"]), r
        assert psutil.Process(r["pid"]).ppid() == proc.pid
        assert "kanband: " + r["name"] in " ".join(psutil.Process(r["pid"]).cmdline())
    assert st["reaper_attached"] is True
    # In the log (one O_APPEND file shared by every process): each role started and
    # checked in, and the reaper attached (on both sides), before the supervisor sent READY.
    ready = event_index(d, "supervisor.ready")
    for name in ROLE_NAMES:
        assert event_index(d, "role.started", name=name) < ready
        assert event_index(d, "role.checked_in", name=name) < ready
    assert event_index(d, "reaper.attached", role="reaper") < ready
    assert event_index(d, "reaper.attached", role="dispatcher") < ready
    assert d.notify.count("READY=1") == 1
    # No watchdog ping before READY; the last STATUS before READY already says all ok.
    t_ready = d.notify.lines("READY=1")[0][0]
    assert all(t >= t_ready for t in pings(d))
    before = [m for t, m in d.notify.lines("STATUS=") if t <= t_ready]
    assert before and before[-1].endswith("dispatcher ok, reaper ok, notifier ok"), before


def test_no_ready_while_a_role_cannot_check_in(make_daemon):
    """With server.max_clients 0 the dispatcher refuses the reaper's connection: no READY.

    A reload that lifts the limit lets the reaper attach, and only then READY=1 comes.
    """
    d = make_daemon({"server": {"max_clients": 0}}, start=False, watchdog_usec=WD_USEC)
    proc = d.start(wait=False)
    wait_for(lambda: len(events(d, "socket.too_many_clients")) >= 3
             and events(d, "role.checked_in", name="dispatcher"), timeout=15,
             what="the reaper to be refused three times")
    assert proc.poll() is None
    assert d.notify.count("READY=1") == 0
    assert not pings(d), "WATCHDOG=1 before READY"
    assert "reaper starting" in last_status_line(d)
    assert not events(d, "role.checked_in", name="reaper")

    d.write_config(merge(d.cfg, {"server": {"max_clients": 16}}))
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: d.notify.count("READY=1") == 1, timeout=15, what="READY=1 after the reload")
    # a reload before READY is silent (no RELOADING=1 / extra READY=1)
    assert d.notify.count("RELOADING=1") == 0
    assert event_index(d, "config.reloaded") < event_index(d, "reaper.attached", role="reaper") \
        < event_index(d, "supervisor.ready")
    wait_for(lambda: len(pings(d)) >= 2, timeout=5, what="watchdog pings after READY")
    assert {r["state"] for r in status(d)["roles"]} == {"ok"}


def test_status_line_tracks_the_board(make_daemon):
    d = make_daemon(start=False)
    d.cfg["profiles"] = {"sh": {"command": [gate_worker(d)]}}
    d.write_config(d.cfg)
    d.start()
    for i in range(3):
        d.cli("create", f"idle {i}")                 # unassigned, no default: stays ready
    running = d.cli_json("create", "busy", "--assignee", "sh")["id"]
    d.wait_status(running, "running")
    want = "STATUS=1 running, 3 ready, 0 blocked; dispatcher ok, reaper ok, notifier ok"
    wait_for(lambda: d.notify.count(want), timeout=10, what=f"{want!r} (last: {last_status_line(d)!r})")
    Path(f"{d.tmp}/go-{running}").touch()
    d.wait_status(running, "done")
    wait_for(lambda: last_status_line(d).startswith("STATUS=0 running, 3 ready"), timeout=10,
             what=f"STATUS to follow the board (last: {last_status_line(d)!r})")


# ---- WATCHDOG -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ROLE_NAMES)
def test_watchdog_stops_while_a_role_is_stopped_and_resumes(make_daemon, name):
    stale = 1.0
    d = make_daemon({"supervisor": {"heartbeat_stale": f"{stale}s", "role_timeout": "30s"}},
                    watchdog_usec=WD_USEC)
    wait_for(lambda: len(pings(d)) >= 5, timeout=5, what="regular watchdog pings")
    p = pings(d)
    gaps = sorted(b - a for a, b in zip(p, p[1:]))
    assert 0.1 < gaps[len(gaps) // 2] < 0.35, f"healthy pings should come every {WD_HALF}s: {gaps}"
    pid = d.role_pids()[name]

    os.kill(pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        # the supervisor says so (STATUS=) and stops pinging; then 1.5 s (7 intervals) pass with no ping
        wait_for(lambda: status_states(last_status_line(d)).get(name) == "unresponsive", timeout=10,
                 what=f"STATUS= {name} unresponsive")
        wait_for(lambda: quiet_for(d, 1.5, t_stop), timeout=15, what="WATCHDOG=1 to stop")
        last = pings(d)[-1]
        # the last ping came no later than the heartbeat went stale (+ interval and scheduling slack)
        assert last - t_stop < stale + 0.2 + WD_HALF + 1.5, (last - t_stop)
    finally:
        os.kill(pid, signal.SIGCONT)
    t_cont = time.monotonic()
    wait_for(lambda: len(pings(d, after=t_cont)) >= 3, timeout=10, what="WATCHDOG=1 to resume")
    first = pings(d, after=t_cont)[0]
    assert first - t_cont < 2.5, f"pings resumed {first - t_cont:.2f}s after SIGCONT"
    assert not [t for t in pings(d) if last < t < t_cont], "a ping while the role was stopped"
    # in datagram order: STATUS unresponsive, no ping, STATUS all ok, pings again
    msgs = [m for _, m in d.notify.lines()]
    i_bad = next(i for i, m in enumerate(msgs) if m.startswith("STATUS=") and f"{name} unresponsive" in m)
    i_ok = next(i for i, m in enumerate(msgs) if i > i_bad and m.startswith("STATUS=")
                and set(status_states(m).values()) == {"ok"})
    assert "WATCHDOG=1" not in msgs[i_bad:i_ok] and "WATCHDOG=1" in msgs[i_ok:]
    assert_watchdog_truthful(d)
    # the role was not restarted: role_timeout (30 s) was never reached
    st = wait_for(lambda: (s := status(d)) and role(s, name)["state"] == "ok" and s, what=f"{name} ok again")
    assert role(st, name)["pid"] == pid and role(st, name)["restarts"] == 0
    assert not events(d, "role.died") and not events(d, "role.hung")


def test_hung_role_is_killed_and_restarted(make_daemon):
    """A role silent for role_timeout is SIGKILLed and restarted (a hung dispatcher cannot stay)."""
    d = make_daemon({"supervisor": {"heartbeat_stale": "0.6s", "role_timeout": "1.5s"}}, watchdog_usec=WD_USEC)
    pid = d.role_pids()["dispatcher"]
    os.kill(pid, signal.SIGSTOP)
    try:
        ev = wait_for(lambda: events(d, "role.hung", name="dispatcher"), timeout=15, what="role.hung")[0]
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert ev["level"] == "error" and ev["child_pid"] == pid and ev["silent"] >= 1.5
    st = wait_for(lambda: (s := status(d)) and role(s, "dispatcher")["state"] == "ok" and s, timeout=15,
                  what="dispatcher restarted")
    assert role(st, "dispatcher")["pid"] != pid and role(st, "dispatcher")["restarts"] == 1
    died = events(d, "role.died", name="dispatcher")
    assert died and died[0]["exit"] == -signal.SIGKILL
    assert_watchdog_truthful(d)


# ---- restarts with backoff --------------------------------------------------------------


@pytest.mark.parametrize("name", ROLE_NAMES)
def test_sigkilled_role_is_restarted(make_daemon, name):
    d = make_daemon(start=False)
    d.cfg["profiles"] = {"sh": {"command": [gate_worker(d)]}}
    d.write_config(d.cfg)
    d.start()
    before = [d.cli_json("create", f"before {i}")["id"] for i in range(3)]
    running = d.cli_json("create", "in flight", "--assignee", "sh")["id"]
    d.wait_status(running, "running")
    worker = wait_for(lambda: task_run(d, running)["worker_pid"], what="worker pid recorded")
    sup_pid = d.pid
    old = d.role_pids()[name]

    os.kill(old, signal.SIGKILL)
    # Clients ride out the restart: the socket stays bound by the supervisor, so new
    # connections queue until the new dispatcher accepts them.
    created = d.cli_json("create", "during restart")["id"]
    listed = {t["id"] for t in d.cli_json("list")["tasks"]}
    assert set(before) | {created, running} <= listed

    st = wait_for(lambda: (s := status(d)) and role(s, name)["pid"] not in (None, old)
                  and role(s, name)["state"] == "ok" and s, timeout=15, what=f"{name} restarted")
    r = role(st, name)
    assert r["restarts"] == 1
    assert alive(r["pid"]) and psutil.Process(r["pid"]).ppid() == sup_pid
    assert st["pid"] == sup_pid
    for other in ROLE_NAMES:
        if other != name:
            assert role(st, other)["restarts"] == 0
    text = d.cli("status").stdout
    assert re.search(rf"^{name}\s+{r['pid']}\s+ok\s+1\s", text, re.M), text

    died = events(d, "role.died", name=name)
    assert len(died) == 1 and died[0]["child_pid"] == old and died[0]["exit"] == -signal.SIGKILL
    assert died[0]["level"] == "error" and 0 < died[0]["restart_in"] <= 0.05
    restarted = events(d, "role.started", name=name, restarts=1)
    assert restarted and ts(restarted[0]) >= ts(died[0])

    # The board survived, and the in-flight worker was never disturbed by the restart.
    assert alive(worker)
    assert {t["id"] for t in d.cli_json("list")["tasks"]} >= set(before) | {created, running}
    Path(f"{d.tmp}/go-{running}").touch()
    done = d.wait_status(running, "done")
    assert done["summary"] == f"finished by {worker}"
    runs = d.rpc("task.runs", {"id": running})["runs"]
    assert [x["outcome"] for x in runs] == ["completed"], runs
    assert d.stop() == 0


def test_restarted_reaper_removes_the_files_of_runs_the_board_ended(make_daemon):
    """A reaper SIGKILLed after reporting a run's exit, before the acknowledgement arrived, leaves
    the run's files in <state>/runs (found by the chaos test). The next reaper removes the files
    of every run the board does not hold open, but keeps those whose lock a process holds."""
    d = make_daemon()
    runs_dir = Path(d.state, "runs")
    runs_dir.mkdir(exist_ok=True)
    stale = [runs_dir / f"r_00000000000a{ext}" for ext in (".pid", ".exit", ".lock", ".pid.tmp4242")]
    held = [runs_dir / "r_00000000000b.lock", runs_dir / "r_00000000000b.exit"]
    for p in stale + held:
        p.write_text("{}")
    fd = os.open(held[0], os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live wrapper holds its run's lock
        old = d.role_pids()["reaper"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: events(d, "reaper.attached", role="reaper") and
                 events(d, "reaper.attached", role="reaper")[-1]["pid"] != old, timeout=15,
                 what="a new reaper attached")
        wait_for(lambda: not any(p.exists() for p in stale), what=f"stale run files removed: {os.listdir(runs_dir)}")
        assert all(p.exists() for p in held), os.listdir(runs_dir)
        removed = events(d, "run.files_removed")
        assert [e["run"] for e in removed] == ["r_00000000000a"], removed
        assert sorted(removed[0]["files"]) == sorted(p.name for p in stale)
    finally:
        os.close(fd)
    assert d.stop() == 0


def test_all_roles_killed_at_once_repeatedly(make_daemon):
    """Several roles dying in one loop turn (one SIGCHLD, several channel EOFs) must not trip the supervisor."""
    d = make_daemon({"supervisor": {"flap_restarts": 100}}, watchdog_usec=WD_USEC)
    sup = d.pid
    for rnd in range(1, 9):
        pids = wait_for(lambda: (st := status(d)) and all(r["state"] == "ok" for r in st["roles"])
                        and {r["name"]: r["pid"] for r in st["roles"]}, timeout=20, what="every role ok")
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (st := status(d)) and all(r["state"] == "ok" and r["pid"] != pids[r["name"]]
                                                   and r["restarts"] == rnd for r in st["roles"]),
                 timeout=20, what=f"round {rnd}: every role restarted")
        assert d.proc.poll() is None, d.log()
    assert status(d)["pid"] == sup
    assert "Traceback" not in Path(d.log_path).read_text()
    assert_watchdog_truthful(d)
    assert len(events(d, "role.died")) == 24


def test_restart_delays_grow_then_reset(make_daemon):
    d = make_daemon({"supervisor": {"backoff_initial": "0.2s", "backoff_max": "5s", "backoff_reset": "2.5s",
                                    "flap_restarts": 50}})
    for _ in range(4):
        kill_role_and_wait(d, "notifier")
    died = events(d, "role.died", name="notifier")
    delays = [e["restart_in"] for e in died]
    assert len(delays) == 4
    # base 0.2 * 2**(n-1), times a jitter in [0.5, 1]: each delay is at least the previous
    for n, delay in enumerate(delays, 1):
        base = 0.2 * 2 ** (n - 1)
        assert base * 0.5 - 1e-3 <= delay <= base + 1e-3, (n, delays)
    assert delays == sorted(delays) and delays[-1] > 2 * delays[0], delays
    # each restart really waited its delay
    started = events(d, "role.started", name="notifier")[1:]
    for e_died, e_started in zip(died, started):
        assert ts(e_started) - ts(e_died) >= e_died["restart_in"] - 0.02
    assert role(status(d), "notifier")["restarts"] == 4

    # healthy for backoff_reset: the next death restarts at the initial delay again
    wait_for(lambda: time.time() - role(status(d), "notifier")["started_at"] > 2.7, timeout=15,
             what="notifier up for longer than backoff_reset")
    kill_role_and_wait(d, "notifier")
    last = events(d, "role.died", name="notifier")[-1]
    assert last["restart_in"] <= 0.2 + 1e-3, last
    assert role(status(d), "notifier")["restarts"] == 5


# ---- flapping -----------------------------------------------------------------------


def test_flapping_is_reported_and_stops_the_watchdog(make_daemon):
    d = make_daemon({"supervisor": {"flap_restarts": 2, "flap_window": "30s", "backoff_initial": "0.05s"}},
                    watchdog_usec=WD_USEC)
    wait_for(lambda: len(pings(d)) >= 2, timeout=5, what="watchdog pings")
    for _ in range(2):
        kill_role_and_wait(d, "notifier")
    assert not events(d, "role.flapping")
    pid = role(status(d), "notifier")["pid"]
    os.kill(pid, signal.SIGKILL)  # the third restart within the window
    ev = wait_for(lambda: events(d, "role.flapping", name="notifier"), timeout=10, what="role.flapping")[0]
    t_flap = time.monotonic()
    assert ev["level"] == "error" and ev["window"] == 30.0

    st = wait_for(lambda: (s := status(d))["flapping"] and s, timeout=10, what="daemon.status flapping")
    assert st["flapping"] == ["notifier"]
    assert role(st, "notifier")["restarts"] == 3
    wait_for(lambda: role(status(d), "notifier")["state"] == "flapping", what="notifier state flapping")
    assert "FLAPPING: notifier" in d.cli("status").stdout
    wait_for(lambda: "notifier flapping" in last_status_line(d), what="STATUS= notifier flapping")
    # the restarted notifier runs and heartbeats, yet no WATCHDOG=1 is sent any more
    wait_for(lambda: quiet_for(d, 1.5, t_flap), timeout=15, what="WATCHDOG=1 to stop")
    assert not pings(d, after=t_flap + 0.5), "watchdog fed while a role flaps"
    msgs = [m for _, m in d.notify.lines()]
    i_flap = next(i for i, m in enumerate(msgs) if m.startswith("STATUS=") and "notifier flapping" in m)
    assert "WATCHDOG=1" not in msgs[i_flap:]
    assert_watchdog_truthful(d)
    assert alive(role(status(d), "notifier")["pid"])


# ---- SIGHUP -------------------------------------------------------------------------


def test_sighup_bad_config_keeps_the_old_one_then_good_config_applies(make_daemon):
    d = make_daemon(start=False, watchdog_usec=WD_USEC)
    worker = write_script(f"{d.tmp}/ok.sh", "#!/bin/sh\nexec kanban complete --summary \"$KANBAN_PROFILE\"\n")
    good = merge(d.cfg, {"profiles": {"a": {"command": [worker]}}})
    d.write_config(good)
    d.start()
    pids = d.role_pids()
    t_b = d.cli_json("create", "for b", "--assignee", "b")["id"]
    wait_for(lambda: any(e["kind"] == "skipped_no_profile" for e in d.rpc("events.since", {"task": t_b})["events"]),
             what="skipped_no_profile")

    bad_variants = [
        ("unknown key", yaml_dump(merge(good, {"supervisor": {"bogus_key": 1}})), "supervisor.bogus_key"),
        ("wrong type", yaml_dump(merge(good, {"dispatch": {"max_in_progress": "many"}})), "dispatch.max_in_progress"),
        ("bad profile", yaml_dump(merge(good, {"profiles": {"b": {"command": [worker], "colour": "red"}}})),
         "profiles.b.colour"),
        ("invalid yaml", "dispatch: [unclosed\n", "invalid YAML"),
    ]
    for label, text, key in bad_variants:
        d.write_config(text)
        refused_before = len(events(d, "config.reload_refused"))
        ready_before, reloading_before = d.notify.count("READY=1"), d.notify.count("RELOADING=1")
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(d.pid, signal.SIGHUP)
        ev = wait_for(lambda: (e := events(d, "config.reload_refused"))[refused_before:] and e[-1], timeout=10,
                      what=f"reload refused ({label})")
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert ev["level"] == "error"
        assert d.config_path in ev["error"] and key in ev["error"], (label, ev)
        assert ev["file"] == d.config_path and ev["kept"] == d.config_path
        wait_for(lambda: d.notify.count("READY=1") == ready_before + 1, what="READY=1 after the refused reload")
        assert d.notify.count("RELOADING=1") == reloading_before + 1
        msgs = [m for _, m in d.notify.lines()]
        i = max(j for j, m in enumerate(msgs) if m == "RELOADING=1")
        assert msgs[i + 1].startswith("MONOTONIC_USEC=")
        assert t0 <= int(msgs[i + 1].split("=")[1]) <= t1
        assert "READY=1" in msgs[i + 2:]
    assert not events(d, "config.reloaded")

    # the daemon kept serving with the old config: same roles, profile a still runs, b still unknown
    assert d.role_pids() == pids
    t_a = d.cli_json("create", "for a", "--assignee", "a")["id"]
    assert d.wait_status(t_a, "done")["summary"] == "a"
    plan = {x["task"]: x for x in d.cli_json("plan")["plan"]}
    assert plan[t_b]["decision"] == "skip" and "no profile" in plan[t_b]["reason"]
    assert d.task(t_b)["status"] == "ready"
    t_now = time.monotonic()
    wait_for(lambda: len(pings(d, after=t_now)) >= 2, timeout=5, what="the watchdog still fed")

    # a good config that adds profile b takes effect on the next SIGHUP
    d.write_config(merge(good, {"profiles": {"b": {"command": [worker]}}}))
    ready_before = d.notify.count("READY=1")
    os.kill(d.pid, signal.SIGHUP)
    ev = wait_for(lambda: events(d, "config.reloaded"), timeout=10, what="config.reloaded")[0]
    assert ev["profiles"] == ["a", "b"]
    wait_for(lambda: d.notify.count("READY=1") == ready_before + 1, what="READY=1 after the reload")
    assert d.wait_status(t_b, "done")["summary"] == "b"
    assert d.role_pids() == pids


def yaml_dump(cfg: dict) -> str:
    import yaml
    return yaml.safe_dump(cfg)


def test_sighup_after_config_file_removed_keeps_the_old_config(make_daemon):
    d = make_daemon({"profiles": {"a": {"command": ["true"]}}})
    os.unlink(d.config_path)
    os.kill(d.pid, signal.SIGHUP)
    ev = wait_for(lambda: events(d, "config.reload_refused"), timeout=10, what="reload refused")[0]
    assert d.config_path in ev["error"] and "does not exist" in ev["error"]
    assert status(d)["config"] == d.config_path
    assert [x["decision"] for x in d.cli_json("plan")["plan"]] == []


# ---- graceful stop --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT to the process group"])
def test_graceful_stop_in_order(make_daemon, how):
    d = make_daemon()
    pids = d.role_pids()
    if how == "SIGTERM":
        d.proc.send_signal(signal.SIGTERM)
    else:  # Ctrl-C on a terminal: every process of the group gets SIGINT; only the supervisor acts
        os.killpg(d.pid, signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert d.notify.count("STOPPING=1") == 1
    stopped = [e["name"] for e in events(d, "role.stopped")]
    assert stopped == ["notifier", "reaper", "dispatcher"], stopped
    assert not events(d, "role.died")
    assert all(not alive(p) for p in pids.values())
    assert not os.path.exists(os.path.join(d.state, "kanband.pid"))
    assert not os.path.exists(d.socket)


def test_drain_asks_systemd_for_more_stop_time(make_daemon):
    d = make_daemon(start=False)
    d.cfg["profiles"] = {"sh": {"command": [gate_worker(d)]}}
    d.cfg["dispatch"].update({"on_shutdown": "drain", "drain_timeout": "60s"})
    d.write_config(d.cfg)
    d.start()
    tid = d.cli_json("create", "drained", "--assignee", "sh")["id"]
    d.wait_status(tid, "running")
    d.proc.send_signal(signal.SIGTERM)
    ext = wait_for(lambda: d.notify.lines("EXTEND_TIMEOUT_USEC="), timeout=10, what="EXTEND_TIMEOUT_USEC")
    usec = int(ext[0][1].split("=")[1])
    assert 60e6 <= usec <= 120e6, usec      # drain_timeout + kill_grace + the reaper's stop_timeout + slack
    msgs = [m for _, m in d.notify.lines()]
    assert msgs.index("STOPPING=1") < msgs.index(ext[0][1])
    Path(f"{d.tmp}/go-{tid}").touch()
    assert d.proc.wait(30) == 0
    assert [e["name"] for e in events(d, "role.stopped")] == ["notifier", "reaper", "dispatcher"]


# ---- pidfile ---------------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_pidfile_is_replaced(make_daemon):
    d = make_daemon(start=False)
    os.makedirs(d.state, mode=0o700)
    stale = dead_pid()
    Path(d.state, "kanband.pid").write_text(f"{stale}\n")
    d.start()
    ev = events(d, "pidfile.stale_replaced")
    assert len(ev) == 1 and ev[0]["old_pid"] == stale and ev[0]["level"] == "warning"
    assert Path(d.state, "kanband.pid").read_text() == f"{d.pid}\n"


@pytest.mark.parametrize("same_socket", [True, False])
def test_live_daemon_refuses_a_second_start(make_daemon, same_socket):
    d = make_daemon()
    sock = d.socket if same_socket else os.path.join(d.tmp, "other.sock")
    res = subprocess.run([KANBAND, "--config", d.config_path, "--state-dir", d.state, "--socket", sock],
                         capture_output=True, text=True, env=d.env(), timeout=30, cwd=d.tmp)
    assert res.returncode == 1, res
    assert res.stderr.count("\n") == 1 and "already running" in res.stderr and f"pid {d.pid}" in res.stderr, \
        res.stderr
    assert Path(d.state, "kanband.pid").read_text() == f"{d.pid}\n"
    assert not os.path.exists(os.path.join(d.tmp, "other.sock"))
    assert status(d)["pid"] == d.pid


def test_pidfile_is_atomic_and_removed_only_if_ours(make_daemon):
    d = make_daemon(start=False)
    pidfile = Path(d.state, "kanband.pid")
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.add(pidfile.read_text())
            except FileNotFoundError:
                pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        d.start()
        wait_for(lambda: seen, what="the pidfile to be seen")
    finally:
        done.set()
        t.join(5)
    # a reader only ever sees the whole content: never an empty or partial file
    assert seen == {f"{d.pid}\n"}, seen
    assert not [f for f in os.listdir(d.state) if "tmp" in f], os.listdir(d.state)
    assert d.stop() == 0
    assert not pidfile.exists()

    # a pidfile that no longer holds our pid is not ours to remove
    d.start()
    pidfile.write_text("4194301\n")
    assert d.stop() == 0
    assert pidfile.read_text() == "4194301\n"


# ---- the supervisor itself dies ---------------------------------------------------------


@pytest.mark.parametrize("on_shutdown", ["leave", "kill"])
def test_supervisor_sigkill_roles_exit_workers_survive_and_are_readopted(make_daemon, on_shutdown):
    d = make_daemon(start=False)
    d.cfg["profiles"] = {"sh": {"command": [gate_worker(d)]}}
    d.cfg["dispatch"]["on_shutdown"] = on_shutdown
    d.write_config(d.cfg)
    d.start()
    tid = d.cli_json("create", "survives", "--assignee", "sh")["id"]
    d.wait_status(tid, "running")
    run = wait_for(lambda: (r := task_run(d, tid))["worker_pid"] and r, what="worker pid recorded")
    old_sup = d.pid
    role_pids = d.role_pids()

    d.kill9()
    # the roles notice at once (EOF on their channel, PDEATHSIG) and exit
    t0 = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in role_pids.values()), timeout=3, what="roles to exit")
    assert time.monotonic() - t0 < 3
    # the worker is not a role: it keeps running (whatever on_shutdown says: this was no shutdown)
    assert alive(run["worker_pid"]) and alive(run["pid"])
    # the lock and the socket are free
    fd = os.open(os.path.join(d.state, "kanband.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError) as exc:
            s.connect(d.socket)
        assert exc.value.errno in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        s.close()

    d.start()  # same state dir; waits for READY=1
    assert d.pid != old_sup
    stale = events(d, "pidfile.stale_replaced")
    assert stale and stale[-1]["old_pid"] == old_sup
    adopted = wait_for(lambda: events(d, "worker.adopted", run=run["id"]), what="worker.adopted")
    assert adopted[0]["wrapper_pid"] == run["pid"]
    assert alive(run["worker_pid"])
    assert d.task(tid)["status"] == "running"

    Path(f"{d.tmp}/go-{tid}").touch()
    done = d.wait_status(tid, "done")
    assert done["summary"] == f"finished by {run['worker_pid']}"
    runs = d.rpc("task.runs", {"id": tid})["runs"]
    assert [(x["id"], x["outcome"]) for x in runs] == [(run["id"], "completed")]
    # the old wrapper was orphaned to us (the test is the subreaper, as systemd would be)
    wait_for(lambda: not alive(run["pid"]), what="the wrapper to exit")
    reap_orphans()
    assert not [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]


# ---- config check and journald -----------------------------------------------------------


def test_check_config(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("profiles:\n  a:\n    command: [echo, hi]\nsupervisor:\n  heartbeat_interval: 500ms\n")
    res = subprocess.run([KANBAND, "--check-config", "--config", str(good)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and "config OK" in res.stdout and str(good) in res.stdout, res
    assert sorted(os.listdir(tmp_path)) == ["good.yaml"]  # validated only: no state, no socket

    bad = tmp_path / "bad.yaml"
    for text, key in [("supervisor:\n  flap_window: soon\n", "supervisor.flap_window"),
                      ("supervisor:\n  nope: 1\n", "supervisor.nope"),
                      ("profiles:\n  a:\n    command: []\n", "profiles.a.command")]:
        bad.write_text(text)
        res = subprocess.run([KANBAND, "--check-config", "--config", str(bad)], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 2, res
        assert str(bad) in res.stderr and key in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert not res.stdout
    res = subprocess.run([KANBAND, "--check-config", "--config", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "missing.yaml" in res.stderr


def test_journald_format(make_daemon):
    d = make_daemon(start=False)
    os.makedirs(d.state, mode=0o700)
    Path(d.state, "kanband.pid").write_text(f"{dead_pid()}\n")   # -> a warning
    Path(d.log_path).touch()
    st = os.stat(d.log_path)
    plain_env = d.env
    d.env = lambda extra=None: {**plain_env(extra), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    d.start()
    old, _ = kill_role_and_wait(d, "notifier")                    # -> an error
    assert d.stop() == 0

    lines = [ln for ln in Path(d.log_path).read_text().splitlines() if ln.strip()]
    assert lines
    prio = {"error": 3, "warning": 4, "info": 6, "debug": 7}
    seen = set()
    for ln in lines:
        m = re.match(r"^<(\d)>(\{.*\})$", ln)
        assert m, f"not a journald line: {ln!r}"
        ev = json.loads(m.group(2))
        for k in ("level", "event", "role", "pid", "timestamp"):
            assert k in ev, (k, ln)
        assert int(m.group(1)) == prio[ev["level"]], ln
        assert re.match(r"^[a-z_]+\.[a-z_]+$", ev["event"]), ev["event"]
        seen.add(m.group(1))
    assert {"3", "4", "6"} <= seen, seen
    died = [json.loads(ln[3:]) for ln in lines if '"role.died"' in ln]
    assert died[0]["child_pid"] == old and died[0]["role"] == "supervisor"
    roles_seen = {json.loads(ln[3:])["role"] for ln in lines}
    assert roles_seen >= {"supervisor", "dispatcher", "reaper"}

    # errors printed before logging is set up carry the priority too when stderr is the journal
    d.start()
    with open(d.log_path, "ab") as err:
        res = subprocess.run([KANBAND, "--config", d.config_path, "--state-dir", d.state, "--socket", d.socket],
                             stdout=subprocess.DEVNULL, stderr=err, env=d.env(), timeout=30, cwd=d.tmp)
    assert res.returncode == 1
    last = Path(d.log_path).read_text().splitlines()[-1]
    assert last.startswith("<3>kanband: ") and "already running" in last, last


def test_journal_stream_of_another_file_is_ignored(make_daemon):
    """JOURNAL_STREAM inherited from a parent whose stdout differs from ours: plain JSON."""
    d = make_daemon(start=False)
    other = os.stat(d.tmp)
    plain_env = d.env
    d.env = lambda extra=None: {**plain_env(extra), "JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}
    d.start()
    assert d.stop() == 0
    lines = [ln for ln in Path(d.log_path).read_text().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") for ln in lines), lines[:3]


def test_watchdog_deadline_overrides_a_longer_configured_staleness(make_daemon):
    """WATCHDOG_USEC=1 s with heartbeat_stale 15 s configured: a SIGSTOPped dispatcher is judged
    within WatchdogSec/2, not 15 s, and the pings stop before systemd's deadline would pass."""
    wd = 1_000_000
    d = make_daemon({"supervisor": {"heartbeat_interval": "5s", "heartbeat_stale": "15s", "role_timeout": "60s"}},
                    watchdog_usec=wd)
    wait_for(lambda: len(pings(d)) >= 3, timeout=5, what="regular watchdog pings")
    pid = d.role_pids()["dispatcher"]
    os.kill(pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        wait_for(lambda: status_states(last_status_line(d)).get("dispatcher") == "unresponsive", timeout=5,
                 what="STATUS= dispatcher unresponsive")
        t_bad = d.notify.lines("STATUS=")[-1][0]
        # stale <= WatchdogSec/2 (0.5 s) after the last heartbeat, which came at most WatchdogSec/4 before
        assert t_bad - t_stop < 0.5 + 0.25 + 0.5, f"judged unresponsive {t_bad - t_stop:.2f}s after SIGSTOP"
        wait_for(lambda: quiet_for(d, 2.0, t_stop), timeout=10, what="WATCHDOG=1 to stop")
        assert pings(d)[-1] - t_stop < wd / 1e6, "a ping went out after systemd's deadline could have passed"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: status_states(last_status_line(d)).get("dispatcher") == "ok", timeout=10, what="ok again")
