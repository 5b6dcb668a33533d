"""Housekeeping: ``kanban gc`` and the daily run.

Runs in: the dispatcher (:class:`Housekeeper`) and a short-lived child
process titled ``kanband: gc`` (:func:`main`, ``python -m daemon.gc``).

For every task archived longer than the retention (``retention.archived``,
or ``kanban gc --older-than``) whose runs have all ended, gc removes:

- its worker log (``<state>/logs/<task>.log`` and ``.log.1``);
- what its runs left in ``<state>/runs/`` (``<run>.pid``, ``.exit``, ``.lock``,
  ``.retry-after``, ``.context.md``, and the run's copy of the attachments);
- its attachments (``<state>/attachments/<task>/`` and their rows);
- its workspace: a scratch directory strictly inside the workspaces root (after
  resolving symlinks), or a git worktree without uncommitted changes. A ``dir:``
  workspace is never touched; a dirty worktree is kept and reported;
- its ``wt/<task>`` branch in ``workspaces.repo``, only when it is merged into
  the repository's HEAD (``git branch -d``, which refuses anything else). An
  unmerged branch is kept and reported, and the task is looked at again by
  the next gc.

A collected task is stamped (``tasks.gc_at``) so the next run skips it. Then
gc deletes the events of archived tasks older than ``retention.events`` (only
those every configured sink has already delivered), and runs ``VACUUM`` when
more than ``VACUUM_RATIO`` of the board's pages are free.

Who does what, so the board's only writer is never held up:

- The dispatcher plans a round of at most ``ROUND`` tasks from the board,
  writes the plan to an unlinked temp file and starts the child with it as
  stdin. The child does every deletion and every git call, checks each path
  is strictly inside its managed root first, and prints what it freed as
  JSON. The dispatcher is woken by the child's stdout, applies the round in
  one short transaction (attachment rows, ``gc_at``), and starts the next.
- Events are deleted one window of ``EVENT_WINDOW`` ids per loop turn (a few
  ms each); requests from clients are served in between.
- ``VACUUM`` does hold the dispatcher for as long as it takes to rewrite the
  board (milliseconds for a board of a few MiB, about a second per 100 MiB);
  it runs only when a quarter of the file is free space.

The daemon runs gc by itself every ``retention.interval`` (the first time a
minute after it starts, or later if the last run, recorded in the
``housekeeping`` table, was more recent). A run ends with a ``gc_finished``
event carrying its totals (not a daily run that found nothing to do);
``kanban gc`` is answered with the full report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import structlog

from client.protocol import RPCError
from daemon.board import attachments
from daemon.board import db as boarddb
from daemon.board import tasks
from daemon.config import parse_duration

log = structlog.get_logger()

#: Archived tasks per child process.
ROUND = 500
#: Event ids looked at per loop turn while pruning.
EVENT_WINDOW = 5000
#: The first automatic run waits this long after the dispatcher starts (or ``retention.interval``, if shorter).
FIRST_DELAY = 60.0
#: A child that runs longer than this is killed; its round counts as failed.
CHILD_TIMEOUT = 900.0
#: VACUUM when more than this share of the board's pages are free...
VACUUM_RATIO = 0.25
#: ...and the board has at least this many pages.
VACUUM_MIN_PAGES = 64
#: What gc frees, in report order.
KINDS = ("logs", "run_files", "attachments", "workspaces")
RUN_SUFFIXES = (".pid", ".exit", ".lock", ".retry-after", ".context.md")
_TASK_ID = re.compile(r"^t_[0-9a-f]{4,32}$")
_RUN_ID = re.compile(r"^r_[0-9a-f]{4,32}$")


def new_report(dry_run: bool, older_than: float | None, events_older_than: float | None, auto: bool
               ) -> dict[str, Any]:
    """An empty report: counts, bytes (apparent sizes), what was kept and why."""
    return {"dry_run": dry_run, "auto": auto, "older_than": older_than, "events_older_than": events_older_than,
            "tasks": 0, "freed": {k: {"count": 0, "bytes": 0} for k in KINDS},
            "branches": {"deleted": [], "kept": []}, "events": {"pruned": 0, "upto": None},
            "vacuum": {"done": False, "worthwhile": False, "bytes": 0, "seconds": 0.0},
            "kept": [], "errors": [], "bytes": 0, "seconds": 0.0}


@dataclasses.dataclass
class Job:
    """One gc run in progress: ``phase`` goes files -> events -> vacuum -> done."""

    dry_run: bool
    older_than: float | None          # seconds; None: no file collection
    events_older_than: float | None   # seconds; None: no event pruning
    auto: bool
    started: float                    # wall clock
    report: dict[str, Any]
    waiters: list[Any] = dataclasses.field(default_factory=list)  # ipc.Request objects to answer
    phase: str = "files"
    cursor: str = ""                  # last task id planned
    proc: subprocess.Popen | None = None
    proc_started: float = 0.0         # monotonic
    out: bytearray = dataclasses.field(default_factory=bytearray)
    ev_next: int = -1                 # events: next id to look at (-1: not planned yet)
    ev_upto: int = 0


class Housekeeper:
    """gc inside the dispatcher: the daily timer, one job at a time, its child and its batches.

    The dispatcher calls :meth:`poll` on every loop turn (it returns how soon
    it wants the next one), :meth:`on_readable` when the child's stdout has
    data, and :meth:`request` from the ``board.gc`` handler.
    """

    def __init__(self, disp: Any) -> None:
        self.disp = disp
        self.job: Job | None = None
        self.born = time.time()
        row = disp.db.execute("SELECT last_run FROM housekeeping WHERE id=1").fetchone() \
            if disp.db is not None else None  # a damaged board: the dispatcher serves `unavailable`
        self.last_run: float | None = row[0] if row else None

    def next_due(self) -> float | None:
        """Wall-clock time of the next automatic run, or ``None`` when ``retention.interval`` is 0."""
        interval = self.disp.cfg["retention"]["interval"]
        if not interval:
            return None
        return max(self.born + min(interval, FIRST_DELAY), (self.last_run or 0.0) + interval)

    def _new_job(self, now: float, dry_run: bool, older_than: float | None, auto: bool) -> Job:
        events = self.disp.cfg["retention"]["events"] or None
        job = Job(dry_run, older_than, events, auto, now, new_report(dry_run, older_than, events, auto))
        log.info("gc.started", auto=auto, dry_run=dry_run, older_than=older_than, events_older_than=events)
        return job

    def request(self, ctx: Any, dry_run: bool, older_than: str | None) -> Any:
        """``board.gc``: start a job now; the caller is answered when it is done.

        Returns:
            :data:`daemon.handlers.DEFERRED`.

        Raises:
            RPCError: ``invalid_params`` for a bad ``older_than``; ``conflict`` while another gc runs.
        """
        from daemon.handlers import DEFERRED
        if older_than is None:
            age = self.disp.cfg["retention"]["archived"] or None
        else:
            try:
                age = parse_duration(older_than)
            except ValueError as exc:
                raise RPCError("invalid_params", f"older_than: {exc}", field="older_than") from None
        if self.job is not None:
            raise RPCError("conflict", f"gc is already running ({'the daily run, ' if self.job.auto else ''}"
                           f"started {ctx.now - self.job.started:.0f}s ago); try again when it is done")
        self.job = self._new_job(ctx.now, dry_run, age, auto=False)
        if ctx.req is not None and not ctx.req.notify:
            self.job.waiters.append(ctx.req)
            if ctx.client.role is None:
                ctx.client.role = "gc"  # exempt from the idle timeout while it waits
        return DEFERRED

    # ---- driving a job -----------------------------------------------------------------

    def poll(self) -> float:
        """Start the daily run when due and advance the job; returns seconds until the next call is useful."""
        now = time.time()
        if self.disp.board_error is not None or self.disp.db is None:
            return 3600.0  # a damaged board is left exactly as it is
        if self.job is None:
            due = self.next_due()
            if due is None:
                return 3600.0
            if now < due:
                return due - now
            retention = self.disp.cfg["retention"]
            self.job = self._new_job(now, False, retention["archived"] or None, auto=True)
        try:
            return self._advance(now)
        except Exception as exc:  # a bug must not take the dispatcher down, nor leave a job stuck
            log.exception("gc.failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return 0.0

    def _advance(self, now: float) -> float:
        job = self.job
        assert job is not None
        if job.phase == "files":
            if job.proc is not None:
                left = job.proc_started + CHILD_TIMEOUT - time.monotonic()
                if left <= 0:
                    self._end_round(f"killed after {CHILD_TIMEOUT:g}s")
                    return 0.0
                return min(left, 60.0)
            if job.older_than is None or not self._start_round(now):
                job.phase = "events"
            return 0.0
        if job.phase == "events":
            if job.events_older_than is None:
                job.phase = "vacuum"
            elif job.ev_next < 0:
                self._plan_events(now)
            elif job.ev_next > job.ev_upto:
                job.phase = "vacuum"
            else:
                self._prune_window()
            return 0.0
        if job.phase == "vacuum":
            self._vacuum()
            job.phase = "done"
            return 0.0
        self._finish(time.time())
        return 0.0

    def _start_round(self, now: float) -> bool:
        """Plan the next ``ROUND`` tasks and start the child; ``False`` when none is left."""
        job = self.job
        db = self.disp.db
        rows = db.execute(
            "SELECT id, workspace_kind, workspace_path FROM tasks WHERE status='archived' AND gc_at IS NULL "
            "AND id > ? AND updated_at <= ? AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.task_id=tasks.id "
            "AND r.state != 'ended') ORDER BY id LIMIT ?", (job.cursor, now - job.older_than, ROUND)).fetchall()
        if not rows:
            return False
        job.cursor = rows[-1]["id"]
        ids = [r["id"] for r in rows]
        runs_of: dict[str, list[str]] = {}
        for run_id, task_id in db.execute(f"SELECT id, task_id FROM runs WHERE task_id IN "
                                          f"({','.join('?' * len(ids))})", ids):
            runs_of.setdefault(task_id, []).append(run_id)
        paths = self.disp.paths
        plan = {"dry_run": job.dry_run, "repo": self.disp.cfg["workspaces"]["repo"],
                "roots": {"logs": paths["logs"], "runs": paths["runs"], "workspaces": paths["workspaces"],
                          "attachments": attachments.root(paths["state_dir"])},
                "tasks": [{"id": r["id"], "runs": runs_of.get(r["id"], []),
                           "workspace": {"kind": r["workspace_kind"],
                                         "path": self.disp.workspace_path(r["id"], r["workspace_kind"],
                                                                          r["workspace_path"])}}
                          for r in rows]}
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with tempfile.TemporaryFile(dir=paths["state_dir"]) as f:
            f.write(json.dumps(plan).encode())
            f.seek(0)
            proc = subprocess.Popen([sys.executable, "-m", "daemon.gc", str(os.getpid())], stdin=f,
                                    stdout=subprocess.PIPE, close_fds=True, cwd="/", env=env)
        os.set_blocking(proc.stdout.fileno(), False)
        self.disp.sel.register(proc.stdout, 1, ("gc", None))
        job.proc, job.proc_started, job.out = proc, time.monotonic(), bytearray()
        log.info("gc.round_started", tasks=len(rows), child_pid=proc.pid, dry_run=job.dry_run)
        return True

    def on_readable(self) -> None:
        """The child wrote, or exited: collect its output; at EOF apply the round."""
        job = self.job
        if job is None or job.proc is None:
            return
        fd = job.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                break
            job.out += data
        try:
            self._end_round(None)
        except Exception as exc:
            log.exception("gc.failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    def _end_round(self, killed: str | None) -> None:
        job = self.job
        proc, job.proc = job.proc, None
        try:
            self.disp.sel.unregister(proc.stdout)
        except (KeyError, ValueError):
            pass
        proc.stdout.close()
        if killed:
            proc.kill()
        code = proc.wait()  # it closed its stdout by exiting: this returns at once
        result = None
        if killed is None and code == 0:
            try:
                result = json.loads(job.out)
            except ValueError:
                result = None
        if result is None:
            why = killed or f"exited with {code}"
            job.report["errors"].append(f"the gc child {why}; the rest of the archived tasks are left for the "
                                        "next run")
            log.error("gc.child_failed", why=why)
            job.phase = "events"
            return
        self._apply_round(result)

    def _apply_round(self, result: dict[str, Any]) -> None:
        job = self.job
        rep = job.report
        kept_tasks = set()
        for t in result["tasks"]:
            for kind in KINDS:
                rep["freed"][kind]["count"] += t["freed"][kind][0]
                rep["freed"][kind]["bytes"] += t["freed"][kind][1]
            for k in t["kept"]:
                rep["kept"].append({"task": t["task"], **k})
                kept_tasks.add(t["task"])
        rep["tasks"] += len(result["tasks"])
        rep["branches"]["deleted"] += result["branches"]["deleted"]
        for k in result["branches"]["kept"]:
            rep["branches"]["kept"].append(k)
            rep["kept"].append({"task": k["task"], "what": "branch", "path": k["branch"], "why": k["why"]})
            kept_tasks.add(k["task"])
        if job.dry_run:
            return
        now = time.time()
        db = self.disp.db
        with boarddb.write(db):
            for t in result["tasks"]:
                if t["attachments_gone"]:
                    attachments.delete_rows(db, t["task"])
                if t["task"] not in kept_tasks:
                    db.execute("UPDATE tasks SET gc_at=? WHERE id=?", (now, t["task"]))
        log.info("gc.round_applied", tasks=len(result["tasks"]), kept=len(kept_tasks))

    def _plan_events(self, now: float) -> None:
        """Find the last event id old enough, bounded by every configured sink's cursor."""
        job = self.job
        db = self.disp.db
        lo, hi = db.execute("SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM events").fetchone()
        upto = last_event_before(db, lo, hi, now - job.events_older_than)
        names = list(self.disp.cfg["sinks"])
        if names:
            held = db.execute(f"SELECT min(cursor) FROM sinks WHERE name IN ({','.join('?' * len(names))})",
                              names).fetchone()[0]
            if held is not None and held < upto:
                upto = held
        job.ev_next, job.ev_upto = max(lo, 1), upto
        job.report["events"]["upto"] = upto

    def _prune_window(self) -> None:
        job = self.job
        db = self.disp.db
        end = min(job.ev_next + EVENT_WINDOW - 1, job.ev_upto)
        where = ("id >= ? AND id <= ? AND task_id IS NOT NULL AND EXISTS (SELECT 1 FROM tasks t "
                 "WHERE t.id=events.task_id AND t.status='archived')")
        if job.dry_run:
            n = db.execute(f"SELECT count(*) FROM events WHERE {where}", (job.ev_next, end)).fetchone()[0]
        else:
            with boarddb.write(db):
                n = db.execute(f"DELETE FROM events WHERE {where}", (job.ev_next, end)).rowcount
        job.report["events"]["pruned"] += n
        job.ev_next = end + 1

    def _vacuum(self) -> None:
        job = self.job
        db = self.disp.db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        v = job.report["vacuum"]
        v.update(pages=pages, free_pages=free, worthwhile=pages >= VACUUM_MIN_PAGES and free > VACUUM_RATIO * pages)
        if not v["worthwhile"]:
            return
        if job.dry_run:
            v["bytes"] = free * size
            return
        t0 = time.monotonic()
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = db.execute("PRAGMA page_count").fetchone()[0]
        v.update(done=True, bytes=max(0, pages - after) * size, seconds=round(time.monotonic() - t0, 3),
                 pages_after=after)
        log.info("board.vacuumed", pages_before=pages, pages_after=after, seconds=v["seconds"])

    def _finish(self, now: float) -> None:
        job, self.job = self.job, None
        rep = job.report
        rep["seconds"] = round(now - job.started, 3)
        rep["bytes"] = sum(f["bytes"] for f in rep["freed"].values()) + rep["vacuum"]["bytes"]
        idle = job.auto and not (rep["tasks"] or rep["events"]["pruned"] or rep["vacuum"]["done"])
        if not job.dry_run:
            summary = {"auto": job.auto, "tasks": rep["tasks"], "bytes": rep["bytes"],
                       "freed": {k: v["count"] for k, v in rep["freed"].items()},
                       "branches": len(rep["branches"]["deleted"]), "events": rep["events"]["pruned"],
                       "vacuumed": rep["vacuum"]["done"], "kept": len(rep["kept"]), "errors": len(rep["errors"])}
            db = self.disp.db
            with boarddb.write(db):
                db.execute("INSERT OR REPLACE INTO housekeeping (id, last_run, report) VALUES (1, ?, ?)",
                           (now, json.dumps(rep, separators=(",", ":"))))
                if not idle:  # a daily run that found nothing to do adds nothing to the event log
                    tasks.emit(db, now, "gc_finished", None, **summary)
            self.last_run = now
            self.disp.publish()
        log.info("gc.finished", dry_run=job.dry_run, auto=job.auto, tasks=rep["tasks"], bytes=rep["bytes"],
                 events=rep["events"]["pruned"], kept=len(rep["kept"]), seconds=rep["seconds"])
        self._answer(job, {"result": rep})

    def _fail(self, why: str) -> None:
        job, self.job = self.job, None
        if job is None:
            return
        if job.proc is not None:
            try:
                self.disp.sel.unregister(job.proc.stdout)
            except (KeyError, ValueError):
                pass
            job.proc.kill()
            job.proc.wait()
            job.proc.stdout.close()
        self.last_run = time.time()  # the daily timer waits a whole interval before trying again
        self._answer(job, {"error": RPCError("internal_error", f"gc failed: {why}").to_wire()})

    def _answer(self, job: Job, body: dict[str, Any]) -> None:
        for req in job.waiters:
            if req.conn.role == "gc":
                req.conn.role = None
            self.disp.server.send(req.conn, {"jsonrpc": "2.0", "id": req.id, **body})


def last_event_before(db: Any, lo: int, hi: int, cutoff: float) -> int:
    """The largest event id whose time is before ``cutoff`` (0 if none), by binary search over ids:
    events are appended in time order, so this reads about 20 rows instead of scanning the log."""
    best = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT id, at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,)).fetchone()
        if row is None:
            hi = mid - 1
        elif row["at"] < cutoff:
            best = row["id"]
            lo = row["id"] + 1
        else:
            hi = mid - 1
    return best


# ---- the child: every file-system deletion --------------------------------------------------


def measure(path: str) -> tuple[int, int]:
    """``(files, bytes)`` under ``path`` (apparent sizes; symlinks are counted, never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    if not os.path.isdir(path) or os.path.islink(path):
        return 1, st.st_size
    files = size = 0
    for top, dirs, names in os.walk(path):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            try:
                size += os.lstat(os.path.join(top, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def _remove(path: str, root: str, res: dict[str, Any], kind: str, dry: bool) -> None:
    from daemon import attachstore, spawner
    if not os.path.lexists(path):
        return
    if not spawner.strictly_inside(path, root):
        res["kept"].append({"what": kind, "path": path, "why": f"not strictly inside {root}"})
        return
    files, size = measure(path)
    if not dry:
        try:
            attachstore.remove_tree(path)
        except OSError as exc:
            res["kept"].append({"what": kind, "path": path, "why": exc.strerror or str(exc)})
            return
    res["freed"][kind][0] += files
    res["freed"][kind][1] += size


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except OSError as exc:  # no git on PATH
        return subprocess.CompletedProcess(["git"], 127, "", f"cannot run git: {exc.strerror or exc}")


def collect_task(t: dict[str, Any], roots: dict[str, str], repo: str | None, dry: bool) -> dict[str, Any]:
    """Remove (or, with ``dry``, measure) one archived task's files.

    Returns:
        ``{task, freed: {kind: [count, bytes]}, kept: [{what, path, why}], attachments_gone}``.
    """
    from daemon import attachstore, spawner
    tid = t["id"]
    res: dict[str, Any] = {"task": tid, "freed": {k: [0, 0] for k in KINDS}, "kept": [], "attachments_gone": False}
    if not _TASK_ID.match(tid):
        res["kept"].append({"what": "task", "path": tid, "why": "not a task id"})
        return res
    for name in (f"{tid}.log", f"{tid}.log.1"):
        _remove(os.path.join(roots["logs"], name), roots["logs"], res, "logs", dry)
    for run in t["runs"]:
        if _RUN_ID.match(run):
            for suffix in RUN_SUFFIXES:
                _remove(os.path.join(roots["runs"], run + suffix), roots["runs"], res, "run_files", dry)
            _remove(attachstore.snapshot_dir(roots["runs"], run), roots["runs"], res, "run_files", dry)
    att = attachments.task_dir(roots["attachments"], tid)
    _remove(att, roots["attachments"], res, "attachments", dry)
    res["attachments_gone"] = not os.path.lexists(att)
    kind, path, root = t["workspace"]["kind"], t["workspace"]["path"], roots["workspaces"]
    if kind not in ("scratch", "worktree") or not path or not os.path.lexists(path):
        return res
    if not spawner.strictly_inside(path, root):
        res["kept"].append({"what": "workspace", "path": path, "why": f"not strictly inside {root}"})
        return res
    files, size = measure(path)
    if dry:
        dirty = kind == "worktree" and _git(path, "status", "--porcelain").stdout.strip()
        outcome = "kept: worktree has uncommitted changes" if dirty else "removed"
    else:
        outcome = spawner.cleanup_workspace(kind, path, root, repo)
        if outcome == "removed" and os.path.lexists(path):
            outcome = "kept: could not remove every file"
    if outcome == "removed":
        res["freed"]["workspaces"][0] += 1
        res["freed"]["workspaces"][1] += size
    else:
        res["kept"].append({"what": "workspace", "path": path, "why": outcome.removeprefix("kept: ")})
    return res


def prune_branches(repo: str | None, task_ids: list[str], dry: bool) -> dict[str, list]:
    """Delete the ``wt/<task>`` branches of ``task_ids`` that are merged into ``repo``'s HEAD.

    Returns:
        ``{deleted: [branch], kept: [{task, branch, why}]}``; an unmerged branch is always kept.
    """
    out: dict[str, list] = {"deleted": [], "kept": []}
    if not repo or not os.path.isdir(repo) or not task_ids:
        return out
    listed = _git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/wt/")
    if listed.returncode != 0:
        return out
    existing = {line.removeprefix("refs/heads/") for line in listed.stdout.split()}
    wanted = sorted(existing & {f"wt/{t}" for t in task_ids})
    if not wanted:
        return out
    merged_out = _git(repo, "for-each-ref", "--merged", "HEAD", "--format=%(refname)", "refs/heads/wt/")
    merged = {line.removeprefix("refs/heads/") for line in merged_out.stdout.split()} \
        if merged_out.returncode == 0 else set()
    listed = _git(repo, "worktree", "list", "--porcelain")
    in_use = {line.split(" ", 1)[1].removeprefix("refs/heads/") for line in listed.stdout.splitlines()
              if line.startswith("branch ")}
    for branch in wanted:
        task = branch.removeprefix("wt/")
        if branch not in merged:
            out["kept"].append({"task": task, "branch": branch, "why": "not merged into HEAD"})
            continue
        if branch in in_use:
            out["kept"].append({"task": task, "branch": branch, "why": "checked out in a worktree"})
            continue
        if not dry:
            res = _git(repo, "branch", "-d", branch)
            if res.returncode != 0:
                lines = (res.stderr.strip() or f"git branch -d exited {res.returncode}").splitlines()
                out["kept"].append({"task": task, "branch": branch, "why": lines[-1][:300]})
                continue
        out["deleted"].append(branch)
    return out


def collect(plan: dict[str, Any]) -> dict[str, Any]:
    """Carry out one round's plan (see :meth:`Housekeeper._start_round` for its shape)."""
    roots, repo, dry = plan["roots"], plan.get("repo"), bool(plan["dry_run"])
    results = []
    for t in plan["tasks"]:
        try:
            results.append(collect_task(t, roots, repo, dry))
        except (OSError, subprocess.SubprocessError) as exc:  # git missing, a file-system error: spares the others
            results.append({"task": t["id"], "freed": {k: [0, 0] for k in KINDS}, "attachments_gone": False,
                            "kept": [{"what": "task", "path": t["id"], "why": f"{type(exc).__name__}: {exc}"}]})
    ids = [t["id"] for t in plan["tasks"] if _TASK_ID.match(t["id"])]
    return {"tasks": results, "branches": prune_branches(repo, ids, dry)}


def main(argv: list[str] | None = None) -> int:
    """``python -m daemon.gc PARENT_PID`` with the plan on stdin; prints the result as JSON.

    It dies with the dispatcher that started it (``PR_SET_PDEATHSIG``); a round
    cut short is simply done again by the next gc.
    """
    argv = sys.argv[1:] if argv is None else argv
    from daemon import roles
    roles.prctl(roles.PR_SET_PDEATHSIG, signal.SIGKILL)
    if argv and os.getppid() != int(argv[0]):
        return 1
    try:
        import setproctitle
        setproctitle.setproctitle("kanband: gc")
    except ImportError:
        pass
    plan = json.load(sys.stdin)
    json.dump(collect(plan), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
