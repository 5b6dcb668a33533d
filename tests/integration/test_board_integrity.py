"""The board file is checked, never replaced (issue 10, section 4), against the real daemon.

- A missing or empty board where one existed (``<state>/board.id`` says so) is
  an error naming the file, not a silent fresh start; ``kanband --init-board``
  makes a new board and never overwrites a non-empty one.
- Another board swapped in is refused; a board without an id file is adopted.
- A damaged page is found at start (``PRAGMA quick_check``): one line, exit 1,
  and a content-addressed copy of the board as found.
- A damaged page found at run time (tasks or events table) makes the
  dispatcher unhealthy: ``unavailable`` naming the file, shown by ``kanban
  status`` and ``STATUS=``, no more ``WATCHDOG=1``, and never a crash loop.

Pages are damaged for real: 0xFF over one page of the board file, found with
SQLite's ``dbstat`` table, while the daemon is stopped or running.
"""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import time

import pytest

from client.rpc import Client, ServerError
from daemon.board import db as boarddb
from tests.harness import KANBAND, wait_for

WD_USEC = 400_000  # a WATCHDOG=1 is due every 0.2 s


def board_path(d) -> str:
    return os.path.join(d.state, "board.db")


def read_id(d) -> str:
    with open(os.path.join(d.state, "board.id")) as f:
        return f.read().strip()


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def populate(d, n: int = 300) -> list[str]:
    """``n`` tasks with bodies large enough to spread the tasks and events tables over many pages."""
    with Client(d.socket, retry=5.0) as c:
        return [c.call("task.create", {"title": f"task {i}", "body": f"body {i} " + "x" * 400})["id"]
                for i in range(n)]


def pages(board: str, table: str) -> tuple[list[int], int, int]:
    """(leaf pages of ``table`` in order, its root page, the page size), read through a read-only connection."""
    conn = sqlite3.connect(f"file:{board}?mode=ro", uri=True)
    try:
        leaves = [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name=? AND pagetype='leaf' "
                                             "ORDER BY path", (table,))]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return leaves, root, size


def smash(board: str, pageno: int, size: int) -> None:
    """Write garbage over one page of the board file, in place."""
    with open(board, "r+b") as f:
        f.seek((pageno - 1) * size)
        f.write(b"\xff" * size)
        f.flush()
        os.fsync(f.fileno())


def middle_leaf(board: str, table: str) -> tuple[int, int]:
    leaves, _, size = pages(board, table)
    assert len(leaves) >= 5, f"{table} spans too few pages for the test: {leaves}"
    return leaves[len(leaves) // 2], size


def run_kanband(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KANBAND, "--config", d.config_path, "--state-dir", d.state, "--socket", d.socket,
                           *args], capture_output=True, text=True, env=d.env(), timeout=60, cwd=d.tmp)


def one_line(res: subprocess.CompletedProcess, code: int = 1) -> str:
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def populated_and_stopped(make_daemon, n: int = 300, **kw):
    d = make_daemon(**kw)
    ids = populate(d, n)
    assert d.stop() == 0
    assert not os.path.exists(board_path(d) + "-wal"), "a clean stop checkpoints the WAL away"
    return d, ids


# ---- identity ----------------------------------------------------------------------------


def test_new_state_dir_gets_a_board_and_its_id(daemon):
    d = daemon
    bid = read_id(d)
    assert len(bid) == 32 and int(bid, 16) >= 0
    assert stat.S_IMODE(os.stat(os.path.join(d.state, "board.id")).st_mode) == 0o600
    conn = sqlite3.connect(f"file:{board_path(d)}?mode=ro", uri=True)
    assert conn.execute("SELECT value FROM meta WHERE key='board_id'").fetchone()[0] == bid
    conn.close()
    assert [e for e in d.log_events() if e.get("event") == "board.created" and e.get("board_id") == bid]


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_missing_or_empty_board_is_an_error_not_a_fresh_start(make_daemon, how):
    d, _ = populated_and_stopped(make_daemon)
    bid = read_id(d)
    board = board_path(d)
    if how == "missing":
        os.unlink(board)
    else:
        os.truncate(board, 0)
    what = "missing" if how == "missing" else "empty (0 bytes)"
    for _ in range(2):  # and a retry (systemd's Restart=) changes nothing
        line = one_line(run_kanband(d))
        assert line == (f"kanband: board {board} is {what}, but {d.state}/board.id records board {bid} there: "
                        "restore the board from a backup, or start a new, empty board with "
                        "`kanband --init-board`"), line
        assert os.path.exists(board) == (how == "empty") and (how == "missing" or os.path.getsize(board) == 0)
    # the way out: an explicit new board
    res = run_kanband(d, "--init-board")
    assert res.returncode == 0, res.stderr
    new = read_id(d)
    assert new != bid and res.stdout.strip() == f"created board {new} at {board}; start kanband as usual"
    d.start()
    assert d.rpc("task.list", {})["tasks"] == []


def test_init_board_never_overwrites_a_board(make_daemon):
    d, ids = populated_and_stopped(make_daemon)
    before = sha(board_path(d))
    line = one_line(run_kanband(d, "--init-board"))
    assert line.startswith(f"kanband: board {board_path(d)} exists and is not empty (") and "move it away" in line
    assert sha(board_path(d)) == before
    d.start()
    assert len(d.rpc("task.list", {"limit": 1000})["tasks"]) == len(ids)
    line = one_line(run_kanband(d, "--init-board"))  # and not under a running daemon either
    assert "already running" in line, line


def test_another_board_swapped_in_is_refused(make_daemon):
    a, _ = populated_and_stopped(make_daemon, n=3)
    b, _ = populated_and_stopped(make_daemon, n=5)
    with open(board_path(b), "rb") as src, open(board_path(a), "wb") as dst:
        dst.write(src.read())
    line = one_line(run_kanband(a))
    assert line == (f"kanband: board {board_path(a)} is board {read_id(b)}, but {a.state}/board.id records board "
                    f"{read_id(a)}: if this is the board you want, remove {a.state}/board.id; otherwise put the "
                    "right board back"), line


def test_board_without_an_id_file_is_adopted(make_daemon):
    """A board made before board ids existed (no meta table, no id file) keeps its tasks."""
    d, ids = populated_and_stopped(make_daemon, n=20)
    os.unlink(os.path.join(d.state, "board.id"))
    conn = sqlite3.connect(board_path(d))
    before_meta = next(i for i, m in enumerate(boarddb.MIGRATIONS) if "CREATE TABLE meta" in m)
    conn.execute("DROP TABLE meta")
    # and undo what later migrations added, so that the board is what that older kanband left
    # (a migration is applied once: re-running ALTER TABLE ADD COLUMN would fail)
    assert len(boarddb.MIGRATIONS) == before_meta + 2, "undo the newer migrations here too"
    conn.execute("DROP TABLE settings")
    for table, column in (("profile_state", "paused_at"), ("profile_state", "cap_override"),
                          ("tasks", "workspace_repo"), ("tasks", "workspace_branch")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute(f"PRAGMA user_version={before_meta}")
    conn.commit()
    conn.close()
    d.start()
    assert len(d.rpc("task.list", {"limit": 1000})["tasks"]) == len(ids)
    bid = read_id(d)
    assert [e for e in d.log_events() if e.get("event") == "board.adopted" and e.get("board_id") == bid]


# ---- damage found at start ---------------------------------------------------------------------


def test_damaged_page_at_start_is_one_line_and_a_copy_is_kept(make_daemon):
    d, _ = populated_and_stopped(make_daemon)
    board = board_path(d)
    page, size = middle_leaf(board, "tasks")
    smash(board, page, size)
    damaged = sha(board)
    line = one_line(run_kanband(d))
    copy = f"{board}.corrupt-{damaged[:16]}"
    assert line.startswith(f"kanband: board {board} is damaged (quick_check: "), line
    assert f"a copy of it as found is {copy};" in line and "--init-board" in line, line
    assert sha(copy) == damaged and sha(board) == damaged, "the check changed the board or the copy differs"
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert one_line(run_kanband(d)) == line  # a retry: same bytes, same copy, no second one
    assert glob.glob(board + ".corrupt-*") == [copy]
    assert not os.path.exists(d.socket)


def test_a_file_that_is_not_a_database_is_refused_at_start(make_daemon):
    d, _ = populated_and_stopped(make_daemon, n=5)
    smash(board_path(d), 1, 4096)  # the header page: SQLITE_NOTADB
    line = one_line(run_kanband(d))
    assert line.startswith(f"kanband: board {board_path(d)} is damaged (quick_check: file is not a database)"), line


# ---- damage found at run time ------------------------------------------------------------------


def unavailable(d, method: str, params: dict) -> ServerError:
    with Client(d.socket, retry=5.0, timeout=10.0) as c:
        try:
            c.call(method, params)
        except ServerError as exc:
            assert exc.name == "unavailable", (method, exc.error)
            assert board_path(d) in str(exc), str(exc)
            return exc
    raise AssertionError(f"{method} succeeded on a damaged board")


def assert_unhealthy_and_watchdog_stopped(d, dispatcher_pid: int) -> None:
    def dispatcher_role() -> dict:
        return next(r for r in d.cli_json("status")["roles"] if r["name"] == "dispatcher")

    disp = wait_for(lambda: (r := dispatcher_role())["state"] == "unhealthy" and r, what="dispatcher unhealthy")
    assert board_path(d) in disp["error"], disp
    st = d.cli_json("status")
    assert board_path(d) in st["board_error"] and disp["pid"] == dispatcher_pid
    text = d.cli("status").stdout
    assert f"BOARD DAMAGED: board {board_path(d)}" in text, text
    bad = wait_for(lambda: [t for t, m in d.notify.lines("STATUS=")
                            if "dispatcher unhealthy (board " + board_path(d) in m],
                   what="STATUS= naming the damaged board")
    t_bad = bad[0]
    # after that STATUS= line, WATCHDOG=1 is never sent again: wait 8 intervals to be sure
    wait_for(lambda: time.monotonic() - t_bad > 8 * WD_USEC / 2e6, what="eight watchdog intervals")
    late = [t for t, m in d.notify.lines("WATCHDOG=1") if t > t_bad]
    assert not late, f"WATCHDOG=1 sent {len(late)} times while the board is damaged"


def test_damaged_tasks_page_while_running(make_daemon):
    d, ids = populated_and_stopped(make_daemon, watchdog_usec=WD_USEC)
    d.start()
    wait_for(lambda: d.notify.count("WATCHDOG=1") >= 3, what="watchdog pings")
    pid = d.role_pids()["dispatcher"]
    page, size = middle_leaf(board_path(d), "tasks")
    smash(board_path(d), page, size)
    err = unavailable(d, "task.list", {"limit": 1000, "sort": "created"})  # a read that hits the page
    assert "malformed" in str(err), str(err)
    unavailable(d, "task.create", {"title": "into a damaged file"})   # writes are refused
    unavailable(d, "task.comment", {"id": ids[0], "body": "no"})
    res = d.cli("create", "via the cli", check=False)
    assert res.returncode == 1 and res.stderr.startswith("kanban: unavailable: board " + board_path(d)), res.stderr
    assert_unhealthy_and_watchdog_stopped(d, pid)
    assert not [e for e in d.log_events() if e.get("event") == "role.died"]


def test_damaged_events_page_while_running(make_daemon):
    d, _ = populated_and_stopped(make_daemon, watchdog_usec=WD_USEC)
    d.start()
    pid = d.role_pids()["dispatcher"]
    page, size = middle_leaf(board_path(d), "events")
    smash(board_path(d), page, size)
    unavailable(d, "events.since", {"after": 0, "limit": 100000})
    unavailable(d, "task.create", {"title": "refused"})
    assert_unhealthy_and_watchdog_stopped(d, pid)
    assert not [e for e in d.log_events() if e.get("event") == "role.died"]


def test_restarted_dispatcher_on_a_damaged_board_is_unhealthy_not_a_crash_loop(make_daemon):
    """The events root page damaged under a running daemon, then the dispatcher dies: the new one
    cannot even read the last event id. It must come up unhealthy and answer at once."""
    d, _ = populated_and_stopped(make_daemon, watchdog_usec=WD_USEC)
    d.start()
    old = d.role_pids()["dispatcher"]
    _, root, size = pages(board_path(d), "events")
    smash(board_path(d), root, size)
    os.kill(old, signal.SIGKILL)
    st = wait_for(lambda: (s := d.rpc("daemon.status")) and s["dispatcher_pid"] != old and s, timeout=15,
                  what="a new dispatcher")
    new = st["dispatcher_pid"]
    assert board_path(d) in st["board_error"], st
    t0 = time.monotonic()
    unavailable(d, "task.create", {"title": "refused"})
    assert time.monotonic() - t0 < 5, "a client waited on a damaged board"
    assert_unhealthy_and_watchdog_stopped(d, new)
    died = [e for e in d.log_events() if e.get("event") == "role.died"]
    assert len(died) == 1 and died[0]["child_pid"] == old, died  # the one we killed; no crash loop
