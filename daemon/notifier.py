"""The notifier role: delivers board events to the configured sinks, with durable cursors.

Runs in: the ``kanband: notifier`` process, forked by the supervisor.

The notifier never opens the board. It connects to the dispatcher like the
reaper does (:class:`daemon.rpcpeer.Link`), calls ``notifier.attach`` (which
creates missing sink rows at the end of the log and returns each sink's
cursor, failure count and paused flag), then ``events.follow`` with no filter.
The follow stream is only a wake-up signal: every pushed event marks every
sink dirty. A dirty sink that is neither paused, busy, polling nor backing off
asks ``notifier.pending`` for the matching events after its cursor, delivers
them in order and acknowledges each one (``notifier.ack cursor=<event id>``)
right after it succeeded. A cursor therefore only moves past delivered events:
delivery is at-least-once, and a notifier killed at any point resumes from the
last acknowledged event. When nothing matched, the cursor moves to
``scanned_to`` (deferred by :data:`CURSOR_FLUSH` when the sink is caught up, to
spare the writer an fsync per unrelated event).

Threading model: the main thread runs one selector loop (heartbeats, the
supervisor channel, signals, the dispatcher connection, timers) and never
blocks. Each sink has one delivery thread (:class:`daemon.sinks.SinkWorker`) that receives a
batch of events, delivers them one by one with the sink's timeout, and posts
each outcome back on a queue plus a wake-up socketpair. The main thread turns
outcomes into acks, backoff and pauses. A slow or hung sink therefore stalls
only itself; heartbeats and the other sinks carry on.

Failures back off exponentially with jitter (``notify.backoff_initial`` up to
``notify.backoff_max``); after ``notify.max_failures`` consecutive failures the
sink is paused on the board (a ``sink_paused`` event and an error log) until
``kanban notify resume SINK``, whose ``sink_resumed`` event reaches the
notifier through the follow stream. If the dispatcher goes away, the notifier
reconnects with backoff and re-attaches; acks made meanwhile are queued.
"""

from __future__ import annotations

import os
import queue
import random
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon import roles, sinks
from daemon.rpcpeer import Link, Peer

log = structlog.get_logger()

POLL_LIMIT = 100          # events scanned per notifier.pending call
CURSOR_FLUSH = 0.5        # seconds: a caught-up sink's cursor-only ack waits this long
RETRY_AFTER_ERROR = 1.0   # seconds: after a refused notifier.pending
REATTACH_AFTER = 0.5      # seconds: the dispatcher did not know a sink yet (config reload race)


def retry_delay(failures: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retrying after ``failures`` consecutive failures.

    Exponential (``initial * 2**(failures-1)``, capped at ``cap``) with jitter:
    the result lies in ``[base/2, base]`` so that sinks failing together do not
    retry in lockstep.
    """
    if failures <= 0:
        return 0.0
    base = min(cap, initial * (2 ** min(failures - 1, 62)))
    return base * (0.5 + rand() / 2)


class SinkState:
    """What the main loop knows about one sink."""

    def __init__(self, name: str, spec: dict[str, Any], worker: sinks.SinkWorker) -> None:
        self.name = name
        self.spec = spec
        self.worker = worker
        self.known = False          # attach returned it: the board has its row
        self.cursor = 0             # the board's cursor, as last reported
        self.acked = 0              # highest cursor sent in an ack
        self.failures = 0           # consecutive failures (persisted on the board)
        self.paused = False
        self.busy = False           # the delivery thread has a batch
        self.polling = False        # a notifier.pending call is in flight
        self.dirty = True           # something may be waiting
        self.retry_at = 0.0         # monotonic: backing off until then
        self.flush_at = 0.0         # monotonic: send the deferred cursor-only ack then
        self.deferred = 0           # the cursor that ack will carry
        self.warned: set[str] = set()
        self.lagging = False


class Notifier:
    """State of the notifier role; :meth:`loop` drives it."""

    def __init__(self, ctx: roles.RoleContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.paths = ctx.paths
        self.sel = selectors.DefaultSelector()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sinks: dict[str, SinkState] = {}
        self.link = Link(self.paths["socket"], self.sel, "peer", self.on_notify, self.on_connect, self.on_lost)
        self.attached = False
        self.following = False
        self.reattach_at = 0.0
        self.last_id = 0
        self.backlog: list[dict[str, Any]] = []  # acks made while disconnected
        self.apply_config(ctx.cfg)

    # ---- configuration ----------------------------------------------------------

    def sink_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KANBAN_TASK", "KANBAN_RUN", "NOTIFY_SOCKET",
                                                                 "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["KANBAN_SOCKET"] = self.paths["socket"]
        return env

    def apply_config(self, cfg: dict[str, Any]) -> None:
        """Start, update or stop delivery threads to match ``cfg['sinks']``."""
        self.cfg = cfg
        wanted = cfg["sinks"]
        for name in [n for n in self.sinks if n not in wanted]:
            self.sinks.pop(name).worker.stop()
            log.info("sink.removed", sink=name)
        added = False
        for name, spec in wanted.items():
            if name in self.sinks:
                self.sinks[name].spec = spec
                continue
            worker = sinks.SinkWorker(name, self.results, self.wake_w, self.sink_env(), cfg.get("_dir") or os.getcwd())
            self.sinks[name] = SinkState(name, spec, worker)
            added = True
        if added and self.attached:
            self.attach()

    # ---- dispatcher connection ---------------------------------------------------

    @property
    def peer(self) -> Peer | None:
        return self.link.peer

    def on_connect(self, peer: Peer) -> None:
        self.attach()

    def attach(self) -> None:
        self.reattach_at = 0.0
        self.peer.call("notifier.attach", {"pid": os.getpid()}, self.on_attached)

    def on_lost(self) -> None:
        log.warning("notifier.dispatcher_lost")
        self.attached = self.following = False
        self.reattach_at = 0.0  # re-attaching happens on reconnect; a stale time would spin the loop
        for s in self.sinks.values():
            s.polling = False  # its answer is lost; ask again after re-attaching
            s.dirty = True

    def on_attached(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            log.error("notifier.attach_refused", error=msg["error"])
            self.peer.close()
            return
        res = msg["result"]
        self.link.attached()
        self.attached = True
        self.last_id = max(self.last_id, res["last_id"])
        for name, st in res["sinks"].items():
            s = self.sinks.get(name)
            if s is None:
                continue
            s.known = True
            s.cursor = st["cursor"]
            s.acked = st["cursor"]  # the board's truth; the backlog below may raise it
            # failures recorded meanwhile are still in the backlog below
            s.failures = st["failures"] + sum(1 for a in self.backlog if a["sink"] == name and a.get("failed"))
            s.paused = st["paused"]
            s.dirty = True
            if s.paused:
                log.warning("sink.is_paused", sink=name, failures=s.failures, error=st.get("last_error"))
        if any(not s.known for s in self.sinks.values()):
            self.reattach_at = time.monotonic() + REATTACH_AFTER
        backlog, self.backlog = self.backlog, []
        for params in backlog:
            self._send_ack(params)
        if self.sinks and not self.following:
            self.following = True
            self.peer.call("events.follow", {}, self.on_following)
        roles.send(self.ctx.channel, self.hb())
        log.info("notifier.attached", sinks=sorted(res["sinks"]), last_id=self.last_id)

    def on_following(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            log.error("notifier.follow_refused", error=msg["error"])
            self.following = False
            if self.peer is not None:
                self.peer.close()
            return
        self.last_id = max(self.last_id, msg["result"]["last_id"])

    def on_notify(self, msg: dict[str, Any]) -> None:
        if msg.get("method") != "event":
            return
        ev = msg["params"]
        self.last_id = max(self.last_id, ev["id"])
        if ev["kind"] == "sink_resumed":
            s = self.sinks.get(ev["payload"].get("sink"))
            if s is not None:
                s.paused, s.failures, s.retry_at, s.lagging = False, 0, 0.0, False
                log.info("sink.resumed", sink=s.name)
        elif ev["kind"] == "sink_paused":
            s = self.sinks.get(ev["payload"].get("sink"))
            if s is not None:
                s.paused = True
        for s in self.sinks.values():
            s.dirty = True

    # ---- polling and acknowledging --------------------------------------------------

    def poll(self, s: SinkState) -> None:
        s.polling, s.dirty = True, False
        self.peer.call("notifier.pending", {"sink": s.name, "limit": POLL_LIMIT},
                       lambda msg: self.on_pending(s, msg))

    def on_pending(self, s: SinkState, msg: dict[str, Any]) -> None:
        s.polling = False
        if self.sinks.get(s.name) is not s:
            return
        now = time.monotonic()
        if "error" in msg:
            err = msg["error"]
            log.warning("sink.poll_failed", sink=s.name, error=err.get("message"))
            s.dirty, s.retry_at = True, now + RETRY_AFTER_ERROR
            if (err.get("data") or {}).get("name") == "not_found":
                s.known = False
                self.reattach_at = now + REATTACH_AFTER
            return
        r = msg["result"]
        s.cursor = max(s.cursor, r["cursor"])
        if r["paused"]:
            s.paused = True
            return
        lag = self.last_id - r["cursor"]
        if lag > self.cfg["notify"]["lag_warn"] and not s.lagging:
            s.lagging = True
            log.warning("sink.lagging", sink=s.name, lag=lag, cursor=r["cursor"], last_id=self.last_id,
                        threshold=self.cfg["notify"]["lag_warn"])
        elif s.lagging and lag <= self.cfg["notify"]["lag_warn"] // 2:
            s.lagging = False
            log.info("sink.caught_up", sink=s.name, lag=lag)
        if r["events"]:
            s.busy = True
            s.worker.submit(sinks.Job(dict(s.spec), r["events"], r["scanned_to"]))
            return
        self.advance(s, r["scanned_to"], now)

    def advance(self, s: SinkState, upto: int, now: float) -> None:
        """Move the cursor past events that needed no delivery.

        While more events wait, ack at once (the next poll starts there);
        when caught up, defer the ack so a burst of unrelated events costs the
        writer one transaction, not one per event.
        """
        if upto <= s.acked:
            return
        if upto < self.last_id:
            self.ack(s, cursor=upto)
            s.dirty = True
        else:
            s.deferred = upto
            if not s.flush_at:
                s.flush_at = now + CURSOR_FLUSH

    def ack(self, s: SinkState, **params: Any) -> None:
        params = {"sink": s.name, **{k: v for k, v in params.items() if v is not None}}
        if self.attached and self.peer is not None and not self.peer.closed:
            self._send_ack(params)
        else:
            self.backlog.append(params)

    def _send_ack(self, params: dict[str, Any]) -> None:
        s = self.sinks.get(params["sink"])
        if s is not None and "cursor" in params:
            s.acked = max(s.acked, params["cursor"])

        def acked(msg: dict[str, Any]) -> None:
            if "error" in msg:
                log.warning("sink.ack_refused", sink=params["sink"], error=msg["error"].get("message"))
                return
            s = self.sinks.get(params["sink"])
            if s is not None:
                s.cursor = max(s.cursor, msg["result"]["cursor"])
                if msg["result"]["paused"]:
                    s.paused = True
        self.peer.call("notifier.ack", params, acked)

    # ---- delivery outcomes -----------------------------------------------------------

    def on_results(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        now = time.monotonic()
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return
            what, worker = item[0], item[1]
            s = self.sinks.get(worker.name)
            if s is None or s.worker is not worker:
                continue  # the sink was removed by a config reload
            if what == "delivered":
                self.on_delivered(s, item[2], item[3])
            elif what == "failed":
                self.on_failed(s, item[2], item[3], now)
            else:
                s.busy = False
                if item[2]:
                    self.advance(s, item[3], now)
                    if item[3] < self.last_id:
                        s.dirty = True

    def on_delivered(self, s: SinkState, event_id: int, warning: str | None) -> None:
        s.failures = 0
        if warning and warning not in s.warned:
            s.warned.add(warning)
            log.warning("sink.degraded", sink=s.name, type=s.spec["type"], warning=warning)
        log.debug("sink.delivered", sink=s.name, event_id=event_id)
        self.ack(s, cursor=event_id, error=warning)

    def on_failed(self, s: SinkState, event_id: int, error: str, now: float) -> None:
        s.failures += 1
        s.deferred = 0  # below the failed event anyway; a cursor-only ack now would reset the failure count
        s.flush_at = 0.0
        limit = self.cfg["notify"]["max_failures"]
        pause = limit > 0 and s.failures >= limit
        self.ack(s, failed=True, error=error[:2000], paused=pause or None)
        s.dirty = True
        if pause:
            s.paused = True
            log.error("sink.paused", sink=s.name, event_id=event_id, failures=s.failures, error=error,
                      hint=f"kanban notify resume {s.name}")
            return
        n = self.cfg["notify"]
        delay = retry_delay(s.failures, n["backoff_initial"], n["backoff_max"])
        s.retry_at = now + delay
        log.warning("sink.delivery_failed", sink=s.name, event_id=event_id, attempt=s.failures, error=error,
                    retry_in=round(delay, 3))

    # ---- scheduling ------------------------------------------------------------------

    def schedule(self, now: float) -> float:
        """Start due polls and deferred acks; returns the next monotonic time something is due."""
        nxt = now + 3600.0
        if self.attached and self.reattach_at and now >= self.reattach_at:
            self.attach()
        elif self.reattach_at:
            nxt = min(nxt, self.reattach_at)
        for s in self.sinks.values():
            if s.flush_at:
                if now >= s.flush_at:
                    s.flush_at = 0.0
                    if s.deferred > s.acked:
                        self.ack(s, cursor=s.deferred)
                else:
                    nxt = min(nxt, s.flush_at)
            if not self.attached or not s.known or s.paused or s.busy or s.polling or not s.dirty:
                continue
            if now < s.retry_at:
                nxt = min(nxt, s.retry_at)
                continue
            self.poll(s)
        return nxt

    def hb(self) -> dict[str, Any]:
        return {"t": "hb", "ready": self.attached, "sinks": len(self.sinks),
                "paused": sorted(s.name for s in self.sinks.values() if s.paused)}

    # ---- loop --------------------------------------------------------------------------

    def loop(self) -> int:
        wake = roles.wakeup_socket(self.ctx)
        self.sel.register(self.ctx.channel, selectors.EVENT_READ, "chan")
        self.sel.register(wake, selectors.EVENT_READ, "sig")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "results")
        next_hb = 0.0
        while True:
            now = time.monotonic()
            reconnect_at = self.link.poll(now)
            if now >= next_hb:
                roles.send(self.ctx.channel, self.hb())
                next_hb = now + self.cfg["supervisor"]["heartbeat_interval"]
            due = self.schedule(now)
            self.link.poll(time.monotonic())
            due = min(due, next_hb)
            if reconnect_at is not None:
                due = min(due, reconnect_at)
            for key, mask in self.sel.select(max(0.0, due - time.monotonic())):
                if key.data == "peer":
                    self.link.on_event(mask)
                elif key.data == "results":
                    self.on_results()
                elif key.data == "chan":
                    msgs = roles.recv(self.ctx.channel)
                    if msgs is None:
                        log.warning("notifier.supervisor_gone")
                        self.stop(flush=False)
                        return 0
                    for msg in msgs:
                        if msg["t"] == "config":
                            self.apply_config(msg["cfg"])
                elif key.data == "sig":
                    if any(s in (signal.SIGTERM, signal.SIGINT) for s in roles.read_signals(wake)):
                        self.stop(flush=True)
                        return 0
            self.link.poll(time.monotonic())

    def stop(self, flush: bool) -> None:
        """Kill running hooks and hand deferred cursors to the dispatcher before exiting.

        Deliveries cut short here were never acknowledged: the next notifier
        delivers them again (at-least-once).
        """
        for s in self.sinks.values():
            s.worker.stop()
            if flush and s.deferred > s.acked and self.attached:
                self.ack(s, cursor=s.deferred)
        deadline = time.monotonic() + 1.0
        while flush and self.peer is not None and not self.peer.closed and self.peer.want_write():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.peer.sock], [], left)[1]:
                break
            self.peer.on_writable()
        log.info("notifier.stopped", sinks=len(self.sinks))


def run(ctx: roles.RoleContext) -> int:
    """Role entry point."""
    roles.enter(ctx)
    return Notifier(ctx).loop()
