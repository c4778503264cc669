// #/functions/NAME: versions, snapshot, instances, latency, live logs and an
// invoke form.
import { ApiError, badge, bytes, esc, micros, seconds, when } from "../api.js";
import { BarChart } from "../charts.js";

const KINDS = ["warm", "restore", "boot"];
const PAGE = 4096;

export function mount(main, ctx) {
  const name = ctx.params.name;
  const path = `/functions/${encodeURIComponent(name)}`;
  main.innerHTML = `
    <h1>${esc(name)} <span id="fn-state"></span> <span class="muted" id="fn-version"></span></h1>
    <p class="error-text" id="fn-error"></p>
    <div class="grid">
      <div class="panel">
        <h2>Invoke</h2>
        <form id="invoke-form" class="stack">
          <label>Body <textarea id="invoke-body" rows="5">{}</textarea></label>
          <div class="actions"><button id="invoke-submit" type="submit">Invoke</button><span class="muted" id="invoke-busy"></span></div>
        </form>
        <div id="invoke-result" hidden>
          <dl class="kv" id="invoke-meta"></dl>
          <h2 style="margin-top:10px">Answer</h2>
          <pre id="invoke-answer"></pre>
          <h2 style="margin-top:10px">Headers</h2>
          <pre id="invoke-headers"></pre>
        </div>
      </div>
      <div class="panel">
        <h2>Live log</h2>
        <pre class="logs" id="logs"></pre>
      </div>
    </div>
    <div class="grid">
      <div class="panel"><h2>Snapshot</h2><dl class="kv" id="snapshot"><dt>–</dt><dd></dd></dl></div>
      <div class="panel"><h2>Invocations by start kind</h2>
        <table id="invocations"><thead><tr><th>Start</th><th>Outcome</th><th class="num">Count</th></tr></thead><tbody></tbody></table>
      </div>
    </div>
    <div class="grid">
      <div class="panel"><h2>Versions</h2>
        <table id="versions"><thead><tr><th class="num">Version</th><th>State</th><th>Deployed</th><th class="num">Idle</th><th class="num">Busy</th><th class="num">Booting</th><th>Error</th></tr></thead><tbody></tbody></table>
      </div>
      <div class="panel"><h2>Instances</h2>
        <table id="instances"><thead><tr><th>Sandbox</th><th>State</th><th class="num">RSS</th><th class="num">PSS</th><th class="num">USS</th></tr></thead><tbody></tbody></table>
      </div>
    </div>
    <div class="grid">
      <div class="panel chart" id="hist-start"></div>
      <div class="panel chart" id="hist-duration"></div>
    </div>
    <p class="muted">Latency histograms count every invocation of the server, split by start kind.</p>`;
  const $ = (id) => main.querySelector(`#${id}`);
  const histStart = new BarChart($("hist-start"), "Start latency by start kind (all functions)", KINDS);
  const histDuration = new BarChart($("hist-duration"), "Handler duration by start kind (all functions)", KINDS);

  function drawHist(chart, hists) {
    const any = KINDS.map((k) => hists[k]).find((h) => h && h.bounds.length);
    if (!any) return;
    // Show buckets from the first to the last one holding anything.
    let lo = any.bounds.length, hi = -1;
    for (const k of KINDS) {
      const h = hists[k];
      if (!h) continue;
      h.counts.forEach((c, i) => { if (c > 0) { lo = Math.min(lo, i); hi = Math.max(hi, i); } });
    }
    if (hi < 0) { lo = 0; hi = Math.min(any.bounds.length - 1, 8); }
    lo = Math.max(0, lo - 1); hi = Math.min(any.bounds.length - 1, hi + 1);
    const labels = any.bounds.slice(lo, hi + 1).map((b) => (b === null ? "+∞" : `≤${seconds(b)}`));
    chart.set(labels, KINDS.map((k) => (hists[k] ? hists[k].counts.slice(lo, hi + 1) : labels.map(() => 0))));
  }

  ctx.stream({ function: name }, {
    function(f) {
      const v = f.view;
      if (!v) { $("fn-error").textContent = `No function named ${name}.`; return; }
      $("fn-state").innerHTML = badge(v.state);
      $("fn-state").dataset.state = v.state;
      $("fn-version").textContent = `version ${v.version} · ${v.spec.runtime}`;
      $("fn-error").textContent = v.error || "";
      const s = v.snapshot;
      $("snapshot").innerHTML = s ? `
        <dt>Id</dt><dd>${esc(s.id)}</dd>
        <dt>Stored pages</dt><dd>${s.stored_pages} (${bytes(s.stored_pages * PAGE)})</dd>
        <dt>New to the store</dt><dd>${s.new_pages} (${bytes(s.new_pages * PAGE)})</dd>
        <dt>Zero pages</dt><dd>${s.zero_pages}</dd>
        <dt>Memory areas</dt><dd>${s.areas}</dd>
        <dt>Capture took</dt><dd>${micros(s.capture_us)}</dd>
        <dt>Taken</dt><dd>${when(s.created_ms)}</dd>`
        : `<dt>State</dt><dd>${v.state === "ready" ? "none (boots on every cold start)" : "not taken yet"}</dd>`;
      $("versions").querySelector("tbody").innerHTML = v.versions.slice().reverse().map((x) => `
        <tr><td class="num">${x.version}</td><td>${badge(x.state)}</td><td>${when(x.created_ms)}</td>
        <td class="num">${x.instances.idle}</td><td class="num">${x.instances.busy}</td><td class="num">${x.instances.booting}</td>
        <td class="error-text">${esc(x.error || "")}</td></tr>`).join("");
      $("instances").querySelector("tbody").innerHTML = v.instance_list.length
        ? v.instance_list.map((i) => `<tr><td>${esc(i.id)}</td><td>${badge(i.state)}</td>
          <td class="num">${bytes(i.memory.rss)}</td><td class="num">${bytes(i.memory.pss)}</td><td class="num">${bytes(i.memory.uss)}</td></tr>`).join("")
        : `<tr><td colspan="5" class="muted">No live instances (${v.instances.booting} booting).</td></tr>`;
      const rows = [];
      for (const [start, outcomes] of Object.entries(f.invocations)) {
        for (const [outcome, n] of Object.entries(outcomes)) rows.push(`<tr><td>${badge(start)}</td><td>${esc(outcome)}</td><td class="num">${n}</td></tr>`);
      }
      $("invocations").querySelector("tbody").innerHTML = rows.join("") || `<tr><td colspan="3" class="muted">None yet.</td></tr>`;
      drawHist(histStart, f.start_latency);
      drawHist(histDuration, f.duration);
    },
  });

  // The live log: server-sent `log` events, the cookie authenticates.
  const logs = $("logs");
  const logSource = new EventSource(`${path}/logs?tail=200&follow=1`);
  logSource.addEventListener("log", (e) => {
    const l = JSON.parse(e.data);
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    const t = new Date(l.time_ms).toISOString().slice(11, 23);
    logs.textContent += `${t} ${l.stream === "stderr" ? "E" : " "} ${l.line}\n`;
    if (logs.textContent.length > 200000) logs.textContent = logs.textContent.slice(-150000);
    if (atEnd) logs.scrollTop = logs.scrollHeight;
  });

  $("invoke-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("invoke-submit");
    button.disabled = true;
    $("invoke-busy").textContent = "invoking…";
    const t0 = performance.now();
    try {
      const resp = await fetch(`${path}/invoke`, { method: "POST", credentials: "same-origin", body: $("invoke-body").value, headers: { "content-type": "application/json" } });
      const text = await resp.text();
      const ms = performance.now() - t0;
      if (resp.status === 401) { ctx.handle(new ApiError(401, "unauthorized", text)); return; }
      const h = (k) => resp.headers.get(k);
      $("invoke-meta").innerHTML = `
        <dt>Status</dt><dd id="invoke-status">${resp.status} ${esc(resp.statusText)}</dd>
        <dt>Start</dt><dd id="invoke-start">${esc(h("x-thaw-start") || "–")}</dd>
        <dt>Start time</dt><dd>${micros(h("x-thaw-start-us"))}</dd>
        <dt>Handler time</dt><dd>${micros(h("x-thaw-duration-us"))}</dd>
        <dt>Round trip</dt><dd>${ms.toFixed(1)} ms</dd>
        <dt>Invocation</dt><dd>${esc(h("x-thaw-invocation-id") || "–")}</dd>`;
      let pretty = text;
      try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON */ }
      $("invoke-answer").textContent = pretty;
      $("invoke-answer").classList.toggle("error-text", !resp.ok);
      $("invoke-headers").textContent = [...resp.headers.entries()].map(([k, v]) => `${k}: ${v}`).join("\n");
      $("invoke-result").hidden = false;
    } catch (err) {
      ctx.showError(`invoke failed: ${err.message}`);
    } finally {
      button.disabled = false;
      $("invoke-busy").textContent = "";
    }
  });

  return () => { logSource.close(); histStart.destroy(); histDuration.destroy(); };
}
