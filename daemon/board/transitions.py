"""The task state machine, as one table.

Runs in: the dispatcher (through the kernel operations) and in unit tests.

Every status change on the board goes through :func:`move`. A row says: from
these statuses, this move leads to that status, if the guard holds. The
target ``READY_OR_TODO`` resolves to ``ready`` when the task has no open parent
and ``todo`` otherwise.

Verbs that change a task without moving its status (edit, assign, comment,
link, unlink, subscribe) go through :func:`check` and the ``VERB_GUARDS``
table instead: each names the statuses it accepts, so a verb never has a
silently meaningless effect (assigning a task that will never run again,
linking a parent to a finished child, subscribing to an archived task).
"""

from __future__ import annotations

import dataclasses

from client.protocol import RPCError

STATUSES = ("triage", "todo", "ready", "running", "blocked", "review", "scheduled", "done", "archived")
OPEN_STATUSES = frozenset(STATUSES) - {"done", "archived"}
READY_OR_TODO = "ready|todo"


@dataclasses.dataclass(frozen=True)
class Transition:
    """One row: ``sources`` --``move``--> ``target`` when ``guard`` holds."""

    move: str
    sources: frozenset[str]
    target: str
    guard: str = ""  # "no_open_parents" or "" (documented in GUARDS)
    doc: str = ""


GUARDS = {
    "": "always",
    "no_open_parents": "every parent is done or archived",
    "open": "the task is open (not done or archived)",
    "not_archived": "the task is not archived",
    "idle": "the task is open and not running",
}

#: The statuses each verb guard accepts.
GUARD_STATUSES: dict[str, frozenset[str]] = {
    "": frozenset(STATUSES),
    "open": OPEN_STATUSES,
    "not_archived": frozenset(STATUSES) - {"archived"},
    "idle": OPEN_STATUSES - {"running"},
}


@dataclasses.dataclass(frozen=True)
class VerbGuard:
    """A verb that changes no status is allowed on ``subject`` when ``guard`` holds for it."""

    verb: str
    subject: str  # "task", or for link/unlink "parent" / "child"
    guard: str    # a key of GUARD_STATUSES
    doc: str = ""


VERB_GUARDS: tuple[VerbGuard, ...] = (
    VerbGuard("comment", "task", "", "a note is meaningful on any task, archived ones included"),
    VerbGuard("edit", "task", "", "title and body: a record, correctable on any task"),
    VerbGuard("edit --priority", "task", "open", "priority orders dispatch; a closed task is never dispatched"),
    VerbGuard("edit --max-runtime", "task", "open", "limits the next run; a closed task never runs again"),
    VerbGuard("edit --max-retries", "task", "open", "the breaker's limit; a closed task never fails again"),
    VerbGuard("edit --workspace", "task", "idle", "where the next run works; not under a running worker"),
    VerbGuard("assign", "task", "open", "the assignee runs it next; a closed task never runs again"),
    VerbGuard("link", "child", "open", "a parent holds back only a task that has yet to finish"),
    VerbGuard("link", "parent", "", "a closed parent holds nothing back: the child stays ready"),
    VerbGuard("unlink", "child", "open", "as for link"),
    VerbGuard("unlink", "parent", "", "as for link"),
    VerbGuard("subscribe", "task", "not_archived", "a task's subscriptions end when it is archived"),
)
_VERB_INDEX: dict[tuple[str, str], VerbGuard] = {(g.verb, g.subject): g for g in VERB_GUARDS}


def _t(move: str, sources: str, target: str, guard: str = "", doc: str = "") -> Transition:
    return Transition(move, frozenset(sources.split()), target, guard, doc)


TABLE: tuple[Transition, ...] = (
    _t("promote", "triage scheduled", READY_OR_TODO, doc="operator promotes out of triage, or starts a "
       "scheduled task early"),
    _t("promote", "todo", "ready", "no_open_parents", doc="operator forces a todo task ready"),
    _t("park", "ready", "todo", doc="an open parent was linked"),
    _t("unpark", "todo", "ready", "no_open_parents", doc="the last open parent closed"),
    _t("claim", "ready", "running", doc="the dispatcher starts a run"),
    _t("complete", "running ready todo review triage scheduled", "done", "no_open_parents",
       doc="work finished"),
    _t("block", "triage todo ready running review scheduled", "blocked", doc="worker or operator blocks"),
    _t("unblock", "blocked", READY_OR_TODO, doc="only an unblock ends a block"),
    _t("requeue", "running", READY_OR_TODO, doc="run ended without finishing (crash, 75, lost); todo if a parent "
       "was linked while it ran"),
    _t("give_up", "running review", "blocked", doc="circuit breaker (a reviewer's failures count too), or "
       "verification failed max_turns times in a row"),
    _t("reject", "running", READY_OR_TODO, doc="the verify command rejected the work (run outcome rejected); "
       "the output is attached as a comment"),
    _t("submit", "running", "review", "no_open_parents", doc="the worker completed (and the work passed "
       "verification); the task or its profile requires review"),
    _t("approve", "review", "done", "no_open_parents", doc="a reviewer run or an operator approved the work "
       "(kanban approve)"),
    _t("request_changes", "review", READY_OR_TODO, doc="a reviewer run or an operator sent the work back with a "
       "comment (kanban request-changes); the failure count is untouched"),
    _t("archive", "triage todo ready running blocked review scheduled done", "archived",
       doc="hide from lists; children may be promoted"),
    _t("reopen", "done", READY_OR_TODO, doc="an operator sends finished work back (kanban reopen)"),
    _t("retry", "done", READY_OR_TODO, doc="an operator asks for a fresh run of finished work (kanban retry)"),
    _t("repark", "ready", "todo", doc="a parent was reopened (or retried): the child waits for it again"),
    _t("schedule", "triage todo ready scheduled", "scheduled", doc="wait until a due time (kanban schedule, "
       "create --at/--in)"),
    _t("due", "scheduled", READY_OR_TODO, doc="the due time came (the dispatcher wakes for it)"),
)

_INDEX: dict[tuple[str, str], Transition] = {}
for _row in TABLE:
    for _src in _row.sources:
        assert (_src, _row.move) not in _INDEX, f"duplicate transition {_src} --{_row.move}-->"
        _INDEX[(_src, _row.move)] = _row

MOVES = tuple(dict.fromkeys(row.move for row in TABLE))


def lookup(status: str, move: str) -> Transition | None:
    """The row for ``status --move-->``, or ``None`` if the move is illegal."""
    return _INDEX.get((status, move))


def move(task_id: str, status: str, move_name: str, *, open_parents: int) -> str:
    """Resolve a move to the new status.

    Args:
        task_id: For the error message.
        status: The task's current status.
        move_name: One of ``MOVES``.
        open_parents: How many of the task's parents are still open.

    Returns:
        The new status.

    Raises:
        RPCError: ``illegal_transition`` naming the task, its status and the move;
            ``conflict`` when the guard fails because a parent is open.
    """
    row = _INDEX.get((status, move_name))
    if row is None:
        raise RPCError("illegal_transition",
                       f"task {task_id} is {status}; cannot {move_name} it",
                       task=task_id, status=status, move=move_name)
    if row.guard == "no_open_parents" and open_parents:
        raise RPCError("conflict",
                       f"task {task_id} has {open_parents} open parent(s); cannot {move_name} it",
                       task=task_id, status=status, move=move_name, open_parents=open_parents)
    if row.target == READY_OR_TODO:
        return "todo" if open_parents else "ready"
    return row.target


def allowed(status: str, verb: str, subject: str = "task") -> bool:
    """Whether ``verb`` may act on a ``subject`` task in ``status`` (see ``VERB_GUARDS``)."""
    return status in GUARD_STATUSES[_VERB_INDEX[(verb, subject)].guard]


def check(task_id: str, status: str, verb: str, subject: str = "task") -> None:
    """Refuse ``verb`` on a task whose status its guard does not accept.

    Raises:
        RPCError: ``illegal_transition`` naming the task, its status, the move (the verb)
            and the guard, e.g. ``task t_1a2b3c4d is archived; cannot edit it``.
    """
    g = _VERB_INDEX[(verb, subject)]
    if status not in GUARD_STATUSES[g.guard]:
        what = f"{verb} it" if subject == "task" else f"{verb} it as a {subject}"
        raise RPCError("illegal_transition", f"task {task_id} is {status}; cannot {what} (only when {GUARDS[g.guard]})",
                       task=task_id, status=status, move=verb, guard=g.guard)


def render_markdown() -> str:
    """The tables as Markdown, for ``docs/lifecycle.md``: the transitions, then the verb guards."""
    rows = ["| move | from | to | guard | when |", "|---|---|---|---|---|"]
    for r in TABLE:
        rows.append(f"| `{r.move}` | {', '.join(sorted(r.sources))} | {r.target.replace('|', ' or ')} | "
                    f"{GUARDS[r.guard]} | {r.doc} |")
    rows += ["", "Verbs that change no status are checked by a named guard:", "",
             "| verb | on | allowed | refused on | why |", "|---|---|---|---|---|"]
    for g in VERB_GUARDS:
        refused = [s for s in STATUSES if s not in GUARD_STATUSES[g.guard]]
        rows.append(f"| `{g.verb}` | {g.subject} | {f'`{g.guard}`: ' if g.guard else ''}{GUARDS[g.guard]} | "
                    f"{', '.join(refused) or '-'} | {g.doc} |")
    return "\n".join(rows) + "\n"
