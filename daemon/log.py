"""structlog configuration, done once per process right after the fork.

Runs in: the supervisor and every role.

Output goes to stdout:
- under systemd (``JOURNAL_STREAM`` names our stdout): one JSON object per
  line, prefixed with the syslog priority (``<3>`` error, ``<4>`` warning,
  ``<6>`` info, ``<7>`` debug) so journald records the severity
  (``SyslogLevelPrefix=`` is on by default);
- on a TTY: a readable console line;
- otherwise: JSON lines.

``logs.format: json`` forces JSON (still with the priority prefix when stdout
is the journal); ``console`` forces the console renderer.

Every line carries ``level``, ``event``, ``role``, ``pid`` and a UTC
``timestamp``, plus the event's own fields (``task``, ``run``, ...). Events are
named ``noun.verb``.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
from typing import Any, TextIO

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def stdout_is_journal(stream: TextIO | None = None, env: dict[str, str] | None = None) -> bool:
    """True if ``JOURNAL_STREAM`` (``<dev>:<ino>``) names the file behind ``stream``.

    systemd sets the variable for a service whose stdout/stderr go to the
    journal; it is inherited by children whose output goes elsewhere, so the
    device and inode are compared, as ``systemd.exec(5)`` recommends.
    """
    value = (os.environ if env is None else env).get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stdout).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def choose_format(fmt: str, stream: TextIO | None = None, env: dict[str, str] | None = None) -> str:
    """``journal``, ``json`` or ``console`` for ``logs.format`` ``auto``/``json``/``console`` here."""
    if fmt == "console":
        return "console"
    if stdout_is_journal(stream, env):
        return "journal"
    if fmt == "json":
        return "json"
    stream = stream or sys.stdout
    return "console" if stream.isatty() else "json"


def render_json(prefix: bool):
    """A structlog renderer: one compact JSON object, optionally with the ``<N>`` priority prefix."""
    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        line = json.dumps(event, default=str, separators=(",", ":"))
        if prefix:
            return f"<{PRIORITY.get(event.get('level', 'info'), 6)}>{line}"
        return line
    return render


class LineWriter:
    """A structlog logger that writes each line with a single ``write(2)``.

    The supervisor and its roles share one stdout (a file, a pipe or the
    journal's stream socket). ``print`` issues the message and the newline as
    two writes when stdout is unbuffered (``PYTHONUNBUFFERED``), so lines from
    two processes could interleave; one ``os.write`` per line cannot. A line
    that cannot be written (EPIPE: the journal went away) is dropped rather
    than taking the process down.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "backslashreplace")
        try:
            fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):  # no real fd (a test's capture object)
            self.stream.write(data.decode("utf-8"))
            self.stream.flush()
            return
        while data:
            try:
                n = os.write(fd, data)
            except InterruptedError:
                continue
            except BlockingIOError:
                select.select([], [fd], [], 1.0)
                continue
            except OSError:
                return
            data = data[n:]

    log = debug = info = warn = warning = msg
    err = error = critical = fatal = exception = failure = msg


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
        processors.append(render_json(prefix=fmt == "journal"))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[cfg["logs"]["level"]]),
        logger_factory=lambda *args: LineWriter(sys.stdout),
        cache_logger_on_first_use=False,
    )
