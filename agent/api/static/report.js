// The rationale report of one incident, as the API renders it (self-contained HTML), in a sandboxed
// frame: no scripts, and an origin of its own, so the report can show but never act.

import { api, fail, incidentHref, start } from "/static/console.js";

const id = decodeURIComponent(location.pathname.split("/").pop());
document.title = `Report ${id} · rtem`;

start("incidents").then(async () => {
  document.querySelector("[data-testid=report-title]").textContent = `Report ${id}`;
  document.querySelector("[data-testid=incident-link]").href = incidentHref(id);
  const html = await api("GET", `/api/v1/incidents/${encodeURIComponent(id)}/report?format=html`, undefined,
    { accept: "text/html" });
  const frame = document.querySelector("[data-testid=report-frame]");
  frame.srcdoc = html;
}).catch(fail);
