"""The role table and the plumbing every forked role shares.

Runs in: the supervisor (reads ``ROLES``) and in every role right after the
fork (:func:`enter`).

Heartbeats travel over a ``SOCK_SEQPACKET`` socketpair per role, created by
the supervisor before the fork. The role sends ``{"t": "hb", ...}`` every
``supervisor.heartbeat_interval``; the supervisor sends ``config``, ``roles``
and ``stopping`` messages the other way. EOF on the pair means the supervisor
died: the role exits at once (``PR_SET_PDEATHSIG`` is the second line of
defence), so the lock and the socket are free for the next daemon.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import importlib
import json
import os
import random
import signal
import socket
from collections.abc import Callable
from typing import Any

import setproctitle

from daemon import log as daemon_log

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


@dataclasses.dataclass(frozen=True)
class RoleSpec:
    """How the supervisor runs one role.

    Attributes:
        entry: ``module:function`` called with a :class:`RoleContext` in the child.
        restart: ``always``: restarted whenever it dies, with backoff; no other
            policy is accepted.
        order: Start order (low first); shutdown goes in ``stop_order``.
        stop_order: Shutdown order (low first).
        stop_timeout: Seconds to wait after SIGTERM before SIGKILL.
        hang_timeout: Seconds without a heartbeat before the role is killed
            and restarted; ``None`` means ``supervisor.role_timeout``.
        essential: The daemon is unhealthy while this role is down, hung or
            flapping (no ``READY=1`` before it checked in, no ``WATCHDOG=1``).
            A non-essential role is restarted with the same backoff and shown
            in ``daemon.status`` and ``STATUS=``, but never holds up READY or
            the watchdog: the board keeps dispatching without it.
        enabled_by: Dotted config key (``web.enabled``) that turns the role on;
            ``None``: always on. A disabled role is not forked and not shown.
    """

    entry: str
    restart: str
    order: int
    stop_order: int
    stop_timeout: float
    hang_timeout: float | None = None
    essential: bool = True
    enabled_by: str | None = None

    def __post_init__(self) -> None:
        if self.restart != "always":
            raise ValueError(f"role restart policy must be 'always', got {self.restart!r}")


ROLES: dict[str, RoleSpec] = {
    "dispatcher": RoleSpec("daemon.dispatcher:run", "always", order=0, stop_order=3, stop_timeout=10.0),
    "reaper": RoleSpec("daemon.reaper:run", "always", order=1, stop_order=2, stop_timeout=30.0),
    "notifier": RoleSpec("daemon.notifier:run", "always", order=2, stop_order=1, stop_timeout=10.0),
    "web": RoleSpec("daemon.web.role:run", "always", order=3, stop_order=0, stop_timeout=5.0, essential=False,
                    enabled_by="web.enabled"),
}


def enabled(spec: RoleSpec, cfg: dict[str, Any]) -> bool:
    """Whether ``cfg`` turns the role on (see ``RoleSpec.enabled_by``)."""
    if spec.enabled_by is None:
        return True
    section, key = spec.enabled_by.split(".")
    return bool(cfg[section][key])


@dataclasses.dataclass
class RoleContext:
    """Everything a role receives from the supervisor across the fork."""

    name: str
    cfg: dict[str, Any]
    paths: dict[str, str]
    channel: socket.socket
    listener: socket.socket | None
    supervisor_pid: int


def prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def resolve(entry: str) -> Callable[[RoleContext], int]:
    module, func = entry.split(":")
    return getattr(importlib.import_module(module), func)


def enter(ctx: RoleContext) -> int:
    """First code run in a freshly forked role: name it, log it, tie it to the supervisor."""
    setproctitle.setproctitle(f"kanband: {ctx.name}")
    daemon_log.configure(ctx.cfg, role=ctx.name)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != ctx.supervisor_pid:  # the supervisor died before prctl took effect
        os._exit(0)
    ctx.__dict__["early"] = wait_go(ctx.channel)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, _noop)
    # Ctrl-C on a terminal reaches the whole process group: only the supervisor
    # acts on it, and stops the roles in order. (Workers are not affected: the
    # wrapper installs its own handlers, which exec resets to the default.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rfd, wfd = socket.socketpair()
    rfd.setblocking(False)
    wfd.setblocking(False)
    signal.set_wakeup_fd(wfd.fileno(), warn_on_full_buffer=False)
    ctx.__dict__["_wakeup"] = (rfd, wfd)
    return rfd.fileno()


def wait_go(channel: socket.socket, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Block until the supervisor's ``go``; returns the messages that came before it.

    The supervisor sends ``go`` only after it told the dispatcher this role's
    pid, so the dispatcher knows every role before the role can connect: the
    internal methods are served by pid, and never to a pid it does not know.
    """
    early: list[dict[str, Any]] = []
    channel.settimeout(timeout)
    try:
        while True:
            try:
                data = channel.recv(1 << 22)
            except (socket.timeout, ConnectionResetError):
                os._exit(0)
            if not data:
                os._exit(0)  # the supervisor died
            msg = json.loads(data)
            if msg.get("t") == "go":
                return early
            early.append(msg)
    finally:
        channel.setblocking(False)


def early_messages(ctx: RoleContext) -> list[dict[str, Any]]:
    """Channel messages that arrived before ``go`` (the dispatcher's first role snapshot)."""
    return ctx.__dict__.get("early", [])


def orphaned(ctx: RoleContext) -> bool:
    """True once the supervisor that forked this role is gone (we were re-parented).

    A role that gets SIGTERM while orphaned got it from ``PR_SET_PDEATHSIG``:
    it must simply exit, not run a graceful stop (workers are not roles and
    keep running for the next daemon to re-adopt).
    """
    return os.getppid() != ctx.supervisor_pid


def _noop(signum: int, frame: Any) -> None:
    """Signal handlers only enqueue: the wakeup fd carries the signal number to the loop."""


def wakeup_socket(ctx: RoleContext) -> socket.socket:
    return ctx.__dict__["_wakeup"][0]


def read_signals(sock: socket.socket) -> list[int]:
    try:
        data = sock.recv(256)
    except (BlockingIOError, InterruptedError):
        return []
    return list(data)


def send(channel: socket.socket, msg: dict[str, Any]) -> bool:
    """Send one message on a role channel; False if the peer is gone or the buffer is full."""
    try:
        channel.send(json.dumps(msg, separators=(",", ":"), default=str).encode())
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def recv(channel: socket.socket) -> list[dict[str, Any]] | None:
    """All pending messages, or ``None`` on EOF (the other side died)."""
    out = []
    while True:
        try:
            data = channel.recv(1 << 22)
        except (BlockingIOError, InterruptedError):
            return out
        except ConnectionResetError:
            return None
        if not data:
            return None
        try:
            out.append(json.loads(data))
        except ValueError:
            continue


# ---- restart policy (pure; the supervisor applies it) --------------------------------------

def backoff_delay(failures: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``initial * 2**(failures-1)`` capped, times 0.5-1.0."""
    if failures <= 0:
        return 0.0
    base = min(cap, initial * (2 ** (failures - 1)))
    return base * (0.5 + rng.random() / 2)


def is_flapping(history: collections.deque, now: float, window: float, limit: int) -> bool:
    """More than ``limit`` restarts within the last ``window`` seconds."""
    return sum(1 for t in history if now - t <= window) > limit
