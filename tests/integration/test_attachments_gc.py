"""Attachments (attach, attachments, detach, $KANBAN_ATTACHMENTS) and housekeeping (gc, retention)
against a real daemon, real worker processes and a real git repository."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from client.rpc import Client, ServerError
from tests.harness import wait_for, write_script

SLOW_TICK = {"dispatch": {"tick": "30s"}}


def att_root(d) -> Path:
    return Path(d.state) / "attachments"


def leftovers(d) -> list[str]:
    """Everything under the attachments root except committed files of tasks listed in ``keep``."""
    root = att_root(d)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def listing(d, task_id) -> dict:
    return d.cli_json("attachments", task_id)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def one_line_error(res, code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.strip(), res.stderr
    for w in words:
        assert w in res.stderr, res.stderr


# ---- attachments ------------------------------------------------------------------------------


def test_attach_list_detach_round_trip(make_daemon):
    d = make_daemon()
    t = d.cli_json("create", "with files")
    text = b"the spec\n"
    blob = os.urandom((1 << 20) + 300_000)  # three chunks
    Path(d.tmp, "spec.txt").write_bytes(text)
    Path(d.tmp, "data.bin").write_bytes(blob)
    res = d.cli_json("attach", t["id"], "spec.txt", "data.bin")
    assert [(a["name"], a["size"], a["sha256"]) for a in res["attachments"]] == [
        ("spec.txt", len(text), sha(text)), ("data.bin", len(blob), sha(blob))]
    task_dir = att_root(d) / t["id"]
    assert (task_dir / "spec.txt").read_bytes() == text and (task_dir / "data.bin").read_bytes() == blob
    assert mode(task_dir / "spec.txt") == mode(task_dir / "data.bin") == 0o600
    assert mode(task_dir) == mode(att_root(d)) == 0o700

    # collisions are suffixed, before the extension
    assert d.cli_json("attach", t["id"], "spec.txt")["attachments"][0]["name"] == "spec (2).txt"
    Path(d.tmp, "other.txt").write_bytes(b"other\n")
    assert d.cli_json("attach", t["id"], "other.txt", "--name", "spec.txt")["attachments"][0]["name"] == \
        "spec (3).txt"
    # names are sanitised: separators, '..' and control characters go
    assert d.cli_json("attach", t["id"], "other.txt", "--name", "../../etc/pass\x07wd")["attachments"][0]["name"] \
        == "_._etc_passwd"
    lst = listing(d, t["id"])
    assert [a["name"] for a in lst["attachments"]] == ["spec.txt", "data.bin", "spec (2).txt", "spec (3).txt",
                                                       "_._etc_passwd"]
    assert lst["total"] == 2 * len(text) + len(blob) + 12
    by_name = {a["name"]: a for a in lst["attachments"]}
    assert by_name["spec (3).txt"]["sha256"] == sha(b"other\n")
    assert by_name["data.bin"]["path"] == str(task_dir / "data.bin") and by_name["data.bin"]["created_by"] == "operator"
    human = d.cli("attachments", t["id"]).stdout
    assert "spec (2).txt" in human and "5 attachments" in human
    assert not (att_root(d) / "etc").exists() and not Path(d.state, "etc").exists()

    assert d.cli_json("detach", t["id"], "spec (2).txt")["size"] == len(text)
    assert not (task_dir / "spec (2).txt").exists()
    assert "spec (2).txt" not in [a["name"] for a in listing(d, t["id"])["attachments"]]
    one_line_error(d.cli("detach", t["id"], "spec (2).txt", check=False), 1, "not_found", "spec (2).txt")
    kinds = [e["kind"] for e in d.rpc("events.since", {"task": t["id"]})["events"]]
    assert kinds.count("attached") == 5 and kinds.count("detached") == 1
    # the detached name is free again
    assert d.cli_json("attach", t["id"], "spec.txt")["attachments"][0]["name"] == "spec (2).txt"
    assert leftovers(d) == sorted(f"{t['id']}/{n}" for n in ("spec.txt", "data.bin", "spec (2).txt",
                                                            "spec (3).txt", "_._etc_passwd"))


def test_bad_attachments_give_one_line_and_leave_nothing_behind(make_daemon):
    d = make_daemon({"attachments": {"max_size": "1KiB", "max_task_total": "2KiB"}})
    t = d.cli_json("create", "caps")
    for name, size in (("small.txt", 700), ("big.bin", 1025), ("ok.txt", 1024)):
        Path(d.tmp, name).write_bytes(b"x" * size)
    os.mkdir(Path(d.tmp, "adir"))

    one_line_error(d.cli("attach", t["id"], "big.bin", check=False), 1, "invalid_params", "big.bin",
                   "attachments.max_size")
    # all or none: a good file before a refused one is not attached either
    one_line_error(d.cli("attach", t["id"], "small.txt", "big.bin", check=False), 1, "max_size")
    one_line_error(d.cli("attach", t["id"], "small.txt", "missing.txt", check=False), 2, "missing.txt",
                   "No such file")
    one_line_error(d.cli("attach", t["id"], "adir", check=False), 2, "adir")
    one_line_error(d.cli("attach", t["id"], "small.txt", "ok.txt", "--name", "x", check=False), 2, "--name")
    os.mkfifo(Path(d.tmp, "fifo"))
    for special in ("fifo", "/dev/null"):
        one_line_error(d.cli("attach", t["id"], special, check=False), 2, "not a regular file")
    for bad in ("../..", "/", "\x01\x02\n", " . "):
        one_line_error(d.cli("attach", t["id"], "small.txt", "--name", bad, check=False), 1, "invalid_params",
                       "empty once sanitised")
    one_line_error(d.cli("attach", "t_00000000", "small.txt", check=False), 1, "not_found", "t_00000000")
    assert listing(d, t["id"])["attachments"] == [] and leftovers(d) == []
    assert not (att_root(d) / t["id"]).exists()

    # the per-task total counts what is stored
    d.cli("attach", t["id"], "ok.txt", "small.txt")
    one_line_error(d.cli("attach", t["id"], "small.txt", check=False), 1, "attachments.max_task_total")
    assert [a["name"] for a in listing(d, t["id"])["attachments"]] == ["ok.txt", "small.txt"]
    assert leftovers(d) == [f"{t['id']}/ok.txt", f"{t['id']}/small.txt"]

    # archived tasks' attachments no longer change
    d.cli("archive", t["id"])
    one_line_error(d.cli("attach", t["id"], "small.txt", check=False), 1, "conflict", "archived")


def test_upload_protocol_discards_what_is_not_committed(make_daemon):
    d = make_daemon()
    t = d.cli_json("create", "uploads")
    tmpdir = att_root(d) / ".tmp"
    data = os.urandom(5000)
    with Client(d.socket) as c:
        up = c.call("attach.begin", {"id": t["id"], "name": "x.bin", "size": len(data)})
        assert up["name"] == "x.bin" and up["chunk"] == 512 * 1024
        c.call("attach.chunk", {"upload": up["upload"], "offset": 0, "data": base64.b64encode(data[:100]).decode()})
        with Client(d.socket) as other:  # an upload belongs to the connection that began it
            try:
                other.call("attach.chunk", {"upload": up["upload"], "offset": 100, "data": ""})
                raise AssertionError("another connection wrote to the upload")
            except ServerError as exc:
                assert exc.name == "not_found"
        try:  # a wrong offset is refused; the upload goes on
            c.call("attach.chunk", {"upload": up["upload"], "offset": 7, "data": ""})
            raise AssertionError("wrong offset accepted")
        except ServerError as exc:
            assert exc.name == "invalid_params" and "100 bytes received" in str(exc)
        c.call("attach.chunk", {"upload": up["upload"], "offset": 100,
                                "data": base64.b64encode(data[100:]).decode()})
        try:  # a commit whose hash does not match stores nothing and discards the upload
            c.call("attach.commit", {"uploads": [up["upload"]], "sha256": [sha(b"something else")]})
            raise AssertionError("a bad hash was committed")
        except ServerError as exc:
            assert exc.name == "invalid_params" and "SHA-256" in str(exc)
        assert os.listdir(tmpdir) == [] and listing(d, t["id"])["attachments"] == []
        # a client that dies mid-upload: its temp file goes with its connection
        up = c.call("attach.begin", {"id": t["id"], "name": "y.bin", "size": len(data)})
        c.call("attach.chunk", {"upload": up["upload"], "offset": 0, "data": base64.b64encode(data[:10]).decode()})
        try:  # more bytes than declared: discarded at once
            c.call("attach.chunk", {"upload": up["upload"], "offset": 10, "data": base64.b64encode(data).decode()})
            raise AssertionError("an overlong upload was accepted")
        except ServerError as exc:
            assert exc.name == "invalid_params"
        assert os.listdir(tmpdir) == []
        up = c.call("attach.begin", {"id": t["id"], "name": "z.bin", "size": len(data)})
        c.call("attach.chunk", {"upload": up["upload"], "offset": 0, "data": base64.b64encode(data[:10]).decode()})
        assert len(os.listdir(tmpdir)) == 1
    wait_for(lambda: os.listdir(tmpdir) == [], timeout=15, what="the abandoned upload to be discarded")
    assert listing(d, t["id"])["attachments"] == [] and leftovers(d) == []
    # a commit resent after its answer was lost (what `kanban attach` does inside a worker after a
    # daemon restart) gets the first answer: the file is attached once
    with Client(d.socket) as c:
        up = c.call("attach.begin", {"id": t["id"], "name": "once.bin", "size": len(data)})["upload"]
        c.call("attach.chunk", {"upload": up, "offset": 0, "data": base64.b64encode(data).decode()})
        first = c.call("attach.commit", {"uploads": [up], "sha256": [sha(data)], "request_id": "rq-1"})
    with Client(d.socket) as c:
        assert c.call("attach.commit", {"uploads": ["u_resent"], "sha256": ["-"], "request_id": "rq-1"}) == first
        try:  # a new request id with a dead upload: nothing was applied, the client starts over
            c.call("attach.commit", {"uploads": ["u_resent"], "sha256": ["-"], "request_id": "rq-2"})
            raise AssertionError("a commit of an unknown upload succeeded")
        except ServerError as exc:
            assert exc.name == "not_found"
    assert [a["name"] for a in listing(d, t["id"])["attachments"]] == ["once.bin"]


def test_the_largest_attachment_allowed_by_default(make_daemon):
    d = make_daemon()
    t = d.cli_json("create", "big")
    data = os.urandom(25 << 20)
    Path(d.tmp, "max.bin").write_bytes(data)
    Path(d.tmp, "over.bin").write_bytes(data + b"!")
    one_line_error(d.cli("attach", t["id"], "over.bin", check=False), 1, "25.0 MiB", "attachments.max_size")
    got = d.cli_json("attach", t["id"], "max.bin", timeout=60)["attachments"][0]
    assert got["size"] == len(data) and got["sha256"] == sha(data)
    assert (att_root(d) / t["id"] / "max.bin").read_bytes() == data


WORKER = r"""#!{python}
import json, os, subprocess
out = {{}}
att = os.environ["KANBAN_ATTACHMENTS"]
task = os.environ["KANBAN_TASK"]
def kb(*args):
    r = subprocess.run(["kanban", *args], capture_output=True, text=True)
    return [r.returncode, r.stderr.strip(), r.stdout.strip()]
out["dir"] = att
out["listing"] = sorted(os.listdir(att))
spec = os.path.join(att, "spec.txt")
out["content"] = open(spec).read()
out["mode"], out["dir_mode"] = os.stat(spec).st_mode & 0o777, os.stat(att).st_mode & 0o777
out["ino"] = os.stat(spec).st_ino
try:  # try hard to change it: only the run's copy may change
    os.chmod(att, 0o700)
    os.chmod(spec, 0o600)
    with open(spec, "a") as f:
        f.write("tampered by the worker\n")
    out["tampered"] = "yes"
except OSError as exc:
    out["tampered"] = str(exc)
with open("report.txt", "w") as f:
    f.write("the worker's result\n")
other = json.loads(kb("show", task, "--json")[2])["task"]["body"]
out["own"] = kb("attach", task, "report.txt", "--json")
out["other"] = kb("attach", other, "report.txt")
out["detach"] = kb("detach", task, "spec.txt")
out["gc"] = kb("gc", "--dry-run")
with open(os.path.join(os.environ["KANBAN_WORKSPACE"], "..", "report-" + task + ".json"), "w") as f:
    json.dump(out, f)
subprocess.run(["kanban", "complete", "-m", "read the spec"])
"""


def test_worker_sees_a_read_only_copy_and_may_attach_to_its_own_task(make_daemon):
    d = make_daemon(SLOW_TICK, start=False)
    script = write_script(f"{d.tmp}/reader.py", WORKER.format(python=sys.executable))
    d.cfg["profiles"] = {"reader": {"command": [script]}}
    d.write_config(d.cfg)
    d.start()
    other = d.cli_json("create", "someone else's task")
    t = d.cli_json("create", "read the spec", "--triage", "-b", other["id"])
    spec = b"build the thing\n"
    Path(d.tmp, "spec.txt").write_bytes(spec)
    d.cli("attach", t["id"], "spec.txt")
    original = att_root(d) / t["id"] / "spec.txt"
    d.cli("assign", t["id"], "reader")
    d.cli("promote", t["id"])
    d.wait_status(t["id"], "done")
    run = d.rpc("task.runs", {"id": t["id"]})["runs"][0]["id"]
    out = json.loads((Path(d.state) / "workspaces" / f"report-{t['id']}.json").read_text())
    assert out["dir"] == str(Path(d.state) / "runs" / f"{run}.attachments")
    assert out["listing"] == ["spec.txt"] and out["content"] == spec.decode()
    assert out["mode"] == 0o400 and out["dir_mode"] == 0o500
    assert out["ino"] != os.stat(original).st_ino, "the worker must get a copy, not the stored file"
    # whatever the worker did to its copy, the stored original is intact
    assert original.read_bytes() == spec and mode(original) == 0o600
    assert listing(d, t["id"])["attachments"][0]["sha256"] == sha(spec)
    # a worker may attach to its own task, and only that
    code, err, stdout = out["own"]
    assert code == 0, err
    mine = json.loads(stdout)["attachments"][0]
    assert mine["name"] == "report.txt" and mine["sha256"] == sha(b"the worker's result\n")
    rows = {a["name"]: a for a in listing(d, t["id"])["attachments"]}
    assert rows["report.txt"]["created_by"] == "worker" and rows["report.txt"]["run"] == run
    for key in ("other", "detach", "gc"):
        code, err, _ = out[key]
        assert code == 1 and "permission_denied" in err, (key, err)
    assert listing(d, other["id"])["attachments"] == []
    assert "spec.txt" in rows
    # the run's copy goes once its exit is recorded
    wait_for(lambda: not (Path(d.state) / "runs" / f"{run}.attachments").exists(), what="the run's copy removed")


# ---- gc -------------------------------------------------------------------------------------


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          check=True, capture_output=True, text=True).stdout


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("hi\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "init")
    return path


GC_WORKER = """
echo "worker of $KANBAN_TASK ran"
case "$(kanban show "$KANBAN_TASK" --json)" in
  *commit-me*) echo change > "file-$KANBAN_TASK"; git add . && git -c user.email=t@t -c user.name=t commit -qm work ;;
  *dirty-me*) echo uncommitted > dirty.txt ;;
esac
kanban complete -m done
"""


def test_gc_dry_run_then_collects_only_old_archived_tasks(make_daemon, tmp_path):
    repo = make_repo(tmp_path / "repo")
    d = make_daemon({"workspaces": {"repo": str(repo)}, "retention": {"events": "1ms"}, **SLOW_TICK}, start=False)
    write_script(f"{d.tmp}/w.sh", "#!/bin/sh\n" + GC_WORKER)
    d.cfg["profiles"] = {"w": {"command": [f"{d.tmp}/w.sh"]}}
    d.write_config(d.cfg)
    d.start()
    Path(d.tmp, "a.txt").write_bytes(b"A" * 1000)
    made = {}
    for key, ws, body in (("scratch", "scratch", ""), ("merged", "worktree", "commit-me"),
                          ("unmerged", "worktree", "commit-me"), ("dirty", "worktree", "dirty-me"),
                          ("live", "scratch", "")):
        made[key] = d.cli_json("create", key, "-a", "w", "--workspace", ws, "-b", body)["id"]
    for tid in made.values():
        d.wait_status(tid, "done")
        d.cli("attach", tid, "a.txt")
    ws_root = Path(d.state) / "workspaces"
    wait_for(lambda: not (ws_root / made["merged"]).exists() and not (ws_root / made["unmerged"]).exists(),
             what="clean worktrees removed at completion")
    assert (ws_root / made["dirty"] / "dirty.txt").exists()
    git(repo, "merge", "-q", "--ff-only", f"wt/{made['merged']}")
    archived = [made[k] for k in ("scratch", "merged", "unmerged", "dirty")]
    d.cli("archive", *archived)
    # what a failed cleanup could leave: a scratch workspace, a run file; and a workspace path that
    # escapes the managed root through a symlink, which gc must never follow
    (ws_root / made["scratch"]).mkdir(exist_ok=True)
    (ws_root / made["scratch"] / "junk").write_bytes(b"j" * 500)
    run_of = {k: d.rpc("task.runs", {"id": v})["runs"][0]["id"] for k, v in made.items()}
    (Path(d.state) / "runs" / f"{run_of['scratch']}.exit").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me\n")
    esc = d.cli_json("create", "escape", "--triage")["id"]
    d.cli("archive", esc)
    (ws_root / esc).symlink_to(outside)
    logs = Path(d.state) / "logs"
    assert all((logs / f"{tid}.log").exists() for tid in made.values())

    dry = d.cli_json("gc", "--dry-run", "--older-than", "0s")
    assert dry["dry_run"] and dry["tasks"] == 5
    assert dry["freed"]["logs"]["count"] == 4 and dry["freed"]["attachments"] == {"count": 4, "bytes": 4000}
    assert dry["freed"]["run_files"]["count"] == 1 and dry["freed"]["workspaces"]["count"] == 1
    assert dry["branches"]["deleted"] == [f"wt/{made['merged']}"]
    assert dry["events"]["pruned"] > 0
    assert "would free" in d.cli("gc", "--dry-run", "--older-than", "0s").stdout
    # a dry run changed nothing
    assert all((logs / f"{tid}.log").exists() for tid in made.values())
    assert all(len(listing(d, tid)["attachments"]) == 1 for tid in made.values())
    assert f"wt/{made['merged']}" in git(repo, "branch", "--list", "wt/*")

    young = d.cli_json("gc", "--older-than", "1h")
    assert young["tasks"] == 0 and young["bytes"] == 0
    assert all((logs / f"{tid}.log").exists() for tid in archived)
    # events have their own retention (1 ms here): the archived tasks' events went, the live task's stay
    assert young["events"]["pruned"] > 0
    assert d.rpc("events.since", {"task": made["scratch"]})["events"] == []
    assert [e["kind"] for e in d.rpc("events.since", {"task": made["live"]})["events"]][0] == "created"

    rep = d.cli_json("gc", "--older-than", "0s")
    assert not rep["dry_run"] and rep["tasks"] == 5
    assert rep["freed"]["logs"]["count"] == 4 and rep["freed"]["attachments"] == {"count": 4, "bytes": 4000}
    assert rep["freed"]["workspaces"] == {"count": 1, "bytes": 500} and rep["freed"]["run_files"]["count"] == 1
    for tid in archived:
        assert not (logs / f"{tid}.log").exists()
        assert not (att_root(d) / tid).exists() and listing(d, tid)["attachments"] == []
    assert not (ws_root / made["scratch"]).exists()
    assert not (Path(d.state) / "runs" / f"{run_of['scratch']}.exit").exists()
    # the live (done, not archived) task keeps everything
    assert (logs / f"{made['live']}.log").exists() and len(listing(d, made["live"])["attachments"]) == 1
    # branches: the merged one is deleted, the unmerged one and the one still checked out are kept
    branches = git(repo, "branch", "--list", "wt/*")
    assert f"wt/{made['merged']}" not in branches
    assert f"wt/{made['unmerged']}" in branches and f"wt/{made['dirty']}" in branches
    kept = {(k["task"], k["what"]): k["why"] for k in rep["kept"]}
    assert kept[(made["unmerged"], "branch")] == "not merged into HEAD"
    assert "uncommitted changes" in kept[(made["dirty"], "workspace")]
    assert (ws_root / made["dirty"] / "dirty.txt").exists()
    assert "not strictly inside" in kept[(esc, "workspace")]
    assert (outside / "precious").read_text() == "keep me\n" and (ws_root / esc).is_symlink()
    finished = [e for e in d.rpc("events.since", {"limit": 10000})["events"] if e["kind"] == "gc_finished"]
    assert finished[-1]["payload"]["tasks"] == 5 and finished[-1]["payload"]["auto"] is False
    human = d.cli("gc", "--older-than", "0s").stdout
    assert "freed" in human and "not merged into HEAD" in human
    # collected tasks are not looked at again; the ones that kept something are
    again = d.cli_json("gc", "--older-than", "0s")
    assert again["tasks"] == 3 and again["bytes"] == 0
    assert {k["task"] for k in again["kept"]} == {made["unmerged"], made["dirty"], esc}


def test_gc_vacuums_when_a_quarter_of_the_board_is_free(make_daemon):
    d = make_daemon({"retention": {"events": "1ms"}})
    with Client(d.socket) as c:
        ids = [c.call("task.create", {"title": f"{i}", "triage": True})["id"] for i in range(150)]
        c.call("task.block", {"ids": ids, "reason": "t" * 4000})  # big events: the reason is in each one
        c.call("task.archive", {"ids": ids})
    before = os.path.getsize(Path(d.state) / "board.db") + os.path.getsize(Path(d.state) / "board.db-wal")
    rep = d.cli_json("gc", "--older-than", "1h")
    assert rep["tasks"] == 0 and rep["events"]["pruned"] >= 300
    v = rep["vacuum"]
    assert v["worthwhile"] and v["done"] and v["bytes"] > 0 and v["pages_after"] < v["pages"]
    after = os.path.getsize(Path(d.state) / "board.db") + os.path.getsize(Path(d.state) / "board.db-wal")
    assert after < before
    assert len(d.cli_json("list", "--archived")["tasks"]) == 150  # tasks stay; only their events went
    again = d.cli_json("gc", "--older-than", "1h")
    assert not again["vacuum"]["worthwhile"] and not again["vacuum"]["done"]


def test_the_daemon_runs_gc_by_itself(make_daemon):
    d = make_daemon({"retention": {"interval": "1s", "archived": "1ms", "events": "0"}})
    t = d.cli_json("create", "old news")
    Path(d.tmp, "a.txt").write_text("a\n")
    d.cli("attach", t["id"], "a.txt")
    d.cli("archive", t["id"])

    def auto_run():
        evs = d.rpc("events.since", {"limit": 10000})["events"]
        return [e for e in evs if e["kind"] == "gc_finished" and e["payload"]["tasks"] == 1]

    ev = wait_for(auto_run, timeout=15, what="the daily gc")[0]
    assert ev["payload"]["auto"] is True and ev["payload"]["events"] == 0
    assert not (att_root(d) / t["id"]).exists() and listing(d, t["id"])["attachments"] == []
    # retention.events 0 keeps every event
    assert [e["kind"] for e in d.rpc("events.since", {"task": t["id"]})["events"]][0] == "created"


def test_gc_argument_errors_and_one_at_a_time(make_daemon):
    d = make_daemon()
    one_line_error(d.cli("gc", "--older-than", "soon", check=False), 1, "invalid_params", "older_than")
    rep = d.cli_json("gc")
    assert rep["older_than"] == 30 * 86400 and rep["events_older_than"] == 90 * 86400
