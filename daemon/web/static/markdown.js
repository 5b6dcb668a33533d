// A small, safe Markdown renderer: it builds DOM nodes, never HTML strings.
// Supports paragraphs, # headings, - / * / 1. lists, ``` code blocks, > quotes,
// `code`, **bold**, *italic* and [links](url). A link is a link only when its URL
// is http:, https: or mailto: (anything else, javascript: included, stays text).
// Raw HTML in the source is shown as text.

import { h } from "./dom.js";

const SAFE_URL = /^(https?:|mailto:)/i;

export function safeUrl(url) {
  const u = url.trim();
  if (!SAFE_URL.test(u)) return null;
  try {
    const parsed = new URL(u);
    return ["http:", "https:", "mailto:"].includes(parsed.protocol) ? parsed.href : null;
  } catch {
    return null;
  }
}

export function render(src) {
  const root = h("div", { class: "md" });
  const lines = String(src || "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^```/.test(line)) {
      const body = [];
      i++;
      while (i < lines.length && !/^```/.test(lines[i])) body.push(lines[i++]);
      i++;
      root.append(h("pre", null, h("code", { text: body.join("\n") })));
      continue;
    }
    const head = /^(#{1,6})\s+(.*)$/.exec(line);
    if (head) {
      root.append(inline(h(`h${Math.min(6, head[1].length + 2)}`), head[2]));
      i++;
      continue;
    }
    if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(lines[i])) {
        list.append(inline(h("li"), lines[i].replace(/^\s*([-*]|\d+\.)\s+/, "")));
        i++;
      }
      root.append(list);
      continue;
    }
    if (/^>\s?/.test(line)) {
      const quote = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quote.push(lines[i++].replace(/^>\s?/, ""));
      root.append(inline(h("blockquote"), quote.join(" ")));
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^(```|#{1,6}\s|>|\s*([-*]|\d+\.)\s+)/.test(lines[i])) {
      para.push(lines[i++]);
    }
    root.append(inline(h("p"), para.join("\n")));
  }
  return root;
}

// Inline spans, left to right: the earliest match wins; the text between matches stays text.
const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\(([^)\s]+)\)/g;

export function inline(el, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) el.append(text.slice(last, m.index));
    if (m[1] !== undefined) el.append(h("code", { text: m[1] }));
    else if (m[2] !== undefined) el.append(h("strong", { text: m[2] }));
    else if (m[3] !== undefined) el.append(h("em", { text: m[3] }));
    else {
      const href = safeUrl(m[5]);
      el.append(href ? h("a", { href, text: m[4], rel: "noopener noreferrer nofollow", target: "_blank" })
                     : document.createTextNode(m[0]));
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) el.append(text.slice(last));
  return el;
}
