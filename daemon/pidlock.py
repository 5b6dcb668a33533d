"""The board lock and the pidfile: one daemon per state dir.

Runs in: the supervisor, before it binds the socket or forks anything.

The lock is an ``flock`` on ``<state>/kanband.lock``, held for the daemon's
life (roles close their inherited copy right after the fork, so a dead
supervisor frees it at once). The pidfile ``<state>/kanband.pid`` is written
atomically (temp file + rename) and only ever names the lock holder: a
pidfile left by a dead daemon is stale by definition and is replaced. It is
removed on exit only if it still holds our pid.

The state dir is checked by :func:`daemon.fsguard.ensure_private_dir`, and
both files are mode 0600 whatever the umask.
"""

from __future__ import annotations

import fcntl
import os

import structlog

from daemon import fsguard

log = structlog.get_logger()


class AlreadyRunning(Exception):
    """Another kanband holds the board's lock."""


def read_pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def lock(state_dir: str, pidfile: str) -> int:
    """Check (or create) the state dir and take the board lock. Returns the lock fd (keep it open).

    Raises:
        AlreadyRunning: Naming the running daemon's pid.
        fsguard.UnsafePath: The state dir or the lock file is not private to us.
        OSError: The lock file could not be opened (``filename`` names it).
    """
    fsguard.ensure_private_dir(state_dir)
    fd = fsguard.open_private(os.path.join(state_dir, "kanband.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = read_pidfile(pidfile)
        raise AlreadyRunning(f"kanband is already running on {state_dir} (pid {pid if pid else 'unknown'})") \
            from None
    return fd


def acquire(state_dir: str, pidfile: str) -> int:
    """Take the lock (:func:`lock`), then write the pidfile. Returns the lock fd (keep it open).

    Raises:
        AlreadyRunning: Naming the running daemon's pid.
        fsguard.UnsafePath: The state dir or a file in it is not private to us.
        OSError: The lock or the pidfile could not be written (``filename`` names it).
    """
    fd = lock(state_dir, pidfile)
    try:
        old = read_pidfile(pidfile)
        if old and old != os.getpid():
            log.warning("pidfile.stale_replaced", path=pidfile, old_pid=old)
        fsguard.write_private(pidfile, f"{os.getpid()}\n".encode(), sync=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(pidfile: str, fd: int | None) -> None:
    """Remove the pidfile if it is still ours, then drop the lock."""
    if read_pidfile(pidfile) == os.getpid():
        os.unlink(pidfile)
    if fd is not None:
        os.close(fd)
