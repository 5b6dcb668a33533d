// What a person can do to a task, as tables: status -> actions, action -> RPC method and params,
// and (source status, target column) -> action for drag and drop.
//
// An action whose method the daemon does not have (GET /api/meta lists them) is hidden; a drop
// that maps to such an action snaps back with a message saying so. The server stays the judge of
// every move: an illegal one comes back with its message (illegal_transition, conflict...).

import { has } from "./api.js";

const DURATION = /^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$/;

// ask: what the action needs from the person first ("reason", "comment", "time", "assignee", ...).
export const ACTIONS = {
  promote: { label: "Start / promote", method: "task.promote", params: (t) => ({ id: t.id }) },
  complete: { label: "Mark done", method: "task.complete", params: (t) => ({ ids: [t.id] }), bulk: true },
  block: { label: "Block", method: "task.block", ask: "reason", prompt: "Why is it blocked?",
           params: (t, reason) => ({ ids: [t.id], reason }), bulk: true },
  unblock: { label: "Unblock", method: "task.unblock", params: (t) => ({ ids: [t.id] }), bulk: true },
  retry: { label: "Retry", method: "task.retry", params: (t) => ({ ids: [t.id] }), bulk: true },
  kill: { label: "Kill run", method: "task.kill", params: (t) => ({ ids: [t.id] }), bulk: true },
  kill_block: { label: "Kill and block", method: "task.kill", ask: "reason", prompt: "Why block it?",
                params: (t, reason) => ({ ids: [t.id], block: reason }) },
  approve: { label: "Approve", method: "task.approve", params: (t) => ({ ids: [t.id] }), bulk: true },
  request_changes: { label: "Request changes", method: "task.request_changes", ask: "comment",
                     prompt: "What should change?", params: (t, comment) => ({ id: t.id, comment }) },
  reopen: { label: "Reopen", method: "task.reopen", ask: "reason", prompt: "Why reopen it?",
            params: (t, reason) => ({ ids: [t.id], reason }) },
  schedule: { label: "Schedule", method: "task.schedule", ask: "time",
              prompt: "Start when? (45m, 2h, or 2026-12-01T02:00)",
              params: (t, v) => (DURATION.test(v) ? { id: t.id, in: v.trim() } : { id: t.id, at: v.trim() }) },
  assign: { label: "Assign", method: "task.assign", ask: "assignee", prompt: "Assign to (empty: unassign)",
            optional: true, params: (t, who) => ({ id: t.id, assignee: who ? who.trim() : null }), bulk: true },
  edit_title: { label: "Edit title", method: "task.edit", ask: "title", prompt: "Title",
                initial: (t) => t.title, params: (t, title) => ({ id: t.id, title }) },
  edit_priority: { label: "Priority", method: "task.edit", ask: "priority", prompt: "Priority (higher runs first)",
                   initial: (t) => String(t.priority), params: (t, p) => ({ id: t.id, priority: parseInt(p, 10) }) },
  archive: { label: "Archive", method: "task.archive", params: (t) => ({ ids: [t.id] }), bulk: true, danger: true },
};

const COMMON = ["assign", "edit_title", "edit_priority", "archive"];

export const BY_STATUS = {
  triage: ["promote", "complete", "block", "schedule", ...COMMON],
  todo: ["promote", "complete", "block", "schedule", ...COMMON],
  ready: ["complete", "block", "retry", "schedule", ...COMMON],
  scheduled: ["promote", "complete", "block", "schedule", ...COMMON],
  running: ["kill", "kill_block", "block", ...COMMON],
  review: ["approve", "request_changes", "block", ...COMMON],
  blocked: ["unblock", "retry", ...COMMON],
  done: ["reopen", "retry", "archive", "edit_title"],
  archived: [],
};

// Dropping a card of status S on column C runs DROPS[C][S] (or DROPS[C]["*"]).
export const DROPS = {
  ready: { blocked: "unblock", triage: "promote", todo: "promote", scheduled: "promote", done: "reopen",
           review: "request_changes" },
  todo: { blocked: "unblock" },
  blocked: { "*": "block" },
  done: { review: "approve", "*": "complete" },
  scheduled: { "*": "schedule" },
  archived: { "*": "archive" },
  running: {},
  review: {},
  triage: {},
};

export function actionsFor(task) {
  return (BY_STATUS[task.status] || []).filter((id) => has(ACTIONS[id].method));
}

// The action a drop means, or {error} saying why there is none.
export function dropAction(task, column) {
  const row = DROPS[column] || {};
  let id = row[task.status] || row["*"];
  if (id === "approve" && !has(ACTIONS.approve.method)) id = "complete";
  if (!id) {
    const why = column === "running" ? "tasks start running when the dispatcher claims them"
      : `no move leads from ${task.status} to ${column}`;
    return { error: `task ${task.id} is ${task.status}: ${why}` };
  }
  if (!has(ACTIONS[id].method)) return { error: `this daemon has no ${ACTIONS[id].method} (needed to move to ${column})` };
  return { id };
}
