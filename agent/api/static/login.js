// Sign in: trade the token for the session cookie, then go where the user was headed.

import { api, showError } from "/static/console.js";

const form = document.querySelector("[data-testid=login-form]");
const token = document.querySelector("[data-testid=token]");
const error = document.querySelector("[data-testid=login-error]");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    await api("POST", "/api/v1/session", { token: token.value.trim() }, { redirectOn401: false });
    location.replace(safeNext());
  } catch (err) {
    showError(error, err.status === 401 ? `That token was not accepted (${err.message}).` : err);
    token.select();
  } finally {
    button.disabled = false;
  }
});

// Only a path on this site: `next=//evil.example` or `next=https://…` must not send the user away.
function safeNext() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return /^\/(?![\/\\])/.test(next) ? next : "/";
}
