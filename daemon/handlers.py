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

from client.protocol import RPCError
from daemon import __version__
from daemon.board import plan, runs, subs, tasks

Handler = Callable[["Ctx", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}


@dataclasses.dataclass
class Ctx:
    """What a handler may use: the board, the clock, the config, the caller, the dispatcher."""

    db: sqlite3.Connection
    now: float
    cfg: dict[str, Any]
    client: Any  # daemon.ipc.Connection
    disp: Any    # daemon.dispatcher.Dispatcher


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
            "stats": tasks.stats(ctx.db, ctx.now)}


@handler("task.create")
def task_create(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    notify = p.pop("notify", None) or []
    for sink in notify:
        if sink not in ctx.cfg["sinks"]:
            raise RPCError("not_found", f"no sink {sink!r} in the config", field="notify", id=sink)
    if p.get("workspace") is None and p.get("assignee") in ctx.cfg["profiles"]:
        p["workspace"] = ctx.cfg["profiles"][p["assignee"]]["workspace"]
    task, created = tasks.create(ctx.db, ctx.now, default_workspace=ctx.cfg["workspaces"]["default"], **p)
    if created:
        for sink in notify:
            subs.subscribe(ctx.db, ctx.now, sink=sink, task_id=task["id"], kinds=None, descendants=True)
    return {**task, "created": created}


@handler("task.list")
def task_list(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.list_tasks(ctx.db, **p)


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
    return tasks.complete(ctx.db, ctx.now, p.get("ids") or [], p.get("summary"), p.get("result"),
                          p.get("metadata"), p.get("run"))


@handler("task.block")
def task_block(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.block(ctx.db, ctx.now, p.get("ids") or [], p["reason"], p.get("run"))


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
    return tasks.edit(ctx.db, ctx.now, p["id"], p.get("title"), p.get("body"), p.get("priority"))


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
    tasks.get(ctx.db, p["id"])
    tail = p.get("tail")
    if tail is not None and tail < 0:
        raise RPCError("invalid_params", "tail must not be negative", field="tail")
    path = os.path.join(ctx.disp.paths["logs"], f"{p['id']}.log")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - tail) if tail is not None else max(0, size - (1 << 20))
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return {"path": path, "text": "", "size": 0, "truncated": False, "exists": False}
    return {"path": path, "text": data.decode(errors="replace"), "size": size, "truncated": start > 0,
            "exists": True}


@handler("board.stats")
def board_stats(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.stats(ctx.db, ctx.now)


@handler("events.since")
def events_since(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return tasks.events_since(ctx.db, p.get("after") or 0, p.get("task"), p.get("limit"))


@handler("events.follow")
def events_follow(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ctx.disp.follow(ctx, p)


@handler("daemon.status")
def daemon_status(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    d = ctx.disp
    return {"version": __version__, "pid": d.supervisor_pid, "dispatcher_pid": os.getpid(),
            "uptime": ctx.now - d.started_at, "board": d.paths["board"], "socket": d.paths["socket"],
            "state_dir": d.paths["state_dir"], "config": ctx.cfg.get("_file"), "roles": d.role_table(ctx.now),
            "flapping": d.flapping, "reaper_attached": d.reaper is not None,
            "containment": d.contain.describe(),
            "runs": {st: n for st, n in ctx.db.execute(
                "SELECT state, count(*) FROM runs WHERE state != 'ended' GROUP BY state")},
            "summary": tasks.stats(ctx.db, ctx.now)["by_status"]}


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
    return ctx.disp.dispatch_pass(ctx.db, ctx.now, dry_run=bool(p.get("dry_run")))


@handler("dispatch.plan")
def dispatch_plan(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    exiting = [dict(r) for r in ctx.db.execute(
        "SELECT id AS run, task_id AS task, profile, kill_reason AS reason, pid FROM runs WHERE state='exiting' "
        "ORDER BY claimed_at")]
    return {"plan": plan.explain(ctx.db, ctx.now, ctx.cfg), "reaper_attached": ctx.disp.reaper is not None,
            "exiting": exiting}


@handler("notify.subscribe")
def notify_subscribe(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    if p["sink"] not in ctx.cfg["sinks"]:
        raise RPCError("not_found", f"no sink {p['sink']!r} in the config", field="sink", id=p["sink"])
    if p.get("id"):
        tasks.get(ctx.db, p["id"])
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


@handler("run.exiting")
def run_exiting(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return {"ok": runs.mark_kill(ctx.db, ctx.now, p["run"], p["reason"], emit=False)}


@handler("run.exited")
def run_exited(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    run_id = p.pop("run")
    return runs.exited(ctx.db, ctx.now, ctx.cfg, run_id, **p)


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
