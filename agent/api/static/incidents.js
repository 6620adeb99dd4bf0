// The incidents list: polled every 2 s; a row is rebuilt only when its incident changed, and flashes then.

import { api, badge, el, fail, flash, formatClock, formatTime, incidentHref, may, poll, start, topCause } from "/static/console.js";

const rows = document.querySelector("[data-testid=incident-rows]");
const empty = document.querySelector("[data-testid=no-incidents]");
const filter = document.querySelector("[data-testid=status-filter]");
const refreshed = document.querySelector("[data-testid=refreshed]");
const dlqCount = document.querySelector("[data-testid=dlq-count]");
const seen = new Map();  // incident id → the JSON it was last drawn from
let first = true;

start("incidents").then((who) => {
  // Dead letters hold raw producer data: only unscoped tokens that may ingest read them (docs/api.md).
  const scope = who.scope || {};
  if (may(who, "ingest") && !(scope.services || []).length && !Object.keys(scope.labels || {}).length) {
    poll(countDeadLetters, 10000);
  }
  filter.value = new URLSearchParams(location.search).get("status") || "";
  const loop = poll(refresh);
  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("status", filter.value);
    else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    rows.replaceChildren();
    seen.clear();
    first = true;
    loop.now();
  });
}).catch(fail);

async function refresh() {
  const status = filter.value;
  const data = await api("GET", "/api/v1/incidents" + (status ? `?status=${encodeURIComponent(status)}` : ""));
  if (status !== filter.value) return;  // the filter changed while this was on its way
  const incidents = (data.incidents || []).slice().reverse();  // newest first
  const keep = new Set();
  let previous = null;
  for (const incident of incidents) {
    keep.add(incident.id);
    const drawn = JSON.stringify(incident);
    let row = rows.querySelector(`tr[data-id="${CSS.escape(incident.id)}"]`);
    if (!row || seen.get(incident.id) !== drawn) {
      const fresh = render(incident);
      if (row) row.replaceWith(fresh);
      row = fresh;
      if (!first) flash(row);
      seen.set(incident.id, drawn);
    }
    const at = previous ? previous.nextSibling : rows.firstChild;
    if (at !== row) rows.insertBefore(row, at);
    previous = row;
  }
  for (const row of [...rows.children]) {
    if (!keep.has(row.dataset.id)) {
      seen.delete(row.dataset.id);
      row.remove();
    }
  }
  empty.hidden = incidents.length > 0;
  refreshed.textContent = `updated ${formatClock()}`;
  first = false;
}

async function countDeadLetters() {
  try {
    const data = await api("GET", "/api/v1/dlq?limit=0");
    dlqCount.textContent = data.total === 1 ? "1 dead letter (rtem dlq list)"
      : `${data.total} dead letters (rtem dlq list)`;
    dlqCount.dataset.count = String(data.total);
    dlqCount.hidden = false;
  } catch (err) {
    dlqCount.textContent = `dead letters: unknown (${err.message})`;
    dlqCount.hidden = false;
  }
}

function render(incident) {
  const href = incidentHref(incident.id);
  return el("tr", { testid: "incident-row", data: { id: incident.id, status: incident.status || "" } },
    el("td", { class: "id" }, el("a", { href, testid: "incident-link" }, incident.id)),
    el("td", { testid: "status" }, badge(incident.status, "status")),
    el("td", {}, badge(incident.severity, "severity")),
    el("td", { class: "time" }, formatTime(incident.opened_at)),
    el("td", {}, topCause(incident) || el("span", { class: "muted" }, "not yet diagnosed")),
    el("td", { testid: "row-actions" }, actions(incident.actions || [])),
    el("td", { class: "num" }, incident.event_count ?? ""));
}

function actions(list) {
  if (!list.length) return el("span", { class: "muted" }, "none");
  return el("ul", { class: "plain" }, list.map((a) =>
    el("li", {}, `${a.type} ${a.target} `, badge(a.verdict, "verdict"), " ", badge(a.status, "action-status"))));
}
