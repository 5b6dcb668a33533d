"""Chaos: tasks run through real workers while roles, and the supervisor itself, are SIGKILLed.

Each worker is a tiny ``/bin/sh`` script. It appends ``start <task> <run> <pid>
<time>`` to a shared file (one ``write`` on an ``O_APPEND`` fd, so lines never
interleave), works briefly, completes its task through ``kanban complete``
(retrying while the daemon is down, as a real agent would), then appends
``end ...``. Meanwhile the test repeatedly SIGKILLs a random role, two roles
at once, or the whole supervisor followed by a fresh ``kanband`` on the same
state dir. Afterwards:

- every task is done, completed by exactly one run;
- no task ever had two runs alive at the same time (from the start/end records,
  and the board's own run records for runs that wrote no ``end``);
- no run id was started twice;
- there are no zombies: none under the daemon's processes, and none of the
  orphaned wrappers this test (a subreaper, standing in for systemd) inherits
  when a supervisor dies is left unreaped;
- no task is left ``running`` and no run is left open, and nothing but the
  daemon's own four processes is still alive.

Pacing is driven by progress (wait until N more tasks are done), not by
sleeping. ``CHAOS_SEED`` reproduces a run; the seed is printed on failure.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from client.rpc import Client, NotRunning, ServerError
from tests.harness import reap_orphans, wait_for, write_script

WORKER = r"""#!/bin/sh
out="{out}"
printf 'start %s %s %s %s\n' "$KANBAN_TASK" "$KANBAN_RUN" "$$" "$(date +%s.%N)" >> "$out"
sleep 0.$(( $$ % 3 + 1 ))
i=0
res=gaveup
while [ $i -lt 300 ]; do
    if msg=$(kanban complete --summary "run $KANBAN_RUN" 2>&1); then res=ok; break; fi
    case "$msg" in
        *stale_token*|*illegal_transition*|*not_found*) res="refused"; break;;
    esac
    i=$((i + 1))
    sleep 0.1
done
printf 'end %s %s %s %s %s\n' "$KANBAN_TASK" "$KANBAN_RUN" "$$" "$(date +%s.%N)" "$res" >> "$out"
"""

# "reaper!" kills the reaper, then its replacement as soon as it is forked (before it re-attaches
# and re-adopts); "dispatcher+reaper" kills both at once.
ACTIONS = ["dispatcher", "reaper", "notifier", "supervisor", "dispatcher+reaper", "reaper!"]
WEIGHTS = [20, 25, 10, 25, 10, 10]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Chaos:
    def __init__(self, d, rng: random.Random) -> None:
        self.d = d
        self.rng = rng
        self.log: list[str] = []
        self.reaped = 0

    def done_count(self) -> int:
        try:
            with Client(self.d.socket, retry=2.0, timeout=10.0) as c:
                return c.call("board.stats")["by_status"].get("done", 0)
        except (NotRunning, ServerError, OSError):
            return -1

    def roles(self) -> dict[str, int]:
        st = wait_for(lambda: self._status_ok(), timeout=30, what="every role ok")
        return {r["name"]: r["pid"] for r in st["roles"]}

    def _status_ok(self) -> dict | None:
        try:
            with Client(self.d.socket, retry=2.0, timeout=10.0) as c:
                st = c.call("daemon.status")
        except (NotRunning, ServerError, OSError):
            return None
        ok = {r["name"] for r in st["roles"] if r["state"] == "ok" and r["pid"]}
        return st if ok == {"dispatcher", "reaper", "notifier"} else None

    def reap(self) -> None:
        before = len(psutil.Process().children())
        reap_orphans()
        self.reaped += max(0, before - len(psutil.Process().children()))

    def act(self) -> None:
        action = self.rng.choices(ACTIONS, WEIGHTS)[0]
        self.log.append(action)
        if action == "supervisor":
            pids = self.roles()
            self.d.kill9()
            wait_for(lambda: not any(_alive(p) for p in pids.values()), timeout=5,
                     what="the roles of the killed supervisor to exit")
            self.reap()
            self.d.start(timeout=30)
        elif action == "reaper!":
            pids = self.roles()
            n = len(self.d.log_events())
            os.kill(pids["reaper"], signal.SIGKILL)
            new = wait_for(lambda: [e["child_pid"] for e in self.d.log_events()[n:]
                                    if e.get("event") == "role.started" and e.get("name") == "reaper"],
                           timeout=30, what="a new reaper to be forked")[0]
            try:
                os.kill(new, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: (st := self._status_ok()) and all(
                r["pid"] not in (pids["reaper"], new) for r in st["roles"] if r["name"] == "reaper"),
                timeout=30, what="reaper restarted twice")
        else:
            pids = self.roles()
            for name in action.split("+"):
                try:
                    os.kill(pids[name], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda: (st := self._status_ok()) and all(
                r["pid"] != pids[r["name"]] for r in st["roles"] if r["name"] in action.split("+")),
                timeout=30, what=f"{action} restarted")
        self.reap()


def run_chaos(make_daemon, n_tasks: int, step: tuple[int, int], deadline: float) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    d = make_daemon(start=False)
    out = Path(d.tmp, "records.txt")
    out.touch()
    worker = write_script(f"{d.tmp}/chaos-worker.sh", WORKER.format(out=out))
    d.cfg["profiles"] = {"w": {"command": [worker]}}
    d.cfg["dispatch"].update({"max_in_progress": 8, "tick": "0.5s", "crash_grace": "1s"})
    d.cfg["supervisor"].update({"flap_restarts": 1000, "backoff_max": "0.5s"})
    d.write_config(d.cfg)
    d.start()
    chaos = Chaos(d, rng)
    context = f"CHAOS_SEED={seed}"
    try:
        with Client(d.socket, retry=5.0) as c:
            ids = [c.call("task.create", {"title": f"chaos {i}", "assignee": "w"})["id"] for i in range(n_tasks)]
        t_end = time.monotonic() + deadline
        while True:
            done = wait_for(lambda: (n := chaos.done_count()) >= 0 and [n], timeout=30, what="board.stats")[0]
            if done >= n_tasks:
                break
            target = min(n_tasks, done + rng.randint(*step))
            left = max(5.0, t_end - time.monotonic())
            wait_for(lambda: chaos.done_count() >= target, timeout=left, interval=0.1,
                     what=f"{target}/{n_tasks} tasks done ({context}, actions {chaos.log})")
            chaos.reap()
            if target < n_tasks:
                chaos.act()
        check_invariants(d, ids, out, chaos, context)
        print(f"{context}: {n_tasks} tasks done through {len(chaos.log)} SIGKILLs {chaos.log}; "
              f"reaped {chaos.reaped} orphaned wrappers")
    except BaseException:
        print(f"{context}; actions: {chaos.log}\n--- daemon log tail ---\n{d.log()[-4000:]}")
        raise


def check_invariants(d, ids: list[str], out: Path, chaos: Chaos, context: str) -> None:
    # every task is done
    with Client(d.socket, retry=5.0) as c:
        tasks = {t["id"]: t for t in c.call("task.list", {"limit": len(ids) + 10})["tasks"]}
        runs = {tid: c.call("task.runs", {"id": tid})["runs"] for tid in ids}
    assert set(tasks) == set(ids)
    not_done = {t: tasks[t]["status"] for t in ids if tasks[t]["status"] != "done"}
    assert not not_done, f"{context}: tasks not done: {not_done}"

    # the start/end records
    starts: dict[str, tuple[str, float, int]] = {}
    ends: dict[str, tuple[float, str]] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts[0] == "start":
            _, task, run, pid, at = parts
            assert run not in starts, f"{context}: run {run} started twice"
            starts[run] = (task, float(at), int(pid))
        elif parts[0] == "end":
            _, task, run, pid, at, res = parts
            ends[run] = (float(at), res)

    for tid in ids:
        trs = runs[tid]
        completed = [r for r in trs if r["outcome"] == "completed"]
        assert len(completed) == 1, f"{context}: {tid} completed by {len(completed)} runs: {trs}"
        assert all(r["outcome"] is not None and r["ended_at"] for r in trs), \
            f"{context}: {tid} has a run left open: {trs}"
        # no two runs of the task alive at the same time
        intervals = []
        for r in trs:
            if r["id"] not in starts:
                continue  # never reached the worker's first line (e.g. lost before it started)
            begin = starts[r["id"]][1]
            end = ends[r["id"]][0] if r["id"] in ends else r["ended_at"]
            intervals.append((begin, end, r["id"], r["outcome"]))
        intervals.sort()
        for (b1, e1, r1, o1), (b2, e2, r2, o2) in zip(intervals, intervals[1:]):
            assert b2 >= e1, (f"{context}: task {tid} ran twice at once: {r1} ({o1}) {b1:.3f}-{e1:.3f} "
                              f"overlaps {r2} ({o2}) {b2:.3f}-{e2:.3f}")
    for run, (task, _, _) in starts.items():
        assert any(r["id"] == run for r in runs[task]), f"{context}: worker ran with unknown run {run}"

    # nothing but the daemon is left, and nothing is a zombie. (The daemon's own processes do
    # not show up in d.ours(): setproctitle overwrites their /proc/PID/environ.)
    sup = psutil.Process(d.pid)
    daemon_procs = [sup, *sup.children()]
    assert sorted(" ".join(p.cmdline()).strip() for p in daemon_procs) == [
        "kanband: dispatcher", "kanband: notifier", "kanband: reaper", "kanband: supervisor"]
    daemon_pids = {p.pid for p in daemon_procs}

    def leftovers() -> list:
        chaos.reap()
        extra = [(p.pid, p.name()) for p in d.ours() if p.pid not in daemon_pids]
        zombies = [(c.pid, c.name()) for p in daemon_procs for c in p.children()
                   if c.status() == psutil.STATUS_ZOMBIE]
        zombies += [(c.pid, c.name()) for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
        return extra + zombies

    wait_for(lambda: not leftovers(), timeout=15,
             what=f"no process but the daemon's, and no zombies ({context}): {leftovers()}")
    st = d.rpc("daemon.status")
    assert st["summary"]["running"] == 0 and all(r["state"] == "ok" for r in st["roles"])
    assert d.stop() == 0


def test_chaos_200_tasks(make_daemon):
    run_chaos(make_daemon, n_tasks=200, step=(1, 3), deadline=100.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_soak_1000_tasks(make_daemon):
    run_chaos(make_daemon, n_tasks=1000, step=(1, 4), deadline=700.0)
