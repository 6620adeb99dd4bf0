// The rules in force (digests, files, last load, last refusal), and a reload for those who may.

import { api, el, fail, formatTime, may, poll, showError, start, tree } from "/static/console.js";

const status = document.querySelector("[data-testid=rules-status]");
const reload = document.querySelector("[data-testid=reload-rules]");
const error = document.querySelector("[data-testid=reload-error]");
const notice = document.querySelector("[data-testid=reload-notice]");
let drawn = null;
let loop = null;

start("rules").then((who) => {
  reload.hidden = !may(who, "rules");
  reload.addEventListener("click", reloadNow);
  loop = poll(refresh, 5000);
}).catch(fail);

async function refresh() {
  const data = await api("GET", "/api/v1/rules");
  const json = JSON.stringify(data);
  if (json === drawn) return;
  drawn = json;
  status.replaceChildren(render(data));
}

async function reloadNow() {
  error.hidden = notice.hidden = true;
  reload.disabled = true;
  try {
    const result = await api("POST", "/api/v1/rules/reload");
    notice.textContent = `Rules ${result.status || "checked"}` + (result.digest ? `: digest ${result.digest}` : "") + ".";
    notice.hidden = false;
  } catch (err) {
    showError(error, err);
  } finally {
    reload.disabled = false;
    loop.now();
  }
}

function render(data) {
  const { files, last_result: last, last_refusal: refusal, ...digests } = data;
  return el("div", {},
    el("section", { testid: "rules-digests" }, el("h2", {}, "In force"), tree(digests)),
    el("section", { testid: "rules-files" }, el("h2", {}, "Files"), fileTable(files || [])),
    el("section", { testid: "rules-last-load" }, el("h2", {}, "Last load"), result(last)),
    el("section", { testid: "rules-last-refusal" }, el("h2", {}, "Last refusal"), result(refusal)));
}

function fileTable(files) {
  if (!files.length) return el("p", { class: "muted" }, "No rule files.");
  if (typeof files[0] !== "object") return tree(files);
  const columns = [...new Set(files.flatMap((f) => Object.keys(f)))];
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, files.map((f) => el("tr", {}, columns.map((c) => el("td", {}, scalar(f[c])))))));
}

function scalar(value) {
  return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value ?? "");
}

function result(value) {
  if (!value) return el("p", { class: "muted" }, "none");
  const { errors, warnings, at, ...rest } = value;
  return el("div", {},
    at ? el("p", {}, `at ${formatTime(at)}`) : null,
    (errors || []).length ? el("ul", { class: "findings error-text" }, errors.map((e) => el("li", {}, finding(e)))) : null,
    (warnings || []).length ? el("ul", { class: "findings" }, warnings.map((w) => el("li", {}, finding(w)))) : null,
    tree(rest));
}

function finding(f) {
  if (typeof f !== "object") return String(f);
  return `${f.file}:${f.line}:${f.column}: ${f.severity ? `${f.severity}: ` : ""}${f.message}${f.hint ? ` (${f.hint})` : ""}`;
}
