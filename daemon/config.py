"""Configuration: the schema, its defaults, and the YAML loader that checks it.

Runs in: the supervisor (load and validate, at start and on SIGHUP) and in
every role (each role receives the already-validated config when forked).

Every key is declared once in ``SCHEMA`` with its type, default and a one-line
doc; ``docs/config.md`` is rendered from it (``python -m daemon.config``). A
config with no file at all runs on the defaults. An unknown key or a wrong
type raises :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A config file is unreadable, or a key is unknown or mistyped."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key: ``type`` is one of int, float, str, bool, duration,
    bytes, list, dict, choice; ``default`` is in the converted form."""

    type: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    nullable: bool = False


PROFILE: dict[str, Field] = {
    "command": Field("list", None, "argv of the worker; placeholders {task_id} {run_id} {title} "
                     "{workspace} {config_dir} {context_file} (a file the daemon writes with the rendered "
                     "`kanban context` before the run), refused inside a `sh -c` script"),
    "env": Field("dict", {}, "extra environment variables for the worker"),
    "max_in_progress": Field("int", None, "cap on this profile's live runs (counted like "
                             "dispatch.max_in_progress)", nullable=True),
    "max_runtime": Field("duration", None, "kill a run after this long (TERM, then KILL)", nullable=True),
    "workspace": Field("str", None, "default workspace kind for this profile's tasks", nullable=True),
    "repo": Field("str", None, "git repository for this profile's worktree workspaces (default: "
                  "workspaces.repo; a task's --repo comes first)", nullable=True),
    "role": Field("choice", "worker", "worker: a run acts only on its own task (and creates tasks and links "
                  "under it); orchestrator: its runs may act on the whole board", choices=("worker", "orchestrator")),
    "verify": Field("dict", None, "acceptance check run when a worker completes: {command: [argv], timeout: "
                    "10m, max_turns: 3}; exit 0 accepts the work, anything else sends the task back to ready; "
                    "blocked after max_turns rejected runs in a row", nullable=True),
    "review": Field("choice", None, "required: a completed (and verified) task waits in review for "
                    "`kanban approve`; default: required when review_by is set, else none", nullable=True,
                    choices=("none", "required")),
    "review_by": Field("str", None, "the profile dispatched on this profile's tasks in review (its runs get "
                       "KANBAN_REVIEW=1 and end with kanban approve or kanban request-changes)", nullable=True),
    "heartbeat_from_output": Field("bool", True, "a run that writes to its log is alive: its output extends "
                                   "its claim like `kanban heartbeat` (heartbeat events at most one per "
                                   "dispatch.claim_ttl/4); a run silent for dispatch.heartbeat_max_stale is "
                                   "still reclaimed"),
    "rate_limit_patterns": Field("list", [], "regexes (Python syntax, searched in the last 4 KiB of this run's "
                                 "log output, ^ and $ matching at each line; add (?i) for case-insensitive): a run "
                                 "that exits non-zero (or 0 without completing) with a match is rate_limited (the "
                                 "cooldown path), not crashed"),
}

#: The keys of a profile's ``verify`` mapping: type, default, doc.
VERIFY: dict[str, Field] = {
    "command": Field("list", None, "argv run in the run's workspace with the worker's environment (no shell); "
                     "placeholders as in command"),
    "timeout": Field("duration", 600.0, "a verification running longer is killed and counts as a rejection"),
    "max_turns": Field("int", 3, "rejected runs in a row before the task is blocked for a human"),
}

SINK: dict[str, Field] = {
    "type": Field("choice", None, "command, webhook or desktop", choices=("command", "webhook", "desktop")),
    "command": Field("list", None, "command sink: argv; the event JSON arrives on stdin; placeholders "
                     "{task_id} {kind} {title} {summary} {event_id}, refused inside a `sh -c` script; "
                     "non-zero exit = failure", nullable=True),
    "url": Field("str", None, "webhook sink: URL to POST the event JSON to", nullable=True),
    "secret": Field("str", None, "webhook sink: HMAC-SHA256 key; signature in X-Kanban-Signature",
                    nullable=True),
    "timeout": Field("duration", 10.0, "give up on one delivery after this long"),
    "kinds": Field("list", None, "event kinds delivered (default: completed, blocked, gave_up, crashed, "
                   "timed_out, rate_limited, verify_failed, review_requested)", nullable=True),
    "all": Field("bool", False, "deliver every matching event, without needing a subscription"),
}

SCHEMA: dict[str, dict[str, Field]] = {
    "board": {
        "path": Field("str", None, "board database; default <state_dir>/board.db", nullable=True),
    },
    "dispatch": {
        "max_in_progress": Field("int", 8, "global cap on live runs: a run holds its slot from its claim until no "
                                 "process of it is alive (a worker lingering after `kanban complete`, or taking "
                                 "its kill_grace to stop, still counts)"),
        "failure_limit": Field("int", 2, "consecutive failures before the circuit breaker blocks a task"),
        "claim_ttl": Field("duration", 900.0, "a claim lasts this long unless extended"),
        "heartbeat_max_stale": Field("duration", 3600.0, "a run silent for longer is reclaimed as stale"),
        "crash_grace": Field("duration", 30.0, "no crash or lost verdict on a run younger than this"),
        "rate_limit_cooldown": Field("duration", 300.0, "after exit 75, wait this long before respawning "
                                     "(unless the worker said how long in $KANBAN_RETRY_AFTER_FILE)"),
        "rate_limit_scope": Field("choice", "profile", "what exit 75 cools down: the whole profile (the quota "
                                  "belongs to the account behind it) or only the task", choices=("profile", "task")),
        "retry_backoff": Field("duration", 10.0, "after a counted failure, wait this long before the retry "
                               "(doubled per consecutive failure, with jitter)"),
        "retry_backoff_max": Field("duration", 600.0, "cap on the retry backoff"),
        "tick": Field("duration", 5.0, "backstop tick for time-based rules; dispatch is event-driven"),
        "default_assignee": Field("str", None, "assignee given to unassigned ready tasks", nullable=True),
        "on_shutdown": Field("choice", "leave", "what happens to running workers when the daemon stops",
                             choices=("leave", "drain", "kill")),
        "kill_grace": Field("duration", 10.0, "between TERM and KILL when stopping a worker"),
        "drain_timeout": Field("duration", 300.0, "on_shutdown: drain waits at most this long"),
    },
    "containment": {
        "mode": Field("choice", "auto", "how a run's processes are kept findable: cgroup (one cgroup v2 per run, "
                      "ended with cgroup.kill), subreaper (the run's wrapper is a child subreaper), or auto "
                      "(cgroup where one was delegated to us, else subreaper)",
                      choices=("auto", "cgroup", "subreaper")),
        "cgroup_root": Field("str", None, "a writable cgroup v2 directory to create run cgroups in; default: "
                             "kanband's own cgroup when systemd delegated it (Delegate=yes)", nullable=True),
    },
    "workspaces": {
        "root": Field("str", None, "managed scratch root; default <state_dir>/workspaces", nullable=True),
        "repo": Field("str", None, "git repository for worktree workspaces", nullable=True),
        "default": Field("str", "scratch", "workspace kind for tasks that do not say"),
    },
    "logs": {
        "level": Field("choice", "info", "daemon log level", choices=("debug", "info", "warning", "error")),
        "format": Field("choice", "auto", "auto: console on a TTY, JSON lines otherwise",
                        choices=("auto", "console", "json")),
        "worker_log_max": Field("bytes", 2 * 1024 * 1024, "rotate a worker log past this size"),
    },
    "server": {
        "idle_timeout": Field("duration", 300.0, "close a client connection idle this long (roles and "
                              "followers excepted)"),
        "request_timeout": Field("duration", 10.0, "close a client that sends half a frame for this long"),
        "first_request_timeout": Field("duration", 5.0, "close a connection that sends no request within "
                                       "this long after connecting"),
        "max_clients": Field("int", 256, "open connections at most; a newcomer beyond this evicts the "
                             "longest-idle client that is not a role or a follower, or is refused if none"),
    },
    "supervisor": {
        "heartbeat_interval": Field("duration", 5.0, "roles heartbeat the supervisor this often"),
        "heartbeat_stale": Field("duration", 15.0, "a role silent this long is unhealthy: no WATCHDOG=1"),
        "role_timeout": Field("duration", 30.0, "a role silent this long is killed and restarted"),
        "backoff_initial": Field("duration", 0.1, "first restart delay"),
        "backoff_max": Field("duration", 30.0, "restart delay cap"),
        "backoff_reset": Field("duration", 60.0, "healthy this long resets the delay"),
        "flap_restarts": Field("int", 5, "restarts within flap_window that count as flapping"),
        "flap_window": Field("duration", 60.0, "window for flap detection"),
    },
    "web": {
        "enabled": Field("bool", True, "run the web board (the `web` role); `kanban web` prints its URL"),
        "listen": Field("str", "127.0.0.1:0", "HOST:PORT the web board listens on; port 0 picks a free port "
                        "(reported by `kanban status` and `kanban web`)"),
        "allow_remote": Field("bool", False, "allow a web.listen address that is not loopback"),
        "token_file": Field("str", None, "file holding the web board's access token (created 0600); default "
                            "<state_dir>/web.token", nullable=True),
        "age_tiers": Field("dict", {"running": [600.0, 3600.0], "ready": [3600.0, 86400.0],
                                    "todo": [604800.0, 2592000.0], "blocked": [3600.0, 86400.0]},
                           "card age colours per status: [amber, red] durations in the status (e.g. running: [10m, 60m]); "
                           "statuses not named keep their default"),
    },
    "notify": {
        "max_failures": Field("int", 5, "consecutive failures before a sink is paused (0: never pause)"),
        "backoff_initial": Field("duration", 1.0, "first retry delay after a failed delivery"),
        "backoff_max": Field("duration", 300.0, "retry delay cap"),
        "lag_warn": Field("int", 1000, "log a warning when a sink lags by more events than this"),
    },
    "attachments": {
        "max_size": Field("bytes", 25 << 20, "largest single attachment (`kanban attach` refuses a bigger file "
                          "before sending it)"),
        "max_task_total": Field("bytes", 100 << 20, "cap on all of one task's attachments together (uploads in "
                                "progress count)"),
    },
    "retention": {
        "archived": Field("duration", 30 * 86400.0, "`kanban gc` and the daily run remove the logs, run files, "
                          "attachments and workspaces of tasks archived longer than this (0: keep them)"),
        "events": Field("duration", 90 * 86400.0, "gc deletes the events of archived tasks older than this, once "
                        "every configured sink has delivered them (0: keep them)"),
        "interval": Field("duration", 86400.0, "the daemon runs gc by itself this often, the first time a minute "
                          "after it starts (0: never; `kanban gc` still works)"),
    },
}

#: Top-level keys that are maps of named entries, each checked against a sub-schema.
NAMED: dict[str, dict[str, Field]] = {"profiles": PROFILE, "sinks": SINK}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BYTES = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*$")
_BUNITS = {None: 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30}


def parse_duration(value: Any) -> float:
    """Parse ``30``, ``1.5``, ``250ms``, ``30s``, ``15m``, ``2h`` or ``1d`` into seconds.

    Raises:
        ValueError: The value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"not a duration (use e.g. 30s, 15m, 2h): {value!r}")


def _parse_bytes(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _BYTES.match(value)
        if m:
            return int(m.group(1)) * _BUNITS[m.group(2)]
    raise ValueError(f"not a size (use e.g. 2MiB): {value!r}")


def _convert(field: Field, value: Any, where: str) -> Any:
    if value is None:
        if field.nullable or field.default is None:
            return None
        raise ConfigError(f"{where}: must not be null")
    try:
        if field.type == "duration":
            return parse_duration(value)
        if field.type == "bytes":
            return _parse_bytes(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict,
                "choice": str}[field.type]
    if isinstance(value, bool) and field.type != "bool":
        raise ConfigError(f"{where}: must be {field.type}, got a boolean")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: must be {field.type}, got {type(value).__name__}")
    if field.type == "choice" and value not in field.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(field.choices)}, got {value!r}")
    if field.type == "int" and value < 0:
        raise ConfigError(f"{where}: must not be negative")
    return value


def defaults() -> dict[str, Any]:
    """The config that runs when there is no file."""
    cfg: dict[str, Any] = {sec: {k: copy.deepcopy(f.default) for k, f in fields.items()}
                           for sec, fields in SCHEMA.items()}
    for name in NAMED:
        cfg[name] = {}
    return cfg


def _check_named(kind: str, sub: dict[str, Field], raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of name -> settings")
    out = {}
    for name, entry in raw.items():
        here = f"{where}.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise ConfigError(f"{here}: names may use letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: must be a mapping")
        item = {}
        for key, value in entry.items():
            if key not in sub:
                raise ConfigError(f"{here}.{key}: unknown key (known: {', '.join(sub)})")
            item[key] = _convert(sub[key], value, f"{here}.{key}")
        for key, f in sub.items():
            item.setdefault(key, copy.deepcopy(f.default))
        _check_entry(kind, item, here)
        out[name] = item
    return out


#: Placeholders of a profile's command (``daemon.spawner.PLACEHOLDERS``) and of a command sink
#: (``daemon.sinks.PLACEHOLDER``); a unit test keeps them in step.
PROFILE_PLACEHOLDERS = ("task_id", "run_id", "title", "workspace", "config_dir", "context_file")
SINK_PLACEHOLDERS = ("task_id", "kind", "title", "summary", "event_id")

#: Programs that run an argument as code, and the option letters that say which one: after such
#: an option, the next argument that is not an option is the script (``sh -c SCRIPT``,
#: ``bash -ec SCRIPT``, ``python3 -c CODE``, ``perl -ne CODE``).
_SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "fish", "csh", "tcsh")
_CODE_FLAGS: dict[str, str] = {**{name: "c" for name in _SHELLS}, "python": "c", "pypy": "c", "perl": "eE",
                               "ruby": "e", "node": "ep", "nodejs": "ep", "php": "r", "lua": "e"}
_LONG_CODE_FLAGS = ("--command", "--eval", "--print")


def _code_flags(program: str) -> str | None:
    name = os.path.basename(program)
    m = re.match(r"^(python|pypy)[0-9.]*$", name)
    return _CODE_FLAGS.get(m.group(1) if m else name)


def code_arguments(argv: list[str]) -> list[tuple[int, str]]:
    """The arguments that a shell or an interpreter in ``argv`` will run as code.

    Returns:
        ``(index, program)`` pairs: for ``["sh", "-c", "notify {title}", "sh", "{title}"]``
        that is ``[(2, "sh")]``; the trailing ``{title}`` is ``$1``, data.
    """
    out = []
    for i, arg in enumerate(argv):
        flags = _code_flags(arg)
        if flags is None:
            continue
        code = False
        for j in range(i + 1, len(argv)):
            a = argv[j]
            if a.startswith(_LONG_CODE_FLAGS):
                if "=" in a:
                    out.append((j, os.path.basename(arg)))
                    break
                code = True
                continue
            is_option = a.startswith(("-", "+")) and a not in ("-", "--")
            if a == "--":
                continue
            if is_option and not a.startswith("--") and any(c in flags for c in a[1:]):
                code = True
            if code:
                out.append((j, os.path.basename(arg)))  # an option here may already be the code (python -c)
                if not is_option:
                    break
            elif not is_option:
                break  # a script file: what follows are its arguments
    return out


def check_code_placeholders(argv: list[str], names: tuple[str, ...], where: str, hint: str) -> None:
    """Refuse a placeholder inside an argument that a shell or interpreter runs as code.

    A substituted value there (a task title, say) would run as code. As a whole argv element of
    its own, or as ``$1`` after the script, it stays data.

    Raises:
        ConfigError: Naming ``where[index]``, the placeholder, the program and ``hint``.
    """
    pattern = re.compile(r"\{(" + "|".join(names) + r")\}")
    for index, program in code_arguments(argv):
        m = pattern.search(argv[index])
        if m:
            raise ConfigError(
                f"{where}[{index}]: placeholder {m.group(0)} inside a script run by {program}: a value "
                f"substituted there (a task title, say) would run as code. {hint}")


def _check_entry(kind: str, item: dict[str, Any], where: str) -> None:
    if kind == "profiles":
        cmd = item["command"]
        if not cmd or not all(isinstance(a, str) for a in cmd):
            raise ConfigError(f"{where}.command: must be a non-empty list of strings")
        check_code_placeholders(cmd, PROFILE_PLACEHOLDERS, f"{where}.command",
                                "Read it in the script instead ($KANBAN_TASK, $KANBAN_WORKSPACE, "
                                "`kanban show \"$KANBAN_TASK\" --json`), or pass it as its own argument "
                                "after the script: [\"sh\", \"-c\", \"agent \\\"$1\\\"\", \"sh\", "
                                "\"{title}\"]. See docs/workers.md.")
        if not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in item["env"].items()):
            raise ConfigError(f"{where}.env: must map names to strings")
        item["env"] = {k: str(v) for k, v in item["env"].items()}
        if item["verify"] is not None:
            item["verify"] = _check_verify(item["verify"], f"{where}.verify")
        _check_patterns(item["rate_limit_patterns"], f"{where}.rate_limit_patterns")
        if item["repo"]:
            item["repo"] = os.path.expanduser(item["repo"])
    elif kind == "sinks":
        if item["type"] is None:
            raise ConfigError(f"{where}.type: required (command, webhook or desktop)")
        if item["type"] == "command" and not item["command"]:
            raise ConfigError(f"{where}.command: required for a command sink")
        if item["command"]:
            if not all(isinstance(a, str) for a in item["command"]):
                raise ConfigError(f"{where}.command: must be a list of strings")
            check_code_placeholders(item["command"], SINK_PLACEHOLDERS, f"{where}.command",
                                    "Read it in the script instead ($KANBAN_EVENT_TITLE, $KANBAN_EVENT_SUMMARY, "
                                    "... or the event JSON on stdin), or pass it as its own argument after "
                                    "the script: [\"sh\", \"-c\", \"notify \\\"$1\\\"\", \"sh\", \"{title}\"]. "
                                    "See docs/notifications.md.")
        if item["type"] == "webhook" and not item["url"]:
            raise ConfigError(f"{where}.url: required for a webhook sink")


def _check_patterns(patterns: list[Any], where: str) -> None:
    """Each of a profile's ``rate_limit_patterns`` must be a string that compiles as a regex.

    Raises:
        ConfigError: Naming ``where[index]`` and what is wrong with that pattern.
    """
    for i, pat in enumerate(patterns):
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{where}[{i}]: must be a non-empty string (a regular expression)")
        try:
            re.compile(pat, re.MULTILINE)
        except re.error as exc:
            raise ConfigError(f"{where}[{i}]: not a valid regular expression ({exc}): {pat!r}") from None


def _check_verify(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A profile's ``verify`` mapping, checked and converted (timeout in seconds)."""
    out = {}
    for key, value in raw.items():
        if key not in VERIFY:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(VERIFY)})")
        out[key] = _convert(VERIFY[key], value, f"{where}.{key}")
    for key, f in VERIFY.items():
        out.setdefault(key, copy.deepcopy(f.default))
    if not out["command"] or not all(isinstance(a, str) for a in out["command"]):
        raise ConfigError(f"{where}.command: must be a non-empty list of strings")
    if out["max_turns"] < 1:
        raise ConfigError(f"{where}.max_turns: must be at least 1")
    if out["timeout"] <= 0:
        raise ConfigError(f"{where}.timeout: must be positive")
    return out


def _check_reviewers(profiles: dict[str, Any], where: str) -> None:
    for name, prof in profiles.items():
        by = prof.get("review_by")
        if by is None:
            continue
        if by == name:
            raise ConfigError(f"{where}.{name}.review_by: a profile may not review its own work")
        if by not in profiles:
            raise ConfigError(f"{where}.{name}.review_by: no profile named {by!r}")


def load(path: str | os.PathLike | None) -> dict[str, Any]:
    """Load and check a config file; a missing file means the defaults.

    Args:
        path: The YAML file. ``None`` or a non-existent path gives the defaults.

    Returns:
        The full config with every key present and values converted
        (durations in seconds, sizes in bytes). ``_file`` and ``_dir`` record
        where it came from.

    Raises:
        ConfigError: Naming the file and the dotted key.
    """
    cfg = defaults()
    cfg["_file"] = None
    cfg["_dir"] = os.getcwd()
    cfg["_set"] = set()
    if path is None or not os.path.exists(path):
        return cfg
    path = Path(path).resolve()
    cfg["_file"] = str(path)
    cfg["_dir"] = str(path.parent)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return cfg
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for section, value in raw.items():
        if section in NAMED:
            cfg[section] = _check_named(section, NAMED[section], value, f"{path}: {section}")
            if section == "profiles":
                _check_reviewers(cfg[section], f"{path}: {section}")
            continue
        if section not in SCHEMA:
            known = ", ".join([*SCHEMA, *NAMED])
            raise ConfigError(f"{path}: {section}: unknown key (known: {known})")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {section}: must be a mapping")
        for key, v in value.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{path}: {section}.{key}: unknown key (known: {', '.join(SCHEMA[section])})")
            cfg[section][key] = _convert(SCHEMA[section][key], v, f"{path}: {section}.{key}")
            cfg["_set"].add(f"{section}.{key}")
    if cfg["workspaces"]["repo"]:
        cfg["workspaces"]["repo"] = os.path.expanduser(cfg["workspaces"]["repo"])
    sup = cfg["supervisor"]
    if sup["heartbeat_stale"] <= sup["heartbeat_interval"]:
        raise ConfigError(f"{path}: supervisor.heartbeat_stale: must be longer than supervisor.heartbeat_interval "
                          f"({sup['heartbeat_stale']:g}s <= {sup['heartbeat_interval']:g}s)")
    if sup["role_timeout"] <= sup["heartbeat_interval"]:
        raise ConfigError(f"{path}: supervisor.role_timeout: must be longer than supervisor.heartbeat_interval")
    _check_web(cfg["web"], path)
    da = cfg["dispatch"]["default_assignee"]
    if da is not None and da not in cfg["profiles"]:
        raise ConfigError(f"{path}: dispatch.default_assignee: no profile named {da!r}")
    return cfg


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> ``(host, port)``.

    Raises:
        ValueError: Not HOST:PORT, or the port is not 0-65535.
    """
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]\s]+):(\d+)$", value)
    if not m or int(m.group(2)) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:0, [::1]:8080)")
    return m.group(1), int(m.group(2))


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_web(web: dict[str, Any], path: Path) -> None:
    try:
        host, _ = parse_listen(web["listen"])
    except ValueError as exc:
        raise ConfigError(f"{path}: web.listen: {exc}") from None
    if not is_loopback(host) and not web["allow_remote"]:
        raise ConfigError(f"{path}: web.listen: {host} is not a loopback address; the board is the operator's "
                          "hand, so set web.allow_remote: true to listen there on purpose")
    tiers = copy.deepcopy(SCHEMA["web"]["age_tiers"].default)  # a status the file does not name keeps its default
    for status, pair in web["age_tiers"].items():
        where = f"{path}: web.age_tiers.{status}"
        if status not in ("triage", "todo", "ready", "running", "blocked", "review", "scheduled", "done"):
            raise ConfigError(f"{where}: unknown status")
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{where}: must be [amber, red], two durations")
        try:
            amber, red = parse_duration(pair[0]), parse_duration(pair[1])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if red < amber:
            raise ConfigError(f"{where}: red ({red:g}s) must not come before amber ({amber:g}s)")
        tiers[status] = [amber, red]
    web["age_tiers"] = tiers


def render_markdown() -> str:
    """Render the schema as ``docs/config.md``."""
    out = ["# Configuration reference", "",
           "Generated from `daemon/config.py` (`python -m daemon.config > docs/config.md`); a test keeps",
           "it in sync. The file is YAML at `$XDG_CONFIG_HOME/kanban/config.yaml` (override with",
           "`kanband --config FILE`). Every key is optional; no file at all runs on these defaults.",
           "Durations take `ms`, `s`, `m`, `h`, `d` suffixes (a bare number is seconds); sizes take",
           "`KiB`, `MiB`, `GiB`. An unknown key or a wrong type stops the daemon with a message naming",
           "the file and the key; `kanband --check-config` checks a file without starting.", ""]

    def table(fields: dict[str, Field], prefix: str) -> list[str]:
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for k, f in fields.items():
            t = f.type if f.type != "choice" else " \\| ".join(f.choices)
            rows.append(f"| `{prefix}{k}` | {t} | `{f.default!r}` | {f.doc} |")
        return rows + [""]

    for section, fields in SCHEMA.items():
        out += [f"## `{section}`", ""] + table(fields, f"{section}.")
    out += ["## `profiles`", "", "A map of assignee name to worker profile.", ""] + table(PROFILE, "profiles.NAME.")
    out += ["### `profiles.NAME.verify`", "", "The acceptance check (see docs/lifecycle.md, \"Verified completion\").",
            ""] + table(VERIFY, "profiles.NAME.verify.")
    out += ["## `sinks`", "", "A map of sink name to notification sink.", ""] + table(SINK, "sinks.NAME.")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
