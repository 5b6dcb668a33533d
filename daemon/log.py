"""structlog configuration, done once per process right after the fork.

Runs in: the supervisor and every role.

Output goes to stdout:
- under systemd (``JOURNAL_STREAM`` set): one JSON object per line, prefixed
  with the syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info,
  ``<7>`` debug) so journald records the severity;
- on a TTY: a readable console line;
- otherwise: JSON lines.

Every line carries ``role`` and ``pid``. Events are named ``noun.verb``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def choose_format(fmt: str) -> str:
    """``json`` or ``console`` for ``logs.format`` ``auto``/``json``/``console`` in this environment."""
    if fmt != "auto":
        return fmt
    if os.environ.get("JOURNAL_STREAM"):
        return "journal"
    return "console" if sys.stdout.isatty() else "json"


def _render_json(prefix: bool):
    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        line = json.dumps(event, default=str, separators=(",", ":"))
        if prefix:
            return f"<{PRIORITY.get(event.get('level', 'info'), 6)}>{line}"
        return line
    return render


def configure(cfg: dict[str, Any], role: str) -> None:
    """Configure structlog for this process (call again after every fork)."""
    fmt = choose_format(cfg["logs"]["format"])
    pid = os.getpid()

    def add_ids(logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("role", role)
        event.setdefault("pid", pid)
        return event

    processors: list[Any] = [
        structlog.processors.add_log_level,
        add_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=not os.environ.get("NO_COLOR")))
    else:
        processors.append(_render_json(prefix=fmt == "journal"))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[cfg["logs"]["level"]]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
