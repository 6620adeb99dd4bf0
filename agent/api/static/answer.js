// A question box and the conversation so far (question/answer turns, oldest first): used by the chat page
// and by each incident page (scoped to it). The newest turn carries the answer's test ids (answer-text,
// citations, searched); earlier turns keep their text under "earlier-…" ids, so a page holds one of each.

import { api, el, incidentHref, may, showError } from "/static/console.js";

// `incident`: ask about this incident, and link cited seqs to its timeline on the same page.
export function chatBox(who, { incident = null } = {}) {
  const question = el("input", { type: "text", id: "question", name: "question", testid: "chat-question",
    required: true, maxlength: 2000, autocomplete: "off",
    placeholder: incident ? "Why did this action run?" : "What is still open?" });
  const ask = el("button", { type: "submit", testid: "chat-ask" }, "Ask");
  const error = el("p", { class: "error", role: "alert", testid: "chat-error", hidden: true });
  const output = el("div", { class: "answer", testid: "chat-answer", "aria-live": "polite" });
  const turns = el("ol", { class: "conversation", testid: "chat-conversation", "aria-label": "Conversation" });
  const clear = el("button", { type: "button", class: "secondary", testid: "chat-clear", hidden: true, on: {
    click: () => { turns.replaceChildren(); output.replaceChildren(); clear.hidden = true; question.focus(); },
  } }, "Clear conversation");
  const allowed = may(who, "ask");
  if (!allowed) {
    question.disabled = ask.disabled = true;
    question.placeholder = `the role ${who.role} may not ask questions`;
  }
  const form = el("form", { class: "ask", testid: "chat-form", on: {
    submit: async (event) => {
      event.preventDefault();
      error.hidden = true;
      ask.disabled = true;
      const asked = question.value.trim();
      output.replaceChildren(el("p", { class: "muted" }, "Thinking…"));
      try {
        const reply = await api("POST", "/api/v1/chat", { question: asked, incident });
        retire(turns);
        turns.append(el("li", { class: "turn", testid: "chat-turn" },
          el("p", { class: "question", testid: "turn-question" }, el("strong", {}, "You: "), asked),
          ...renderAnswer(reply, incident)));
        output.replaceChildren();
        clear.hidden = false;
        question.value = "";
        turns.lastElementChild.scrollIntoView({ block: "nearest" });
      } catch (err) {
        output.replaceChildren();
        showError(error, err);
      } finally {
        ask.disabled = !allowed;
        question.focus();
      }
    },
  } },
  el("label", { for: "question" }, incident ? "Ask about this incident" : "Question"),
  el("div", { class: "row" }, question, ask));
  return el("section", { class: "chat", testid: "chat" }, turns, form, error, output, clear);
}

// The answer test ids belong to the newest turn only: earlier turns keep theirs under "earlier-…".
function retire(turns) {
  for (const node of turns.querySelectorAll("[data-testid]")) {
    const id = node.getAttribute("data-testid");
    if (!id.startsWith("earlier-") && id !== "chat-turn" && id !== "turn-question") {
      node.setAttribute("data-testid", `earlier-${id}`);
    }
  }
}

function renderAnswer(reply, incident) {
  const seqs = (reply.citations && reply.citations.seqs) || [];
  const events = (reply.citations && reply.citations.events) || [];
  const unknown = /^I don't know/i.test(reply.text || "");
  const parts = [el("p", { class: "answer-text", testid: "answer-text" }, reply.text || "")];
  if (seqs.length || events.length) {
    parts.push(el("div", { class: "citations", testid: "citations" },
      el("span", { class: "muted" }, "Cites: "),
      seqs.map((seq) => citation(seq, incident)),
      events.map((id) => el("code", { class: "event-id", testid: "citation-event" }, id))));
  }
  if (unknown || (reply.searched && reply.searched.length && !seqs.length && !events.length)) {
    parts.push(el("details", { class: "searched", testid: "searched", open: unknown },
      el("summary", {}, "Searched"),
      el("ul", {}, (reply.searched || []).map((s) => el("li", {}, s)))));
  }
  parts.push(el("p", { class: "muted small" }, `${reply.intent || "unknown"} · ${reply.reasoner || "deterministic"}`));
  return parts;
}

// A cited audit record links to its place in its incident's timeline. Off an incident page, which
// incident a seq belongs to is looked up once (GET /api/v1/audit, since_seq is exclusive).
function citation(seq, incident) {
  const link = el("a", { class: "seq", testid: "citation-seq", data: { seq: String(seq) },
    href: incident ? `#seq-${seq}` : "#" }, `seq ${seq}`);
  if (!incident) {
    api("GET", `/api/v1/audit?since_seq=${Math.max(0, seq - 1)}&limit=1`).then((data) => {
      const record = ((data && data.records) || []).find((r) => r.seq === seq);
      if (record && record.incident_id) {
        link.href = incidentHref(record.incident_id, seq);
        link.title = record.kind ? `${record.kind} of ${record.incident_id}` : record.incident_id;
      } else {
        link.removeAttribute("href");
      }
    }).catch(() => link.removeAttribute("href"));
  }
  return link;
}
