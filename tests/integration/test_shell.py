"""The operator's shell: completion scripts loaded in real bash, zsh and fish; ``--version``;
``list -q/--sort/--since``; ``show`` through a pager on a terminal; ``edit`` in ``$EDITOR``;
``create --body -``. Everything through the real ``kanban`` against a real ``kanband``.

The completion scripts are loaded in the real shells (install them with ``make shells``):
bash's function is driven through ``COMP_WORDS``/``COMP_CWORD`` exactly as readline
would; fish's through ``complete -C``, its own completion engine; zsh's after
``compinit`` with ``compdef`` registered, with ``compadd`` (a builtin that only works
inside the line editor) captured by a function so the candidates can be read back.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests.harness import BIN, FAST, KANBAN, REPO, Daemon, drain_pty, wait_for, write_script


@pytest.fixture(scope="module")
def d():
    dm = Daemon(FAST)
    try:
        done = write_script(f"{dm.tmp}/done.sh", "#!/bin/sh\necho \"working on $KANBAN_TASK\"\n"
                                                 "kanban complete --summary ok\n")
        gate = write_script(f"{dm.tmp}/gate.sh", "#!/bin/sh\nwhile [ ! -e \"$KANBAN_WORKSPACE/go\" ]; do "
                                                 "sleep 0.05; done\nkanban complete --summary gated\n")
        dm.cfg["profiles"] = {"alpha": {"command": [done]}, "beta": {"command": [done]},
                              "gate": {"command": [gate], "workspace": f"dir:{dm.tmp}/gatews"}}
        dm.cfg["sinks"] = {"hookone": {"type": "command", "command": ["/bin/true"]}}
        os.makedirs(f"{dm.tmp}/gatews")
        dm.write_config(dm.cfg)
        dm.start()
        yield dm
    finally:
        dm.cleanup()
    assert not dm.ours(), f"processes left running: {dm.ours()}"


def js(d, *args, **kw):
    res = d.cli(*args, "--json", **kw)
    assert res.stderr == "", res.stderr
    return json.loads(res.stdout)


def shell_env(d, extra: dict | None = None) -> dict:
    env = d.env(extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def need(shell: str) -> str:
    path = shutil.which(shell)
    assert path, f"{shell} is not installed: run `make shells` (apt-get install -y zsh fish)"
    return path


def run_shell(d, argv: list[str], script: str, extra_env: dict | None = None) -> str:
    res = subprocess.run([*argv, script], capture_output=True, text=True, env=shell_env(d, extra_env),
                         timeout=60, cwd=d.tmp)
    assert res.returncode == 0, f"{argv[0]} failed ({res.returncode}): {res.stderr}\n{res.stdout}"
    return res.stdout


def results(out: str) -> dict[str, list[str]]:
    """Lines ``LABEL|cand1 cand2`` -> {label: [candidates]}."""
    found = {}
    for line in out.splitlines():
        if "|" in line:
            label, _, cands = line.partition("|")
            found[label] = cands.split()
    return found


# ---- completion: bash -------------------------------------------------------------------------

BASH_DRIVER = r"""
source <(kanban completion bash) || exit 3
complete -p kanban
t() { local label=$1; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _kanban
      echo "$label|${COMPREPLY[*]}"; }
"""


def test_bash_completion_registers_and_completes_from_the_registry(d):
    need("bash")
    res = subprocess.run(["bash", "-c", "source <(kanban completion bash); complete -p kanban"],
                         capture_output=True, text=True, env=shell_env(d), timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "complete -F _kanban kanban", res.stderr
    out = run_shell(d, ["bash", "-c"], BASH_DRIVER + r"""
t verbs kanban ''
t li kanban li
t sortflag kanban list --so
t sort kanban list --sort ''
t sorteq kanban list --sort = c
t status kanban list --status ready,t
t group kanban notify ''
t groupleaf kanban notify sub
t sinkflag kanban notify subscribe --si
t shells kanban completion ''
t ws kanban edit t_00000000 --workspace ''
t editflags kanban edit t_00000000 --max-
t logflags kanban log t_00000000 -
t kindflag kanban events --ki
t global kanban --ver
""")
    r = results(out)
    from client import cli
    top = {v.split()[0] for v in cli.verbs()} | {"completion", "mcp"}
    assert set(r["verbs"]) == top
    assert r["li"] == ["link", "list"]
    assert r["sortflag"] == ["--sort"]
    assert r["sort"] == ["priority", "created", "updated", "id"]  # the registry's choices, in order
    assert r["sorteq"] == ["created"]
    assert sorted(r["status"]) == ["ready,todo", "ready,triage"]
    assert r["group"] == ["subscribe", "list", "unsubscribe", "resume"]
    assert r["groupleaf"] == ["subscribe"]
    assert r["sinkflag"] == ["--sink"]
    assert r["shells"] == ["bash", "zsh", "fish"]
    assert r["ws"] == ["scratch", "worktree", "dir:"]
    assert sorted(r["editflags"]) == ["--max-retries", "--max-runtime"]
    assert {"-f", "--follow", "--lines", "--run", "-n", "--tail"} <= set(r["logflags"])
    assert sorted(r["kindflag"]) == ["--kind", "--kinds"]
    assert r["global"] == ["--version"]


def test_bash_completes_task_ids_profiles_and_sinks_from_the_daemon(d):
    a = js(d, "create", "complete me")["id"]
    b = js(d, "create", "complete me too")["id"]
    gone = js(d, "create", "archived one")["id"]
    js(d, "archive", gone)
    out = run_shell(d, ["bash", "-c"], BASH_DRIVER + f"""
t ids kanban show t_
t prefix kanban show {a[:8]}
t second kanban link {a} ''
t assignee kanban create title -a ''
t assign kanban assign {a} ''
t sink kanban notify subscribe {a} --sink ''
t resume kanban notify resume ''
t socket kanban --socket {d.socket} show {a[:8]}
""")
    r = results(out)
    assert {a, b} <= set(r["ids"]) and gone not in r["ids"], "archived tasks are left out"
    assert a in r["prefix"] and all(x.startswith(a[:8]) for x in r["prefix"])
    assert {a, b} <= set(r["second"])
    assert r["assignee"] == ["alpha", "beta", "gate"] and r["assign"] == ["alpha", "beta", "gate"]
    assert r["sink"] == ["hookone"] and r["resume"] == ["hookone"]
    assert a in r["socket"]
    # --socket on the line is passed on: with KANBAN_SOCKET pointing nowhere, ids still come
    out = run_shell(d, ["bash", "-c"], BASH_DRIVER + f"t socket kanban --socket {d.socket} show {a[:8]}\n"
                    "t nosocket kanban show t_\n", extra_env={"KANBAN_SOCKET": f"{d.tmp}/nothing.sock"})
    r = results(out)
    assert a in r["socket"] and r["nosocket"] == []


def test_completion_values_are_quiet_and_fast_without_a_daemon(d, tmp_path):
    env = d.env({"KANBAN_SOCKET": str(tmp_path / "none.sock")})
    t0 = time.monotonic()
    res = subprocess.run([KANBAN, "completion", "--values", "task", "t_"], capture_output=True, text=True,
                         env=env, timeout=30)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert time.monotonic() - t0 < 2.0, "a TAB press must not wait for the connect retry"
    res = subprocess.run([KANBAN, "completion", "tcsh"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "bash, zsh, fish" in res.stderr


def test_task_ids_is_a_bounded_prefix_scan(d):
    ids = {js(d, "create", f"many {i}")["id"] for i in range(5)}
    got = d.rpc("task.ids", {"limit": 2})
    assert len(got["ids"]) == 2 and got["more"] is True and got["ids"] == sorted(got["ids"])
    one = sorted(ids)[0]
    assert d.rpc("task.ids", {"prefix": one}) == {"ids": [one], "more": False}
    assert d.rpc("task.ids", {"prefix": "t_zz"}) == {"ids": [], "more": False}
    res = d.cli("completion", "--values", "task", one[:9])
    assert one in res.stdout.split() and all(x.startswith(one[:9]) for x in res.stdout.split())
    assert d.rpc("board.names") == {"profiles": ["alpha", "beta", "gate"], "sinks": ["hookone"]}


# ---- completion: zsh and fish ---------------------------------------------------------------

ZSH_DRIVER = r"""
autoload -Uz compinit && compinit -u -d "$ZDOTDIR/.zcompdump"
source <(kanban completion zsh) || exit 3
print "registered|$_comps[kanban]"
compadd() { local a; while (( $# )); do a=$1; shift; [[ $a == -- ]] && { reply+=("$@"); return 0; }; done; }
compset() { return 1; }
t() { local label=$1; shift; words=("$@"); CURRENT=${#words}; reply=(); _kanban; print -r -- "$label|${reply[*]}"; }
"""


def test_zsh_completion_loads_registers_and_completes(d, tmp_path):
    need("zsh")
    a = js(d, "create", "zsh task")["id"]
    out = run_shell(d, ["zsh", "-f", "-c"], ZSH_DRIVER + f"""
t verbs kanban ''
t sort kanban list --sort ''
t flags kanban list --s
t group kanban notify ''
t ids kanban show {a[:8]}
t assignee kanban create x --assignee ''
t sink kanban notify subscribe {a} --sink ''
t shells kanban completion ''
""", extra_env={"ZDOTDIR": str(tmp_path)})
    r = results(out)
    assert r["registered"] == ["_kanban"], "compdef did not register the function"
    assert {"create", "list", "log", "completion", "notify"} <= set(r["verbs"])
    assert r["sort"] == ["priority", "created", "updated", "id"]
    assert {"--status", "--sort", "--since", "-s"} <= set(r["flags"])
    assert r["group"] == ["subscribe", "list", "unsubscribe", "resume"]
    assert a in r["ids"]
    assert r["assignee"] == ["alpha", "beta", "gate"]
    assert r["sink"] == ["hookone"]
    assert r["shells"] == ["bash", "zsh", "fish"]


def test_fish_completion_through_fish_own_engine(d):
    need("fish")
    a = js(d, "create", "fish task")["id"]
    script = ("kanban completion fish | source\n"
              + "".join(f"echo '{label}|'(complete -C '{line}' | string split -f 1 \\t | string join ' ')\n"
                        for label, line in [("li", "kanban li"), ("sort", "kanban list --sort "),
                                            ("status", "kanban list --status ready,t"),
                                            ("group", "kanban notify "), ("ids", f"kanban show {a[:8]}"),
                                            ("assignee", "kanban create x -a "),
                                            ("sink", f"kanban notify subscribe {a} --sink "),
                                            ("shells", "kanban completion "), ("flags", "kanban log t_1 --l")]))
    out = run_shell(d, ["fish", "--no-config", "-c"], script)
    r = results(out)
    assert r["li"] == ["link", "list"]
    assert sorted(r["sort"]) == ["created", "id", "priority", "updated"]
    assert sorted(r["status"]) == ["ready,todo", "ready,triage"]
    assert sorted(r["group"]) == ["list", "resume", "subscribe", "unsubscribe"]
    assert r["ids"] == [a]
    assert r["assignee"] == ["alpha", "beta", "gate"]
    assert r["sink"] == ["hookone"]
    assert r["shells"] == ["bash", "fish", "zsh"]
    assert r["flags"] == ["--lines"]


# ---- --version --------------------------------------------------------------------------------


def test_version_prints_client_and_daemon(d, tmp_path):
    out = d.cli("--version").stdout.splitlines()
    assert out[0].startswith("kanban 0.") and "(protocol 1)" in out[0]
    assert out[1].startswith("kanband 0.") and "(protocol 1)" in out[1] and d.socket in out[1]
    v = js(d, "--version")
    assert v["client"]["protocol"] == v["daemon"]["protocol"] == 1 and v["protocol_mismatch"] is False
    assert d.rpc("daemon.status")["protocol"] == 1
    res = d.cli("--version", env={"KANBAN_SOCKET": str(tmp_path / "none.sock")})
    assert res.stdout.splitlines()[1].startswith("kanband: not reachable:") and res.returncode == 0


def test_version_warns_on_a_protocol_mismatch(d):
    probe = ("import sys; import client.protocol as p; p.PROTOCOL_VERSION = 99\n"
             "from client import cli; sys.exit(cli.main(['--version']))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=d.env(), timeout=30,
                         cwd=str(REPO))
    assert res.returncode == 0, res.stderr
    assert "(protocol 99)" in res.stdout.splitlines()[0]
    warning = res.stderr.strip().splitlines()
    assert len(warning) == 1 and "protocol 99" in warning[0] and "kanband speaks 1" in warning[0]


# ---- list -q, --sort, --since -------------------------------------------------------------------


def test_list_quiet_sort_and_since(d):
    tag = f"q{time.monotonic_ns()}"
    ids = [js(d, "create", f"{tag} {i}", "--tenant", tag, "-p", str(p))["id"] for i, p in enumerate((1, 5, 3))]
    res = d.cli("list", "--tenant", tag, "-q")
    assert res.stdout.split() == [ids[1], ids[2], ids[0]], "default sort: priority, highest first"
    assert d.cli("list", "--tenant", tag, "-q", "--sort", "created").stdout.split() == ids
    assert d.cli("ls", "--tenant", tag, "--quiet", "--sort", "id").stdout.split() == sorted(ids)
    assert d.cli("list", "--tenant", tag, "-q", "--all", "-n", "1").stdout.split() == [ids[1], ids[2], ids[0]]
    assert d.cli("list", "--tenant", "nobody-here", "-q").stdout == ""
    # --since: updated (or created) at or after; touch the first task so it is the newest
    cut = wait_for(lambda: (t := time.time()) > js(d, "show", ids[2])["task"]["updated_at"] and t)
    wait_for(lambda: time.time() > cut)
    js(d, "edit", ids[0], "--title", f"{tag} touched")
    assert d.cli("list", "--tenant", tag, "-q", "--since", f"@{cut!r}").stdout.split() == [ids[0]]
    assert sorted(d.cli("list", "--tenant", tag, "-q", "--since", "1h").stdout.split()) == sorted(ids)
    assert d.cli("list", "--tenant", tag, "-q", "--since", "2999-01-01").stdout == ""
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(cut - 1))
    assert ids[0] in d.cli("list", "--tenant", tag, "-q", "--since", local).stdout.split()
    res = d.cli("list", "--since", "last tuesday", check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "--since" in res.stderr
    err = d.rpc_error("task.list", {"since": "soon"})
    assert err.name == "invalid_params" and err.error["data"]["field"] == "since"


# ---- show through a pager ----------------------------------------------------------------------


def on_pty(d, args: list[str], env: dict | None = None, rows: int = 20, cols: int = 100,
           stdin: bytes | None = None, drop: tuple[str, ...] = ("PAGER", "LESS", "VISUAL", "EDITOR")
           ) -> tuple[int, str]:
    """Run ``kanban ARGS`` with stdout on a terminal of ``rows`` x ``cols``; returns (status, output).

    ``drop`` names variables of the test's own environment left out (``env`` may set them again).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    full = d.env()
    for name in drop:
        full.pop(name, None)
    full.update(env or {})
    p = subprocess.Popen([KANBAN, *args], stdin=subprocess.PIPE if stdin is not None else slave, stdout=slave,
                         stderr=slave, env=full, cwd=d.tmp, start_new_session=True)
    os.close(slave)
    if stdin is not None:
        p.stdin.write(stdin)
        p.stdin.close()
    out = drain_pty(master)
    return p.wait(30), out.decode(errors="replace").replace("\r\n", "\n")


def fake_pager(d, name: str) -> tuple[str, str]:
    """A $PAGER that records what it was given (and that it ran) and passes it on."""
    record = f"{d.tmp}/{name}.out"
    script = write_script(f"{d.tmp}/{name}.sh", f"#!/bin/sh\necho \"LESS=$LESS\" > {record}.env\n"
                                                f"tee {record}\n")
    return script, record


def test_show_pages_a_long_task_on_a_terminal(d):
    tid = js(d, "create", "long one", "--body", "\n".join(f"body line {i}" for i in range(60)))["id"]
    pager, record = fake_pager(d, "pager1")
    code, out = on_pty(d, ["show", tid], env={"PAGER": pager})
    assert code == 0
    text = re.sub(r"\033\[[0-9;]*m", "", open(record).read())
    assert text.startswith(f"{tid}  ready  long one") and "body line 59" in text
    assert open(record + ".env").read().strip() == "LESS=FRX"
    assert "body line 59" in out, "the pager's output reaches the terminal"
    # --no-pager, a short task, or a pipe: printed directly
    pager2, record2 = fake_pager(d, "pager2")
    code, out = on_pty(d, ["show", tid, "--no-pager"], env={"PAGER": pager2})
    assert code == 0 and "body line 59" in out and not os.path.exists(record2)
    short = js(d, "create", "short one")["id"]
    code, out = on_pty(d, ["show", short], env={"PAGER": pager2})
    assert code == 0 and "short one" in out and not os.path.exists(record2)
    res = d.cli("show", tid, env={"PAGER": pager2})
    assert "body line 59" in res.stdout and not os.path.exists(record2)
    # PAGER unset: `less -FRX`; here a `less` first on PATH that records how it was called
    fake_bin = f"{d.tmp}/fakebin"
    os.makedirs(fake_bin, exist_ok=True)
    write_script(f"{fake_bin}/less", f"#!/bin/sh\necho \"$@\" > {d.tmp}/less.args\ncat\n")
    code, out = on_pty(d, ["show", tid], env={"PATH": f"{fake_bin}:{BIN}:/usr/bin:/bin"})
    assert code == 0 and open(f"{d.tmp}/less.args").read().split() == ["-FRX"] and "body line 59" in out
    # a pager that is not installed: the text is printed all the same
    code, out = on_pty(d, ["show", tid], env={"PAGER": "no-such-pager-here"})
    assert code == 0 and "body line 59" in out


# ---- edit --------------------------------------------------------------------------------------


def fake_editor(d, name: str, body: str) -> str:
    """An $EDITOR that rewrites the file with a Python snippet ``body`` (``text`` in, ``text`` out)."""
    return write_script(f"{d.tmp}/{name}.py", f"#!{sys.executable}\nimport sys\np = sys.argv[1]\n"
                                               f"text = open(p).read()\nopen(p + '.seen', 'w').write(text)\n"
                                               f"{body}\nopen(p, 'w').write(text)\n")


def edited_events(d, tid: str) -> list[dict]:
    return [e for e in js(d, "events", "--task", tid)["events"] if e["kind"] == "edited"]


def test_edit_in_editor_applies_every_change_in_one_request(d):
    tid = js(d, "create", "edit me", "-b", "old body\nline two", "-p", "2", "--triage")["id"]
    tmpdir = f"{d.tmp}/edtmp1"
    os.makedirs(tmpdir)
    editor = fake_editor(d, "ed1", "\n".join([
        "text = text.replace('title: edit me', 'title: edited title')",
        "text = text.replace('priority: 2', 'priority: 9')",
        "text = text.replace('assignee:', 'assignee: beta')",
        "text = text.replace('max_runtime:', 'max_runtime: 45m')",
        "text = text.replace('max_retries:', 'max_retries: 4')",
        f"text = text.replace('workspace: scratch', 'workspace: dir:{d.tmp}/elsewhere')",
        "text = text.split('\\nbody:')[0] + '\\nbody:\\nnew body\\n# not a comment here\\n'",
    ]))
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": editor, "VISUAL": "", "TMPDIR": tmpdir})
    assert code == 0, out
    assert "edited " + tid in out
    t = js(d, "show", tid)["task"]
    assert (t["title"], t["priority"], t["assignee"], t["max_runtime"], t["max_retries"]) == \
        ("edited title", 9, "beta", 2700.0, 4)
    assert (t["workspace"]["kind"], t["workspace"]["path"]) == ("dir", f"{d.tmp}/elsewhere")
    assert t["body"] == "new body\n# not a comment here"
    evs = edited_events(d, tid)
    assert len(evs) == 1, "one request, one edit"
    assert evs[0]["payload"]["fields"] == sorted(["title", "priority", "assignee", "max_runtime", "max_retries",
                                                  "workspace", "body"])
    left = os.listdir(tmpdir)
    assert [n for n in left if n.endswith(".seen")] and not [n for n in left if n.endswith(".txt")], \
        "the editor saw the form, and the applied form was removed"
    # $VISUAL wins over $EDITOR
    visual = fake_editor(d, "ed1v", "text = text.replace('title: edited title', 'title: by visual')")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": "/bin/false", "VISUAL": visual})
    assert code == 0 and js(d, "show", tid)["task"]["title"] == "by visual"


def test_edit_form_shows_the_fields_and_unchanged_means_nothing(d):
    tid = js(d, "create", "as is", "-a", "alpha", "--max-runtime", "90m", "--max-retries", "3", "--triage",
              "-b", "keep")["id"]
    editor = fake_editor(d, "ed2", "import shutil; shutil.copy(p, '" + d.tmp + "/form.txt')")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": editor})
    assert code == 0 and "nothing changed" in out
    form = open(f"{d.tmp}/form.txt").read()
    lines = [ln for ln in form.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["title: as is", "priority: 0", "assignee: alpha", "workspace: scratch", "max_runtime: 90m",
                     "max_retries: 3", "body:", "keep"]
    assert edited_events(d, tid) == []
    empty = fake_editor(d, "ed3", "text = ''")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": empty})
    assert code == 0 and "empty file; nothing changed" in out and edited_events(d, tid) == []


def test_edit_in_editor_refusals_keep_the_text(d):
    tid = js(d, "create", "refuse me", "--triage")["id"]
    bad = fake_editor(d, "ed4", "text = text.replace('priority: 0', 'priority: high')")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": bad})
    assert code == 1 and "priority must be an integer" in out and "your text is in" in out
    kept = out.split("your text is in ")[1].split(")")[0].strip()
    assert "priority: high" in open(kept).read()
    os.unlink(kept)
    clears = fake_editor(d, "ed5", "text = text.replace('title: refuse me', 'title:')")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": clears})
    assert code == 1 and "title cannot be empty" in out
    os.unlink(out.split("your text is in ")[1].split(")")[0].strip())
    failing = write_script(f"{d.tmp}/edfail.sh", "#!/bin/sh\nexit 3\n")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": failing})
    assert code == 1 and "exited with status 3" in out
    os.unlink(out.split("your text is in ")[1].split(")")[0].strip())
    # refused by the daemon: a bad duration; nothing applied, the text kept
    runtime = fake_editor(d, "ed6", "text = text.replace('max_runtime:', 'max_runtime: forever')\n"
                                    "text = text.replace('title: refuse me', 'title: not applied')")
    code, out = on_pty(d, ["edit", tid], env={"EDITOR": runtime})
    assert code == 1 and "invalid_params" in out and "max_runtime" in out and "your text is in" in out
    os.unlink(out.split("your text is in ")[1].split(")")[0].strip())
    assert js(d, "show", tid)["task"]["title"] == "refuse me" and edited_events(d, tid) == []


def test_edit_flags_and_their_guards(d):
    tid = js(d, "create", "flags", "--triage")["id"]
    t = js(d, "edit", tid, "--assignee", "alpha", "--max-runtime", "10m", "--max-retries", "5",
           "--workspace", "worktree")
    assert (t["assignee"], t["max_runtime"], t["max_retries"], t["workspace"]["kind"]) == \
        ("alpha", 600.0, 5, "worktree")
    assert js(d, "edit", tid, "--assignee", "")["assignee"] is None, "empty unassigns"
    assert js(d, "edit", tid, "--max-runtime", "")["max_runtime"] is None, "empty: the profile's again"
    assert edited_events(d, tid)[-1]["payload"]["fields"] == ["max_runtime"]
    for args, field in ((["--max-retries", "0"], "max_retries"), (["--max-runtime", "soon"], "max_runtime"),
                        (["--workspace", "dir:relative"], "workspace")):
        res = d.cli("edit", tid, *args, "--json", check=False)
        assert res.returncode == 1 and json.loads(res.stderr)["error"]["data"]["field"] == field, res.stderr
    js(d, "complete", tid)
    for args, verb in ((["--max-retries", "3"], "edit --max-retries"), (["--assignee", "beta"], "assign"),
                       (["--workspace", "scratch"], "edit --workspace")):
        res = d.cli("edit", tid, *args, check=False)
        assert res.returncode == 1 and "illegal_transition" in res.stderr and f"cannot {verb} it" in res.stderr
    assert js(d, "edit", tid, "--title", "a record stays editable")["title"] == "a record stays editable"


def test_edit_assignee_of_a_running_task_ends_its_run_first(d):
    tid = js(d, "create", "gated", "-a", "gate")["id"]
    d.wait_status(tid, "running")
    run = js(d, "show", tid)["task"]["current_run"]
    res = d.cli("edit", tid, "--workspace", "scratch", check=False)
    assert res.returncode == 1 and "cannot edit --workspace it" in res.stderr, "not under a running worker"
    js(d, "edit", tid, "--assignee", "nobody-runs-this", "-p", "4")
    wait_for(lambda: js(d, "runs", tid)["runs"][0]["outcome"] == "reassigned", what="the run to end")
    t = d.wait_status(tid, "ready")
    assert (t["assignee"], t["priority"]) == ("nobody-runs-this", 4)
    kinds = [e["kind"] for e in js(d, "events", "--task", tid)["events"]]
    assert "assigned" in kinds and "edited" in kinds and "reassigned" in kinds
    assert js(d, "runs", tid)["runs"][0]["id"] == run


# ---- create --body - ------------------------------------------------------------------------------


def test_create_reads_the_body_from_stdin(d):
    body = "from stdin\nwith two lines\n"
    res = subprocess.run([KANBAN, "create", "piped", "--body", "-", "--json"], input=body, capture_output=True,
                         text=True, env=d.env(), timeout=30)
    assert res.returncode == 0, res.stderr
    tid = json.loads(res.stdout)["id"]
    assert js(d, "show", tid)["task"]["body"] == body
    res = subprocess.run([KANBAN, "edit", tid, "-b", "-"], input="replaced", capture_output=True, text=True,
                         env=d.env(), timeout=30)
    assert res.returncode == 0 and js(d, "show", tid)["task"]["body"] == "replaced"
