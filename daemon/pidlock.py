"""The board lock and the pidfile: one daemon per state dir.

Runs in: the supervisor, before it binds the socket or forks anything.

The lock is an ``flock`` on ``<state>/kanband.lock``, held for the daemon's
life (roles close their inherited copy right after the fork, so a dead
supervisor frees it at once). The pidfile ``<state>/kanband.pid`` is written
atomically (temp file + rename) and only ever names the lock holder: a
pidfile left by a dead daemon is stale by definition and is replaced. It is
removed on exit only if it still holds our pid.
"""

from __future__ import annotations

import fcntl
import os

import structlog

log = structlog.get_logger()


class AlreadyRunning(Exception):
    """Another kanband holds the board's lock."""


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def acquire(state_dir: str, pidfile: str) -> int:
    """Take the lock, then write the pidfile. Returns the lock fd (keep it open).

    Raises:
        AlreadyRunning: Naming the running daemon's pid.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "kanband.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pidfile(pidfile)
        raise AlreadyRunning(f"kanband is already running on {state_dir} (pid {pid if pid else 'unknown'})") \
            from None
    old = read_pidfile(pidfile)
    if old and old != os.getpid():
        log.warning("pidfile.stale_replaced", path=pidfile, old_pid=old)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, pidfile)
    return fd


def release(pidfile: str, fd: int | None) -> None:
    """Remove the pidfile if it is still ours, then drop the lock."""
    if read_pidfile(pidfile) == os.getpid():
        os.unlink(pidfile)
    if fd is not None:
        os.close(fd)
