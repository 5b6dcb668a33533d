// Tiny DOM helpers. Task text (titles, bodies, comments, logs) is written by workers:
// it only ever reaches the page through textContent or attribute setters, never as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  for (const c of children) add(el, c);
  return el;
}

function add(el, c) {
  if (c === null || c === undefined || c === false) return;
  if (Array.isArray(c)) { for (const x of c) add(el, x); return; }
  el.append(c instanceof Node ? c : document.createTextNode(String(c)));
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return "-";
  return dur(Math.max(0, now - ts));
}

export function dur(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "-";
}
