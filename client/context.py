"""Render a task's context (``task.context``) as Markdown for a worker's prompt.

Runs in: the ``kanban`` CLI (``kanban context``), and any other client that
gives a worker its context (an MCP server). Stdlib only.

The input is the ``task.context`` result (see :func:`daemon.board.context.build`).
Empty sections are left out; times are absolute (local time with its offset),
because a prompt is read later than it is written.
"""

from __future__ import annotations

import json
import time


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))


def _fence(text: str, lang: str = "") -> list[str]:
    """A fenced block that survives backticks inside ``text``."""
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return [ticks + lang, text.rstrip("\n"), ticks]


def _run_line(r: dict) -> str:
    outcome = r.get("outcome") or "unfinished"
    if r.get("signal"):
        how = f"signal {r['signal']}"
    elif r.get("exit_code") is not None:
        how = f"exit {r['exit_code']}"
    else:
        how = ""
    dur = ""
    if r.get("started_at") and r.get("ended_at"):
        dur = f", {r['ended_at'] - r['started_at']:.0f}s"
    head = f"- `{r['id']}` ({r.get('profile') or '-'}): **{outcome}**" + (f" ({how}{dur})" if how or dur else "")
    if r.get("summary"):
        head += f": {r['summary']}"
    return head


def render_markdown(ctx: dict) -> str:
    """The context as Markdown.

    Args:
        ctx: A ``task.context`` result: ``{task, body, attachments, parents, runs, current_run, comments,
            history}``.

    Returns:
        Markdown text ending with a newline.
    """
    t = ctx["task"]
    out = [f"# Task {t['id']}: {t['title']}", ""]
    facts = [f"status: {t['status']}", f"assignee: {t.get('assignee') or '-'}", f"priority: {t.get('priority', 0)}"]
    if ctx.get("current_run"):
        facts.append(f"run: {ctx['current_run']} (attempt {len(ctx.get('runs') or []) + 1})")
    out += ["- " + " · ".join(facts)]
    if t.get("parent_reopened"):
        out.append(f"- note: parent {t['parent_reopened']} was reopened after this task used its result")
    out.append("")
    if ctx.get("body"):
        out += ["## Description", "", ctx["body"].rstrip("\n"), ""]
    if ctx.get("attachments"):
        out += ["## Attachments", ""]
        for a in ctx["attachments"]:
            size = f" ({a['size']} bytes)" if a.get("size") is not None else ""
            out.append(f"- `{a['name']}`{size}" + (f": {a['path']}" if a.get("path") else ""))
        out.append("")
    if ctx.get("parents"):
        out += ["## Parent tasks", ""]
        for p in ctx["parents"]:
            out += [f"### {p['id']}: {p['title']} ({p['status']})", ""]
            if p.get("summary"):
                out += [f"Summary: {p['summary']}", ""]
            if p.get("result"):
                out += ["Result:", "", *_fence(p["result"]), ""]
            if p.get("metadata") is not None:
                out += ["Metadata:", "", *_fence(json.dumps(p["metadata"], indent=2, sort_keys=True), "json"), ""]
            if not (p.get("summary") or p.get("result") or p.get("metadata") is not None):
                out += ["(no result recorded)", ""]
    if ctx.get("history"):
        out += ["## Sent back", ""]
        for h in ctx["history"]:
            if h["kind"] == "parent_reopened":
                line = f"- {_when(h['at'])}: parent {h.get('parent')} was reopened ({h.get('action')})"
            else:
                verb = "reopened" if h["kind"] == "reopened" else "retried"
                line = f"- {_when(h['at'])}: {verb}" + (f": {h['reason']}" if h.get("reason") else "")
                if h.get("previous_summary"):
                    line += f" (previous summary: {h['previous_summary']})"
            out.append(line)
        out.append("")
    if ctx.get("runs"):
        out += ["## Earlier runs", ""]
        for r in ctx["runs"]:
            out.append(_run_line(r))
            if r.get("error_tail"):
                out += ["", *("  " + line for line in _fence(r["error_tail"]))]
        out.append("")
    if ctx.get("comments"):
        out += ["## Comments", ""]
        for c in ctx["comments"]:
            body = c["body"].rstrip("\n")
            first, _, rest = body.partition("\n")
            out.append(f"- **{c.get('author') or '?'}** ({_when(c['created_at'])}): {first}")
            out += ["  " + line for line in rest.splitlines()]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
