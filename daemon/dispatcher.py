"""The dispatcher role: board kernel, JSON-RPC server, and the dispatch loop.

Runs in: the ``kanband: dispatcher`` process, forked by the supervisor. It is
the single writer of the board.

One loop, no threads. Each turn it reads every complete request from every
readable connection and serves them as one batch: all writes of a batch share
one ``BEGIN IMMEDIATE`` transaction (a savepoint per request), and no response
is sent before the ``COMMIT`` (group commit). After the commit it publishes
the new events to followers, reacts to them (kill, cleanup), and runs a
dispatch pass if any event could have made a task runnable. A periodic tick
is only the backstop for time-based rules (cooldowns, claim expiry).

A damaged board (SQLite says ``SQLITE_CORRUPT`` or ``SQLITE_NOTADB``, at
start or at any later read or write) makes the dispatcher unhealthy, never a
crash loop: it stops writing and dispatching, answers writes (and reads that
fail) with ``unavailable`` naming the board file, reports ``board_error`` in
``daemon.status``, and its heartbeat says ``ready: False`` with the error, so
the supervisor shows it in ``STATUS=`` and stops the watchdog.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import structlog

from client.protocol import METHODS, RPCError, check_params
from daemon import attachstore, authz, containment, fsguard, gc, ipc, roles
from daemon.board import attachments, context
from daemon.board import db as boarddb
from daemon.board import acceptance, integrity, plan, requests, runs, schedule, tasks
from daemon.handlers import DEFERRED, HANDLERS, Ctx

log = structlog.get_logger()

#: How often abandoned attachment uploads are looked for (they expire after 2 minutes idle).
UPLOAD_SWEEP_EVERY = 5.0

SHOW_CACHE_MAX = 4096

#: Event kinds after which a dispatch pass may find something new to start.
WAKE_KINDS = frozenset({"created", "completed", "unblocked", "promoted", "archived", "requeued", "exited",
                        "assigned", "unlinked", "edited", "blocked", "gave_up", "retried", "reopened", "due",
                        "rejected", "review_requested", "changes_requested"})


class Deferred:
    """A handler's result that is sent later (``daemon.reload``: once the supervisor answers)."""

    def __init__(self, token: int) -> None:
        self.token = token


class Dispatcher:
    """State of the dispatcher role; :meth:`loop` drives it."""

    def __init__(self, ctx: roles.RoleContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.paths = ctx.paths
        self.supervisor_pid = ctx.supervisor_pid
        self.started_at = time.time()
        self.board_error: str | None = None  # set once the board is found damaged; never cleared
        self.db: sqlite3.Connection | None = None
        self.sel = selectors.DefaultSelector()
        self.server = ipc.Server(ctx.listener, self.sel, self.cfg)
        self.reaper: ipc.Connection | None = None
        self.published = 0
        self.dispatch_needed = True
        self.pending_spawns: list[dict[str, Any]] = []
        self.pending_pushes: list[tuple[ipc.Connection, dict[str, Any]]] = []
        self.replays: list[ipc.Connection] = []
        self.roles_snapshot: dict[str, Any] = {}
        self.flapping: list[str] = []
        self.stopping = False
        self.summary: dict[str, int] | None = None
        self.next_tick = 0.0
        self.show_cache: dict[str, bytes] = {}  # task id -> encoded task.show result
        self.dispatch_seen = 0  # events up to this id were already considered by an in-transaction pass
        self.contain = containment.from_paths(self.paths)
        self.role_pids: set[int] = {self.supervisor_pid}
        self.uploads = attachstore.Uploads(attachments.root(self.paths["state_dir"]))  # attach.* in progress
        self.last_reload: dict[str, Any] | None = None  # the supervisor's last reload result
        self.reload_waiters: dict[int, list[tuple[ipc.Connection, Any]]] = {}  # token -> (conn, request id)
        self.reload_tokens = 0
        self.on_channel(roles.early_messages(ctx))
        try:
            self.db = integrity.open_existing(self.paths["board"], self.paths["board_id"])
            self.published = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        except (integrity.BoardError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not boarddb.is_corrupt(exc):
                raise
            self.board_failed(exc)
        self.housekeeper = gc.Housekeeper(self)  # kanban gc and the daily run (reads the board: after it opened)

    # ---- role plumbing ---------------------------------------------------

    def role_table(self, now: float) -> list[dict[str, Any]]:
        out = []
        for name, r in self.roles_snapshot.items():
            r = dict(r)
            if r.get("last_heartbeat"):
                r["heartbeat_age"] = max(0.0, now - r["last_heartbeat"])
            out.append({"name": name, **r})
        return out

    def on_channel(self, msgs: list[dict[str, Any]]) -> None:
        for msg in msgs:
            if msg["t"] == "config":
                self.cfg = msg["cfg"]
                self.cfg["_set"] = set(self.cfg.get("_set", ()))
                self.server.cfg = self.cfg
                self.dispatch_needed = True
                log.info("config.applied", file=self.cfg.get("_file"))
            elif msg["t"] == "reloaded":
                self.last_reload = msg["reload"]
                for conn, rid in self.reload_waiters.pop(msg["req"], []):
                    if not conn.closed:
                        self.server.send(conn, {"jsonrpc": "2.0", "id": rid, "result": msg["reload"]})
            elif msg["t"] == "roles":
                self.last_reload = msg.get("reload", self.last_reload)
                self.roles_snapshot = msg["roles"]
                self.flapping = msg.get("flapping", [])
                self.role_pids = {self.supervisor_pid} | {r["pid"] for r in msg["roles"].values() if r.get("pid")}
            elif msg["t"] == "stopping":
                self.stopping = True

    def board_failed(self, exc: BaseException | None) -> None:
        """The board is damaged: stop writing and dispatching, and say so (log, heartbeat, status)."""
        if self.board_error is None:
            msg = str(exc)
            self.board_error = msg if self.paths["board"] in msg else f"board {self.paths['board']}: {msg}"
            log.error("board.damaged", board=self.paths["board"], error=self.board_error)
            self.pending_spawns.clear()
            self.dispatch_needed = False
            self.next_tick = float("inf")
            self.heartbeat()
        if self.db is not None and self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def guarded(self, step: Callable[[], Any]) -> None:
        """Run one board step of the loop: a damaged board makes us unhealthy instead of killing the role."""
        try:
            step()
        except sqlite3.DatabaseError as exc:
            if not boarddb.is_corrupt(exc):
                raise
            self.replays.clear()
            self.board_failed(exc)

    def unavailable(self, r: ipc.Request) -> dict[str, Any]:
        return ipc.error_frame(r.id, RPCError("unavailable", f"{self.board_error}; kanband does not read or write "
                                                            "it until it is repaired", board=self.paths["board"]))

    def heartbeat(self) -> None:
        if self.board_error is not None:
            roles.send(self.ctx.channel, {"t": "hb", "ready": False, "error": self.board_error,
                                          "reaper": self.reaper is not None})
            return
        if self.summary is None:
            counts = {s: n for s, n in self.db.execute("SELECT status, count(*) FROM tasks GROUP BY status")}
            self.summary = {k: counts.get(k, 0) for k in ("running", "ready", "blocked", "todo")}
        roles.send(self.ctx.channel, {"t": "hb", "summary": self.summary, "reaper": self.reaper is not None})

    def request_reload(self) -> Deferred:
        """Ask the supervisor to reload the config (over our channel); the answer follows as ``reloaded``.

        Raises:
            RPCError: ``unavailable`` while the daemon is stopping.
        """
        if self.stopping:
            raise RPCError("unavailable", "daemon.reload: kanband is stopping")
        self.reload_tokens += 1
        roles.send(self.ctx.channel, {"t": "reload", "req": self.reload_tokens})
        return Deferred(self.reload_tokens)

    def deferred(self, r: ipc.Request, resp: dict[str, Any]) -> bool:
        """Whether ``resp`` is answered later; if so, remember who waits for it."""
        result = resp.get("result")
        if not isinstance(result, Deferred):
            return False
        if not r.notify:
            self.reload_waiters.setdefault(result.token, []).append((r.conn, r.id))
        return True

    # ---- serving ---------------------------------------------------------

    def serve_damaged(self, reqs: list[ipc.Request]) -> None:
        """Serve a batch on a damaged board: writes are refused, reads are tried (no cache)."""
        now = time.time()
        for r in reqs:
            method = METHODS.get(r.method)
            if self.db is None and r.method != "daemon.status" or method is not None and method.writes:
                resp = self.unavailable(r)
            else:
                resp = self._call(r, now, savepoint=False)
                if self.deferred(r, resp):
                    continue
            if not r.notify:
                self.server.send(r.conn, resp)

    def serve(self, reqs: list[ipc.Request]) -> bool:
        """Serve one batch; all its writes share one transaction. Returns whether it wrote."""
        if self.board_error is not None:
            self.serve_damaged(reqs)
            return False
        now = time.time()
        n_writes = sum(1 for r in reqs if r.method in METHODS and METHODS[r.method].writes)
        in_tx = n_writes > 0
        out: list[tuple[ipc.Request, dict[str, Any] | bytes]] = []
        budget, deferred = self.server.budget(), []  # a client not reading its answers waits
        if in_tx:
            self.db.execute("BEGIN IMMEDIATE")
        for r in reqs:
            if not budget.allows(r.conn):
                deferred.append(r)
                continue
            if self.board_error is not None:  # found damaged earlier in this batch
                out.append((r, self.unavailable(r)))
                continue
            if not in_tx and r.method == "task.show":
                frame = self._show_frame(r, now)
                frame = ipc.encode(frame) if isinstance(frame, dict) and not r.notify else frame
                budget.spend(r.conn, len(frame))
                out.append((r, frame))
                continue
            # several writes: a savepoint each, so one failure leaves the others; a lone write
            # needs none (its failure rolls back the whole transaction)
            resp = self._call(r, now, savepoint=in_tx and n_writes > 1)
            if self.deferred(r, resp):
                continue
            if in_tx and n_writes == 1 and "error" in resp and METHODS.get(r.method) and METHODS[r.method].writes:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                in_tx = False
            if not r.notify:
                if isinstance(resp, dict) and resp.get("result") is DEFERRED:
                    out.append((r, None))  # answered later by whoever took it over (kanban gc)
                    continue
                resp = ipc.encode(resp)
                budget.spend(r.conn, len(resp))
            out.append((r, resp))
        if self.board_error is not None:  # found damaged by this batch: nothing of it is committed
            self.board_failed(None)
            out = [(r, self.unavailable(r)) for r, _ in out]
            in_tx = False
        if in_tx:
            self._dispatch_in_tx(now)
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("board.commit_failed", error=str(exc))
                if boarddb.is_corrupt(exc):
                    self.board_failed(exc)
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                self.pending_spawns.clear()
                err = RPCError("internal_error", f"commit failed: {exc}")
                out = [(r, self.unavailable(r) if self.board_error else ipc.error_frame(r.id, err)) for r, _ in out]
        for r, resp in out:
            if not r.notify and resp is not None:  # None: a deferred answer, sent later
                self.server.send(r.conn, resp)
        self.server.defer(deferred)
        self.flush_spawns()
        if n_writes:
            self.schedule_wake(now)
        return n_writes > 0

    def _show_frame(self, r: ipc.Request, now: float) -> dict[str, Any] | bytes:
        """``task.show`` from the response cache: the encoded result per task id.

        The dispatcher is the board's only writer and every mutation writes an event, so the
        cache is cleared in :meth:`publish` whenever anything was written; a batch with writes
        never reads from it.
        """
        key = r.params.get("id") if isinstance(r.params, dict) and len(r.params) == 1 else None
        body = self.show_cache.get(key) if isinstance(key, str) else None
        if body is None:
            resp = self._call(r, now, savepoint=False)
            if "error" in resp or not isinstance(key, str):
                return resp
            try:
                body = json.dumps(resp["result"], separators=(",", ":"), default=str, allow_nan=False).encode()
            except ValueError:
                return resp  # ipc.encode answers internal_error; nothing invalid goes out or into the cache
            if len(self.show_cache) >= SHOW_CACHE_MAX:
                self.show_cache.clear()
            self.show_cache[key] = body
        if r.notify:
            return {}
        return b'{"jsonrpc":"2.0","id":' + json.dumps(r.id).encode() + b',"result":' + body + b"}\n"

    def _dispatch_in_tx(self, now: float) -> None:
        """Claim what the batch made runnable inside the batch's own transaction: one fsync, not two."""
        if self.reaper is None or self.stopping:
            return
        kinds = tuple(WAKE_KINDS)
        woke = self.db.execute(f"SELECT 1 FROM events WHERE id > ? AND kind IN ({','.join('?' * len(kinds))}) "
                               "LIMIT 1", (self.published, *kinds)).fetchone()
        if not woke:
            return
        try:
            with boarddb.savepoint(self.db, "dispatch"):
                self.dispatch_pass(self.db, now)
        except Exception as exc:
            if boarddb.is_corrupt(exc):
                self.board_failed(exc)
                return
            log.exception("dispatch.pass_failed")
            self.pending_spawns.clear()
            return
        self.dispatch_seen = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def _call(self, r: ipc.Request, now: float, savepoint: bool) -> dict[str, Any]:
        method = METHODS.get(r.method)
        try:
            if method is None:
                raise RPCError("method_not_found", f"unknown method {r.method!r}", method=r.method)
            params = check_params(method, r.params)
            if method.internal or method.writes:
                self.authorize(r.conn, method, params)
            seen = requests.key(method, params)  # a retried worker request: answer it as the first time
            if seen is not None and (first := requests.recall(self.db, method.name, *seen)) is not None:
                return {"jsonrpc": "2.0", "id": r.id, **first}
            hctx = Ctx(self.db, now, self.cfg, r.conn, self, r)
            with boarddb.savepoint(self.db) if savepoint and method.writes else contextlib.nullcontext():
                result = HANDLERS[method.name](hctx, params)
                if seen is not None:
                    requests.remember(self.db, now, method.name, *seen, result)
            return {"jsonrpc": "2.0", "id": r.id, "result": result}
        except RPCError as exc:
            return ipc.error_frame(r.id, exc)
        except sqlite3.Error as exc:
            log.error("rpc.db_error", method=r.method, error=str(exc))
            if boarddb.is_corrupt(exc):
                self.board_failed(exc)
                if r.method == "daemon.status":  # the status of a damaged board is still served
                    return self._call(r, now, savepoint=False)
                return self.unavailable(r)
            return ipc.error_frame(r.id, RPCError("internal_error", f"{r.method}: database error: {exc}"))
        except Exception as exc:  # a bug: never let a client's request kill the daemon
            log.exception("rpc.handler_crashed", method=r.method)
            return ipc.error_frame(r.id, RPCError("internal_error", f"{r.method}: {type(exc).__name__}: {exc}"))

    # ---- who may say what (daemon/authz.py) --------------------------------

    def scope(self, conn: ipc.Connection) -> tuple[str, str | None]:
        """The caller's side, cached per connection (see :func:`daemon.authz.scope`)."""
        return authz.scope(self, conn)

    def authorize(self, conn: ipc.Connection, method: Any, p: dict[str, Any]) -> None:
        """See :func:`daemon.authz.authorize`."""
        authz.authorize(self, conn, method, p)

    # ---- followers -------------------------------------------------------

    def follow(self, ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("task"):
            tasks.get(ctx.db, p["task"])
        flt = {k: p.get(k) for k in ("task", "assignee", "tenant")}
        flt["kinds"] = set(p["kinds"]) if p.get("kinds") else None
        flt["tree"] = None
        if p.get("task") and p.get("descendants"):
            flt["tree"] = {r[0] for r in ctx.db.execute(
                "WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT l.child FROM links l JOIN d ON l.parent=d.id) "
                "SELECT id FROM d", (p["task"],))}
        ctx.client.follow = flt
        ctx.client.follow_from = p.get("after") if p.get("after") is not None else self.published
        self.replays.append(ctx.client)
        return {"following": True, "last_id": self.published}

    @staticmethod
    def _matches(flt: dict[str, Any], ev: dict[str, Any]) -> bool:
        if flt["kinds"] is not None and ev["kind"] not in flt["kinds"]:
            return False
        if flt["task"]:
            if flt["tree"] is not None:
                if ev["task_id"] not in flt["tree"]:
                    return False
            elif ev["task_id"] != flt["task"]:
                return False
        if flt["assignee"] and ev.get("assignee") != flt["assignee"]:
            return False
        if flt["tenant"] and ev.get("tenant") != flt["tenant"]:
            return False
        return True

    def _event_rows(self, after: int, upto: int | None = None) -> list[dict[str, Any]]:
        q = ("SELECT e.id, e.task_id, e.run_id, e.kind, e.payload, e.at, t.assignee, t.tenant, t.title, "
             "t.status AS task_status "
             "FROM events e LEFT JOIN tasks t ON t.id=e.task_id WHERE e.id>?")
        args: list[Any] = [after]
        if upto is not None:
            q += " AND e.id<=?"
            args.append(upto)
        return [tasks.event_dict(r) for r in self.db.execute(q + " ORDER BY e.id", args)]

    def publish(self) -> None:
        """Push new events to followers and react to them. Called after every commit."""
        for conn in self.replays:
            if not conn.closed:
                for ev in self._event_rows(conn.follow_from, self.published):
                    if self._matches(conn.follow, ev):
                        self.server.send(conn, {"jsonrpc": "2.0", "method": "event", "params": ev})
        self.replays.clear()
        evs = self._event_rows(self.published)
        if not evs:
            return
        self.show_cache.clear()
        self.published = evs[-1]["id"]
        self.summary = None
        followers = [c for c in self.server.conns.values() if c.follow is not None]
        for ev in evs:
            if ev["kind"] in ("created", "linked") and followers:
                self._grow_trees(followers, ev)
            if followers:
                frame = ipc.encode({"jsonrpc": "2.0", "method": "event", "params": ev})
                for conn in followers:
                    if not conn.closed and self._matches(conn.follow, ev):
                        conn.wbuf += frame
            self.react(ev)
        for conn in followers:
            if conn.wbuf:
                self.server.flush(conn)
                if not conn.closed and len(conn.wbuf) > ipc.WBUF_LIMIT:  # a follower that stopped reading
                    log.warning("socket.slow_client_dropped", peer_pid=conn.peer_pid, buffered=len(conn.wbuf))
                    self.server.close(conn)

    def _grow_trees(self, followers: list[ipc.Connection], ev: dict[str, Any]) -> None:
        parents = ev["payload"].get("parents") or ([ev["payload"]["parent"]] if ev["payload"].get("parent") else [])
        for conn in followers:
            tree = conn.follow.get("tree")
            if tree is not None and any(p in tree for p in parents):
                tree.add(ev["task_id"])

    def react(self, ev: dict[str, Any]) -> None:
        kind, payload = ev["kind"], ev["payload"]
        if kind in WAKE_KINDS and ev["id"] > self.dispatch_seen:
            self.dispatch_needed = True
        kill = payload.get("kill_run")
        if kill and self.reaper is not None:
            reason = payload.get("reason") if kind in ("killing", "assigned") else "cancel"
            self._push({"method": "kill", "params": {"run": kill, "reason": reason, "task": ev["task_id"]}})
        ws = payload.get("workspace")
        if kind in ("completed", "archived") and ws and ws.get("kind") in ("scratch", "worktree") and ws.get("path"):
            repo = self.worktree_repo(ws.get("repo"), ev.get("assignee"))
            self._push({"method": "cleanup", "params": {"task": ev["task_id"], "kind": ws["kind"], "path": ws["path"],
                                                         "repo": repo}})

    def _push(self, msg: dict[str, Any]) -> None:
        if self.reaper is not None and not self.reaper.closed:
            self.server.send(self.reaper, {"jsonrpc": "2.0", **msg})

    # ---- reaper ------------------------------------------------------------

    def attach_reaper(self, ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
        if self.reaper is not None and not self.reaper.closed and self.reaper is not ctx.client:
            log.warning("reaper.replaced", old_pid=self.reaper.peer_pid, new_pid=p["pid"])
            self.server.close(self.reaper)
        ctx.client.role = "reaper"
        self.reaper = ctx.client
        self.dispatch_needed = True
        log.info("reaper.attached", reaper_pid=p["pid"])
        active = []
        for run in runs.active_runs(ctx.db):
            extra = self._spawn_extras(ctx.db, run["task_id"], run["profile"])
            if run["state"] == "verifying":  # the reaper finds, adopts or (re)starts its verify command
                extra["verify"] = self.verify_spec(ctx.db, run["id"])
            active.append({**run, **extra})
        return {"runs": active, "crash_grace": self.cfg["dispatch"]["crash_grace"]}

    def _spawn_extras(self, db: sqlite3.Connection, task_id: str, profile: str | None = None) -> dict[str, Any]:
        t = tasks.get(db, task_id)
        prof = self.cfg["profiles"].get(profile or t["assignee"] or "", {})
        runtime = t["max_runtime"] if t["max_runtime"] is not None else prof.get("max_runtime")
        return {"max_runtime": runtime, "kill_grace": self.cfg["dispatch"]["kill_grace"]}

    def verify_spec(self, db: sqlite3.Connection, run_id: str) -> dict[str, Any]:
        """The spawn spec of a run's verify command: the worker's environment (plus
        ``KANBAN_VERIFY=1``) and workspace, ``verify.timeout`` as its runtime limit."""
        run = runs.get_run(db, run_id)
        t = tasks.get(db, run["task_id"])
        prof = self.cfg["profiles"].get(run["profile"] or "", {})
        g = acceptance.gate(self.cfg, t, run["profile"])
        ws = t["workspace_path"] or self.workspace_path(t["id"], t["workspace_kind"], None)
        return {"run": run_id, "task": t["id"], "title": t["title"], "profile": run["profile"],
                "command": json.loads(run["verify_command"]), "env": {**prof.get("env", {}), "KANBAN_VERIFY": "1"},
                "workspace": {"kind": t["workspace_kind"], "path": ws, "repo": self.cfg["workspaces"]["repo"],
                              "root": self.paths["workspaces"]},
                "log_max": self.cfg["logs"]["worker_log_max"], "config_dir": self.cfg["_dir"],
                "kill_grace": self.cfg["dispatch"]["kill_grace"], "max_runtime": g["timeout"], "verify": True,
                "kill_reason": run["kill_reason"] if run["verify"] == "cancelled" else None}

    def flush_spawns(self) -> None:
        spawns, self.pending_spawns = self.pending_spawns, []
        for spec in spawns:
            if any("{context_file}" in arg for arg in spec["command"]):
                self.write_context(spec["task"], spec["run"])
            self._push({"method": "spawn", "params": spec})

    def write_context(self, task_id: str, run_id: str) -> None:
        """Write the run's ``{context_file}``: the rendered context, ``<runs>/<run>.context.md`` (0600).

        Called after the claim committed, before the spawn goes out. A failure is logged; the
        spawner then refuses the run (``spawn_failed`` naming the file) rather than start it blind.
        """
        path = os.path.join(self.paths["runs"], f"{run_id}.context.md")
        try:
            text = context.markdown(self.db, task_id, self.paths["state_dir"])
            fsguard.ensure_private_dir(self.paths["runs"])
            fsguard.write_private(path, text.encode())
        except (OSError, fsguard.UnsafePath, RPCError) as exc:
            log.warning("context.write_failed", task=task_id, run=run_id, path=path, error=str(exc))

    def worktree_repo(self, task_repo: str | None, profile: str | None) -> str | None:
        """A worktree's repository: the task's ``--repo``, else its profile's ``repo``, else ``workspaces.repo``."""
        return task_repo or self.cfg["profiles"].get(profile or "", {}).get("repo") or self.cfg["workspaces"]["repo"]

    def workspace_path(self, task_id: str, kind: str, path: str | None) -> str | None:
        if kind == "dir":
            return path
        return os.path.join(self.paths["workspaces"], task_id)

    def dispatch_pass(self, db: sqlite3.Connection, now: float, dry_run: bool = False,
                      unprofiled: list | None = None, candidates: list | None = None) -> dict[str, Any]:
        """Claim every task that may start now; the spawns go out after the commit.

        ``unprofiled`` and ``candidates`` may be passed in when the caller already read them.
        """
        started, notes = [], []
        for row in plan.unprofiled(db, self.cfg) if unprofiled is None else unprofiled:
            if row["assignee"] is None:  # once per task, like skipped_no_profile
                if not dry_run:
                    tasks.emit(db, now, "skipped_unassigned", row["id"])
                    db.execute("UPDATE tasks SET skip_noted=? WHERE id=?", (plan.UNASSIGNED_NOTE, row["id"]))
                notes.append({"task": row["id"], "reason": "unassigned and no dispatch.default_assignee"})
                continue
            if not dry_run:
                tasks.emit(db, now, "skipped_no_profile", row["id"], assignee=row["assignee"])
                db.execute("UPDATE tasks SET skip_noted=assignee WHERE id=?", (row["id"],))
            notes.append({"task": row["id"], "reason": f"no profile for assignee {row['assignee']!r}"})
        if self.reaper is None or self.stopping:
            why = "daemon is stopping" if self.stopping else "reaper not attached"
            return {"started": [], "skipped": notes, "note": why, "dry_run": dry_run}
        for c in plan.candidates(db, now, self.cfg) if candidates is None else candidates:
            if dry_run:
                started.append({"task": c["id"], "title": c["title"], "profile": c["profile"]})
                continue
            if not c["assignee"]:
                tasks.assign(db, now, c["id"], c["profile"], source="default_assignee")
            t = tasks.get(db, c["id"])
            ws = self.workspace_path(c["id"], t["workspace_kind"], t["workspace_path"])
            env = dict(self.cfg["profiles"][c["profile"]]["env"])
            if c.get("kind") == "review":  # a reviewer: same task, same workspace, KANBAN_REVIEW=1
                run = acceptance.claim_review(db, now, c["id"], c["profile"], self.cfg["dispatch"]["claim_ttl"])
                env["KANBAN_REVIEW"] = "1"
            else:
                run = runs.claim(db, now, c["id"], c["profile"], self.cfg["dispatch"]["claim_ttl"], ws)
                rejected = acceptance.last_rejection_output(db, c["id"])
                if rejected:  # what the verify command said about the last attempt
                    env["KANBAN_VERIFY_OUTPUT"] = rejected
            prof = self.cfg["profiles"][c["profile"]]
            spec = {"run": run["id"], "task": c["id"], "title": t["title"], "profile": c["profile"],
                    "command": prof["command"], "env": env,
                    "workspace": {"kind": t["workspace_kind"], "path": ws, "root": self.paths["workspaces"],
                                  "repo": self.worktree_repo(t["workspace_repo"], c["profile"]),
                                  "branch": t["workspace_branch"]},
                    "log_max": self.cfg["logs"]["worker_log_max"], "config_dir": self.cfg["_dir"],
                    **self._spawn_extras(db, c["id"], c["profile"])}
            self.pending_spawns.append(spec)
            started.append({"task": c["id"], "run": run["id"], "profile": c["profile"]})
        return {"started": started, "skipped": notes, "dry_run": dry_run}

    def schedule_wake(self, now: float) -> None:
        """A backoff, cooldown or claim expiry written this turn: wake exactly when it is due."""
        nxt = plan.next_wake(self.db, now)
        if nxt is not None:
            self.next_tick = min(self.next_tick, time.monotonic() + max(0.01, nxt - now))

    def run_pass(self) -> None:
        self.dispatch_needed = False
        now = time.time()
        self.schedule_wake(now)
        # read first: no write transaction (and no fsync) when there is nothing to do; the
        # dispatcher is the only writer, so what it read still holds inside the transaction
        unprofiled = plan.unprofiled(self.db, self.cfg)
        attached = self.reaper is not None and not self.stopping
        candidates = plan.candidates(self.db, now, self.cfg) if attached else []
        if not unprofiled and not candidates:
            return
        try:
            with boarddb.write(self.db):
                self.dispatch_pass(self.db, now, unprofiled=unprofiled, candidates=candidates)
        except Exception as exc:
            if boarddb.is_corrupt(exc):
                raise
            log.exception("dispatch.pass_failed")
            self.pending_spawns.clear()
            return
        self.flush_spawns()

    # ---- time rules ----------------------------------------------------------

    def tick(self) -> None:
        now = time.time()
        d = self.cfg["dispatch"]
        expired = runs.expired_claims(self.db, now)
        if expired:
            with boarddb.write(self.db):
                for run in expired:
                    if run["state"] == "running" and run["last_heartbeat"] >= now - d["heartbeat_max_stale"]:
                        runs.extend_claim(self.db, now, run, d["claim_ttl"])
                    elif run["state"] == "running":
                        runs.mark_kill(self.db, now, run["id"], "stale")
                    elif now - run["claimed_at"] > d["crash_grace"]:
                        runs.mark_kill(self.db, now, run["id"], "reclaim")
        if schedule.any_due(self.db, now):  # scheduled tasks whose time came (the wake was armed for it)
            with boarddb.write(self.db):
                schedule.wake_due(self.db, now)
        self.dispatch_needed = True
        nxt = plan.next_wake(self.db, now)
        self.next_tick = time.monotonic() + min(d["tick"], max(0.05, (nxt - now) if nxt else d["tick"]))

    # ---- loop ----------------------------------------------------------------

    def loop(self) -> int:
        ctx = self.ctx
        wake = roles.wakeup_socket(ctx)
        self.sel.register(ctx.listener, selectors.EVENT_READ, ("listen", None))
        self.sel.register(ctx.channel, selectors.EVENT_READ, ("chan", None))
        self.sel.register(wake, selectors.EVENT_READ, ("sig", None))
        next_hb = 0.0
        next_upload_sweep = time.monotonic() + UPLOAD_SWEEP_EVERY
        self.next_tick = time.monotonic()
        log.info("dispatcher.started", board=self.paths["board"], events=self.published)
        while True:
            mono = time.monotonic()
            if mono >= next_hb:
                self.guarded(self.heartbeat)
                next_hb = mono + self.cfg["supervisor"]["heartbeat_interval"]
            if mono >= self.next_tick:
                self.guarded(self.tick)
            if mono >= self.server.sweep_at:
                self.server.sweep(mono)
            if mono >= next_upload_sweep:
                self.uploads.sweep(mono)
                next_upload_sweep = mono + UPLOAD_SWEEP_EVERY
            gc_wait = self.housekeeper.poll()
            if self.reaper is not None and self.reaper.closed:
                log.warning("reaper.detached")
                self.reaper = None
            if self.board_error is not None:
                self.dispatch_needed = False
            if self.dispatch_needed:
                self.guarded(self.run_pass)
                self.guarded(self.publish)
            timeout = min(max(0.0, min(next_hb, self.next_tick, self.server.sweep_at, next_upload_sweep)
                              - time.monotonic()), gc_wait)
            if self.dispatch_needed or self.server.has_backlog:
                timeout = 0.0
            reqs: list[ipc.Request] = self.server.backlog(mono)
            for key, mask in self.sel.select(timeout):
                kind, obj = key.data
                if kind == "conn":
                    if mask & selectors.EVENT_WRITE:
                        self.server.flush(obj)
                    if mask & selectors.EVENT_READ and not obj.closed:
                        reqs += self.server.read(obj, time.monotonic())
                elif kind == "listen":
                    self.server.accept(time.monotonic())
                elif kind == "gc":
                    self.housekeeper.on_readable()
                elif kind == "chan":
                    msgs = roles.recv(ctx.channel)
                    if msgs is None:
                        log.warning("dispatcher.supervisor_gone")
                        return 0
                    self.on_channel(msgs)
                elif kind == "sig":
                    sigs = roles.read_signals(wake)
                    if any(s in (15, 2) for s in sigs):
                        log.info("dispatcher.stopping")
                        self.server.close_all()
                        return 0
            if reqs and (self.serve(reqs) or self.replays):
                self.guarded(self.publish)


def run(ctx: roles.RoleContext) -> int:
    """Role entry point."""
    roles.enter(ctx)
    d = Dispatcher(ctx)
    try:
        return d.loop()
    finally:
        if d.db is not None:
            d.db.close()


__all__ = ["Dispatcher", "run"]
