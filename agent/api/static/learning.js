// What rtem learned from confirmed causes (GET /api/v1/learning), and forgetting it, for admins.

import { api, el, fail, may, poll, showError, start } from "/static/console.js";

const status = document.querySelector("[data-testid=learning-status]");
const form = document.querySelector("[data-testid=forget-form]");
const note = document.querySelector("[data-testid=forget-note]");
const error = document.querySelector("[data-testid=forget-error]");
const notice = document.querySelector("[data-testid=forget-notice]");
const pageError = document.querySelector("[data-testid=page-error]");
let drawn = null;
let loop = null;

start("learning").then((who) => {
  form.hidden = !may(who, "admin");
  form.addEventListener("submit", forget);
  loop = poll(refresh, 5000);
}).catch(fail);

async function refresh() {
  let data;
  try {
    data = await api("GET", "/api/v1/learning");
  } catch (err) {
    showError(pageError, err);  // a scoped token may not read it: say why, and keep asking
    return;
  }
  pageError.hidden = true;
  const json = JSON.stringify(data);
  if (json === drawn) return;
  drawn = json;
  status.replaceChildren(render(data));
}

async function forget(event) {
  event.preventDefault();
  error.hidden = notice.hidden = true;
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const result = await api("POST", "/api/v1/learning/reset", { note: note.value });
    notice.textContent = `learn.reset (audit seq ${result.seq}) by ${result.by}: ${result.forgotten} confirmed ` +
      "causes are no longer learned from.";
    notice.hidden = false;
    note.value = "";
  } catch (err) {
    showError(error, err);
  } finally {
    button.disabled = false;
    loop.now();
  }
}

function render(data) {
  const since = data.reset_seq ? ` (since the reset at audit seq ${data.reset_seq})` : "";
  const ranked = data.ranked || {};
  const learned = ranked.with_learning || {};
  return el("div", {},
    el("section", { testid: "learning-summary" }, el("h2", {}, "Confirmed causes"),
      el("p", {}, `${data.confirmed} confirmed incidents${since}; learned from ${data.learned_from}; weight against ` +
        `the cold start ${Number(data.blend).toFixed(2)} = n/(n+${data.k}).`),
      ranked.confirmed ? el("p", { testid: "learning-record" },
        `rtem had ranked the confirmed cause first in ${ranked.first} of ${ranked.confirmed}, in its top 3 in ` +
        `${ranked.top3}` + (learned.confirmed ? `; of the ${learned.confirmed} diagnosed with what it had learned ` +
        `by then: ${learned.first} first, ${learned.top3} in the top 3.` : ".")) : null),
    el("section", { testid: "learning-features" }, el("h2", {}, "What counts most"),
      data.features.length ? featureTable(data.features) : el("p", { class: "muted" }, data.summary)));
}

function featureTable(features) {
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, ["weight", "learned"].map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, features.map((f) => el("tr", {},
      el("td", {}, (f.weight > 0 ? "+" : "") + Number(f.weight).toFixed(2)), el("td", {}, f.says)))));
}
