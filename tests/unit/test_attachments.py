"""Attachment names: sanitising and collision suffixes (daemon/board/attachments.py), on a real board."""

from __future__ import annotations

import pytest

from client.protocol import RPCError
from daemon.board import attachments
from daemon.board import db as boarddb
from daemon.board import tasks


@pytest.mark.parametrize("raw,clean", [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "_._etc_passwd"),
    ("a/b\\c.txt", "a_b_c.txt"),
    ("..hidden", "hidden"),
    ("x..y...z", "x.y.z"),
    ("tab\there\nnew\x00line\x7f.md", "tabherenewline.md"),
    ("zero\u200bwidth\u202eevil.txt", "zerowidthevil.txt"),
    ("  spaced .txt. ", "spaced .txt"),
    ("__init__.py", "__init__.py"),
    ("Cafe\u0301.txt", "Caf\u00e9.txt"),
])
def test_sanitize(raw, clean):
    assert attachments.sanitize(raw) == clean


@pytest.mark.parametrize("raw", ["", "..", "../..", "/", "\\", " . ", "\x01\x02", "\u200b", "._-"])
def test_a_name_that_sanitises_to_nothing_is_refused(raw):
    with pytest.raises(RPCError) as ei:
        attachments.sanitize(raw)
    assert ei.value.name == "invalid_params" and ei.value.data["field"] == "name"


def test_long_names_keep_their_extension_within_255_bytes():
    name = attachments.sanitize("é" * 300 + ".tar.gz")
    assert len(name.encode()) <= attachments.NAME_MAX and name.endswith(".tar.gz")
    second = attachments.with_suffix(name, 2)
    assert len(second.encode()) <= attachments.NAME_MAX and second.endswith(" (2).tar.gz")


def test_suffixes_go_before_the_extension():
    assert attachments.with_suffix("report.txt", 1) == "report.txt"
    assert attachments.with_suffix("report.txt", 2) == "report (2).txt"
    assert attachments.with_suffix("backup.tar.gz", 3) == "backup (3).tar.gz"
    assert attachments.with_suffix("README", 2) == "README (2)"


def test_unique_name_skips_rows_files_and_names_taken_in_the_same_commit(tmp_path):
    conn = boarddb.connect(tmp_path / "board.db")
    root = str(tmp_path / "attachments")
    with boarddb.write(conn):
        task, _ = tasks.create(conn, 1.0, title="t")
        attachments.insert(conn, task["id"], "a.txt", 1, "0" * 64, 1.0, "operator", None)
    (tmp_path / "attachments" / task["id"]).mkdir(parents=True)
    (tmp_path / "attachments" / task["id"] / "a (2).txt").write_text("orphan")
    assert attachments.unique_name(conn, root, task["id"], "a.txt") == "a (3).txt"
    assert attachments.unique_name(conn, root, task["id"], "a.txt", {"a (3).txt"}) == "a (4).txt"
    assert attachments.unique_name(conn, root, task["id"], "b.txt") == "b.txt"
    conn.close()
