"""structlog configuration, done once per process right after the fork.

Runs in: the supervisor and every role.

Where records go:
- under systemd (``JOURNAL_STREAM`` names our stdout): straight to the journal
  through its native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/),
  one datagram per record on ``/run/systemd/journal/socket`` (or
  ``$KANBAN_JOURNAL_SOCKET``, a path override for containers and tests), with
  **fields**: ``PRIORITY=`` (syslog level), ``SYSLOG_IDENTIFIER=kanband``,
  ``MESSAGE=`` (the record as one JSON line, as before), and every structlog
  field upper-cased: ``EVENT=``, ``ROLE=``, ``TASK=``, ``RUN=``, ``LEVEL=``,
  ``PID=``, ... So ``journalctl --user -u kanband TASK=t_0123abcd`` works. A
  record too large for a datagram travels in a sealed memfd, as
  ``sd_journal_sendv(3)`` does; one that cannot be sent (journald restarting, its
  queue full) is written to stdout instead, as a JSON line with its ``<N>``
  priority prefix, so nothing is lost;
- on a TTY: a readable console line;
- otherwise: JSON lines on stdout.

``logs.format: json`` forces JSON (the journal still gets its fields when stdout
is the journal); ``console`` forces the console renderer.

Every record carries ``level``, ``event``, ``role``, ``pid`` and a UTC
``timestamp``, plus the event's own fields (``task``, ``run``, ...). Events are
named ``noun.verb``.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import os
import select
import socket
import struct
import sys
from typing import Any, TextIO

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
#: journald's native socket (systemd.journal-fields(7), JOURNAL_NATIVE_PROTOCOL).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Fields kanband sets itself; a structlog key that upper-cases to one of these gets a ``KANBAN_`` prefix.
RESERVED_FIELDS = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "MESSAGE_ID", "CODE_FILE", "CODE_LINE",
                             "CODE_FUNC", "ERRNO", "SYSLOG_FACILITY", "SYSLOG_PID", "SYSLOG_TIMESTAMP"})
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


def field_name(key: str) -> str:
    """A structlog key as a journal field name: ``A-Z``, ``0-9`` and ``_``, not starting with ``_``
    or a digit (those are journald's own), at most 64 characters."""
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    if name in RESERVED_FIELDS:
        name = "KANBAN_" + name
    return name[:64]


def journal_field(name: str, value: Any) -> bytes:
    """One field in the native format: ``NAME=value\n``, or for a value holding a newline the
    binary form ``NAME\n`` + its length (64-bit little endian) + the value + ``\n``."""
    data = value.encode("utf-8", "backslashreplace") if isinstance(value, str) else bytes(value)
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def journal_entry(event: dict[str, Any], line: str) -> bytes:
    """The datagram for one record: PRIORITY, SYSLOG_IDENTIFIER, MESSAGE (``line``), then each field."""
    parts = [journal_field("PRIORITY", str(PRIORITY.get(event.get("level", "info"), 6))),
             journal_field("SYSLOG_IDENTIFIER", "kanband"), journal_field("MESSAGE", line)]
    for key, value in event.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
        parts.append(journal_field(field_name(str(key)), text))
    return b"".join(parts)


def render_journal(logger: Any, name: str, event: dict[str, Any]) -> tuple[tuple[bytes, str], dict[str, Any]]:
    """A structlog renderer for :class:`JournalWriter`: the datagram, and the stdout fallback line."""
    line = json.dumps(event, default=str, separators=(",", ":"))
    return (journal_entry(event, line), f"<{PRIORITY.get(event.get('level', 'info'), 6)}>{line}"), {}


class JournalWriter:
    """A structlog logger that sends each record to journald's native socket.

    The socket is unconnected and non-blocking, one ``sendto`` per record, so
    logging never waits for the journal. A record larger than a datagram goes in
    a sealed memfd passed with ``SCM_RIGHTS`` (with an empty payload, as the
    protocol asks). A record that cannot be sent at all is written to
    ``fallback`` (stdout, which is the journal's stream) with its priority prefix.

    Args:
        path: The journal socket.
        fallback: Where an unsendable record goes, as a line.
    """

    def __init__(self, path: str, fallback: LineWriter) -> None:
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec: workers never get it
        self.sock.setblocking(False)

    def send(self, data: bytes) -> bool:
        """Send one entry; ``False`` if it could not be delivered."""
        try:
            self.sock.sendto(data, self.path)
            return True
        except InterruptedError:
            return self.send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                return False
        try:  # too large for a datagram: hand journald a sealed memfd instead
            fd = os.memfd_create("kanband-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def msg(self, entry: bytes, line: str) -> None:
        if not self.send(entry):
            self.fallback.msg(line)

    log = debug = info = warn = warning = msg
    err = error = critical = fatal = exception = failure = msg


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
    writer: Any = LineWriter(sys.stdout)
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=not os.environ.get("NO_COLOR")))
    elif fmt == "journal":
        processors.append(render_journal)
        writer = JournalWriter(os.environ.get("KANBAN_JOURNAL_SOCKET") or JOURNAL_SOCKET, writer)
    else:
        processors.append(render_json(prefix=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[cfg["logs"]["level"]]),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
