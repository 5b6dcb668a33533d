"""The request memory: a retried worker request is applied once.

Runs in: the dispatcher, inside the transaction that serves the request.

A worker's ``kanban complete`` may reach the daemon, be committed, and lose its
answer when the daemon dies before sending it. The client then sends the same
request again (see ``client/rpc.py``), carrying the same ``request_id``. The
board remembers the answer of every successful write that carried a
``request_id`` (table ``requests``), keyed by ``(run, request_id)``, and
answers a repeat with that first answer instead of applying it again (which
would fail with ``stale_token``, or add a second comment).

- Only successful answers are remembered. A write that failed changed nothing,
  so serving its repeat again is harmless and gives a fresh answer (a transient
  ``unavailable`` may then succeed).
- Without a run token the key is the ``request_id`` alone (``run_id`` NULL):
  an operator's script may de-duplicate its own requests the same way.
- The lookup and the insert happen in the transaction (and savepoint) of the
  write itself, so the answer is remembered exactly when the write commits.
- Rows older than ``KEEP`` seconds are pruned on each insert (an index range
  delete), so the table holds at most a day of worker writes. A client gives
  up retrying long before that (``KANBAN_RETRY_FOR``, default 120 s).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from client.protocol import Method, RPCError

#: Seconds a remembered answer is kept.
KEEP = 86400.0


def key(method: Method, params: dict[str, Any]) -> tuple[str | None, str] | None:
    """The memory key of a request, or ``None`` when it is not remembered.

    Pops ``request_id`` from ``params``: handlers never see it.

    Returns:
        ``(run, request_id)`` for a write carrying a ``request_id``; ``run`` is
        ``None`` when the request has no run token.
    """
    request_id = params.pop("request_id", None)
    if request_id is None or not method.writes:
        return None
    if not request_id.strip() or len(request_id) > 128:
        raise RPCError("invalid_params", f"{method.name}: request_id must be 1 to 128 characters",
                       field="request_id")
    return params.get("run"), request_id


def recall(conn: sqlite3.Connection, method: str, run: str | None, request_id: str) -> dict[str, Any] | None:
    """The first answer to this request, if it was already applied.

    Returns:
        ``{"result": ...}`` as first sent, or ``None`` for a new request.

    Raises:
        RPCError: ``invalid_params`` when the id was used for another method.
    """
    row = conn.execute("SELECT method, response FROM requests WHERE request_id=? AND coalesce(run_id, '')=?",
                       (request_id, run or "")).fetchone()
    if row is None:
        return None
    if row["method"] != method:
        raise RPCError("invalid_params", f"{method}: request_id {request_id!r} was already used for {row['method']}",
                       field="request_id", method=row["method"])
    return {"result": json.loads(row["response"])}


def remember(conn: sqlite3.Connection, now: float, method: str, run: str | None, request_id: str,
             result: Any) -> None:
    """Store the answer of an applied request and prune answers older than ``KEEP`` seconds.

    Args:
        now: Wall-clock time (epoch seconds).
        result: The handler's result, JSON-encodable (``str`` for anything else, as on the wire).
    """
    conn.execute("DELETE FROM requests WHERE at < ?", (now - KEEP,))
    conn.execute("INSERT INTO requests (run_id, request_id, method, response, at) VALUES (?,?,?,?,?)",
                 (run, request_id, method, json.dumps(result, separators=(",", ":"), default=str), now))
