// The dashboard: session prompt, hash router, live stream.
import { api, ApiError } from "./api.js";
import * as overview from "./pages/overview.js";
import * as fn from "./pages/function.js";
import * as deploy from "./pages/deploy.js";
import * as store from "./pages/store.js";

const main = document.getElementById("main");
const errorBox = document.getElementById("error");
const liveBadge = document.getElementById("live");

let cleanup = null;
let source = null;

/** Shows an error above the page (null hides it). */
export function showError(message) {
  errorBox.hidden = !message;
  errorBox.textContent = message || "";
}

function setLive(on, text) {
  liveBadge.classList.toggle("on", on);
  liveBadge.classList.toggle("off", !on);
  liveBadge.textContent = text;
}

/**
 * Opens the live stream (one per page): `handlers.overview` gets the
 * overview every second, `handlers.function` the record of `opts.function`.
 */
function stream(opts, handlers) {
  closeStream();
  const q = opts && opts.function ? `?function=${encodeURIComponent(opts.function)}` : "";
  const es = new EventSource(`/events${q}`);
  source = es;
  es.onopen = () => setLive(true, "live");
  es.onerror = async () => {
    setLive(false, "reconnecting…");
    // A stream refused for want of a session: ask for the token again.
    try {
      const s = await api("GET", "/session");
      if (s.auth_required && !s.signed_in) { closeStream(); await signIn(); route(); }
    } catch { /* server away: EventSource retries by itself */ }
  };
  for (const [kind, handler] of Object.entries(handlers)) {
    es.addEventListener(kind, (e) => {
      try { handler(JSON.parse(e.data)); } catch (err) { showError(`drawing ${kind}: ${err.message}`); console.error(err); }
    });
  }
  return es;
}

function closeStream() {
  if (source) { source.close(); source = null; }
  setLive(false, "offline");
}

const routes = [
  [/^#\/overview$/, overview, () => ({})],
  [/^#\/functions\/([^/]+)$/, fn, (m) => ({ name: decodeURIComponent(m[1]) })],
  [/^#\/deploy$/, deploy, () => ({})],
  [/^#\/store$/, store, () => ({})],
];

/** Renders the page of the current hash. */
function route() {
  const hash = location.hash || "#/overview";
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  closeStream();
  showError(null);
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", hash.startsWith(`#/${a.dataset.page}`));
  }
  for (const [re, page, params] of routes) {
    const m = hash.match(re);
    if (m) {
      main.innerHTML = "";
      const ctx = { params: params(m), stream, showError, handle };
      cleanup = page.mount(main, ctx) || null;
      return;
    }
  }
  location.hash = "#/overview";
}

/** Reports a failed call; asks for the token again on 401. */
async function handle(err) {
  if (err instanceof ApiError && err.status === 401) {
    await signIn();
    route();
    return;
  }
  showError(err.message || String(err));
}

/** Asks for a token until the server accepts one. */
function signIn() {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  const input = document.getElementById("login-token");
  const err = document.getElementById("login-error");
  main.innerHTML = `<p class="muted">Sign in to see this server.</p>`;
  return new Promise((resolve) => {
    form.onsubmit = async (e) => {
      e.preventDefault();
      err.textContent = "";
      try {
        await api("POST", "/session", { token: input.value });
        input.value = "";
        dialog.close();
        resolve();
      } catch (e2) {
        err.textContent = e2.message;
      }
    };
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

async function signOut() {
  try { await api("DELETE", "/session"); } catch (e) { showError(e.message); }
  closeStream();
  if (cleanup) { cleanup(); cleanup = null; }
  await signIn();
  route();
}

// Whatever goes wrong in the page is shown, not buried in the console.
window.addEventListener("error", (e) => showError(`page error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => showError(`page error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));

async function start() {
  const out = document.getElementById("signout");
  out.addEventListener("click", signOut);
  try {
    const s = await api("GET", "/session");
    out.hidden = !s.auth_required;
    if (s.auth_required && !s.signed_in) await signIn();
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
