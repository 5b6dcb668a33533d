"""The board file is checked, never replaced: identity, integrity, and a copy of a damaged board.

Runs in: the supervisor (:func:`open_checked` at start-up, :func:`init_board`
for ``kanband --init-board``) and the dispatcher (:func:`open_existing`).

Each board has an id, in its ``meta`` table and beside it in
``<state>/board.id``. At start-up a board that is missing or empty where one
existed, another board than the id file records, or a board whose ``PRAGMA
quick_check`` fails is an error naming the file (:class:`BoardError`,
:class:`BoardCorrupt`), never a fresh start; a damaged board is first copied,
byte for byte, to ``<board>.corrupt-<sha256[:16]>``. A new board is made only
in a new state dir (no id file) or by ``kanband --init-board``, which never
overwrites a non-empty board. Roles open the board with :func:`open_existing`,
which never creates one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat

from daemon import fsguard
from daemon.board.db import BoardCorrupt, BoardError, file_uri, board_id, connect, is_corrupt

__all__ = ["BoardCorrupt", "BoardError", "init_board", "keep_corrupt_copy", "open_checked", "open_existing",
           "quick_check", "read_board_id"]


def read_board_id(id_file: str) -> str | None:
    """The id recorded in ``<state>/board.id``; ``None`` if there is no such file.

    Raises:
        BoardError: The file exists but holds no id.
        OSError: The file could not be read.
    """
    try:
        with open(id_file) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if not text:
        raise BoardError(f"{id_file} is empty; it should hold the id of the board kanband uses: "
                         "if the board file is the right one, remove the id file and start again")
    return text


def _cause(path: str, exc: sqlite3.Error) -> str:
    """SQLite's message, plus what the file system says when SQLite only knows "disk I/O error"."""
    msg = str(exc)
    try:
        vfs = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return msg
    if vfs.f_flag & os.ST_RDONLY:
        return f"{msg} (the file system is read-only)"
    free = vfs.f_bavail * vfs.f_frsize
    if free < 1 << 20:
        return f"{msg} (the file system is full: {free // 1024} KiB free)"
    return msg


def _board_size(path: str) -> int | None:
    """The board file's size (``None`` if missing).

    Raises:
        BoardError: The path is not a regular file (a directory, for instance).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise BoardError(f"board {path} is {kind}; move it away or point board.path at the board file")
    return st.st_size


def keep_corrupt_copy(path: str) -> str:
    """Copy a damaged board (and its ``-wal``) beside it, named by the hash of their bytes.

    The same bytes always give the same name, so retries never multiply copies.

    Returns:
        The copy's path, ``<board>.corrupt-<sha256[:16]>`` (its WAL, if any, gets ``-wal`` appended).
    """
    parts = [p for p in (path, path + "-wal") if os.path.exists(p) and os.path.getsize(p) > 0]
    h = hashlib.sha256()
    for p in parts:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    copy = f"{path}.corrupt-{h.hexdigest()[:16]}"
    for src, dst in zip(parts, (copy, copy + "-wal")):
        if os.path.exists(dst):
            continue
        tmp = f"{dst}.tmp{os.getpid()}"
        fd = fsguard.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    return copy


def quick_check(path: str) -> None:
    """``PRAGMA quick_check`` the board through a read-only connection (it neither writes nor checkpoints).

    Raises:
        BoardCorrupt: The check failed; a copy was kept (:func:`keep_corrupt_copy`) and the message
            names the file, what failed and the copy.
        BoardError: The file could not be read for another reason.
    """
    try:
        conn = sqlite3.connect(file_uri(path, "ro"), uri=True, isolation_level=None)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise BoardError(f"board {path} cannot be read: {_cause(path, exc)}") from None
        problems = [str(exc)]
    if problems == ["ok"]:
        return
    what = "; ".join(" ".join(p.split()) for p in problems)
    try:
        kept = f"a copy of it as found is {keep_corrupt_copy(path)}"
    except OSError as exc:
        kept = f"no copy could be kept ({exc.strerror or exc})"
    raise BoardCorrupt(f"board {path} is damaged (quick_check: {what}); {kept}; restore the board from a "
                       "backup, or move it away and start a new one with `kanband --init-board`")


def _create(path: str, id_file: str) -> str:
    """A new board at ``path`` (missing or 0 bytes) and its id file. Returns the new board's id."""
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise BoardError(f"{wal} is left over from an earlier board and would be replayed into the new one; "
                         "move it away (or restore the board it belongs to)")
    conn = connect(path)
    try:
        bid = board_id(conn)
    finally:
        conn.close()
    fsguard.write_private(id_file, f"{bid}\n".encode(), sync=True)
    return bid


def open_checked(path: str, id_file: str) -> tuple[str, str]:
    """Start-up: check the board's file and identity, quick_check it, migrate it.

    A new board is made only when there is neither a board file (or it is 0
    bytes) nor an id file, i.e. in a new state dir. A board without an id file
    (made by an older kanband, or the id file was removed) is adopted: its id is
    written to ``id_file``.

    Returns:
        ``(board_id, how)``, ``how`` being ``created``, ``adopted`` or ``opened``.

    Raises:
        BoardError: The board is missing or empty where one existed, is not a
            file, is another board than ``id_file`` records, is newer than this
            kanband, or cannot be opened. The message names the file and the fix.
        BoardCorrupt: The board is damaged (a copy was kept).
        OSError: The id file could not be read or written.
    """
    expected = read_board_id(id_file)
    size = _board_size(path)
    if not size:
        if expected is not None:
            what = "missing" if size is None else "empty (0 bytes)"
            raise BoardError(f"board {path} is {what}, but {id_file} records board {expected} there: restore "
                             "the board from a backup, or start a new, empty board with `kanband --init-board`")
        try:
            return _create(path, id_file), "created"
        except sqlite3.Error as exc:
            raise BoardError(f"board {path} cannot be created: {_cause(path, exc)}") from None
    quick_check(path)
    try:
        conn = connect(path, create=False)
        try:
            bid = board_id(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise BoardCorrupt(f"board {path} is damaged: {exc}; restore it from a backup") from None
        raise BoardError(f"board {path} cannot be opened: {_cause(path, exc)}") from None
    except RuntimeError as exc:
        raise BoardError(f"board {path}: {exc}") from None
    if expected is None:
        fsguard.write_private(id_file, f"{bid}\n".encode(), sync=True)
        return bid, "adopted"
    if bid != expected:
        raise BoardError(f"board {path} is board {bid}, but {id_file} records board {expected}: if this is "
                         f"the board you want, remove {id_file}; otherwise put the right board back")
    return bid, "opened"


def init_board(path: str, id_file: str) -> str:
    """``kanband --init-board``: a new, empty board where there is none (missing or 0 bytes).

    Returns:
        The new board's id (also written to ``id_file``, replacing an old one).

    Raises:
        BoardError: A non-empty board file is there: it is never overwritten.
    """
    size = _board_size(path)
    if size:
        raise BoardError(f"board {path} exists and is not empty ({size} bytes); --init-board never replaces a "
                         "board: move it away first")
    try:
        return _create(path, id_file)
    except sqlite3.Error as exc:
        raise BoardError(f"board {path} cannot be created: {_cause(path, exc)}") from None


def open_existing(path: str, id_file: str) -> sqlite3.Connection:
    """A role's connection to the board the supervisor checked: never creates one.

    Raises:
        BoardCorrupt: SQLite says the file is damaged.
        BoardError: The board is missing, empty, another board, or cannot be opened.
    """
    size = _board_size(path)
    if not size:
        raise BoardError(f"board {path} is {'missing' if size is None else 'empty (0 bytes)'}; it was there at "
                         "start-up: restore it from a backup")
    try:
        conn = connect(path, create=False)
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise BoardCorrupt(f"board {path} is damaged: {exc}") from None
        raise BoardError(f"board {path} cannot be opened: {_cause(path, exc)}") from None
    try:
        expected = read_board_id(id_file)
        bid = board_id(conn)
    except BaseException:
        conn.close()
        raise
    if expected is not None and bid != expected:
        conn.close()
        raise BoardError(f"board {path} is board {bid}, but {id_file} records board {expected}: the file was "
                         "replaced while kanband ran")
    return conn

