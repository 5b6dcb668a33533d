"""Attachment bytes: uploads into the store, and the copy each run sees.

Runs in: the dispatcher (:class:`Uploads`: a client streams a file in
chunks, then commits it atomically) and the reaper (:func:`snapshot` and
:func:`drop_snapshot`: the read-only copy a worker finds in
``$KANBAN_ATTACHMENTS``).

How the bytes travel. The client never names a path to the daemon: it reads
the file itself and sends its content, base64 in JSON, over the ordinary
socket (``client/attach.py``)::

    attach.begin  {id, name, size}         -> {upload, name, chunk}   size and caps checked here
    attach.chunk  {upload, offset, data}   -> {received}              repeated; data <= CHUNK bytes
    attach.commit {uploads, sha256}        -> {attachments}           all or nothing

Each chunk is at most ``CHUNK`` (512 KiB) raw, so a frame stays well under
``MAX_FRAME``, and the dispatcher handles one chunk per request: decode,
``write``, ``fdatasync``, hash, about 2 ms for 512 KiB on an SSD, so a
25 MiB file never holds the loop for long (it interleaves with every other
client's requests). The bytes go to ``<attachments>/.tmp/<upload>.part``
(0600); an upload belongs to the connection that began it and is discarded
(its temp file deleted) on ``attach.abort``, on any error, when that
connection closes, after ``UPLOAD_IDLE`` seconds without a chunk, and at
dispatcher start. ``attach.commit`` checks every upload's size and SHA-256,
inserts the rows, then links each temp file to its final name (a link never
overwrites) and removes the temp name: a reader sees the whole file or
nothing.

SCM_RIGHTS (passing the open file descriptor) was the alternative; it was
not taken because the dispatcher would then read a descriptor the client
chose, which can be a pipe or a file on a hung network mount and would block
the only writer of the board.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import secrets
import shutil
import time
from typing import Any

import structlog

from client.protocol import RPCError
from daemon.board import attachments

log = structlog.get_logger()

#: Raw bytes per ``attach.chunk`` the client sends; its base64 (683 KiB) fits ``MAX_FRAME`` with room.
CHUNK = 512 * 1024
#: The largest decoded chunk the daemon accepts.
MAX_CHUNK = 768 * 1024
#: Seconds an upload may wait for its next chunk (or its commit) before it is discarded.
UPLOAD_IDLE = 120.0
#: Uploads one connection may have open at once.
MAX_UPLOADS_PER_CONN = 64
#: The directory (under the attachments root) holding uploads in progress.
TMPDIR = ".tmp"


@dataclasses.dataclass
class Upload:
    """One file being received: where its bytes go and how many came."""

    id: str
    task: str
    name: str                  # sanitised; the final name (maybe suffixed) is chosen at commit
    size: int                  # bytes declared at begin
    conn: Any                  # the ipc.Connection that began it
    tmp: str
    fd: int
    by: str                    # "operator" or "worker"
    run: str | None
    written: int = 0
    last: float = 0.0          # monotonic time of the last chunk
    digest: Any = dataclasses.field(default_factory=hashlib.sha256)


class Uploads:
    """Uploads in progress, owned by the dispatcher.

    Args:
        att_root: ``<state>/attachments``. Leftover temp files from a previous
            dispatcher are removed at once.
    """

    def __init__(self, att_root: str) -> None:
        self.root = att_root
        self.tmpdir = os.path.join(att_root, TMPDIR)
        self.items: dict[str, Upload] = {}
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def pending_bytes(self, task_id: str) -> int:
        """Bytes declared by the uploads in progress for ``task_id`` (they count against its cap)."""
        return sum(u.size for u in self.items.values() if u.task == task_id)

    def begin(self, conn: Any, task_id: str, name: str, size: int, by: str, run: str | None) -> Upload:
        """Open a temp file for a new upload.

        Raises:
            RPCError: ``conflict`` if the connection has too many uploads open;
                ``unavailable`` if the temp file cannot be created.
        """
        if sum(1 for u in self.items.values() if u.conn is conn) >= MAX_UPLOADS_PER_CONN:
            raise RPCError("conflict", f"at most {MAX_UPLOADS_PER_CONN} uploads at once per connection")
        upload_id = "u_" + secrets.token_hex(8)
        tmp = os.path.join(self.tmpdir, f"{upload_id}.part")
        try:
            os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise RPCError("unavailable", f"cannot store attachment {name!r}: {exc.strerror or exc}") from None
        up = Upload(upload_id, task_id, name, size, conn, tmp, fd, by, run, last=time.monotonic())
        self.items[upload_id] = up
        return up

    def get(self, conn: Any, upload_id: str) -> Upload:
        """The upload, if this connection began it.

        Raises:
            RPCError: ``not_found`` naming the upload (unknown, finished, discarded,
                or begun on another connection).
        """
        up = self.items.get(upload_id)
        if up is None or up.conn is not conn:
            raise RPCError("not_found", f"no upload {upload_id} in progress on this connection (it was committed, "
                           "aborted or discarded)", id=upload_id)
        return up

    def chunk(self, conn: Any, upload_id: str, offset: int, data: str) -> dict[str, Any]:
        """Append one base64 chunk at ``offset`` (which must be the bytes received so far).

        Returns:
            ``{upload, received}``: bytes received so far.

        Raises:
            RPCError: ``not_found`` (see :meth:`get`); ``invalid_params`` for a wrong
                offset, bad base64, an oversized chunk or more bytes than declared (the
                upload is then discarded); ``unavailable`` when the disk refuses the write
                (discarded too).
        """
        up = self.get(conn, upload_id)
        if offset != up.written:
            raise RPCError("invalid_params", f"upload {upload_id}: offset {offset} but {up.written} bytes received",
                           field="offset", received=up.written)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self.abort(up)
            raise RPCError("invalid_params", f"upload {upload_id}: data is not base64", field="data") from None
        if len(raw) > MAX_CHUNK:
            self.abort(up)
            raise RPCError("invalid_params", f"upload {upload_id}: a chunk holds at most {MAX_CHUNK} bytes",
                           field="data")
        if up.written + len(raw) > up.size:
            self.abort(up)
            raise RPCError("invalid_params", f"attachment {up.name!r}: more than the {up.size} bytes declared "
                           "(the file grew while it was sent); nothing was stored", field="data")
        try:
            view = memoryview(raw)
            while view:
                n = os.write(up.fd, view)
                view = view[n:]
            os.fdatasync(up.fd)  # a chunk at a time: the commit's fsync then has little left to flush
        except OSError as exc:
            self.abort(up)
            raise RPCError("unavailable", f"attachment {up.name!r}: cannot write: {exc.strerror or exc}; "
                           "nothing was stored") from None
        up.digest.update(raw)
        up.written += len(raw)
        up.last = time.monotonic()
        return {"upload": upload_id, "received": up.written}

    def abort(self, up: Upload) -> None:
        """Forget an upload: close and delete its temp file (after a commit, only the temp name)."""
        self.items.pop(up.id, None)
        if up.fd >= 0:
            os.close(up.fd)
            up.fd = -1
        try:
            os.unlink(up.tmp)
        except FileNotFoundError:
            pass

    def sweep(self, now_mono: float) -> None:
        """Discard uploads whose connection closed or that sat idle past ``UPLOAD_IDLE``."""
        for up in list(self.items.values()):
            if up.conn.closed or now_mono - up.last > UPLOAD_IDLE:
                log.info("attachment.upload_discarded", upload=up.id, task=up.task, name=up.name,
                         received=up.written, size=up.size, why="closed" if up.conn.closed else "idle")
                self.abort(up)

    def finish(self, up: Upload) -> str:
        """Check that every declared byte arrived and flush the temp file; returns its SHA-256 (hex).

        Raises:
            RPCError: ``invalid_params`` when bytes are missing; ``unavailable`` when the flush fails.
        """
        if up.written != up.size:
            raise RPCError("invalid_params", f"attachment {up.name!r}: {up.written} of {up.size} bytes received "
                           "(the file shrank while it was sent?)", field="uploads", id=up.id)
        if up.fd >= 0:
            try:
                os.fchmod(up.fd, 0o600)
                os.fsync(up.fd)
            except OSError as exc:
                raise RPCError("unavailable", f"attachment {up.name!r}: cannot flush: {exc.strerror or exc}") from None
        return up.digest.hexdigest()

    def place(self, placements: list[tuple[Upload, str]]) -> list[str]:
        """Give each finished upload its final name in its task's directory, all or none.

        Each temp file is hard-linked to ``<root>/<task>/<name>`` (a link never
        replaces an existing file), then its temp name is removed and the
        directory is fsync'ed. On any failure the links made so far are undone
        and the uploads stay in progress.

        Args:
            placements: ``(upload, final name)`` pairs.

        Returns:
            The final paths, in order.

        Raises:
            RPCError: ``conflict`` if a final name appeared meanwhile; ``unavailable``
                for a file-system error.
        """
        done: list[str] = []
        dirs: set[str] = set()
        try:
            for up, name in placements:
                d = attachments.task_dir(self.root, up.task)
                os.makedirs(d, mode=0o700, exist_ok=True)
                final = os.path.join(d, name)
                os.link(up.tmp, final)
                done.append(final)
                dirs.add(d)
        except FileExistsError:
            self._undo(done)
            raise RPCError("conflict", f"attachment {placements[len(done)][1]!r} appeared while committing; "
                           "try again") from None
        except OSError as exc:
            self._undo(done)
            raise RPCError("unavailable", f"cannot store the attachments: {exc.strerror or exc}") from None
        for up, _ in placements:
            self.abort(up)  # its bytes are linked in place: drop the upload and its temp name
        for d in dirs | {self.tmpdir}:
            _fsync_dir(d)
        return done

    @staticmethod
    def _undo(paths: list[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- the copy a run sees (reaper) ------------------------------------------------------------


def snapshot_dir(runs_dir: str, run_id: str) -> str:
    """``<state>/runs/<run>.attachments``: the run's copy of its task's attachments."""
    return os.path.join(runs_dir, f"{run_id}.attachments")


def snapshot(att_root: str, task_id: str, runs_dir: str, run_id: str) -> str:
    """Copy the task's attachments into the run's own directory and make it read-only.

    The worker gets copies, never the stored originals: a worker runs as the
    same user as the daemon, so a read-only mode or a hard link (which shares
    the original's inode) would not stop it from changing the original. The
    copies are 0400 in a 0500 directory, so an accidental write fails (except
    as root, where only the copy changes). The copy is taken as the run
    starts; an attachment added during the run is listed by ``kanban
    attachments`` but is not in the directory.

    Args:
        att_root: ``<state>/attachments``.
        task_id: The run's task.
        runs_dir: ``<state>/runs``.
        run_id: The run.

    Returns:
        The directory (it exists, possibly empty).

    Raises:
        OSError: The copy failed (the partial directory is removed).
    """
    dst = snapshot_dir(runs_dir, run_id)
    drop_snapshot(runs_dir, run_id)
    os.makedirs(runs_dir, mode=0o700, exist_ok=True)
    os.mkdir(dst, 0o700)
    try:
        src = attachments.task_dir(att_root, task_id)
        try:
            entries = sorted(os.scandir(src), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            target = os.path.join(dst, entry.name)
            shutil.copyfile(entry.path, target, follow_symlinks=False)  # sendfile: the kernel copies
            os.chmod(target, 0o400)
        os.chmod(dst, 0o500)
    except OSError:
        drop_snapshot(runs_dir, run_id)
        raise
    return dst


def drop_snapshot(runs_dir: str, run_id: str) -> None:
    """Remove a run's copy (its directory is read-only, so make it writable first)."""
    remove_tree(snapshot_dir(runs_dir, run_id))


def remove_tree(path: str) -> None:
    """``rm -rf`` that also gets through directories without write permission; no symlink is followed."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for top, dirs, _files in os.walk(path):
        os.chmod(top, 0o700)
        for d in dirs:
            full = os.path.join(top, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)
