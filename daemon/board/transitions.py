"""The task state machine, as one table.

Runs in: the dispatcher (through the kernel operations) and in unit tests.

Every status change on the board goes through :func:`move`. A row says: from
these statuses, this move leads to that status, if the guard holds. The
target ``READY_OR_TODO`` resolves to ``ready`` when the task has no open parent
and ``todo`` otherwise.
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
}


def _t(move: str, sources: str, target: str, guard: str = "", doc: str = "") -> Transition:
    return Transition(move, frozenset(sources.split()), target, guard, doc)


TABLE: tuple[Transition, ...] = (
    _t("promote", "triage scheduled", READY_OR_TODO, doc="operator promotes out of triage"),
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


def render_markdown() -> str:
    """The table as Markdown, for ``docs/lifecycle.md``."""
    rows = ["| move | from | to | guard | when |", "|---|---|---|---|---|"]
    for r in TABLE:
        rows.append(f"| `{r.move}` | {', '.join(sorted(r.sources))} | {r.target.replace('|', ' or ')} | "
                    f"{GUARDS[r.guard]} | {r.doc} |")
    return "\n".join(rows) + "\n"
