"""The supervisor: the only loop in the main PID, and the only process that talks to systemd.

Runs in: the ``kanband: supervisor`` process (the daemon's main PID).

It takes the flock and the pidfile, binds the socket, becomes a child
subreaper, forks the roles from ``ROLES``, and then loops: it reads role
heartbeats, restarts dead or hung roles with exponential backoff and jitter,
detects flapping, reaps orphaned worker wrappers, and keeps systemd informed
(``READY=1``, ``WATCHDOG=1`` only while every essential role is healthy,
``STATUS=``, ``RELOADING=1``, ``STOPPING=1``). A non-essential role (the web
board) is supervised the same way but its state never holds up READY or the
watchdog; a role turned off in the config (``RoleSpec.enabled_by``) is not run. Signal handlers only enqueue (a wakeup fd);
the loop does the work.

Before anything else it checks the files: every directory it uses
(:func:`daemon.fsguard.ensure_private_dir`) and the board
(:func:`daemon.board.integrity.open_checked`: identity and ``quick_check``).
A role whose heartbeat says ``ready: False`` with an ``error`` (the dispatcher
on a damaged board) is ``unhealthy``: shown in ``STATUS=`` and
``daemon.status``, and no ``WATCHDOG=1`` is sent while it lasts.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import selectors
import signal
import socket
import stat
import time
from typing import Any

import sdnotify
import setproctitle
import structlog

from daemon import config as config_mod
from daemon import fsguard, ipc, pidlock, roles
from daemon import log as daemon_log
from daemon.pidlock import AlreadyRunning, read_pidfile
from daemon.roles import backoff_delay, is_flapping
from daemon.board import integrity

log = structlog.get_logger()

BIND_WAIT = 5.0  # seconds to wait for a dying predecessor's dispatcher to release the socket


@dataclasses.dataclass
class RoleState:
    name: str
    spec: roles.RoleSpec
    pid: int | None = None
    channel: socket.socket | None = None
    started: float = 0.0            # monotonic
    started_wall: float = 0.0
    last_hb: float = 0.0            # monotonic
    last_hb_wall: float | None = None
    ready: bool = False             # the role's latest heartbeat said it is ready
    unready_since: float = 0.0      # monotonic; when ``ready`` last went False
    checked_in: bool = False        # ready at least once since this fork
    restarts: int = 0
    failures: int = 0               # consecutive quick deaths, drives the backoff
    next_start: float = 0.0
    history: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=64))
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    killed_hung: bool = False
    last_error: str | None = None   # the role's own account of why it is not ready; kept across restarts


class Supervisor:
    """The main PID: owns the lock, pidfile and socket, runs the roles, speaks sd_notify."""

    def __init__(self, cfg: dict[str, Any], paths: dict[str, str], config_path: str | None) -> None:
        self.cfg = cfg
        self.paths = paths
        self.config_path = config_path
        self.sd = sdnotify.SystemdNotifier()
        self.sel = selectors.DefaultSelector()
        self.roles = {name: RoleState(name, spec) for name, spec in
                      sorted(roles.ROLES.items(), key=lambda kv: kv[1].order)}
        self.rng = random.Random()
        self.lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self.stopping = False
        self.sent_ready = False
        self.status_line = ""
        self.healthy = False
        self.flapping: set[str] = set()
        self.summary: dict[str, int] = {}
        wd = os.environ.get("WATCHDOG_USEC")
        wd_pid = os.environ.get("WATCHDOG_PID")
        self.watchdog = (int(wd) / 1e6) if wd and (not wd_pid or wd_pid == str(os.getpid())) else None
        self.cfg = self.within_watchdog(cfg)
        self.next_wd = 0.0
        self.next_snapshot = 0.0
        self.last_reload: dict[str, Any] | None = None  # shown by `kanban status`
        self.reload_seq = 0

    def within_watchdog(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Under systemd's watchdog, roles heartbeat and are judged within its deadline, whatever
        the config says: interval <= WatchdogSec/4, stale <= WatchdogSec/2 (sd_watchdog_enabled(3)
        asks for a ping at least every half of WATCHDOG_USEC; a role must be judged before that)."""
        if not self.watchdog:
            return cfg
        sup = dict(cfg["supervisor"])
        sup["heartbeat_interval"] = min(sup["heartbeat_interval"], self.watchdog / 4)
        sup["heartbeat_stale"] = min(sup["heartbeat_stale"], self.watchdog / 2)
        if sup["role_timeout"] <= sup["heartbeat_stale"]:
            sup["role_timeout"] = sup["heartbeat_stale"] * 2
        return {**cfg, "supervisor": sup}

    # ---- start-up -----------------------------------------------------------

    def acquire(self) -> None:
        """Take the board lock, then write the pidfile (atomically)."""
        self.lock_fd = pidlock.acquire(self.paths["state_dir"], self.paths["pidfile"])

    def release(self) -> None:
        if self.listener is not None:
            try:
                if os.stat(self.paths["socket"]).st_ino == self.socket_ino:
                    os.unlink(self.paths["socket"])
            except FileNotFoundError:
                pass
            self.listener.close()
        pidlock.release(self.paths["pidfile"], self.lock_fd)

    def bind(self) -> socket.socket:
        """Bind the socket, waiting briefly if a dying predecessor still listens on it.

        We hold the board lock, so a listener on our socket path is either the
        dispatcher of a supervisor that was just killed (it exits as soon as it
        sees its channel close) or another board's daemon; only the latter
        outlives ``BIND_WAIT``.
        """
        deadline = time.monotonic() + BIND_WAIT
        while True:
            try:
                return ipc.bind(self.paths["socket"])
            except ipc.SocketInUse:
                try:
                    is_sock = stat.S_ISSOCK(os.lstat(self.paths["socket"]).st_mode)
                except FileNotFoundError:
                    is_sock = True
                if not is_sock or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def check_files(self) -> None:
        """Check (or create, 0700) every directory we use, then check and migrate the board.

        Raises:
            fsguard.UnsafePath: A directory is not private to us.
            integrity.BoardError: The board is missing where one existed, another board, or damaged.
            OSError: A directory or the board's id file could not be created.
        """
        for key in ("logs", "runs", "workspaces"):
            fsguard.ensure_private_dir(self.paths[key])
        fsguard.ensure_private_dir(os.path.dirname(self.paths["board"]))
        t0 = time.monotonic()
        board_id, how = integrity.open_checked(self.paths["board"], self.paths["board_id"])
        log.info(f"board.{how}", board=self.paths["board"], board_id=board_id,
                 checked_in=round(time.monotonic() - t0, 3))

    def run(self) -> int:
        setproctitle.setproctitle("kanband: supervisor")
        self.acquire()
        try:
            self.check_files()  # and migrate once, before any role opens the board
            self.listener = self.bind()
            self.socket_ino = os.stat(self.paths["socket"]).st_ino
            try:
                roles.prctl(roles.PR_SET_CHILD_SUBREAPER, 1)
            except OSError as exc:
                log.warning("supervisor.subreaper_failed", error=str(exc))
            log.info("supervisor.started", board=self.paths["board"], socket=self.paths["socket"],
                     config=self.cfg.get("_file"), watchdog=self.watchdog)
            return self.loop()
        finally:
            self.release()

    # ---- roles --------------------------------------------------------------

    def fork_role(self, r: RoleState) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # child: becomes the role; never returns
            code = 1
            try:
                parent_end.close()
                signal.set_wakeup_fd(-1)
                for other in self.roles.values():
                    if other.channel is not None:
                        other.channel.close()
                os.close(self.lock_fd)
                self.sel.close()
                listener = self.listener if r.name == "dispatcher" else None
                if listener is None:
                    self.listener.close()
                child_end.setblocking(False)
                ctx = roles.RoleContext(r.name, self.cfg, self.paths, child_end, listener, self.pid)
                code = roles.resolve(r.spec.entry)(ctx) or 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                try:
                    structlog.get_logger().exception("role.crashed", role=r.name)
                except BaseException:
                    pass
            finally:
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        now = time.monotonic()
        r.pid, r.channel, r.started, r.started_wall = pid, parent_end, now, time.time()
        r.last_hb, r.ready, r.checked_in, r.killed_hung = now, False, False, False
        r.unready_since, r.info = now, {}
        self.sel.register(parent_end, selectors.EVENT_READ, ("role", r))
        log.info("role.started", name=r.name, child_pid=pid, restarts=r.restarts)
        # The dispatcher learns every role's pid before that role may connect (it answers the internal
        # methods by pid); queued before it serves anyone, so daemon.status is never role-less either.
        disp = self.roles["dispatcher"]
        if disp.channel is not None:
            roles.send(disp.channel, {"t": "roles", "roles": self.role_snapshot(), "flapping": sorted(self.flapping),
                                      "reload": self.last_reload})
        roles.send(parent_end, {"t": "go"})

    def on_role_exit(self, r: RoleState, status: int) -> None:
        now = time.monotonic()
        try:
            self.sel.unregister(r.channel)
        except (KeyError, ValueError):
            pass
        r.channel.close()
        r.channel, old_pid, r.pid = None, r.pid, None
        code = os.waitstatus_to_exitcode(status)
        if self.stopping:
            log.info("role.stopped", name=r.name, child_pid=old_pid, exit=code)
            return
        sup = self.cfg["supervisor"]
        lived = now - r.started
        if not self.enabled(r):  # turned off by a reload: it was asked to stop
            log.info("role.stopped", name=r.name, child_pid=old_pid, exit=code, reason="disabled")
            self.flapping.discard(r.name)
            self.next_snapshot = 0.0
            return
        r.failures = 1 if lived >= sup["backoff_reset"] else r.failures + 1
        delay = backoff_delay(r.failures, sup["backoff_initial"], sup["backoff_max"], self.rng)
        r.restarts += 1
        r.history.append(now)
        r.next_start = now + delay
        log.error("role.died", name=r.name, child_pid=old_pid, exit=code, lived=round(lived, 3),
                  restart_in=round(delay, 3), restarts=r.restarts)
        if is_flapping(r.history, now, sup["flap_window"], sup["flap_restarts"]):
            if r.name not in self.flapping:
                log.error("role.flapping", name=r.name, restarts_in_window=sup["flap_restarts"] + 1,
                          window=sup["flap_window"])
            self.flapping.add(r.name)
        self.next_snapshot = 0.0

    def on_role_message(self, r: RoleState) -> None:
        if r.channel is None:
            return
        msgs = roles.recv(r.channel)
        if msgs is None:
            try:
                self.sel.unregister(r.channel)
            except (KeyError, ValueError):
                pass
            return
        now = time.monotonic()
        for msg in msgs:
            if msg.get("t") == "reload" and r.name == "dispatcher":  # `kanban reload`
                result = self.reload(origin="rpc")
                if r.channel is not None:
                    roles.send(r.channel, {"t": "reloaded", "req": msg.get("req"), "reload": result})
                continue
            if msg.get("t") == "hb":
                r.last_hb, r.last_hb_wall = now, time.time()
                ready = bool(msg.get("ready", True))
                if ready != r.ready:
                    r.ready = ready
                    if not ready:
                        r.unready_since = now
                    self.next_snapshot = 0.0
                if msg.get("error"):
                    r.last_error = str(msg["error"])
                elif ready:
                    r.last_error = None
                if ready and not r.checked_in:
                    r.checked_in = True
                    log.info("role.checked_in", name=r.name, child_pid=r.pid,
                             after=round(now - r.started, 3))
                r.info = {k: v for k, v in msg.items() if k not in ("t", "summary")}
                if "summary" in msg:
                    self.summary = msg["summary"]

    def reap(self) -> None:
        by_pid = {r.pid: r for r in self.roles.values() if r.pid}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in by_pid:
                self.on_role_exit(by_pid[pid], status)
            else:  # an orphaned worker wrapper; its .exit file carries the truth
                log.info("orphan.reaped", child_pid=pid, exit=os.waitstatus_to_exitcode(status))

    def enabled(self, r: RoleState) -> bool:
        return roles.enabled(r.spec, self.cfg)

    def check_health(self, now: float) -> bool:
        """Start roles whose backoff has elapsed, kill hung ones; True if every essential role is healthy.

        Healthy means: alive, a heartbeat fresher than ``heartbeat_stale``, not
        stuck un-ready for longer than that, not un-ready with an ``error`` (at
        once: the dispatcher on a damaged board), and not flapping. A
        non-essential role is restarted and killed when hung like the others,
        but its health does not count.
        """
        sup = self.cfg["supervisor"]
        stale = sup["heartbeat_stale"]
        healthy = True
        for r in self.roles.values():
            if r.pid is None:
                if not self.enabled(r):
                    continue
                healthy = healthy and not r.spec.essential
                if not self.stopping and now >= r.next_start:
                    self.fork_role(r)
                continue
            if now - r.last_hb > stale and r.channel is not None:
                self.on_role_message(r)  # we may be the slow one: read what is queued before judging
            silent = now - r.last_hb
            if r.spec.essential and (silent > stale or (not r.ready and (now - r.unready_since > stale
                                                                         or r.info.get("error")))):
                healthy = False
            timeout = r.spec.hang_timeout if r.spec.hang_timeout is not None else sup["role_timeout"]
            if silent > timeout and not r.killed_hung:
                log.error("role.hung", name=r.name, child_pid=r.pid, silent=round(silent, 1), timeout=timeout)
                r.killed_hung = True
                try:
                    os.kill(r.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name in list(self.flapping):
            r = self.roles[name]
            if not is_flapping(r.history, now, sup["flap_window"], sup["flap_restarts"]):
                self.flapping.discard(name)
                self.next_snapshot = 0.0
                log.info("role.flapping_ended", name=name)
        return healthy and not any(self.roles[n].spec.essential for n in self.flapping)

    def role_snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Per-role state for ``daemon.status`` and the STATUS= line.

        Judged by the same rules as :meth:`check_health` at the same instant,
        so a STATUS= line naming a role ``unresponsive``, ``restarting`` or
        ``flapping`` is never followed by ``WATCHDOG=1`` until a newer STATUS=.
        """
        now = time.monotonic() if now is None else now
        stale = self.cfg["supervisor"]["heartbeat_stale"]
        out = {}
        for r in self.roles.values():
            if r.pid is None and not self.enabled(r):
                continue  # turned off in the config: not part of this daemon
            if r.pid is None:
                state = "flapping" if r.name in self.flapping else "restarting"
            elif now - r.last_hb > stale:
                state = "unresponsive"
            elif not r.ready:
                state = "unhealthy" if r.info.get("error") else "starting" if not r.checked_in else "not-ready"
            else:
                state = "flapping" if r.name in self.flapping else "ok"
            out[r.name] = {**r.info, "pid": r.pid, "state": state, "restarts": r.restarts,
                           "last_heartbeat": r.last_hb_wall, "started_at": r.started_wall,
                           "essential": r.spec.essential}
            if r.last_error and state != "ok":
                out[r.name]["error"] = r.last_error
        return out

    def send_snapshot(self, now: float) -> dict[str, Any]:
        snap = self.role_snapshot(now)
        disp = self.roles["dispatcher"]
        if disp.channel is not None:
            roles.send(disp.channel, {"t": "roles", "roles": snap, "flapping": sorted(self.flapping),
                                      "reload": self.last_reload})
        self.update_status(snap)
        self.next_snapshot = now + self.cfg["supervisor"]["heartbeat_interval"]
        return snap

    # ---- systemd --------------------------------------------------------------

    def notify(self, msg: str) -> None:
        self.sd.notify(msg)

    def update_status(self, snapshot: dict[str, Any]) -> None:
        s = self.summary
        board = f"{s.get('running', 0)} running, {s.get('ready', 0)} ready, {s.get('blocked', 0)} blocked"
        def state(n: str, v: dict[str, Any]) -> str:
            return f"{n} {v['state']}" + (f" ({v['error']})" if v.get("error") else "")
        line = board + "; " + ", ".join(state(n, v) for n, v in snapshot.items() if v["essential"])
        optional = [state(n, v) for n, v in snapshot.items() if not v["essential"]]
        if optional:  # shown, but never a reason to withhold WATCHDOG=1
            line += "; optional: " + ", ".join(optional)
        if line != self.status_line:
            self.status_line = line
            self.notify(f"STATUS={line}")

    # ---- signals --------------------------------------------------------------

    def reload(self, origin: str = "signal") -> dict[str, Any]:
        """SIGHUP (or ``kanban reload``): load the config again; a bad one is refused and the old one kept.

        ``RELOADING=1`` (with ``MONOTONIC_USEC``) and ``READY=1`` bracket the
        reload once we are up; before the first ``READY=1`` a reload is silent,
        so READY still means "every role checked in".

        Args:
            origin: ``signal`` or ``rpc``, recorded in the result.

        Returns:
            ``{seq, at, result, error, file, origin}``: ``result`` is ``applied`` or ``refused``
            (``error`` then names the file and key); ``at`` is epoch seconds. It is kept as
            :attr:`last_reload` and reaches ``daemon.status`` with the next role snapshot.
        """
        if self.sent_ready:
            self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        path = self.config_path
        self.reload_seq += 1
        outcome: dict[str, Any] = {"seq": self.reload_seq, "at": time.time(), "origin": origin,
                                   "file": self.cfg.get("_file") or path}
        try:
            if self.cfg.get("_file") and not os.path.exists(self.cfg["_file"]):
                raise config_mod.ConfigError(f"{self.cfg['_file']}: file does not exist any more")
            new = config_mod.load(path)
        except config_mod.ConfigError as exc:
            log.error("config.reload_refused", file=self.cfg.get("_file") or path, error=str(exc),
                      kept=self.cfg.get("_file"), origin=origin)
            self.last_reload = {**outcome, "result": "refused", "error": str(exc)}
            self.next_snapshot = 0.0
            if self.sent_ready:
                self.notify("READY=1")
            return self.last_reload
        self.cfg = new = self.within_watchdog(new)
        daemon_log.configure(new, role="supervisor")
        wire = {**new, "_set": sorted(new["_set"])}
        for r in self.roles.values():
            if r.channel is not None:
                roles.send(r.channel, {"t": "config", "cfg": wire})
            if r.pid is not None and not self.enabled(r):
                log.info("role.disabled", name=r.name, child_pid=r.pid, key=r.spec.enabled_by)
                try:
                    os.kill(r.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif r.pid is None and self.enabled(r) and r.next_start == 0.0:
                log.info("role.enabled", name=r.name, key=r.spec.enabled_by)
        log.info("config.reloaded", file=new.get("_file"), profiles=sorted(new["profiles"]), origin=origin)
        self.last_reload = {**outcome, "file": new.get("_file") or path, "result": "applied", "error": None}
        self.next_snapshot = 0.0
        if self.sent_ready:
            self.notify("READY=1")
        return self.last_reload

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop the roles in ``stop_order``; workers follow ``on_shutdown`` (the reaper's job)."""
        self.stopping = True
        self.notify("STOPPING=1")
        log.info("supervisor.stopping", on_shutdown=self.cfg["dispatch"]["on_shutdown"])
        disp = self.roles["dispatcher"]
        if disp.channel is not None:
            roles.send(disp.channel, {"t": "stopping"})
        for r in sorted(self.roles.values(), key=lambda r: r.spec.stop_order):
            if r.pid is None:
                continue
            timeout = r.spec.stop_timeout
            draining = r.name == "reaper" and self.cfg["dispatch"]["on_shutdown"] == "drain"
            if draining:
                timeout += self.cfg["dispatch"]["drain_timeout"] + self.cfg["dispatch"]["kill_grace"]
            try:
                os.kill(r.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            next_extend = 0.0
            while r.pid is not None:
                now = time.monotonic()
                if now > deadline:
                    log.error("role.stop_timeout", name=r.name, child_pid=r.pid, timeout=timeout)
                    try:
                        os.kill(r.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    deadline = now + 5
                if draining and now >= next_extend:  # a long drain: ask systemd for more stop time
                    self.notify(f"EXTEND_TIMEOUT_USEC={int((deadline - now + 10) * 1e6)}")
                    next_extend = now + 5
                self.reap()
                if r.pid is not None:
                    time.sleep(0.02)
        log.info("supervisor.stopped")

    # ---- loop -------------------------------------------------------------------

    def loop(self) -> int:
        self.pid = os.getpid()
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        wsock.setblocking(False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, _noop)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        self.sel.register(rsock, selectors.EVENT_READ, ("sig", None))
        try:
            for r in self.roles.values():
                if self.enabled(r):
                    self.fork_role(r)
            while True:
                now = time.monotonic()
                healthy = self.check_health(now)
                if healthy != self.healthy:  # STATUS= follows at once, computed from the same instant
                    self.healthy = healthy
                    self.next_snapshot = 0.0
                if not self.sent_ready and all(r.pid and r.ready for r in self.roles.values()
                                               if r.spec.essential and self.enabled(r)):
                    self.sent_ready = True
                    self.send_snapshot(now)  # daemon.status already shows every role ok when READY lands
                    self.notify("READY=1")
                    log.info("supervisor.ready", roles={n: r.pid for n, r in self.roles.items()})
                if now >= self.next_snapshot:
                    self.send_snapshot(now)
                if self.watchdog and now >= self.next_wd:
                    if healthy and self.sent_ready:
                        self.notify("WATCHDOG=1")
                    self.next_wd = now + self.watchdog / 2
                timeout = min(self.next_snapshot, self.next_wd if self.watchdog else now + 1.0) - now
                pending = [r.next_start for r in self.roles.values() if r.pid is None and self.enabled(r)]
                if pending:
                    timeout = min(timeout, min(pending) - now)
                for key, _ in self.sel.select(max(0.0, min(timeout, 1.0))):
                    kind, r = key.data
                    if kind == "role" and key.fileobj is r.channel:  # not a channel reaped earlier in this batch
                        self.on_role_message(r)
                    elif kind == "sig":
                        sigs = roles.read_signals(rsock)
                        # a stop first: when the whole process group got SIGTERM, the roles' exits
                        # are part of the stop, not deaths to restart
                        if signal.SIGTERM in sigs or signal.SIGINT in sigs:
                            self.stop()
                            return 0
                        if signal.SIGCHLD in sigs:
                            self.reap()
                        if signal.SIGHUP in sigs:
                            self.reload()
                self.reap()
        finally:
            signal.set_wakeup_fd(-1)


def _noop(signum: int, frame: Any) -> None:
    """Handlers only enqueue: the wakeup fd carries the signal number to the loop."""


__all__ = ["Supervisor", "AlreadyRunning", "backoff_delay", "is_flapping", "read_pidfile"]
