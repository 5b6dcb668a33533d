// The drawer: one task in full, with every action its status allows.

import { ACTIONS, actionsFor } from "./actions.js";
import { attachmentUrl, call, has, upload } from "./api.js";
import { clear, dur, h, when } from "./dom.js";
import { render as markdown } from "./markdown.js";

const LOG_TAIL = 16384;

export class Drawer {
  constructor(root, { run, toast }) {
    this.root = root;
    this.run = run;        // run(actionId, task) -> Promise
    this.toast = toast;
    this.id = null;
    this.show = null;
    this.logTimer = null;
  }

  get open() { return this.id !== null; }

  async openTask(id) {
    this.id = id;
    this.root.hidden = false;
    this.root.dataset.id = id;
    await this.refresh();
  }

  close() {
    this.id = null;
    this.show = null;
    this.root.hidden = true;
    delete this.root.dataset.id;
    clearTimeout(this.logTimer);
    clear(this.root);
  }

  async refresh() {
    const id = this.id;
    if (!id) return;
    let show;
    try {
      show = await call("task.show", { id });
    } catch (err) {
      this.toast(err.message, true);
      return;
    }
    if (this.id !== id) return;
    this.show = show;
    let atts = null;
    if (has("task.attachments")) {
      try { atts = await call("task.attachments", { id }); } catch { atts = null; }
    }
    if (this.id !== id) return;
    this.draw(show, atts);
    this.pollLog();
  }

  draw(s, atts) {
    const t = s.task;
    clear(this.root);
    const actions = h("div", { class: "actions" });
    for (const a of actionsFor(t)) {
      actions.append(h("button", { type: "button", class: ACTIONS[a].danger ? "danger" : "", dataset: { action: a },
                                   text: ACTIONS[a].label, onclick: () => this.run(a, t) }));
    }
    const facts = h("dl", { class: "facts" });
    const fact = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(h("dt", { text: k }), h("dd", { text: String(v) })); };
    fact("status", t.status);
    fact("assignee", t.assignee || "unassigned");
    fact("priority", t.priority);
    fact("tenant", t.tenant);
    fact("created", `${when(t.created_at)} by ${t.created_by || "?"}`);
    fact("workspace", `${t.workspace.kind}${t.workspace.path ? " " + t.workspace.path : ""}`);
    fact("failures", t.consecutive_failures || null);
    if (t.cooldown_until && t.cooldown_until > Date.now() / 1000) fact(t.cooldown_kind || "cooldown", `until ${when(t.cooldown_until)}`);
    fact("blocked because", t.block_reason);
    fact("summary", t.summary);
    fact("result", t.result);

    const links = (title, items, dir) => {
      const list = h("ul", { class: "links" });
      for (const x of items) {
        const [parent, child] = dir === "parent" ? [x.id, t.id] : [t.id, x.id];
        list.append(h("li", null, h("span", { class: "tid", text: x.id }), " ", h("span", { text: x.title }),
          h("span", { class: `st s-${x.status}`, text: x.status }),
          h("button", { type: "button", class: "x", title: "remove link", "aria-label": `unlink ${x.id}`,
                        onclick: () => this.act("task.unlink", { parent, child }) }, "×")));
      }
      const input = h("input", { placeholder: `add ${dir} (task id)`, "aria-label": `add ${dir}` });
      const form = h("form", { class: "inline", onsubmit: (e) => {
        e.preventDefault();
        const other = input.value.trim();
        if (!other) return;
        this.act("task.link", dir === "parent" ? { parent: other, child: t.id } : { parent: t.id, child: other });
      } }, input, h("button", { type: "submit", text: "Link" }));
      return section(title, list, form);
    };

    const comment = h("textarea", { placeholder: "Add a comment (Markdown)", "aria-label": "comment", rows: "3" });
    const comments = h("div", { class: "comments" }, s.comments.map((c) => h("div", { class: "comment" },
      h("div", { class: "meta", text: `${c.author || "?"} · ${when(c.created_at)}` }), markdown(c.body))));
    const commentForm = h("form", { class: "inline", onsubmit: (e) => {
      e.preventDefault();
      if (comment.value.trim()) this.act("task.comment", { id: t.id, body: comment.value });
    } }, comment, h("button", { type: "submit", text: "Comment" }));

    const runs = h("table", { class: "runs" }, h("tr", null, ["run", "outcome", "exit", "duration", "started"].map((x) => h("th", { text: x }))));
    for (const r of s.runs) {
      runs.append(h("tr", null, h("td", { class: "tid", text: r.id }), h("td", { text: r.outcome || r.state }),
        h("td", { text: r.exit_code ?? (r.signal ? `sig${r.signal}` : "-") }),
        h("td", { text: r.duration != null ? dur(r.duration) : (r.started_at ? dur(Date.now() / 1000 - r.started_at) : "-") }),
        h("td", { text: when(r.started_at || r.claimed_at) })));
      const tail = r.error || r.log_tail;
      if (tail) runs.append(h("tr", { class: "err" }, h("td", { colspan: "5" }, h("pre", { text: tail }))));
    }

    const events = h("ol", { class: "events" }, s.events.slice().reverse().map((e) => h("li", null,
      h("span", { class: "kind", text: e.kind }), " ", h("span", { class: "meta", text: when(e.at) }), " ",
      h("span", { class: "payload", text: summarize(e.payload) }))));

    const parts = [
      h("div", { class: "dhead" },
        h("span", { class: "tid", text: t.id }),
        h("span", { class: `st s-${t.status}`, text: t.status }),
        h("button", { type: "button", class: "x close", title: "Close (Esc)", "aria-label": "close", onclick: () => this.close() }, "×")),
      h("h2", { class: "dtitle", text: t.title }),
      actions, facts,
      section("Description", t.body ? markdown(t.body) : h("p", { class: "muted", text: "No description." })),
      links("Parents", s.parents, "parent"),
      links("Children", s.children, "child"),
      section("Comments", comments, commentForm),
      section("Runs", s.runs.length ? runs : h("p", { class: "muted", text: "No runs yet." })),
      section("Log", h("pre", { class: "log", "aria-label": "log", text: "…" })),
    ];
    if (atts) parts.push(this.attachments(t, atts));
    parts.push(section("Events", events));
    this.root.append(...parts);
  }

  attachments(t, res) {
    const items = Array.isArray(res) ? res : (res.attachments || []);
    const list = h("ul", { class: "links" }, items.map((a) => h("li", null,
      h("a", { href: attachmentUrl(t.id, a.name), download: a.name, text: a.name }),
      a.size != null ? h("span", { class: "meta", text: ` ${a.size} B` }) : null,
      has("task.detach") ? h("button", { type: "button", class: "x", "aria-label": `detach ${a.name}`,
                                         onclick: () => this.act("task.detach", { id: t.id, name: a.name }) }, "×") : null)));
    const file = h("input", { type: "file", "aria-label": "attach file", multiple: true });
    const form = h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      try {
        for (const f of file.files) await upload(t.id, f);
        this.refresh();
      } catch (err) { this.toast(err.message, true); }
    } }, file, h("button", { type: "submit", text: "Upload" }));
    return section("Attachments", list, has("task.attach") ? form : null);
  }

  async act(method, params) {
    try {
      await call(method, params);
      await this.refresh();
    } catch (err) {
      this.toast(err.message, true);
    }
  }

  async pollLog() {
    clearTimeout(this.logTimer);
    const id = this.id;
    const pre = this.root.querySelector("pre.log");
    if (!id || !pre) return;
    try {
      const log = await call("task.log", { id, tail: LOG_TAIL });
      if (this.id !== id) return;
      pre.textContent = log.exists ? (log.text || "(empty)") : "No log yet.";
      pre.scrollTop = pre.scrollHeight;
    } catch (err) {
      pre.textContent = err.message;
    }
    if (this.show && this.show.task.status === "running") this.logTimer = setTimeout(() => this.pollLog(), 1000);
  }
}

function section(title, ...body) {
  return h("section", { dataset: { section: title.toLowerCase() } }, h("h3", { text: title }), ...body);
}

function summarize(p) {
  if (!p) return "";
  const keep = Object.entries(p).filter(([k, v]) => v !== null && v !== undefined && k !== "workspace");
  return keep.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ").slice(0, 300);
}
