"""The systemd user unit verifies clean, and `kanband service install` writes it correctly.

Nothing here starts systemd or any service manager: the unit is checked with
`systemd-analyze --user verify` only, and `service install` runs with HOME and
XDG_CONFIG_HOME in a temp dir. Where a test needs `systemctl` on PATH, it is a
stand-in script that records any call, and the tests assert it was never called
(only `--now` would call it, and `--now` is only run without systemctl).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.main import render_unit
from tests.harness import KANBAND, REPO, write_script

TEMPLATE = REPO / "packaging" / "systemd" / "kanband.service"
BOARD_TEMPLATE = REPO / "packaging" / "systemd" / "kanband@.service"
REAL_KANBAND = os.path.realpath(KANBAND)
NEXT_STEPS = ["systemctl --user daemon-reload", "systemctl --user enable --now kanband",
              "journalctl --user -u kanband -f"]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``; comments and blank lines skipped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"key outside a section: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required to verify the unit"
    env = dict(os.environ)
    if not env.get("XDG_RUNTIME_DIR"):
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run([analyze, "--user", "verify", str(unit)], capture_output=True, text=True, env=env,
                          timeout=60)


def install(home: Path, *args: str, path: str, xdg_config: str | None = None,
            global_args: tuple[str, ...] = (), action: str = "install") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_CONFIG", "KANBAN_"))}
    env.update(HOME=str(home), PATH=path)
    if xdg_config is not None:
        env["XDG_CONFIG_HOME"] = xdg_config
    return subprocess.run([KANBAND, *global_args, "service", action, *args], capture_output=True, text=True,
                          env=env, cwd=str(home), timeout=60)


@pytest.fixture
def fake_systemctl(tmp_path):
    """A PATH dir whose `systemctl` only records that it was called."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "systemctl.calls"
    write_script(bindir / "systemctl", f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    return bindir, calls


def exec_start(text: str) -> str:
    return parse_unit(text)["Service"]["ExecStart"][0]


# ---- the unit file -------------------------------------------------------------------------

def test_template_has_the_agreed_settings():
    unit = parse_unit(TEMPLATE.read_text())
    svc = unit["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30s"
    assert one["Restart"] == "on-failure"
    assert one["RestartSec"]
    assert one["KillMode"] == "process"       # workers survive a restart (on_shutdown: leave)
    assert one["Delegate"] == "yes"           # run cgroups (containment.mode auto -> cgroup)
    assert one["TimeoutStopSec"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["ExecStart"] == "%h/.local/bin/kanband"
    assert len(svc["ExecStart"]) == 1
    assert one["SyslogIdentifier"] == "kanband"
    assert one["UMask"] == "0077"
    for key in ("NoNewPrivileges", "LockPersonality", "RestrictRealtime"):
        assert one[key] == "yes", key
    for unsafe in ("ProtectSystem", "ProtectHome", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert unsafe not in svc, f"{unsafe} breaks workers"
    assert unit["Install"]["WantedBy"] == ["default.target"]


def test_rendered_unit_verifies_clean(tmp_path):
    unit = tmp_path / "kanband.service"
    unit.write_text(render_unit(REAL_KANBAND, []))
    assert exec_start(unit.read_text()) == REAL_KANBAND
    res = verify(unit, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_verify_is_strict_enough_to_matter(tmp_path):
    """An unknown directive only warns (exit 0): the empty-stderr check is what catches it."""
    unit = tmp_path / "kanband.service"
    unit.write_text(render_unit(REAL_KANBAND, []).replace("[Install]", "BogusDirective=1\n\n[Install]"))
    res = verify(unit, tmp_path)
    assert "BogusDirective" in res.stderr


def test_awkward_paths_are_quoted_for_systemd(tmp_path):
    odd = tmp_path / "my tools"
    odd.mkdir()
    exe = odd / "kanband"
    exe.symlink_to(REAL_KANBAND)
    unit = tmp_path / "kanband.service"
    unit.write_text(render_unit(str(exe), ["--config", str(tmp_path / "100% $HOME.yaml")]))
    line = exec_start(unit.read_text())
    assert line == f'"{exe}" --config "{tmp_path}/100%% $$HOME.yaml"'
    res = verify(unit, tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr


# ---- kanband service install ------------------------------------------------------------------

def test_install_writes_the_unit_with_the_real_path_and_prints_next_steps(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    res = install(home, path=f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert res.returncode == 0, res.stderr
    target = home / ".config" / "systemd" / "user" / "kanband.service"
    assert target.is_file()
    text = target.read_text()
    assert exec_start(text) == REAL_KANBAND
    assert text == render_unit(REAL_KANBAND, [])
    assert f"wrote {target}" in res.stdout
    for step in NEXT_STEPS:
        assert step in res.stdout
    assert not calls.exists(), "service install without --now must not run systemctl"
    res = verify(target, tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_install_honours_xdg_config_home_and_bakes_in_config_and_state_dir(tmp_path, fake_systemctl):
    bindir, _ = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    cfg = tmp_path / "cfg"
    res = install(home, path=f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin", xdg_config=str(cfg),
                  global_args=("--config", str(REPO / "examples" / "config.yaml"), "--state-dir", "state"))
    assert res.returncode == 0, res.stderr
    target = cfg / "systemd" / "user" / "kanband.service"
    assert exec_start(target.read_text()) == (
        f"{REAL_KANBAND} --config {REPO / 'examples' / 'config.yaml'} --state-dir {home / 'state'}")
    assert not (home / ".config").exists()


def test_install_without_systemctl_says_so_plainly(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    res = install(home, path=str(empty))
    assert res.returncode == 0, res.stderr
    assert "systemctl is not installed" in res.stdout
    for step in NEXT_STEPS:
        assert step in res.stdout
    target = home / ".config" / "systemd" / "user" / "kanband.service"
    assert exec_start(target.read_text()) == REAL_KANBAND

    res = install(home, "--now", path=str(empty))
    assert res.returncode == 1
    assert "systemctl is not installed" in res.stdout


def test_install_refuses_to_overwrite_a_different_unit_without_force(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    path = str(bindir)
    assert install(home, path=path).returncode == 0
    target = home / ".config" / "systemd" / "user" / "kanband.service"

    same = install(home, path=path)
    assert same.returncode == 0 and "already up to date" in same.stdout

    target.write_text(target.read_text() + "# edited by hand\n")
    edited = target.read_text()
    res = install(home, path=path)
    assert res.returncode == 1
    assert "--force" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert target.read_text() == edited

    res = install(home, "--force", path=path)
    assert res.returncode == 0, res.stderr
    assert target.read_text() == render_unit(REAL_KANBAND, [])
    assert not calls.exists()


# ---- the template unit for named boards --------------------------------------------------------

def test_board_template_has_the_same_settings_and_runs_kanband_board_instance():
    plain, tmpl = parse_unit(TEMPLATE.read_text()), parse_unit(BOARD_TEMPLATE.read_text())
    assert tmpl["Service"]["ExecStart"] == ["%h/.local/bin/kanband --board %i"]
    assert "%i" in tmpl["Unit"]["Description"][0]
    for section in ("Unit", "Service", "Install"):
        differ = {k for k in set(plain[section]) | set(tmpl[section]) if plain[section].get(k) != tmpl[section].get(k)}
        assert differ <= {"Description", "ExecStart"}, (section, differ)


@pytest.mark.parametrize("unit_name", ["kanband@.service", "kanband@myproject.service"])
def test_rendered_board_template_verifies_clean_as_template_and_instance(tmp_path, unit_name):
    (tmp_path / "kanband@.service").write_text(render_unit(REAL_KANBAND, [], BOARD_TEMPLATE, tail="--board %i"))
    res = verify(tmp_path / unit_name, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert exec_start((tmp_path / "kanband@.service").read_text()) == f"{REAL_KANBAND} --board %i"


def test_board_install_writes_the_template_and_names_the_instance(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    res = install(home, path=str(bindir), global_args=("--board", "myproject"))
    assert res.returncode == 0, res.stderr
    target = home / ".config" / "systemd" / "user" / "kanband@.service"
    assert exec_start(target.read_text()) == f"{REAL_KANBAND} --board %i"
    for step in ("systemctl --user enable --now kanband@myproject", "journalctl --user -u kanband@myproject -f"):
        assert step in res.stdout
    assert not (home / ".config" / "systemd" / "user" / "kanband.service").exists()
    res = verify(target.parent / "kanband@myproject.service", tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = install(home, path=str(bindir), global_args=("--board", "myproject", "--state-dir", "/tmp/x"))
    assert res.returncode == 2 and "--state-dir cannot be baked" in res.stderr
    assert not calls.exists()


# ---- refusing a config that cannot start ---------------------------------------------------------

def test_install_refuses_a_config_that_cannot_work_naming_every_problem(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("profiles:\n  a: {command: [no-such-agent-1]}\n  b: {command: [no-such-agent-2]}\n")
    res = install(home, path=str(bindir), global_args=("--config", str(cfg)))
    assert res.returncode == 2
    assert "profiles.a.command" in res.stderr and "profiles.b.command" in res.stderr
    assert "refusing to install" in res.stderr
    assert not (home / ".config" / "systemd").exists()
    cfg.write_text("dispatch: {max_in_progres: 2}\n")  # a schema error: refused too
    res = install(home, path=str(bindir), global_args=("--config", str(cfg)))
    assert res.returncode == 2 and "max_in_progres" in res.stderr
    assert not calls.exists()


# ---- uninstall and status -----------------------------------------------------------------------

def test_uninstall_removes_the_unit_and_its_enablement_and_status_explains(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    path = str(bindir)
    udir = home / ".config" / "systemd" / "user"
    res = install(home, path=path, action="status")
    assert res.returncode == 0 and "not installed" in res.stdout
    assert "systemctl --user status kanband" in res.stdout and "journalctl --user -u kanband -f" in res.stdout
    assert "daemon  not answering" in res.stdout

    assert install(home, path=path).returncode == 0
    wants = udir / "default.target.wants"
    wants.mkdir()
    (wants / "kanband.service").symlink_to(udir / "kanband.service")  # what `systemctl --user enable` makes
    res = install(home, path=path, action="status")
    assert f"unit    {udir / 'kanband.service'}: installed" in res.stdout and "differs" not in res.stdout
    assert "enabled yes (default.target.wants)" in res.stdout
    (udir / "kanband.service").write_text((udir / "kanband.service").read_text() + "# edited\n")
    assert "differs from what `service install` would write" in install(home, path=path, action="status").stdout

    res = install(home, path=path, action="uninstall")
    assert res.returncode == 0, res.stderr
    assert not (udir / "kanband.service").exists() and not (wants / "kanband.service").is_symlink()
    assert "systemctl --user stop kanband" in res.stdout and "systemctl --user daemon-reload" in res.stdout
    res = install(home, path=path, action="uninstall")
    assert res.returncode == 0 and "is not installed" in res.stdout
    assert not calls.exists()


def test_uninstalling_one_board_keeps_the_template_while_another_board_uses_it(tmp_path, fake_systemctl):
    bindir, calls = fake_systemctl
    home = tmp_path / "home"
    home.mkdir()
    udir = home / ".config" / "systemd" / "user"
    assert install(home, path=str(bindir), global_args=("--board", "a")).returncode == 0
    wants = udir / "default.target.wants"
    wants.mkdir()
    for name in ("a", "b"):
        (wants / f"kanband@{name}.service").symlink_to(udir / "kanband@.service")
    res = install(home, path=str(bindir), global_args=("--board", "a"), action="uninstall")
    assert res.returncode == 0 and "kept" in res.stdout and "boards b still use it" in res.stdout
    assert (udir / "kanband@.service").exists() and not (wants / "kanband@a.service").is_symlink()
    res = install(home, path=str(bindir), global_args=("--board", "b"), action="uninstall")
    assert res.returncode == 0 and not (udir / "kanband@.service").exists()
    assert not calls.exists()


def test_status_reports_a_running_daemon(tmp_path, make_daemon):
    d = make_daemon()
    res = subprocess.run([KANBAND, "--config", d.config_path, "--socket", d.socket, "service", "status"],
                         capture_output=True, text=True, env={**d.env(), "HOME": str(tmp_path)}, timeout=30)
    assert res.returncode == 0
    assert f"daemon  running, pid {d.pid}, on {d.socket}" in res.stdout


# ---- a plain (non-editable) install carries the units -----------------------------------------

def test_a_built_package_carries_both_unit_templates_and_installs_from_them(tmp_path):
    """What `pip install .` puts in site-packages (setuptools' build_py, offline): the units are package
    data, identical to packaging/systemd/, and `service install` works without the source tree."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("daemon", "client", "packaging"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    res = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                          "-d", str(build)], cwd=src, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for unit in ("kanband.service", "kanband@.service"):
        shipped = build / "daemon" / "units" / unit
        assert not shipped.is_symlink()
        assert shipped.read_text() == (REPO / "packaging" / "systemd" / unit).read_text()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "KANBAN_"))}
    env.update(HOME=str(home), PYTHONPATH=str(build), PATH="/usr/bin:/bin")
    code = ("import sys, daemon, daemon.main; assert daemon.__file__.startswith(sys.argv[1]), daemon.__file__; "
            "sys.argv[0] = 'kanband'; sys.exit(daemon.main.main(['--board', 'x', 'service', 'install']))")
    res = subprocess.run([sys.executable, "-c", code, str(build)], capture_output=True, text=True, env=env,
                         cwd=str(home), timeout=60)
    assert res.returncode == 0, res.stderr
    assert (home / ".config" / "systemd" / "user" / "kanband@.service").read_text().startswith(
        "# kanband for one named board")
