// #/store: objects, stored vs logical bytes, dedup, per-snapshot sharing;
// verify and gc.
import { api, bytes, esc } from "../api.js";

const PAGE = 4096;

export function mount(main, ctx) {
  main.innerHTML = `
    <h1>Page store</h1>
    <div class="cards">
      <div class="card"><div class="label">Objects</div><div class="value" id="store-objects">–</div></div>
      <div class="card"><div class="label">Stored</div><div class="value" id="store-stored">–</div></div>
      <div class="card"><div class="label">Logical</div><div class="value" id="store-logical">–</div></div>
      <div class="card"><div class="label">Dedup ratio</div><div class="value" id="store-dedup">–</div></div>
      <div class="card"><div class="label">Snapshots</div><div class="value" id="store-snapshots">–</div></div>
      <div class="card"><div class="label">Zero / file pages</div><div class="value" id="store-zero">–</div></div>
    </div>
    <div>
      <div class="panel" style="margin-bottom:16px">
        <h2>Maintenance</h2>
        <p class="muted">Verify rehashes every object; gc frees objects no snapshot uses. Both need an admin token.</p>
        <div class="actions"><button id="store-verify">Verify</button><button id="store-gc" class="secondary">Collect garbage</button></div>
        <div id="store-progress" hidden><progress></progress><span class="muted" id="store-elapsed"></span></div>
        <p id="store-summary"></p>
        <pre id="store-result" hidden></pre>
      </div>
      <div class="panel">
        <h2>Snapshots <button id="store-refresh" class="secondary" style="float:right">Refresh</button></h2>
        <div class="table-wrap">
        <table id="store-table"><thead><tr><th>Snapshot</th><th>Function</th><th class="num">Pages</th><th class="num">Stored</th><th class="num">Unique</th><th class="num">Shared</th><th class="num">Zero</th><th class="num">File</th></tr></thead>
        <tbody><tr><td colspan="8" class="muted">Loading…</td></tr></tbody></table>
        </div>
      </div>
    </div>`;
  const $ = (id) => main.querySelector(`#${id}`);

  async function loadSnapshots() {
    try {
      const r = await api("GET", "/store/snapshots");
      $("store-table").querySelector("tbody").innerHTML = r.snapshots.length
        ? r.snapshots.map((s) => `<tr>
          <td>${esc(s.id)}</td>
          <td>${s.function ? `<a href="#/functions/${encodeURIComponent(s.function)}">${esc(s.function)}</a> v${s.version}` : `<span class="muted">not in use</span>`}</td>
          <td class="num">${s.pages}</td><td class="num">${s.stored_pages}</td>
          <td class="num" title="${bytes(s.unique_pages * PAGE)}">${s.unique_pages}</td>
          <td class="num" title="${bytes(s.shared_pages * PAGE)}">${s.shared_pages}</td>
          <td class="num">${s.zero_pages}</td><td class="num">${s.file_pages}</td></tr>`).join("")
        : `<tr><td colspan="8" class="muted">No snapshots.</td></tr>`;
    } catch (err) { ctx.handle(err); }
  }

  async function run(what) {
    const buttons = [$("store-verify"), $("store-gc")];
    buttons.forEach((b) => { b.disabled = true; });
    $("store-progress").hidden = false;
    $("store-result").hidden = true;
    $("store-summary").textContent = "";
    const t0 = performance.now();
    const tick = setInterval(() => { $("store-elapsed").textContent = ` ${what} running, ${((performance.now() - t0) / 1000).toFixed(1)} s`; }, 100);
    try {
      const r = await api("POST", `/store/${what}`);
      $("store-summary").textContent = what === "verify"
        ? `${r.ok ? "Sound" : "DAMAGED"}: ${r.objects_checked} objects in ${r.packs} pack(s) and ${r.snapshots_checked} snapshots checked in ${r.elapsed_ms} ms; ${r.bad_objects.length} bad objects, ${r.missing_objects.length} missing.`
        : `Freed ${r.objects_freed} objects (${bytes(r.bytes_freed)}) in ${r.elapsed_ms} ms; ${r.live_objects} objects live in ${r.snapshots} snapshots.`;
      $("store-summary").className = what === "verify" && !r.ok ? "error-text" : "";
      $("store-result").textContent = JSON.stringify(r, null, 2);
      $("store-result").classList.toggle("error-text", what === "verify" && !r.ok);
      $("store-result").dataset.done = what;
      $("store-result").hidden = false;
      loadSnapshots();
    } catch (err) {
      ctx.handle(err);
    } finally {
      clearInterval(tick);
      $("store-progress").hidden = true;
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  $("store-verify").addEventListener("click", () => run("verify"));
  $("store-gc").addEventListener("click", () => run("gc"));
  $("store-refresh").addEventListener("click", loadSnapshots);
  loadSnapshots();

  ctx.stream({}, {
    overview(o) {
      const s = o.store;
      if (!s) return;
      $("store-objects").textContent = s.objects;
      $("store-stored").textContent = bytes(s.stored_bytes);
      $("store-logical").textContent = bytes(s.logical_bytes);
      $("store-dedup").textContent = `${Number(s.dedup_ratio).toFixed(2)}×`;
      $("store-snapshots").textContent = s.snapshots;
      $("store-zero").textContent = `${s.zero_pages} / ${s.file_pages}`;
    },
  });
}
