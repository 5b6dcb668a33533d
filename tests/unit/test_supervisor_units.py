"""Unit tests for the supervision building blocks: backoff, flapping, the role
table, the pidfile/lock, and the log format (journald priority prefix)."""

from __future__ import annotations

import collections
import io
import json
import os
import random
import socket

import pytest
import structlog

from daemon import config as config_mod
from daemon import log as daemon_log
from daemon import roles
from daemon.supervisor import AlreadyRunning, Supervisor, backoff_delay, is_flapping, read_pidfile

# ---- backoff --------------------------------------------------------------------------


def test_backoff_zero_failures_is_immediate():
    assert backoff_delay(0, 0.1, 30.0, random.Random(1)) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_backoff_doubles_with_jitter_and_is_capped(seed):
    rng = random.Random(seed)
    delays = [backoff_delay(n, 0.1, 30.0, rng) for n in range(1, 16)]
    for n, d in enumerate(delays, 1):
        base = min(30.0, 0.1 * 2 ** (n - 1))
        assert base / 2 <= d <= base
    # while the base still doubles (25.6 s is the last doubling below the 30 s cap),
    # jitter never makes a later delay shorter than an earlier one
    assert delays[:9] == sorted(delays[:9])
    assert max(delays) <= 30.0
    assert delays[-1] >= 15.0


def test_backoff_jitter_spreads():
    rng = random.Random(7)
    values = {round(backoff_delay(3, 0.1, 30.0, rng), 6) for _ in range(50)}
    assert len(values) > 40


# ---- flapping -------------------------------------------------------------------------


def test_flapping_counts_restarts_inside_the_window_only():
    h = collections.deque([100.0, 101.0, 102.0])
    assert not is_flapping(h, 102.0, window=60.0, limit=3)    # 3 restarts: not more than 3
    h.append(103.0)
    assert is_flapping(h, 103.0, window=60.0, limit=3)        # 4 > 3
    assert not is_flapping(h, 161.5, window=60.0, limit=3)    # the first two aged out
    assert not is_flapping(collections.deque(), 0.0, window=60.0, limit=0)


# ---- the role table -------------------------------------------------------------------


def test_roles_table_is_complete_and_resolvable():
    assert set(roles.ROLES) == {"dispatcher", "reaper", "notifier", "web"}
    orders = [s.order for s in roles.ROLES.values()]
    stops = [s.stop_order for s in roles.ROLES.values()]
    assert len(set(orders)) == len(orders) and len(set(stops)) == len(stops)
    by_stop = sorted(roles.ROLES, key=lambda n: roles.ROLES[n].stop_order)
    assert by_stop[-1] == "dispatcher", "the dispatcher stops last: the others report to it while stopping"
    for name, spec in roles.ROLES.items():
        assert callable(roles.resolve(spec.entry)), name
        assert spec.restart == "always" and spec.stop_timeout > 0
        assert spec.hang_timeout is None or spec.hang_timeout > 0


def test_only_the_web_role_is_optional_and_it_follows_web_enabled():
    assert {n for n, s in roles.ROLES.items() if not s.essential} == {"web"}
    assert roles.ROLES["web"].enabled_by == "web.enabled"
    by_stop = sorted(roles.ROLES, key=lambda n: roles.ROLES[n].stop_order)
    assert by_stop[0] == "web", "the web board stops first: nobody steers a board that is shutting down"
    cfg = config_mod.defaults()
    assert all(roles.enabled(s, cfg) for s in roles.ROLES.values())
    cfg["web"]["enabled"] = False
    assert {n for n, s in roles.ROLES.items() if not roles.enabled(s, cfg)} == {"web"}


def test_role_spec_refuses_unknown_restart_policy():
    with pytest.raises(ValueError, match="restart policy"):
        roles.RoleSpec("daemon.notifier:run", "sometimes", order=9, stop_order=9, stop_timeout=1.0)


def test_channel_messages_and_eof():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    assert roles.send(a, {"t": "hb", "ready": True})
    assert roles.send(a, {"t": "hb", "ready": False, "n": 2})
    assert roles.recv(b) == [{"t": "hb", "ready": True}, {"t": "hb", "ready": False, "n": 2}]
    assert roles.recv(b) == []
    a.close()
    assert roles.recv(b) is None          # EOF: the other side is gone
    assert roles.send(b, {"t": "x"}) is False
    b.close()


# ---- pidfile and lock -----------------------------------------------------------------


def _sup(tmp_path) -> Supervisor:
    state = tmp_path / "state"
    paths = {"state_dir": str(state), "pidfile": str(state / "kanband.pid"), "socket": str(tmp_path / "s.sock"),
             "board": str(state / "board.db")}
    return Supervisor(config_mod.defaults(), paths, None)


def test_pidfile_written_atomically_and_lock_refuses_a_second(tmp_path):
    first = _sup(tmp_path)
    first.acquire()
    try:
        assert read_pidfile(first.paths["pidfile"]) == os.getpid()
        assert sorted(os.listdir(first.paths["state_dir"])) == ["kanband.lock", "kanband.pid"]
        second = _sup(tmp_path)
        with pytest.raises(AlreadyRunning, match=rf"already running on .*\(pid {os.getpid()}\)"):
            second.acquire()
        assert read_pidfile(first.paths["pidfile"]) == os.getpid()
    finally:
        first.release()
    assert not os.path.exists(first.paths["pidfile"])
    third = _sup(tmp_path)          # the lock is free again
    third.acquire()
    third.release()


def test_release_keeps_a_pidfile_that_is_not_ours(tmp_path):
    sup = _sup(tmp_path)
    sup.acquire()
    with open(sup.paths["pidfile"], "w") as f:
        f.write("4194301\n")
    sup.release()
    assert read_pidfile(sup.paths["pidfile"]) == 4194301


@pytest.mark.parametrize("content,expected", [("123\n", 123), ("", None), ("junk", None), ("0\n", None)])
def test_read_pidfile(tmp_path, content, expected):
    p = tmp_path / "pid"
    p.write_text(content)
    assert read_pidfile(str(p)) == expected
    assert read_pidfile(str(tmp_path / "missing")) is None


# ---- log format ------------------------------------------------------------------------


def test_line_writer_writes_each_line_in_one_syscall(tmp_path, monkeypatch):
    """Roles share stdout: a line must reach it in one write(2), even with PYTHONUNBUFFERED."""
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    with open(tmp_path / "out", "w") as f:
        monkeypatch.setattr(os, "write", spy)
        daemon_log.LineWriter(f).msg('{"event":"a.b"}')
        daemon_log.LineWriter(f).error('{"event":"c.d"}')
        monkeypatch.undo()
    assert writes == [b'{"event":"a.b"}\n', b'{"event":"c.d"}\n']
    assert (tmp_path / "out").read_text() == '{"event":"a.b"}\n{"event":"c.d"}\n'


def test_line_writer_survives_a_closed_pipe():
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as f:
        daemon_log.LineWriter(f).msg("lost")   # EPIPE (Python ignores SIGPIPE): dropped, no raise


def test_render_json_with_and_without_priority_prefix():
    plain = daemon_log.render_json(prefix=False)
    journal = daemon_log.render_json(prefix=True)
    ev = {"event": "role.died", "level": "error", "role": "supervisor", "pid": 1}
    assert json.loads(plain(None, "error", dict(ev))) == ev
    for level, prio in [("error", 3), ("warning", 4), ("info", 6), ("debug", 7), ("critical", 2)]:
        line = journal(None, level, {**ev, "level": level})
        assert line.startswith(f"<{prio}>{{") and json.loads(line[3:])["level"] == level


def test_journal_detected_only_when_journal_stream_names_our_stdout(tmp_path):
    f = open(tmp_path / "out", "w")
    other = open(tmp_path / "other", "w")
    try:
        st = os.fstat(f.fileno())
        mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert daemon_log.stdout_is_journal(f, mine)
        assert not daemon_log.stdout_is_journal(other, mine)
        assert not daemon_log.stdout_is_journal(f, {})
        assert not daemon_log.stdout_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        assert daemon_log.choose_format("auto", f, mine) == "journal"
        assert daemon_log.choose_format("json", f, mine) == "journal"      # journal fields; MESSAGE is JSON
        assert daemon_log.choose_format("console", f, mine) == "console"
        assert daemon_log.choose_format("auto", other, mine) == "json"     # not a TTY, not the journal
        assert daemon_log.choose_format("json", other, {}) == "json"
    finally:
        f.close()
        other.close()


def test_choose_format_console_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

        def fileno(self) -> int:
            raise io.UnsupportedOperation

    assert daemon_log.choose_format("auto", Tty(), {}) == "console"
    assert daemon_log.choose_format("auto", Tty(), {"JOURNAL_STREAM": "1:2"}) == "console"


def test_configure_adds_role_pid_level_and_timestamp(capfd):
    cfg = config_mod.defaults()
    cfg["logs"]["format"] = "json"
    daemon_log.configure(cfg, role="reaper")
    try:
        structlog.get_logger().warning("worker.exited", task="t_1", run="r_1")
        line = capfd.readouterr().out.strip()
    finally:
        structlog.reset_defaults()
    ev = json.loads(line)
    assert ev["event"] == "worker.exited" and ev["level"] == "warning"
    assert ev["role"] == "reaper" and ev["pid"] == os.getpid() and ev["task"] == "t_1" and ev["run"] == "r_1"
    assert ev["timestamp"].endswith("Z")
