"""The web board in a real browser (issue 14): Debian's Chromium driven by Playwright, against
the real daemon with its real web role, real workers, and the real ``kanban`` CLI.

One browser per module; a fresh daemon and browser context per test. The tests wait on
what the page shows (Playwright's auto-waiting locators, ``wait_for``), never on sleeps.
Screenshots go to ``.artifacts/screenshots/`` (``docs/img/`` has copies for the README).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.harness import wait_for, write_script
from tests.webtools import CHROMIUM, WEB_ON, board_url, launch, shot

TIMEOUT = 10_000  # ms, for the page's auto-waiting assertions


@pytest.fixture(scope="module")
def browser():
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: `make browser` installs it (apt-get install chromium)"
    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda dlg: (errors.append(f"native dialog: {dlg.message}"), dlg.dismiss()))
    pg.errors = errors
    yield pg
    ctx.close()
    assert not errors, f"errors in the page: {errors}"


def gated_worker(d, name: str = "w") -> Path:
    """A profile whose worker prints a line, waits for ``<tmp>/go-<task>``, prints another and completes."""
    script = write_script(os.path.join(d.tmp, f"{name}.sh"), f"""#!/bin/sh
echo "started $KANBAN_TASK"
while [ ! -e {d.tmp}/go-$KANBAN_TASK ]; do sleep 0.05; done
echo "second line for $KANBAN_TASK"
kanban complete --summary "finished by the worker"
""")
    d.cfg.setdefault("profiles", {})[name] = {"command": [script]}
    d.write_config(d.cfg)
    return Path(d.tmp)


def open_board(d, page) -> None:
    page.goto(board_url(d))
    expect(page.locator("body[data-rendered]")).to_have_count(1)


def card(page, task_id: str):
    return page.locator(f'.card[data-id="{task_id}"]')


def column(page, status: str):
    return page.locator(f'.cell[data-status="{status}"]')


def new(d, *args: str) -> str:
    return d.cli_json("create", *args)["id"]


def test_board_renders_each_status_column_with_its_cards(make_daemon, page):
    d = make_daemon(WEB_ON, start=False)
    tmp = gated_worker(d)
    d.start()
    ready = new(d, "a ready task", "--priority", "3", "--tenant", "acme")
    parent = new(d, "a parent")
    todo = new(d, "waits for its parent", "--parent", parent)
    triage = new(d, "needs triage", "--triage")
    blocked = new(d, "stuck")
    d.cli("block", blocked, "--reason", "needs a key")
    done = new(d, "finished")
    d.cli("complete", done)
    archived = new(d, "old news")
    d.cli("archive", archived)
    running = new(d, "in progress", "--assignee", "w")
    d.wait_status(running, "running")
    # the worker's first line is in its log before we look
    wait_for(lambda: "started" in d.rpc("task.log", {"id": running})["text"], what="the worker's first line")

    open_board(d, page)
    heads = page.locator(".colhead").all_inner_texts()
    assert [h.split("\n")[0].strip().lower() for h in heads] == \
        ["triage", "todo", "ready", "scheduled", "running", "review", "blocked", "done"]
    expected = {"ready": {ready, parent}, "todo": {todo}, "triage": {triage}, "blocked": {blocked},
                "done": {done}, "running": {running}, "scheduled": set(), "review": set()}
    for status, ids in expected.items():
        got = set(column(page, status).locator(".card").evaluate_all("els => els.map(e => e.dataset.id)"))
        assert got == ids, (status, got, ids)
    assert card(page, archived).count() == 0
    c = card(page, ready)
    expect(c.locator(".title")).to_have_text("a ready task")
    expect(c.locator(".badge.pri")).to_have_text("P3")
    expect(c.locator(".badge.tenant")).to_have_text("acme")
    expect(card(page, blocked).locator(".why")).to_have_text("needs a key")
    expect(card(page, running).locator(".assignee")).to_have_text("w")
    expect(card(page, running).locator(".elapsed")).to_contain_text("▶ ")
    # "why isn't this starting": the dispatch plan on ready cards (no profile for an unassigned task)
    expect(c.locator(".why.plan")).to_contain_text("unassigned")
    # header: stats and every role's health
    expect(page.locator("#health .role")).to_have_count(4)
    expect(page.locator("#stats")).to_contain_text("2 ready")
    shot(page, "board")
    # archived tasks behind a toggle
    page.locator("#t-archived").check()
    expect(column(page, "archived").locator(f'.card[data-id="{archived}"]')).to_have_count(1)
    # lanes per assignee
    page.locator("#t-lanes").check()
    expect(page.locator(".lanehead")).to_have_text(["(unassigned)", "w"])
    (tmp / f"go-{running}").touch()


def test_create_from_the_form(make_daemon, page):
    d = make_daemon(WEB_ON)
    parent = new(d, "the parent")
    open_board(d, page)
    page.keyboard.press("n")
    form = page.locator("#create")
    expect(form).to_be_visible()
    expect(form.locator("[name=title]")).to_be_focused()
    form.locator("[name=title]").fill("made in the browser")
    form.locator("[name=assignee]").fill("nobody")
    form.locator("[name=parents]").fill(parent)
    form.locator("[name=priority]").fill("7")
    form.locator("button[type=submit]").click()
    expect(form).to_be_hidden()
    tasks = wait_for(lambda: [t for t in d.cli_json("list")["tasks"] if t["title"] == "made in the browser"],
                     what="the task on the board")
    t = d.rpc("task.show", {"id": tasks[0]["id"]})
    assert t["task"]["assignee"] == "nobody" and t["task"]["priority"] == 7 and t["task"]["status"] == "todo"
    assert t["task"]["created_by"] == "web" and [p["id"] for p in t["parents"]] == [parent]
    expect(column(page, "todo").locator(f'.card[data-id="{t["task"]["id"]}"]')).to_have_count(1)


def test_drag_ready_to_blocked_asks_a_reason_and_the_cli_sees_it(make_daemon, page):
    d = make_daemon(WEB_ON)
    tid = new(d, "drag me")
    open_board(d, page)
    card(page, tid).drag_to(column(page, "blocked"))
    dialog = page.locator("dialog#ask")
    expect(dialog).to_be_visible()
    expect(dialog.locator("label")).to_contain_text("Why is it blocked?")
    dialog.locator("input").fill("waiting for the API key")
    dialog.locator("#ask-ok").click()
    expect(column(page, "blocked").locator(f'.card[data-id="{tid}"] .why')).to_have_text("waiting for the API key")
    shown = wait_for(lambda: (t := d.cli_json("show", tid)["task"])["status"] == "blocked" and t, what="blocked")
    assert shown["block_reason"] == "waiting for the API key"
    # a cancelled question moves nothing: the card snaps back
    card(page, tid).drag_to(column(page, "ready"))  # blocked -> ready is unblock: no question
    expect(column(page, "ready").locator(f'.card[data-id="{tid}"]')).to_have_count(1)
    card(page, tid).drag_to(column(page, "blocked"))
    dialog.locator("#ask-cancel").click()
    expect(column(page, "ready").locator(f'.card[data-id="{tid}"]')).to_have_count(1)
    assert d.cli_json("show", tid)["task"]["status"] == "ready"


def test_illegal_drop_snaps_back_with_the_servers_message(make_daemon, page):
    d = make_daemon(WEB_ON)
    tid = new(d, "blocked for good")
    d.cli("block", tid, "--reason", "no")
    open_board(d, page)
    card(page, tid).drag_to(column(page, "done"))  # task.complete: the server refuses a blocked task
    expect(page.locator("#toast.error")).to_contain_text(f"task {tid} is blocked; cannot complete it")
    expect(column(page, "blocked").locator(f'.card[data-id="{tid}"]')).to_have_count(1)
    expect(column(page, "done").locator(".card")).to_have_count(0)
    assert d.cli_json("show", tid)["task"]["status"] == "blocked"
    # a column no move leads to: refused in the page, with why
    card(page, tid).drag_to(column(page, "running"))
    expect(page.locator("#toast.error")).to_contain_text("dispatcher claims them")
    expect(column(page, "blocked").locator(f'.card[data-id="{tid}"]')).to_have_count(1)


def test_cli_changes_show_without_reload(make_daemon, page):
    d = make_daemon(WEB_ON)
    open_board(d, page)
    page.evaluate("window.__same_page = 1")
    tid = new(d, "born in the shell")
    expect(column(page, "ready").locator(f'.card[data-id="{tid}"] .title')).to_have_text("born in the shell")
    d.cli("block", tid, "--reason", "from the CLI")
    expect(column(page, "blocked").locator(f'.card[data-id="{tid}"]')).to_have_count(1)
    d.cli("edit", tid, "--title", "renamed in the shell")
    expect(card(page, tid).locator(".title")).to_have_text("renamed in the shell")
    assert page.evaluate("window.__same_page") == 1, "the page was reloaded"


def test_page_rides_out_restarts_of_the_dispatcher_and_the_web_role(make_daemon, page):
    d = make_daemon(WEB_ON)
    open_board(d, page)
    page.evaluate("window.__same_page = 1")
    pids = d.role_pids()
    os.kill(pids["dispatcher"], signal.SIGKILL)
    wait_for(lambda: d.role_pids()["dispatcher"] != pids["dispatcher"], what="a new dispatcher")
    one = new(d, "after the dispatcher restart")
    expect(card(page, one)).to_have_count(1)
    os.kill(pids["web"], signal.SIGKILL)
    expect(page.locator("#banner")).to_be_visible()
    wait_for(lambda: d.role_pids().get("web") not in (None, pids["web"]), what="a new web role")
    two = new(d, "after the web role restart")
    expect(card(page, two)).to_have_count(1)  # same address (web.port): the page reconnected by itself
    expect(page.locator("#banner")).to_be_hidden()
    assert page.evaluate("window.__same_page") == 1


def test_drawer_shows_a_running_tasks_live_log_and_the_workers_completion(make_daemon, page):
    d = make_daemon(WEB_ON, start=False)
    tmp = gated_worker(d)
    d.start()
    tid = new(d, "long job", "--assignee", "w", "--body", "Build **it**.\n\n- step one\n- step two")
    d.wait_status(tid, "running")
    d.cli("comment", tid, "a human note")
    open_board(d, page)
    card(page, tid).click()
    drawer = page.locator("#drawer")
    expect(drawer).to_be_visible()
    expect(drawer.locator(".dtitle")).to_have_text("long job")
    expect(drawer.locator(".md strong")).to_have_text("it")
    expect(drawer.locator(".md li")).to_have_text(["step one", "step two"])
    expect(drawer.locator(".comment")).to_contain_text("a human note")
    expect(drawer.locator("[data-action=kill]")).to_be_visible()
    log = drawer.locator("pre.log")
    expect(log).to_contain_text(f"started {tid}")
    shot(page, "drawer")
    (tmp / f"go-{tid}").touch()
    expect(log).to_contain_text(f"second line for {tid}")  # live: the drawer was not reopened
    # the worker's `kanban complete` moves the card with no reload
    expect(column(page, "done").locator(f'.card[data-id="{tid}"]')).to_have_count(1)
    expect(drawer.locator(".runs")).to_contain_text("completed")
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()


def test_drawer_actions_links_and_comments(make_daemon, page):
    d = make_daemon(WEB_ON)
    a = new(d, "task a")
    b = new(d, "task b")
    open_board(d, page)
    card(page, b).click()
    drawer = page.locator("#drawer")
    drawer.locator("[aria-label='add parent']").fill(a)
    drawer.locator("[data-section=parents] button[type=submit]").click()
    expect(drawer.locator("[data-section=parents] li")).to_contain_text(a)
    assert d.cli_json("show", b)["task"]["status"] == "todo"
    expect(column(page, "todo").locator(f'.card[data-id="{b}"]')).to_have_count(1)
    drawer.locator("textarea[aria-label=comment]").fill("looks **good**")
    drawer.locator("[data-section=comments] button[type=submit]").click()
    expect(drawer.locator(".comment strong")).to_have_text("good")
    assert d.cli_json("show", b)["comments"][0]["body"] == "looks **good**"
    drawer.locator(f"[aria-label='unlink {a}']").click()
    expect(drawer.locator("[data-section=parents] li")).to_have_count(0)
    assert d.cli_json("show", b)["task"]["status"] == "ready"
    drawer.locator("[data-action=assign]").click()
    page.locator("dialog#ask input").fill("ops")
    page.locator("#ask-ok").click()
    wait_for(lambda: d.cli_json("show", b)["task"]["assignee"] == "ops", what="assigned")
    expect(card(page, b).locator(".assignee")).to_have_text("ops")
    # bulk: select both, archive
    card(page, a).locator(".sel").check()
    card(page, b).locator(".sel").check()
    page.keyboard.press("Escape")
    expect(page.locator("#bulk-count")).to_have_text("2 selected")
    page.locator("#bulk [data-action=archive]").click()
    wait_for(lambda: {t["status"] for t in d.cli_json("list", "--archived")["tasks"]} == {"archived"}, what="archived")
    expect(page.locator(".card")).to_have_count(0)


def test_filters_and_search_keys(make_daemon, page):
    d = make_daemon(WEB_ON)
    x = new(d, "alpha for ops", "--assignee", "ops", "--tenant", "t1")
    y = new(d, "beta for dev", "--assignee", "dev", "--tenant", "t2")
    open_board(d, page)
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("beta")
    expect(page.locator(".card")).to_have_count(1)
    expect(card(page, y)).to_have_count(1)
    page.locator("#search").fill("")
    page.locator("#f-assignee").select_option("ops")
    expect(page.locator(".card")).to_have_count(1)
    expect(card(page, x)).to_have_count(1)
    page.locator("#f-assignee").select_option("")
    page.locator("#f-tenant").select_option("t2")
    expect(page.locator(".card")).to_have_count(1)
    expect(card(page, y)).to_have_count(1)


def test_worker_written_text_stays_inert(make_daemon, page):
    d = make_daemon(WEB_ON)
    title = "<img src=x onerror=alert(1)>"
    body = ("[click me](javascript:alert(2)) and [ok](https://example.org/x)\n\n<script>alert(3)</script>\n\n"
            "![img](javascript:alert(4)) <b onmouseover=alert(5)>bold?</b>")
    tid = new(d, title, "--body", body)
    d.cli("comment", tid, "<img src=y onerror=alert(6)> [x](JaVaScRiPt:alert(7))")
    open_board(d, page)
    c = card(page, tid)
    expect(c.locator(".title")).to_have_text(title)
    assert page.locator(".card img, #board img, #board script").count() == 0
    c.click()
    drawer = page.locator("#drawer")
    expect(drawer.locator(".dtitle")).to_have_text(title)
    md = drawer.locator("[data-section=description] .md")
    expect(md).to_contain_text("[click me](javascript:alert(2))")
    expect(md).to_contain_text("<script>alert(3)</script>")
    links = md.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert links == ["https://example.org/x"], links
    assert drawer.locator("img, script, b, [onerror], [onmouseover]").count() == 0
    expect(drawer.locator(".comment")).to_contain_text("<img src=y onerror=alert(6)>")
    assert drawer.locator(".comment a").count() == 0
    assert page.evaluate("document.querySelectorAll('[onerror], [onmouseover], a[href^=javascript i]').length") == 0
    # the page's own fixture fails the test on any alert() (a native dialog) or page error


def test_approve_from_the_review_column(make_daemon, page):
    """A task created with ``--review`` and completed by its worker waits in ``review``;
    the Approve button in the drawer (and a drop on ``done``) approves it.
    """
    d = make_daemon(WEB_ON, start=False)
    script = write_script(os.path.join(d.tmp, "w.sh"), "#!/bin/sh\nkanban complete --summary done-by-worker\n")
    d.cfg.setdefault("profiles", {})["w"] = {"command": [script]}
    d.write_config(d.cfg)
    d.start()
    one = new(d, "review me", "--assignee", "w", "--review")
    two = new(d, "review me too", "--assignee", "w", "--review")
    d.wait_status(one, "review")
    d.wait_status(two, "review")
    open_board(d, page)
    expect(column(page, "review").locator(".card")).to_have_count(2)
    card(page, one).click()
    page.locator("#drawer [data-action=approve]").click()
    expect(column(page, "done").locator(f'.card[data-id="{one}"]')).to_have_count(1)
    assert d.cli_json("show", one)["task"]["status"] == "done"
    page.keyboard.press("Escape")
    card(page, two).drag_to(column(page, "done"))  # a drop on done from review approves
    expect(column(page, "done").locator(f'.card[data-id="{two}"]')).to_have_count(1)
    assert d.cli_json("show", two)["task"]["status"] == "done"
    kinds = [e["kind"] for e in d.cli_json("show", two)["events"]]
    assert "approved" in kinds or kinds[-1] == "completed", kinds
