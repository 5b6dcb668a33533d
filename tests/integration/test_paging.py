"""Large answers come in pages: ``task.list`` and ``events.since`` on a board of 25k+ tasks.

Once a single ``kanban list`` on a board this size was one 16 MiB answer that the
daemon treated as a slow client and dropped. Now the CLI shows the first page (and says
on stderr how to see more), and ``--all`` walks every page and streams it.
"""

from __future__ import annotations

import json
import socket

import pytest

from client.protocol import EVENTS_PAGE, LIST_PAGE
from tests.harness import Daemon

N = 25_500


def create_many(d: Daemon, n: int, window: int = 2000) -> list[str]:
    """``n`` tasks through pipelined ``task.create`` requests on one connection."""
    ids: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket)
        f = s.makefile("rb")
        for start in range(0, n, window):
            batch = range(start, min(n, start + window))
            s.sendall(b"".join(json.dumps({
                "jsonrpc": "2.0", "id": i, "method": "task.create",
                "params": {"title": f"bulk {i}", "priority": i % 7, "body": "x" * 40}}).encode() + b"\n"
                for i in batch))
            for _ in batch:
                ids.append(json.loads(f.readline())["result"]["id"])
        f.close()
    return ids


@pytest.fixture(scope="module")
def big():
    d = Daemon()
    try:
        d.start()
        d.ids = create_many(d, N)
        yield d
    finally:
        d.cleanup()
    assert not d.ours()


def test_list_all_returns_every_task_streamed_as_json_lines(big):
    res = big.cli("list", "--all", "--json", timeout=120)
    lines = res.stdout.splitlines()
    tasks = [json.loads(line) for line in lines]
    assert len(tasks) == N and {t["id"] for t in tasks} == set(big.ids)
    keys = [(-t["priority"], t["created_at"], t["id"]) for t in tasks]
    assert keys == sorted(keys), "pages keep the priority order across cursors"


def test_list_all_human_table_and_other_sorts(big):
    res = big.cli("list", "--all", "--sort", "id", timeout=120)
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PRI", "ASSIGNEE", "UPDATED", "TITLE"]
    rows = [ln.split()[0] for ln in lines[1:]]
    assert rows == sorted(big.ids)
    res = big.cli("ls", "--all", "--json", "--sort", "updated", "-n", "4000", timeout=120)
    assert len({json.loads(x)["id"] for x in res.stdout.splitlines()}) == N


def test_plain_list_shows_the_first_page_and_says_how_to_see_more(big):
    res = big.cli("list")
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("t_")]
    assert len(rows) == LIST_PAGE
    assert "--all" in res.stderr and str(N) in res.stderr and len(res.stderr.splitlines()) == 1
    page = big.cli_json("list")
    assert len(page["tasks"]) == LIST_PAGE and page["total"] == N and page["next_cursor"]


def test_rpc_pages_chain_with_the_cursor(big):
    seen: list[tuple[float, str]] = []
    cursor = None
    while True:
        page = big.rpc("task.list", {"sort": "created", "limit": 10_000, **({"cursor": cursor} if cursor else {})})
        assert page["total"] == N
        seen += [(t["created_at"], t["id"]) for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # a batch's tasks share created_at (one transaction, one clock reading): the id breaks the tie
    assert seen == sorted(seen) and {i for _, i in seen} == set(big.ids) and len(seen) == N
    err = big.rpc_error("task.list", {"sort": "priority", "cursor": page_cursor(big, "id")})
    assert err.name == "invalid_params" and err.error["data"]["field"] == "cursor"
    err = big.rpc_error("task.list", {"cursor": "not-a-cursor"})
    assert err.name == "invalid_params"


def page_cursor(d: Daemon, sort: str) -> str:
    return d.rpc("task.list", {"sort": sort, "limit": 1})["next_cursor"]


def test_events_all_walks_every_event(big):
    res = big.cli("events", "--all", "--json", timeout=120)
    ids = [json.loads(line)["id"] for line in res.stdout.splitlines()]
    assert len(ids) >= N and ids == sorted(ids) and len(set(ids)) == len(ids)
    first = big.cli("events")
    assert len(first.stdout.splitlines()) == EVENTS_PAGE and "--all" in first.stderr
    page = big.rpc("events.since", {"after": 0})
    assert len(page["events"]) == EVENTS_PAGE and page["next_cursor"] == page["events"][-1]["id"]
    last = big.rpc("events.since", {"after": page["last_id"] - 3})
    assert len(last["events"]) == 3 and last["next_cursor"] is None
