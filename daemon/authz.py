"""Who may say what: the caller behind every request, and what it may do.

Runs in: the dispatcher, for every request that writes and every internal
method (:meth:`daemon.dispatcher.Dispatcher.authorize`).

A caller is told apart by its pid (``SO_PEERCRED``), never by what it says
about itself (:func:`daemon.containment.identify`): the daemon's roles (the
pids the supervisor announced), a process of a run (in the run's cgroup, or
under its wrapper), a leftover of an ended run, or an operator. Roles may do
anything; internal methods are for roles only; a worker acts on its own task
and creates and links tasks under it; a ``role: orchestrator`` profile acts on
the whole board; nobody reviews their own work. Every refusal is
``permission_denied`` naming the method, and for a worker its run and task.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import structlog

from client.protocol import RPCError
from daemon import containment, roles, spawner
from daemon.board import acceptance

log = structlog.get_logger()

#: Methods by which a reviewer run ends its review.
REVIEW_METHODS = frozenset({"task.approve", "task.request_changes"})


def scope(disp: Any, conn: Any) -> tuple[str, str | None]:
    """The caller's side (see :func:`daemon.containment.identify`), cached per connection."""
    if conn.scope is None or conn.scope[0] == "gone":
        conn.scope = containment.identify(conn.peer_pid, disp.role_pids, disp.contain,
                                          lambda pid, run: known_wrapper(disp, pid, run))
    return conn.scope


def authorize(disp: Any, conn: Any, method: Any, p: dict[str, Any]) -> None:
    """Internal methods come only from the daemon's roles; a worker acts only on its own run.

    Raises:
        RPCError: ``permission_denied`` naming the method, and for a worker the run and task.
    """
    if method.internal:
        if conn.peer_pid not in disp.role_pids:  # a role forked a moment ago: read its announcement
            disp.on_channel(roles.recv(disp.ctx.channel) or [])
        if conn.peer_pid not in disp.role_pids:
            log.warning("rpc.internal_refused", method=method.name, peer_pid=conn.peer_pid)
            raise RPCError("permission_denied", f"{method.name} is internal to kanband's roles; pid "
                           f"{conn.peer_pid} is not one of them", method=method.name, pid=conn.peer_pid)
        return
    kind, run_id = scope(disp, conn)
    token = p.get("run")
    if kind == "role":
        return
    if kind in ("gone", "orphan"):
        raise RPCError("permission_denied", f"{method.name}: the caller (pid {conn.peer_pid}) is "
                       f"{'gone' if kind == 'gone' else 'a leftover process of an ended run'}; refused",
                       method=method.name, pid=conn.peer_pid)
    if kind == "operator":
        if token and disp.db.execute("SELECT 1 FROM runs WHERE id=? AND state != 'ended'", (token,)).fetchone():
            raise RPCError("permission_denied", f"{method.name}: run {token} belongs to its worker's "
                           "processes; a token copied into another process is refused", method=method.name,
                           run=token)
        return
    row = disp.db.execute("SELECT task_id, profile, kind FROM runs WHERE id=?", (run_id,)).fetchone()
    task = row["task_id"] if row else None
    prof = disp.cfg["profiles"].get(row["profile"] if row else "", {})
    if method.name in REVIEW_METHODS:  # nobody reviews their own work, orchestrators included
        targets = p.get("ids") or [p.get("id")]
        for t in targets:
            why = acceptance.implemented_by(disp.db, t, run_id, row["profile"] if row else None)
            if why:
                raise denied(method.name, run_id, task, why)
        if prof.get("role") != "orchestrator" and (row is None or row["kind"] != "review"):
            raise denied(method.name, run_id, task, "only a reviewer run (a review_by profile's) approves "
                               "or requests changes")
    if prof.get("role") == "orchestrator":
        if token and token != run_id:
            raise denied(method.name, run_id, task, f"run token {token} is not this process's run")
        return
    if token and token != run_id:
        raise denied(method.name, run_id, task, f"run token {token} is not this process's run")
    name = method.name
    if name in ("task.complete", "task.block"):
        targets = p.get("ids") or []
    elif name in ("task.heartbeat", "task.comment", "attach.begin", "task.request_changes"):
        targets = [p.get("id")]  # a worker attaches files to its own task (never detaches)
    elif name == "task.approve":
        targets = p.get("ids") or []
    elif name == "attach.commit":
        return  # commits only uploads this connection began, each authorized by attach.begin
    elif name == "task.detach":
        raise denied(name, run_id, task, "a worker may attach files to its task but not detach them")
    elif name == "task.create":
        parents = p.get("parents") or []
        if not parents or not all(in_subtree(disp.db, task, x) for x in parents):
            raise denied(name, run_id, task, f"a worker creates tasks only under its own task {task} "
                               "(pass --parent)")
        return
    elif name == "task.link":
        if not (in_subtree(disp.db, task, p["parent"]) and in_subtree(disp.db, task, p["child"])
                and p["child"] != task):
            raise denied(name, run_id, task, f"a worker links only tasks under its own task {task}")
        return
    else:
        raise denied(name, run_id, task, "a worker may only act on its own task")
    if any(t != task for t in targets):
        other = next(t for t in targets if t != task)
        raise denied(name, run_id, task, f"task {other} is not this worker's task")


def known_wrapper(disp: Any, pid: int, run_id: str) -> bool:
    """True if ``pid`` is the wrapper of ``run_id``, a run that has not ended: the board
    recorded that pid, or the wrapper's own pid file names it (see
    :func:`daemon.spawner.wrapper_on_record`)."""
    row = disp.db.execute("SELECT pid FROM runs WHERE id=? AND state != 'ended'", (run_id,)).fetchone()
    return row is not None and (row[0] == pid or spawner.wrapper_on_record(disp.paths["runs"], run_id, pid))


def in_subtree(db: sqlite3.Connection, root: str | None, task_id: str) -> bool:
    if root is None or not isinstance(task_id, str):
        return False
    return task_id == root or db.execute(
        "WITH RECURSIVE d(id) AS (SELECT ? UNION SELECT l.child FROM links l JOIN d ON l.parent=d.id) "
        "SELECT 1 FROM d WHERE id=? LIMIT 1", (root, task_id)).fetchone() is not None


def denied(method: str, run_id: str | None, task: str | None, why: str) -> RPCError:
    return RPCError("permission_denied", f"{method}: {why} (caller is run {run_id} of task {task})",
                    method=method, run=run_id, task=task)
