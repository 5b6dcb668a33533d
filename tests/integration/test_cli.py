"""The real ``kanban`` CLI against a real ``kanband``, and the daemon's own command line.

Most checks share one module-scoped daemon (with one worker profile, ``sh``);
the lifecycle tests (SIGTERM, second daemon, bad config) use their own.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import FAST, KANBAN, KANBAND, REPO, Daemon, on_tty, wait_for, write_script

NOT_RUNNING = ("kanband is not running (no socket at {}); start it with `kanband` or "
               "`systemctl --user start kanband`")


@pytest.fixture(scope="module")
def d():
    dm = Daemon(FAST)
    try:
        script = write_script(f"{dm.tmp}/w.sh", "#!/bin/sh\necho \"log line from $KANBAN_TASK\"\n"
                                                "kanban complete --summary 'did it'\n")
        dm.cfg["profiles"] = {"sh": {"command": [script]}}
        dm.write_config(dm.cfg)
        dm.start()
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


def one_line_err(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"want one stderr line, got {res.stderr!r}"
    return lines[0]


def js(d, *args, **kw):
    """``kanban ARGS --json``: exit 0, empty stderr, exactly one JSON document on stdout."""
    res = d.cli(*args, "--json", **kw)
    assert res.stderr == "", res.stderr
    assert res.stdout.endswith("\n") and res.stdout.count("\n") == 1, res.stdout
    return json.loads(res.stdout)


def status_of(d, task_id):
    return d.task(task_id)["status"]


# ---- verbs ---------------------------------------------------------------------------------


def test_init(d):
    r = js(d, "init")
    assert r["board"] == os.path.join(d.state, "board.db") and r["socket"] == d.socket
    assert r["config"] == d.config_path and r["profiles"] == ["sh"]
    human = d.cli("init").stdout
    assert d.socket in human and "board" in human


def test_create_json_and_human(d):
    p = js(d, "create", "parent task", "-a", "ghost", "-p", "3", "--body", "long text", "--tenant", "acme")
    for key in ("id", "status", "title", "assignee", "priority", "parents"):
        assert key in p, key
    assert (p["title"], p["assignee"], p["priority"], p["parents"], p["status"]) == \
        ("parent task", "ghost", 3, [], "ready")
    c = js(d, "create", "child", "--parent", p["id"])
    assert c["status"] == "todo" and c["parents"] == [p["id"]]
    res = d.cli("create", "plain")  # not a TTY: just the id, for scripts
    tid = res.stdout.strip()
    assert tid.startswith("t_") and len(tid) == 10 and status_of(d, tid) == "ready"
    again = js(d, "create", "keyed", "--idempotency-key", "K-1")
    assert js(d, "create", "keyed again", "--idempotency-key", "K-1")["id"] == again["id"]
    assert js(d, "create", "tri", "--triage")["status"] == "triage"


def test_every_verb_json_prints_only_json(d):
    a = js(d, "create", "json a")
    b = js(d, "create", "json b")
    t = js(d, "create", "json triage", "--triage")
    assert [x["id"] for x in js(d, "list")["tasks"]]
    assert js(d, "ls", "--status", "ready,triage")["total"] >= 3
    assert js(d, "show", a["id"])["task"]["id"] == a["id"]
    assert js(d, "assign", a["id"], "bob")["assignee"] == "bob"
    assert js(d, "assign", a["id"], "--none")["assignee"] is None
    assert js(d, "link", a["id"], b["id"])["child_status"] == "todo"
    assert js(d, "unlink", a["id"], b["id"])["child_status"] == "ready"
    assert js(d, "comment", a["id"], "a remark")["body"] == "a remark"
    assert js(d, "edit", a["id"], "--title", "json a2", "-p", "4")["priority"] == 4
    assert js(d, "promote", t["id"])["status"] == "ready"
    assert js(d, "block", a["id"], "--reason", "wait")["tasks"][0]["status"] == "blocked"
    assert js(d, "unblock", a["id"])["tasks"][0]["status"] == "ready"
    assert js(d, "complete", a["id"], "-m", "sum")["tasks"][0]["summary"] == "sum"
    assert js(d, "archive", a["id"])["tasks"][0]["status"] == "archived"
    assert "by_status" in js(d, "stats")
    assert js(d, "status")["pid"] == d.pid
    evs = js(d, "events")
    assert evs["events"] and evs["last_id"] >= evs["events"][-1]["id"]
    later = js(d, "events", str(evs["last_id"] - 2))
    assert [e["id"] for e in later["events"]] == [evs["last_id"] - 1, evs["last_id"]]
    assert js(d, "events", "--task", b["id"])["events"][0]["kind"] == "created"
    assert js(d, "runs", b["id"]) == {"runs": []}
    assert js(d, "log", b["id"])["exists"] is False
    assert "plan" in js(d, "plan")
    assert "started" in js(d, "dispatch", "--dry-run")
    # --json before the verb works too
    res = d.cli("--json", "show", b["id"])
    assert json.loads(res.stdout)["task"]["title"] == "json b" and res.stderr == ""


def test_multiple_ids(d):
    ids = [js(d, "create", f"multi {i}")["id"] for i in range(6)]
    res = js(d, "block", ids[0], ids[1], ids[2], "--reason", "batch")
    assert [t["status"] for t in res["tasks"]] == ["blocked"] * 3
    res = js(d, "unblock", ids[0], ids[1])
    assert [t["status"] for t in res["tasks"]] == ["ready", "ready"]
    res = js(d, "complete", ids[0], ids[1], ids[3])
    assert [t["id"] for t in res["tasks"]] == [ids[0], ids[1], ids[3]]
    res = js(d, "archive", ids[4], ids[5], ids[2])
    assert {status_of(d, i) for i in (ids[4], ids[5], ids[2])} == {"archived"}
    listed = {t["id"] for t in js(d, "list", "-n", "1000")["tasks"]}
    assert not listed & {ids[4], ids[5], ids[2]}
    assert {ids[4], ids[5]} <= {t["id"] for t in js(d, "list", "--archived", "-n", "1000")["tasks"]}
    human = d.cli("complete", js(d, "create", "h1")["id"], js(d, "create", "h2")["id"]).stdout.splitlines()
    assert len(human) == 2 and all("done" in line for line in human)


def test_worker_runs_and_log(d):
    t = js(d, "create", "real work", "-a", "sh")
    done = d.wait_status(t["id"], "done")
    assert done["summary"] == "did it"
    runs = js(d, "runs", t["id"])["runs"]
    assert [r["outcome"] for r in runs] == ["completed"]
    human = d.cli("runs", t["id"]).stdout
    assert human.splitlines()[0].split() == ["RUN", "STARTED", "ENDED", "ELAPSED", "OUTCOME", "EXIT", "SUMMARY"]
    assert runs[0]["id"] in human and "completed" in human and "did it" in human
    assert f"log line from {t['id']}" in d.cli("log", t["id"]).stdout
    assert js(d, "log", t["id"], "--tail", "5")["truncated"] is True
    show = d.cli("show", t["id"]).stdout
    assert t["id"] in show and "done" in show and "runs:" in show and "did it" in show


def test_plan_and_dispatch_explain_skips(d):
    ghost = js(d, "create", "for a missing profile", "-a", "nobody-here")
    plan = {x["task"]: x for x in js(d, "plan")["plan"]}
    assert plan[ghost["id"]]["decision"] == "skip" and "nobody-here" in plan[ghost["id"]]["reason"]
    human = d.cli("plan").stdout
    assert ghost["id"] in human and "no profile" in human
    assert d.cli("dispatch").returncode == 0


def _column_starts(header: str, names: list[str]) -> list[int]:
    return [header.index(n) for n in names]


def test_human_list_table_is_aligned(d):
    js(d, "create", "aligned one", "-a", "a")
    js(d, "create", "aligned two", "-a", "a-much-longer-assignee", "-p", "12")
    out = d.cli("list", "--status", "ready", "-n", "1000").stdout
    assert "\033" not in out and "{" not in out
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == ["ID", "STATUS", "PRI", "ASSIGNEE", "UPDATED", "TITLE"]
    starts = _column_starts(header, ["STATUS", "PRI", "ASSIGNEE", "UPDATED", "TITLE"])
    rows = [ln for ln in lines[1:] if ln.startswith("t_")]
    assert len(rows) >= 2
    for ln in rows:
        for s in starts:
            assert ln[s - 2:s] == "  " and ln[s] != " ", (ln, s)
    assert any("aligned two" in ln and ln.index("aligned two") == starts[-1] for ln in rows)
    limited = d.cli("ls", "-n", "1").stdout.splitlines()
    assert len(limited) == 3 and "of" in limited[-1] and "shown" in limited[-1]


def test_human_stats_table(d):
    out = d.cli("stats").stdout
    assert "\033" not in out
    blocks = out.split("\n\n")
    status_lines = blocks[0].splitlines()
    assert status_lines[0].split() == ["STATUS", "COUNT"]
    col = status_lines[0].index("COUNT")
    counts = js(d, "stats")["by_status"]
    for ln in status_lines[1:]:
        name, n = ln.split()
        assert int(n) == counts[name] and ln.index(n) == col
    assert blocks[1].splitlines()[0].startswith("ASSIGNEE")
    assert blocks[-1].startswith("total ")


def test_colour_only_on_a_tty_and_never_with_no_color(d):
    js(d, "create", "colourful")
    assert "\033[" in on_tty(d, "list")
    assert "\033[" not in on_tty(d, "list", env={"NO_COLOR": "1"})
    assert "\033[" not in d.cli("list").stdout
    assert "\033[" not in d.cli("stats").stdout and "\033[" not in d.cli("status").stdout


def test_show_children_stay_aligned_in_colour(d):
    import re
    p = js(d, "create", "tty parent")
    c1 = js(d, "create", "kid one", "--parent", p["id"])
    c2 = js(d, "create", "kid two", "--parent", p["id"])
    js(d, "block", c2["id"], "--reason", "x")
    for out in (on_tty(d, "show", p["id"]), d.cli("show", p["id"]).stdout):
        plain = re.sub(r"\033\[[0-9;]*m", "", out).replace("\r\n", "\n")
        lines = plain.splitlines()
        one = next(ln for ln in lines if c1["id"] in ln)
        two = next(ln for ln in lines if c2["id"] in ln)
        assert "todo" in one and "blocked" in two
        assert one.index("kid one") == two.index("kid two"), (one, two)


def test_status_human(d):
    out = d.cli("status").stdout
    assert f"pid {d.pid}" in out and d.socket in out
    assert "dispatcher" in out and "reaper" in out


def test_tail_streams_events(d):
    t = js(d, "create", "tailed")
    # SIGINT may be ignored in our own process (a background job); give the client the default, as a terminal would
    p = subprocess.Popen([KANBAN, "tail", t["id"], "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=d.env(), cwd=d.tmp, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen: list[dict] = []
        buf = b""

        def got(kind):
            nonlocal buf
            r, _, _ = select.select([p.stdout], [], [], 0.1)
            if r:
                buf += os.read(p.stdout.fileno(), 65536)
                *lines, buf = buf.split(b"\n")
                seen.extend(json.loads(x) for x in lines if x.strip())
            return any(e["kind"] == kind for e in seen)

        wait_for(lambda: got("created"), timeout=10, what="the task's history")
        d.cli("comment", t["id"], "live")
        wait_for(lambda: got("commented"), timeout=10, what="a live event")
        assert all(e["task_id"] == t["id"] for e in seen)
        p.send_signal(signal.SIGINT)  # Ctrl-C ends the stream cleanly
        assert p.wait(10) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["create"],
    ["no-such-verb"],
    ["list", "--limit", "lots"],
    ["list", "--sort", "sideways"],
    ["list", "--frobnicate"],
    ["show"],
    ["assign", "t_00000001"],
    ["block", "t_00000001"],
    ["unblock"],
    ["archive"],
    ["link", "t_00000001"],
    ["complete", "t_00000001", "--metadata", "not json"],
    ["complete", "t_00000001", "--metadata", "[1]"],
])
def test_usage_errors_exit_2_with_one_line(d, argv, tmp_path):
    # pointing at no daemon proves the CLI decided alone (a connection attempt would exit 1)
    res = d.cli(*argv, check=False, env={"KANBAN_SOCKET": str(tmp_path / "none.sock")})
    assert res.returncode == 2, (res.returncode, res.stderr)
    line = one_line_err(res)
    assert line.startswith("kanban")
    assert res.stdout == ""


def test_help_exits_0(d):
    res = d.cli("--help")
    assert res.returncode == 0 and "create" in res.stdout and "complete" in res.stdout


def test_server_errors_exit_1_naming_the_id(d):
    res = d.cli("show", "t_0badcafe", check=False)
    assert res.returncode == 1 and res.stdout == ""
    line = one_line_err(res)
    assert "t_0badcafe" in line and "not_found" in line
    t = js(d, "create", "finished")
    d.cli("complete", t["id"])
    res = d.cli("complete", t["id"], "--json", check=False)
    assert res.returncode == 1 and res.stdout == ""
    line = one_line_err(res)
    assert t["id"] in line and "illegal_transition" in line and "done" in line
    res = d.cli("link", t["id"], t["id"], check=False)
    assert res.returncode == 1 and t["id"] in one_line_err(res)
    res = d.cli("archive", t["id"], "t_0badcafe", check=False)
    assert res.returncode == 1 and "t_0badcafe" in one_line_err(res)
    assert status_of(d, t["id"]) == "done", "a refused batch changes nothing"


def test_not_running_message_after_retrying(d, tmp_path):
    sock = str(tmp_path / "gone.sock")
    t0 = time.monotonic()
    res = d.cli("list", check=False, env={"KANBAN_SOCKET": sock})
    elapsed = time.monotonic() - t0
    assert res.returncode == 1 and res.stdout == ""
    assert one_line_err(res) == "kanban: " + NOT_RUNNING.format(sock)
    res = d.cli("list", "--json", check=False, env={"KANBAN_SOCKET": sock})
    assert res.returncode == 1 and res.stdout == ""
    assert json.loads(one_line_err(res)) == {"error": {"name": "not_running", "message": NOT_RUNNING.format(sock),
                                                       "data": {}}}
    assert elapsed >= 1.5, f"the client should retry for ~2 s, gave up after {elapsed:.2f}s"


def test_client_rides_out_a_daemon_start(make_daemon):
    nd = make_daemon(start=False)
    client = subprocess.Popen([KANBAN, "status", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=nd.env(), cwd=nd.tmp, text=True)
    try:
        nd.start()
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    assert json.loads(out)["pid"] == nd.pid


# ---- the daemon's lifecycle and config ------------------------------------------------------


def _kanband(dm: Daemon, *args: str, config: str | None = None, state: str | None = None,
             sock: str | None = None) -> subprocess.CompletedProcess:
    argv = [KANBAND, "--config", config or dm.config_path, "--state-dir", state or dm.state,
            "--socket", sock or dm.socket, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=dm.env(), timeout=30, cwd=dm.tmp)


def test_second_daemon_is_refused(d):
    pidfile = os.path.join(d.state, "kanband.pid")
    assert open(pidfile).read().strip() == str(d.pid)
    res = _kanband(d)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert f"pid {d.pid}" in line and "already running" in line
    res = _kanband(d, sock=os.path.join(d.tmp, "other.sock"))  # the lock is on the state dir
    assert res.returncode == 1 and f"pid {d.pid}" in res.stderr
    # the first daemon is untouched
    assert open(pidfile).read().strip() == str(d.pid)
    assert os.path.exists(d.socket) and d.rpc("daemon.status")["pid"] == d.pid
    assert not os.path.exists(os.path.join(d.tmp, "other.sock"))


def test_sigterm_cleans_up(make_daemon):
    nd = make_daemon()
    pidfile = os.path.join(nd.state, "kanband.pid")
    assert os.path.exists(pidfile) and os.path.exists(nd.socket)
    role_pids = list(nd.role_pids().values())
    assert nd.stop() == 0
    assert not os.path.exists(pidfile)
    assert not os.path.exists(nd.socket)
    wait_for(lambda: not nd.ours(), timeout=10, what="every daemon process to exit")
    for pid in role_pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("text,key", [
    ("dispatch:\n  bogus: 1\n", "dispatch.bogus"),
    ("dispatch:\n  max_in_progress: many\n", "dispatch.max_in_progress"),
    ("server:\n  idle_timeout: forever\n", "server.idle_timeout"),
    ("profiles:\n  w:\n    command: [x]\n    max_runtime: [1]\n", "profiles.w.max_runtime"),
    ("profiles:\n  w:\n    command: [x]\n    colour: red\n", "profiles.w.colour"),
    ("logs:\n  level: loud\n", "logs.level"),
    ("nonsense: 1\n", "nonsense"),
])
def test_bad_config_is_refused_naming_file_and_key(make_daemon, text, key):
    nd = make_daemon(start=False)
    nd.write_config(text)
    res = _kanband(nd)
    assert res.returncode != 0
    assert nd.config_path in res.stderr and key in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(nd.state, "kanband.pid")) and not os.path.exists(nd.socket)
    chk = _kanband(nd, "--check-config")
    assert chk.returncode != 0 and nd.config_path in chk.stderr and key in chk.stderr


def test_check_config_accepts_good_and_missing_files(make_daemon):
    nd = make_daemon(start=False)
    res = _kanband(nd, "--check-config")
    assert res.returncode == 0 and "config OK" in res.stdout and nd.config_path in res.stdout
    env = nd.env({"XDG_CONFIG_HOME": os.path.join(nd.tmp, "empty-xdg")})
    res = subprocess.run([KANBAND, "--check-config"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0 and "defaults" in res.stdout


# ---- the client stays small -------------------------------------------------------------------

FORBIDDEN = ("daemon", "yaml", "structlog", "psutil", "setproctitle", "sdnotify", "sqlite3", "_sqlite3")
#: The web role's stack and the MCP SDK with what it pulls in: only `kanban mcp` may import the SDK's.
MCP_SDK = ("mcp", "mcp_types", "pydantic", "pydantic_core", "anyio", "starlette", "httpx", "uvicorn", "asyncio")

_PROBE = """
import json, os, sys
sys.argv = ["kanban", *json.loads(sys.argv[1])]
from client import cli
try:
    rc = cli.main()
except SystemExit as exc:
    rc = exc.code
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, f)
"""


@pytest.mark.parametrize("argv", [["list"], ["show", "t_0badcafe"], ["create", "--json", "probe"], ["--help"],
                                  ["list", "--bogus-flag"], ["completion", "bash"], ["completion", "--values", "task"],
                                  ["--version"], ["log", "t_0badcafe", "-f"], ["list", "--since", "1h", "-q"],
                                  ["runs", "t_0badcafe"], ["web"]])
def test_client_imports_no_daemon_code(d, argv, tmp_path):
    out = tmp_path / "mods.json"
    env = d.env({"PROBE_OUT": str(out)})
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True,
                         env=env, timeout=30, cwd=str(REPO))
    data = json.loads(out.read_text())
    assert data["rc"] in (0, 1, 2), res.stderr
    bad = [m for m in data["modules"] if m.split(".")[0] in FORBIDDEN + MCP_SDK]
    assert not bad, f"kanban {' '.join(argv)} imported {bad}"
    assert "client.cli" in data["modules"]


def test_kanban_mcp_imports_the_sdk_and_still_no_daemon_code(d, tmp_path):
    """`kanban mcp` is the one verb that imports the MCP SDK; it serves until stdin closes (here at once)."""
    out = tmp_path / "mods.json"
    env = d.env({"PROBE_OUT": str(out)})
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(["mcp"])], capture_output=True, text=True,
                         env=env, timeout=60, cwd=str(REPO), stdin=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    assert data["rc"] == 0, res.stderr
    assert "mcp.server.lowlevel" in data["modules"] and "client.mcp" in data["modules"]
    bad = [m for m in data["modules"] if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"kanban mcp imported {bad}"


def test_console_script_import_time_has_no_daemon_modules(d):
    res = subprocess.run([sys.executable, "-X", "importtime", KANBAN, "status"], capture_output=True, text=True,
                         env=d.env(), timeout=30, cwd=d.tmp)
    assert res.returncode == 0, res.stderr
    imported = [ln.split("|")[-1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:")]
    assert "client.cli" in imported
    bad = [m for m in imported if m.split(".")[0] in FORBIDDEN]
    assert not bad, bad
