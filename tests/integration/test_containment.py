"""A run ends only when no process of it is alive (issue "One live worker per task, whatever dies").

Every failing input of the issue is here against the real daemon with real
workers: a worker that ignores TERM, one that forks a ``setsid`` child, one
that double-forks; a wrapper SIGKILLed while the reaper is down; a wrapper
that fails after its worker started (a full runs filesystem); forged calls of
the roles' internal methods; a worker acting outside its own run. Subreaper
mode runs everywhere; cgroup mode runs in a cgroup v2 directory this test
creates and removes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from daemon import containment
from tests.harness import KANBAND, wait_for
from tests.integration.test_dispatch import events, profiles, runs

STUBBORN = 'trap "" TERM\nwhile :; do sleep 0.2; done\n'


def procs_with(*needles: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains every needle."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if all(n in line for n in needles):
            out.append(p)
    return out


def procs_of_run(run_id: str) -> list[int]:
    """Live processes that carry ``KANBAN_RUN=<run_id>`` (the worker, its children, setsid or not)."""
    return containment.run_stragglers(run_id, None)


def test_block_then_unblock_a_stubborn_worker_never_runs_two(make_daemon):
    """Failing input 1: block + unblock of a worker that ignores TERM started a second worker next to it,
    and with max_in_progress 1, blocking A started B while A's worker was alive."""
    d = make_daemon({"dispatch": {"kill_grace": "3s", "max_in_progress": 1, "tick": "30s"}}, start=False)
    paths = profiles(d, w=STUBBORN)
    d.start()
    a = d.cli_json("create", "stubborn", "-a", "w")["id"]
    first = wait_for(lambda: (r := runs(d, a)) and r[0]["state"] == "running" and r[0], what="A running")
    b = d.cli_json("create", "waits for a slot", "-a", "w")["id"]
    d.cli("block", a, "--reason", "pause")
    d.cli("unblock", a)
    # while A's worker is still alive (it ignores TERM for kill_grace), nothing else starts
    plan = {p["task"]: p for p in d.cli_json("plan")["plan"]}
    assert plan[a]["decision"] == "wait" and f"previous run {first['id']} still exiting" in plan[a]["reason"]
    assert len(procs_with(paths["w"])) == 1
    assert runs(d, a)[0]["state"] == "exiting" and runs(d, b) == []
    assert d.cli_json("status")["summary"]["running"] == 0  # A is ready again, B ready: the slot is the run's
    # the old run ends only once its worker is gone (KILL after kill_grace); then exactly one starts
    wait_for(lambda: runs(d, a)[0]["state"] == "ended", timeout=10, what="the exiting run to end")
    assert not psutil.pid_exists(first["worker_pid"]) or \
        psutil.Process(first["worker_pid"]).status() == psutil.STATUS_ZOMBIE
    assert runs(d, a)[0]["outcome"] == "cancelled" and runs(d, a)[0]["signal"] == signal.SIGKILL
    wait_for(lambda: len(procs_with(paths["w"])) == 1, what="one worker again")
    started = [t for t in (a, b) if len(runs(d, t)) == (2 if t == a else 1)]
    assert len(started) == 1, "max_in_progress 1: only one of A and B may have a live run"
    assert len(procs_with(paths["w"])) == 1


def test_wrapper_killed_while_the_reaper_is_down_takes_its_worker_down(make_daemon):
    """Failing input 2: the next reaper found a dead wrapper with no exit file, reported lost, requeued,
    and never killed the orphaned worker."""
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    rec = f"{d.tmp}/rec"
    profiles(d, hold=f'echo "start $KANBAN_RUN $$" >> {rec}\nwhile :; do sleep 0.1; done\n')
    d.start()
    t = d.cli_json("create", "victim", "-a", "hold")["id"]
    first = wait_for(lambda: (r := runs(d, t)) and r[0]["worker_pid"] and r[0], what="first run started")
    reaper = d.role_pids()["reaper"]
    os.kill(reaper, signal.SIGSTOP)  # hold the reaper down, then kill it: no reaper sees the wrapper die
    os.kill(first["pid"], signal.SIGKILL)
    os.kill(reaper, signal.SIGKILL)  # (a stopped process dies of SIGKILL too)
    wait_for(lambda: len(runs(d, t)) == 2, timeout=15, what="a second run after the new reaper resolved the first")
    assert not containment.alive(first["worker_pid"]), "the orphaned worker kept running"
    r0 = runs(d, t)[0]
    assert r0["state"] == "ended" and r0["outcome"] in ("lost", "crashed")
    starts = [line.split()[1] for line in Path(rec).read_text().splitlines()]
    wait_for(lambda: len(Path(rec).read_text().splitlines()) == 2, what="the second worker")
    live = [r["id"] for r in runs(d, t) if procs_of_run(r["id"])]
    assert live == [runs(d, t)[1]["id"]], f"live runs {live}, starts {starts}"


def test_spawn_failing_after_the_worker_started_leaves_no_worker(make_daemon):
    """Failing input 3: the runs directory is full, so the wrapper cannot write <run>.pid after the worker
    started: the run was spawn_failed while its worker ran unsupervised; each retry added one more."""
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    paths = profiles(d, w="while :; do sleep 0.1; done\n")
    runs_dir = Path(d.state) / "runs"
    runs_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(runs_dir)], check=True)
    try:
        (runs_dir / "bin").mkdir()
        fd = os.open(runs_dir / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # no data block left: empty files (the run's lock) still fit
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        d.start()
        t = d.cli_json("create", "doomed", "-a", "w", "--max-retries", "2")["id"]
        d.wait_status(t, "blocked")
        rs = runs(d, t)
        assert [r["outcome"] for r in rs] == ["spawn_failed", "spawn_failed"], rs
        assert "worker killed" in rs[0]["error"], rs[0]["error"]
        assert procs_with(paths["w"]) == [], "a worker runs unsupervised after a failed spawn"
    finally:
        d.cleanup()
        subprocess.run(["umount", "-l", str(runs_dir)], check=False)


def test_internal_methods_refuse_everyone_but_the_roles(make_daemon):
    """Failing input 4: a forged run.exited for a live run requeued the task and started a second worker;
    a forged reaper.attach displaced the real reaper."""
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    paths = profiles(d, hold="while :; do sleep 0.1; done\n")
    d.start()
    t = d.cli_json("create", "live", "-a", "hold")["id"]
    run = wait_for(lambda: (r := runs(d, t)) and r[0]["state"] == "running" and r[0], what="running")
    for method, params in (("run.exited", {"run": run["id"], "exit_code": 1}),
                           ("reaper.attach", {"pid": os.getpid()}),
                           ("run.started", {"run": run["id"], "pid": 1, "start_time": 0}),
                           ("run.starting", {"run": run["id"], "pid": 1}),
                           ("notifier.attach", {"pid": os.getpid()}),
                           ("notifier.ack", {"sink": "x", "cursor": 10**6})):
        err = d.rpc_error(method, params)
        assert err.name == "permission_denied" and method in str(err), (method, err)
    assert runs(d, t)[0]["state"] == "running" and len(runs(d, t)) == 1
    assert d.cli_json("status")["reaper_attached"]
    assert len(procs_with(paths["hold"])) == 1
    # the real reaper still carries out the board's decisions
    d.cli("kill", t)
    wait_for(lambda: runs(d, t)[0]["state"] == "ended", what="the kill to end the run")
    assert runs(d, t)[0]["outcome"] == "killed"


@pytest.mark.parametrize("shape", ["setsid", "double-fork"])
def test_escaping_children_die_with_their_run(make_daemon, shape):
    """A child that calls setsid, or a daemon that double-forks, stays findable: it dies at max_runtime
    with its worker, and the run ends only after it."""
    d = make_daemon({"dispatch": {"kill_grace": "0.5s", "tick": "30s"}}, start=False)
    mark = f"{d.tmp}/child-$KANBAN_RUN"
    if shape == "setsid":
        spawn = f"setsid sh -c 'trap \"\" TERM; echo $$ > {mark}; while :; do sleep 0.1; done' &\n"
    else:
        spawn = (f"( ( trap '' TERM; echo $(sh -c 'echo $PPID') > {mark}; exec sleep 600 ) & ) \n")
    profiles(d, w=spawn + "while :; do sleep 0.1; done\n")
    d.cfg["profiles"]["w"]["max_runtime"] = "1s"
    d.write_config(d.cfg)
    d.start()
    t = d.cli_json("create", "escapes", "-a", "w", "--max-retries", "1")["id"]
    run = wait_for(lambda: (r := runs(d, t)) and r[0]["state"] == "running" and r[0], what="running")
    child = int(wait_for(lambda: (p := Path(mark.replace("$KANBAN_RUN", run["id"]))).exists()
                         and p.read_text().strip(), what="the escaping child"))
    assert containment.alive(child)
    d.wait_status(t, "blocked", timeout=20)
    r = runs(d, t)[0]
    assert r["outcome"] == "timed_out" and r["state"] == "ended"
    assert not containment.alive(child), f"the {shape} child outlived its run"
    assert procs_of_run(r["id"]) == []


def test_lingering_children_end_before_the_run_and_hold_the_slot(make_daemon):
    """A worker that completes and exits while a background child lingers: the run (and its cap slot) ends
    only when the child is gone; the child gets TERM, then KILL after kill_grace."""
    d = make_daemon({"dispatch": {"kill_grace": "1s", "max_in_progress": 1, "tick": "30s"}}, start=False)
    profiles(d, w="setsid sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' &\n"
                  "kanban complete --summary done-but-lingering\n")
    d.start()
    a = d.cli_json("create", "a", "-a", "w")["id"]
    d.wait_status(a, "done")
    b = d.cli_json("create", "b", "-a", "w")["id"]
    ra = runs(d, a)[0]
    if ra["state"] != "ended":  # the lingering child still holds the only slot
        assert runs(d, b) == []
    wait_for(lambda: runs(d, a)[0]["state"] == "ended", what="run a to end")
    assert runs(d, a)[0]["outcome"] == "completed"
    assert procs_of_run(ra["id"]) == []
    first_b = wait_for(lambda: runs(d, b), what="b to start")[0]
    assert first_b["claimed_at"] >= runs(d, a)[0]["ended_at"]


def test_worker_speaks_only_for_its_own_run(make_daemon):
    d = make_daemon({"dispatch": {"tick": "30s"}}, start=False)
    out = f"{d.tmp}/out"
    pre = f'other=$(cat {d.tmp}/other)\n'
    profiles(d, w=pre + f'kanban archive $other 2>> {out}.err; echo "archive=$?" >> {out}\n'
                  f'kanban comment $other "hi" 2>> {out}.err; echo "comment=$?" >> {out}\n'
                  f'kanban create child --parent "$KANBAN_TASK" -a nobody >/dev/null; echo "create=$?" >> {out}\n'
                  f'kanban create orphan -a nobody >/dev/null 2>> {out}.err; echo "create_free=$?" >> {out}\n'
                  f'kanban show $other > /dev/null; echo "show=$?" >> {out}\n'
                  'kanban complete --summary scoped\n',
             boss=pre + f'kanban archive $other; echo "boss_archive=$?" >> {out}\nkanban complete\n')
    d.cfg["profiles"]["boss"]["role"] = "orchestrator"
    d.write_config(d.cfg)
    d.start()
    other = d.rpc("task.create", {"title": "someone else's", "assignee": "nobody"})["id"]
    Path(f"{d.tmp}/other").write_text(other)
    t = d.cli_json("create", "scoped", "-a", "w")["id"]
    d.wait_status(t, "done")
    res = dict(line.split("=") for line in Path(out).read_text().split())
    assert res == {"archive": "1", "comment": "1", "create": "0", "create_free": "1", "show": "0"}, res
    err = Path(f"{out}.err").read_text()
    assert "permission_denied" in err and other in err and t in err
    assert d.task(other)["status"] != "archived"
    # a token copied into another process is refused, even for that run's own task
    boss = d.cli_json("create", "boss", "-a", "boss")["id"]
    d.wait_status(boss, "done")
    assert "boss_archive=0" in Path(out).read_text() and d.task(other)["status"] == "archived"


def test_kill_and_reassign_end_the_run_first(make_daemon):
    d = make_daemon({"dispatch": {"kill_grace": "0.5s", "tick": "30s"}}, start=False)
    paths = profiles(d, a=STUBBORN, b="kanban complete --summary by-b\n")
    d.start()
    t = d.cli_json("create", "moves", "-a", "a")["id"]
    first = wait_for(lambda: (r := runs(d, t)) and r[0]["state"] == "running" and r[0], what="running")
    d.cli("assign", t, "b")
    # the task stays running under its old run until that run's processes are gone, then runs under b
    assert d.task(t)["status"] == "running" and runs(d, t)[0]["state"] in ("exiting", "ended")
    done = d.wait_status(t, "done", timeout=15)
    assert done["summary"] == "by-b"
    rs = runs(d, t)
    assert [r["outcome"] for r in rs] == ["reassigned", "completed"] and rs[1]["profile"] == "b"
    assert rs[0]["id"] == first["id"] and not containment.alive(first["worker_pid"])
    assert rs[1]["claimed_at"] >= rs[0]["ended_at"]
    assert procs_with(paths["a"]) == []
    # kill --block: blocked at once, the run ends after kill_grace
    t2 = d.cli_json("create", "killed", "-a", "a")["id"]
    wait_for(lambda: (r := runs(d, t2)) and r[0]["state"] == "running", what="running")
    d.cli("kill", t2, "--block", "enough")
    assert d.task(t2)["status"] == "blocked" and d.task(t2)["block_reason"] == "enough"
    wait_for(lambda: runs(d, t2)[0]["state"] == "ended", what="killed run to end")
    assert runs(d, t2)[0]["outcome"] == "cancelled"
    err = d.cli("kill", t2, check=False)
    assert err.returncode != 0 and "illegal_transition" in err.stderr


def test_retry_waits_a_backoff_and_kanban_retry_clears_it(make_daemon):
    d = make_daemon({"dispatch": {"retry_backoff": "30s", "retry_backoff_max": "60s", "tick": "30s"}}, start=False)
    profiles(d, flaky=f'if [ ! -e {d.tmp}/ok ]; then touch {d.tmp}/ok; exit 3; fi\nkanban complete\n')
    d.start()
    t = d.cli_json("create", "flaky", "-a", "flaky", "--max-retries", "5")["id"]
    wait_for(lambda: (r := runs(d, t)) and r[0]["state"] == "ended", what="first failure")
    task = d.task(t)
    assert task["status"] == "ready" and task["cooldown_kind"] == "backoff"
    assert 15 - 1 <= task["cooldown_until"] - time.time() <= 30
    plan = {p["task"]: p for p in d.cli_json("plan")["plan"]}
    assert plan[t]["decision"] == "wait" and "retry backoff" in plan[t]["reason"]
    assert len(runs(d, t)) == 1
    d.cli("retry", t, "-r", "try now")
    d.wait_status(t, "done")
    assert [e["payload"]["reason"] for e in events(d, t, "retried")] == ["try now"]


def test_rate_limit_cools_the_profile_for_as_long_as_the_worker_said(make_daemon):
    d = make_daemon({"dispatch": {"rate_limit_cooldown": "600s", "tick": "30s"}}, start=False)
    profiles(d, api=f'if [ ! -e {d.tmp}/once ]; then touch {d.tmp}/once; echo "retry-after: 1" > '
                    '"$KANBAN_RETRY_AFTER_FILE"; exit 75; fi\nkanban complete\n')
    d.start()
    t = d.cli_json("create", "first", "-a", "api")["id"]
    wait_for(lambda: (r := runs(d, t)) and r[0]["outcome"] == "rate_limited", what="rate limited")
    u = d.cli_json("create", "second, same account", "-a", "api")["id"]
    plan = {p["task"]: p for p in d.cli_json("plan")["plan"]}
    assert "profile api rate-limit cooldown" in plan[u]["reason"] or d.task(u)["status"] != "ready"
    d.wait_status(t, "done", timeout=10)
    d.wait_status(u, "done", timeout=10)
    gap = runs(d, t)[1]["claimed_at"] - runs(d, t)[0]["ended_at"]
    assert 0.8 <= gap < 30, f"the worker asked for 1 s, the config says 600 s; waited {gap:.2f}s"
    assert [e["payload"]["scope"] for e in events(d, t, "cooldown")] == ["profile"]


@pytest.fixture
def cgroup_root():
    mount = containment.cgroup2_mount()
    assert mount, "no cgroup v2 hierarchy is mounted on this machine"
    own = containment.own_cgroup() or "/"
    parent = os.path.join(mount, own.lstrip("/"))
    path = tempfile.mkdtemp(prefix="kanband-test-", dir=parent)
    yield path
    def removed() -> bool:  # run cgroups are removed by the daemon; anything left, and ours, go here
        for sub in sorted(Path(path).glob("run-*")):
            containment.cgroup_kill(str(sub))
            containment.remove_cgroup(str(sub))
        return containment.remove_cgroup(path)

    wait_for(removed, timeout=5, interval=0.05, what=f"the test's cgroup {path} to be removed")
    assert not os.path.exists(path)


def test_cgroup_mode_contains_and_ends_every_process(make_daemon, cgroup_root):
    d = make_daemon({"containment": {"mode": "cgroup", "cgroup_root": cgroup_root},
                     "dispatch": {"kill_grace": "0.5s", "tick": "30s"}}, start=False)
    mark = f"{d.tmp}/cg-$KANBAN_RUN"
    profiles(d, w=f"cat /proc/self/cgroup > {mark}\n"
                  "setsid sh -c 'trap \"\" TERM; while :; do sleep 0.1; done' &\n"
                  "while :; do sleep 0.1; done\n")
    d.start()
    st = d.cli_json("status")
    assert st["containment"]["mode"] == "cgroup" and st["containment"]["cgroup_root"] == cgroup_root
    t = d.cli_json("create", "contained", "-a", "w")["id"]
    run = wait_for(lambda: (r := runs(d, t)) and r[0]["state"] == "running" and r[0], what="running")
    cg = os.path.join(cgroup_root, f"run-{run['id']}")
    wait_for(lambda: len(containment.cgroup_procs(cg)) >= 3, what="worker and its setsid child in the cgroup")
    assert f"run-{run['id']}" in Path(mark.replace("$KANBAN_RUN", run["id"])).read_text()
    members = containment.cgroup_procs(cg)
    d.cli("block", t, "--reason", "stop")
    wait_for(lambda: runs(d, t)[0]["state"] == "ended", timeout=10, what="run to end")
    assert not any(containment.alive(p) for p in members)
    assert not os.path.exists(cg), "the run's cgroup is removed once it is empty"


def test_status_says_which_containment_is_in_force(make_daemon):
    d = make_daemon()
    st = d.cli_json("status")
    assert st["containment"]["mode"] == "subreaper"
    assert "containment: subreaper" in d.cli("status").stdout
    d2 = make_daemon({"containment": {"mode": "cgroup", "cgroup_root": "/nonexistent/cg"}}, start=False)
    res = subprocess.run([KANBAND, "--config", d2.config_path, "--state-dir", d2.state, "--socket", d2.socket],
                         capture_output=True, text=True, env=d2.env(), timeout=20)
    assert res.returncode == 2 and "/nonexistent/cg" in res.stderr and "containment" in res.stderr


def test_a_worker_lingering_after_complete_can_be_killed_and_archived(make_daemon):
    """A worker that completes and then hangs (ignoring TERM) keeps its run live and its slot; the operator
    can end it with `kanban kill` (the task stays done, the run keeps its `completed`), or `kanban archive`."""
    d = make_daemon({"dispatch": {"kill_grace": "0.5s", "tick": "30s"}}, start=False)
    paths = profiles(d, w='kanban complete -m "done early"\ntrap "" TERM\nwhile :; do sleep 0.1; done\n')
    d.start()
    for verb in ("kill", "archive"):
        t = d.cli_json("create", f"lingers ({verb})", "-a", "w")["id"]
        d.wait_status(t, "done")
        run = wait_for(lambda: (r := runs(d, t)) and r[0]["worker_pid"] and r[0], what="the run's pids")
        assert run["state"] != "ended" and containment.alive(run["worker_pid"])
        d.cli(verb, t)
        wait_for(lambda: runs(d, t)[0]["state"] == "ended", timeout=10, what=f"{verb} to end the lingering run")
        r = runs(d, t)[0]
        assert r["outcome"] == "completed" and not containment.alive(run["worker_pid"])
        assert d.task(t)["status"] == ("done" if verb == "kill" else "archived")
    assert procs_with(paths["w"]) == []
    err = d.cli("kill", t, check=False)
    assert err.returncode == 1 and "has no live run" in err.stderr


def test_kill_block_of_a_done_task_with_a_lingering_run_is_refused_and_changes_nothing(make_daemon):
    d = make_daemon({"dispatch": {"kill_grace": "0.5s", "tick": "30s"}}, start=False)
    profiles(d, w='kanban complete -m "done early"\nwhile :; do sleep 0.1; done\n')
    d.start()
    t = d.cli_json("create", "lingers", "-a", "w")["id"]
    d.wait_status(t, "done")
    res = d.cli("kill", t, "--block", "no", check=False)
    assert res.returncode == 1 and "illegal_transition" in res.stderr and "done" in res.stderr
    assert d.task(t)["status"] == "done" and runs(d, t)[0]["state"] != "ended"  # nothing changed
    d.cli("kill", t)
    wait_for(lambda: runs(d, t)[0]["state"] == "ended", what="the plain kill to end it")
