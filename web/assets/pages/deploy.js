// #/deploy: paste or upload code and settings, deploy, and watch the states
// deploying → (building →) warming → snapshotting → ready (or the failure) as
// they happen.
import { api, badge, esc } from "../api.js";

const STEPS = ["deploying", "warming", "snapshotting", "ready"];
// With a dependency file the version is `building` before it warms
// (docs/dependencies.md).
const STEPS_BUILDING = ["deploying", "building", "warming", "snapshotting", "ready"];
// Each runtime's dependency file, as in the `[dependencies]` table of
// runtimes/<folder>/runtime.toml: a package.json installs only when its
// `dependencies` object is not empty (`json_key`); one that does not parse
// is left to the installer, so it builds.
const DEPENDENCY_FILES = {
  python3: { file: "requirements.txt" },
  node20: { file: "package.json", jsonKey: "dependencies" },
};

// Whether the server will take the version through `building`.
function builds(spec) {
  const deps = DEPENDENCY_FILES[spec.runtime];
  const content = deps && spec.files && spec.files[deps.file];
  if (typeof content !== "string") return false;
  if (!deps.jsonKey) return true;
  try {
    const d = JSON.parse(content)[deps.jsonKey];
    return !!d && typeof d === "object" && !Array.isArray(d) && Object.keys(d).length > 0;
  } catch (_) {
    return true;
  }
}

const stepItems = (steps) => steps.map((s) => `<li data-step="${s}">${s}</li>`).join("");
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
        <ol class="steps" id="deploy-steps">${stepItems(STEPS)}</ol>
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

  // The steps of the version being watched: `building` only when it goes
  // through it (its files have the dependency file, or the server says so).
  let steps = STEPS;
  function setSteps(next) {
    steps = next;
    $("deploy-steps").innerHTML = stepItems(steps);
  }

  function show(state, error) {
    if (state === "building" && !steps.includes("building")) setSteps(STEPS_BUILDING);
    const at = steps.indexOf(state);
    for (const li of $("deploy-steps").children) {
      const i = steps.indexOf(li.dataset.step);
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
    setSteps(builds(spec) ? STEPS_BUILDING : STEPS);
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
