"""Human output for the ``kanban`` CLI: aligned tables, readable task pages, colour.

Runs in: the ``kanban`` CLI. Stdlib only. Colour only on a TTY and never with
``NO_COLOR``; ``--json`` bypasses all of this.

Text from tasks (titles, bodies, comments, reasons, summaries, errors, names) is
data: :func:`scrub` escapes every control character in it before a formatter
sees it, so an ESC sequence or a newline in a title prints as ``\x1b`` or
``\n`` and can neither drive the terminal nor forge a line of output. Fields
that are multi-line by nature (``MULTILINE_KEYS``) keep their newlines and tabs.
``kanban log`` prints the worker's log exactly when stdout is not a terminal
(it is the user's own data, and often piped to a file); on a terminal it escapes
the same control characters, newlines and tabs excepted.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _escapes(keep: str) -> dict[int, str]:
    """``str.translate`` table: C0 controls, DEL, C1 controls and the bidi overrides -> visible escapes."""
    codes = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F),
             *range(0x2066, 0x206A)]
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    table = {c: named.get(c) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in codes}
    for ch in keep:
        table.pop(ord(ch))
    return table


_ONE_LINE = _escapes("")
_MULTI_LINE = _escapes("\n\t")
#: Fields whose text may span lines; everything else is shown on one line.
MULTILINE_KEYS = frozenset({"body", "error", "last_error", "log_tail", "text"})


def escape(text: str, multiline: bool = False) -> str:
    """``text`` with control characters shown as escapes (newlines and tabs kept if ``multiline``)."""
    if text.isprintable():  # the common case, checked in C
        return text
    return text.translate(_MULTI_LINE if multiline else _ONE_LINE)


def scrub(obj: object, key: str | None = None) -> object:
    """A copy of a result with every string escaped for a terminal (see the module docstring)."""
    if isinstance(obj, str):
        return escape(obj, key in MULTILINE_KEYS)
    if isinstance(obj, dict):
        return {k: scrub(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, key) for v in obj]
    return obj


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


def until(ts: float | None) -> str:
    """A due time relative to now: ``in 3h``, ``in 45m``, ``in 12s``; ``5m ago`` once past."""
    if not ts:
        return "-"
    d = ts - time.time()
    a = abs(d)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if a >= n:
            text = f"{a / n:.0f}{unit}"
            break
    else:
        text = f"{a:.0f}s"
    return f"in {text}" if d >= 0 else f"{text} ago"


def local(ts: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM`` (what a human typed for ``--at``)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


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


LIST_HEADER = ["id", "status", "pri", "assignee", "updated", "title"]


def list_rows(tasks: list[dict], color: bool) -> list[list[str]]:
    return [[t["id"], paint(t["status"], t["status"], color), str(t["priority"]), t["assignee"] or "-",
             ago(t["updated_at"]), t["title"]] for t in tasks]


def fmt_list(r: dict, color: bool) -> str:
    rows = list_rows(r["tasks"], color)
    if not rows:
        return "no tasks"
    out = table(rows, LIST_HEADER)
    if r["total"] > len(rows):
        out += f"\n({len(rows)} of {r['total']} shown)"
    return out


class PagedList:
    """``kanban list --all``: the task table printed page by page as the pages arrive.

    Column widths come from the header and the first page; a longer cell on a later page
    pushes its line's later columns right instead of holding the whole output back.
    """

    def __init__(self, color: bool) -> None:
        self.color = color
        self.widths: list[int] | None = None
        self.count = 0

    def page(self, tasks: list[dict]) -> str:
        """The lines for one page (the header first, with the first page), or ``""``."""
        rows = list_rows(tasks, self.color)
        self.count += len(rows)
        if not rows:
            return ""
        lines = []
        if self.widths is None:
            self.widths = [max(len(strip_ansi(r[i])) for r in [LIST_HEADER, *rows])
                           for i in range(len(LIST_HEADER))]
            lines.append("  ".join(h.upper().ljust(w) for h, w in zip(LIST_HEADER, self.widths)).rstrip())
        for r in rows:
            lines.append("  ".join(c + " " * (w - len(strip_ansi(c))) for c, w in zip(r, self.widths)).rstrip())
        return "\n".join(lines)

    def end(self) -> str:
        return "" if self.count else "no tasks"


def run_state(x: dict) -> str:
    """A run's outcome once it ended; before that its state (a completed run may still be verifying)."""
    if x.get("state") == "verifying" or not x.get("outcome"):
        return x["state"]
    return x["outcome"] + (f" ({x['kind']})" if x.get("kind") == "review" else "")


def fmt_show(r: dict, color: bool) -> str:
    t = r["task"]
    lines = [f"{t['id']}  {paint(t['status'], t['status'], color)}  {t['title']}"]
    for key in ("assignee", "priority", "tenant", "created_by", "summary", "result", "block_reason"):
        if t.get(key) not in (None, ""):
            lines.append(f"  {key + ':':<14}{t[key]}")
    ws = t["workspace"]
    lines.append(f"  {'workspace:':<14}{ws['kind']}{' ' + ws['path'] if ws['path'] else ''}"
                 + (f"  repo {ws['repo']}" if ws.get("repo") else "") + (f"  branch {ws['branch']}" if ws.get("branch")
                                                                       else ""))
    if t.get("due_at"):
        lines.append(f"  {'due:':<14}{until(t['due_at'])} ({local(t['due_at'])})")
    if t.get("parent_reopened"):
        what = "its run started" if t["status"] == "running" else "it used its result"
        lines.append(f"  {'FLAGGED:':<14}parent {t['parent_reopened']} was reopened after {what} "
                     f"(kanban reopen {t['id']} -r … to redo it)")
    lines.append(f"  {'created:':<14}{ago(t['created_at'])} ago   failures: {t['consecutive_failures']}")
    if t.get("verify_command") is not None:
        cmd = " ".join(t["verify_command"]) or "(none: the profile's is off)"
        lines.append(f"  {'verify:':<14}{cmd}" + (f"   turns: {t['verify_turns']}" if t.get("verify_turns") else ""))
    if t.get("verify_rejections"):
        lines.append(f"  {'rejected:':<14}{t['verify_rejections']} run(s) in a row by verification")
    if t.get("review") is not None:
        lines.append(f"  {'review:':<14}{'required' if t['review'] else 'not required'}")
    if t["body"]:
        lines += ["", *("  " + line for line in t["body"].splitlines())]
    for label, key in (("parents", "parents"), ("children", "children")):
        if r[key]:
            lines += ["", f"{label}:"] + [f"  {x['id']}  {paint(x['status'].ljust(8), x['status'], color)} {x['title']}"
                                          for x in r[key]]
    if r["runs"]:
        now = time.time()
        lines += ["", "runs:"] + [f"  {x['id']}  {run_state(x):<18} exit {exit_text(x):<7} "
                                  f"{elapsed(x, now)}  {x['summary'] or ''}".rstrip() for x in r["runs"]]
    if r["comments"]:
        lines += ["", "comments:"] + [f"  [{ago(c['created_at'])} ago] {c['author'] or '?'}: "
                                      + c["body"].rstrip("\n").replace("\n", "\n      ") for c in r["comments"]]
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
    lane = r.get("review") or {}
    if lane.get("waiting") or lane.get("reviewing"):
        out += f"\n\nreview lane: {lane['waiting']} waiting for a reviewer, {lane['reviewing']} being reviewed"
    out += f"\n\ntotal {r['total']}; oldest ready task waiting {dur(age) if age is not None else '-'}"
    return out


def clock_ago(ts: float | None) -> str:
    """``HH:MM:SS (3m ago)`` in local time, or ``-``."""
    if not ts:
        return "-"
    return f"{time.strftime('%H:%M:%S', time.localtime(ts))} ({ago(ts)} ago)"


def runs_n(n: int) -> str:
    return f"{n} live run" + ("" if n == 1 else "s")


def fmt_controls(c: dict | None, profiles_too: bool = True) -> list[str]:
    """Lines for the operator controls (``kanban pause/resume/parallel``) of a ``controls`` object."""
    if not c:
        return []
    lines = ["dispatch  " + (f"PAUSED since {clock_ago(c['paused_at'])}; `kanban resume` starts new runs again"
                             if c["paused"] else "running")]
    cap = f"at most {runs_n(c['max_in_progress'])}"
    lines.append("parallel  " + cap + (f" (set by kanban parallel; the config says {c['config_max_in_progress']})"
                                       if c["overridden"] else ""))
    if profiles_too:
        for name, pc in sorted(c["profiles"].items()):
            if not (pc["paused"] or pc["overridden"]):
                continue
            bits = [f"paused since {clock_ago(pc['paused_at'])}"] if pc["paused"] else []
            if pc["overridden"]:
                conf = pc["config_max_in_progress"]
                bits.append(f"at most {runs_n(pc['max_in_progress'])} (set by kanban parallel; the config says "
                            f"{conf if conf is not None else 'no cap'})")
            if not pc.get("configured", True):
                bits.append("not in the config any more")
            lines.append(f"  profile {name}: " + "; ".join(bits))
    return lines


def fmt_reload_line(rl: dict | None) -> str | None:
    if not rl:
        return None
    if rl["result"] == "applied":
        return f"reload    applied {clock_ago(rl['at'])} from {rl['file']}"
    return f"reload    REFUSED {clock_ago(rl['at'])}: {rl['error']} (the previous config stays in force)"


def fmt_status(r: dict, color: bool) -> str:
    s = r["summary"]
    board = r["board"] + (f"  (board {r['board_name']})" if r.get("board_name") else "")
    lines = [f"kanband {r['version']}  pid {r['pid']}  up {dur(r['uptime'])}",
             f"board   {board}", f"socket  {r['socket']}", f"config  {r['config'] or '(defaults)'}", ""]
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
    if r.get("board_error"):
        lines.append(f"BOARD DAMAGED: {r['board_error']}")
    lines += fmt_controls(r.get("controls"))
    reload_line = fmt_reload_line(r.get("reload"))
    if reload_line:
        lines.append(reload_line)
    lines += ["", ", ".join(f"{n} {k}" for k, n in s.items() if n) or "board is empty"]
    return "\n".join(lines)


#: Signal names without importing ``signal`` (and ``enum``) for one column.
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL",
           10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU",
           25: "SIGXFSZ"}
#: Lines of a failed run's error (the end of its log) that ``kanban runs`` shows under it.
ERROR_TAIL_LINES = 5


def exit_text(run: dict) -> str:
    """``0``, ``1``, ``SIGKILL``, or ``-`` when the run has not ended (never ``None``)."""
    if run.get("exit_code") is not None:
        return str(run["exit_code"])
    if run.get("signal"):
        return SIGNALS.get(run["signal"], f"signal {run['signal']}")
    return "-"


def clock(ts: float | None, now: float | None = None) -> str:
    """``14:03:07`` for today, ``01-31 14:03`` for another day, ``-`` for none."""
    if not ts:
        return "-"
    lt = time.localtime(ts)
    if time.strftime("%Y%m%d", lt) == time.strftime("%Y%m%d", time.localtime(now or time.time())):
        return time.strftime("%H:%M:%S", lt)
    return time.strftime("%m-%d %H:%M", lt)


def elapsed(run: dict, now: float) -> str:
    """How long the run took, or for a run that has not ended, how long it has run so far (``live``)."""
    start = run.get("started_at") or run.get("claimed_at")
    if run.get("ended_at") and start:
        return dur(max(0.0, run["ended_at"] - start))
    if run.get("state") != "ended" and start:
        return f"{dur(max(0.0, now - start))} live"
    return "-"


def error_tail(run: dict) -> list[str]:
    """The last lines of a run's error (its reason, then the end of its log), separator lines left out."""
    lines = [ln for ln in (run.get("error") or "").rstrip("\n").split("\n") if ln.strip()]
    if not lines:
        return []
    head, tail = lines[0], [ln for ln in lines[1:] if not ln.startswith("===== run ")]
    out = [] if head.startswith(("exit code ", "killed by ")) else [head]
    return out + tail[-ERROR_TAIL_LINES:]


def fmt_reload(r: dict, color: bool) -> str:
    if r["result"] == "applied":
        return f"config reloaded from {r['file']}"
    return f"config reload refused: {r['error']} (the previous config stays in force)"


def fmt_init(r: dict, color: bool) -> str:
    """``kanban init``: where things live, the profiles found, and what to do next."""
    lines = [f"board   {r['board']}", f"socket  {r['socket']}", f"config  {r['config'] or '(none: defaults)'}"]
    profiles = r.get("profiles") or []
    if profiles:
        lines.append("profiles " + ", ".join(profiles))
        lines += ["", "next: file a task for one of them, and watch it run:",
                  f"  kanban create 'my first task' -a {profiles[0]}", "  kanban watch"]
    else:
        where = r["config"] or "~/.config/kanban/config.yaml"
        lines += ["profiles (none)", "", f"next: add a profile to {where} (see examples/config.yaml), then "
                  "`kanban reload`"]
    if not r.get("under_systemd"):
        lines += ["", "to keep kanband running after you log out: kanband service install"]
    return "\n".join(lines)


def fmt_runs(r: dict, color: bool) -> str:
    now = time.time()
    rows, notes = [], []
    for x in r["runs"]:
        start = x.get("started_at") or x.get("claimed_at")
        rows.append([x["id"], clock(start, now), clock(x.get("ended_at"), now), elapsed(x, now),
                     run_state(x), exit_text(x), x.get("summary") or ""])
        notes.append(error_tail(x))
    if not rows:
        return "no runs"
    lines = table(rows, ["run", "started", "ended", "elapsed", "outcome", "exit", "summary"]).split("\n")
    out = lines[:1]
    for line, note in zip(lines[1:], notes):
        out.append(line)
        out += ["    | " + n for n in note]
    return "\n".join(out)


def fmt_plan(r: dict, color: bool) -> str:
    rows = [[x["task"], x["decision"], x["assignee"] or "-", x["reason"]] for x in r["plan"]]
    out = table(rows, ["task", "decision", "assignee", "reason"]) if rows else "no ready tasks"
    c = r.get("controls")
    if c and (c["paused"] or c["overridden"] or any(p["paused"] or p["overridden"] for p in c["profiles"].values())):
        out = "\n".join(fmt_controls(c)) + "\n\n" + out
    for x in r.get("exiting") or []:
        out += f"\nrun {x['run']} of {x['task']} is still exiting ({x['reason']}): its slot is taken until no " \
               "process of it is alive"
    if not r.get("reaper_attached", True):
        out += "\nnote: the reaper is not attached; nothing starts until it is"
    if r.get("scheduled"):
        rows = [[x["task"], until(x["due_at"]), local(x["due_at"]), x["assignee"] or "-", x["title"]]
                for x in r["scheduled"]]
        out += "\n\nscheduled (kanban promote ID starts one now):\n" + table(rows, ["task", "due", "at", "assignee",
                                                                                  "title"])
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


def fmt_log(r: dict, tty: bool) -> str:
    """The worker log: exact when piped; on a terminal, control characters escaped (not newline, tab)."""
    if r.get("missing"):
        return f"run {escape(r['run'])} is not in the log (rotated away, or it never started)"
    if not r["exists"]:
        return f"no log yet at {escape(r['path'])}"
    text = r["text"].rstrip("\n")
    return escape(text, multiline=True) if tty else text


def fmt_tasks(r: dict, color: bool) -> str:
    lines = [fmt_task_line(t) for t in r["tasks"]]
    if r.get("verifying"):
        lines.append("verifying: " + ", ".join(r["verifying"]) + " (done once the verify command passes)")
    if r.get("promoted"):
        lines.append("promoted: " + ", ".join(r["promoted"]))
    return "\n".join(lines)


def fmt_reopen(r: dict, color: bool) -> str:
    """``kanban reopen`` and ``kanban retry``: the tasks, then what happened to their dependents."""
    lines = [fmt_task_line(t) for t in r["tasks"]]
    for key, label in (("reopened", "also reopened (--cascade)"),
                       ("reparked", "waits again for its parent (back to todo)"),
                       ("running", "still running, not killed (flagged; `kanban kill ID` stops it)"),
                       ("flagged", "done, flagged: built on a reopened result")):
        if r.get(key):
            lines.append(f"{label}: {', '.join(r[key])}")
    return "\n".join(lines)


def fmt_assignees(r: dict, color: bool) -> str:
    rows = []
    for a in r["assignees"]:
        cap = "-" if a["max_in_progress"] is None else str(a["max_in_progress"])
        ready = str(a["ready"]) + (f"+{a['ready_unassigned']}" if a.get("ready_unassigned") else "")
        cool = f"{until(a['cooldown_until'])}" if a.get("cooldown_until") else "-"
        last = f"{a['last_outcome']} {ago(a['last_ended_at'])} ago" if a.get("last_outcome") else "-"
        cmd = " ".join(a["command"]) if a["command"] else "(no profile: its tasks are skipped)"
        rows.append([a["name"], f"{a['running']}/{cap}", ready, cool, last, cmd[:60]])
    if not rows:
        return "no profiles configured (see docs/config.md)"
    out = table(rows, ["assignee", "running/cap", "ready", "cooldown", "last outcome", "command"])
    out += f"\n\n{r['running_total']} live runs of {r['max_in_progress']} allowed"
    if r.get("default_assignee"):
        out += f"; unassigned ready tasks go to {r['default_assignee']} (the +N)"
    return out


def fmt_context(r: dict, color: bool) -> str:
    from client.context import render_markdown
    return render_markdown(r).rstrip("\n")


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


def human_size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``25.0 MiB``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} TiB"


def fmt_attach(r: dict, color: bool) -> str:
    return "\n".join(f"attached {a['name']} to {a['task']} ({human_size(a['size'])}, sha256 {a['sha256'][:12]})"
                     for a in r["attachments"])


def fmt_attachments(r: dict, color: bool) -> str:
    rows = [[a["name"], human_size(a["size"]), a["sha256"][:12], ago(a["created_at"]) + " ago",
             a["created_by"] + (f" {a['run']}" if a.get("run") else "")] for a in r["attachments"]]
    if not rows:
        return f"{r['task']} has no attachments"
    return table(rows, ["name", "size", "sha256", "added", "by"]) + \
        f"\n\n{len(rows)} attachment{'s' if len(rows) != 1 else ''}, {human_size(r['total'])}"


def span(sec: float) -> str:
    """A retention as people say it: ``30d``, ``12h``, ``90m``, ``0s``."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= n and sec % n == 0:
            return f"{sec / n:g}{unit}"
    return f"{sec:g}s"


def fmt_gc(r: dict, color: bool) -> str:
    dry = r["dry_run"]
    if r["older_than"] is None:
        lines = ["archived tasks' files: kept (retention.archived is 0; pass --older-than)"]
    else:
        lines = [f"{'would collect' if dry else 'collected'} {r['tasks']} task{'s' if r['tasks'] != 1 else ''} "
                 f"archived more than {span(r['older_than'])} ago"]
    labels = {"logs": "logs", "run_files": "run files", "attachments": "attachments", "workspaces": "workspaces"}
    rows = [[labels[k], str(v["count"]), human_size(v["bytes"])] for k, v in r["freed"].items()]
    lines.append(table(rows, ["what", "count", "bytes"]))
    b = r["branches"]
    if b["deleted"] or b["kept"]:
        lines.append(f"branches: {'would delete' if dry else 'deleted'} {len(b['deleted'])}"
                     + (f" ({', '.join(b['deleted'])})" if b["deleted"] else "")
                     + (f"; kept {len(b['kept'])} not merged or in use" if b["kept"] else ""))
    if r["events_older_than"] is None:
        lines.append("events: kept (retention.events is 0)")
    else:
        lines.append(f"events: {'would prune' if dry else 'pruned'} {r['events']['pruned']} of archived tasks, "
                     f"older than {span(r['events_older_than'])}")
    v = r["vacuum"]
    if v["done"]:
        lines.append(f"vacuum: freed {human_size(v['bytes'])} in {v['seconds']:.2f}s")
    elif v["worthwhile"]:
        lines.append(f"vacuum: would free about {human_size(v['bytes'])}")
    else:
        lines.append("vacuum: not needed")
    lines += [f"kept {k['what']} of {k['task']}: {k['why']}" + (f" ({k['path']})" if k.get("path") else "")
              for k in r["kept"]]
    lines += [f"error: {e}" for e in r["errors"]]
    lines.append(f"{'would free' if dry else 'freed'} {human_size(r['bytes'])}")
    return "\n".join(lines)


FORMATTERS = {
    "notify list": fmt_notify_list, "notify subscribe": fmt_subscribed,
    "notify unsubscribe": lambda r, c: "removed " + ", ".join(r["removed"]),
    "notify resume": lambda r, c: f"resumed {r['name']}" + ("" if r.get("was_paused") else " (it was not paused)")
                                  + f"; {r['lag']} events behind the end of the log",
    "pause": lambda r, c: "\n".join(fmt_controls(r)), "resume": lambda r, c: "\n".join(fmt_controls(r)),
    "parallel": lambda r, c: "\n".join(fmt_controls(r)), "reload": fmt_reload, "init": fmt_init,
    "list": fmt_list, "ls": fmt_list, "show": fmt_show, "stats": fmt_stats, "status": fmt_status,
    "runs": fmt_runs, "plan": fmt_plan, "dispatch": fmt_dispatch, "complete": fmt_tasks, "block": fmt_tasks,
    "unblock": fmt_tasks, "archive": fmt_tasks, "reopen": fmt_reopen, "retry": fmt_reopen, "kill": fmt_tasks,
    "assignees": fmt_assignees, "context": fmt_context,
    "schedule": lambda r, c: f"{r['id']} scheduled, due {until(r['due_at'])} ({local(r['due_at'])})",
    "approve": fmt_tasks, "request-changes": fmt_tasks,
    "create": lambda r, c: r["id"] if not sys.stdout.isatty() else f"{'created' if r['created'] else 'exists'} "
                                                                     f"{r['id']} ({r['status']}"
                                                                     + (f", due {until(r['due_at'])}"
                                                                        if r.get("due_at") else "") + ")",
    "log": lambda r, c: fmt_log(r, sys.stdout.isatty()),
    "events": lambda r, c: "\n".join(fmt_event(e) for e in r["events"]) or "no events",
    "link": lambda r, c: f"{r['parent']} -> {r['child']} (child is {r['child_status']})",
    "unlink": lambda r, c: f"unlinked {r['parent']} -> {r['child']} (child is {r['child_status']})",
    "attach": fmt_attach, "attachments": fmt_attachments, "gc": fmt_gc,
    "detach": lambda r, c: f"detached {r['name']} from {r['task']} ({human_size(r['size'])})",
    "web": lambda r, c: r["url"],
    "heartbeat": lambda r, c: f"claim on {r['task']} extended until {time.strftime('%H:%M:%S', time.localtime(r['claim_expires']))}",
}
