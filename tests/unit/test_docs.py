"""The docs tell the truth: generated pages match their sources, and hand-written
pages mention what the code actually has.

Regenerate after changing the registry, the config schema, the transition
table, the outcome table or the role table::

    make docs                                  # docs/protocol.md, docs/config.md
    .venv/bin/python -m tests.unit.test_docs   # the generated tables in docs/lifecycle.md, docs/architecture.md
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from client import cli, protocol
from daemon import config, roles, spawner
from daemon.board import runs, transitions

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
KANBAND = str(Path(sys.executable).parent / "kanband")
HAND_WRITTEN = ("architecture.md", "lifecycle.md", "workers.md", "operations.md", "dependencies.md")


# ---- generated sections of hand-written pages ------------------------------------

def outcomes_markdown() -> str:
    """``daemon.board.runs.OUTCOMES`` as a Markdown table."""
    rows = ["| outcome | counts as a failure | task requeued | own event | meaning |", "|---|---|---|---|---|"]
    yn = {True: "yes", False: "no"}
    for name, o in runs.OUTCOMES.items():
        rows.append(f"| `{name}` | {yn[o.failure]} | {yn[o.requeue]} | {yn[o.event]} | {o.doc} |")
    return "\n".join(rows) + "\n"


def roles_markdown() -> str:
    """``daemon.roles.ROLES`` as a Markdown table."""
    rows = ["| role | entry | restart | essential | start order | stop order | stop timeout | hang timeout |",
            "|---|---|---|---|---|---|---|---|"]
    for name, spec in roles.ROLES.items():
        hang = getattr(spec, "hang_timeout", None)
        hang_text = f"{hang:g} s" if hang is not None else "`supervisor.role_timeout`"
        essential = "yes" if spec.essential else f"no (on with `{spec.enabled_by}`)"
        rows.append(f"| `{name}` | `{spec.entry}` | {spec.restart} | {essential} | {spec.order} | {spec.stop_order} | "
                    f"{spec.stop_timeout:g} s | {hang_text} |")
    return "\n".join(rows) + "\n"


#: page -> block name -> renderer. Each block sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.
GENERATED = {
    "lifecycle.md": {"transitions": transitions.render_markdown, "outcomes": outcomes_markdown},
    "architecture.md": {"roles": roles_markdown, "runs": runs.render_run_table},
}


def sync_generated(page: str, text: str) -> str:
    """Replace every generated block of ``page`` with fresh output."""
    for name, render in GENERATED[page].items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        assert pattern.search(text), f"docs/{page} lacks the <!-- BEGIN {name} --> block"
        text = pattern.sub(lambda m: m.group(1) + render() + m.group(2), text)
    return text


# ---- helpers ---------------------------------------------------------------------

def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M)


# ---- generated pages -------------------------------------------------------------

def test_protocol_page_is_generated_from_the_registry():
    assert read(DOCS / "protocol.md") == protocol.render_markdown(), \
        "docs/protocol.md is stale: run `make docs`"


def test_config_page_is_generated_from_the_schema():
    assert read(DOCS / "config.md") == config.render_markdown(), "docs/config.md is stale: run `make docs`"


def test_every_config_section_is_in_the_config_page():
    page = read(DOCS / "config.md")
    for section in [*config.SCHEMA, *config.NAMED]:
        assert f"## `{section}`" in page, section


def test_lifecycle_contains_the_transition_table():
    assert transitions.render_markdown() in read(DOCS / "lifecycle.md"), \
        "docs/lifecycle.md is stale: run `.venv/bin/python -m tests.unit.test_docs`"


def test_generated_blocks_are_in_sync():
    for page in GENERATED:
        text = read(DOCS / page)
        assert sync_generated(page, text) == text, \
            f"docs/{page} is stale: run `.venv/bin/python -m tests.unit.test_docs`"


def test_lifecycle_names_every_status():
    text = read(DOCS / "lifecycle.md")
    for status in transitions.STATUSES:
        assert f"`{status}`" in text, status


# ---- README ------------------------------------------------------------------------

def test_readme_first_code_block_is_make_run_and_make_test():
    first = code_blocks(read(README))[0]
    assert [line.strip() for line in first.splitlines() if line.strip()] == ["make run", "make test"]


def test_readme_mentions_every_cli_verb():
    text = read(README)
    registry = {m.verb for m in protocol.METHODS.values() if m.verb and not m.internal}
    registry |= {a for m in protocol.METHODS.values() if not m.internal for a in m.aliases}
    assert registry <= set(cli.verbs()), "the CLI lost a verb the registry declares"
    missing = [v for v in cli.verbs() if f"kanban {v}" not in text]
    assert not missing, f"README.md does not mention: {', '.join('kanban ' + v for v in missing)}"


def test_readme_and_workers_doc_list_every_worker_variable():
    spec = {"task": "t_00000000", "run": "r_000000000000", "workspace": {"path": "/w"}, "profile": "p", "env": {}}
    names = [k for k in spawner.worker_env(spec, {"socket": "/s", "board": "/b", "runs": "/r"}, base={}) if k.startswith("KANBAN_")]
    assert len(names) >= 6
    for page in (README, DOCS / "workers.md"):
        text = read(page)
        missing = [n for n in names if f"`{n}`" not in text]
        assert not missing, f"{page.name} does not document {missing}"


def test_readme_states_the_real_rate_limit_exit_code():
    assert runs.EX_TEMPFAIL == 75
    assert "exits **75**" in read(README)
    assert "75" in read(DOCS / "workers.md")


# ---- links and paths mentioned in the docs ------------------------------------------

def test_every_hand_written_page_exists():
    for name in HAND_WRITTEN:
        assert (DOCS / name).is_file(), name


def test_relative_links_point_at_real_files():
    for page in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_repo_paths_named_in_the_docs_exist():
    """Any `tests/…py`, `daemon/…py`, `client/…py` or `examples/…` path the docs name is real,
    and any ``tests/….py::test_name`` names a test that exists."""
    pat = re.compile(r"(?<![\w/.])((?:tests|daemon|client|examples|packaging|bench)/[\w./@-]*\w)(?:::(\w+))?")
    for page in [README, *(DOCS / n for n in HAND_WRITTEN)]:
        for path, test in set(pat.findall(read(page))):
            assert (REPO / path).exists(), f"{page.name} names {path}, which does not exist"
            if test:
                assert re.search(rf"^def {test}\(", read(REPO / path), re.M), \
                    f"{page.name} names {path}::{test}, which does not exist"


# ---- examples -------------------------------------------------------------------------

def test_example_config_passes_check_config():
    res = subprocess.run([KANBAND, "--check-config", "--config", str(REPO / "examples" / "config.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("config OK:"), res.stdout


def test_example_profiles_point_at_real_workers():
    cfg = yaml.safe_load(read(REPO / "examples" / "config.yaml"))
    examples = REPO / "examples"
    named = set()
    for name, prof in cfg["profiles"].items():
        for arg in prof["command"]:
            if "{config_dir}" in arg:
                path = Path(arg.replace("{config_dir}", str(examples)))
                assert path.is_file(), f"profile {name}: {path} does not exist"
                named.add(path.name)
    assert {"echo.py", "fanout.py", "rate_limited.sh"} <= named


def test_example_workers_explain_themselves():
    for path in sorted((REPO / "examples" / "workers").iterdir()):
        if path.suffix not in (".py", ".sh"):
            continue
        head = read(path).splitlines()[:6]
        assert head[0].startswith("#!"), f"{path.name}: no shebang"
        assert path.stat().st_mode & 0o111, f"{path.name} is not executable"
        assert any("Example worker" in line for line in head), f"{path.name}: no README lines at the top"


if __name__ == "__main__":
    for name in GENERATED:
        page = DOCS / name
        page.write_text(sync_generated(name, read(page)), encoding="utf-8")
        print(f"updated {page}")
