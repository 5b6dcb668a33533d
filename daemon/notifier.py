"""The notifier role: delivers board events to the configured sinks.

Runs in: the ``kanband: notifier`` process, forked by the supervisor.

(Placeholder loop: heartbeats only. Delivery arrives with the notifier issue.)
"""

from __future__ import annotations

import selectors
import signal
import time

import structlog

from daemon import roles

log = structlog.get_logger()


def run(ctx: roles.RoleContext) -> int:
    """Role entry point."""
    roles.enter(ctx)
    wake = roles.wakeup_socket(ctx)
    sel = selectors.DefaultSelector()
    sel.register(ctx.channel, selectors.EVENT_READ, "chan")
    sel.register(wake, selectors.EVENT_READ, "sig")
    every = ctx.cfg["supervisor"]["heartbeat_interval"]
    next_hb = 0.0
    while True:
        now = time.monotonic()
        if now >= next_hb:
            roles.send(ctx.channel, {"t": "hb", "ready": True})
            next_hb = now + every
        for key, _ in sel.select(max(0.0, next_hb - time.monotonic())):
            if key.data == "chan":
                msgs = roles.recv(ctx.channel)
                if msgs is None:
                    return 0
                for msg in msgs:
                    if msg["t"] == "config":
                        ctx.cfg = msg["cfg"]
            elif key.data == "sig":
                if any(s in (signal.SIGTERM, signal.SIGINT) for s in roles.read_signals(wake)):
                    return 0
