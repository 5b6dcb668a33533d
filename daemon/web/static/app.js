// The web board's entry point: load, render, follow live events, wire the controls.

import { ACTIONS, BY_STATUS, dropAction } from "./actions.js";
import { board as fetchBoard, call, follow, has, hasParam, loadMeta } from "./api.js";
import { Board } from "./board.js";
import { clear, dur, h } from "./dom.js";
import { Drawer } from "./drawer.js";

const $ = (id) => document.getElementById(id);
let toastTimer = null;

function toast(message, error = false) {
  const el = $("toast");
  el.textContent = message;
  el.className = error ? "error" : "";
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, error ? 8000 : 3000);
}

// Ask the person for a value in the page's own dialog; resolves to the text, or null if cancelled.
function ask(prompt, initial = "", optional = false) {
  const dlg = $("ask");
  const input = $("ask-input");
  $("ask-label").textContent = prompt;
  input.value = initial;
  input.required = !optional;
  return new Promise((resolve) => {
    dlg.onclose = () => resolve(dlg.returnValue === "ok" ? input.value : null);
    dlg.returnValue = "";
    dlg.showModal();
    input.focus();
    input.select();
  });
}

const drawer = new Drawer($("drawer"), { run: runAction, toast });
const board = new Board($("board"), {
  onOpen: (id) => drawer.openTask(id),
  onDrop: dropped,
  onSelect: showBulk,
});

async function runAction(id, task) {
  const a = ACTIONS[id];
  let value;
  if (a.ask) {
    value = await ask(a.prompt, a.initial ? a.initial(task) : "", a.optional);
    if (value === null || (!a.optional && !value.trim())) return false;
  }
  try {
    await call(a.method, a.params(task, value));
    toast(`${a.label}: ${task.id}`);
    if (drawer.id === task.id) drawer.refresh();
    return true;
  } catch (err) {
    toast(err.message, true);
    return false;
  }
}

async function dropped(task, column, snapBack) {
  const d = dropAction(task, column);
  if (d.error) {
    snapBack();
    toast(d.error, true);
    return;
  }
  if (!(await runAction(d.id, task))) snapBack();
}

function showBulk(selected) {
  const bar = $("bulk");
  bar.hidden = selected.size === 0;
  $("bulk-count").textContent = `${selected.size} selected`;
  const box = clear($("bulk-actions"));
  const ids = [...selected];
  const statuses = new Set(ids.map((id) => board.tasks.get(id)?.status));
  const offered = Object.entries(ACTIONS).filter(([id, a]) => a.bulk && has(a.method)
    && [...statuses].some((s) => (BY_STATUS[s] || []).includes(id)));
  for (const [id, a] of offered) {
    box.append(h("button", { type: "button", dataset: { action: id }, text: a.label, onclick: () => bulk(id, ids) }));
  }
}

async function bulk(id, ids) {
  const a = ACTIONS[id];
  let value;
  if (a.ask) {
    value = await ask(`${a.prompt} (${ids.length} tasks)`, "", a.optional);
    if (value === null) return;
  }
  const failed = [];
  for (const tid of ids) {
    const t = board.tasks.get(tid);
    if (!t) continue;
    try { await call(a.method, a.params(t, value)); } catch (err) { failed.push(`${tid}: ${err.message}`); }
  }
  board.clearSelection();
  if (failed.length) toast(failed.join("\n"), true); else toast(`${a.label}: ${ids.length} tasks`);
}

// ---- header: stats and health -----------------------------------------------------

async function refreshStats() {
  try {
    const [st, ds] = await Promise.all([call("board.stats"), call("daemon.status")]);
    const s = clear($("stats"));
    for (const k of ["ready", "running", "review", "blocked"]) {
      if (st.by_status[k] !== undefined) s.append(h("span", { class: `stat s-${k}`, text: `${st.by_status[k]} ${k}` }));
    }
    if (st.oldest_ready_age != null) s.append(h("span", { class: "stat", text: `oldest ready ${dur(st.oldest_ready_age)}` }));
    const hl = clear($("health"));
    for (const r of ds.roles) {
      const ok = r.state === "ok";
      hl.append(h("span", { class: `role ${ok ? "ok" : "bad"}`, title: `${r.name}: ${r.state}${r.error ? " — " + r.error : ""}`,
                            text: `${r.name}${ok ? "" : " " + r.state}` }));
    }
    if (ds.flapping && ds.flapping.length) hl.append(h("span", { class: "role bad", text: `flapping: ${ds.flapping.join(", ")}` }));
  } catch (err) {
    clear($("health")).append(h("span", { class: "role bad", text: err.message }));
  }
}

async function refreshPlan() {
  if (![...board.tasks.values()].some((t) => t.status === "ready")) return;
  try {
    const res = await call("dispatch.plan");
    const before = board.plan;
    board.plan = new Map(res.plan.map((p) => [p.task, p]));
    const changed = new Set([...before.keys(), ...board.plan.keys()].filter(
      (id) => before.get(id)?.reason !== board.plan.get(id)?.reason));
    board.refreshCards(changed);
  } catch { /* the plan is a hint */ }
}

async function refreshRuns() {
  const running = [...board.tasks.values()].filter((t) => t.status === "running" && !board.runStart.has(t.id));
  await Promise.all(running.map(async (t) => {
    try {
      const r = await call("task.runs", { id: t.id });
      const live = r.runs.filter((x) => x.state !== "ended").pop();
      if (live) board.runStart.set(t.id, live.started_at || live.claimed_at);
    } catch { /* hint only */ }
  }));
  board.refreshCards(running.map((t) => t.id));
}

// ---- loading and live updates -------------------------------------------------------

function fillFilters() {
  const assignees = new Set(), tenants = new Set();
  for (const t of board.tasks.values()) { assignees.add(t.assignee || "(unassigned)"); if (t.tenant) tenants.add(t.tenant); }
  for (const [sel, values] of [[$("f-assignee"), assignees], [$("f-tenant"), tenants]]) {
    const keep = sel.value;
    const first = sel.firstElementChild;
    clear(sel).append(first, ...[...values].sort().map((v) => h("option", { value: v, text: v })));
    sel.value = keep;
  }
  clear($("assignees")).append(...[...assignees].filter((a) => a !== "(unassigned)").sort().map((a) => h("option", { value: a })));
}

let pending = null;  // live tasks that arrived while the board was being fetched
async function reload() {
  pending = [];
  let res;
  try {
    res = await fetchBoard(board.archived);
  } catch (err) {
    pending = null;
    toast(err.message, true);
    return;
  }
  board.load(res.tasks);
  for (const t of pending) board.upsert(t);
  pending = null;
  fillFilters();
  refreshStats();
  refreshPlan();
  refreshRuns();
}

let soon = null;
function later() {
  clearTimeout(soon);
  soon = setTimeout(() => { refreshStats(); refreshPlan(); refreshRuns(); }, 500);
}

function onEvent({ event, task }) {
  if (task && pending) pending.push(task);
  if (task) {
    if (task.status !== "running") board.runStart.delete(task.id);
    board.upsert(task);
    if (!$("f-assignee").querySelector(`option[value="${CSS.escape(task.assignee || "(unassigned)")}"]`)) fillFilters();
  }
  if (drawer.id && event.task_id === drawer.id) drawer.refresh();
  later();
}

function onLink(up) {
  const b = $("banner");
  b.hidden = up;
  b.textContent = up ? "" : "Connection to the daemon lost; reconnecting…";
}

// ---- controls ---------------------------------------------------------------------

function wire() {
  let typing = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { board.filter.text = e.target.value.trim(); board.render(); }, 120);
  });
  $("f-assignee").addEventListener("change", (e) => { board.filter.assignee = e.target.value; board.render(); });
  $("f-tenant").addEventListener("change", (e) => { board.filter.tenant = e.target.value; board.render(); });
  $("t-lanes").addEventListener("change", (e) => { board.lanes = e.target.checked; board.render(); });
  $("t-archived").addEventListener("change", (e) => { board.archived = e.target.checked; reload(); });
  $("new").addEventListener("click", openCreate);
  $("create-cancel").addEventListener("click", () => { $("create").hidden = true; });
  $("create").addEventListener("submit", create);
  $("bulk-clear").addEventListener("click", () => board.clearSelection());
  for (const el of document.querySelectorAll("[data-param]")) {
    el.hidden = !hasParam("task.create", el.dataset.param);
  }
  document.addEventListener("keydown", (e) => {
    const typingHere = e.target.closest && e.target.closest("input, textarea, select, dialog");
    if (e.key === "Escape") {
      if ($("ask").open) return;
      if (drawer.open) { drawer.close(); e.preventDefault(); return; }
      if (!$("create").hidden) { $("create").hidden = true; return; }
      if (typingHere) e.target.blur();
      return;
    }
    if (typingHere || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "/") { e.preventDefault(); $("search").focus(); }
    else if (e.key === "n") { e.preventDefault(); openCreate(); }
  });
}

function openCreate() {
  const f = $("create");
  f.hidden = false;
  f.elements.title.focus();
}

async function create(e) {
  e.preventDefault();
  const f = e.target.elements;
  const params = { title: f.title.value.trim() };
  if (!params.title) return;
  if (f.assignee.value.trim()) params.assignee = f.assignee.value.trim();
  const parents = f.parents.value.split(/[\s,]+/).filter(Boolean);
  if (parents.length) params.parents = parents;
  if (f.priority.value !== "") params.priority = parseInt(f.priority.value, 10);
  if (hasParam("task.create", "verify") && f.verify.value.trim()) params.verify = f.verify.value.trim();
  if (hasParam("task.create", "review") && f.review.checked) params.review = true;
  try {
    const t = await call("task.create", params);
    board.upsert(t);
    toast(`created ${t.id}`);
    e.target.reset();
    $("create").hidden = true;
  } catch (err) {
    toast(err.message, true);
  }
}

async function main() {
  try {
    await loadMeta();
  } catch (err) {
    toast(err.message, true);
    return;
  }
  wire();
  follow({
    onEvent,
    onLink,
    onHello: (first, hello) => { onLink(hello.up); if (!first) reload(); },
  });
  await reload();
  setInterval(refreshStats, 15000);
  setInterval(() => board.refreshCards([...board.tasks.values()].filter((t) => t.status === "running").map((t) => t.id)), 30000);
}

main();
