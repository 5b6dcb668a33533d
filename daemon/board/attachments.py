"""Attachments on the board: names, rows and listings.

Runs in: the dispatcher (inside its transaction) and, for :func:`sanitize`,
anywhere. Pure functions over an open connection, like the rest of the
kernel; the bytes themselves are moved by :mod:`daemon.attachstore`.

An attachment is a file stored at ``<state>/attachments/<task>/<name>`` (mode
0600, in a 0700 directory) and a row in ``attachments`` keyed by
``(task_id, name)`` that records its size and SHA-256. The row is the source
of truth: a file without a row (a commit that failed after the rename) is
removed by ``kanban gc`` with the task's other files.

Names are sanitised before anything touches the disk (:func:`sanitize`): no
path separators, no ``..``, no control characters, no leading dot, at most
``NAME_MAX`` bytes. A name already taken on the task is suffixed
``name (2).ext``, ``name (3).ext``, ... (:func:`unique_name`).
"""

from __future__ import annotations

import os
import sqlite3
import unicodedata
from typing import Any

from client.protocol import RPCError

#: Bytes a stored name may take (the usual file-system limit for one path component).
NAME_MAX = 255
#: The directory under the state dir that holds every task's attachments.
DIRNAME = "attachments"


def root(state_dir: str) -> str:
    """``<state>/attachments``: the managed root of every task's attachments."""
    return os.path.join(state_dir, DIRNAME)


def task_dir(att_root: str, task_id: str) -> str:
    """``<state>/attachments/<task>``."""
    return os.path.join(att_root, task_id)


def sanitize(name: str) -> str:
    """The name an attachment is stored under.

    Control and format characters are dropped; ``/`` and ``\\`` become ``_``;
    runs of dots collapse to one (so no ``..``); leading and trailing dots
    and spaces are stripped; the result is cut to ``NAME_MAX`` UTF-8 bytes,
    keeping the extension. A name made only of ``_``, ``-``, dots and spaces
    (what ``/`` or ``..`` leave) is refused.

    Args:
        name: What the client proposed (usually the file's base name, or ``--name``).

    Returns:
        A non-empty single path component.

    Raises:
        RPCError: ``invalid_params`` (field ``name``) when nothing is left.
    """
    text = unicodedata.normalize("NFC", name)
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    text = text.replace("/", "_").replace("\\", "_")
    while ".." in text:
        text = text.replace("..", ".")
    text = text.lstrip(" .").rstrip(" .")
    if not text.strip(" ._-"):
        raise RPCError("invalid_params", f"attachment name {name!r} is empty once sanitised (no separators, "
                       "control characters or leading dots are kept); pass --name", field="name", value=name)
    return _fit(text, NAME_MAX)


def _split(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    if stem.endswith(".tar"):  # report.tar.gz -> ("report", ".tar.gz")
        stem, ext = stem[:-4], ".tar" + ext
    if not stem:
        return name, ""
    return stem, ext


def _fit(name: str, limit: int, suffix: str = "") -> str:
    """``stem + suffix + ext`` cut to ``limit`` UTF-8 bytes, the stem shortened first."""
    stem, ext = _split(name)
    if len(ext.encode()) > limit // 2:
        stem, ext = name, ""
    room = limit - len(suffix.encode()) - len(ext.encode())
    while len(stem.encode()) > room:
        stem = stem[:-1]
    return stem + suffix + ext


def with_suffix(name: str, n: int) -> str:
    """``report.txt`` -> ``report (2).txt`` for ``n`` = 2; ``n`` = 1 is the name itself."""
    return name if n <= 1 else _fit(name, NAME_MAX, f" ({n})")


def unique_name(conn: sqlite3.Connection, att_root: str, task_id: str, name: str,
                taken: set[str] | None = None) -> str:
    """The first of ``name``, ``name (2)``, ... that no row of the task, no file in its
    directory and nothing in ``taken`` (names chosen earlier in the same commit) uses."""
    taken = taken or set()
    base = task_dir(att_root, task_id)
    for n in range(1, 10000):
        cand = with_suffix(name, n)
        if cand in taken or os.path.lexists(os.path.join(base, cand)):
            continue
        if conn.execute("SELECT 1 FROM attachments WHERE task_id=? AND name=?", (task_id, cand)).fetchone():
            continue
        return cand
    raise RPCError("conflict", f"task {task_id} has too many attachments named like {name!r}", id=task_id)


def total_size(conn: sqlite3.Connection, task_id: str) -> int:
    """Bytes of the task's stored attachments."""
    return conn.execute("SELECT coalesce(sum(size), 0) FROM attachments WHERE task_id=?", (task_id,)).fetchone()[0]


def insert(conn: sqlite3.Connection, task_id: str, name: str, size: int, sha256: str, now: float,
           by: str | None, run: str | None) -> None:
    conn.execute("INSERT INTO attachments (task_id, name, size, sha256, created_at, created_by, run_id) "
                 "VALUES (?,?,?,?,?,?,?)", (task_id, name, size, sha256, now, by, run))


def get(conn: sqlite3.Connection, task_id: str, name: str) -> sqlite3.Row:
    """The row, or ``not_found`` naming the task and the name."""
    row = conn.execute("SELECT name, size, sha256, created_at, created_by, run_id FROM attachments "
                       "WHERE task_id=? AND name=?", (task_id, name)).fetchone()
    if row is None:
        raise RPCError("not_found", f"task {task_id} has no attachment {name!r}", id=task_id, attachment=name)
    return row


def delete_rows(conn: sqlite3.Connection, task_id: str, name: str | None = None) -> int:
    """Delete one attachment row (or all of the task's); returns how many went."""
    if name is None:
        return conn.execute("DELETE FROM attachments WHERE task_id=?", (task_id,)).rowcount
    return conn.execute("DELETE FROM attachments WHERE task_id=? AND name=?", (task_id, name)).rowcount


def listing(conn: sqlite3.Connection, state_dir: str, task_id: str) -> list[dict[str, Any]]:
    """A task's attachments in the order they were attached: what ``task.attachments`` and ``kanban context`` show.

    Args:
        conn: The board.
        state_dir: The daemon's state dir (``paths["state_dir"]``).
        task_id: The task (not checked: an unknown task has no attachments).

    Returns:
        ``[{name, size, sha256, path, created_at, created_by, run}]``: ``size`` in
        bytes, ``sha256`` hex, ``path`` the stored original (read it, never write
        it; a worker gets its own copy in ``$KANBAN_ATTACHMENTS``), ``created_by``
        ``"operator"`` or ``"worker"``, ``run`` the attaching run or ``None``.
    """
    base = task_dir(root(state_dir), task_id)
    return [{"name": r["name"], "size": r["size"], "sha256": r["sha256"], "path": os.path.join(base, r["name"]),
             "created_at": r["created_at"], "created_by": r["created_by"], "run": r["run_id"]}
            for r in conn.execute("SELECT name, size, sha256, created_at, created_by, run_id FROM attachments "
                                  "WHERE task_id=? ORDER BY rowid", (task_id,))]
