"""Entry point ``kanband``: parse arguments, set up logging, run the supervisor.

Runs in: the daemon's main PID (which becomes the supervisor).

    kanband [--config FILE] [--state-dir DIR] [--socket PATH]
    kanband --check-config [--config FILE]
    kanband --init-board [--config FILE] [--state-dir DIR]
    kanband service install [--now] [--force]

A start-up failure (an unsafe directory, a missing or damaged board, a
read-only or full disk, a socket in use) is one line on stderr naming the path
and the cause, and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from client.rpc import PathTooLong, check_socket_path
from daemon import __version__
from daemon import config as config_mod
from daemon import log as daemon_log


def xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_config_path() -> Path:
    return xdg("XDG_CONFIG_HOME", ".config") / "kanban" / "config.yaml"


def default_state_dir() -> Path:
    return xdg("XDG_STATE_HOME", ".local/state") / "kanban"


def default_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isabs(runtime) else Path(f"/tmp/kanban-{os.getuid()}")
    return base / "kanban" / "kanband.sock" if runtime else base / "kanband.sock"


def resolve_paths(cfg: dict, state_dir: str | None, socket_path: str | None) -> dict[str, str]:
    state = Path(state_dir).resolve() if state_dir else default_state_dir()
    sock = Path(socket_path).absolute() if socket_path else default_socket()
    return {
        "state_dir": str(state),
        "board": str(Path(cfg["board"]["path"]).expanduser()) if cfg["board"]["path"] else str(state / "board.db"),
        "socket": str(sock),
        "pidfile": str(state / "kanband.pid"),
        "board_id": str(state / "board.id"),
        "logs": str(state / "logs"),
        "runs": str(state / "runs"),
        "workspaces": str(Path(cfg["workspaces"]["root"]).expanduser()) if cfg["workspaces"]["root"]
        else str(state / "workspaces"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kanband", description="kanband: a durable task board that runs workers.")
    p.add_argument("--config", help=f"YAML config (default: {default_config_path()})")
    p.add_argument("--state-dir", help=f"board, logs and run files (default: {default_state_dir()})")
    p.add_argument("--socket", help=f"Unix socket path (default: {default_socket()})")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--init-board", action="store_true",
                   help="create a new, empty board where the board file is missing or empty, and exit "
                        "(never replaces a non-empty board)")
    p.add_argument("--version", action="version", version=f"kanband {__version__}")
    sub = p.add_subparsers(dest="command")
    svc = sub.add_parser("service", help="systemd user unit helpers")
    svc_sub = svc.add_subparsers(dest="action", required=True)
    inst = svc_sub.add_parser("install", help="write ~/.config/systemd/user/kanband.service")
    inst.add_argument("--now", action="store_true", help="also daemon-reload and enable --now")
    inst.add_argument("--force", action="store_true", help="overwrite an existing unit")
    return p


UNIT_TEMPLATE = Path(__file__).resolve().parent.parent / "packaging" / "systemd" / "kanband.service"


def unit_arg(arg: str) -> str:
    """Quote one ExecStart= word for systemd: ``%`` and ``$`` are escaped, and a
    word with spaces, quotes, backslashes or ``;`` is double-quoted."""
    word = arg.replace("%", "%%").replace("$", "$$")
    if word and not any(c.isspace() or c in "\"'\\;" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(exe: str, args: list[str], template: Path = UNIT_TEMPLATE) -> str:
    """The unit file text with its ``ExecStart=`` line pointing at ``exe args...``."""
    text = template.read_text()
    cmd = " ".join(unit_arg(a) for a in [exe, *args])
    return "\n".join(f"ExecStart={cmd}" if line.startswith("ExecStart=") else line
                     for line in text.splitlines()) + "\n"


def kanband_path() -> str:
    """The installed ``kanband`` that is running now (not merely the first one on PATH)."""
    candidates = []
    if os.path.basename(sys.argv[0]) == "kanband":
        candidates.append(os.path.abspath(sys.argv[0]))
    candidates.append(os.path.join(os.path.dirname(sys.executable), "kanband"))
    found = shutil.which("kanband")
    if found:
        candidates.append(found)
    for exe in candidates:
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return os.path.realpath(exe)
    return candidates[0]


def service_install(args: argparse.Namespace) -> int:
    exe = kanband_path()
    extra = []
    if args.config:
        extra += ["--config", str(Path(args.config).resolve())]
    if args.state_dir:
        extra += ["--state-dir", str(Path(args.state_dir).resolve())]
    from daemon import fsguard
    unit_dir = xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user"
    try:
        fsguard.ensure_private_dir(unit_dir)  # whoever can write here can run code as us
    except fsguard.UnsafePath as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"cannot write the unit: {describe_oserror(exc)}", 1)
    target = unit_dir / "kanband.service"
    try:
        text = render_unit(exe, extra)
    except FileNotFoundError:
        print(f"kanband: the unit template {UNIT_TEMPLATE} is missing from this installation", file=sys.stderr)
        return 1
    if target.exists() and target.read_text() == text:
        print(f"{target} is already up to date")
    elif target.exists() and not args.force:
        print(f"kanband: {target} exists and differs; pass --force to overwrite", file=sys.stderr)
        return 1
    else:
        target.write_text(text)
        print(f"wrote {target}")
    have = shutil.which("systemctl") is not None
    steps = ["systemctl --user daemon-reload", "systemctl --user enable --now kanband",
             "journalctl --user -u kanband -f"]
    if not have:
        print("systemctl is not installed on this machine: the unit was written, but nothing can start it here.")
        print("On a systemd machine, run:")
        for s in steps:
            print(f"  {s}")
        return 0 if not args.now else 1
    if args.now:
        for s in steps[:2]:
            res = subprocess.run(s.split(), capture_output=True, text=True)
            if res.returncode != 0:
                print(f"kanband: `{s}` failed: {res.stderr.strip()}", file=sys.stderr)
                return 1
            print(f"ran: {s}")
        print(f"follow the logs with: {steps[2]}")
    else:
        print("next:")
        for s in steps:
            print(f"  {s}")
    return 0


def fail(message: str, code: int) -> int:
    """Print a one-line error on stderr (with the journald ``<3>`` priority when stderr is the journal)."""
    prefix = "<3>" if daemon_log.stdout_is_journal(sys.stderr) else ""
    print(f"{prefix}kanband: {message}", file=sys.stderr)
    return code


def describe_oserror(exc: OSError) -> str:
    """``"PATH: cause"`` (with the second path of a rename, if any) for a one-line error."""
    cause = exc.strerror or str(exc)
    if exc.filename is None:
        return cause
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {cause}"
    return f"{exc.filename}: {cause}"


def init_board(paths: dict[str, str]) -> int:
    """``kanband --init-board``: a new, empty board where there is none, under the board lock."""
    from daemon import fsguard, pidlock
    from daemon.board import integrity
    fsguard.ensure_private_dir(os.path.dirname(paths["board"]))
    fd = pidlock.lock(paths["state_dir"], paths["pidfile"])
    try:
        board_id = integrity.init_board(paths["board"], paths["board_id"])
    finally:
        os.close(fd)
    print(f"created board {board_id} at {paths['board']}; start kanband as usual")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok (or stopped cleanly), 1 a start-up check failed (unsafe directory, board missing or
    damaged, disk read-only or full, already running, socket in use), 2 bad config or arguments."""
    args = build_parser().parse_args(argv)
    if args.command == "service":
        return service_install(args)
    config_path = Path(args.config) if args.config else default_config_path()
    if args.config and not config_path.exists():
        return fail(f"config file {config_path} does not exist", 2)
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as exc:
        return fail(f"bad config: {exc}", 2)
    if args.check_config:
        src = cfg["_file"] or "no file (defaults)"
        print(f"config OK: {src}; {len(cfg['profiles'])} profile(s), {len(cfg['sinks'])} sink(s)")
        return 0
    paths = resolve_paths(cfg, args.state_dir, args.socket)
    try:
        check_socket_path(paths["socket"])
    except PathTooLong as exc:
        return fail(f"{exc} (pass a shorter --socket)", 2)
    from daemon import containment
    try:
        contain = containment.choose(cfg)
    except containment.ContainmentError as exc:
        return fail(f"bad config: {cfg.get('_file') or 'defaults'}: {exc}", 2)
    paths.update(containment=contain.mode, cgroup_root=contain.root or "", containment_why=contain.why)
    daemon_log.configure(cfg, role="supervisor")
    from daemon.board.integrity import BoardError
    from daemon.fsguard import UnsafePath
    from daemon.ipc import SocketInUse
    from daemon.supervisor import AlreadyRunning, Supervisor
    try:
        if args.init_board:
            return init_board(paths)
        return Supervisor(cfg, paths, str(config_path)).run()
    except (AlreadyRunning, SocketInUse, UnsafePath, BoardError, RuntimeError) as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"cannot start: {describe_oserror(exc)}", 1)
    except sqlite3.Error as exc:
        return fail(f"cannot start: board {paths['board']}: {exc}", 1)


if __name__ == "__main__":
    sys.exit(main())
