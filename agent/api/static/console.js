// What every console page shares: the JSON API, who is signed in, the header bar, DOM building, polling.
//
// Data from the API only ever reaches the page as text (el() makes text nodes, never HTML), so a
// hostile entity name or rule reason cannot inject markup.

const ROLES = {
  decide: ["approver", "admin"],
  ask: ["operator", "approver", "rule_author", "admin"],
  rules: ["rule_author", "admin"],
  admin: ["admin"],
};

export const POLL_MS = 2000;

export class ApiFailure extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
    this.body = body;
  }
}

// Call the JSON API with the session cookie. A 401 means the session is gone: go and sign in again.
// X-Rtem-Console tells the API the request comes from the console itself: it refuses cookie-authenticated
// POSTs and DELETEs without it (a form on another site cannot send it; see docs/security.md).
export async function api(method, path, body, { redirectOn401 = true, accept = "application/json" } = {}) {
  const init = { method, headers: { Accept: accept, "X-Rtem-Console": "1" }, credentials: "same-origin",
    cache: "no-cache" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiFailure(0, { error: `the service did not answer (${err.message})` });
  }
  if (response.status === 401 && redirectOn401) {
    toLogin();
    throw new ApiFailure(401, { error: "not signed in" });
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null)
    : response.status === 204 ? null : await response.text();
  if (!response.ok) throw new ApiFailure(response.status, data);
  return data;
}

export function describeError(status, body) {
  const prefix = status ? `${status}: ` : "";
  if (body === null || body === undefined) return `${prefix}the request failed`;
  if (typeof body === "string") return prefix + (body.trim() || "the request failed");
  let text = prefix + (body.error || "the request failed");
  const detail = body.detail;
  if (Array.isArray(detail) && detail.length) {
    text += "\n" + detail.map((d) => (typeof d === "string" ? d : describeDetail(d))).join("\n");
  } else if (typeof detail === "string" && detail) {
    text += ` (${detail})`;
  } else if (detail && typeof detail === "object") {
    text += ` (${describeDetail(detail)})`;
  }
  if (body.request_id) text += ` [request ${body.request_id}]`;
  return text;
}

function describeDetail(d) {
  if (d && d.file) return `${d.file}:${d.line ?? "?"}:${d.column ?? "?"}: ${d.message || d.reason || ""}`;
  if (d && d.where !== undefined) return `${d.where}: ${d.problem}`;
  return Object.entries(d || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

export function toLogin() {
  const here = location.pathname + location.search + location.hash;
  const next = here === "/" || here.startsWith("/login") ? "" : `?next=${encodeURIComponent(here)}`;
  location.replace(`/login${next}`);
}

export function may(who, permission) {
  if (who && Array.isArray(who.may)) return who.may.includes(permission);
  return Boolean(who && (ROLES[permission] || []).includes(who.role));
}

// Every page but the login page starts here: who is signed in (or off to /login), then the header bar.
export async function start(current) {
  const who = await api("GET", "/api/v1/whoami");
  const header = document.querySelector("header.bar") || document.body.insertBefore(el("header", { class: "bar" }),
    document.body.firstChild);
  header.replaceChildren(
    el("a", { class: "brand", href: "/" }, "rtem"),
    el("nav", { "aria-label": "console" },
      navLink("/", "Incidents", current === "incidents"),
      navLink("/chat", "Chat", current === "chat"),
      navLink("/rules", "Rules", current === "rules"),
      navLink("/learning", "Learning", current === "learning")),
    el("span", { class: "who", testid: "who" },
      el("span", { testid: "who-name" }, who.name), " ",
      el("span", { class: "role", testid: "who-role" }, who.role)),
    el("button", { type: "button", class: "quiet", testid: "logout", on: { click: logout } }, "Log out"),
  );
  document.body.classList.remove("pending");
  return who;
}

function navLink(href, label, current) {
  return el("a", { href, "aria-current": current ? "page" : null }, label);
}

async function logout() {
  try {
    await api("DELETE", "/api/v1/session", undefined, { redirectOn401: false });
  } finally {
    location.replace("/login");
  }
}

// Build an element; strings and numbers become text nodes, arrays are flattened, null is skipped.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "testid") {
      node.dataset.testid = value;
    } else if (name === "class") {
      node.className = value;
    } else if (name === "data") {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// A JSON value shown as nested lists of text: for answers whose shape the page need not know.
export function tree(value) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "none");
  if (Array.isArray(value)) {
    if (!value.length) return el("span", { class: "muted" }, "none");
    return el("ul", { class: "tree" }, value.map((v) => el("li", {}, tree(v))));
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return el("span", { class: "muted" }, "none");
    return el("dl", { class: "tree" }, entries.map(([k, v]) => [el("dt", {}, k), el("dd", { data: { key: k } }, tree(v))]));
  }
  return el("span", {}, String(value));
}

export function badge(text, kind = "") {
  return el("span", { class: `badge ${kind}`.trim(), data: { value: text || "" } }, text || "–");
}

// Every time rtem shows is UTC (the CLI, the reports, the audit log), so the console shows UTC too, never
// the browser's zone: "2024-05-01T14:00:00.000+02:00" → "2024-05-01 12:00:00 UTC". A Date is accepted too
// (the "updated" clock). Text that is not a time is shown as it is.
export function formatTime(value) {
  if (value === null || value === undefined || value === "") return "–";
  const text = value instanceof Date ? value.toISOString() : String(value);
  const m = text.match(/^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$/i);
  if (!m) return text;
  if (!m[4]) return `${m[1]} ${m[2]} UTC`; // rtem writes UTC; a time without a zone is one of its own
  const instant = new Date(text);
  if (Number.isNaN(instant.getTime())) return text;
  const iso = instant.toISOString(); // always UTC
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

// The time of day part only, for the "updated" clock: "12:00:05 UTC".
export function formatClock(date = new Date()) {
  return formatTime(date).slice(11);
}

export function incidentHref(id, seq) {
  return `/incidents/${encodeURIComponent(id)}` + (seq !== undefined ? `#seq-${seq}` : "");
}

export function topCause(incident) {
  const cause = (incident.root_causes || [])[0];
  if (!cause) return null;
  return `${cause.entity}${cause.fault_type ? ` (${cause.fault_type})` : ""} ${confidence(cause.confidence)}`;
}

// A cause's share of all candidates, with the digits it needs so that no cause reads as a bare 0 or 1
// (the same rules as the report's, agent/report_scores.share_text): shares are rounded to 4 decimals.
export function confidence(value) {
  if (typeof value !== "number") return "";
  if (value <= 0) return "< 0.005%";
  if (value >= 1) return "> 99.99%";
  const percent = value * 100;
  if (percent >= 99.5) return `${percent.toFixed(2)}%`;
  if (percent >= 10) return `${percent.toFixed(0)}%`;
  if (percent >= 1) return `${percent.toFixed(1)}%`;
  return `${Number(percent.toPrecision(2))}%`;
}

// Run `step` now and then every `ms` after it finishes (never two at once); idle while the tab is hidden.
// `now()` during a run asks for one more right after it (a filter changed: do not wait for the timer).
// `immediately: false` when the page has just run `step` itself.
export function poll(step, ms = POLL_MS, { immediately = true } = {}) {
  let timer = null;
  let running = false;
  let again = false;
  const tick = async () => {
    clearTimeout(timer);
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await step();
    } catch (err) {
      if (!(err instanceof ApiFailure && err.status === 401)) console.warn("refresh failed:", err);
    } finally {
      running = false;
      if (again) {
        again = false;
        tick();
      } else if (!document.hidden) {
        timer = setTimeout(tick, ms);
      }
    }
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !running) tick();
  });
  if (immediately) tick();
  else timer = setTimeout(tick, ms);
  return { now: tick };
}

// Flash an element to show it just changed (restarts the animation if it is still running).
export function flash(node) {
  node.classList.remove("changed");
  void node.offsetWidth;
  node.classList.add("changed");
}

export function showError(node, err) {
  node.textContent = err instanceof Error ? err.message : String(err);
  node.hidden = false;
}

export function fail(err) {
  if (err instanceof ApiFailure && err.status === 401) return;  // already on the way to /login
  const box = document.querySelector("[data-testid=page-error]");
  if (box) showError(box, err);
  document.body.classList.remove("pending");
}
