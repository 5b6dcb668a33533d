"""``kanban log ID -f``: follow a worker's log like ``tail -f``, across rotations and runs.

Runs in: the ``kanban`` CLI. Stdlib only; the client never opens the log file itself.

Design: the daemon reads the log (``task.log``) and hands out a cursor, the byte
offset in the current log plus a *rotation token* that changes whenever the log is
rotated (copy-truncate to ``<task>.log.1``). Passing the cursor back returns the
bytes after it: the rest of ``.log.1`` first if a rotation happened in between,
then the new log. Each run's part of the log is framed by separator lines that
the daemon writes (``===== run r_… started …`` and ``===== run r_… ended …:
OUTCOME, exit N, after 2.1s =====``), so runs are told apart in the output.

What wakes the follower: an ``events.follow`` stream on the task tells it at once
when a run starts or ends, or the task changes status; while a run is live it also
reads every ``POLL`` seconds, because the daemon does not watch the file for
writes. With no live run nothing is written, and it only waits for events.

It stops once the task is done, archived or blocked (nothing more will run until
someone acts) and no run of it is live, after printing the last bytes and the run's
end separator; with ``--run RUN``, once that run has ended. Through a daemon
restart it reconnects (``$KANBAN_RETRY_FOR``) and resumes from its cursor.
"""

from __future__ import annotations

import json
import select
import sys

from client.formats import escape
from client.rpc import Backoff, Client, NotRunning, socket_path

#: Statuses after which no run starts until someone acts: the follower stops there.
TERMINAL = frozenset({"done", "archived", "blocked"})
#: Seconds between reads while a run is live (new bytes appear without an event).
POLL = 0.2
#: Lines shown before following, when ``--lines`` is not given (as ``tail -f``).
DEFAULT_LINES = 10


def _wait(stream: Client, timeout: float | None) -> None:
    """Block until the event stream has something (or ``timeout`` passes); drain what came."""
    if b"\n" not in stream.buf:
        ready, _, _ = select.select([stream.sock], [], [], timeout)
        if not ready:
            return
    stream.read()  # a frame is (being) delivered whole
    while b"\n" in stream.buf:
        stream.read()


def finished(r: dict, run: str | None) -> bool:
    """Whether nothing more can come: the task is final with no live run, or ``run`` ended."""
    if run is not None:
        return r.get("live_run") != run
    return r["status"] in TERMINAL and not r["live"]


def follow(path: str | None, params: dict, as_json: bool, retry_for: float) -> int:
    """Print the end of the log (``--lines``, default 10; or ``--run``'s part), then follow it.

    Args:
        path: The socket path (``None``: the default).
        params: The ``task.log`` params from the command line (``id``, ``lines``, ``run``, ``tail``).
        as_json: Print each answer as one JSON object per line (JSON Lines) instead of the text.
        retry_for: Seconds to keep reconnecting through a daemon restart.

    Returns:
        The exit status: 0 once the task is final (or the run ended), or on Ctrl-C.

    Raises:
        ServerError: The daemon refused (an unknown task or run).
        NotRunning: The daemon stayed unreachable for ``retry_for`` seconds.
    """
    path = socket_path(path)
    tty = sys.stdout.isatty()
    task, run = params["id"], params.get("run")

    def emit(r: dict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
        elif r["text"]:
            if r.get("gap"):
                sys.stdout.write("===== (the log was rotated more than once since the last read: "
                                 "some lines are missing) =====\n")
            sys.stdout.write(escape(r["text"], multiline=True) if tty else r["text"])
        sys.stdout.flush()

    first = dict(params)
    if first.get("tail") is None and first.get("run") is None and first.get("lines") is None:
        first["lines"] = DEFAULT_LINES
    cursor: dict | None = None
    backoff: Backoff | None = None
    try:
        while True:
            try:
                with Client(path, retry=0.0 if backoff else 2.0) as stream:
                    stream.sock.settimeout(None)
                    stream.call("events.follow", {"task": task})  # first, so no change is missed
                    r = _read(path, first if cursor is None else {"id": task, **cursor})
                    backoff = None
                    while True:
                        emit(r)
                        cursor = {"offset": r["offset"], "rotation": r["rotation"]}
                        if r["more"]:
                            r = _read(path, {"id": task, **cursor})
                            continue
                        if finished(r, run):
                            return 0
                        _wait(stream, POLL if r["live"] else None)
                        r = _read(path, {"id": task, **cursor})
            except (NotRunning, OSError) as exc:
                backoff = backoff or Backoff(path, retry_for)
                if not backoff.pause():
                    raise backoff.gave_up(f"lost kanband while following the log ({exc})") from None
    except KeyboardInterrupt:  # as watch and tail
        return 0


def _read(path: str, params: dict) -> dict:
    with Client(path, retry=0.0) as c:
        return c.call("task.log", params)
