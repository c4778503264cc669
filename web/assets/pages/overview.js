// #/overview: every function with its state, traffic, start latency and
// memory, live.
import { badge, bytes, esc, seconds } from "../api.js";
import { TimeChart } from "../charts.js";

const STATES = ["deploying", "building", "warming", "snapshotting", "ready", "failed"];
const KINDS = ["warm", "restore", "boot"];

export function mount(main, ctx) {
  main.innerHTML = `
    <h1>Overview</h1>
    <div class="cards">
      <div class="card"><div class="label">Functions</div><div class="value" id="count-functions">–</div></div>
      ${STATES.map((s) => `<div class="card"><div class="label">${s}</div><div class="value" id="count-${s}">–</div></div>`).join("")}
      <div class="card"><div class="label">Instances idle / busy / booting</div><div class="value" id="count-instances">–</div></div>
      <div class="card"><div class="label">Invocations</div><div class="value" id="count-invocations">–</div></div>
      <div class="card"><div class="label">Memory used / budget</div><div class="value" id="memory-used">–</div><progress id="memory-bar" max="1" value="0"></progress></div>
      <div class="card"><div class="label">Σ RSS / Σ PSS</div><div class="value" id="memory-share">–</div></div>
      <div class="card"><div class="label">Sharing saves</div><div class="value" id="memory-saved">–</div></div>
    </div>
    <div class="grid charts">
      <div class="panel chart" id="chart-rate"></div>
      <div class="panel chart" id="chart-starts"></div>
      <div class="panel chart" id="chart-latency"></div>
      <div class="panel chart" id="chart-memory"></div>
    </div>
    <div class="panel">
      <h2>Functions <span class="muted" id="functions-note"></span></h2>
      <div class="table-wrap">
      <table id="functions">
        <thead><tr><th>Name</th><th>State</th><th class="num">Version</th><th>Runtime</th><th class="num">Idle</th><th class="num">Busy</th><th class="num">Booting</th><th class="num">Invocations</th><th class="num">RSS</th><th class="num">PSS</th><th>Error</th></tr></thead>
        <tbody><tr><td colspan="11" class="muted">Waiting for the live stream…</td></tr></tbody>
      </table>
      </div>
    </div>`;
  const perSec = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)}/s`);
  const charts = [
    new TimeChart(main.querySelector("#chart-rate"), "Invocations per second", [{ label: "all" }, { label: "errors", color: "#d2383b" }], { fmt: perSec }),
    new TimeChart(main.querySelector("#chart-starts"), "Starts per second by kind", KINDS.map((k) => ({ label: k })), { fmt: perSec }),
    new TimeChart(main.querySelector("#chart-latency"), "Start latency (p50 solid, p99 dashed)",
      [...KINDS.map((k) => ({ label: `${k} p50` })), ...KINDS.map((k, i) => ({ label: `${k} p99`, color: ["#2f6fde", "#1f9d55", "#d2383b"][i], dash: [6, 4] }))],
      { fmt: seconds, minMax: 0.001 }),
    new TimeChart(main.querySelector("#chart-memory"), "Memory of instances",
      [{ label: "charged to cgroups" }, { label: "Σ RSS" }, { label: "Σ PSS" }],
      { fmt: bytes, minMax: 1024 * 1024 }),
  ];
  let prev = null;
  const tbody = main.querySelector("#functions tbody");

  ctx.stream({}, {
    overview(o) {
      const $ = (id) => main.querySelector(`#${id}`);
      $("count-functions").textContent = o.functions.length;
      for (const s of STATES) $(`count-${s}`).textContent = o.states[s] ?? 0;
      $("count-instances").textContent = `${o.instances.idle} / ${o.instances.busy} / ${o.instances.booting}`;
      $("count-invocations").textContent = o.invocations.total;
      $("memory-used").textContent = `${bytes(o.memory.used)} / ${bytes(o.memory.budget)}`;
      $("memory-bar").value = o.memory.budget ? o.memory.used / o.memory.budget : 0;
      $("memory-share").textContent = `${bytes(o.memory.rss)} / ${bytes(o.memory.pss)}`;
      $("memory-saved").textContent = bytes(Math.max(0, o.memory.rss - o.memory.pss));

      if (prev && o.t > prev.t) {
        const dt = (o.t - prev.t) / 1000;
        const rate = (a, b) => Math.max(0, (a - b) / dt);
        const by = (x, k) => (x.invocations.by_start[k] || 0);
        charts[0].push(o.t, [rate(o.invocations.total, prev.invocations.total), rate(o.invocations.errors, prev.invocations.errors)]);
        charts[1].push(o.t, KINDS.map((k) => rate(by(o, k), by(prev, k))));
      }
      const lat = (k, q) => (o.latency[k] ? o.latency[k][q] : null);
      charts[2].push(o.t, [...KINDS.map((k) => lat(k, "p50")), ...KINDS.map((k) => lat(k, "p99"))]);
      charts[3].push(o.t, [o.memory.used, o.memory.rss, o.memory.pss]);
      prev = o;

      $("functions-note").textContent = `(${o.functions.length})`;
      tbody.innerHTML = o.functions.length === 0
        ? `<tr><td colspan="11" class="muted">No functions yet. <a href="#/deploy">Deploy one.</a></td></tr>`
        : o.functions.map((f) => `
        <tr data-name="${esc(f.name)}">
          <td><a href="#/functions/${encodeURIComponent(f.name)}">${esc(f.name)}</a></td>
          <td class="state-cell" data-state="${esc(f.state)}">${badge(f.state)}</td>
          <td class="num">${f.version}</td>
          <td class="runtime">${esc(f.runtime || "")}</td>
          <td class="num idle">${f.instances.idle}</td>
          <td class="num busy">${f.instances.busy}</td>
          <td class="num booting">${f.instances.booting}</td>
          <td class="num invocations">${f.invocations}</td>
          <td class="num">${bytes(f.memory.rss)}</td>
          <td class="num">${bytes(f.memory.pss)}</td>
          <td class="error-text">${esc(f.error || "")}</td>
        </tr>`).join("");
    },
  });
  return () => charts.forEach((c) => c.destroy());
}
