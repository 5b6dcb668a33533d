// The page's side of the web role's API: JSON-RPC methods over POST, the board, the event stream.

const CSRF = document.querySelector('meta[name="csrf"]').content;

export class ApiError extends Error {
  constructor(err, status) {
    super(err.message || `HTTP ${status}`);
    this.name = (err.data && err.data.name) || "error";
    this.data = err.data || {};
    this.status = status;
  }
}

async function answer(res) {
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) throw new ApiError((body && body.error) || { message: `HTTP ${res.status}` }, res.status);
  return body;
}

export const meta = { methods: {}, statuses: [], age_tiers: {} };

export function has(method) { return Object.prototype.hasOwnProperty.call(meta.methods, method); }
export function hasParam(method, param) { return has(method) && meta.methods[method].includes(param); }

export async function loadMeta() {
  Object.assign(meta, await answer(await fetch("/api/meta", { credentials: "same-origin" })));
  return meta;
}

export async function call(method, params = {}) {
  if (!has(method)) {
    throw new ApiError({ message: `this daemon has no ${method}`, data: { name: "method_not_found" } }, 404);
  }
  const res = await fetch(`/api/rpc/${method}`, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-kanban-csrf": CSRF },
    body: JSON.stringify(params),
  });
  return answer(res);
}

export async function board(archived) {
  return answer(await fetch(`/api/board${archived ? "?archived=1" : ""}`, { credentials: "same-origin" }));
}

export async function upload(task, file) {
  const res = await fetch(`/api/tasks/${encodeURIComponent(task)}/attachments?name=${encodeURIComponent(file.name)}`, {
    method: "PUT", credentials: "same-origin", headers: { "x-kanban-csrf": CSRF }, body: file,
  });
  return answer(res);
}

export function attachmentUrl(task, name) {
  return `/api/tasks/${encodeURIComponent(task)}/attachments/${encodeURIComponent(name)}`;
}

// Server-sent events: onEvent({event, task}), onLink(up), onHello(first) on every (re)connect.
export function follow({ onEvent, onLink, onHello }) {
  let first = true;
  const es = new EventSource("/api/events");
  es.addEventListener("hello", (e) => { onHello(first, JSON.parse(e.data)); first = false; });
  es.addEventListener("link", (e) => onLink(JSON.parse(e.data).up));
  es.onmessage = (e) => onEvent(JSON.parse(e.data));
  es.onerror = () => onLink(false);
  return es;
}
