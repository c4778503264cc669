// #/deploy: paste or upload code and settings, deploy, and watch the states
// deploying → warming → snapshotting → ready (or the failure) as they happen.
import { api, badge, esc } from "../api.js";

const STEPS = ["deploying", "warming", "snapshotting", "ready"];
const EXAMPLE = `def handler(event, context):
    name = event.get("name", "world")
    print("greeting", name)
    return {"hello": name}
`;
// What the form starts from for each runtime (docs/runtimes.md).
const RUNTIMES = {
  python3: { handler: "main.handler", file: "main.py", code: EXAMPLE },
  node20: {
    handler: "index.handler",
    file: "index.js",
    code: `exports.handler = async (event, context) => {
  const name = (event && event.name) || "world";
  console.log("greeting", name);
  return { hello: name };
};
`,
  },
  java17: {
    handler: "Hello::handle",
    file: "Hello.java",
    code: `public class Hello {
    public static String handle(String event, thaw.Context context) {
        System.out.println("greeting " + event);
        return "{\\"hello\\": \\"world\\"}";
    }
}
`,
  },
};

export function mount(main, ctx) {
  main.innerHTML = `
    <h1>Deploy</h1>
    <div class="grid">
      <form id="deploy-form" class="panel stack">
        <div class="row">
          <label>Name <input id="deploy-name" required pattern="[a-z0-9][a-z0-9-]*" placeholder="my-function"></label>
          <label>Runtime <select id="deploy-runtime">${Object.keys(RUNTIMES).map((r) => `<option>${r}</option>`).join("")}</select></label>
          <label>Handler <input id="deploy-handler" value="main.handler" required></label>
        </div>
        <div class="row">
          <label>Memory (MiB) <input id="deploy-memory" type="number" min="16" value="128"></label>
          <label>Timeout (ms) <input id="deploy-timeout" type="number" min="1" value="10000"></label>
          <label>Concurrency <input id="deploy-concurrency" type="number" min="1" placeholder="default"></label>
          <label>Min instances <input id="deploy-min" type="number" min="0" placeholder="default"></label>
          <label>Keep-alive (s) <input id="deploy-keepalive" type="number" min="0" placeholder="default"></label>
        </div>
        <label>Environment (KEY=value, one a line) <textarea id="deploy-env" rows="2"></textarea></label>
        <label>File name <input id="deploy-filename" value="main.py" required></label>
        <label>Code <textarea id="deploy-code" rows="12" spellcheck="false">${esc(EXAMPLE)}</textarea></label>
        <label>Or upload files <input id="deploy-files" type="file" multiple></label>
        <p class="muted" id="deploy-uploaded"></p>
        <label>More settings (JSON object, merged in) <textarea id="deploy-extra" rows="2" placeholder='{"warmup": [{}]}'></textarea></label>
        <div class="actions"><button id="deploy-submit" type="submit">Deploy</button></div>
      </form>
      <div class="panel">
        <h2>Progress</h2>
        <ol class="steps" id="deploy-steps">${STEPS.map((s) => `<li data-step="${s}">${s}</li>`).join("")}</ol>
        <p id="deploy-status" class="muted">Not deployed yet.</p>
        <p id="deploy-failure" class="error-text"></p>
        <p id="deploy-link"></p>
      </div>
    </div>`;
  const $ = (id) => main.querySelector(`#${id}`);
  let uploaded = {};

  // Switching runtime swaps the starting handler, file and code, unless
  // they were edited.
  let shown = RUNTIMES.python3;
  $("deploy-runtime").addEventListener("change", (e) => {
    const next = RUNTIMES[e.target.value];
    for (const [id, key] of [["deploy-handler", "handler"], ["deploy-filename", "file"], ["deploy-code", "code"]]) {
      if ($(id).value === shown[key]) $(id).value = next[key];
    }
    shown = next;
  });

  $("deploy-files").addEventListener("change", async (e) => {
    uploaded = {};
    for (const file of e.target.files) uploaded[file.name] = await file.text();
    const names = Object.keys(uploaded);
    $("deploy-uploaded").textContent = names.length ? `Uploaded: ${names.join(", ")} (sent with the code above)` : "";
    if (names.length === 1) { $("deploy-filename").value = names[0]; $("deploy-code").value = uploaded[names[0]]; uploaded = {}; }
  });

  function show(state, error) {
    const at = STEPS.indexOf(state);
    for (const li of $("deploy-steps").children) {
      const i = STEPS.indexOf(li.dataset.step);
      li.className = state === "failed" ? (li.classList.contains("done") ? "done" : "")
        : i < at || state === "ready" ? "done" : i === at ? "current" : "";
    }
    if (state === "failed") {
      const cur = [...$("deploy-steps").children].find((li) => !li.classList.contains("done"));
      if (cur) cur.className = "failed";
    }
    $("deploy-status").innerHTML = `State: ${badge(state)}`;
    $("deploy-status").dataset.state = state;
    $("deploy-failure").textContent = state === "failed" ? `Failed: ${error || "no reason given"}` : "";
  }

  $("deploy-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    ctx.showError(null);
    const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
    const env = {};
    for (const line of $("deploy-env").value.split("\n")) {
      const i = line.indexOf("=");
      if (line.trim() && i > 0) env[line.slice(0, i).trim()] = line.slice(i + 1);
    }
    const spec = {
      name: $("deploy-name").value.trim(),
      runtime: $("deploy-runtime").value,
      handler: $("deploy-handler").value.trim(),
      memory_mb: num("deploy-memory"),
      timeout_ms: num("deploy-timeout"),
      concurrency: num("deploy-concurrency"),
      min_instances: num("deploy-min"),
      keep_alive_s: num("deploy-keepalive"),
      env,
      files: { ...uploaded, [$("deploy-filename").value.trim()]: $("deploy-code").value },
    };
    if ($("deploy-extra").value.trim()) {
      try { Object.assign(spec, JSON.parse($("deploy-extra").value)); } catch (err) { ctx.showError(`More settings is not JSON: ${err.message}`); return; }
    }
    for (const k of Object.keys(spec)) if (spec[k] === undefined) delete spec[k];
    $("deploy-submit").disabled = true;
    $("deploy-link").innerHTML = "";
    try {
      const view = await api("POST", "/functions", spec);
      show(view.state, view.error);
      const seen = [view.state];
      ctx.stream({ function: spec.name }, {
        function(f) {
          const v = f.view;
          if (!v || v.version !== view.version) return;
          if (seen[seen.length - 1] !== v.state) seen.push(v.state);
          show(v.state, v.error);
          $("deploy-status").title = `seen: ${seen.join(" → ")}`;
          if ((v.state === "ready" || v.state === "failed") && !$("deploy-open")) {
            $("deploy-link").innerHTML = `<a id="deploy-open" href="#/functions/${encodeURIComponent(v.name)}">Open ${esc(v.name)} version ${v.version} →</a>`;
            $("deploy-submit").disabled = false;
          }
        },
      });
    } catch (err) {
      $("deploy-submit").disabled = false;
      $("deploy-status").textContent = "Refused.";
      $("deploy-failure").textContent = err.message;
      if (err.status === 401) ctx.handle(err);
    }
  });
}
