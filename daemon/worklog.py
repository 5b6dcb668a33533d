"""Worker logs: rotation, run separators, and the reads behind ``task.log``.

Runs in: the reaper (rotation, the separator at a run's start, written by the
spawner) and the dispatcher (the separator at a run's end, and every read).

A task's log is ``<logs>/<task>.log``; every run of the task appends to it.
Copy-truncate rotation keeps one old generation, ``<task>.log.1``: the worker's
``O_APPEND`` descriptor keeps writing to the same file. Rotation holds an
exclusive ``flock`` on the log while it copies to a temp file, renames that over
``.log.1`` and truncates the log; readers take a shared lock, so a reader sees
the log either before or after a rotation, never half-way. Each rotation gives
``.log.1`` a new inode and mtime: their pair is the *rotation token*, which a
follower's cursor carries next to its byte offset.

Each run is framed by two separator lines, so ``kanban log`` can tell runs
apart and ``--run`` can cut one out::

    ===== run r_0123456789ab started 2025-01-31 14:00:03 (profile echo-worker) =====
    ...what the worker printed...
    ===== run r_0123456789ab ended 2025-01-31 14:00:05: crashed, exit 1, after 2.1s =====

The start line is written by the spawner once the log is open, before the fork;
the end line by the dispatcher when it records the run's end (``run.exited``),
which comes only after no process of the run is alive, and before the task can
be claimed again: the lines of two runs never interleave.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import time
from typing import Any

from daemon import fsguard

SEPARATOR = "===== run "
#: Largest answer to one ``task.log`` read, in bytes of log.
READ_CAP = 1 << 20
#: Largest chunk a follower gets per call (it calls again at once while ``more``).
FOLLOW_CAP = 256 << 10


def log_path(logs_dir: str, task_id: str) -> str:
    return os.path.join(logs_dir, f"{task_id}.log")


# ---- separators -------------------------------------------------------------------------


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def start_line(run_id: str, profile: str | None, now: float) -> str:
    """The line that opens a run's part of the log."""
    return f"{SEPARATOR}{run_id} started {_clock(now)} (profile {profile or '-'}) =====\n"


def _elapsed(sec: float) -> str:
    if sec < 120:
        return f"{sec:.1f}s"
    if sec < 7200:
        return f"{sec / 60:.1f}m"
    return f"{sec / 3600:.1f}h"


def end_line(run: dict[str, Any]) -> str:
    """The line that closes a run's part of the log: outcome, exit code or signal, elapsed time.

    Args:
        run: The ended run (``id``, ``outcome``, ``exit_code``, ``signal``, ``started_at``,
            ``ended_at``, ``error``).
    """
    from daemon.board.runs import describe_exit  # local: keeps this module light for the reaper
    parts = [run["outcome"] or "ended"]
    if run.get("exit_code") is not None or run.get("signal"):
        parts.append(describe_exit(run.get("exit_code"), run.get("signal")).replace("exit code", "exit"))
    elif run["outcome"] in ("spawn_failed", "lost") and run.get("error"):
        parts.append(run["error"].splitlines()[0][:200])
    if run.get("started_at") and run.get("ended_at"):
        parts.append(f"after {_elapsed(max(0.0, run['ended_at'] - run['started_at']))}")
    return f"{SEPARATOR}{run['id']} ended {_clock(run.get('ended_at') or time.time())}: {', '.join(parts)} =====\n"


def append_line(path: str, line: str) -> bool:
    """Append one line to an existing log (never creates one); ``False`` if there is none or it is unsafe."""
    try:
        fd = fsguard.open_private(path, os.O_WRONLY | os.O_APPEND)
    except (OSError, fsguard.UnsafePath):
        return False
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# ---- rotation -----------------------------------------------------------------------------


def rotate(path: str, max_bytes: int) -> bool:
    """Copy-truncate ``path`` to ``path.1`` (0600) if it grew past ``max_bytes``; ``True`` if it did.

    Under an exclusive ``flock`` on the log (readers take a shared one): copy to a temp
    file, rename it over ``.1`` (a new inode: a new rotation token), truncate the log.
    """
    try:
        if os.path.getsize(path) <= max_bytes:
            return False
        fd = fsguard.open_private(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size <= max_bytes:
            return False
        tmp = f"{path}.1.tmp"
        out = fsguard.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            pos = 0
            while True:
                chunk = os.pread(fd, 1 << 20, pos)
                if not chunk:
                    break
                os.write(out, chunk)
                pos += len(chunk)
        finally:
            os.close(out)
        os.replace(tmp, f"{path}.1")
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)  # releases the lock


def rotation_token(path: str) -> str:
    """Identifies the current ``path.1``: ``"INODE.MTIME_NS"``, or ``""`` when there is none."""
    try:
        st = os.stat(f"{path}.1")
    except FileNotFoundError:
        return ""
    return f"{st.st_ino}.{st.st_mtime_ns}"


# ---- reads --------------------------------------------------------------------------------


def _decode(data: bytes, final: bool) -> tuple[str, int]:
    """UTF-8 text of ``data`` (bad bytes replaced) and how many bytes it used: an incomplete
    character at the end is left for the next read unless ``final``."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    text = dec.decode(data, final)
    return text, len(data) - len(dec.getstate()[0])


class _Locked:
    """The log opened read-only under a shared ``flock`` (no rotation can run meanwhile)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Locked:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return self
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    @property
    def exists(self) -> bool:
        return self.fd >= 0

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd >= 0 else 0

    def read(self, start: int, n: int) -> bytes:
        return os.pread(self.fd, n, start) if self.fd >= 0 and n > 0 else b""


def _read_old(path: str, start: int, n: int) -> bytes:
    try:
        with open(f"{path}.1", "rb") as f:
            f.seek(start)
            return f.read(n)
    except FileNotFoundError:
        return b""


def _old_size(path: str) -> int:
    try:
        return os.path.getsize(f"{path}.1")
    except FileNotFoundError:
        return 0


def read_follow(path: str, offset: int, token: str) -> dict[str, Any]:
    """The bytes after a follower's cursor ``(offset, token)``, at most ``FOLLOW_CAP``.

    If the rotation token changed, the log was rotated since the cursor was made: the
    rest is at ``offset`` in ``.log.1``, then the log from 0. A follower that falls
    behind by more than one rotation (more than ``logs.worker_log_max`` between two
    calls) misses what the rotation in between dropped: ``gap`` says so.

    Returns:
        ``{text, offset, rotation, more, gap, size, exists}``.
    """
    gap = False
    with _Locked(path) as log:
        current = rotation_token(path)
        size = log.size()
        if token != current:  # rotated since the cursor: finish the old generation first
            old = _old_size(path)
            if offset > old:
                offset, gap = old, True
            data = _read_old(path, offset, FOLLOW_CAP)
            text, used = _decode(data, final=offset + len(data) >= old)
            if offset + used < old:
                return {"text": text, "offset": offset + used, "rotation": token, "more": True, "gap": gap,
                        "size": size, "exists": log.exists}
            rest = log.read(0, FOLLOW_CAP - len(data))
            more_text, more_used = _decode(rest, final=False)
            return {"text": text + more_text, "offset": more_used, "rotation": current,
                    "more": more_used < size, "gap": gap, "size": size, "exists": log.exists}
        if offset > size:  # truncated by someone else: start over
            offset, gap = 0, True
        data = log.read(offset, FOLLOW_CAP)
        text, used = _decode(data, final=False)
        return {"text": text, "offset": offset + used, "rotation": current, "more": offset + used < size and
                used > 0, "gap": gap, "size": size, "exists": log.exists}


def read_tail(path: str, tail_bytes: int | None = None, lines: int | None = None) -> dict[str, Any]:
    """The end of the log: the last ``tail_bytes`` bytes, the last ``lines`` lines (reaching
    into ``.log.1`` when the current log holds fewer), or else the last ``READ_CAP`` bytes.

    Returns:
        ``{text, size, truncated, exists, offset, rotation}``: ``offset``/``rotation`` is the
        cursor a follower continues from (the end of the current log).
    """
    with _Locked(path) as log:
        token = rotation_token(path)
        size = log.size()
        if lines is not None:
            want = min(size, READ_CAP)
            data = log.read(size - want, want)
            truncated = size > want
            if data.count(b"\n") <= lines and not truncated:
                old = _old_size(path)
                take = min(old, READ_CAP - len(data))
                data = _read_old(path, old - take, take) + data
                truncated = old > take
            body = data[:-1] if data.endswith(b"\n") else data
            parts = body.split(b"\n")
            if lines == 0:
                parts = []
            elif len(parts) > lines:
                parts, truncated = parts[-lines:], True
            data = b"\n".join(parts) + (b"\n" if parts and data.endswith(b"\n") else b"")
        else:
            want = min(size, READ_CAP if tail_bytes is None else tail_bytes)
            data = log.read(size - want, want)
            truncated = size > want
        text, _ = _decode(data, final=True)
        return {"text": text, "size": size, "truncated": truncated, "exists": log.exists, "offset": size,
                "rotation": token}


def read_run(path: str, run_id: str) -> dict[str, Any] | None:
    """One run's part of the log (``.log.1`` and the log read as one), separator lines
    included; ``None`` if its start line is not there (rotated away, or it never started)."""
    with _Locked(path) as log:
        token = rotation_token(path)
        size = log.size()
        old = _old_size(path)
        data = _read_old(path, max(0, old - 8 * READ_CAP), 8 * READ_CAP) + log.read(max(0, size - 8 * READ_CAP),
                                                                                    8 * READ_CAP)
    start_mark = f"{SEPARATOR}{run_id} started".encode()
    at = data.rfind(b"\n" + start_mark)
    at = at + 1 if at >= 0 else (0 if data.startswith(start_mark) else -1)
    if at < 0:
        return None
    end = data.find(b"\n" + SEPARATOR.encode(), at + len(start_mark))
    if end >= 0:
        nl = data.find(b"\n", end + 1)
        line = data[end + 1: nl if nl >= 0 else len(data)]
        stop = (nl + 1 if nl >= 0 else len(data)) if line.startswith(f"{SEPARATOR}{run_id} ended".encode()) \
            else end + 1
    else:
        stop = len(data)
    section = data[at:stop]
    truncated = len(section) > READ_CAP
    text, _ = _decode(section[-READ_CAP:], final=True)
    return {"text": text, "size": size, "truncated": truncated, "exists": True, "offset": size, "rotation": token}
