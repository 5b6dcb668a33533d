"""``kanban attach ID FILE… [--name N]``: send files to the daemon as a task's attachments.

Runs in: the ``kanban`` CLI (imported only by that verb). Stdlib only.

The client reads each file itself and streams its bytes over the socket; the
daemon never opens a path the client names (see ``daemon/attachstore.py``):

1. every FILE is opened and checked (a regular file) before anything is sent:
   a missing or unreadable file is a one-line error and nothing reaches the daemon;
2. ``attach.begin`` for every file: the daemon checks the name and the size
   caps, so an oversized file is refused before its bytes are sent;
3. ``attach.chunk`` per ``CHUNK`` bytes (base64), hashing as it goes;
4. one ``attach.commit`` with every upload and its SHA-256: all the files are
   attached, or none.

On any error the uploads begun are aborted, so nothing is left half-written.
Inside a worker a dropped connection (a daemon restart) does not lose the
attach: the whole upload starts again once the daemon is back, and a commit
whose answer was lost is resent with the same ``request_id``, which the
daemon answers with its first answer instead of attaching twice.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat

from client.rpc import CONNECT_RETRY, Backoff, Client, NotRunning, ServerError, new_request_id, socket_path

#: Raw bytes per chunk (the daemon accepts up to 768 KiB; base64 of 512 KiB fits the 1 MiB frame cap).
CHUNK = 512 * 1024


class FileError(Exception):
    """A FILE argument cannot be attached (missing, unreadable, not a regular file, changed while sent)."""


def _open_all(files: list[str], name: str | None) -> list[tuple[str, object, int, str]]:
    if name is not None and len(files) != 1:
        raise FileError("--name goes with exactly one FILE")
    opened: list[tuple[str, object, int, str]] = []
    try:
        for path in files:
            try:  # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise FileError(f"cannot read {path}: {exc.strerror or exc}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise FileError(f"{path} is not a regular file")
            f = os.fdopen(fd, "rb")
            opened.append((path, f, st.st_size, name or os.path.basename(path)))
    except BaseException:
        for _, f, _, _ in opened:
            f.close()
        raise
    return opened


def _upload(client: Client, task: str, opened: list, token: dict, sent: list[bool]) -> dict:
    """One attempt over one connection: begin all, send all, commit. Aborts what it began on error."""
    begun: list[str] = []
    try:
        for _path, _f, size, name in opened:
            begun.append(client.call("attach.begin", {"id": task, "name": name, "size": size,
                                                      **({"run": token["run"]} if token.get("run") else {})})["upload"])
        hashes = []
        for upload, (path, f, size, _name) in zip(begun, opened):
            f.seek(0)
            digest, offset = hashlib.sha256(), 0
            while data := f.read(CHUNK):
                digest.update(data)
                client.call("attach.chunk", {"upload": upload, "offset": offset,
                                             "data": base64.b64encode(data).decode()})
                offset += len(data)
            if offset != size:
                raise FileError(f"{path} changed size while it was sent ({size} -> {offset} bytes); nothing was "
                                "attached")
            hashes.append(digest.hexdigest())
        sent[0] = True
        return client.call("attach.commit", {"uploads": begun, "sha256": hashes, **token})
    except (ServerError, FileError):
        if begun and not sent[0]:
            try:
                client.call("attach.abort", {"uploads": begun})
            except (ServerError, NotRunning, OSError):
                pass  # the daemon discards them anyway when this connection closes
        raise


def send(params: dict, sock: str | None, worker: bool, retry_for: float) -> dict:
    """Attach ``params["files"]`` to task ``params["id"]``; returns the ``attach.commit`` result.

    Args:
        params: Collected CLI params: ``id``, ``files``, optional ``name`` and ``run``.
        sock: ``--socket``, or ``None`` for the default.
        worker: Inside a worker: retry through a daemon restart for ``retry_for`` seconds.
        retry_for: Seconds.

    Raises:
        FileError: A FILE cannot be read (nothing was sent).
        ServerError: The daemon refused (oversized, a name that sanitises to nothing...).
        NotRunning: No daemon, or (outside a worker) the connection dropped.
    """
    opened = _open_all(params["files"], params.get("name"))
    token = {"request_id": new_request_id()}
    if params.get("run"):
        token["run"] = params["run"]
    path = socket_path(sock)
    backoff = Backoff(path, retry_for)
    try:
        while True:
            sent = [False]
            try:
                client = Client(sock, retry=0.0 if worker else CONNECT_RETRY)
            except NotRunning:
                if not worker or not backoff.pause():
                    raise
                continue
            try:
                with client:
                    return _upload(client, params["id"], opened, token, sent)
            except ServerError as exc:
                if not (worker and sent[0] and exc.name == "not_found"):
                    raise
                # a resent commit whose uploads died with the old daemon: it was never applied
            except (NotRunning, OSError) as exc:
                if not worker:
                    raise NotRunning(f"the connection to kanband dropped during the upload ({exc}); "
                                     "nothing was attached unless `kanban attachments` lists it") from None
                if sent[0]:  # the commit may have been applied: ask again, the daemon remembers its answer
                    try:
                        with Client(sock, retry=0.0) as client:
                            return client.call("attach.commit", {"uploads": ["u_resent"], "sha256": ["-"], **token})
                    except ServerError as again:
                        if again.name != "not_found":
                            raise
                    except (NotRunning, OSError):
                        pass
            if not backoff.pause():
                raise backoff.gave_up("could not attach the files")
    finally:
        for _, f, _, _ in opened:
            f.close()
