"""Sink types and delivery threads: how one event reaches a command hook, a webhook or the desktop.

Runs in: the notifier, on the delivery thread of one sink (:class:`SinkWorker`),
never on the notifier's main loop, which must keep heartbeating.

Every delivery carries the event id (``id`` in the JSON document, the
``X-Kanban-Event`` header for webhooks, ``$KANBAN_EVENT_ID`` and the
``{event_id}`` placeholder for commands) so receivers can deduplicate: delivery
is at-least-once. Text from tasks reaches a command hook only as data: on stdin
(JSON), in ``KANBAN_EVENT_*`` variables, or as whole argv elements; never
inside a shell script (the config refuses that). A delivery either returns (success, possibly with a warning)
or raises :class:`DeliveryError`; every blocking step has a timeout.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import hmac
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from typing import Any

from daemon import __version__

PLACEHOLDER = re.compile(r"\{(task_id|kind|title|summary|event_id)\}")
OUTPUT_TAIL = 400  # bytes of a failed hook's output quoted in the error
URGENT_KINDS = frozenset({"gave_up", "crashed", "timed_out", "sink_paused"})

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved before any fork: the child only calls them
_signal = _libc.signal
_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_signal.restype = ctypes.c_void_p


class DeliveryError(Exception):
    """One delivery failed; the message says why in one line."""


def describe(ev: dict[str, Any]) -> str:
    """A one-line human summary of an event (the ``{summary}`` placeholder)."""
    p = ev.get("payload") or {}
    if ev["kind"] == "gave_up":
        return f"gave up after {p.get('failures')} consecutive failures (last: {p.get('outcome')})"
    for key in ("summary", "reason", "error"):
        value = p.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().splitlines()[0][:300]
    return ""


def document(sink: str, ev: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a sink receives for one event (stdin of a command, body of a webhook)."""
    return {"id": ev["id"], "kind": ev["kind"], "task_id": ev.get("task_id"), "run_id": ev.get("run_id"),
            "at": ev.get("at"), "title": ev.get("title"), "assignee": ev.get("assignee"),
            "tenant": ev.get("tenant"), "summary": describe(ev), "payload": ev.get("payload") or {},
            "subscriptions": ev.get("subscriptions") or [], "sink": sink}


def os_text(value: Any) -> str:
    """A value as text the OS can carry in argv or the environment: a NUL (which would cut the
    string short, so Python refuses it) becomes U+FFFD, as does a lone surrogate. The JSON on
    stdin keeps the exact text."""
    text = "" if value is None else str(value)
    return text.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def expand(argv: list[str], doc: dict[str, Any]) -> list[str]:
    """Substitute ``{task_id} {kind} {title} {summary} {event_id}`` in each argument, in one pass.

    No shell is involved, and only the tokens of the configured argument are replaced: a title
    that contains ``{kind}`` stays literal. The config refuses placeholders inside a shell's
    ``-c`` script (see :func:`daemon.config.check_code_placeholders`).
    """
    values = {"task_id": doc["task_id"] or "", "kind": doc["kind"], "title": doc["title"] or "",
              "summary": doc["summary"], "event_id": str(doc["id"])}
    return [PLACEHOLDER.sub(lambda m: os_text(values[m.group(1)]), a) for a in argv]


#: The environment of a command hook: name -> (document key, doc line). docs/notifications.md lists them.
EVENT_ENV: dict[str, tuple[str, str]] = {
    "KANBAN_EVENT_ID": ("id", "the event id: the deduplication key"),
    "KANBAN_EVENT_KIND": ("kind", "the event kind, e.g. `completed`"),
    "KANBAN_EVENT_TASK": ("task_id", "the task id (empty for board events)"),
    "KANBAN_EVENT_TITLE": ("title", "the task title"),
    "KANBAN_EVENT_RUN": ("run_id", "the run id, if the event belongs to a run"),
    "KANBAN_EVENT_ASSIGNEE": ("assignee", "the task's assignee"),
    "KANBAN_EVENT_TENANT": ("tenant", "the task's tenant"),
    "KANBAN_EVENT_SUMMARY": ("summary", "the one-line summary (as in the JSON document)"),
    "KANBAN_EVENT_AT": ("at", "when the event happened, Unix seconds"),
}


def hook_env(base: dict[str, str], sink: str, doc: dict[str, Any]) -> dict[str, str]:
    """The environment of a command hook: ``base`` plus ``KANBAN_SINK`` and ``EVENT_ENV``.

    ``KANBAN_TASK`` and ``KANBAN_RUN`` are never set: the client reads them as "I am this
    run's worker", and a hook is not.
    """
    env = {k: v for k, v in base.items() if k not in ("KANBAN_TASK", "KANBAN_RUN")}
    env["KANBAN_SINK"] = sink
    for name, (key, _) in EVENT_ENV.items():
        env[name] = os_text(doc.get(key))
    return env


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes, keyed with the sink's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _die_with_parent() -> None:
    """Runs in the forked child, between fork and exec: no Python-level machinery.

    The hook dies with the thread that started it, and gets back the default
    SIGINT that the roles ignore (an ignored signal survives exec).
    """
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    _signal(int(signal.SIGINT), 0)  # SIG_DFL


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: a POST must not silently turn into a GET elsewhere."""

    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class Delivery:
    """Delivers events for one sink. Used by that sink's thread only, except :meth:`kill`.

    Args:
        name: The sink's name.
        env: Base environment for command hooks and ``notify-send``.
        cwd: Working directory for command hooks (the config file's directory).
    """

    def __init__(self, name: str, env: dict[str, str], cwd: str) -> None:
        self.name = name
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None  # the hook running now, if any
        self._opener = urllib.request.build_opener(_NoRedirect)

    def deliver(self, spec: dict[str, Any], ev: dict[str, Any]) -> str | None:
        """Deliver one event. Returns a warning (delivered, but degraded) or None.

        Raises:
            DeliveryError: The delivery failed and must be retried.
        """
        doc = document(self.name, ev)
        if spec["type"] == "command":
            self.run(expand(spec["command"], doc), json.dumps(doc).encode() + b"\n", spec["timeout"], doc)
            return None
        if spec["type"] == "webhook":
            self.post(spec, doc)
            return None
        return self.desktop(spec, doc)

    # ---- command --------------------------------------------------------------

    def run(self, argv: list[str], stdin: bytes, timeout: float, doc: dict[str, Any]) -> None:
        """Run a hook in its own process group; the group is killed at the timeout.

        The hook also dies with the delivering thread (``PR_SET_PDEATHSIG``), so a
        notifier killed mid-delivery leaves no hook behind: the event is simply
        delivered again by the next notifier.
        """
        env = hook_env(self.env, self.name, doc)
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=self.cwd, env=env, close_fds=True, process_group=0,
                                        preexec_fn=_die_with_parent)
            except OSError as exc:
                raise DeliveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            self.proc = proc
            try:
                proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg(proc)
                proc.wait()
                raise DeliveryError(f"{argv[0]} timed out after {timeout:g}s") from None
            finally:
                self.proc = None
            if proc.returncode != 0:
                out.seek(max(0, out.seek(0, os.SEEK_END) - OUTPUT_TAIL))
                tail = out.read().decode(errors="replace").strip().replace("\n", " | ")
                how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                       else f"exit code {proc.returncode}")
                raise DeliveryError(f"{argv[0]}: {how}" + (f": {tail}" if tail else ""))

    @staticmethod
    def _killpg(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill the hook running now (called from the notifier's main thread on shutdown)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self._killpg(proc)

    # ---- webhook ----------------------------------------------------------------

    def post(self, spec: dict[str, Any], doc: dict[str, Any]) -> None:
        """POST the event JSON; any 2xx is success, anything else (redirects too) a failure."""
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"kanband/{__version__}",
                   "X-Kanban-Event": str(doc["id"]), "X-Kanban-Kind": doc["kind"], "X-Kanban-Sink": self.name}
        if spec.get("secret"):
            headers["X-Kanban-Signature"] = signature(spec["secret"], body)
        req = urllib.request.Request(spec["url"], data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=spec["timeout"]) as resp:
                resp.read(65536)
                status = resp.status
        except urllib.error.HTTPError as exc:
            exc.close()
            raise DeliveryError(f"HTTP {exc.code} {exc.reason}".rstrip()) from None
        except urllib.error.URLError as exc:
            raise DeliveryError(f"{spec['url']}: {exc.reason}") from None
        except TimeoutError:
            raise DeliveryError(f"{spec['url']}: timed out after {spec['timeout']:g}s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise DeliveryError(f"{spec['url']}: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}")

    # ---- desktop ----------------------------------------------------------------

    def desktop(self, spec: dict[str, Any], doc: dict[str, Any]) -> str | None:
        """``notify-send``; without it on PATH the event counts as delivered, with a warning."""
        exe = shutil.which("notify-send", path=self.env.get("PATH"))
        if exe is None:
            return "notify-send not found on PATH: desktop notifications are skipped"
        head = f"kanban: {doc['kind'].replace('_', ' ')} {doc['task_id'] or ''}".rstrip()
        body = "\n".join(x for x in (doc["title"], doc["summary"]) if x)
        urgency = "critical" if doc["kind"] in URGENT_KINDS else "normal"
        self.run([exe, "--app-name=kanban", f"--urgency={urgency}", "--", os_text(head), os_text(body)], b"",
                 spec["timeout"], doc)
        return None


# ---- the delivery thread ---------------------------------------------------------------


@dataclasses.dataclass
class Job:
    """A batch for a delivery thread: deliver ``events`` in order, then report ``scanned_to``."""

    spec: dict[str, Any]
    events: list[dict[str, Any]]
    scanned_to: int


class SinkWorker:
    """The delivery thread of one sink.

    Outcomes go to ``results`` as tuples whose second item is this worker:
    ``("delivered", w, event_id, warning)``, ``("failed", w, event_id, error)``
    and, after every batch, ``("done", w, all_ok, scanned_to)``.
    """

    def __init__(self, name: str, results: queue.SimpleQueue, wake: socket.socket, env: dict[str, str],
                 cwd: str) -> None:
        self.name = name
        self.results = results
        self.wake = wake
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.delivery = Delivery(name, env, cwd)
        self.thread = threading.Thread(target=self._run, name=f"sink:{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish after the current delivery (a running hook is killed at once)."""
        self.jobs.put(None)
        self.delivery.kill()

    def _post(self, item: tuple) -> None:
        self.results.put(item)
        try:
            self.wake.send(b"\0")
        except OSError:  # full (the loop is awake anyway) or closed (shutting down)
            pass

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            ok = True
            for ev in job.events:
                try:
                    warning = self.delivery.deliver(job.spec, ev)
                except DeliveryError as exc:
                    self._post(("failed", self, ev["id"], str(exc)))
                    ok = False
                    break
                except Exception as exc:  # a bug in a sink type must not kill the thread
                    self._post(("failed", self, ev["id"], f"{type(exc).__name__}: {exc}"))
                    ok = False
                    break
                self._post(("delivered", self, ev["id"], warning))
            self._post(("done", self, ok, job.scanned_to))
