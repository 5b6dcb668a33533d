"""Chaos: tasks run through real workers while roles, the supervisor, run wrappers and workers are
SIGKILLed, and operators block, unblock, archive, reassign and kill running tasks.

Each worker is a tiny ``/bin/sh`` script. Once it runs, it appends ``start <task> <run> <pid>
<time> <profile>`` to a shared file (one ``write`` on an ``O_APPEND`` fd, so lines never
interleave). Some workers leave a child behind for the run's containment to end: ``setsid
sleep``, a plain background ``sleep``, or a double-forked ``sleep`` that ignores SIGTERM (each
sleeps 300 s, so one that escaped its run is still alive when the test ends). The worker works
briefly, completes its task through ``kanban complete`` (retrying while the daemon is down, as
a real agent would), then appends ``end ...``. A SIGKILLed worker writes no ``end``.

Every task starts in triage; the test promotes them as the injections go (about
``n_tasks / n_inject`` per injection, and enough to keep the caps full), so the injections are
spread over all the tasks and always find running ones to hit. An injection is one of:

- roles: SIGKILL a random role, two roles at once, the reaper and then its replacement, or the
  whole supervisor followed by a fresh ``kanband`` on the same state dir;
- ``wrapper``: SIGKILL a live run's wrapper (its pid from ``<state>/runs/<run>.pid``, checked
  through a pidfd): the reaper must sweep what is left of the run before the run may end;
- ``worker``: SIGKILL a live run's worker;
- storms on running tasks through the real ``kanban`` CLI: ``block`` (undone at once, or some
  injections later, by ``unblock`` or ``retry``), ``archive``, ``assign`` to the other profile
  (and back, at once or never), ``kill``, and ``kill --block`` (undone later).

Afterwards, with ``dispatch.max_in_progress`` below the sum of two profiles' caps:

- 0 lost: every task the test did not archive is done, completed by exactly one run; the
  archived ones are exactly those the test archived; nothing is left blocked; a run failed
  (``crashed``, ``protocol_violation``) only if the test SIGKILLed its worker or wrapper; a
  run is ``lost`` only if the test SIGKILLed its wrapper (the witness of the worker's exit) or
  no worker of it was ever seen (the reaper died around the fork);
- 0 tasks with two live workers at any instant: a run lives from its worker's ``start`` record
  (the board's ``started_at`` if it was killed before writing one) until the later of its
  ``end`` record and the board's ``ended_at`` (set only once no process of the run is alive);
  the runs of one task never overlap;
- caps never exceeded: at no instant do more runs overlap than the global cap, or than a
  profile's cap for that profile;
- 0 zombies (none under the daemon, none of the orphaned wrappers this test inherits as a
  subreaper when a supervisor dies), 0 stuck running (no task running, every run ended, no run
  file left), 0 leftover processes (none carrying this daemon's ``KANBAN_TEST_ID`` and a
  ``KANBAN_RUN``, and nothing but the daemon's four processes).

``CHAOS_SEED`` reproduces a run's choices (not its timing); the seed is printed on failure,
with the injections and every daemon log line naming the runs and tasks the failure names.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from client.rpc import Client, NotRunning, ServerError
from tests.harness import reap_orphans, wait_for, write_script

WORKER = r"""#!/bin/sh
out="{out}"
printf 'start %s %s %s %s %s\n' "$KANBAN_TASK" "$KANBAN_RUN" "$$" "$(date +%s.%N)" "$KANBAN_PROFILE" >> "$out"
case $(( $$ % 10 )) in
    0) setsid sleep 300 & ;;
    1) sleep 300 & ;;
    2) (setsid sh -c 'trap "" TERM; exec sleep 300' &) ;;
esac
sleep 0.$(( $$ % 7 + 2 ))
i=0
res=gaveup
while [ $i -lt 300 ]; do
    if msg=$(kanban complete --summary "run $KANBAN_RUN" 2>&1); then res=ok; break; fi
    case "$msg" in
        *stale_token*|*illegal_transition*|*not_found*|*permission_denied*) res="refused"; echo "$msg"; break;;
    esac
    i=$((i + 1))
    sleep 0.1
done
printf 'end %s %s %s %s %s\n' "$KANBAN_TASK" "$KANBAN_RUN" "$$" "$(date +%s.%N)" "$res" >> "$out"
"""

PROFILES = {"a": 4, "b": 3}  # per-profile caps; the global cap (5) is below their sum
GLOBAL_CAP = 5

# "reaper!" kills the reaper, then its replacement as soon as it is forked (before it re-attaches
# and re-adopts); "dispatcher+reaper" kills both at once.
ROLE_ACTIONS = ["dispatcher", "reaper", "notifier", "supervisor", "dispatcher+reaper", "reaper!"]
MISS_TRIES = 5  # attempts of an injection that found nothing to hit
ACTIONS = {  # action -> weight
    "dispatcher": 4, "reaper": 5, "notifier": 2, "supervisor": 5, "dispatcher+reaper": 2, "reaper!": 2,
    "wrapper": 18, "worker": 18,
    "block": 10, "archive": 3, "reassign": 11, "kill": 12, "kill_block": 8,
}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _read(path: str, limit: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


class Chaos:
    """The injections, and what the test did deliberately (archived, blocked, killed)."""

    def __init__(self, d, rng: random.Random) -> None:
        self.d = d
        self.rng = rng
        self.log: list[str] = []          # every injection, with what it hit
        self.counts: collections.Counter[str] = collections.Counter()
        self.reaped = 0
        self.archived: set[str] = set()
        self.blocked: dict[str, int] = {}  # task -> injection number at which the test unblocks it
        self.wrapper_killed: set[str] = set()
        self.worker_killed: set[str] = set()

    # ---- observing ------------------------------------------------------------------

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

    def running_tasks(self) -> list[dict]:
        self.roles()
        with Client(self.d.socket, retry=5.0, timeout=10.0) as c:
            return c.call("task.list", {"status": ["running"], "limit": 1000})["tasks"]

    def live_runs(self) -> list[tuple[str, dict]]:
        """Runs with a wrapper on record: ``(run id, contents of <state>/runs/<run>.pid)``."""
        out = []
        for p in sorted(Path(self.d.state, "runs").glob("r_*.pid")):
            try:
                info = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            out.append((p.name[:-4], info))
        return out

    def reap(self) -> None:
        before = len(psutil.Process().children())
        reap_orphans()
        self.reaped += max(0, before - len(psutil.Process().children()))

    # ---- injecting --------------------------------------------------------------------

    def act(self, n: int) -> None:
        """Injection number ``n``: one random action, then the unblocks that are due."""
        action = self.rng.choices(list(ACTIONS), list(ACTIONS.values()))[0]
        if action in ROLE_ACTIONS:
            self.kill_role(action)
            self.note(action)
        else:
            # a run or a running task to hit: if there is none (or the task finished before the
            # storm reached it), wait for one to be running and try again, a few times
            for _ in range(MISS_TRIES):
                if self.kill_run_process(action) if action in ("wrapper", "worker") else self.storm(action, n):
                    break
                self.counts[f"{action}-retried"] += 1
                if self.blocked:  # nothing may be left to run but what the test blocked: unblock one early
                    self.unblock(min(self.blocked, key=self.blocked.__getitem__))
                try:
                    wait_for(lambda: self.running_tasks(), timeout=2, interval=0.02, what="a running task")
                except AssertionError:
                    pass
            else:
                self.note(f"{action} (missed {MISS_TRIES} times)", f"{action}-missed")
        for task, at in sorted(self.blocked.items()):
            if at <= n:
                self.unblock(task)
        self.reap()

    def note(self, what: str, kind: str | None = None) -> None:
        self.log.append(what)
        self.counts[kind or what.split()[0]] += 1

    def kill_role(self, action: str) -> None:
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

    def kill_run_process(self, which: str) -> bool:
        """SIGKILL the wrapper or the worker of a random live run, checked through a pidfd
        (the wrapper by its title ``kanband: run <run>``, the worker by ``KANBAN_RUN=<run>``
        and our ``KANBAN_TEST_ID`` in its environment), so a reused pid is never hit."""
        runs = self.live_runs()
        self.rng.shuffle(runs)
        for run, info in runs:
            pid = info.get("pid") if which == "wrapper" else info.get("worker_pid")
            if not pid:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if which == "wrapper":
                    ours = _read(f"/proc/{pid}/cmdline", 256).startswith(f"kanband: run {run}".encode())
                else:
                    env = _read(f"/proc/{pid}/environ").split(b"\0")
                    ours = f"KANBAN_RUN={run}".encode() in env and \
                        f"KANBAN_TEST_ID={self.d.tmp}".encode() in env
                if not ours:
                    continue
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            finally:
                os.close(fd)
            (self.wrapper_killed if which == "wrapper" else self.worker_killed).add(run)
            self.note(f"{which} {run} pid {pid}", which)
            return True
        return False

    def cli(self, *args: str) -> tuple[bool, str]:
        """Run the real ``kanban`` CLI; a refusal because the task moved on is expected."""
        res = self.d.cli(*args, check=False)
        if res.returncode == 0:
            return True, ""
        err = res.stderr.strip()
        assert "illegal_transition" in err or "conflict" in err, f"kanban {' '.join(args)}: {err}"
        return False, err

    def storm(self, action: str, n: int) -> bool:
        """An operator's storm on a random running task; False if it found none, or the task
        finished before the storm reached it."""
        running = [t for t in self.running_tasks() if t["id"] not in self.archived]
        if not running:
            return False
        t = self.rng.choice(running)
        tid = t["id"]
        if action == "block":
            ok, _ = self.cli("block", tid, "-r", "chaos storm")
            if ok:  # unblocked at once (this injection), or up to 5 injections later
                self.blocked[tid] = n + self.rng.randint(1, 5) if self.rng.random() < 0.5 else n
                self.note(f"block {tid}", "block")
            return ok
        elif action == "kill_block":
            ok, _ = self.cli("kill", tid, "--block", "chaos storm")
            if ok:
                self.blocked[tid] = n + self.rng.randint(0, 5)
                self.note(f"kill --block {tid}", "kill_block")
            return ok
        elif action == "kill":
            ok, _ = self.cli("kill", tid)
            if ok:
                self.note(f"kill {tid}", "kill")
            return ok
        elif action == "archive":
            ok, _ = self.cli("archive", tid)
            if ok:  # a task done meanwhile is archived all the same
                self.archived.add(tid)
                self.note(f"archive {tid}", "archive")
            return ok
        elif action == "reassign":
            other = "b" if t["assignee"] == "a" else "a"
            self.cli("assign", tid, other)
            back = self.rng.random() < 0.7
            if back:
                self.cli("assign", tid, t["assignee"])
            self.note(f"assign {tid} {other}{' and back' if back else ''}", "reassign")
            return True
        raise AssertionError(f"unknown storm {action}")

    def unblock(self, tid: str) -> None:
        self.blocked.pop(tid)
        if tid in self.archived:
            return
        verb = self.rng.choice(["unblock", "retry"])
        res = self.d.cli(verb, tid, check=False)
        assert res.returncode == 0, f"kanban {verb} {tid}: {res.stderr.strip()}"
        self.counts[verb] += 1


def run_chaos(make_daemon, n_tasks: int, n_inject: int, deadline: float) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    rng = random.Random(seed)
    d = make_daemon(start=False)
    out = Path(d.tmp, "records.txt")
    out.touch()
    worker = write_script(f"{d.tmp}/chaos-worker.sh", WORKER.format(out=out))
    d.cfg["profiles"] = {name: {"command": [worker], "max_in_progress": cap} for name, cap in PROFILES.items()}
    d.cfg["dispatch"].update({"max_in_progress": GLOBAL_CAP, "tick": "0.5s", "crash_grace": "1s",
                              "failure_limit": 1000})  # killed workers crash; the breaker is not under test
    d.cfg["supervisor"].update({"flap_restarts": 1000, "backoff_max": "0.5s"})
    d.write_config(d.cfg)
    d.start()
    chaos = Chaos(d, rng)
    context = f"CHAOS_SEED={seed}"
    t0 = time.monotonic()
    try:
        # Every task starts in triage; the test promotes them as the injections go, about
        # n_tasks/n_inject per injection and always enough that every cap is full, so the
        # injections are spread over all the tasks and each finds running tasks to hit.
        with Client(d.socket, retry=5.0) as c:
            ids = [c.call("task.create", {"title": f"chaos {i}", "assignee": rng.choice(list(PROFILES)),
                                          "triage": True})["id"] for i in range(n_tasks)]
        t_end = time.monotonic() + deadline
        promoted = 0

        def promote(upto: int) -> None:
            nonlocal promoted
            with Client(d.socket, retry=5.0) as c:
                while promoted < min(upto, n_tasks):
                    c.call("task.promote", {"id": ids[promoted]})
                    promoted += 1

        def done() -> int:
            return wait_for(lambda: (n := chaos.done_count()) >= 0 and [n], timeout=30, what="board.stats")[0]

        for n in range(n_inject):
            now_done = done()
            on_schedule = -(-(n + 1) * n_tasks // n_inject)
            caps_full = now_done + len(chaos.archived) + len(chaos.blocked) + GLOBAL_CAP + 2
            promote(min(max(on_schedule, caps_full), on_schedule + 2 * GLOBAL_CAP))
            # sometimes let one more task finish first (a progress wait, not a sleep)
            target = min(now_done + rng.randint(0, 1), promoted - len(chaos.archived) - len(chaos.blocked))
            wait_for(lambda: chaos.done_count() >= target, timeout=max(5.0, t_end - time.monotonic()),
                     interval=0.05, what=f"{target}/{n_tasks} tasks done ({context}, injections {chaos.log})")
            chaos.reap()
            chaos.act(n)
        promote(n_tasks)
        for tid in sorted(chaos.blocked):
            chaos.unblock(tid)
        want = n_tasks - len(chaos.archived)
        wait_for(lambda: chaos.done_count() >= want, timeout=max(5.0, t_end - time.monotonic()), interval=0.1,
                 what=f"{want} tasks done ({context}, injections {chaos.log})")
        missed = sum(n for kind, n in chaos.counts.items() if kind.endswith("-missed"))
        assert missed <= n_inject // 20, f"{context}: {missed} of {n_inject} injections found nothing to hit"
        check_invariants(d, ids, out, chaos, context)
        print(f"{context}: {n_tasks} tasks, {n_inject} injections in {time.monotonic() - t0:.1f}s: "
              f"{dict(sorted(chaos.counts.items()))}; reaped {chaos.reaped} orphaned wrappers")
    except BaseException as exc:
        print(f"{context}; injections: {chaos.log}\n--- daemon log tail ---\n{d.log()[-4000:]}")
        try:
            with Client(d.socket, retry=2.0, timeout=10.0) as c:
                print(f"--- board ---\n{c.call('board.stats')}\n{c.call('dispatch.plan')}")
                for t in c.call("task.list", {"status": ["running", "blocked", "ready", "todo"], "limit": 50})["tasks"]:
                    print(t["id"], t["status"], t.get("current_run"), c.call("task.runs", {"id": t["id"]})["runs"][-1:])
        except (NotRunning, ServerError, OSError) as err:
            print(f"--- board unavailable: {err}")
        named = set(re.findall(r"\b[rt]_[0-9a-f]{8,12}\b", str(exc)))
        if named:  # every daemon log line about the runs and tasks the failure names
            lines = Path(d.log_path).read_text(errors="replace").splitlines()
            print(f"--- daemon log lines naming {sorted(named)} ---")
            print("\n".join(line for line in lines if any(x in line for x in named))[-20000:])
        raise


def read_records(out: Path, context: str) -> tuple[dict[str, tuple[str, float, int, str]], dict[str, float]]:
    """The workers' records: ``{run: (task, start, pid, profile)}`` and ``{run: end}``."""
    starts: dict[str, tuple[str, float, int, str]] = {}
    ends: dict[str, float] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts[0] == "start":
            _, task, run, pid, at, profile = parts
            assert run not in starts, f"{context}: run {run} started twice"
            starts[run] = (task, float(at), int(pid), profile)
        elif parts[0] == "end":
            _, task, run, pid, at, res = parts
            ends[run] = float(at)
    return starts, ends


def max_overlap(intervals: list[tuple[float, float]]) -> tuple[int, float]:
    """The most intervals alive at one instant, and that instant (an interval is ``[begin, end)``)."""
    points = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals])
    best, at, cur = 0, 0.0, 0
    for t, delta in points:  # at equal times an end (-1) sorts before a start (+1)
        cur += delta
        if cur > best:
            best, at = cur, t
    return best, at


def check_invariants(d, ids: list[str], out: Path, chaos: Chaos, context: str) -> None:
    def board() -> tuple[dict, dict]:
        with Client(d.socket, retry=5.0) as c:
            tasks = {t["id"]: t for t in c.call("task.list", {"limit": len(ids) + 10, "archived": True})["tasks"]}
            runs = {tid: c.call("task.runs", {"id": tid})["runs"] for tid in ids}
        return tasks, runs

    def open_runs(runs: dict) -> list[dict]:
        return [r for trs in runs.values() for r in trs
                if r["state"] != "ended" or r["outcome"] is None or not r["ended_at"]]

    # a run whose worker completed may still be ending its leftovers (TERM, KILL after kill_grace)
    try:
        tasks, runs = wait_for(lambda: (b := board()) and not open_runs(b[1]) and b, timeout=15, interval=0.2,
                               what="every run to end")
    except AssertionError:
        tasks, runs = board()
        raise AssertionError(f"{context}: runs left open: {open_runs(runs)}") from None
    assert set(tasks) == set(ids)

    # 0 lost: every task is done but those the test archived; nothing left blocked or running
    archived = {t for t in ids if tasks[t]["status"] == "archived"}
    assert archived == chaos.archived, f"{context}: archived {sorted(archived)}, the test archived " \
                                       f"{sorted(chaos.archived)}"
    not_done = {t: tasks[t]["status"] for t in ids if tasks[t]["status"] != "done" and t not in archived}
    assert not not_done, f"{context}: tasks not done: {not_done}"
    all_runs = [r for trs in runs.values() for r in trs]
    for tid in ids:
        completed = [r["id"] for r in runs[tid] if r["outcome"] == "completed"]
        if tid in archived:
            assert len(completed) <= 1, f"{context}: archived {tid} completed by {completed}"
        else:
            assert len(completed) == 1, f"{context}: {tid} completed by {len(completed)} runs: {runs[tid]}"
    # every failure is one the test caused: a worker or wrapper it SIGKILLed
    unexplained = [r for r in all_runs if r["outcome"] in ("crashed", "protocol_violation")
                   and r["id"] not in chaos.worker_killed | chaos.wrapper_killed]
    assert not unexplained, f"{context}: runs failed that the test did not kill: {unexplained}"
    # `lost` only where nobody can know: the test SIGKILLed the wrapper (the one witness of the
    # worker's exit), or no worker of the run was ever seen (the reaper died around the fork, so
    # whether a wrapper was forked is unknowable; the sweep found nothing)
    starts, ends = read_records(out, context)
    lost = [r for r in all_runs if r["outcome"] == "lost" and r["id"] not in chaos.wrapper_killed
            and (r["id"] in starts or r["worker_pid"] is not None)]
    assert not lost, f"{context}: runs lost although their worker's status was knowable: {lost}"

    # 0 tasks with two live workers at any instant
    by_id = {r["id"]: r for r in all_runs}
    for run, (task, _, pid, profile) in starts.items():
        r = by_id.get(run)
        assert r is not None and r["task_id"] == task, f"{context}: a worker ran with unknown run {run}"
        assert r["profile"] == profile, f"{context}: run {run} of profile {r['profile']} ran as {profile}"
        assert r["worker_pid"] in (None, pid), f"{context}: run {run}: the board says worker {r['worker_pid']}, " \
                                               f"the worker was {pid}"
    life: dict[str, tuple[float, float]] = {}
    for r in all_runs:
        begin = starts[r["id"]][1] if r["id"] in starts else r["started_at"]
        if r["id"] not in starts and r["worker_pid"] is None:
            continue  # no worker was ever recorded (never spawned, or lost before it was adopted)
        life[r["id"]] = (begin, max(ends.get(r["id"], 0.0), r["ended_at"]))
        assert life[r["id"]][0] <= life[r["id"]][1], f"{context}: run {r['id']} ended before it started: {r}"
    for tid in ids:
        spans = sorted((life[r["id"]][0], life[r["id"]][1], r["id"], r["outcome"]) for r in runs[tid]
                       if r["id"] in life)
        for (b1, e1, r1, o1), (b2, e2, r2, o2) in zip(spans, spans[1:]):
            assert b2 >= e1, (f"{context}: task {tid} had two live workers: {r1} ({o1}) {b1:.3f}-{e1:.3f} "
                              f"overlaps {r2} ({o2}) {b2:.3f}-{e2:.3f}")

    # caps never exceeded, from the workers' own start records and the board's ended_at
    n, at = max_overlap(list(life.values()))
    assert n <= GLOBAL_CAP, f"{context}: {n} runs alive at {at:.3f}, over max_in_progress {GLOBAL_CAP}"
    for prof, cap in PROFILES.items():
        n, at = max_overlap([life[r["id"]] for r in all_runs if r["id"] in life and r["profile"] == prof])
        assert n <= cap, f"{context}: {n} runs of profile {prof} alive at {at:.3f}, over its cap {cap}"

    # 0 leftover processes: nothing that carries this daemon's KANBAN_TEST_ID and a KANBAN_RUN
    # (a worker, or anything it started: the lingering children sleep 300 s, so one that escaped
    # its run's end at any time is still here), then nothing but the daemon, and 0 zombies
    marker = f"KANBAN_TEST_ID={d.tmp}".encode()

    def run_processes() -> list[tuple[int, str, str]]:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                env = _read(f"/proc/{name}/environ").split(b"\0")
                runs_of = [v[11:].decode() for v in env if v.startswith(b"KANBAN_RUN=")]
                if marker in env and runs_of:
                    found.append((int(name), runs_of[0],
                                  _read(f"/proc/{name}/cmdline", 200).replace(b"\0", b" ").decode().strip()))
        return found

    try:
        wait_for(lambda: not run_processes(), timeout=15, what="no process of any run")
    except AssertionError:
        raise AssertionError(f"{context}: processes of ended runs still alive (pid, run, cmdline): "
                             f"{run_processes()}") from None
    # (the daemon's own processes do not show up in d.ours(): setproctitle overwrote their environ)
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

    try:
        wait_for(lambda: not leftovers(), timeout=15, what="no process but the daemon's, and no zombies")
    except AssertionError:
        raise AssertionError(f"{context}: processes left, or zombies: {leftovers()}") from None
    st = d.rpc("daemon.status")
    assert st["summary"]["running"] == 0 and all(r["state"] == "ok" for r in st["roles"])
    try:
        wait_for(lambda: not list(Path(d.state, "runs").glob("r_*")), timeout=10, what="the run files removed")
    except AssertionError:
        raise AssertionError(f"{context}: run files left: {sorted(os.listdir(Path(d.state, 'runs')))}") from None
    outcomes = collections.Counter(r["outcome"] for r in all_runs)
    lost_why = collections.Counter(re.sub(r"pid \d+", "pid N", r["error"] or "") for r in all_runs
                                   if r["outcome"] == "lost")
    print(f"{context}: run outcomes {dict(sorted(outcomes.items()))}; lost: {dict(lost_why)}")
    assert d.stop() == 0


def test_chaos_200_tasks_100_injections(make_daemon):
    run_chaos(make_daemon, n_tasks=200, n_inject=100, deadline=100.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chaos_soak_2000_tasks_1000_injections(make_daemon):
    run_chaos(make_daemon, n_tasks=2000, n_inject=1000, deadline=1500.0)
