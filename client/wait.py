"""``kanban wait ID…``: block until every task is done, archived or blocked.

Runs in: the ``kanban`` CLI. Stdlib only.

No polling: one ``task.wait`` request answers each task's status now and then
streams the tasks' events, each carrying ``task_status`` (the task's status
when the event was pushed). A task already final counts at once. While tasks are
pending it says so once on stderr (``kanban wait: waiting for t_… (running)``). If the daemon
restarts meanwhile, the client reconnects (for up to ``$KANBAN_RETRY_FOR``) and
asks again, so nothing that happened during the outage is missed.

Exit codes:

- ``0``: every task ended ``done``;
- ``1``: every task is final but at least one is ``archived`` or ``blocked``
  (or the daemon refused the request: an unknown id, a bad ``--timeout``);
- ``124`` (``EXIT_TIMEOUT``, as ``timeout(1)``): ``--timeout`` passed first; the
  statuses so far are printed.
"""

from __future__ import annotations

import json
import sys
import time

from client.rpc import CONNECT_RETRY, Backoff, Client, NotRunning, ServerError, socket_path

FINAL = frozenset({"done", "archived", "blocked"})
EXIT_TIMEOUT = 124


def _report(tasks: dict[str, dict], order: list[str], as_json: bool, timed_out: bool) -> None:
    rows = [tasks[i] for i in order]
    if as_json:
        print(json.dumps({"tasks": rows, "all_done": all(t["status"] == "done" for t in rows),
                          "timed_out": timed_out}, separators=(",", ":")))
        return
    for t in rows:
        tail = "" if t["status"] in FINAL else "  (still waiting)"
        print(f"{t['id']}  {t['status']:<8} {t['title']}{tail}")
    if timed_out:
        print(f"kanban wait: timed out; {sum(t['status'] not in FINAL for t in rows)} task(s) not final",
              file=sys.stderr)


def wait_verb(params: dict, path: str | None, as_json: bool, retry_for: float) -> int:
    """Run ``kanban wait``; returns the exit code (see the module docstring).

    Args:
        params: ``task.wait`` params: ``ids`` and optionally ``timeout`` (a duration the daemon parses).
        path: Socket path (default: :func:`client.rpc.socket_path`).
        as_json: Print one JSON object instead of one line per task.
        retry_for: Seconds to keep reconnecting after the daemon went away.
    """
    path = socket_path(path)
    order = list(dict.fromkeys(params["ids"]))
    tasks: dict[str, dict] = {}
    deadline: float | None = None
    first, said = True, False
    backoff: Backoff | None = None
    while True:
        client = None
        try:
            client = Client(path, retry=CONNECT_RETRY if first else 0.0)
            answer = client.call("task.wait", params)
            first, backoff = False, None
            if deadline is None and answer.get("timeout") is not None:
                deadline = time.monotonic() + answer["timeout"]
            for t in answer["tasks"]:
                tasks[t["id"]] = {"id": t["id"], "title": t["title"], "status": t["status"]}
            pending = [i for i in order if tasks[i]["status"] not in FINAL]
            if pending and not said:
                said = True
                print("kanban wait: waiting for " + ", ".join(f"{i} ({tasks[i]['status']})" for i in pending),
                      file=sys.stderr, flush=True)
            while True:
                pending = [i for i in order if tasks[i]["status"] not in FINAL]
                if not pending:
                    _report(tasks, order, as_json, timed_out=False)
                    return 0 if all(tasks[i]["status"] == "done" for i in order) else 1
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                client.sock.settimeout(left)
                msg = client.read()
                ev = msg.get("params") if msg.get("method") == "event" else None
                if ev and ev.get("task_id") in tasks and ev.get("task_status"):
                    tasks[ev["task_id"]]["status"] = ev["task_status"]
        except TimeoutError:
            _report(tasks, order, as_json, timed_out=True)
            return EXIT_TIMEOUT
        except ServerError as exc:
            print(f"kanban: {exc.name}: {exc}", file=sys.stderr)
            return 1
        except (NotRunning, OSError) as exc:
            if first:
                print(f"kanban: {exc}", file=sys.stderr)
                return 1
            backoff = backoff or Backoff(path, retry_for)
            if deadline is not None:
                backoff.deadline = min(backoff.deadline, deadline)
            if not backoff.pause():
                if deadline is not None and time.monotonic() >= deadline:
                    _report(tasks, order, as_json, timed_out=True)
                    return EXIT_TIMEOUT
                print(f"kanban: {backoff.gave_up(f'lost the connection to kanband ({exc})')}", file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            return 130
        finally:
            if client is not None:
                client.close()
