"""RPC handlers: one function per method in ``client.protocol.METHODS``.

Runs in: the dispatcher. Each handler receives a :class:`Ctx` and the
validated params and returns the result object. Write handlers run inside the
dispatcher's group-commit transaction (one savepoint each); they never commit.
A test asserts that ``HANDLERS`` and the registry are the same set.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from client.protocol import PROTOCOL_VERSION, RPCError, parse_since
from daemon import __version__, attachstore, worklog
from daemon.board import acceptance, attachments, context, plan, reopen, runs, schedule, subs, tasks
from daemon.config import parse_duration

Handler = Callable[["Ctx", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}

#: A handler's result that means "answered later": the dispatcher sends nothing now, and the
#: handler has kept ``ctx.req`` to answer it (``board.gc`` answers when the work is done).
DEFERRED = object()


@dataclasses.dataclass
class Ctx:
    """What a handler may use: the board, the clock, the config, the caller, the dispatcher."""

    db: sqlite3.Connection
    now: float
    cfg: dict[str, Any]
    client: Any  # daemon.ipc.Connection
    disp: Any    # daemon.dispatcher.Dispatcher
    req: Any = None  # daemon.ipc.Request: its id, for a handler that answers later


def handler(name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        assert name not in HANDLERS, name
        HANDLERS[name] = fn
        return fn
    return deco


@handler("board.init")
def board_init(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return {"board": ctx.disp.paths["board"], "state_dir": ctx.disp.paths["state_dir"],
            "socket": ctx.disp.paths["socket"], "config": ctx.cfg.get("_file"),
            "profiles": sorted(ctx.cfg["profiles"]), "sinks": sorted(ctx.cfg["sinks"]),
            "stats": tasks.stats(ctx.db, ctx.now), "board_name": ctx.disp.paths.get("board_name") or None,
            "under_systemd": bool(os.environ.get("INVOCATION_ID"))}


@handler("task.create")
def task_create(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    notify = p.pop("notify", None) or []
    for sink in notify:
        if sink not in ctx.cfg["sinks"]:
            raise RPCError("not_found", f"no sink {sink!r} in the config", field="notify", id=sink)
    if p.get("workspace") is None and not (p.get("repo") or p.get("branch")) \
            and p.get("assignee") in ctx.cfg["profiles"]:
        p["workspace"] = ctx.cfg["profiles"][p["assignee"]]["workspace"]
    p["due_at"] = schedule.due_time(ctx.now, p.pop("at", None), p.pop("in", None))
    task, created = tasks.create(ctx.db, ctx.now, default_workspace=ctx.cfg["workspaces"]["default"], **p)
    if created:
        for sink in notify:
            subs.subscribe(ctx.db, ctx.now, sink=sink, task_id=task["id"], kinds=None, descendants=True)
    return {**task, "created": created}


def _since(ctx: Ctx, p: dict[str, Any]) -> None:
    """Turn ``p["since"]`` (text) into Unix time, or refuse it naming the field."""
    if p.get("since") is not None:
        try:
            p["since"] = parse_since(p["since"], ctx.now)
        except ValueError as exc:
            raise RPCError("invalid_params", f"since: {exc}", field="since") from None


@handler("task.list")
def task_list(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _since(ctx, p)
    return tasks.list_tasks(ctx.db, **p)


@handler("task.ids")
def task_ids(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.ids(ctx.db, p.get("prefix") or "", bool(p.get("archived")), p.get("limit"))


@handler("board.names")
def board_names(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return {"profiles": sorted(ctx.cfg["profiles"]), "sinks": sorted(ctx.cfg["sinks"])}


@handler("task.show")
def task_show(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.show(ctx.db, p["id"])


@handler("task.assign")
def task_assign(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.assign(ctx.db, ctx.now, p["id"], p.get("assignee"))


@handler("task.link")
def task_link(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.link(ctx.db, ctx.now, p["parent"], p["child"])


@handler("task.unlink")
def task_unlink(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.unlink(ctx.db, ctx.now, p["parent"], p["child"])


@handler("task.comment")
def task_comment(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.comment(ctx.db, ctx.now, p["id"], p["body"], p.get("author"))


@handler("task.complete")
def task_complete(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    ids = p.get("ids") or []
    if p.get("run") is not None and len(ids) == 1:  # a worker's completion: verify and/or review first?
        gated = acceptance.submit(ctx.db, ctx.now, ctx.cfg, ids[0], p["run"], p.get("summary"), p.get("result"),
                                  p.get("metadata"))
        if gated is not None:
            return gated
    return tasks.complete(ctx.db, ctx.now, p.get("ids") or [], p.get("summary"), p.get("result"),
                          p.get("metadata"), p.get("run"))


@handler("task.block")
def task_block(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.block(ctx.db, ctx.now, p.get("ids") or [], p["reason"], p.get("run"))


@handler("task.approve")
def task_approve(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return acceptance.approve(ctx.db, ctx.now, p.get("ids") or [], p.get("comment"), p.get("run"))


@handler("task.request_changes")
def task_request_changes(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("id"):
        raise RPCError("invalid_params", "no task id given (outside a reviewer run, name the task)", field="id")
    return acceptance.request_changes(ctx.db, ctx.now, p["id"], p["comment"], p.get("run"))


@handler("task.unblock")
def task_unblock(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.unblock(ctx.db, ctx.now, p["ids"])


@handler("task.archive")
def task_archive(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.archive(ctx.db, ctx.now, p["ids"])


@handler("task.kill")
def task_kill(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if p.get("block") is not None and not p["block"].strip():
        raise RPCError("invalid_params", "--block needs a reason", field="block")
    return tasks.kill(ctx.db, ctx.now, p["ids"], p.get("block"))


@handler("task.retry")
def task_retry(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.retry(ctx.db, ctx.now, p["ids"], p.get("reason"))


@handler("task.promote")
def task_promote(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.promote(ctx.db, ctx.now, p["id"])


@handler("task.edit")
def task_edit(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in p.items() if k != "id" and (v is not None or k in tasks.EDIT_NULLABLE)}
    return tasks.edit(ctx.db, ctx.now, p["id"], **fields)


@handler("task.heartbeat")
def task_heartbeat(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("id"):
        raise RPCError("invalid_params", "no task id given (outside a worker, name the task)", field="id")
    return runs.heartbeat(ctx.db, ctx.now, p["id"], p.get("run"), p.get("note"),
                          ctx.cfg["dispatch"]["claim_ttl"])


@handler("task.runs")
def task_runs(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return runs.list_runs(ctx.db, p["id"])


@handler("task.log")
def task_log(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    row = tasks.get(ctx.db, p["id"])
    path = worklog.log_path(ctx.disp.paths["logs"], p["id"])
    if sum(p.get(k) is not None for k in ("tail", "lines", "run")) > 1:
        raise RPCError("invalid_params", "give at most one of tail, lines and run", field="lines")
    if p.get("offset") is not None:
        out = worklog.read_follow(path, p["offset"], p.get("rotation") or "")
    elif p.get("run") is not None:
        run = runs.get_run(ctx.db, p["run"])
        if run["task_id"] != p["id"]:
            raise RPCError("not_found", f"run {p['run']} is not a run of task {p['id']}", id=p["run"])
        out = worklog.read_run(path, p["run"])
        if out is None:
            out = {**worklog.read_tail(path, tail_bytes=0), "text": "", "missing": True, "run": p["run"]}
    else:
        out = worklog.read_tail(path, tail_bytes=p.get("tail"), lines=p.get("lines"))
    live = ctx.db.execute("SELECT id FROM runs WHERE task_id=? AND state != 'ended' LIMIT 1", (p["id"],)).fetchone()
    return {"path": path, "more": False, "gap": False, **out, "status": row["status"], "live": live is not None,
            "live_run": live[0] if live else None}


@handler("board.stats")
def board_stats(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.stats(ctx.db, ctx.now)


@handler("events.since")
def events_since(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _since(ctx, p)
    return tasks.events_since(ctx.db, p.get("after") or 0, p.get("task"), p.get("limit"), p.get("since"),
                              p.get("kinds"))


@handler("events.follow")
def events_follow(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ctx.disp.follow(ctx, p)


@handler("daemon.status")
def daemon_status(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    d = ctx.disp
    return {"version": __version__, "protocol": PROTOCOL_VERSION, "pid": d.supervisor_pid,
            "dispatcher_pid": os.getpid(),
            "uptime": ctx.now - d.started_at, "board": d.paths["board"], "socket": d.paths["socket"],
            "state_dir": d.paths["state_dir"], "config": ctx.cfg.get("_file"), "roles": d.role_table(ctx.now),
            "flapping": d.flapping, "reaper_attached": d.reaper is not None, "board_error": d.board_error,
            "containment": d.contain.describe(),
            "runs": {} if d.board_error else {st: n for st, n in ctx.db.execute(
                "SELECT state, count(*) FROM runs WHERE state != 'ended' GROUP BY state")},
            "summary": {} if d.board_error else tasks.stats(ctx.db, ctx.now)["by_status"],
            "controls": None if d.board_error else plan.controls(ctx.db, ctx.cfg), "reload": d.last_reload,
            "board_name": d.paths.get("board_name") or None}


@handler("web.url")
def web_url(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    """The web role reports its address in its heartbeat; the token is read from its file here.

    Refused to workers: the URL carries the operator's token, and the board acts with full rights.
    """
    if ctx.disp.scope(ctx.client)[0] not in ("operator", "role"):
        raise RPCError("permission_denied", "web.url: the web board's token is for the operator, not for workers",
                       method="web.url")
    web = ctx.disp.roles_snapshot.get("web")
    if web is None:
        raise RPCError("unavailable", "the web board is off (web.enabled: false)")
    if not web.get("url"):
        why = web.get("error") or f"the web role is {web.get('state', 'starting')}"
        raise RPCError("unavailable", f"the web board is not listening: {why}", state=web.get("state"))
    try:
        with open(web["token_file"]) as f:
            token = f.read().strip()
    except OSError as exc:
        raise RPCError("unavailable", f"cannot read the web token {web['token_file']}: {exc.strerror}") from None
    return {"url": f"{web['url']}?token={token}", "base": web["url"], "listen": web.get("listen"),
            "token_file": web["token_file"], "state": web.get("state")}


@handler("dispatch.run")
def dispatch_run(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    result = ctx.disp.dispatch_pass(ctx.db, ctx.now, dry_run=bool(p.get("dry_run")))
    if "note" not in result and plan.controls(ctx.db, ctx.cfg)["paused"]:
        result["note"] = "dispatch is paused; `kanban resume` starts new runs again"
    return result


@handler("dispatch.plan")
def dispatch_plan(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    exiting = [dict(r) for r in ctx.db.execute(
        "SELECT id AS run, task_id AS task, profile, kill_reason AS reason, pid FROM runs WHERE state='exiting' "
        "ORDER BY claimed_at")]
    return {"plan": plan.explain(ctx.db, ctx.now, ctx.cfg), "reaper_attached": ctx.disp.reaper is not None,
            "exiting": exiting, "scheduled": schedule.listing(ctx.db, ctx.now), "controls": plan.controls(ctx.db, ctx.cfg)}



@handler("dispatch.pause")
def dispatch_pause(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    ctx.disp.dispatch_needed = True
    return plan.pause(ctx.db, ctx.now, ctx.cfg, p.get("profiles"))


@handler("dispatch.resume")
def dispatch_resume(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    ctx.disp.dispatch_needed = True
    return plan.resume(ctx.db, ctx.now, ctx.cfg, p.get("profiles"))


@handler("dispatch.parallel")
def dispatch_parallel(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    ctx.disp.dispatch_needed = True
    return plan.set_cap(ctx.db, ctx.now, ctx.cfg, p.get("limit"), p.get("profile"), bool(p.get("reset")))


@handler("daemon.reload")
def daemon_reload(ctx: Ctx, p: dict[str, Any]) -> Any:
    """Answered later, when the supervisor has tried the reload (see ``Dispatcher.request_reload``)."""
    kind, _ = ctx.disp.scope(ctx.client)
    if kind not in ("operator", "role"):
        raise RPCError("permission_denied", "daemon.reload: only an operator may reload the config, not a worker",
                       method="daemon.reload")
    return ctx.disp.request_reload()


@handler("notify.subscribe")
def notify_subscribe(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if p["sink"] not in ctx.cfg["sinks"]:
        raise RPCError("not_found", f"no sink {p['sink']!r} in the config", field="sink", id=p["sink"])
    if p.get("id"):
        tasks.get_for(ctx.db, p["id"], "subscribe")
    return subs.subscribe(ctx.db, ctx.now, sink=p["sink"], task_id=p.get("id"), kinds=p.get("kinds"),
                          descendants=bool(p.get("descendants")), assignee=p.get("assignee"),
                          tenant=p.get("tenant"))


@handler("notify.list")
def notify_list(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return subs.list_all(ctx.db, ctx.cfg)


@handler("notify.unsubscribe")
def notify_unsubscribe(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return subs.unsubscribe(ctx.db, ctx.now, p["ids"])


@handler("notify.resume")
def notify_resume(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if p["sink"] not in ctx.cfg["sinks"]:
        raise RPCError("not_found", f"no sink {p['sink']!r} in the config", id=p["sink"])
    return subs.resume(ctx.db, ctx.now, p["sink"])


# ---- work loop: reopen, scheduled start, operator verbs (issue 11) ----

@handler("task.reopen")
def task_reopen(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return reopen.reopen(ctx.db, ctx.now, p["ids"], p["reason"], bool(p.get("cascade")))


@handler("task.schedule")
def task_schedule(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    tasks.get(ctx.db, p["id"])
    due = schedule.due_time(ctx.now, p.get("at"), p.get("in"))
    if due is None:
        raise RPCError("invalid_params", "give --at TIME or --in DELAY", field="at")
    return schedule.schedule(ctx.db, ctx.now, p["id"], due)


#: Statuses ``kanban wait`` stops at.
WAIT_FINAL = frozenset({"done", "archived", "blocked"})


@handler("task.wait")
def task_wait(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    """Each task's status now, then (as ``events.follow`` does) the tasks' events as they happen."""
    timeout = None
    if p.get("timeout") is not None:
        try:
            timeout = parse_duration(p["timeout"])
        except ValueError:
            raise RPCError("invalid_params", f"--timeout {p['timeout']!r}: not a duration (use e.g. 30s, 10m)",
                           field="timeout", value=p["timeout"]) from None
    ids = list(dict.fromkeys(p["ids"]))
    if not ids:
        raise RPCError("invalid_params", "no task ids given", field="ids")
    rows = [tasks.get(ctx.db, i) for i in ids]
    answer = ctx.disp.follow(ctx, {"task": ids[0]})
    ctx.client.follow["tree"] = set(ids)  # every waited task, not only the first
    return {"tasks": [{"id": r["id"], "title": r["title"], "status": r["status"], "final": r["status"] in WAIT_FINAL}
                      for r in rows], "timeout": timeout, "last_id": answer["last_id"]}


@handler("board.assignees")
def board_assignees(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return plan.assignees(ctx.db, ctx.now, ctx.cfg)


@handler("task.context")
def task_context(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("id"):
        raise RPCError("invalid_params", "no task id given (outside a worker, name the task)", field="id")
    return context.build(ctx.db, p["id"], ctx.disp.paths["state_dir"])


@handler("reaper.attach")
def reaper_attach(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ctx.disp.attach_reaper(ctx, p)


@handler("run.starting")
def run_starting(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return runs.starting(ctx.db, ctx.now, p["run"], p["pid"])


@handler("run.started")
def run_started(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return runs.started(ctx.db, ctx.now, p["run"], p["pid"], p["start_time"], p.get("worker_pid"),
                        p.get("exec_at"))


@handler("run.output")
def run_output(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return runs.output_heartbeat(ctx.db, ctx.now, ctx.cfg, p["runs"])


@handler("daemon.whoami")
def daemon_whoami(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    kind, run_id = ctx.disp.scope(ctx.client)
    out = {"caller": "worker" if kind == "run" else kind, "pid": ctx.client.peer_pid, "run": None, "task": None,
           "profile": None, "role": None, "review": False, "socket": ctx.disp.paths["socket"]}
    if kind in ("gone", "orphan"):
        raise RPCError("permission_denied", f"daemon.whoami: the caller (pid {ctx.client.peer_pid}) is "
                       f"{'gone' if kind == 'gone' else 'a leftover process of an ended run'}",
                       method="daemon.whoami", pid=ctx.client.peer_pid)
    if kind == "run":
        row = ctx.db.execute("SELECT task_id, profile, kind FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is not None:
            prof = ctx.cfg["profiles"].get(row["profile"] or "", {})
            out.update(run=run_id, task=row["task_id"], profile=row["profile"], role=prof.get("role") or "worker",
                       review=row["kind"] == "review")
    return out


@handler("run.exiting")
def run_exiting(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return {"ok": runs.mark_kill(ctx.db, ctx.now, p["run"], p["reason"], emit=False)}


def close_log(ctx: Ctx, run_id: str, out: dict[str, Any]) -> None:
    """Once a run has ended (no process of it is alive), close its part of the task log with a
    separator line naming its outcome (``daemon/worklog.py``)."""
    if out.get("duplicate"):
        return
    run = runs.get_run(ctx.db, run_id)
    if run["state"] == "ended":
        worklog.append_line(worklog.log_path(ctx.disp.paths["logs"], run["task_id"]), worklog.end_line(dict(run)))


@handler("run.exited")
def run_exited(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    run_id = p.pop("run")
    out = runs.exited(ctx.db, ctx.now, ctx.cfg, run_id, **p)
    if out.get("verify"):  # the worker completed and is gone: the reaper runs the verify command now
        out["verify"] = ctx.disp.verify_spec(ctx.db, run_id)
    close_log(ctx, run_id, out)
    return out


@handler("run.verified")
def run_verified(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    run_id = p.pop("run")
    out = acceptance.verified(ctx.db, ctx.now, ctx.cfg, run_id, **p)
    if out.get("verify"):  # interrupted: run it again
        out["verify"] = ctx.disp.verify_spec(ctx.db, run_id)
    close_log(ctx, run_id, out)
    return out


@handler("notifier.attach")
def notifier_attach(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    ctx.client.role = "notifier"
    return subs.attach(ctx.db, ctx.now, ctx.cfg)


@handler("notifier.ack")
def notifier_ack(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return subs.ack(ctx.db, ctx.now, p["sink"], cursor=p.get("cursor"), failed=bool(p.get("failed")),
                    error=p.get("error"), paused=bool(p.get("paused")))


@handler("notifier.pending")
def notifier_pending(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if p["sink"] not in ctx.cfg["sinks"]:
        raise RPCError("not_found", f"no sink {p['sink']!r} in the config", id=p["sink"])
    return subs.pending(ctx.db, ctx.cfg, p["sink"], p.get("limit") or 100)


# ---- attachments and housekeeping ------------------------------------------------------------


def _caller(ctx: Ctx) -> tuple[str, str | None]:
    """``("worker", run)`` for a process of a run, ``("operator", None)`` otherwise."""
    kind, run_id = ctx.disp.scope(ctx.client)
    return ("worker", run_id) if kind == "run" else ("operator", None)


@handler("attach.begin")
def attach_begin(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    row = tasks.get(ctx.db, p["id"])
    if row["status"] == "archived":
        raise RPCError("conflict", f"task {p['id']} is archived; its attachments can no longer change", id=p["id"])
    name = attachments.sanitize(p.get("name") or "")
    size, caps = p["size"], ctx.cfg["attachments"]
    if size < 0:
        raise RPCError("invalid_params", "size must not be negative", field="size")
    if size > caps["max_size"]:
        raise RPCError("invalid_params", f"attachment {name!r} is {_mib(size)}; attachments.max_size is "
                       f"{_mib(caps['max_size'])}", field="size", size=size, limit=caps["max_size"])
    used = attachments.total_size(ctx.db, p["id"]) + ctx.disp.uploads.pending_bytes(p["id"])
    if used + size > caps["max_task_total"]:
        raise RPCError("invalid_params", f"task {p['id']} would hold {_mib(used + size)} of attachments; "
                       f"attachments.max_task_total is {_mib(caps['max_task_total'])}", field="size",
                       size=size, used=used, limit=caps["max_task_total"])
    by, run = _caller(ctx)
    up = ctx.disp.uploads.begin(ctx.client, p["id"], name, size, by, run)
    return {"upload": up.id, "name": name, "size": size, "chunk": attachstore.CHUNK}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


@handler("attach.chunk")
def attach_chunk(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ctx.disp.uploads.chunk(ctx.client, p["upload"], p["offset"], p["data"])


@handler("attach.commit")
def attach_commit(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    """All or none: any error discards every upload named (nothing is left behind)."""
    uploads = ctx.disp.uploads
    ups = [uploads.get(ctx.client, u) for u in dict.fromkeys(p["uploads"])]
    try:
        if not ups or len(p["sha256"]) != len(ups):
            raise RPCError("invalid_params", "give one sha256 per upload, in the same order", field="sha256")
        placements, taken, added = [], {}, {}
        for up, want in zip(ups, p["sha256"]):
            if uploads.finish(up) != want.lower():
                raise RPCError("invalid_params", f"attachment {up.name!r}: SHA-256 mismatch (the file changed while "
                               "it was sent); nothing was stored", field="sha256", id=up.id)
            row = tasks.get(ctx.db, up.task)
            if row["status"] == "archived":
                raise RPCError("conflict", f"task {up.task} was archived; attachments can no longer change",
                               id=up.task)
            if up.task not in added:  # what the task holds before this commit
                added[up.task] = attachments.total_size(ctx.db, up.task)
            added[up.task] += up.size
            limit = ctx.cfg["attachments"]["max_task_total"]
            if added[up.task] > limit:
                raise RPCError("invalid_params", f"task {up.task}: attachments.max_task_total ({_mib(limit)}) "
                               "would be exceeded", field="uploads", id=up.task)
            name = attachments.unique_name(ctx.db, uploads.root, up.task, up.name, taken.setdefault(up.task, set()))
            taken[up.task].add(name)
            attachments.insert(ctx.db, up.task, name, up.size, up.digest.hexdigest(), ctx.now, up.by, up.run)
            tasks.emit(ctx.db, ctx.now, "attached", up.task, up.run, name=name, size=up.size,
                       sha256=up.digest.hexdigest(), by=up.by)
            placements.append((up, name))
        paths = uploads.place(placements)
    except RPCError:
        for up in ups:
            uploads.abort(up)
        raise
    return {"attachments": [{"task": up.task, "name": name, "size": up.size, "sha256": up.digest.hexdigest(),
                             "path": path} for (up, name), path in zip(placements, paths)]}


@handler("attach.abort")
def attach_abort(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    done = []
    for upload_id in p["uploads"]:
        up = ctx.disp.uploads.items.get(upload_id)
        if up is not None and up.conn is ctx.client:
            ctx.disp.uploads.abort(up)
            done.append(upload_id)
    return {"aborted": done}


@handler("task.attachments")
def task_attachments(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    tasks.get(ctx.db, p["id"])
    items = attachments.listing(ctx.db, ctx.disp.paths["state_dir"], p["id"])
    return {"task": p["id"], "attachments": items, "total": sum(a["size"] for a in items)}


@handler("task.detach")
def task_detach(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    tasks.get(ctx.db, p["id"])
    row = attachments.get(ctx.db, p["id"], p["name"])
    attachments.delete_rows(ctx.db, p["id"], p["name"])
    tasks.emit(ctx.db, ctx.now, "detached", p["id"], name=p["name"], size=row["size"])
    path = os.path.join(attachments.task_dir(ctx.disp.uploads.root, p["id"]), p["name"])
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return {"task": p["id"], "name": p["name"], "size": row["size"]}


@handler("board.gc")
def board_gc(ctx: Ctx, p: dict[str, Any]) -> Any:
    return ctx.disp.housekeeper.request(ctx, dry_run=bool(p.get("dry_run")), older_than=p.get("older_than"))
