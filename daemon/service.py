"""``kanband service install|uninstall|status``: the systemd user units, written and explained.

Runs in: the ``kanband`` command, never in a running daemon. Nothing here starts systemd:
``systemctl`` runs only when ``--now`` asks for it.

The unit templates ship inside the package (``daemon/units/``, links to
``packaging/systemd/``, which setuptools copies into every wheel), so an ordinary
``pip install`` can install them. ``kanband.service`` runs the default board;
``kanband@.service`` is the template for named boards (``kanband --board NAME``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

UNITS_DIR = Path(__file__).resolve().parent / "units"
UNIT_TEMPLATE = UNITS_DIR / "kanband.service"
BOARD_UNIT_TEMPLATE = UNITS_DIR / "kanband@.service"


def unit_arg(arg: str) -> str:
    """Quote one ExecStart= word for systemd: ``%`` and ``$`` are escaped, and a
    word with spaces, quotes, backslashes or ``;`` is double-quoted."""
    word = arg.replace("%", "%%").replace("$", "$$")
    if word and not any(c.isspace() or c in "\"'\\;" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(exe: str, args: list[str], template: Path = UNIT_TEMPLATE, tail: str = "") -> str:
    """The unit file text with its ``ExecStart=`` line pointing at ``exe args... tail``.

    ``tail`` is appended unquoted (``--board %i`` in the template: ``%i`` must stay a specifier).

    Raises:
        FileNotFoundError: The template is missing from this installation.
    """
    text = template.read_text()
    cmd = " ".join(unit_arg(a) for a in [exe, *args]) + (f" {tail}" if tail else "")
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


def unit_dir(config_home: Path) -> Path:
    return config_home / "systemd" / "user"


def unit_names(board: str | None) -> tuple[str, str]:
    """``(unit file name, unit to start)``: ``kanband.service``/``kanband``, or the template and its instance."""
    return ("kanband@.service", f"kanband@{board}") if board else ("kanband.service", "kanband")


def wanted_links(udir: Path, board: str | None) -> list[Path]:
    """The ``*.wants/`` links that enable the unit (what ``systemctl enable`` makes): for a board,
    its instance only."""
    name = f"kanband@{board}.service" if board else "kanband.service"
    return sorted(p for p in udir.glob(f"*.wants/{name}") if p.is_symlink() or p.exists())


def enabled_boards(udir: Path) -> list[str]:
    """Board names whose ``kanband@NAME.service`` instance is enabled."""
    return sorted({p.name[len("kanband@"):-len(".service")] for p in udir.glob("*.wants/kanband@?*.service")})


def expected_text(args: argparse.Namespace) -> str:
    """The unit that ``service install`` with these arguments writes.

    Raises:
        FileNotFoundError: The template is missing from this installation.
    """
    extra = []
    if args.config:
        extra += ["--config", str(Path(args.config).resolve())]
    if args.board:
        return render_unit(kanband_path(), extra, BOARD_UNIT_TEMPLATE, tail="--board %i")
    if args.state_dir:
        extra += ["--state-dir", str(Path(args.state_dir).resolve())]
    return render_unit(kanband_path(), extra)


def run_steps(steps: list[str]) -> str | None:
    """Run each ``systemctl …`` step; the first failure as one line, or ``None``."""
    for s in steps:
        res = subprocess.run(s.split(), capture_output=True, text=True)
        if res.returncode != 0:
            return f"`{s}` failed: {res.stderr.strip()}"
        print(f"ran: {s}")
    return None


def install(args: argparse.Namespace, config_home: Path, fail) -> int:
    """``kanband [--board NAME] service install [--now] [--force]`` (the config was checked already)."""
    from daemon import fsguard
    from daemon.main import describe_oserror
    if args.board and args.state_dir:
        return fail("--state-dir cannot be baked into kanband@.service: every board has its own state dir "
                    "(kanband --board NAME uses $XDG_STATE_HOME/kanban/boards/NAME)", 2)
    udir = unit_dir(config_home)
    try:
        fsguard.ensure_private_dir(udir)  # whoever can write here can run code as us
    except fsguard.UnsafePath as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"cannot write the unit: {describe_oserror(exc)}", 1)
    fname, unit = unit_names(args.board)
    target = udir / fname
    try:
        text = expected_text(args)
    except FileNotFoundError as exc:
        return fail(f"the unit template {exc.filename} is missing from this installation", 1)
    if target.exists() and target.read_text() == text:
        print(f"{target} is already up to date")
    elif target.exists() and not args.force:
        return fail(f"{target} exists and differs; pass --force to overwrite", 1)
    else:
        target.write_text(text)
        print(f"wrote {target}")
    steps = ["systemctl --user daemon-reload", f"systemctl --user enable --now {unit}",
             f"journalctl --user -u {unit} -f"]
    if shutil.which("systemctl") is None:
        print("systemctl is not installed on this machine: the unit was written, but nothing can start it here.")
        print("On a systemd machine, run:")
        for s in steps:
            print(f"  {s}")
        return 0 if not args.now else 1
    if args.now:
        err = run_steps(steps[:2])
        if err:
            return fail(err, 1)
        print(f"follow the logs with: {steps[2]}")
    else:
        print("next:")
        for s in steps:
            print(f"  {s}")
    return 0


def uninstall(args: argparse.Namespace, config_home: Path, fail) -> int:
    """``kanband [--board NAME] service uninstall [--now]``: disable, then remove the unit file.

    Without ``--now`` it removes the enablement links and the file itself (what ``systemctl
    disable`` would remove) and prints the ``systemctl`` commands that stop a running daemon.
    The template ``kanband@.service`` is kept while another board's instance is still enabled.
    """
    udir = unit_dir(config_home)
    fname, unit = unit_names(args.board)
    target = udir / fname
    if args.now and shutil.which("systemctl") is not None and target.exists():
        err = run_steps([f"systemctl --user disable --now {unit}"])
        if err:
            return fail(err, 1)
    for link in wanted_links(udir, args.board):
        link.unlink()
        print(f"removed {link}")
    others = [b for b in enabled_boards(udir) if b != args.board] if args.board else []
    if not target.exists():
        print(f"{target} is not installed")
    elif others:
        print(f"kept {target}: boards {', '.join(others)} still use it")
    else:
        target.unlink()
        print(f"removed {target}")
    steps = [f"systemctl --user stop {unit}", "systemctl --user daemon-reload"]
    if args.now and shutil.which("systemctl") is not None:
        return 1 if run_steps(steps[1:]) else 0
    print("next (if it is running):")
    for s in steps:
        print(f"  {s}")
    return 0


def status(args: argparse.Namespace, config_home: Path, paths: dict[str, str]) -> int:
    """``kanband [--board NAME] service status``: is the unit installed, current, enabled; is the
    daemon answering; and the ``systemctl``/``journalctl`` commands to look further. Exit 0."""
    from client.rpc import Client, ConnectError, ServerError
    udir = unit_dir(config_home)
    fname, unit = unit_names(args.board)
    target = udir / fname
    if not target.exists():
        state = "not installed (kanband " + (f"--board {args.board} " if args.board else "") + "service install)"
    else:
        try:
            same = target.read_text() == expected_text(args)
        except FileNotFoundError:
            same = False
        state = "installed" + ("" if same else ", but it differs from what `service install` would write now")
    links = wanted_links(udir, args.board)
    print(f"unit    {target}: {state}")
    print(f"enabled {'yes (' + ', '.join(str(p.parent.name) for p in links) + ')' if links else 'no'}")
    try:
        with Client(paths["socket"], retry=0.0, timeout=2.0) as c:
            st = c.call("daemon.status")
        s = st.get("summary") or {}
        print(f"daemon  running, pid {st['pid']}, on {paths['socket']}: {s.get('running', 0)} running, "
              f"{s.get('ready', 0)} ready, {s.get('blocked', 0)} blocked")
    except (ConnectError, ServerError, OSError) as exc:
        print(f"daemon  not answering on {paths['socket']} ({exc})")
    print("look further with:")
    print(f"  systemctl --user status {unit}")
    print(f"  journalctl --user -u {unit} -f")
    print(f"  journalctl --user -u {unit} -p warning --since today")
    return 0
