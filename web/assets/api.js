// Talking to the server, and formatting what it says.

/** An error answered by the API: status, kind and message. */
export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message || kind || `HTTP ${status}`);
    this.status = status;
    this.kind = kind;
  }
}

/** Calls the API with the session cookie; JSON in, JSON out. */
export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const kind = data && data.error;
    const message = (data && data.message) || text || resp.statusText;
    throw new ApiError(resp.status, kind, `${resp.status} ${kind || ""}: ${message}`.trim());
  }
  return data;
}

/** Bytes, in binary units. */
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** A duration given in seconds. */
export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
  return `${s.toFixed(2)} s`;
}

/** A duration given in microseconds. */
export function micros(us) {
  return us === null || us === undefined || us === "" ? "–" : seconds(Number(us) / 1e6);
}

/** Escapes text for HTML. */
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

/** A state badge. */
export function badge(state) {
  return `<span class="state ${esc(state)}">${esc(state)}</span>`;
}

/** A date from Unix milliseconds. */
export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}
