// The viewer token, for a relay started with --viewer-token.
//
// The page learns it from the URL fragment (`#token=...`, which browsers never send to the
// server; it is removed from the address bar at once) or from a small form it shows when the
// relay says it needs one (an /api/* 401, or a `rejected` "unauthorised" subscribe). It keeps
// it in sessionStorage only (this tab, until it closes), sends it as `Authorization: Bearer`
// on every /api/* fetch and as the first `auth` frame of every WebSocket connection, and
// never puts it in a URL it requests.
//
// This module imports nothing: protocol.js, which loads before every other module, uses it.

const KEY = "fl-stream-viewer-token";
const listeners = new Set();
let asking = null; // the open form's promise: one form however many requests were refused

function stored() {
  try {
    return sessionStorage.getItem(KEY) || null;
  } catch {
    return null; // storage disabled: the token lives as long as the page
  }
}

let current = stored();

function keep(token) {
  current = token || null;
  try {
    if (current) sessionStorage.setItem(KEY, current);
    else sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: kept in memory only
  }
}

// `/#token=...` or `/?run=x#token=...`: read it, then drop the fragment from the address bar
// (and from the history entry) before anything else happens.
(function fromFragment() {
  const fragment = window.location.hash.slice(1);
  if (!fragment) return;
  const params = new URLSearchParams(fragment);
  if (!params.has("token")) return;
  keep(params.get("token"));
  params.delete("token");
  const rest = params.toString();
  const url = `${window.location.pathname}${window.location.search}${rest ? `#${rest}` : ""}`;
  window.history.replaceState(window.history.state, "", url);
})();

/** The viewer token the page holds, or null. */
export function viewerToken() {
  return current;
}

/** Call `listener()` whenever the user gives a new token (to authenticate the link again). */
export function onNewToken(listener) {
  listeners.add(listener);
}

/**
 * Show the token form (once, however many callers ask) with `problem`; resolves with the
 * token the user gives.
 */
export function askForToken(problem) {
  if (!asking) {
    asking = showForm(problem).then((token) => {
      asking = null;
      keep(token);
      listeners.forEach((listener) => listener());
      return token;
    });
  } else {
    setProblem(problem);
  }
  return asking;
}

/** Why a token is asked for, given whether the page already sent one. */
export function refusal(hadToken) {
  return hadToken
    ? "The relay refused this token. Enter the viewer token again."
    : "This relay needs a viewer token to show its runs.";
}

/**
 * fetch() for the relay's /api/*: with the token as `Authorization: Bearer`; a 401 asks for
 * the token (the form) and tries again with the new one.
 */
export async function apiFetch(path, options = {}) {
  for (;;) {
    const token = current;
    const headers = new Headers(options.headers ?? {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (token !== current && current) continue; // a new token came meanwhile: try it
    await askForToken(refusal(Boolean(token)));
  }
}

function setProblem(problem) {
  const error = document.getElementById("token-error");
  if (error) error.textContent = problem;
}

function showForm(problem) {
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  setProblem(problem);
  input.value = "";
  return new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("cancel", stay);
      input.value = "";
      dialog.close();
      resolve(token);
    };
    const stay = (event) => event.preventDefault(); // Escape does not leave a page with no data
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", stay);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}
