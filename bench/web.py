"""web: the web board in Debian's Chromium: first render of a 10k-task board, and live latency.

Render. A board of ``--tasks`` (10,000) open tasks is built in bulk before the
daemon starts. Subject: navigation to the board page -> every column rendered
(the page marks ``body[data-rendered]`` once the last column is in the DOM)
-> the next frame. Baseline, same run, same server: a static HTML page with
the same 10,000 cards (same markup and stylesheet as the app renders),
served by the same web role (its static files), navigation -> document parsed
-> the next frame. Both are timed in the page (``performance.now()`` since
navigation start), alternately (ABBA). Target: ratio <= 2.

Live latency. With the board page open (and subscribed to the event stream)
and ``kanban watch --json`` running, ``kanban create`` is run ``--creates``
(100) times per rep, one after the other. For each create, t0 is this
process's wall clock right before starting ``kanban create``; the page's time
is the ``Date.now()`` at which a MutationObserver saw the new card; watch's
is the moment this process read the event's line from its stdout. The rows
give p50 and p99 per rep, page vs watch on the same events. Target: p50 ratio <= 3.

Chromium: ``/usr/bin/chromium`` (``make browser``), driven by Playwright.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

OPEN = (("ready", 0.30), ("todo", 0.25), ("blocked", 0.15), ("triage", 0.15), ("review", 0.10), ("scheduled", 0.05))
COLUMNS = ("triage", "todo", "ready", "scheduled", "running", "review", "blocked", "done")

TIMED = """async (kind) => {
  const ready = kind === "app" ? () => document.body && document.body.dataset.rendered
                               : () => document.readyState !== "loading";
  while (!ready()) await new Promise((r) => setTimeout(r, 2));
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r)));
  return performance.now();
}"""

WATCH_CARDS = """() => {
  window.__seen = {};
  new MutationObserver((muts) => {
    const now = Date.now();
    for (const m of muts) for (const n of m.addedNodes) {
      if (n.classList && n.classList.contains("card")) {
        const t = n.querySelector(".title").textContent;
        if (t.startsWith("live ") && !(t in window.__seen)) window.__seen[t] = now;
      }
    }
  }).observe(document.getElementById("board"), { childList: true, subtree: true });
}"""


def build_open_board(path: str, n: int) -> None:
    """``n`` open tasks in the kernel's schema, in bulk (one transaction), each with its ``created`` event."""
    from daemon.board import db as boarddb
    conn = boarddb.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    statuses = [s for s, w in OPEN for _ in range(int(w * 100))]
    rows, evs = [], []
    for i in range(n):
        status = statuses[(i * 37) % len(statuses)]
        created = now - 86400 * 3 + i * (86400 * 3 / max(1, n))
        rows.append((common.task_id(i), f"task {i}: do the thing number {i}", "body text " * (i % 5),
                     common.ASSIGNEES[i % len(common.ASSIGNEES)], status, i % 4, "acme" if i % 3 else None, "bench",
                     created, created + 60, created if status == "ready" else None,
                     "waiting on a key" if status == "blocked" else None, "scratch"))
        evs.append((common.task_id(i), "created", '{"status":"%s"}' % status, created))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO tasks (id, title, body, assignee, status, priority, tenant, created_by, created_at, "
                     "updated_at, ready_at, block_reason, workspace_kind) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO events (task_id, kind, payload, at) VALUES (?,?,?,?)", evs)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def static_page(tasks: list[dict]) -> str:
    """The same cards as the app renders (classes, structure, order), as one static document."""
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    now = time.time()
    for t in sorted(tasks, key=lambda t: (-t["priority"], t["created_at"], t["id"])):
        badges = (f'<span class="badge pri">P{t["priority"]}</span>' if t["priority"] else "") + \
                 (f'<span class="badge tenant">{esc(t["tenant"])}</span>' if t["tenant"] else "")
        why = f'<div class="why">{esc(t["block_reason"])}</div>' if t["block_reason"] else ""
        cols[t["status"]].append(
            f'<div class="card" draggable="true" tabindex="0" data-id="{t["id"]}" data-status="{t["status"]}">'
            f'<div class="head"><input type="checkbox" class="sel"><span class="tid">{t["id"]}</span></div>'
            f'<div class="title">{esc(t["title"])}</div><div class="badges">{badges}</div>'
            f'<div class="foot"><span class="assignee">{esc(t["assignee"] or "unassigned")}</span>'
            f'<span class="age">{int((now - t["updated_at"]) // 3600)}h</span></div>{why}</div>')
    heads = "".join(f'<div class="colhead s-{c}"><span>{c}</span><span class="count">{len(cols[c])}</span></div>'
                    for c in COLUMNS)
    cells = "".join(f'<div class="cell s-{c}" data-status="{c}">{"".join(cols[c])}</div>' for c in COLUMNS)
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>static</title>'
            '<link rel="stylesheet" href="/static/style.css"></head><body><header id="top"><h1>kanban</h1></header>'
            f'<main id="board"><div class="grid" id="grid">{heads}{cells}</div></main></body></html>')


def main(argv: list[str] | None = None) -> int:
    p = common.parser("web", __doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, help="open tasks on the board (default 10000; quick 50)")
    p.add_argument("--creates", type=int, help="creates per live-latency rep (default 100; quick 5)")
    args = p.parse_args(argv)
    n = common.reps(args)
    ntasks = common.pick(args, "tasks", 10000, 50)
    creates = common.pick(args, "creates", 100, 5)
    from playwright.sync_api import sync_playwright

    from daemon.web.app import STATIC
    from tests import webtools
    d = common.new_daemon(board=lambda path: build_open_board(path, ntasks))
    static = STATIC / f"bench-{os.getpid()}.html"
    watch = None
    try:
        url = webtools.board_url(d)
        hostport, _ = webtools.split(url)
        tasks = d.rpc("task.list", {})["tasks"]
        static.write_text(static_page(tasks))
        with sync_playwright() as pw:
            browser = webtools.launch(pw)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(url)  # sets the cookie
            page.wait_for_selector("body[data-rendered]")
            cards = page.locator(".card").count()
            common.log(args, f"board page shows {cards} cards")

            def timed(kind: str, path: str) -> float:
                page.goto("about:blank")
                page.goto(f"http://{hostport}{path}", wait_until="commit")
                return page.evaluate(TIMED, kind)

            static_ms, app_ms = common.interleave(n, lambda i: timed("static", f"/static/{static.name}"),
                                                  lambda i: timed("app", "/"), args, "render")
            assert page.locator(".card").count() == cards == ntasks, "the page did not show every card"
            # ---- live latency ----
            page.goto(f"http://{hostport}/")
            page.wait_for_selector("body[data-rendered]")
            page.evaluate(WATCH_CARDS)
            seen_watch: dict[str, float] = {}
            watch = subprocess.Popen([common.KANBAN, "watch", "--json", "--kinds", "created"], stdout=subprocess.PIPE,
                                     env=d.env(), text=True)

            def read_watch() -> None:
                for line in watch.stdout:
                    ev = json.loads(line)
                    seen_watch.setdefault(ev["payload"].get("title") or "", time.time())

            threading.Thread(target=read_watch, daemon=True).start()
            time.sleep(0.5)  # benchmark pacing: let watch subscribe before the first create
            web_p50, web_p99, watch_p50, watch_p99 = [], [], [], []
            for rep in range(n):
                lat_web, lat_watch = [], []
                for k in range(creates):
                    title = f"live {rep}-{k}"
                    t0 = time.time()
                    subprocess.run([common.KANBAN, "create", title], env=d.env(), check=True,
                                   stdout=subprocess.DEVNULL)
                    deadline = time.monotonic() + 30
                    while True:
                        page_t = page.evaluate("(t) => window.__seen[t] || 0", title)
                        if page_t and title in seen_watch:
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{title} not seen (page {page_t}, watch {title in seen_watch})")
                        time.sleep(0.002)
                    lat_web.append(page_t - t0 * 1000)
                    lat_watch.append((seen_watch[title] - t0) * 1000)
                web_p50.append(common.percentile(lat_web, 50))
                web_p99.append(common.percentile(lat_web, 99))
                watch_p50.append(common.percentile(lat_watch, 50))
                watch_p99.append(common.percentile(lat_watch, 99))
                common.log(args, f"live rep {rep + 1}/{n}: page p50 {web_p50[-1]:.1f} ms p99 {web_p99[-1]:.1f} ms; "
                                 f"watch p50 {watch_p50[-1]:.1f} ms p99 {watch_p99[-1]:.1f} ms")
            browser.close()
    finally:
        if watch is not None:
            watch.terminate()
            watch.wait(10)
        static.unlink(missing_ok=True)
        common.finish(d)
    rows = [
        common.row(f"first render, {ntasks} open tasks", "ms", app_ms, static_ms,
                   f"static HTML page with the same {ntasks} cards, same server",
                   common.Target("ratio_max", 2.0, "<= 2x")),
        common.row(f"live latency p50 over {creates} creates", "ms", web_p50, watch_p50,
                   "kanban watch --json seeing the same created events", common.Target("ratio_max", 3.0, "<= 3x")),
        common.row(f"live latency p99 over {creates} creates", "ms", web_p99, watch_p99,
                   "kanban watch --json seeing the same created events"),
    ]
    common.report(args, "web", {"reps": n, "tasks": ntasks, "creates": creates}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
