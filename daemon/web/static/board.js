// The board: columns per status (optionally lanes per assignee), cards, filters, drag and drop.

import { meta } from "./api.js";
import { ago, clear, dur, h } from "./dom.js";

export const COLUMNS = ["triage", "todo", "ready", "scheduled", "running", "review", "blocked", "done"];
const ORDER = (a, b) => (b.priority - a.priority) || (a.created_at - b.created_at) || (a.id < b.id ? -1 : 1);

export class Board {
  constructor(root, { onOpen, onDrop, onSelect }) {
    this.root = root;
    this.onOpen = onOpen;
    this.onDrop = onDrop;
    this.onSelect = onSelect;
    this.tasks = new Map();      // id -> task
    this.cards = new Map();      // id -> card element
    this.cells = new Map();      // "status|lane" -> card container
    this.counts = new Map();     // status -> count element
    this.selected = new Set();
    this.plan = new Map();       // ready task id -> {decision, reason}
    this.runStart = new Map();   // running task id -> run start (epoch s)
    this.filter = { text: "", assignee: "", tenant: "" };
    this.lanes = false;
    this.archived = false;
    this.dragging = null;
    root.addEventListener("dragstart", (e) => this.dragStart(e));
    root.addEventListener("dragend", () => this.dragEnd());
    root.addEventListener("dragover", (e) => this.dragOver(e));
    root.addEventListener("dragleave", (e) => this.dragLeave(e));
    root.addEventListener("drop", (e) => this.drop(e));
    root.addEventListener("click", (e) => this.click(e));
    root.addEventListener("keydown", (e) => {
      const card = e.target.closest && e.target.closest(".card");
      if (card && e.key === "Enter") this.onOpen(card.dataset.id);
    });
  }

  columns() { return this.archived ? [...COLUMNS, "archived"] : COLUMNS; }

  load(tasks) {
    this.tasks = new Map(tasks.map((t) => [t.id, t]));
    this.render();
  }

  visible(t) {
    const f = this.filter;
    if (f.assignee && (t.assignee || "") !== (f.assignee === "(unassigned)" ? "" : f.assignee)) return false;
    if (f.tenant && (t.tenant || "") !== f.tenant) return false;
    if (f.text) {
      const q = f.text.toLowerCase();
      if (!t.title.toLowerCase().includes(q) && !t.id.includes(q) && !(t.body || "").toLowerCase().includes(q)) {
        return false;
      }
    }
    return this.columns().includes(t.status);
  }

  laneOf(t) { return this.lanes ? (t.assignee || "(unassigned)") : ""; }

  render() {
    const t0 = performance.now();
    clear(this.root);
    this.cards.clear();
    this.cells.clear();
    this.counts.clear();
    const cols = this.columns();
    const shown = [...this.tasks.values()].filter((t) => this.visible(t)).sort(ORDER);
    const lanes = this.lanes ? [...new Set(shown.map((t) => this.laneOf(t)))].sort() : [""];
    this.root.classList.toggle("lanes", this.lanes);
    this.root.style.setProperty("--cols", cols.length);
    const grid = h("div", { class: "grid" });
    for (const s of cols) {
      const count = h("span", { class: "count" });
      this.counts.set(s, count);
      grid.append(h("div", { class: `colhead s-${s}`, dataset: { status: s } }, h("span", { text: s }), count));
    }
    const frags = new Map();
    for (const lane of lanes) {
      if (this.lanes) grid.append(h("div", { class: "lanehead", text: lane }));
      for (const s of cols) {
        const cell = h("div", { class: `cell s-${s}`, dataset: { status: s, lane } });
        this.cells.set(`${s}|${lane}`, cell);
        frags.set(`${s}|${lane}`, document.createDocumentFragment());
        grid.append(cell);
      }
    }
    const now = Date.now() / 1000;
    for (const t of shown) {
      const card = this.card(t, now);
      frags.get(`${t.status}|${this.laneOf(t)}`).append(card);
    }
    for (const [key, frag] of frags) this.cells.get(key).append(frag);
    this.root.append(grid);
    this.updateCounts();
    this.root.dataset.rendered = String(performance.now() - t0);
    document.body.dataset.rendered = "1";
  }

  updateCounts() {
    const n = new Map();
    for (const t of this.tasks.values()) if (this.visible(t)) n.set(t.status, (n.get(t.status) || 0) + 1);
    for (const [s, el] of this.counts) el.textContent = String(n.get(s) || 0);
  }

  age(t, now) {
    const since = t.status === "ready" ? (t.ready_at || t.updated_at)
      : t.status === "running" ? (this.runStart.get(t.id) || t.updated_at) : t.updated_at;
    const secs = Math.max(0, now - since);
    const tiers = meta.age_tiers[t.status];
    const tier = !tiers ? "" : secs >= tiers[1] ? "red" : secs >= tiers[0] ? "amber" : "";
    return { secs, tier };
  }

  card(t, now) {
    const { secs, tier } = this.age(t, now);
    const badges = h("div", { class: "badges" });
    if (t.priority) badges.append(h("span", { class: "badge pri", title: "priority", text: `P${t.priority}` }));
    if (t.tenant) badges.append(h("span", { class: "badge tenant", title: "tenant", text: t.tenant }));
    if (t.consecutive_failures) {
      badges.append(h("span", { class: "badge fail", title: "consecutive failures", text: `✗${t.consecutive_failures}` }));
    }
    const turn = t.verify_turn ?? t.verify_turns;
    if (turn) badges.append(h("span", { class: "badge verify", title: "verify turn", text: `turn ${turn}` }));
    if (t.cooldown_until && t.cooldown_until > now) {
      const kind = t.cooldown_kind === "backoff" ? "backoff" : "cooldown";
      badges.append(h("span", { class: `badge ${kind}`, title: `${kind} until ${new Date(t.cooldown_until * 1000).toLocaleTimeString()}`,
                                text: `${kind} ${dur(t.cooldown_until - now)}` }));
    }
    const foot = h("div", { class: "foot" },
      h("span", { class: "assignee", text: t.assignee || "unassigned" }),
      h("span", { class: `age ${tier}`, title: `in ${t.status} for ${dur(secs)}`, text: dur(secs) }));
    if (t.status === "running") {
      const start = this.runStart.get(t.id);
      foot.append(h("span", { class: "elapsed", title: "run time", text: start ? `▶ ${ago(start, now)}` : "▶" }));
    }
    const card = h("div", { class: `card ${tier}`, draggable: "true", tabindex: "0", dataset: { id: t.id, status: t.status } },
      h("div", { class: "head" },
        h("input", { type: "checkbox", class: "sel", "aria-label": `select ${t.id}`, checked: this.selected.has(t.id) }),
        h("span", { class: "tid", text: t.id })),
      h("div", { class: "title", text: t.title }),
      badges, foot);
    this.cards.set(t.id, card);
    if (t.status === "blocked" && t.block_reason) card.append(h("div", { class: "why", text: t.block_reason }));
    const p = this.plan.get(t.id);
    if (t.status === "ready" && p) {
      card.append(h("div", { class: `why plan ${p.decision}`, title: "dispatch plan", text: p.reason }));
    }
    return card;
  }

  // Put one task's card where it belongs now (after a live event), or remove it.
  upsert(t) {
    const known = this.tasks.get(t.id);
    if (known && known !== t && known.updated_at > t.updated_at) return;  // an older read than what we show
    this.tasks.set(t.id, t);
    const old = this.cards.get(t.id);
    if (old) { old.remove(); this.cards.delete(t.id); }
    if (this.visible(t)) {
      const cell = this.cells.get(`${t.status}|${this.laneOf(t)}`);
      if (!cell) { this.render(); return; }
      const card = this.card(t, Date.now() / 1000);
      let before = null;
      for (const c of cell.children) {
        const o = this.tasks.get(c.dataset.id);
        if (o && ORDER(t, o) < 0) { before = c; break; }
      }
      cell.insertBefore(card, before);
    }
    this.updateCounts();
  }

  refreshCards(ids) {
    for (const id of ids) if (this.tasks.has(id)) this.upsert(this.tasks.get(id));
  }

  click(e) {
    const card = e.target.closest(".card");
    if (!card) return;
    if (e.target.classList.contains("sel")) {
      if (e.target.checked) this.selected.add(card.dataset.id); else this.selected.delete(card.dataset.id);
      this.onSelect(this.selected);
      return;
    }
    this.onOpen(card.dataset.id);
  }

  clearSelection() {
    this.selected.clear();
    for (const cb of this.root.querySelectorAll(".sel:checked")) cb.checked = false;
    this.onSelect(this.selected);
  }

  dragStart(e) {
    const card = e.target.closest && e.target.closest(".card");
    if (!card) return;
    this.dragging = card;
    card.classList.add("dragging");
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", card.dataset.id);
  }

  dragEnd() {
    if (this.dragging) this.dragging.classList.remove("dragging");
    for (const c of this.root.querySelectorAll(".over")) c.classList.remove("over");
  }

  target(e) { return e.target.closest && e.target.closest(".cell, .colhead"); }

  dragOver(e) {
    const cell = this.target(e);
    if (!cell) return;
    e.preventDefault();
    cell.classList.add("over");
  }

  dragLeave(e) {
    const cell = this.target(e);
    if (cell && !cell.contains(e.relatedTarget)) cell.classList.remove("over");
  }

  drop(e) {
    const cell = this.target(e);
    if (!cell) return;
    e.preventDefault();
    cell.classList.remove("over");
    const id = e.dataTransfer.getData("text/plain") || (this.dragging && this.dragging.dataset.id);
    const t = this.tasks.get(id);
    if (!t || cell.dataset.status === t.status) return;
    const card = this.cards.get(id) || this.root.querySelector(`.card[data-id="${CSS.escape(id)}"]`);
    // optimistic: show it in the target; snap back if the server refuses
    const home = card && card.parentElement;
    const next = card && card.nextSibling;
    if (card && cell.classList.contains("cell")) cell.prepend(card);
    this.onDrop(t, cell.dataset.status, () => {
      if (card && home) home.insertBefore(card, next);
      if (card) { card.classList.add("snap"); setTimeout(() => card.classList.remove("snap"), 1200); }
    });
  }
}
