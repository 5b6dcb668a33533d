"""Private directories and files: every path kanband creates or reuses is checked first.

Runs in: the supervisor (start-up: state, logs, runs, workspaces and socket
directories, the pidfile, the board) and the reaper (each spawn: logs, runs
and workspace directories, log and run files).

A directory kanband uses must be a real directory (not a symlink), owned by
our uid, with no group or other write permission: otherwise another local
user could swap files or sockets inside it (a socket dir under ``/tmp`` made
first by someone else, for instance). A directory that does not exist is
created with mode 0700; an unsafe one is refused with :class:`UnsafePath`,
whose message names the path, its owner and mode, and the fix. Files are
opened with :func:`open_private`: mode 0600 whatever the umask, tightened to
0600 if they already existed with a wider mode, and never through a symlink.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePath(Exception):
    """A directory or file kanband would use is not private to us; the message says why and how to fix it."""


def owner_name(uid: int) -> str:
    """``"uid 1000 (alice)"``: the uid and, when known, its user name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def describe(st: os.stat_result) -> str:
    """``"owner uid 0 (root), mode 0755"`` for a stat result."""
    return f"owner {owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def check_private_dir(path: str) -> None:
    """Refuse ``path`` unless it is a real directory, ours, without group or other write.

    Raises:
        UnsafePath: Naming the path, what is wrong, its owner and mode, and the fix.
        FileNotFoundError: ``path`` does not exist.
    """
    st = os.lstat(path)
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"unsafe directory {path}: it is a symlink to {os.readlink(path)} ({describe(st)}); "
                         f"kanband only uses real directories it owns: remove the link")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"unsafe directory {path}: it is not a directory ({describe(st)}); remove it")
    if st.st_uid != uid:
        raise UnsafePath(f"unsafe directory {path}: it belongs to someone else ({describe(st)}; you are "
                         f"{owner_name(uid)}); remove it (as its owner or root) or choose another path")
    if st.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if st.st_mode & bit)
        raise UnsafePath(f"unsafe directory {path}: writable by {who} ({describe(st)}); "
                         f"fix it with: chmod 700 {path}")


def ensure_private_dir(path: str | os.PathLike) -> str:
    """Create ``path`` (and missing parents) with mode 0700, or check the existing directory.

    Only the directories we create and ``path`` itself are checked: an existing
    parent such as ``/tmp`` or ``$HOME`` is not ours to judge.

    Returns:
        ``path`` as an absolute string.

    Raises:
        UnsafePath: ``path`` (or a parent we were about to use) is not private to us.
        OSError: A directory could not be created (read-only file system, no space...);
            ``filename`` names it.
    """
    path = os.path.abspath(os.fspath(path))
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # raced with someone: judge what is there now
            pass
        else:
            os.chmod(d, DIR_MODE)  # the umask may have taken bits away; never adds any
        check_private_dir(d)
    if not missing:
        check_private_dir(path)
    return path


def open_private(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` a file that is ours alone: created 0600, tightened to 0600 if it was wider.

    ``O_NOFOLLOW`` and ``O_CLOEXEC`` are always added.

    Returns:
        The open file descriptor.

    Raises:
        UnsafePath: The file is a symlink or belongs to another uid.
        OSError: The file could not be opened; ``filename`` names it.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"unsafe file {path}: it is a symlink; remove it") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise UnsafePath(f"unsafe file {path}: it belongs to someone else ({describe(st)}); remove it")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: str | os.PathLike) -> None:
    """Make an existing regular file of ours mode 0600 (no-op if missing, foreign, or already private)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, FILE_MODE)


def write_private(path: str | os.PathLike, data: bytes, sync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename), mode 0600.

    Raises:
        OSError: The file could not be written; ``filename`` names it.
    """
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        raise
    os.close(fd)
    os.replace(tmp, path)
