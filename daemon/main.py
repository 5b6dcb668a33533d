"""Entry point ``kanband``: parse arguments, set up logging, run the supervisor.

Runs in: the daemon's main PID (which becomes the supervisor).

    kanband [--config FILE] [--state-dir DIR] [--socket PATH]
    kanband --check-config [--config FILE]
    kanband --init-board [--config FILE] [--state-dir DIR]
    kanband --board NAME [...]           (a named board; see below)
    kanband [--board NAME] service install [--now] [--force] | uninstall [--now] | status

``--board NAME`` follows systemd's template convention (``kanband@NAME.service``):
state in ``$XDG_STATE_HOME/kanban/boards/NAME/``, socket
``$XDG_RUNTIME_DIR/kanban/NAME.sock``, config ``$XDG_CONFIG_HOME/kanban/boards/NAME.yaml``
if it exists (else the shared ``config.yaml``). ``--state-dir``, ``--socket`` and
``--config`` still override each.

A start-up failure (an unsafe directory, a missing or damaged board, a
read-only or full disk, a socket in use) is one line on stderr naming the path
and the cause, and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from client.rpc import PathTooLong, board_name_problem, board_state_dir, check_socket_path, state_home
from client.rpc import default_socket as client_default_socket
from daemon import __version__
from daemon import config as config_mod
from daemon import log as daemon_log


def xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_config_path(board: str | None = None) -> Path:
    """``$XDG_CONFIG_HOME/kanban/config.yaml``; for a named board ``…/kanban/boards/NAME.yaml``
    when that file exists (else the shared one)."""
    base = xdg("XDG_CONFIG_HOME", ".config") / "kanban"
    if board and (base / "boards" / f"{board}.yaml").exists():
        return base / "boards" / f"{board}.yaml"
    return base / "config.yaml"


def default_state_dir(board: str | None = None) -> Path:
    return Path(board_state_dir(board) if board else state_home())


def default_socket(board: str | None = None) -> Path:
    return Path(client_default_socket(board))


def resolve_paths(cfg: dict, state_dir: str | None, socket_path: str | None,
                  board: str | None = None) -> dict[str, str]:
    state = Path(state_dir).resolve() if state_dir else default_state_dir(board)
    sock = Path(socket_path).absolute() if socket_path else default_socket(board)
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
        "board_name": board or "",
    }


def board_arg(value: str) -> str:
    """argparse type for ``--board``: a valid board name."""
    bad = board_name_problem(value)
    if bad:
        raise argparse.ArgumentTypeError(bad)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kanband", description="kanband: a durable task board that runs workers.")
    p.add_argument("--board", type=board_arg, metavar="NAME",
                   help="run the named board: state in $XDG_STATE_HOME/kanban/boards/NAME/, socket "
                        "$XDG_RUNTIME_DIR/kanban/NAME.sock, config kanban/boards/NAME.yaml if it exists")
    p.add_argument("--config", help=f"YAML config (default: {default_config_path()})")
    p.add_argument("--state-dir", help=f"board, logs and run files (default: {default_state_dir()})")
    p.add_argument("--socket", help=f"Unix socket path (default: {default_socket()})")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config (keys, and that commands, repositories and sinks exist here) and exit")
    p.add_argument("--init-board", action="store_true",
                   help="create a new, empty board where the board file is missing or empty, and exit "
                        "(never replaces a non-empty board)")
    p.add_argument("--version", action="version", version=f"kanband {__version__}")
    sub = p.add_subparsers(dest="command")
    svc = sub.add_parser("service", help="systemd user unit helpers")
    svc_sub = svc.add_subparsers(dest="action", required=True)
    inst = svc_sub.add_parser("install", help="check the config, then write ~/.config/systemd/user/kanband.service "
                                              "(kanband@.service with --board)")
    inst.add_argument("--now", action="store_true", help="also daemon-reload and enable --now")
    inst.add_argument("--force", action="store_true", help="overwrite an existing unit")
    un = svc_sub.add_parser("uninstall", help="disable and remove the unit")
    un.add_argument("--now", action="store_true", help="also run systemctl --user disable --now and daemon-reload")
    svc_sub.add_parser("status", help="is the unit installed and the daemon answering; the systemctl and "
                                      "journalctl commands to use")
    prof = sub.add_parser("profile", help="agent profiles (what `kanban init --agent NAME` runs)")
    prof_sub = prof.add_subparsers(dest="action", required=True)
    padd = prof_sub.add_parser("add", help="add the shipped agent profile NAME to a config file, keeping the "
                                           "file's comments and layout; prints one JSON line")
    padd.add_argument("name", help="agent profile (examples/agents/NAME.yaml)")
    padd.add_argument("--to", required=True, metavar="FILE", help="the config file to add it to")
    return p


def check_config(cfg: dict, quiet: bool = False) -> int:
    """The checks of ``--check-config`` beyond the schema (see :mod:`daemon.checks`): every problem
    on its own line on stderr and exit 2, or the summary line (unless ``quiet``) and 0."""
    from daemon import checks
    found = checks.problems(cfg)
    for line in found:
        fail(f"bad config: {line}", 2)
    if found:
        return 2
    if not quiet:
        src = cfg["_file"] or "no file (defaults)"
        names = f": {', '.join(sorted(cfg['profiles']))}" if cfg["profiles"] else ""
        print(f"config OK: {src}; {len(cfg['profiles'])} profile(s){names}, {len(cfg['sinks'])} sink(s)")
    return 0


def service(args: argparse.Namespace, cfg: dict | None, paths: dict[str, str]) -> int:
    from daemon import service as svc
    config_home = xdg("XDG_CONFIG_HOME", ".config")
    if args.action == "install":
        code = check_config(cfg, quiet=True)
        if code:
            return fail("refusing to install a unit for a config that cannot work; fix the lines above "
                        "(kanband --check-config checks it again)", code)
        return svc.install(args, config_home, fail)
    if args.action == "uninstall":
        return svc.uninstall(args, config_home, fail)
    return svc.status(args, config_home, paths)


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
    if args.command == "profile":  # edits a config file: it need not load (or exist) yet
        from daemon import agentprofile
        return agentprofile.main(args.name, args.to)
    config_path = Path(args.config) if args.config else default_config_path(args.board)
    if args.config and not config_path.exists():
        return fail(f"config file {config_path} does not exist", 2)
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as exc:
        return fail(f"bad config: {exc}", 2)
    paths = resolve_paths(cfg, args.state_dir, args.socket, args.board)
    if args.command == "service":
        return service(args, cfg, paths)
    if args.check_config:
        return check_config(cfg)
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


from daemon.service import UNIT_TEMPLATE, kanband_path, render_unit, unit_arg  # noqa: E402,F401 (re-exported)

if __name__ == "__main__":
    sys.exit(main())
