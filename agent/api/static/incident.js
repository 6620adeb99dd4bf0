// One incident: summary, hypotheses, actions (approve or reject those that wait), timeline, and a chat
// box. It refreshes every 2 s; a section is redrawn only when its data changed, so typing is not lost.

import {
  ApiFailure, api, badge, confidence, el, fail, flash, formatTime, may, poll, showError, start, tree,
} from "/static/console.js";
import { chatBox } from "/static/answer.js";

const asked = decodeURIComponent(location.pathname.split("/").pop());
const $ = (id) => document.querySelector(`[data-testid=${id}]`);
const drawn = {};  // section → the JSON it was last drawn from
let who = null;
let incidentId = asked;  // the full id once known (the URL may hold a unique prefix)
let lastSeq = 0;
let loop = null;  // the 2 s refresh; loop.now() refreshes at once

start("incidents").then(async (principal) => {
  who = principal;
  await refresh();  // a 404 here is shown, and nothing polls
  $("incident-chat").replaceChildren(chatBox(who, { incident: incidentId }));
  window.addEventListener("hashchange", showCited);
  loop = poll(refresh, undefined, { immediately: false });
}).catch(fail);

async function refresh() {
  const incident = await api("GET", `/api/v1/incidents/${encodeURIComponent(incidentId)}`);
  if (incidentId !== incident.id) {
    incidentId = incident.id;
    history.replaceState(null, "", `/incidents/${encodeURIComponent(incident.id)}${location.hash}`);
  }
  document.title = `${incident.id} · rtem`;
  draw("summary", incident, () => summary(incident));
  draw("hypotheses", [incident.root_causes, incident.unlisted, incident.described],
    () => hypotheses(incident.root_causes || [], incident.unlisted || [], incident.described || {}));
  draw("actions", [incident.actions, who.role], () => actions(incident));
  draw("oncall", [incident.oncall, incident.status, who.role], () => oncall(incident));
  draw("confirmed", [incident.confirmed, incident.entities, incident.root_causes, who.role], () => confirmed(incident));
  $("incident-title").textContent = incident.id;
  $("incident-status").replaceChildren(badge(incident.status, "status"));
  $("report-link").href = `/reports/${encodeURIComponent(incident.id)}`;
  await timeline();
}

function draw(section, data, build) {
  const json = JSON.stringify(data);
  if (drawn[section] === json) return;
  const node = $(section);
  const typed = keepTyping(node);
  node.replaceChildren(build());
  typed();
  if (drawn[section] !== undefined) flash(node);
  drawn[section] = json;
}

// What the user typed into a reason box (and where the cursor was) survives a redraw of its section.
function keepTyping(node) {
  const values = new Map([...node.querySelectorAll("input[data-key]")].map((i) => [i.dataset.key, i.value]));
  const focused = node.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  return () => {
    for (const input of node.querySelectorAll("input[data-key]")) {
      if (values.has(input.dataset.key)) input.value = values.get(input.dataset.key);
      if (input.dataset.key === focused) input.focus();
    }
  };
}

function summary(incident) {
  const facts = [
    ["Status", badge(incident.status, "status")],
    ["Severity", badge(incident.severity, "severity")],
    ["Opened", formatTime(incident.opened_at)],
    ["Last event", formatTime(incident.updated_at)],
    ["Entities", (incident.entities || []).join(", ") || "–"],
    ["Detections", (incident.detections || []).join(", ") || "–"],
    ["Events", incident.event_count ?? "–"],
    ["Awaiting approval", awaiting(incident.actions || [])],
    ["Resolution", incident.resolution || "–"],
    ["Time to recover", typeof incident.mttr_s === "number" ? `${incident.mttr_s.toFixed(1)} s` : "–"],
  ];
  if (incident.merged_into) facts.push(["Merged into", incident.merged_into]);
  return el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", { data: { fact: k } }, v)]));
}

function awaiting(list) {
  const waiting = list.filter((a) => a.status === "awaiting_approval");
  return waiting.length ? waiting.map((a) => `#${a.index} ${a.type} on ${a.target}`).join(", ") : "nothing";
}

function hypotheses(causes, unlisted, described) {
  if (!causes.length && !unlisted.length) return el("p", { class: "muted" }, "Not diagnosed yet.");
  // Entities of the incident the topology did not hold when it was ranked: never weighed, never ranked.
  const unseen = unlisted.length ? el("p", { class: "small", testid: "unlisted" },
    "Not in the topology, so their events were not weighed and none can be ranked as the cause: "
    + `${unlisted.join(", ")}. Add them to the topology.`) : null;
  // … unless their events said which service they are instances of: weighed as such.
  const named = Object.entries(described).map(([entity, service]) => `${entity} (${service})`);
  const told = named.length ? el("p", { class: "small", testid: "described" },
    "Not in the topology, but weighed as instances of the service their events name (in brackets): "
    + `${named.join(", ")}. Add them to the topology.`) : null;
  return el("div", {}, el("ol", { class: "causes" }, causes.map((c, rank) =>
    el("li", { testid: "hypothesis", data: { entity: c.entity || "" } },
      el("div", { class: "cause-head" },
        el("strong", {}, c.entity), c.fault_type ? ` ${c.fault_type}` : "", " ",
        el("meter", { min: 0, max: 1, value: c.confidence ?? 0, title: `confidence ${confidence(c.confidence)}`,
          "aria-label": `confidence of hypothesis ${rank + 1}` }),
        el("span", { class: "confidence", testid: "confidence" }, confidence(c.confidence))),
      c.explanation ? el("p", {}, c.explanation) : null,
      evidence(c.evidence)))), told, unseen);
}

function evidence(ids) {
  if (!ids || !ids.length) return null;
  return el("p", { class: "small" }, el("span", { class: "muted" }, "Evidence: "),
    ids.map((id) => [el("code", { class: "event-id" }, id), " "]));
}

function actions(incident) {
  const list = incident.actions || [];
  if (!list.length) return el("p", { class: "muted" }, "No actions proposed yet.");
  return el("div", { class: "actions" }, list.map((a) => action(incident, a)));
}

function action(incident, a) {
  const waits = a.status === "awaiting_approval";
  return el("article", { class: "action", testid: "action",
    data: { index: String(a.index), type: a.type || "", status: a.status || "", verdict: a.verdict || "" } },
  el("h3", {}, `#${a.index} ${a.type} on ${a.target} `, badge(a.verdict, "verdict"), " ",
    el("span", { testid: "action-status" }, badge(a.status, "action-status"))),
  a.reason ? el("p", { testid: "action-reason" }, a.reason) : null,
  el("dl", { class: "facts small" },
    (a.rules || []).length ? [el("dt", {}, "Rules"), el("dd", {}, a.rules.map((r) => [el("code", {}, r), " "]))] : null,
    a.approver_role ? [el("dt", {}, "Approver role"), el("dd", {}, a.approver_role)] : null,
    a.params && Object.keys(a.params).length ? [el("dt", {}, "Parameters"), el("dd", {}, tree(a.params))] : null,
    a.approval ? [el("dt", {}, "Approval"), el("dd", { testid: "approval" }, approval(a.approval))] : null,
    a.outcome ? [el("dt", {}, "Outcome"), el("dd", {}, outcome(a.outcome))] : null),
  waits && may(who, "decide") ? decide(incident, a) : null,
  waits && !may(who, "decide") ? el("p", { class: "muted small", testid: "cannot-decide" },
    `Waiting for ${a.approver_role || "an approver"}; the role ${who.role} may not decide.`) : null);
}

function approval(value) {
  if (!value || typeof value !== "object") return String(value);
  const verb = value.decision === "approve" || value.approved === true ? "approved"
    : value.decision === "reject" || value.approved === false ? "rejected" : value.decision || "decided";
  return [`${verb} by ${value.by || "?"}`, value.at ? ` at ${formatTime(value.at)}` : "",
    value.reason ? `: ${value.reason}` : ""].join("");
}

function outcome(value) {
  if (value.ok === false) return el("span", { class: "error-text" }, value.error || "failed");
  return value.ok ? "ok" : tree(value);
}

function decide(incident, a) {
  const key = `reason-${a.index}`;
  const reason = el("input", { type: "text", id: key, testid: "reason", data: { key }, maxlength: 2000,
    placeholder: "why (optional, kept in the audit log)" });
  const buttons = [];
  const send = (verb) => async () => {
    const error = $("decision-error");
    const notice = $("decision-notice");
    error.hidden = notice.hidden = true;
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      const answer = await api("POST",
        `/api/v1/incidents/${encodeURIComponent(incident.id)}/actions/${a.index}/${verb}`, body);
      notice.textContent = `${answer.decision === "approve" ? "Approved" : "Rejected"} #${a.index} ${a.type} as ` +
        `${answer.by}; the service picks the decision up within a second.`;
      notice.hidden = false;
      loop.now();
    } catch (err) {
      showError(error, err instanceof ApiFailure ? `Could not ${verb} #${a.index} ${a.type}: ${err.message}` : err);
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  buttons.push(
    el("button", { type: "button", class: "approve", testid: "approve", on: { click: send("approve") } }, "Approve"),
    el("button", { type: "button", class: "reject", testid: "reject", on: { click: send("reject") } }, "Reject"));
  return el("div", { class: "decide", testid: "decide" },
    el("label", { for: key }, "Reason"), reason, ...buttons);
}

// On call: who acknowledged, the assignee, comments, pages; and, for roles that may act (operator,
// approver, admin), acknowledge / assign / comment / resolve / reopen. Everything shown is text.
const ONCALL_ROLES = ["operator", "approver", "admin"];
const CLOSED = ["resolved", "escalated", "diagnosed", "merged", "failed"];

function oncall(incident) {
  const state = incident.oncall || {};
  const closed = CLOSED.includes(incident.status);
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "Acknowledged"), el("dd", { testid: "acknowledged-by" },
      state.acknowledged_by ? `by ${state.acknowledged_by} at ${formatTime(state.acknowledged_at)}` : "not yet"),
    el("dt", {}, "Assignee"), el("dd", { testid: "assignee" }, state.assignee || "nobody"),
    el("dt", {}, "Pages"), el("dd", {}, String((state.pages || []).length)));
  const notes = (state.comments || []).length ? el("ul", { class: "comments", testid: "comments" },
    state.comments.map((c) => el("li", { testid: "comment" }, el("strong", {}, c.by), ` ${formatTime(c.at)}: `, c.text)))
    : el("p", { class: "muted small" }, "No comments.");
  if (!ONCALL_ROLES.includes(who.role)) return el("div", {}, facts, notes);
  const field = (key, placeholder, max) => el("input", { type: "text", id: key, testid: key, data: { key },
    maxlength: max, placeholder });
  const to = field("assign-to", "name of a person or rotation", 128);
  const text = field("comment-text", "a comment, kept in the audit log", 4000);
  const reason = field("oncall-reason", closed ? "why reopen (required)" : "why resolve (required)", 2000);
  const button = (verb, label, body) => el("button", { type: "button", testid: `oncall-${verb}`,
    on: { click: act(incident, verb, label, body) } }, label);
  return el("div", {}, facts, notes, el("div", { class: "decide", testid: "oncall-actions" },
    closed ? null : button("ack", "Acknowledge", () => ({})),
    closed ? null : [el("label", { for: "assign-to" }, "Assign to"), to,
      button("assign", "Assign", () => ({ to: to.value.trim() }))],
    el("label", { for: "comment-text" }, "Comment"), text,
    button("comment", "Comment", () => ({ text: text.value.trim() })),
    el("label", { for: "oncall-reason" }, "Reason"), reason,
    closed ? button("reopen", "Reopen", () => ({ reason: reason.value.trim() }))
      : button("resolve", "Resolve", () => ({ reason: reason.value.trim() }))));
}

function act(incident, verb, label, body) {
  return async (event) => {
    const error = $("oncall-error");
    const notice = $("oncall-notice");
    error.hidden = notice.hidden = true;
    event.target.disabled = true;
    try {
      const answer = await api("POST", `/api/v1/incidents/${encodeURIComponent(incident.id)}/${verb}`, body());
      notice.textContent = `${label}: kept as ${answer.record} (#${answer.seq}); status ${answer.status}.`;
      notice.hidden = false;
      document.querySelectorAll("[data-testid=oncall] input[data-key]").forEach((i) => { i.value = ""; });
      loop.now();
    } catch (err) {
      showError(error, err instanceof ApiFailure ? `Could not ${label.toLowerCase()}: ${err.message}` : err);
    } finally {
      event.target.disabled = false;
    }
  };
}

// Confirmed cause: what a person said really caused it, beside rtem's ranking, and for roles that may act
// on call a small form to confirm or correct it (the latest confirmation counts). Everything shown is text.
function confirmed(incident) {
  const c = incident.confirmed;
  const ranked = !c ? "" : c.agreed ? "rtem ranked it first" : c.rank ? `rtem ranked it #${c.rank}`
    : "rtem did not rank it";
  const fact = el("p", { testid: "confirmed-cause", data: { entity: c ? c.cause : "" } }, c
    ? [el("strong", {}, c.cause), c.fault_type ? ` (${c.fault_type})` : "",
      ` confirmed by ${c.by} at ${formatTime(c.at)}; ${ranked}`, c.note ? `: ${c.note}` : ""]
    : el("span", { class: "muted" }, "Not confirmed yet."));
  if (!ONCALL_ROLES.includes(who.role)) return el("div", {}, fact);
  const names = [...new Set([...(incident.root_causes || []).map((r) => r.entity), ...(incident.entities || [])])];
  const field = (key, placeholder, max, extra = {}) => el("input", { type: "text", id: key, testid: key,
    data: { key }, maxlength: max, placeholder, ...extra });
  const cause = field("confirm-cause", "the entity that caused it", 256, { list: "confirm-candidates" });
  const fault = field("confirm-fault", "fault type (optional)", 256);
  const note = field("confirm-note", "note (optional)", 4000);
  const send = async (event) => {
    const error = $("confirm-error");
    const notice = $("confirm-notice");
    error.hidden = notice.hidden = true;
    event.target.disabled = true;
    try {
      const body = { cause: cause.value.trim(), note: note.value.trim() };
      if (fault.value.trim()) body.fault_type = fault.value.trim();
      const answer = await api("POST", `/api/v1/incidents/${encodeURIComponent(incident.id)}/confirm`, body);
      notice.textContent = `Confirmed ${answer.cause}: kept as ${answer.record} (#${answer.seq}).`;
      notice.hidden = false;
      document.querySelectorAll("[data-testid=confirmed] input[data-key]").forEach((i) => { i.value = ""; });
      loop.now();
    } catch (err) {
      showError(error, err instanceof ApiFailure ? `Could not confirm the cause: ${err.message}` : err);
    } finally {
      event.target.disabled = false;
    }
  };
  return el("div", {}, fact,
    el("datalist", { id: "confirm-candidates" }, names.map((n) => el("option", { value: n }))),
    el("div", { class: "decide", testid: "confirm-form" },
      el("label", { for: "confirm-cause" }, "Cause"), cause,
      el("label", { for: "confirm-fault" }, "Fault type"), fault,
      el("label", { for: "confirm-note" }, "Note"), note,
      el("button", { type: "button", testid: "confirm", on: { click: send } }, c ? "Correct" : "Confirm")));
}

// The timeline: decision records in order, each an anchor (#seq-N) that chat citations link to.
async function timeline() {
  const path = lastSeq === 0 ? `/api/v1/incidents/${encodeURIComponent(incidentId)}/decisions`
    : `/api/v1/audit?incident=${encodeURIComponent(incidentId)}&since_seq=${lastSeq}&limit=1000`;
  const records = ((await api("GET", path)).records || []).filter((r) => r.seq > lastSeq)
    .sort((x, y) => x.seq - y.seq);
  if (!records.length) return;
  const list = $("timeline");
  const initial = lastSeq === 0;
  for (const record of records) {
    if (document.getElementById(`seq-${record.seq}`)) continue;
    const entry = entryOf(record);
    list.append(entry);
    if (!initial) flash(entry);
  }
  lastSeq = records[records.length - 1].seq;
  if (initial) showCited();
}

function entryOf(r) {
  return el("li", { id: `seq-${r.seq}`, class: "entry", testid: "timeline-entry", data: { seq: String(r.seq), kind: r.kind } },
    el("div", { class: "entry-head" },
      el("time", { datetime: r.at }, formatTime(r.at)), " ",
      el("a", { href: `#seq-${r.seq}`, class: "seq" }, `#${r.seq}`), " ",
      badge(r.kind, "kind"), r.node ? el("span", { class: "muted small" }, ` ${r.node}`) : null),
    el("p", { class: "headline" }, headline(r)),
    (r.reasons || []).length > 1 || ((r.reasons || []).length === 1 && r.reasons[0] !== headline(r))
      ? el("ul", { class: "reasons" }, r.reasons.map((text) => el("li", {}, text))) : null,
    evidence(r.evidence),
    el("details", { class: "small" }, el("summary", {}, "Record"),
      el("div", { class: "record" }, tree({ inputs: r.inputs, decision: r.decision, versions: r.versions }))));
}

function headline(r) {
  const d = r.decision || {};
  const p = (r.inputs && r.inputs.proposal) || {};
  switch (r.kind) {
    case "incident.opened": return `Opened on ${(d.entities || []).join(", ")} (${d.severity || "?"})`;
    case "causes.ranked": return `Ranked causes: ${(d.root_causes || []).map((c) => `${c.entity} ${confidence(c.confidence)}`).join(", ") || "none"}`;
    case "actions.proposed": return `Proposed: ${(d.proposals || []).map((x) => `${x.type} on ${x.target}`).join(", ") || "nothing"}${(d.replaced_as_unfit || []).length ? " (unfit proposals replaced)" : ""}`;
    case "reasoner.late": return `Late LLM hypothesis (changed nothing): ${(d.hypotheses || []).map((h) => `${h.entity} ${h.fault_type}`).join(", ") || "none"}`;
    case "action.verdict": return `${p.type} on ${p.target}: ${d.outcome}${(d.rules || []).length ? ` (${d.rules.join(", ")})` : ""}`;
    case "approval.requested": return `Approval requested: ${((r.inputs || {}).actions || []).join(", ")}`;
    case "approval.decided": return `${d.decision === "approve" ? "Approved" : "Rejected"} by ${d.by}`;
    case "action.approval": return `${(r.inputs || {}).action || "action"}: ${d.status} by ${d.by}`;
    case "incident.closed":
    case "incident.diagnosed": return `Status ${d.status}${d.root_cause ? `, root cause ${d.root_cause}` : ""}`;
    case "cause.confirmed": return `Cause confirmed: ${d.cause} by ${d.by}${d.agreed ? " (as rtem ranked first)" : ""}`;
    default: return (r.reasons || [])[0] || r.kind;
  }
}

function showCited() {
  const match = location.hash.match(/^#seq-(\d+)$/);
  document.querySelectorAll(".entry.cited").forEach((e) => e.classList.remove("cited"));
  if (!match) return;
  const entry = document.getElementById(`seq-${match[1]}`);
  if (!entry) return;
  entry.classList.add("cited");
  entry.scrollIntoView({ block: "center" });
}
