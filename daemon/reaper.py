"""The reaper role: parent of every worker; reaps, classifies, enforces runtimes.

Runs in: the ``kanband: reaper`` process, forked by the supervisor.

It keeps one connection to the dispatcher. ``reaper.attach`` returns the
runs the board believes are active; the reaper re-adopts each live one by
pid *and* process start time (a reused pid is never trusted), reports the
ones that ended while nobody watched (from their ``.exit`` file), and reports
``lost`` only when nothing is known. Then the dispatcher pushes ``spawn``,
``kill`` and ``cleanup`` notifications.

Every worker is watched through a pidfd, whether it is our child or was
adopted, so one code path notices every exit. Exit reports stay in memory
and in the ``.exit`` file until the dispatcher acknowledges them; a reaper or
dispatcher restart loses nothing.

A run whose worker completed with a verify command pending does not end when
its tree is gone: the answer to ``run.exited`` carries the verify command's
spawn spec, and the reaper runs it like a worker (its own wrapper, files
``<run>.verify.*``, the same containment, output in the task log between
separators) and reports it with ``run.verified``. A verification the reaper
finds neither running nor reported after a restart is started again.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import signal
import time
from typing import Any

import psutil
import structlog

from daemon import attachstore, containment, fsguard, roles, spawner, workspaces, worklog
from daemon.rpcpeer import Link, Peer

log = structlog.get_logger()

#: A backstop after ``kill_grace``: if the wrapper has not ended its run by then, the reaper KILLs
#: the run's processes itself (never the wrapper, which must reap them and record the status).
BACKSTOP = 2.0
SWEEP_EVERY = 0.1  # seconds between re-scans of a run whose wrapper died, until nothing is left
#: Seconds between two looks at the runs' logs for output (a heartbeat); at most claim_ttl/4 apart per run.
OUTPUT_POLL = 1.0
#: Bytes of a run's log sent with its exit (``log_tail``): what rate_limit_patterns are matched against.
TAIL_BYTES = 4096


@dataclasses.dataclass
class Tracked:
    """A run whose wrapper the reaper watches (through a pidfd)."""

    run: str
    task: str
    pid: int                            # the wrapper: session leader, child subreaper
    start_time: float
    pidfd: int
    our_child: bool
    log: str
    deadline: float | None = None       # monotonic; max_runtime
    kill_reason: str | None = None
    kill_at: float | None = None        # monotonic; the backstop KILL
    sent_kill: bool = False
    kill_grace: float = 10.0
    worker_pid: int | None = None
    exec_at: float | None = None
    cgroup: str | None = None
    verify: dict[str, Any] | None = None  # the spawn spec, when this is the run's verify command
    files: str = ""                     # name of its run files: the run id, or "<run>.verify"
    log_seen: tuple[int, int] | None = None  # (size, mtime_ns) of the log at the last look
    output_at: float = 0.0              # monotonic: when its output was last reported as a heartbeat


@dataclasses.dataclass
class Sweep:
    """A run whose wrapper died without proving its tree gone: killed until nothing is left."""

    run: str
    task: str
    rec: dict[str, Any]
    session: int | None
    cgroup: str | None
    log: str
    killed_for: str | None
    since: float                        # monotonic
    next_scan: float = 0.0
    killed: int = 0
    verify: dict[str, Any] | None = None


class Reaper:
    def __init__(self, ctx: roles.RoleContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.paths = dict(ctx.paths)
        self.contain = containment.from_paths(ctx.paths)
        self.sel = selectors.DefaultSelector()
        self.tracked: dict[str, Tracked] = {}
        self.sweeps: dict[str, Sweep] = {}
        self.unacked: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}   # runs to re-check for adoption
        self.cleanups: dict[str, list[dict[str, Any]]] = {}  # task -> cleanups waiting for its worker
        self.purges: dict[int, Any] = {}  # pidfd -> the Popen of a workspace purge child
        self.link = Link(self.paths["socket"], self.sel, ("peer", None), self.on_notify, self.on_connect,
                         self.on_lost)
        self.attached = False
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        try:
            self.paths["client_bin"] = spawner.client_bin(self.paths["runs"])
        except (OSError, fsguard.UnsafePath) as exc:
            log.warning("reaper.client_bin_failed", error=str(exc))

    # ---- dispatcher connection -------------------------------------------

    @property
    def peer(self) -> Peer | None:
        return self.link.peer

    def on_connect(self, peer: Peer) -> None:
        peer.call("reaper.attach", {"pid": os.getpid(), "tracked": sorted(self.tracked)}, self.on_attached)

    def on_lost(self) -> None:
        log.warning("reaper.dispatcher_lost")
        self.attached = False

    def on_attached(self, msg: dict[str, Any]) -> None:
        if "error" in msg:
            log.error("reaper.attach_refused", error=msg["error"])
            self.peer.close()
            return
        self.attached = True
        self.link.attached()
        for report in list(self.unacked.values()):
            self._send_exit(report)
        for t in self.tracked.values():  # a run.started sent to a dispatcher that died may be lost
            if t.verify is None:
                self._send_started(t)
        for run in msg["result"]["runs"]:
            t = self.tracked.get(run["id"])
            if t is not None and run.get("kill_reason") and t.kill_reason is None:
                # the board decided to end it, and that kill may have been lost with a dispatcher
                # that died between its commit and telling us: carry it out now
                self.kill(run["id"], run["kill_reason"])
            elif run["id"] not in self.tracked and run["id"] not in self.unacked and run["id"] not in self.sweeps:
                self.pending[run["id"]] = run
        self.remove_stale_files({run["id"] for run in msg["result"]["runs"]})
        self.resolve_pending()
        log.info("reaper.attached", active=len(msg["result"]["runs"]), tracked=len(self.tracked),
                 containment=self.contain.mode)
        roles.send(self.ctx.channel, {"t": "hb", "ready": True, "workers": len(self.tracked)})

    def on_notify(self, msg: dict[str, Any]) -> None:
        p = msg.get("params") or {}
        method = msg.get("method")
        try:
            if method == "spawn":
                self.spawn(p)
            elif method == "kill":
                self.kill(p["run"], p.get("reason") or "cancel", task=p.get("task"))
            elif method == "cleanup":
                self.cleanup(p)
        except Exception:
            log.exception("reaper.request_failed", method=method, run=p.get("run"))

    # ---- adoption ------------------------------------------------------------

    def resolve_pending(self) -> None:
        """Decide, for each run the board thinks is active and we do not watch, what is true.

        - an ``.exit`` file: the wrapper proved the tree gone; report it;
        - a live wrapper (pid *and* start time match): adopt it;
        - a dead wrapper, or a lock left by one: sweep what is left of the run, then report;
        - the lock still held but no pid file: a spawn is in progress; look again shortly;
        - no lock file at all: no wrapper was ever forked; report ``lost``.
        """
        for run_id, run in list(self.pending.items()):
            verify = run.get("verify")  # the run is verifying: its verify command is what we look for
            name = spawner.files_name(verify) if verify else run_id
            pid_path, exit_path = spawner.run_files(self.paths["runs"], name)
            lock_path = spawner.lock_file(self.paths["runs"], name)
            cgroup = self.contain.run_cgroup(name)
            rec = spawner.read_json(exit_path)
            killed_for = run.get("kill_reason")
            if rec is not None:
                del self.pending[run_id]
                self._sweep_or_report(run_id, run["task_id"], rec, session=None, cgroup=cgroup,
                                      killed_for=killed_for, verify=verify)
                continue
            info = spawner.read_json(pid_path)
            if info is not None:
                del self.pending[run_id]
                self.adopt(run, info)
                continue
            if spawner.lock_held(lock_path):
                continue  # forked, not yet recorded: the wrapper writes its pid file in a moment
            del self.pending[run_id]
            if verify and os.path.exists(lock_path):  # its wrapper died unrecorded: sweep, then run it again
                self.begin_sweep(run_id, run["task_id"], {"lost": "the verify command's wrapper died"},
                                 session=None, cgroup=cgroup, killed_for=killed_for, verify=verify)
            elif verify:  # never started, or its report was acknowledged before a restart: start it
                self.spawn(verify)
            elif os.path.exists(lock_path) or run.get("pid"):
                self.begin_sweep(run_id, run["task_id"], {"lost": "the run's wrapper died before recording it"},
                                 session=run.get("pid"), cgroup=cgroup, killed_for=killed_for)
            else:
                self.report(run_id, run["task_id"], {"lost": "the worker was never started"}, killed_for=killed_for)

    def remove_stale_files(self, active: set[str]) -> None:
        """Delete the run files of runs the board has ended: a reaper that died after reporting
        an exit, before the acknowledgement arrived, left them behind. A run still active, one
        this reaper knows, or one whose lock a wrapper holds keeps its files."""
        try:
            names = os.listdir(self.paths["runs"])
        except FileNotFoundError:
            return
        known = active | set(self.tracked) | set(self.unacked) | set(self.sweeps) | set(self.pending)
        stale: dict[str, list[str]] = {}
        for name in names:  # <run>.pid, .exit, .lock, .retry-after, and a .pid.tmp<pid> cut short
            run_id = name.split(".", 1)[0]
            if name.startswith("r_") and "." in name and run_id not in known:
                stale.setdefault(run_id, []).append(name)
        for run_id, files in sorted(stale.items()):
            if spawner.lock_held(spawner.lock_file(self.paths["runs"], run_id)):
                continue
            for name in files:
                path = os.path.join(self.paths["runs"], name)
                try:
                    if name.endswith(".attachments") and not os.path.islink(path):
                        attachstore.drop_snapshot(self.paths["runs"], run_id)  # a read-only directory
                    elif not os.path.isdir(path) or os.path.islink(path):
                        os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # never let a leftover take the reaper down
                    log.warning("run.file_left", run=run_id, path=path, error=str(exc))
            log.info("run.files_removed", run=run_id, files=sorted(files), reason="the board has ended the run")

    def adopt(self, run: dict[str, Any], info: dict[str, Any]) -> None:
        run_id, pid = run["id"], info["pid"]
        verify = run.get("verify")
        if verify:  # its verify command's wrapper: the runtime limit counts from the command's exec
            run = {**run, "max_runtime": verify.get("max_runtime"), "started_at": None}
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        alive = False
        if pidfd >= 0:
            try:
                alive = abs(psutil.Process(pid).create_time() - info["start_time"]) < 0.05
            except psutil.NoSuchProcess:
                alive = False
        if not alive:
            if pidfd >= 0:
                os.close(pidfd)
            _, exit_path = spawner.run_files(self.paths["runs"], spawner.files_name(verify) if verify else run_id)
            rec = spawner.read_json(exit_path)
            if rec is None:
                rec = {"lost": f"worker wrapper (pid {pid}) is gone and left no exit status"}
                self.begin_sweep(run_id, run["task_id"], rec, session=pid, cgroup=info.get("cgroup"),
                                 killed_for=run.get("kill_reason"), verify=verify)
            else:
                self._sweep_or_report(run_id, run["task_id"], rec, session=None, cgroup=info.get("cgroup"),
                                      killed_for=run.get("kill_reason"), verify=verify)
            return
        t = Tracked(run_id, run["task_id"], pid, info["start_time"], pidfd, our_child=False,
                    log=self._log_path(run["task_id"]), kill_grace=run.get("kill_grace") or 10.0,
                    worker_pid=info.get("worker_pid"), exec_at=info.get("exec_at"), cgroup=info.get("cgroup"),
                    verify=verify, files=spawner.files_name(verify) if verify else run_id)
        started = info.get("exec_at") or run.get("started_at")
        if run.get("max_runtime") and started:
            t.deadline = time.monotonic() + max(0.0, started + run["max_runtime"] - time.time())
        self.tracked[run_id] = t
        self._watch(pidfd, run_id)
        log.info("worker.adopted", run=run_id, task=run["task_id"], wrapper_pid=pid, verify=bool(verify))
        if verify is None:
            self._send_started(t)
        if run.get("kill_reason"):  # the dispatcher decided to stop it while no reaper was attached
            self.kill(run_id, run["kill_reason"])

    def _watch(self, pidfd: int, run_id: str) -> None:
        self.sel.register(pidfd, selectors.EVENT_READ, ("pidfd", run_id))

    def _log_path(self, task_id: str) -> str:
        return os.path.join(self.paths["logs"], f"{task_id}.log")

    # ---- spawning and killing ----------------------------------------------

    def spawn(self, spec: dict[str, Any]) -> None:
        """Start a run's worker, or (``spec["verify"]``) the verify command of a run whose worker is gone."""
        run_id = spec["run"]
        if run_id in self.tracked or run_id in self.sweeps or self.stopping:
            return
        verify = spec if spec.get("verify") else None
        if verify is not None:
            self._unlink_files(run_id)  # the worker's files: its exit was acknowledged
            if spec.get("kill_reason"):  # the operator decided while it was not running: nothing to verify
                self.report(run_id, spec["task"], {"lost": "the verification was cancelled before it started"},
                            killed_for=spec["kill_reason"], verify=verify)
                return

        def forked(pid: int) -> None:
            if self.peer is not None and verify is None:
                self.peer.call("run.starting", {"run": run_id, "pid": pid})

        try:
            info = spawner.start(spec, self.paths, self.contain, on_fork=forked)
        except (spawner.SpawnError, OSError) as exc:
            log.warning("worker.spawn_failed", run=run_id, task=spec["task"], error=str(exc), verify=bool(verify))
            self.report(run_id, spec["task"], {"spawn_error": str(exc)}, verify=verify)
            return
        t = Tracked(run_id, spec["task"], info["pid"], info["start_time"], -1, our_child=True,
                    log=info["log"], kill_grace=spec.get("kill_grace") or 10.0, worker_pid=info["worker_pid"],
                    exec_at=info["exec_at"], cgroup=info["cgroup"], verify=verify, files=spawner.files_name(spec))
        try:
            t.pidfd = os.pidfd_open(info["pid"])
        except OSError as exc:  # e.g. out of fds: a run we cannot watch must not keep running
            log.error("worker.unwatchable", run=run_id, error=str(exc))
            containment.signal_all(containment.descendants(info["pid"]), signal.SIGKILL)
            os.kill(info["pid"], signal.SIGKILL)
            os.waitpid(info["pid"], 0)
            self.begin_sweep(run_id, spec["task"], {"spawn_error": f"cannot watch the worker: {exc}"},
                             session=info["pid"], cgroup=info["cgroup"], killed_for=None, verify=verify)
            return
        if spec.get("max_runtime"):
            t.deadline = time.monotonic() + spec["max_runtime"]
        self.tracked[run_id] = t
        self._watch(t.pidfd, run_id)
        log.info("worker.started", run=run_id, task=spec["task"], profile=spec["profile"], wrapper_pid=info["pid"],
                 worker_pid=info["worker_pid"], cgroup=info["cgroup"], verify=bool(verify))
        if verify is None:
            self._send_started(t)

    def _send_started(self, t: Tracked) -> None:
        if self.peer is not None:
            self.peer.call("run.started", {"run": t.run, "pid": t.pid, "start_time": t.start_time,
                                           "worker_pid": t.worker_pid, "exec_at": t.exec_at})

    def kill(self, run_id: str, reason: str, task: str | None = None) -> None:
        """End a run: SIGTERM to its wrapper, which TERMs the run's tree and KILLs it after
        ``kill_grace``; the reaper KILLs the tree itself ``BACKSTOP`` seconds after that."""
        t = self.tracked.get(run_id)
        if t is None:
            if run_id in self.unacked or run_id in self.sweeps:  # already ending; its report is on its way
                return
            if run_id in self.pending:  # still being resolved: adopt() carries the kill out
                self.pending[run_id]["kill_reason"] = reason
                return
            # not ours to watch: find out what is there (a wrapper forked by a dead reaper, or nothing)
            self.pending[run_id] = {"id": run_id, "task_id": task or "", "kill_reason": reason,
                                    "claimed_at": time.time()}
            self.resolve_pending()
            return
        if t.kill_reason is None or reason == "timeout":
            t.kill_reason = reason
        try:
            signal.pidfd_send_signal(t.pidfd, signal.SIGTERM)
        except (ProcessLookupError, OSError):
            pass
        if t.kill_at is None:  # a repeated kill must not push the KILL escalation back
            t.kill_at = time.monotonic() + t.kill_grace + BACKSTOP
        log.info("worker.terminating", run=run_id, task=t.task, reason=reason)

    def _backstop(self, t: Tracked) -> None:
        """The wrapper did not end its run in time: KILL the run's processes (not the wrapper)."""
        if t.cgroup:
            containment.cgroup_kill(t.cgroup)
        try:
            signal.pidfd_send_signal(t.pidfd, 0)  # still the same process? then its descendants are the run's
            containment.signal_all(containment.descendants(t.pid), signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def cleanup(self, p: dict[str, Any]) -> None:
        if any(t.task == p["task"] for t in self.tracked.values()) or \
                any(sw.task == p["task"] for sw in self.sweeps.values()):
            self.cleanups.setdefault(p["task"], []).append(p)
            return
        result = workspaces.cleanup_workspace(p["kind"], p["path"], self.paths["workspaces"],
                                              p.get("repo") or self.cfg["workspaces"]["repo"], purger=self.start_purge)
        level = log.warning if result.startswith("refused") else log.info
        level("workspace.cleanup", task=p["task"], path=p["path"], result=result)

    def start_purge(self, root: str, name: str | None) -> None:
        """Delete ``<root>/.trash/<name>`` (all of the trash if None) in a child; reaped in ``purged``."""
        proc = workspaces.start_purge(root, name)
        try:
            pidfd = os.pidfd_open(proc.pid)  # our child: its pid cannot be reused before we reap it
        except OSError:  # out of descriptors: purge in the foreground rather than leave a zombie
            proc.wait()
            return
        self.purges[pidfd] = proc
        self.sel.register(pidfd, selectors.EVENT_READ, ("purge", pidfd))
        log.info("workspace.purge_started", child_pid=proc.pid, trash=name or "*")

    def purged(self, pidfd: int) -> None:
        proc = self.purges.pop(pidfd)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        code = proc.wait()
        (log.info if code == 0 else log.warning)("workspace.purged", child_pid=proc.pid, exit_code=code)

    # ---- exits ---------------------------------------------------------------

    def on_exit(self, run_id: str) -> None:
        """The wrapper exited. With an ``.exit`` file it proved its tree gone; without one
        (someone SIGKILLed it), what is left of the run is swept before the run may end."""
        t = self.tracked.pop(run_id)
        try:
            self.sel.unregister(t.pidfd)
        except (KeyError, ValueError):
            pass
        _, exit_path = spawner.run_files(self.paths["runs"], t.files or run_id)
        rec = spawner.read_json(exit_path)
        os.close(t.pidfd)
        status = None
        if rec is None:
            # Scan while our child is still a zombie: its pid (the run's session id) cannot be reused yet.
            self.begin_sweep(run_id, t.task, {}, session=t.pid, cgroup=t.cgroup, killed_for=t.kill_reason,
                             log_path=t.log, verify=t.verify)
        if t.our_child:
            try:
                _, status = os.waitpid(t.pid, 0)
            except ChildProcessError:
                status = None
        if rec is None:
            sw = self.sweeps[run_id]
            if status is not None and os.WIFSIGNALED(status):
                sw.rec = {"signal": os.WTERMSIG(status)}
            elif t.sent_kill:
                sw.rec = {"signal": signal.SIGKILL}
            else:
                sw.rec = {"lost": f"worker wrapper (pid {t.pid}) ended without recording an exit status"}
            self.check_sweep(sw)
            return
        self._sweep_or_report(run_id, t.task, rec, session=None, cgroup=t.cgroup, killed_for=t.kill_reason,
                              log_path=t.log, verify=t.verify)

    def _sweep_or_report(self, run_id: str, task_id: str, rec: dict[str, Any], session: int | None,
                         cgroup: str | None, killed_for: str | None, log_path: str | None = None,
                         verify: dict[str, Any] | None = None) -> None:
        """An ``.exit`` file exists; in cgroup mode the cgroup must be empty too."""
        if cgroup and containment.cgroup_procs(cgroup):
            self.begin_sweep(run_id, task_id, rec, session=session, cgroup=cgroup, killed_for=killed_for,
                             log_path=log_path, verify=verify)
            return
        if cgroup:
            containment.remove_cgroup(cgroup)
        self.report(run_id, task_id, rec, log_path=log_path or self._log_path(task_id), killed_for=killed_for,
                    verify=verify)
        self._after_run(task_id)

    def begin_sweep(self, run_id: str, task_id: str, rec: dict[str, Any], session: int | None, cgroup: str | None,
                    killed_for: str | None, log_path: str | None = None, verify: dict[str, Any] | None = None
                    ) -> None:
        sw = Sweep(run_id, task_id, rec, session, cgroup, log_path or self._log_path(task_id), killed_for,
                   since=time.monotonic(), verify=verify)
        self.sweeps[run_id] = sw
        self._sweep_scan(sw)

    def _sweep_scan(self, sw: Sweep) -> list[int]:
        if sw.cgroup:
            containment.cgroup_kill(sw.cgroup)
            left = containment.cgroup_procs(sw.cgroup)
        else:
            left = []
        if self.contain.mode == "subreaper" or not sw.cgroup:
            left = sorted(set(left) | set(containment.run_stragglers(sw.run, sw.session)))
        if left:
            containment.signal_all(left, signal.SIGKILL)
            sw.killed += len(left)
            if sw.killed == len(left):
                log.warning("worker.orphans_killed", run=sw.run, task=sw.task, pids=left)
        sw.next_scan = time.monotonic() + SWEEP_EVERY
        return left

    def check_sweep(self, sw: Sweep) -> None:
        """Re-scan; once nothing of the run is alive, report it."""
        if not sw.rec:  # on_exit fills it in right after the first scan
            return
        left = self._sweep_scan(sw)
        if left:
            if time.monotonic() - sw.since > 10 and not sw.rec.get("_warned"):
                sw.rec["_warned"] = True
                log.error("worker.unkillable", run=sw.run, task=sw.task, pids=left)
            return
        del self.sweeps[sw.run]
        sw.rec.pop("_warned", None)
        if sw.cgroup:
            containment.remove_cgroup(sw.cgroup)
        self.report(sw.run, sw.task, sw.rec, log_path=sw.log, killed_for=sw.killed_for, verify=sw.verify)
        self._after_run(sw.task)

    def _after_run(self, task_id: str) -> None:
        if any(t.task == task_id for t in self.tracked.values()) or \
                any(sw.task == task_id for sw in self.sweeps.values()):
            return
        for p in self.cleanups.pop(task_id, []):
            self.cleanup(p)

    def report(self, run_id: str, task_id: str, rec: dict[str, Any], log_path: str | None = None,
               killed_for: str | None = None, verify: dict[str, Any] | None = None) -> None:
        if verify is not None:
            self.report_verified(run_id, task_id, rec, killed_for, verify)
            return
        rec = {k: (v.encode("utf-8", "replace").decode() if isinstance(v, str) else v) for k, v in rec.items()}
        report = {"run": run_id, "exit_code": rec.get("exit_code"), "signal": rec.get("signal"),
                  "timed_out": killed_for == "timeout", "killed_for": killed_for,
                  "spawn_error": rec.get("spawn_error"), "lost": rec.get("lost"),
                  "ended_at": rec.get("ended_at") or time.time()}
        if log_path and not rec.get("spawn_error"):
            report["log_tail"] = run_tail(log_path, run_id)
        if rec.get("exit_code") == 75:
            report["retry_after"] = spawner.read_retry_after(spawner.retry_after_file(self.paths["runs"], run_id))
        log.info("worker.exited", run=run_id, task=task_id, exit_code=report["exit_code"], signal=report["signal"],
                 killed_for=killed_for, spawn_error=report["spawn_error"], lost=report["lost"])
        self.unacked[run_id] = report
        if self.attached:
            self._send_exit(report)

    def report_verified(self, run_id: str, task_id: str, rec: dict[str, Any], killed_for: str | None,
                        spec: dict[str, Any]) -> None:
        """A run's verify command ended (and none of its processes is alive): its output goes to
        ``<logs>/<task>.verify-<run>.txt``, a closing separator to the task log, the result to
        the dispatcher (``run.verified``)."""
        if rec.get("terminated") and killed_for is None and not rec.get("lost"):
            # stopped by a reaper that died before it could say why (a shutdown, say): not a verdict
            rec = {**rec, "lost": "the verify command was stopped, and why was lost in a restart"}
        log_path = self._log_path(task_id)
        output = spawner.verify_output(log_path, run_id)
        if rec.get("spawn_error"):
            output += rec["spawn_error"] + "\n"
        if rec.get("spawn_error") or rec.get("lost"):
            how = rec.get("spawn_error") or rec.get("lost")
        elif killed_for == "timeout":
            how = f"timed out after {spec.get('max_runtime')}s"
        elif rec.get("signal"):
            how = f"killed by signal {rec['signal']}"
        else:
            how = f"exit code {rec.get('exit_code')}"
        out_path = os.path.join(self.paths["logs"], f"{task_id}.verify-{run_id}.txt")
        try:
            spawner.append_log(log_path, f"===== kanban verify {run_id} ended: {how} =====\n")
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, output.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("verify.output_failed", run=run_id, path=out_path, error=str(exc))
            out_path = None
        report = {"run": run_id, "exit_code": rec.get("exit_code"), "signal": rec.get("signal"),
                  "timed_out": killed_for == "timeout", "killed_for": killed_for,
                  "spawn_error": rec.get("spawn_error"), "lost": rec.get("lost"),
                  "ended_at": rec.get("ended_at") or time.time(), "output_tail": output[-4000:],
                  "output_path": out_path, "_method": "run.verified", "_files": spawner.files_name(spec)}
        log.info("verify.exited", run=run_id, task=task_id, exit_code=report["exit_code"], signal=report["signal"],
                 killed_for=killed_for, spawn_error=report["spawn_error"], lost=report["lost"])
        self.unacked[run_id] = report
        if self.attached:
            self._send_exit(report)

    def _unlink_files(self, name: str) -> None:
        runs_dir = self.paths["runs"]
        for path in (*spawner.run_files(runs_dir, name), spawner.lock_file(runs_dir, name),
                     spawner.retry_after_file(runs_dir, name), spawner.context_file(runs_dir, name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _send_exit(self, report: dict[str, Any]) -> None:
        run_id = report["run"]
        method = report.get("_method", "run.exited")
        files = report.get("_files", run_id)

        def acked(msg: dict[str, Any]) -> None:
            err = msg.get("error")
            if err and err.get("data", {}).get("name") not in ("not_found",):
                log.error("reaper.exit_report_refused", run=run_id, error=err)
                return
            self.unacked.pop(run_id, None)
            self._unlink_files(files)
            verify = (msg.get("result") or {}).get("verify")
            if verify:  # the worker completed and is gone (or a verification was interrupted): verify now
                self.spawn(verify)
                return
            try:
                attachstore.drop_snapshot(self.paths["runs"], run_id)
            except OSError as exc:
                log.warning("attachment.snapshot_left", run=run_id, error=str(exc))

        if self.peer is not None:
            self.peer.call(method, {k: v for k, v in report.items() if not k.startswith("_")}, acked)

    # ---- timers --------------------------------------------------------------

    def timers(self) -> float:
        """Fire due deadlines and escalations; returns seconds until the next one."""
        now = time.monotonic()
        nxt = now + 5.0
        for t in list(self.tracked.values()):
            if t.deadline is not None and now >= t.deadline and t.kill_reason is None:
                log.warning("worker.timed_out", run=t.run, task=t.task)
                self.kill(t.run, "timeout")
                if self.peer is not None and t.verify is None:  # the board shows it exiting while the tree ends
                    self.peer.call("run.exiting", {"run": t.run, "reason": "timeout"})
            if t.kill_at is not None and now >= t.kill_at and not t.sent_kill:
                log.warning("worker.killing", run=t.run, task=t.task, reason=t.kill_reason)
                self._backstop(t)
                t.sent_kill = True
            for when in (t.deadline if t.kill_reason is None else None, None if t.sent_kill else t.kill_at):
                if when is not None:
                    nxt = min(nxt, when)
        for sw in list(self.sweeps.values()):
            if now >= sw.next_scan:
                self.check_sweep(sw)
            if sw.run in self.sweeps:
                nxt = min(nxt, sw.next_scan)
        if self.pending:
            nxt = min(nxt, now + 0.05)
        return max(0.0, nxt - now)

    def poll_output(self) -> None:
        """Output is a heartbeat: report the runs whose log changed since the last look (``run.output``).

        Each run is reported at most once per ``dispatch.claim_ttl / 4`` seconds, so a chatty
        worker costs one board write (and one ``heartbeat`` event) per quarter claim; the
        dispatcher ignores runs whose profile says ``heartbeat_from_output: false``.
        """
        if self.peer is None or not self.attached:
            return
        now = time.monotonic()
        every = self.cfg["dispatch"]["claim_ttl"] / 4
        due = []
        for t in self.tracked.values():
            if t.verify is not None or t.kill_reason is not None:
                continue
            try:
                st = os.stat(t.log)
                seen = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue
            if t.log_seen is None:  # the first look: the start line the spawner wrote is not the worker's
                t.log_seen = seen
                continue
            if seen != t.log_seen and now - t.output_at >= every:
                t.log_seen, t.output_at = seen, now
                due.append(t.run)
        if due:
            self.peer.call("run.output", {"runs": due})

    def rotate_logs(self) -> None:
        for t in self.tracked.values():
            if t.verify is None and spawner.rotate_if_needed(t.log, self.cfg["logs"]["worker_log_max"]):
                log.info("worker.log_rotated", task=t.task, path=t.log)

    # ---- shutdown ------------------------------------------------------------

    def begin_stop(self) -> None:
        policy = self.cfg["dispatch"]["on_shutdown"]
        if os.getppid() != self.ctx.supervisor_pid:
            policy = "leave"  # the supervisor died (PDEATHSIG): workers outlive us and get re-adopted
        self.stopping = policy
        now = time.monotonic()
        if policy == "kill":
            for run_id in list(self.tracked):
                self.kill(run_id, "shutdown")
            self.stop_deadline = now + self.cfg["dispatch"]["kill_grace"] + 2.0
        elif policy == "drain":
            self.stop_deadline = now + self.cfg["dispatch"]["drain_timeout"]
        else:
            self.stop_deadline = now
        log.info("reaper.stopping", on_shutdown=policy, running=len(self.tracked))

    def stop_done(self) -> bool:
        now = time.monotonic()
        if self.stopping == "drain" and now >= self.stop_deadline and self.tracked:
            for run_id in list(self.tracked):
                self.kill(run_id, "shutdown")
            self.stopping = "kill"
            self.stop_deadline = now + self.cfg["dispatch"]["kill_grace"] + 2.0
            return False
        if self.stopping == "leave":
            return True
        if not self.tracked and not self.sweeps and \
                not (self.unacked and self.peer is not None and now < self.stop_deadline + 2):
            return True
        return now >= self.stop_deadline + 2

    # ---- loop ----------------------------------------------------------------

    def loop(self) -> int:
        wake = roles.wakeup_socket(self.ctx)
        self.sel.register(self.ctx.channel, selectors.EVENT_READ, ("chan", None))
        self.sel.register(wake, selectors.EVENT_READ, ("sig", None))
        next_hb = 0.0
        next_rotate = time.monotonic() + 5.0
        next_output = time.monotonic() + OUTPUT_POLL
        if workspaces.trash_has_entries(self.paths["workspaces"]):  # a purge a crash interrupted
            self.start_purge(self.paths["workspaces"], None)
        while True:
            mono = time.monotonic()
            reconnect_at = self.link.poll(mono)
            if mono >= next_hb:
                roles.send(self.ctx.channel, {"t": "hb", "ready": self.attached, "workers": len(self.tracked)})
                next_hb = mono + self.cfg["supervisor"]["heartbeat_interval"]
            if mono >= next_rotate:
                self.rotate_logs()
                next_rotate = mono + 5.0
            if mono >= next_output:
                self.poll_output()
                next_output = mono + max(0.05, min(OUTPUT_POLL, self.cfg["dispatch"]["claim_ttl"] / 8))
            if self.pending and self.attached:
                self.resolve_pending()
            if self.stopping and self.stop_done():
                break
            timeout = min(self.timers(), max(0.0, min(next_hb, next_output) - time.monotonic()))
            if reconnect_at is not None:
                timeout = min(timeout, max(0.0, reconnect_at - time.monotonic()))
            if self.stopping:
                timeout = min(timeout, 0.2)
            for key, mask in self.sel.select(timeout):
                kind, arg = key.data
                if kind == "pidfd":
                    if arg in self.tracked:
                        self.on_exit(arg)
                elif kind == "purge":
                    self.purged(arg)
                elif kind == "peer":
                    self.link.on_event(mask)
                elif kind == "chan":
                    msgs = roles.recv(self.ctx.channel)
                    if msgs is None:
                        log.warning("reaper.supervisor_gone")
                        return 0
                    for msg in msgs:
                        if msg["t"] == "config":
                            self.cfg = msg["cfg"]
                elif kind == "sig":
                    if any(s in (signal.SIGTERM, signal.SIGINT) for s in roles.read_signals(wake)):
                        if roles.orphaned(self.ctx):  # PDEATHSIG: workers stay for the next daemon
                            log.warning("reaper.supervisor_gone")
                            return 0
                        if not self.stopping:
                            self.begin_stop()
            self.link.poll(time.monotonic())
        self.flush_before_exit()
        return 0

    def flush_before_exit(self) -> None:
        """Give queued reports a moment to reach the dispatcher; the .exit files keep them anyway."""
        deadline = time.monotonic() + 1.0
        while self.peer is not None and not self.peer.closed and self.peer.want_write() \
                and time.monotonic() < deadline:
            self.peer.on_writable()
        for t in self.tracked.values():
            os.close(t.pidfd)
        log.info("reaper.stopped", left_running=len(self.tracked))


def run_tail(log_path: str, run_id: str) -> str:
    """The last ``TAIL_BYTES`` of the task log, cut after this run's start line when it is in them,
    so that an earlier run's output is never taken for this one's (``rate_limit_patterns``)."""
    tail = spawner.log_tail(log_path, TAIL_BYTES)
    at = tail.rfind(f"{worklog.SEPARATOR}{run_id} started")
    if at >= 0:
        nl = tail.find("\n", at)
        tail = tail[nl + 1:] if nl >= 0 else ""
    return tail


def run(ctx: roles.RoleContext) -> int:
    """Role entry point."""
    roles.enter(ctx)
    return Reaper(ctx).loop()
