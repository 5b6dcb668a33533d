"""Terminal helpers of the ``kanban`` CLI: the pager for ``show`` and the editor for ``edit``.

Runs in: the ``kanban`` CLI. Stdlib only, imported only by the verbs that use it.

Pager: ``kanban show`` on a terminal, when its output is taller than the screen,
pipes it through ``$PAGER`` (``less -FRX`` when unset; an empty ``PAGER`` or
``cat`` means no pager), run by ``sh -c`` as git does. ``--no-pager`` prints
directly; so does any output that is not a terminal.

Editor: ``kanban edit ID`` with no field flags writes the task's editable fields to a
private temp file as ``key: value`` lines, the body last (everything after the
``body:`` line, verbatim), opens ``$VISUAL`` or ``$EDITOR`` (``vi``) on it, and sends
only the fields that changed, in one ``task.edit`` request. The fields are the
params of ``task.edit`` that the task has, so a field added to the registry appears
in the form by itself. Saving an unchanged or empty file changes nothing.
"""

from __future__ import annotations

import os
import sys

#: The form's fields in order when ``task.edit`` declares them; others follow, the body is always last.
ORDER = ("title", "priority", "assignee", "workspace", "max_runtime", "max_retries")
HEADER = """\
# kanban edit {id} ({status}): change the values, save and quit.
# Saving the file unchanged, or empty, changes nothing. Lines starting with # are ignored
# above the body; everything below the "body:" line is the body, verbatim.
#   assignee     a profile name; empty unassigns (a running task's run is ended first)
#   workspace    scratch, worktree or dir:/abs/path (not while the task runs)
#   max_runtime  e.g. 30m or 2h; empty: the profile's
#   max_retries  consecutive failures before giving up; empty: the config's
"""


class FormError(Exception):
    """The edited text does not parse; the message names the line."""


# ---- pager ------------------------------------------------------------------------------


def page(text: str) -> None:
    """Print ``text``, through ``$PAGER`` when stdout is a terminal and ``text`` is taller than it."""
    pager = os.environ.get("PAGER", "less -FRX").strip()
    try:
        rows = os.get_terminal_size(sys.stdout.fileno()).lines
    except OSError:
        rows = 0
    if not rows or text.count("\n") + 1 < rows or pager in ("", "cat"):
        print(text)
        return
    import subprocess
    sys.stdout.flush()
    env = dict(os.environ)
    env.setdefault("LESS", "FRX")
    proc = subprocess.Popen(["/bin/sh", "-c", pager], stdin=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(text.encode("utf-8", "replace") + b"\n")
        proc.stdin.close()
    except BrokenPipeError:  # quit before reading it all
        pass
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C belongs to the pager while it runs
            continue
    if code == 127:  # the pager is not installed: the text still has to reach the user
        print(text)


# ---- editor -----------------------------------------------------------------------------


def seconds_text(sec: float | None) -> str:
    """Seconds as a duration in the largest unit that divides them (``5400`` -> ``90m``); ``""`` for None."""
    if sec is None:
        return ""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= n and sec % n == 0:
            return f"{int(sec // n)}{unit}"
    return f"{sec:g}s"


def field_text(task: dict, name: str) -> str:
    """A field's current value as the form shows it."""
    if name == "workspace":
        ws = task["workspace"]
        return ws["kind"] if ws["kind"] != "dir" else f"dir:{ws['path']}"
    if name == "max_runtime":
        return seconds_text(task.get("max_runtime"))
    value = task.get(name)
    return "" if value is None else str(value)


def form_fields(task: dict, edit_params: list) -> list:
    """The ``task.edit`` params the form shows: the ones the task has, body last."""
    have = [p for p in edit_params if p.name not in ("id", "body") and p.name in task and p.type in ("str", "int")]
    have.sort(key=lambda p: ORDER.index(p.name) if p.name in ORDER else len(ORDER))
    body = [p for p in edit_params if p.name == "body"]
    return have + body


def render(task: dict, fields: list) -> str:
    out = [HEADER.format(id=task["id"], status=task["status"])]
    for p in fields:
        if p.name == "body":
            out.append("body:\n" + (task.get("body") or ""))
        else:
            value = field_text(task, p.name)
            out.append(f"{p.name}: {value}".rstrip() + "\n")
    return "".join(out)


def parse(text: str, fields: list) -> dict[str, str] | None:
    """The edited form as ``{field: text}``, or ``None`` for an empty file (cancel).

    Raises:
        FormError: A line that is not ``key: value`` for a known key, or a key given twice.
    """
    if not text.strip():
        return None
    names = {p.name for p in fields}
    values: dict[str, str] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or key not in names:
            raise FormError(f"line {i}: expected one of {', '.join(sorted(names))} followed by ':', "
                            f"got {line[:60]!r}")
        if key in values:
            raise FormError(f"line {i}: {key} is given twice")
        if key == "body":
            values["body"] = "\n".join(lines[i:]) if value.strip() == "" else value.strip()
            break
        values[key] = value.strip()
    return values


def changes(task: dict, fields: list, edited: dict[str, str]) -> dict:
    """The ``task.edit`` params for what differs from ``task`` (typed; ``None`` clears).

    Raises:
        FormError: A number field that is not an integer, or a required field left empty.
    """
    out: dict = {}
    for p in fields:
        if p.name not in edited:
            continue
        new = edited[p.name]
        if p.name == "body":
            if new.rstrip("\n") != (task.get("body") or "").rstrip("\n"):
                out["body"] = new.rstrip("\n")
            continue
        if new == field_text(task, p.name):
            continue
        if new == "":
            if not p.nullable:
                raise FormError(f"{p.name} cannot be empty")
            out[p.name] = None
        elif p.type == "int":
            try:
                out[p.name] = int(new)
            except ValueError:
                raise FormError(f"{p.name} must be an integer, not {new!r}") from None
        else:
            out[p.name] = new
    return out


def edit_in_editor(task: dict, edit_params: list) -> tuple[dict | None, str]:
    """Open the task's form in the user's editor.

    Returns:
        ``(changes, path)``: the ``task.edit`` params that changed (``{}`` when nothing did,
        ``None`` for an emptied file), and the temp file, which the caller removes once the
        change is applied (it is left for the user when something went wrong).

    Raises:
        FormError: The editor failed, or the text does not parse (the message names the file).
    """
    import subprocess
    import tempfile
    fields = form_fields(task, edit_params)
    fd, path = tempfile.mkstemp(prefix=f"kanban-edit-{task['id']}-", suffix=".txt")  # 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render(task, fields))
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    code = subprocess.call(["/bin/sh", "-c", f'{editor} "$1"', editor, path])
    if code != 0:
        raise FormError(f"the editor ({editor}) exited with status {code}; nothing changed (your text is in {path})")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        edited = parse(text, fields)
        return (None if edited is None else changes(task, fields, edited)), path
    except FormError as exc:
        raise FormError(f"{exc}; nothing changed (your text is in {path})") from None
