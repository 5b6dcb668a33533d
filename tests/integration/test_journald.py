"""Under journald, log records reach the journal with fields (native protocol).

No journald runs here: the test binds a datagram socket the way journald binds
``/run/systemd/journal/socket``, points the daemon at it with
``KANBAN_JOURNAL_SOCKET``, and makes ``JOURNAL_STREAM`` name the daemon's stdout,
exactly as systemd does for a service whose output goes to the journal. Each
datagram is parsed with the protocol's rules (``KEY=value`` lines, and the
binary form ``KEY\\n<le64 length><value>\\n`` for values holding a newline).
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import threading

import pytest

from daemon import log as daemon_log
from tests.harness import wait_for, write_script


def parse_entry(data: bytes) -> dict[str, str]:
    """One native-protocol entry as ``{FIELD: value}`` (a repeated field keeps its last value)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:  # binary form: NAME\n, 64-bit little-endian length, value, \n
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n", "binary field not ended by a newline"
            i = nl + 10 + size
        assert key and key.decode().replace("_", "A").isalnum() and key.upper() == key, key
        assert not key.startswith(b"_"), f"{key!r} is a trusted field; clients may not set it"
        out[key.decode()] = value.decode()
    return out


class Journal:
    """A datagram socket standing in for journald's native socket; also takes memfd entries."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.2)
        self.raw: list[bytes] = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fds = array.array("i")
        while not self.closed:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
            except socket.timeout:
                continue
            except OSError:
                return
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = array.array("i", cdata[:fds.itemsize])[0]
                    assert data == b"", "a memfd entry must come with an empty payload"
                    with os.fdopen(fd, "rb") as f:  # journald maps it; the offset is the sender's
                        f.seek(0)
                        data = f.read()
            with self.lock:
                self.raw.append(data)

    def entries(self) -> list[dict[str, str]]:
        with self.lock:
            return [parse_entry(d) for d in self.raw]

    def find(self, **fields: str) -> dict[str, str] | None:
        return next((e for e in self.entries() if all(e.get(k) == v for k, v in fields.items())), None)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / "journal.sock"))
    yield j
    j.close()


def start_under_journald(d, journal: Journal) -> None:
    open(d.log_path, "ab").close()  # the daemon's stdout: JOURNAL_STREAM names this file's device and inode
    st = os.stat(d.log_path)
    d.start(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "KANBAN_JOURNAL_SOCKET": journal.path})


def test_records_reach_the_journal_with_task_run_role_event_and_priority(make_daemon, journal, tmp_path):
    worker = write_script(tmp_path / "w.sh", "#!/bin/sh\necho working\nexit 3\n")
    d = make_daemon({"profiles": {"w": {"command": [worker]}}, "dispatch": {"failure_limit": 1}}, start=False)
    start_under_journald(d, journal)
    wait_for(lambda: journal.find(EVENT="supervisor.ready"), what="supervisor.ready in the journal")
    t = d.cli_json("create", "fails once", "-a", "w")
    d.wait_status(t["id"], "blocked")
    exited = wait_for(lambda: journal.find(EVENT="worker.exited", TASK=t["id"]), what="worker.exited")
    run = d.rpc("task.runs", {"id": t["id"]})["runs"][0]["id"]
    assert exited["RUN"] == run
    assert exited["ROLE"] == "reaper"
    assert exited["SYSLOG_IDENTIFIER"] == "kanband"
    assert exited["PRIORITY"] in {"3", "4", "6"} and exited["PRIORITY"] == str(
        daemon_log.PRIORITY[exited["LEVEL"]])
    assert exited["EXIT_CODE"] == "3"
    message = json.loads(exited["MESSAGE"])  # MESSAGE is the record as one JSON line, as before
    assert message["event"] == "worker.exited" and message["task"] == t["id"] and message["run"] == run
    assert exited["PID"] == str(message["pid"])
    ready = journal.find(EVENT="supervisor.ready")
    assert ready["ROLE"] == "supervisor" and ready["PRIORITY"] == "6"
    # the journal got the records, so the stream (the log file) did not
    assert '"event":"worker.exited"' not in open(d.log_path).read()


def test_an_error_is_priority_3_and_a_traceback_uses_the_binary_form(make_daemon, journal):
    d = make_daemon(start=False)
    start_under_journald(d, journal)
    wait_for(lambda: journal.find(EVENT="supervisor.ready"), what="supervisor.ready")
    d.write_config("dispatch: {max_in_progres: 3}\n")
    res = d.cli("reload", check=False)
    assert res.returncode == 1
    refused = wait_for(lambda: journal.find(EVENT="config.reload_refused"), what="config.reload_refused")
    assert refused["PRIORITY"] == "3" and refused["ROLE"] == "supervisor"
    assert "max_in_progres" in refused["ERROR"]


def test_native_entries_round_trip_newlines_reserved_names_and_large_records(journal):
    """The encoder alone: what a record looks like on the wire, including one too big for a datagram."""
    writer = daemon_log.JournalWriter(journal.path, daemon_log.LineWriter(open(os.devnull, "w")))
    event = {"event": "worker.crashed", "level": "error", "task": "t_0123abcd", "error": "line one\nline two",
             "message": "a field named message", "count": 3, "ok": True, "gone": None, "weird-key.x": "v",
             "_private": "p", "9lives": "c"}
    entry, line = daemon_log.render_journal(None, "error", dict(event))[0]
    assert writer.send(entry)
    big = {"event": "big.record", "level": "info", "blob": "x" * (400 * 1024)}
    big_entry, _ = daemon_log.render_journal(None, "info", big)[0]
    assert writer.send(big_entry)  # larger than a datagram: sent as a sealed memfd
    got = wait_for(lambda: len(journal.entries()) == 2 and journal.entries(), what="two entries")
    e = got[0]
    assert e["PRIORITY"] == "3" and e["EVENT"] == "worker.crashed" and e["TASK"] == "t_0123abcd"
    assert e["ERROR"] == "line one\nline two"
    assert e["KANBAN_MESSAGE"] == "a field named message"   # never overrides MESSAGE
    assert json.loads(e["MESSAGE"])["message"] == "a field named message"
    assert e["COUNT"] == "3" and e["OK"] == "true" and "GONE" not in e
    assert e["WEIRD_KEY_X"] == "v" and e["PRIVATE"] == "p" and e["F_9LIVES"] == "c"
    assert got[1]["EVENT"] == "big.record" and len(got[1]["BLOB"]) == 400 * 1024


def test_a_record_that_cannot_reach_the_journal_goes_to_stdout_with_its_priority(tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as f:
        writer = daemon_log.JournalWriter(str(tmp_path / "no-journal.sock"), daemon_log.LineWriter(f))
        entry, line = daemon_log.render_journal(None, "warning", {"event": "a.b", "level": "warning"})[0]
        writer.msg(entry, line)
    assert out.read_text() == '<4>{"event":"a.b","level":"warning"}\n'


def test_without_journald_the_output_is_unchanged(make_daemon, journal):
    """JOURNAL_STREAM naming another file (inherited by a child whose output goes elsewhere): JSON lines."""
    d = make_daemon(start=False)
    d.start(env={"JOURNAL_STREAM": "1:2", "KANBAN_JOURNAL_SOCKET": journal.path})
    assert any(e.get("event") == "supervisor.ready" for e in d.log_events())
    assert journal.entries() == []
