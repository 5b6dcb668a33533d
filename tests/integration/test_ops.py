"""Operator experience (issue 13, sections 3 to 5), through the real CLI against real daemons.

- ``kanban pause/resume [PROFILE…]`` and ``kanban parallel N [--profile P] | --reset``: honoured by
  dispatch, shown in ``status`` and ``plan``, kept across a restart;
- ``kanban reload`` and a refused SIGHUP, visible in ``status``;
- ``kanband --check-config`` reporting every problem of a config on this machine;
- several boards: ``kanband --board NAME``, ``kanban --board NAME`` / ``$KANBAN_BOARD_NAME``,
  ``kanban boards``;
- worktree workspaces with a repository per profile and per task, and a pinned branch;
- ``kanban init``'s next steps; ``kanban watch`` ended by SIGINT even when SIGINT was inherited
  as ignored (a background job).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.harness import FAST, KANBAN, KANBAND, Daemon, wait_for, write_script

SLEEPER = {"command": ["sleep", "60"]}


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def live(d: Daemon) -> int:
    return sum(d.rpc("daemon.status")["runs"].values())


# ---- pause, resume, parallel ----------------------------------------------------------------

def test_pause_and_resume_stop_and_start_new_runs_and_survive_a_restart(make_daemon):
    d = make_daemon({"profiles": {"a": SLEEPER, "b": SLEEPER}})
    out = d.cli("pause").stdout
    assert "PAUSED since" in out
    ta = d.cli_json("create", "for a", "-a", "a")
    plan = d.cli("plan").stdout
    assert "dispatch is paused (kanban resume)" in plan and "PAUSED" in plan
    assert "dispatch is paused" in d.cli("dispatch").stdout  # an explicit pass does not start anything either
    assert d.task(ta["id"])["status"] == "ready" and live(d) == 0
    status = d.cli("status").stdout
    assert "dispatch  PAUSED since" in status

    d.stop()  # persisted: still paused after a restart
    d.start()
    assert d.cli_json("status")["controls"]["paused"] is True
    assert d.task(ta["id"])["status"] == "ready"

    d.cli("pause", "b")  # a profile's own pause outlives the global resume
    d.cli("resume")
    d.wait_status(ta["id"], "running")
    tb = d.cli_json("create", "for b", "-a", "b")
    plan = d.cli_json("plan")
    assert [x["reason"] for x in plan["plan"] if x["task"] == tb["id"]] == ["profile b is paused (kanban resume b)"]
    assert "profile b: paused since" in d.cli("status").stdout
    d.stop()
    d.start()
    assert d.task(tb["id"])["status"] == "ready"
    assert d.cli_json("resume", "b")["profiles"]["b"]["paused"] is False
    d.wait_status(tb["id"], "running")
    assert d.task(ta["id"])["status"] == "running"  # a pause never touched the live run


def test_pause_of_an_unknown_profile_is_one_line_naming_it(daemon):
    err = one_line_error(daemon.cli("pause", "nosuch", check=False))
    assert "not_found" in err and "nosuch" in err
    assert daemon.cli_json("status")["controls"]["paused"] is False


def test_parallel_overrides_the_config_at_run_time_and_is_kept(make_daemon):
    d = make_daemon({"profiles": {"w": {**SLEEPER, "max_in_progress": 3}}, "dispatch": {"max_in_progress": 5}})
    out = d.cli("parallel", "1").stdout
    assert "at most 1 live run (set by kanban parallel; the config says 5)" in out
    ids = [d.cli_json("create", f"t{i}", "-a", "w")["id"] for i in range(3)]
    wait_for(lambda: live(d) == 1, what="one live run")
    reasons = [x["reason"] for x in d.cli_json("plan")["plan"]]
    assert reasons == ["global cap reached (1/1) (kanban parallel; the config says 5)"] * 2
    assert "at most 1 live run (set by kanban parallel; the config says 5)" in d.cli("status").stdout

    d.stop()
    d.start()
    assert live(d) == 1 and d.cli_json("status")["controls"]["max_in_progress"] == 1

    c = d.cli_json("parallel", "2", "--profile", "w")
    assert c["profiles"]["w"] == {"paused": False, "paused_at": None, "max_in_progress": 2,
                                  "config_max_in_progress": 3, "overridden": True, "configured": True}
    d.cli("parallel", "--reset")  # the global cap back to the config's 5; w's own cap of 2 holds
    wait_for(lambda: live(d) == 2, what="two live runs")
    plan = d.cli("plan").stdout
    assert "profile cap reached (2/2 for w) (kanban parallel; the config says 3)" in plan
    d.cli("parallel", "--reset", "--profile", "w")
    wait_for(lambda: live(d) == 3, what="three live runs")
    assert sorted(t["id"] for t in d.cli_json("list", "-s", "running")["tasks"]) == sorted(ids)

    assert "give a number" in one_line_error(d.cli("parallel", check=False))
    assert "nosuch" in one_line_error(d.cli("parallel", "2", "--profile", "nosuch", check=False))
    assert "out of range" in one_line_error(d.cli("parallel", "-1", check=False))


# ---- reload ---------------------------------------------------------------------------------

def test_reload_applies_or_refuses_and_status_shows_the_last_result(make_daemon):
    d = make_daemon()
    assert d.cli_json("status")["reload"] is None
    d.write_config({**FAST, "profiles": {"new": SLEEPER}})
    res = d.cli("reload")
    assert res.stdout.strip() == f"config reloaded from {d.config_path}"
    assert "new" in d.cli_json("init")["profiles"]
    st = d.cli_json("status")["reload"]
    assert st["result"] == "applied" and st["origin"] == "rpc" and st["error"] is None

    d.write_config("dispatch: {max_in_progres: 3}\n")
    before = time.time()
    err = one_line_error(d.cli("reload", check=False))
    assert "config reload refused" in err and "dispatch.max_in_progres: unknown key" in err
    rl = d.cli_json("reload", check=False)
    assert rl["result"] == "refused" and "max_in_progres" in rl["error"]
    out = d.cli("status").stdout
    assert "reload    REFUSED" in out and "dispatch.max_in_progres" in out
    st = d.cli_json("status")["reload"]
    assert st["at"] >= before and st["result"] == "refused"
    assert "new" in d.cli_json("init")["profiles"]  # the previous config stays in force


def test_a_refused_sighup_shows_in_status(make_daemon):
    d = make_daemon()
    d.write_config("profiles: {x: {command: []}}\n")
    os.kill(d.pid, signal.SIGHUP)
    st = wait_for(lambda: (d.cli_json("status").get("reload") or {}).get("origin") == "signal"
                  and d.cli_json("status")["reload"], what="the refused reload in status")
    assert st["result"] == "refused" and "profiles.x.command" in st["error"]
    assert "profiles.x.command" in d.cli("status").stdout


# ---- check-config -----------------------------------------------------------------------------

def test_check_config_reports_every_problem_on_this_machine(tmp_path):
    (tmp_path / "notgit").mkdir()
    exe = write_script(tmp_path / "agent", "#!/bin/sh\nexit 0\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "profiles": {"ok": {"command": [exe]}, "gone": {"command": ["no-such-agent-xyz", "{task_id}"]},
                     "abs": {"command": [str(tmp_path / "missing")]},
                     "wt": {"command": [exe], "workspace": "worktree"},
                     "wt2": {"command": [exe], "workspace": "worktree", "repo": str(tmp_path / "notgit")},
                     "later": {"command": ["{workspace}/run.sh"]}},
        "sinks": {"s": {"type": "command", "command": ["no-such-notifier-xyz"]}}}))
    res = subprocess.run([KANBAND, "--check-config", "--config", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert all(line.startswith(f"kanband: bad config: {cfg}: ") for line in lines), lines
    keys = sorted(line.split(": ")[3] for line in lines)
    assert keys == ["profiles.abs.command", "profiles.gone.command", "profiles.wt.workspace", "profiles.wt2.repo",
                    "sinks.s.command"], lines
    assert any("'no-such-agent-xyz' is not found on PATH" in line for line in lines)
    assert any("is not a git repository" in line for line in lines)

    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"profiles": {"ok": {"command": [exe]}, "py": {"command": ["python3", "-V"]}}}))
    res = subprocess.run([KANBAND, "--check-config", "--config", str(good)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"config OK: {good}; 2 profile(s): ok, py, 0 sink(s)"


# ---- several boards ---------------------------------------------------------------------------

class Boards:
    """XDG dirs in a temp dir, and named-board daemons started the way the template unit does."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.xdg = {"XDG_STATE_HOME": os.path.join(d.tmp, "st"), "XDG_RUNTIME_DIR": os.path.join(d.tmp, "run"),
                    "XDG_CONFIG_HOME": os.path.join(d.tmp, "cf"), "HOME": d.tmp}
        os.makedirs(self.xdg["XDG_RUNTIME_DIR"], mode=0o700)
        os.makedirs(os.path.join(self.xdg["XDG_CONFIG_HOME"], "kanban", "boards"))
        d.write_config(FAST)
        os.rename(d.config_path, os.path.join(self.xdg["XDG_CONFIG_HOME"], "kanban", "config.yaml"))

    def env(self, **extra: str) -> dict[str, str]:
        env = self.d.env({**self.xdg, **extra})
        env.pop("KANBAN_SOCKET")
        return env

    def start(self, name: str | None) -> subprocess.Popen:
        ready = self.d.notify.count("READY=1") if self.d.notify else 0
        if self.d.notify is None:
            from tests.harness import Notifications
            self.d.notify = Notifications(os.path.join(self.d.tmp, "n.sock"))
        with open(self.d.log_path, "ab") as logf:
            proc = subprocess.Popen([KANBAND, *(["--board", name] if name else [])], stdout=logf,
                                    stderr=subprocess.STDOUT, env=self.env(NOTIFY_SOCKET=self.d.notify.path),
                                    start_new_session=True, cwd=self.d.tmp)
        self.d.procs.append(proc)
        wait_for(lambda: self.d.notify.count("READY=1") > ready or proc.poll() is not None, what="READY=1")
        assert proc.poll() is None, self.d.log()
        return proc

    def cli(self, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        res = subprocess.run([KANBAN, *args], capture_output=True, text=True, env=self.env(**extra), timeout=20)
        assert not check or res.returncode == 0, res.stderr
        return res


def test_named_boards_have_their_own_state_and_socket_and_are_listed(make_daemon):
    b = Boards(make_daemon(start=False))
    cf = os.path.join(b.xdg["XDG_CONFIG_HOME"], "kanban")
    with open(os.path.join(cf, "boards", "alpha.yaml"), "w") as f:  # alpha has a config of its own
        f.write(json.dumps({**FAST, "profiles": {"only-alpha": SLEEPER}}))
    b.start("alpha")
    b.start("beta")
    state = b.xdg["XDG_STATE_HOME"]
    for name in ("alpha", "beta"):
        assert os.path.exists(os.path.join(state, "kanban", "boards", name, "board.db"))
        assert os.path.exists(os.path.join(b.xdg["XDG_RUNTIME_DIR"], "kanban", f"{name}.sock"))
    b.cli("--board", "alpha", "create", "one for alpha")
    b.cli("create", "two for beta", KANBAN_BOARD_NAME="beta")
    b.cli("create", "three for beta", KANBAN_BOARD_NAME="beta")
    alpha = json.loads(b.cli("--board", "alpha", "list", "--json").stdout)["tasks"]
    beta = json.loads(b.cli("list", "--json", KANBAN_BOARD_NAME="beta").stdout)["tasks"]
    assert [t["title"] for t in alpha] == ["one for alpha"]
    assert sorted(t["title"] for t in beta) == ["three for beta", "two for beta"]
    assert json.loads(b.cli("--board", "alpha", "init", "--json").stdout)["profiles"] == ["only-alpha"]
    assert json.loads(b.cli("--board", "beta", "init", "--json").stdout)["profiles"] == []
    st = json.loads(b.cli("--board=beta", "status", "--json").stdout)
    assert st["board_name"] == "beta" and "(board beta)" in b.cli("--board", "beta", "status").stdout
    # a second daemon for the same board is refused; --board beats $KANBAN_BOARD_NAME
    res = subprocess.run([KANBAND, "--board", "alpha"], capture_output=True, text=True, env=b.env(), timeout=20)
    assert res.returncode == 1 and "already running" in res.stderr
    assert len(json.loads(b.cli("--board", "alpha", "list", "--json", KANBAN_BOARD_NAME="beta").stdout)["tasks"]) == 1

    os.makedirs(os.path.join(state, "kanban", "boards", "gamma"))  # a board whose daemon is not running
    b.cli("--board", "beta", "pause")
    listing = json.loads(b.cli("boards", "--json").stdout)["boards"]
    by = {x["name"]: x for x in listing}
    assert sorted(by) == ["alpha", "beta", "gamma"]
    assert by["alpha"]["running"] and by["alpha"]["summary"]["ready"] == 1
    assert by["beta"]["summary"]["ready"] == 2 and by["beta"]["paused"] is True
    assert by["gamma"]["running"] is False and by["gamma"]["pid"] is None
    human = b.cli("boards").stdout
    assert "alpha" in human and "running, paused" in human and "stopped" in human
    assert "0 running, 2 ready, 0 blocked" in human

    err = one_line_error(b.cli("--board", "../etc", "status", check=False))
    assert "board name" in err and b.cli("--board", "../etc", "status", check=False).returncode == 2
    res = subprocess.run([KANBAND, "--board", "a/b"], capture_output=True, text=True, env=b.env(), timeout=20)
    assert res.returncode == 2 and "board name" in res.stderr


def test_the_default_board_is_listed_and_kanban_without_board_talks_to_it(make_daemon):
    b = Boards(make_daemon(start=False))
    b.start(None)
    b.cli("create", "on the default board")
    sock = os.path.join(b.xdg["XDG_RUNTIME_DIR"], "kanban", "kanband.sock")
    assert json.loads(b.cli("status", "--json").stdout)["socket"] == sock
    listing = json.loads(b.cli("boards", "--json").stdout)["boards"]
    assert [(x["name"], x["running"], x["summary"]["ready"]) for x in listing] == [("(default)", True, 1)]


# ---- worktree workspaces: repository per profile and per task, pinned branch ----------------------

def git(*args: str, cwd: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(path: str) -> str:
    os.makedirs(path)
    git("init", "-q", "-b", "main", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root", cwd=path)
    return path


REPORT = ('#!/bin/sh\nkanban complete -m "$(git rev-parse --abbrev-ref HEAD) '
          '$(git rev-parse --path-format=absolute --git-common-dir)"\n')


def test_worktrees_per_profile_and_per_task_with_a_pinned_branch(make_daemon, tmp_path):
    prof_repo = make_repo(str(tmp_path / "prof-repo"))
    task_repo = make_repo(str(tmp_path / "task-repo"))
    git("branch", "feature", cwd=task_repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "on main", cwd=task_repo)
    feature_head = git("rev-parse", "feature", cwd=task_repo)
    worker = write_script(tmp_path / "report.sh", REPORT)
    d = make_daemon({"profiles": {"w": {"command": [worker], "workspace": "worktree", "repo": prof_repo}}})

    t1 = d.cli_json("create", "profile repo", "-a", "w")
    done = d.wait_status(t1["id"], "done")
    assert done["summary"] == f"wt/{t1['id']} {prof_repo}/.git"

    # --repo relative to the caller's cwd; --branch pins an existing branch, which is not reset
    res = subprocess.run([KANBAN, "create", "task repo", "-a", "w", "--repo", "task-repo", "--branch", "feature",
                          "--json"], capture_output=True, text=True, env=d.env(), cwd=str(tmp_path), check=True)
    t2 = json.loads(res.stdout)
    assert t2["workspace"] == {"kind": "worktree", "path": None, "repo": task_repo, "branch": "feature"}
    done = d.wait_status(t2["id"], "done")
    assert done["summary"] == f"feature {task_repo}/.git"
    assert git("rev-parse", "feature", cwd=task_repo) == feature_head
    shown = d.cli("show", t2["id"]).stdout
    assert f"repo {task_repo}" in shown and "branch feature" in shown

    t3 = d.cli_json("create", "new branch", "-a", "w", "--branch", "topic/new")  # made at HEAD
    assert d.wait_status(t3["id"], "done")["summary"] == f"topic/new {prof_repo}/.git"

    for args, field in ((["--branch", "x", "--workspace", "scratch"], "--branch is for worktree workspaces"),
                        (["--branch", "bad..name"], "not a valid git branch name"),
                        (["--branch", "-x"], "not a valid git branch name")):
        err = one_line_error(d.cli("create", "bad", *args, check=False))
        assert "invalid_params" in err and field in err, err
    err = d.rpc_error("task.create", {"title": "bad", "repo": "relative/path"})  # the CLI makes it absolute
    assert err.name == "invalid_params" and "absolute" in str(err)


# ---- first run ----------------------------------------------------------------------------------

def test_init_names_the_profiles_and_the_next_step(make_daemon):
    d = make_daemon({"profiles": {"writer": SLEEPER, "critic": SLEEPER}})
    out = d.cli("init").stdout
    assert "profiles critic, writer" in out
    assert "kanban create 'my first task' -a critic" in out
    assert "kanband service install" in out  # not under systemd (no INVOCATION_ID)
    empty = make_daemon()
    out = empty.cli("init").stdout
    assert "profiles (none)" in out and f"add a profile to {empty.config_path}" in out


def test_init_without_a_daemon_says_what_to_start(make_daemon):
    d = make_daemon({"profiles": {"writer": SLEEPER}}, start=False)
    b = Boards(d)
    os.makedirs(os.path.join(b.xdg["XDG_CONFIG_HOME"], "kanban"), exist_ok=True)
    with open(os.path.join(b.xdg["XDG_CONFIG_HOME"], "kanban", "boards", "proj.yaml"), "w") as f:
        f.write(json.dumps({"profiles": {"writer": SLEEPER}}))
    res = b.cli("--board", "proj", "init", check=False)
    assert res.returncode == 1
    assert "kanband is not running" in one_line_error(res)
    assert "kanband --board proj " in res.stdout and "kanband --board proj service install" in res.stdout
    assert "1 profile(s): writer" in res.stdout


def test_watch_ends_on_sigint_even_when_sigint_was_inherited_as_ignored(daemon):
    """`make test &` (or any background job) starts with SIGINT ignored; Ctrl-C must still end watch."""
    # --after 0: the create is replayed even if it lands before the follow is set up (no race)
    p = subprocess.Popen([KANBAN, "watch", "--json", "--after", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=daemon.env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        daemon.cli("create", "seen by watch")
        line = p.stdout.readline()
        assert json.loads(line)["kind"] == "created"
        p.send_signal(signal.SIGINT)
        assert p.wait(10) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


@pytest.mark.parametrize("verb", ["status", "plan"])
def test_status_and_plan_json_carry_the_controls(daemon, verb):
    c = daemon.cli_json(verb)["controls"]
    assert c["paused"] is False and c["max_in_progress"] == 8 and c["overridden"] is False


def test_a_worker_may_not_reload_the_config_or_pause_dispatch(make_daemon, tmp_path):
    out = tmp_path / "out"
    worker = write_script(tmp_path / "w.sh", f"#!/bin/sh\nkanban reload 2>> {out}\necho \"reload $?\" >> {out}\n"
                                             f"kanban pause 2>> {out}\necho \"pause $?\" >> {out}\n"
                                             "kanban complete -m done\n")
    d = make_daemon({"profiles": {"w": {"command": [worker]}}})
    t = d.cli_json("create", "tries operator verbs", "-a", "w")
    d.wait_status(t["id"], "done")
    text = out.read_text()
    assert "reload 1" in text and "pause 1" in text, text
    assert text.count("permission_denied") == 2, text
    st = d.cli_json("status")
    assert st["reload"] is None and st["controls"]["paused"] is False
