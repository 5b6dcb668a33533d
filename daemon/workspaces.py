"""Workspaces: create a task's working directory, and remove it without ever following a symlink.

Runs in: the reaper (``prepare_workspace`` before a spawn, ``cleanup_workspace``
when a task is done or archived), and in a short-lived purge child that the
reaper starts (``python -m daemon.workspaces purge ROOT [NAME]``), so that
deleting a large tree never blocks the reaper's loop.

A scratch workspace is exactly ``<root>/<task-id>``. Workers can write to the
root (it is the parent of their cwd), so nothing found there is trusted:

1. ``retire`` opens the root and renames the entry ``<task-id>`` (looked up
   relative to the root's descriptor, never through a path that could be
   swapped) into ``<root>/.trash/`` with one ``rename``. The task's path is
   free at once, and what was moved can no longer be reached by its old name.
   A symlink or other non-directory in the task's place is unlinked, never
   followed.
2. ``purge`` deletes what is in the trash by descriptor: every directory is
   opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's
   descriptor, every entry is unlinked with ``dir_fd``. A symlink anywhere in
   the tree is unlinked as a name; its target is never touched. It does not
   cross into another filesystem (a mount point is left, and reported).

A trash entry left by a crash is purged the next time a reaper starts.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from daemon import fsguard

TRASH = ".trash"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceError(OSError):
    """A workspace cannot be used; ``strerror`` says why in one line."""

    def __init__(self, message: str, code: int = errno.EPERM) -> None:
        super().__init__(code, message)


def strictly_inside(path: str, root: str) -> bool:
    """True if ``path`` resolves (symlinks included) to somewhere strictly below ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real != real_root and os.path.commonpath([real, real_root]) == real_root


def scratch_name(path: str, root: str) -> str | None:
    """The entry name of a scratch workspace, if ``path`` is lexically ``<root>/<name>``; else None.

    ``name`` must be one plain path component that does not start with a dot
    (so it is never ``.``, ``..`` or the trash).
    """
    path, root = os.path.abspath(path), os.path.abspath(root)
    name = os.path.basename(path)
    if os.path.dirname(path) != root or not name or name.startswith(".") or "\0" in name:
        return None
    return name


def _open_root(root: str, create: bool) -> int:
    """The workspaces root as a directory descriptor. The root itself is the operator's config,
    so a symlink *to* it is honoured; nothing below it is."""
    if create:
        fsguard.ensure_private_dir(root)  # ours, 0700, not writable by anyone else: or refused
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_dir(dir_fd: int, name: str) -> int:
    """Open ``name`` below ``dir_fd`` as a directory, never through a symlink, and make it ours
    to empty (owner rwx): a worker may leave read-only directories behind (Go's module cache does).

    Raises:
        OSError: ``ELOOP``/``ENOTDIR`` if it is not a directory, ``ENOENT`` if it is gone.
    """
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # No read or search permission: chmod it through an O_PATH handle, which never follows a
        # symlink either (chmod on /proc/self/fd/N acts on the handle's own inode).
        pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{pfd}", 0o700)
        finally:
            os.close(pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o700 != 0o700:
        os.fchmod(fd, mode | 0o700)
    return fd


def _unlink(dir_fd: int, name: str) -> int:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return 1
    except FileNotFoundError:
        return 0


def remove_tree(dir_fd: int, name: str) -> tuple[int, list[str]]:
    """Delete ``name`` below ``dir_fd`` and everything under it, by descriptor.

    Never follows a symlink: a symlink is unlinked as a name. Iterative, so a deep tree
    costs one open descriptor per level and no Python recursion. Does not descend into
    another filesystem.

    Returns:
        ``(entries removed, problems)``; each problem is one line naming the entry.
    """
    removed, problems = 0, []
    try:
        top = _open_dir(dir_fd, name)
    except FileNotFoundError:
        return 0, []
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return _unlink(dir_fd, name), []
        return 0, [f"{name}: {exc.strerror}"]
    dev = os.fstat(top).st_dev
    # each frame: [parent fd, name in parent, own fd, subdirectories still to visit or None]
    frames: list[list[Any]] = [[dir_fd, name, top, None]]
    while frames:
        frame = frames[-1]
        parent, here, fd, todo = frame
        if todo is None:
            todo = frame[3] = []
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                todo.append(entry.name)
                            else:
                                removed += _unlink(fd, entry.name)
                        except OSError as exc:
                            problems.append(f"{here}/{entry.name}: {exc.strerror}")
            except OSError as exc:
                problems.append(f"{here}: {exc.strerror}")
        if todo:
            sub = todo.pop()
            try:
                child = _open_dir(fd, sub)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a non-directory meanwhile
                    try:
                        removed += _unlink(fd, sub)
                    except OSError as exc2:
                        problems.append(f"{here}/{sub}: {exc2.strerror}")
                else:
                    problems.append(f"{here}/{sub}: {exc.strerror}")
                continue
            if os.fstat(child).st_dev != dev:
                os.close(child)
                problems.append(f"{here}/{sub}: a mount point; not descending into another filesystem")
                continue
            frames.append([fd, sub, child, None])
            continue
        frames.pop()
        os.close(fd)
        try:
            os.rmdir(here, dir_fd=parent)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{here}: {exc.strerror}")
    return removed, problems


def _trash_fd(root_fd: int) -> int:
    """``<root>/.trash`` as a descriptor, created if missing. Anything else under that name
    (a symlink a worker planted, a file) is unlinked and replaced, never followed."""
    for _ in range(5):
        try:
            os.mkdir(TRASH, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
        try:
            return os.open(TRASH, _DIR_FLAGS, dir_fd=root_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise
            if exc.errno != errno.ENOENT:
                _unlink(root_fd, TRASH)
    raise WorkspaceError(f"cannot set up {TRASH}: it keeps being replaced", errno.EAGAIN)


def retire(root: str, name: str) -> tuple[str, str | None]:
    """Take ``<root>/<name>`` out of the way with one rename into ``<root>/.trash/``.

    Returns:
        ``(result, trash_name)``: ``("absent", None)``; ``("removed", None)`` for a plain
        file; ``("refused: …", None)`` for a symlink (the link is unlinked, its target left
        alone); ``("removed", trash_name)`` for a directory, which ``purge`` then deletes.

    Raises:
        OSError: The root or the trash cannot be opened, or the rename failed.
    """
    root_fd = _open_root(root, create=False)
    try:
        for _ in range(5):  # the entry may change type under us; look again
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                return "absent", None
            if not stat.S_ISDIR(st.st_mode):
                try:
                    _unlink(root_fd, name)
                except IsADirectoryError:  # swapped for a directory since the stat
                    continue
                if stat.S_ISLNK(st.st_mode):
                    return (f"refused: {os.path.join(root, name)} is a symlink, not a directory; "
                            "unlinked the link and left its target alone"), None
                return "removed", None
            trash_fd = _trash_fd(root_fd)
            try:
                trash_name = f"{name}.{secrets.token_hex(4)}"
                try:
                    os.rename(name, trash_name, src_dir_fd=root_fd, dst_dir_fd=trash_fd)
                except FileNotFoundError:
                    continue
                except NotADirectoryError:  # the trash entry was swapped; try again
                    continue
                # Whatever was renamed (even if it was swapped for a symlink after the stat) is now
                # only reachable through the trash, and purge never follows a symlink.
                return "removed", trash_name
            finally:
                os.close(trash_fd)
        raise WorkspaceError(f"{os.path.join(root, name)} keeps changing; left in place", errno.EAGAIN)
    finally:
        os.close(root_fd)


def purge(root: str, name: str | None = None) -> tuple[int, list[str]]:
    """Delete ``<root>/.trash/<name>`` (or everything in the trash) by descriptor.

    Returns:
        ``(entries removed, problems)``; what could not be removed stays in the trash
        for the next purge.
    """
    try:
        root_fd = _open_root(root, create=False)
    except FileNotFoundError:
        return 0, []
    try:
        try:
            trash_fd = os.open(TRASH, _DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            return 0, []
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return _unlink(root_fd, TRASH), []
            raise
        try:
            names = [name] if name is not None else sorted(os.listdir(trash_fd))
            removed, problems = 0, []
            for n in names:
                r, p = remove_tree(trash_fd, n)
                removed += r
                problems += p
            return removed, problems
        finally:
            os.close(trash_fd)
    finally:
        os.close(root_fd)


def trash_has_entries(root: str) -> bool:
    """True if ``<root>/.trash`` holds something (a purge was interrupted)."""
    try:
        with os.scandir(os.path.join(root, TRASH)) as it:
            return any(True for _ in it)
    except OSError:
        return False


def start_purge(root: str, name: str | None = None) -> subprocess.Popen:
    """Start ``python -m daemon.workspaces purge ROOT [NAME]`` in the background; the caller reaps it."""
    argv = [sys.executable, "-m", "daemon.workspaces", "purge", root] + ([name] if name else [])
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True,
                            cwd="/", env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})


def prepare_workspace(ws: dict[str, Any], task_id: str) -> str:
    """Create (or check) the run's working directory; returns its path.

    Args:
        ws: ``{kind, path, root, repo, branch}`` from the spawn spec.
        task_id: The task, for the worktree branch name when ``branch`` does not pin one.

    Raises:
        WorkspaceError: The workspace is unusable (a scratch path that is not ``<root>/<name>``
            or not a real directory, a missing ``dir:``, a failed ``git worktree add``).
        OSError: The filesystem refused.
    """
    kind, path = ws["kind"], ws["path"]
    if kind == "scratch":
        name = scratch_name(path, ws["root"])
        if name is None:
            raise WorkspaceError(f"scratch workspace {path} is not an entry of {ws['root']}")
        root_fd = _open_root(ws["root"], create=True)
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=root_fd)
            except FileExistsError:
                pass
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        finally:
            os.close(root_fd)
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise WorkspaceError(f"scratch workspace {path} is {what}", errno.ENOTDIR)
        return path
    if kind == "dir":
        if not os.path.isdir(path):
            raise WorkspaceError(f"workspace dir {path} does not exist", errno.ENOENT)
        return path
    if kind == "worktree":
        repo = ws.get("repo")
        if not repo:
            raise WorkspaceError("worktree workspace needs workspaces.repo in the config")
        if os.path.islink(path):
            raise WorkspaceError(f"worktree workspace {path} is a symlink", errno.ENOTDIR)
        if not os.path.isdir(path):
            fsguard.ensure_private_dir(ws["root"])
            res = subprocess.run(["git", "-C", repo, "worktree", "add", *worktree_add_args(repo, ws, task_id, path)],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise WorkspaceError(f"git worktree add failed: {res.stderr.strip()[-300:]}")
        return path
    raise WorkspaceError(f"unknown workspace kind {kind!r}")


def worktree_add_args(repo: str, ws: dict[str, Any], task_id: str, path: str) -> list[str]:
    """``git worktree add`` arguments: ``-B wt/<task> PATH`` by default (made or reset at the
    repository's HEAD); a pinned ``branch`` is checked out as it is if it exists (never reset: its
    commits are someone's work), or created with ``-b`` at HEAD."""
    branch = ws.get("branch")
    if not branch:
        return ["-B", f"wt/{task_id}", "--", path]
    exists = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                            capture_output=True, stdin=subprocess.DEVNULL).returncode == 0
    return ["--", path, branch] if exists else ["-b", branch, "--", path]


def _purge_now(root: str, name: str) -> None:
    removed, problems = purge(root, name)
    if problems:
        raise WorkspaceError(f"{len(problems)} entries left in {os.path.join(root, TRASH)}: {problems[0]}")


def cleanup_workspace(kind: str, path: str, root: str, repo: str | None,
                      purger: Callable[[str, str], None] = _purge_now) -> str:
    """Remove a finished task's workspace if it is ours to remove; returns what happened.

    Args:
        kind: ``scratch``, ``worktree`` or ``dir`` (never removed).
        path: The workspace path recorded at claim time.
        root: The managed workspaces root.
        repo: The git repository of worktree workspaces.
        purger: Called as ``purger(root, trash_name)`` once a scratch directory is in the
            trash; by default it deletes it here and now. The reaper passes one that starts
            a purge child instead.

    Returns:
        ``removed``, ``absent``, ``kept…`` or ``refused: …`` (one line).
    """
    if kind == "scratch":
        name = scratch_name(path, root)
        if name is None:
            return f"refused: {path} is not an entry of the workspaces root {root}"
        try:
            result, trash_name = retire(root, name)
        except OSError as exc:
            return f"refused: {path}: {exc.strerror or exc}"
        if trash_name is not None:
            try:
                purger(root, trash_name)
            except OSError as exc:
                return f"removed from {path}, but the purge failed: {exc.strerror or exc}"
        return result
    if kind == "worktree":
        if os.path.islink(path):
            return f"refused: {path} is a symlink, not a worktree"
        if not os.path.isdir(path):
            return "absent"
        res = subprocess.run(["git", "-C", path, "status", "--porcelain"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0 or res.stdout.strip():
            return "kept: worktree has uncommitted changes"
        res = subprocess.run(["git", "-C", repo or path, "worktree", "remove", path], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        return "removed" if res.returncode == 0 else f"kept: {res.stderr.strip()[-200:]}"
    return "kept"


def _main(argv: list[str]) -> int:
    """``purge ROOT [NAME]``: exit 0 when everything went, 1 when something was left."""
    if len(argv) not in (2, 3) or argv[0] != "purge":
        print("usage: python -m daemon.workspaces purge ROOT [NAME]", file=sys.stderr)
        return 2
    try:
        os.nice(10)  # background work: the workers come first
    except OSError:
        pass
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per level of depth
    except (ValueError, OSError):
        pass
    removed, problems = purge(argv[1], argv[2] if len(argv) == 3 else None)
    for p in problems[:5]:  # stderr is the daemon's log: one JSON line each, like structlog's
        print(json.dumps({"event": "workspace.purge_problem", "level": "warning", "problem": p,
                          "pid": os.getpid()}), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
