"""Human output for the ``kanban`` CLI: aligned tables, readable task pages, colour.

Runs in: the ``kanban`` CLI. Stdlib only. Colour only on a TTY and never with
``NO_COLOR``; ``--json`` bypasses all of this.
"""

from __future__ import annotations

import json
import os
import sys
import time


COLORS = {"ready": "32", "running": "36", "blocked": "31", "done": "2", "todo": "33", "triage": "35",
          "archived": "2", "review": "34", "scheduled": "34"}


def use_color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def paint(text: str, status: str, color: bool) -> str:
    code = COLORS.get(status)
    return f"\033[{code}m{text}\033[0m" if color and code else text


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= n:
            return f"{d / n:.0f}{unit}"
    return f"{d:.0f}s"


def dur(sec: float | None) -> str:
    if sec is None:
        return "-"
    return f"{sec:.1f}s" if sec < 120 else f"{sec / 60:.1f}m"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(strip_ansi(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(c + " " * (w - len(strip_ansi(c))) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def strip_ansi(s: str) -> str:
    import re
    return re.sub(r"\033\[[0-9;]*m", "", s)


def fmt_task_line(t: dict) -> str:
    return f"{t['id']}  {t['status']:<8} {t['title']}"


def fmt_list(r: dict, color: bool) -> str:
    rows = [[t["id"], paint(t["status"], t["status"], color), str(t["priority"]), t["assignee"] or "-",
             ago(t["updated_at"]), t["title"]] for t in r["tasks"]]
    if not rows:
        return "no tasks"
    out = table(rows, ["id", "status", "pri", "assignee", "updated", "title"])
    if r["total"] > len(rows):
        out += f"\n({len(rows)} of {r['total']} shown)"
    return out


def fmt_show(r: dict, color: bool) -> str:
    t = r["task"]
    lines = [f"{t['id']}  {paint(t['status'], t['status'], color)}  {t['title']}"]
    for key in ("assignee", "priority", "tenant", "created_by", "summary", "result", "block_reason"):
        if t.get(key) not in (None, ""):
            lines.append(f"  {key + ':':<14}{t[key]}")
    lines.append(f"  {'workspace:':<14}{t['workspace']['kind']}{' ' + t['workspace']['path'] if t['workspace']['path'] else ''}")
    lines.append(f"  {'created:':<14}{ago(t['created_at'])} ago   failures: {t['consecutive_failures']}")
    if t["body"]:
        lines += ["", *("  " + line for line in t["body"].splitlines())]
    for label, key in (("parents", "parents"), ("children", "children")):
        if r[key]:
            lines += ["", f"{label}:"] + [f"  {x['id']}  {paint(x['status'].ljust(8), x['status'], color)} {x['title']}"
                                          for x in r[key]]
    if r["runs"]:
        lines += ["", "runs:"] + [f"  {x['id']}  {x['outcome'] or x['state']:<18} exit={x['exit_code']} "
                                  f"{dur(x['duration'])}  {x['summary'] or ''}".rstrip() for x in r["runs"]]
    if r["comments"]:
        lines += ["", "comments:"] + [f"  [{ago(c['created_at'])} ago] {c['author'] or '?'}: {c['body']}"
                                      for c in r["comments"]]
    if r["events"]:
        lines += ["", "recent events:"] + [f"  #{e['id']} {ago(e['at'])} ago  {e['kind']}" for e in r["events"]]
    return "\n".join(lines)


def fmt_stats(r: dict, color: bool) -> str:
    rows = [[paint(s, s, color), str(n)] for s, n in r["by_status"].items() if n]
    out = table(rows or [["-", "0"]], ["status", "count"])
    if r["by_assignee"]:
        statuses = sorted({s for v in r["by_assignee"].values() for s in v})
        arows = [[a] + [str(v.get(s, 0)) for s in statuses] for a, v in sorted(r["by_assignee"].items())]
        out += "\n\n" + table(arows, ["assignee", *statuses])
    age = r["oldest_ready_age"]
    out += f"\n\ntotal {r['total']}; oldest ready task waiting {dur(age) if age is not None else '-'}"
    return out


def fmt_status(r: dict, color: bool) -> str:
    s = r["summary"]
    lines = [f"kanband {r['version']}  pid {r['pid']}  up {dur(r['uptime'])}",
             f"board   {r['board']}", f"socket  {r['socket']}", f"config  {r['config'] or '(defaults)'}", ""]
    rows = [[x["name"], str(x.get("pid") or "-"), x.get("state", "?"), str(x.get("restarts", 0)),
             (dur(x["heartbeat_age"]) + " ago") if x.get("heartbeat_age") is not None else "-"]
            for x in r["roles"]]
    for row, x in zip(rows, r["roles"]):
        if x.get("essential") is False:
            row[0] += " (optional)"
        if x.get("error") and x.get("state") != "ok":
            row[2] += f": {x['error']}"
    lines.append(table(rows, ["role", "pid", "state", "restarts", "heartbeat"]))
    web = next((x for x in r["roles"] if x["name"] == "web"), None)
    if web and web.get("url"):
        lines.append(f"web board: {web['url']} (`kanban web` prints it with the token)")
    if r.get("flapping"):
        lines.append(f"FLAPPING: {', '.join(r['flapping'])}")
    c = r.get("containment")
    if c:
        lines.append(f"containment: {c['mode']}" + (f" ({c['why']})" if c.get("why") else ""))
    live = r.get("runs") or {}
    if live:
        lines.append("live runs: " + ", ".join(f"{n} {st}" for st, n in live.items()))
    lines += ["", ", ".join(f"{n} {k}" for k, n in s.items() if n) or "board is empty"]
    return "\n".join(lines)


def fmt_runs(r: dict, color: bool) -> str:
    rows = [[x["id"], x["outcome"] or x["state"], str(x["exit_code"] if x["exit_code"] is not None else
                                                       (f"sig{x['signal']}" if x["signal"] else "-")),
             dur(x["duration"]), x["summary"] or (x["error"] or "").split("\n")[0]] for x in r["runs"]]
    return table(rows, ["run", "outcome", "exit", "duration", "summary"]) if rows else "no runs"


def fmt_plan(r: dict, color: bool) -> str:
    rows = [[x["task"], x["decision"], x["assignee"] or "-", x["reason"]] for x in r["plan"]]
    out = table(rows, ["task", "decision", "assignee", "reason"]) if rows else "no ready tasks"
    for x in r.get("exiting") or []:
        out += f"\nrun {x['run']} of {x['task']} is still exiting ({x['reason']}): its slot is taken until no " \
               "process of it is alive"
    if not r.get("reaper_attached", True):
        out += "\nnote: the reaper is not attached; nothing starts until it is"
    return out


def fmt_dispatch(r: dict, color: bool) -> str:
    verb = "would start" if r.get("dry_run") else "started"
    lines = [f"{verb} {x['task']} ({x['profile']})" for x in r["started"]]
    lines += [f"skipped {x['task']}: {x['reason']}" for x in r.get("skipped", [])]
    if r.get("note"):
        lines.append(f"note: {r['note']}")
    return "\n".join(lines) or "nothing to start"


def fmt_event(e: dict) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(e["at"]))
    extra = " ".join(f"{k}={v}" for k, v in e["payload"].items() if v not in (None, "", [], {}) and k != "workspace")
    return f"{ts} #{e['id']} {e['task_id'] or '-'} {e['kind']} {extra}".rstrip()


def fmt_tasks(r: dict, color: bool) -> str:
    lines = [fmt_task_line(t) for t in r["tasks"]]
    if r.get("promoted"):
        lines.append("promoted: " + ", ".join(r["promoted"]))
    return "\n".join(lines)


def fmt_default(r: object, color: bool) -> str:
    if isinstance(r, dict) and "id" in r and "status" in r and "title" in r:
        return fmt_task_line(r)
    if isinstance(r, dict):
        return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in r.items())
    return str(r)


def fmt_sub_target(s: dict) -> str:
    if s["task_id"]:
        return s["task_id"] + (" +descendants" if s["descendants"] else "")
    filters = [f"{k}={s[k]}" for k in ("assignee", "tenant") if s.get(k)]
    return " ".join(filters) or "(every task)"


def fmt_notify_list(r: dict, color: bool) -> str:
    rows = []
    for s in r["sinks"]:
        state = "new" if s["cursor"] is None else "paused" if s["paused"] else \
            f"failing ({s['failures']})" if s["failures"] else "ok"
        rows.append([s["name"], s["type"], paint(state, "blocked" if s["paused"] else "ready", color),
                     "-" if s["cursor"] is None else str(s["cursor"]), "-" if s["lag"] is None else str(s["lag"]),
                     "all" if s["all"] else "subscribed", (s.get("last_error") or "").split("\n")[0][:60]])
    out = table(rows, ["sink", "type", "state", "cursor", "lag", "delivers", "last error"]) if rows \
        else "no sinks configured (see docs/notifications.md)"
    subs = [[s["id"], s["sink"], fmt_sub_target(s), ",".join(s["kinds"]) if s["kinds"] else "(sink's kinds)",
             (s.get("task_title") or "")[:40]] for s in r["subscriptions"]]
    out += "\n\n" + (table(subs, ["subscription", "sink", "target", "kinds", "task"]) if subs
                      else "no subscriptions")
    return out


def fmt_subscribed(r: dict, color: bool) -> str:
    kinds = ",".join(r["kinds"]) if r["kinds"] else "the sink's kinds"
    verb = "subscribed" if r.get("created", True) else "already subscribed"
    return f"{verb} {r['id']}: {r['sink']} <- {fmt_sub_target(r)} ({kinds})"


FORMATTERS = {
    "notify list": fmt_notify_list, "notify subscribe": fmt_subscribed,
    "notify unsubscribe": lambda r, c: "removed " + ", ".join(r["removed"]),
    "notify resume": lambda r, c: f"resumed {r['name']}" + ("" if r.get("was_paused") else " (it was not paused)")
                                  + f"; {r['lag']} events behind the end of the log",
    "list": fmt_list, "ls": fmt_list, "show": fmt_show, "stats": fmt_stats, "status": fmt_status,
    "runs": fmt_runs, "plan": fmt_plan, "dispatch": fmt_dispatch, "complete": fmt_tasks, "block": fmt_tasks,
    "unblock": fmt_tasks, "archive": fmt_tasks,
    "create": lambda r, c: r["id"] if not sys.stdout.isatty() else f"{'created' if r['created'] else 'exists'} "
                                                                     f"{r['id']} ({r['status']})",
    "log": lambda r, c: r["text"].rstrip("\n") if r["exists"] else f"no log yet at {r['path']}",
    "events": lambda r, c: "\n".join(fmt_event(e) for e in r["events"]) or "no events",
    "link": lambda r, c: f"{r['parent']} -> {r['child']} (child is {r['child_status']})",
    "unlink": lambda r, c: f"unlinked {r['parent']} -> {r['child']} (child is {r['child_status']})",
    "web": lambda r, c: r["url"],
    "heartbeat": lambda r, c: f"claim on {r['task']} extended until {time.strftime('%H:%M:%S', time.localtime(r['claim_expires']))}",
}
