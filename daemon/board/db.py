"""Board database: connection settings, versioned migrations, transactions.

Runs in: any process that opens the board (the dispatcher as the single
writer; read-only helpers such as ``bench/`` builders). A connection is never
carried across a fork: each role opens its own after forking.

Durability: WAL journal with ``synchronous=FULL``, so an acknowledged commit
survives a kill -9 of any process. Every write is one ``BEGIN IMMEDIATE``
transaction (see :func:`write`).

Each board has an id (the ``meta`` table, :func:`board_id`); the checks
built on it live in :mod:`daemon.board.integrity`. The board and its ``-wal``
and ``-shm`` files are mode 0600 (SQLite gives the latter the board's mode).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from daemon import fsguard

BUSY_TIMEOUT_MS = 5000

# Each entry upgrades the schema from version i to i+1. Never edit a shipped
# migration; append a new one. Statements are split on ";" (executescript would
# commit mid-migration), so a migration must not contain ";" inside a statement.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema.
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        body TEXT NOT NULL DEFAULT '',
        assignee TEXT,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        tenant TEXT,
        created_by TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ready_at REAL,
        idempotency_key TEXT,
        max_runtime REAL,
        max_retries INTEGER,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        summary TEXT,
        block_reason TEXT,
        workspace_kind TEXT NOT NULL DEFAULT 'scratch',
        workspace_path TEXT,
        current_run TEXT,
        cooldown_until REAL,
        skip_noted TEXT
    );
    CREATE INDEX tasks_status ON tasks(status, priority DESC, created_at);
    CREATE INDEX tasks_dispatch ON tasks(status, assignee, priority DESC, created_at);
    CREATE UNIQUE INDEX tasks_idem ON tasks(idempotency_key)
        WHERE idempotency_key IS NOT NULL AND status != 'archived';
    CREATE TABLE links (
        parent TEXT NOT NULL REFERENCES tasks(id),
        child TEXT NOT NULL REFERENCES tasks(id),
        PRIMARY KEY (parent, child)
    ) WITHOUT ROWID;
    CREATE INDEX links_child ON links(child, parent);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks(id),
        profile TEXT,
        state TEXT NOT NULL,
        outcome TEXT,
        exit_code INTEGER,
        signal INTEGER,
        pid INTEGER,
        start_time REAL,
        worker_pid INTEGER,
        claimed_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        claim_expires REAL,
        last_heartbeat REAL,
        heartbeat_note TEXT,
        summary TEXT,
        metadata TEXT,
        error TEXT,
        kill_reason TEXT
    );
    CREATE INDEX runs_task ON runs(task_id, claimed_at);
    CREATE INDEX runs_active ON runs(state) WHERE state != 'ended';
    CREATE TABLE comments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks(id),
        author TEXT,
        body TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX comments_task ON comments(task_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT,
        run_id TEXT,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        at REAL NOT NULL
    );
    CREATE INDEX events_task ON events(task_id, id);
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        sink TEXT NOT NULL,
        task_id TEXT,
        descendants INTEGER NOT NULL DEFAULT 0,
        assignee TEXT,
        tenant TEXT,
        kinds TEXT,
        after_id INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX subscriptions_sink ON subscriptions(sink);
    CREATE TABLE sinks (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        updated_at REAL NOT NULL
    );
    """,
    # 1 -> 2: an archived task's subscriptions end at the archive event instead of vanishing, so a
    # lagging sink still delivers what happened before; they are pruned once the sink's cursor passes.
    """
    ALTER TABLE subscriptions ADD COLUMN until_id INTEGER;
    CREATE INDEX subscriptions_task ON subscriptions(sink, task_id);
    """,
    # 2 -> 3: index-only answers for the oldest ready task (stats) and the next cooldown (tick).
    """
    CREATE INDEX tasks_ready_at ON tasks(status, ready_at);
    CREATE INDEX tasks_cooldown ON tasks(status, cooldown_until);
    """,
    # 3 -> 4: why a task waits (rate_limit cooldown or retry backoff), per-profile state (a rate
    # limit belongs to the account behind a profile), and live runs by task and by profile.
    """
    ALTER TABLE tasks ADD COLUMN cooldown_kind TEXT;
    CREATE TABLE profile_state (
        profile TEXT PRIMARY KEY,
        cooldown_until REAL,
        cooldown_reason TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX runs_live_task ON runs(task_id) WHERE state != 'ended';
    CREATE INDEX runs_live_profile ON runs(profile) WHERE state != 'ended';
    """,
    # 4 -> 5: the request memory (board/requests.py): a worker verb retried through a daemon restart
    # is answered with its first answer instead of being applied twice. run_id is NULL for a
    # request_id sent without a run token.
    """
    CREATE TABLE requests (
        run_id TEXT,
        request_id TEXT NOT NULL,
        method TEXT NOT NULL,
        response TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE UNIQUE INDEX requests_key ON requests(request_id, coalesce(run_id, ''));
    CREATE INDEX requests_at ON requests(at);
    """,
    # 5 -> 6: the board's identity, also kept in <state>/board.id, so a missing, emptied or swapped
    # board file is noticed instead of silently becoming a new, empty board.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('board_id', lower(hex(randomblob(16))))
    """,
    # 6 -> 7: scheduled start and reopen. due_at: when a scheduled task becomes ready (epoch seconds,
    # UTC); parent_reopened: the ancestor whose reopen left this task's result (or run) standing.
    """
    ALTER TABLE tasks ADD COLUMN due_at REAL;
    ALTER TABLE tasks ADD COLUMN parent_reopened TEXT;
    CREATE INDEX tasks_due ON tasks(status, due_at);
    """,
    # 7 -> 8: attachments (board/attachments.py: one row per stored file, the row is the source of
    # truth) and housekeeping (daemon/gc.py): when gc collected an archived task's files, the
    # archived tasks still to collect (a partial index), and the last gc run.
    """
    CREATE TABLE attachments (
        task_id TEXT NOT NULL REFERENCES tasks(id),
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT,
        run_id TEXT,
        PRIMARY KEY (task_id, name)
    );
    ALTER TABLE tasks ADD COLUMN gc_at REAL;
    CREATE INDEX tasks_to_collect ON tasks(id) WHERE status = 'archived' AND gc_at IS NULL;
    CREATE TABLE housekeeping (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_run REAL,
        report TEXT
    );
    """,
    # 8 -> 9: verified completion and the review lane (board/acceptance.py). A task may carry its own
    # verify command (JSON argv; '[]' turns the profile's off), its turn limit and a review flag, and
    # counts rejected runs in a row. A run is 'work' or 'review'; a work run's verification state
    # (pending, running, passed, failed, cancelled), the argv it runs, its exit and its output file.
    """
    ALTER TABLE tasks ADD COLUMN verify_command TEXT;
    ALTER TABLE tasks ADD COLUMN verify_turns INTEGER;
    ALTER TABLE tasks ADD COLUMN review INTEGER;
    ALTER TABLE tasks ADD COLUMN verify_rejections INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'work';
    ALTER TABLE runs ADD COLUMN verify TEXT;
    ALTER TABLE runs ADD COLUMN verify_command TEXT;
    ALTER TABLE runs ADD COLUMN verify_exit INTEGER;
    ALTER TABLE runs ADD COLUMN verify_output TEXT;
    """,
    # 9 -> 10: operator controls kept across restarts (kanban pause/resume/parallel): a profile's
    # pause and cap override on its profile_state row; the global ones in a settings table. And a
    # task's own worktree repository and pinned branch (kanban create --repo/--branch).
    """
    ALTER TABLE profile_state ADD COLUMN paused_at REAL;
    ALTER TABLE profile_state ADD COLUMN cap_override INTEGER;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
    ALTER TABLE tasks ADD COLUMN workspace_repo TEXT;
    ALTER TABLE tasks ADD COLUMN workspace_branch TEXT
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


class BoardError(Exception):
    """The board file cannot be used as it is; the message names the file, the cause and the fix."""


class BoardCorrupt(BoardError):
    """The board file is damaged (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, or a failed quick_check)."""


def is_corrupt(exc: BaseException) -> bool:
    """True if ``exc`` is SQLite saying the file is damaged or is not a database at all."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    msg = str(exc)
    return "malformed" in msg or "not a database" in msg


def file_uri(path: str, mode: str) -> str:
    """A SQLite URI for ``path`` opened with ``mode`` (``ro``, ``rw``, ``rwc``)."""
    return f"file:{urllib.parse.quote(path, safe='/')}?mode={mode}"


def connect(path: str | Path, create: bool = True) -> sqlite3.Connection:
    """Open the board, apply pending migrations, and return the connection.

    The connection is in autocommit mode (``isolation_level=None``); use
    :func:`write` for every mutation. The file is created mode 0600 if
    ``create`` (an existing one, and its ``-wal``/``-shm``, are tightened to
    0600); without ``create`` a missing file is an error, never a new board.

    Raises:
        sqlite3.Error: SQLite could not open or migrate the file.
        RuntimeError: The database is newer than this kanband.
    """
    path = str(path)
    if path != ":memory:":
        if create:
            os.close(fsguard.open_private(path, os.O_RDWR | os.O_CREAT))
        for suffix in ("", "-wal", "-shm"):
            fsguard.tighten(path + suffix)
    target, uri = (file_uri(path, "rw"), True) if not create else (path, False)
    conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def board_id(conn: sqlite3.Connection) -> str | None:
    """The board's id from its ``meta`` table (``None`` before migration 4)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='board_id'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return row[0] if row else None


def version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Upgrade the schema in place to ``SCHEMA_VERSION``; returns the old version.

    Raises:
        RuntimeError: The database is newer than this kanband.
    """
    old = version(conn)
    if old > SCHEMA_VERSION:
        raise RuntimeError(f"board schema version {old} is newer than this kanband ({SCHEMA_VERSION})")
    for v in range(old, SCHEMA_VERSION):
        with write(conn):
            for stmt in MIGRATIONS[v].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={v + 1}")
    return old


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: commit on success, roll back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "req") -> Iterator[sqlite3.Connection]:
    """A nested unit inside an open transaction: one request of a group commit."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield conn
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
