//! `thaw-fork-floor`: the fastest start a copy of a warm function could
//! have, measured outside thaw and outside HTTP.
//!
//! It runs `python3` with a small driver that imports a function's handler
//! from its folder (as thaw's runtime would: the folder is the working
//! directory and first on `sys.path`, thaw's `runtimes/python` second so
//! `import thaw` works), runs the function's warm-up events and a few more
//! requests, and then, `--iterations` times, `os.fork()`s a child that calls
//! the handler once and writes the encoded answer to a pipe. The parent
//! times fork → whole answer read and prints that latency in microseconds,
//! one per line: the format of the `exec=` scenarios of
//! `thaw-loadtest compare` and of the suite. A restore can approach this
//! figure but hardly beat it: the copy is already in memory and shares it.
//!
//! ```text
//! thaw-fork-floor --dir examples/numpy-pandas --iterations 20 \
//!     --event '{"store": 7, "column": "price", "min": 100.0}'
//! ```
//!
//! A function with dependencies needs its layer: `--pythonpath` puts folders
//! on `PYTHONPATH` (before the function's own `env`, which replaces it as in
//! thaw's runtime); the suite passes the layer the server installed for the
//! deployed version (`<data>/functions/<name>/v<N>/code/.thaw/python`), so
//! both import the same numpy and pandas.
//!
//! The answer travels as a 4-byte little-endian length, the child's handler
//! time (8 bytes, ns) and the JSON bytes, so the parent stops its clock when
//! the answer is complete, not when the child has finished exiting.
//!
//! `--summary-out FILE` writes what else the run saw, as JSON
//! (`loadtest::suite::forkfloor::Summary`): the CPU the forks cost (the parent's, whose `fork` copies
//! the page tables, and the children's, waited for: their handler call, their
//! copy-on-write faults, their exit) and the handler's time in each child
//! against the same handler called back to back in the warm parent. Beside a
//! restore's CPU per cold start and its first invocation (issue 16, goals 1
//! and 5), they say what making a copy costs with the kernel's own
//! mechanism, outside any sandbox.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Parser;

/// The Python side. Arguments: folder, runtime dir, handler, iterations,
/// event (JSON), warm-up events (JSON array).
const DRIVER: &str = r#"
import importlib, json, os, resource, struct, sys, time

folder, runtime_dir, handler_name, iterations, event_json, warmups_json, summary_path = sys.argv[1:8]
# Latencies go to the real stdout; whatever the function prints, to stderr.
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
os.chdir(folder)
sys.path[:0] = [folder, runtime_dir]
module_name, _, attr = handler_name.rpartition(".")
handler = getattr(importlib.import_module(module_name), attr)


class Context:
    def __init__(self, n):
        self.invocation_id = "fork-floor-%d" % n
        self.function = os.path.basename(os.path.abspath(folder))
        self.version = "0"

    def remaining_ms(self):
        return 10000


def encode(result):
    body = getattr(result, "body", result)
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


for i, ev in enumerate(json.loads(warmups_json)):
    encode(handler(ev, Context(i)))
event = json.loads(event_json)
for i in range(3):
    encode(handler(event, Context(i)))
# The warm reference: the same request back to back in this process.
warm_ns = []
for i in range(10):
    t = time.perf_counter_ns()
    encode(handler(event, Context(i)))
    warm_ns.append(time.perf_counter_ns() - t)

child_ns = []
self0 = resource.getrusage(resource.RUSAGE_SELF)
children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
for n in range(int(iterations)):
    r, w = os.pipe()
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            t = time.perf_counter_ns()
            data = encode(handler(event, Context(n)))
            took = time.perf_counter_ns() - t
            view = memoryview(struct.pack("<IQ", len(data), took) + data)
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    buf = b""
    need = None
    while need is None or len(buf) < need:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        buf += chunk
        if need is None and len(buf) >= 12:
            need = 12 + struct.unpack("<I", buf[:4])[0]
    t1 = time.perf_counter_ns()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if need is None or len(buf) < need or status != 0:
        sys.exit("fork %d: the child gave no whole answer (status %d)" % (n, status))
    child_ns.append(struct.unpack("<Q", buf[4:12])[0])
    print("%.1f" % ((t1 - t0) / 1000.0), file=out, flush=True)
self1 = resource.getrusage(resource.RUSAGE_SELF)
children1 = resource.getrusage(resource.RUSAGE_CHILDREN)

if summary_path:
    def cpu_us(a, b):
        return ((b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)) * 1e6
    summary = {
        "forks": int(iterations),
        "parent_cpu_us": cpu_us(self0, self1),
        "children_cpu_us": cpu_us(children0, children1),
        "warm_handler_us": [v / 1000.0 for v in warm_ns],
        "child_handler_us": [v / 1000.0 for v in child_ns],
    }
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, summary_path)
"#;

/// Times fork → first answer of a warm Python function, µs per line.
#[derive(Debug, Parser)]
#[command(name = "thaw-fork-floor", version)]
struct Args {
    /// The function's folder (with main.py and an optional thaw.toml).
    #[arg(long)]
    dir: PathBuf,
    /// Forks to time.
    #[arg(long, default_value_t = 20)]
    iterations: u32,
    /// The request event, JSON.
    #[arg(long, default_value = "{}")]
    event: String,
    /// thaw's Python runtime folder (for `import thaw`).
    #[arg(long, default_value = "runtimes/python")]
    runtime_dir: PathBuf,
    /// The interpreter.
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// A folder to put on `PYTHONPATH` (a dependency layer); repeatable.
    #[arg(long)]
    pythonpath: Vec<PathBuf>,
    /// Write the run's CPU and handler times here, as JSON (see the
    /// module's documentation).
    #[arg(long)]
    summary_out: Option<PathBuf>,
}

/// What the driver needs from `thaw.toml`.
#[derive(Debug, Default, serde::Deserialize)]
struct Manifest {
    #[serde(default)]
    handler: Option<String>,
    #[serde(default)]
    warmup: Vec<toml::Value>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

fn main() {
    if let Err(err) = run(Args::parse()) {
        eprintln!("thaw-fork-floor: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("bad folder {}", args.dir.display()))?;
    let runtime_dir = std::path::absolute(&args.runtime_dir)
        .with_context(|| format!("bad runtime folder {}", args.runtime_dir.display()))?;
    let manifest_path = dir.join("thaw.toml");
    let manifest: Manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("bad manifest {}", manifest_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(e).context(format!("cannot read {}", manifest_path.display())),
    };
    serde_json::from_str::<serde_json::Value>(&args.event).context("--event is not JSON")?;
    let warmups = serde_json::to_string(&manifest.warmup).context("warm-up events")?;
    let handler = manifest.handler.as_deref().unwrap_or("main.handler");
    let summary_path = match &args.summary_out {
        Some(p) => std::path::absolute(p)
            .with_context(|| format!("bad --summary-out {}", p.display()))?
            .into_os_string(),
        None => std::ffi::OsString::new(),
    };
    let mut command = Command::new(&args.python);
    if !args.pythonpath.is_empty() {
        let joined = std::env::join_paths(&args.pythonpath).context("bad --pythonpath")?;
        command.env("PYTHONPATH", joined);
    }
    let status = command
        .arg("-c")
        .arg(DRIVER)
        .arg(&dir)
        .arg(&runtime_dir)
        .arg(handler)
        .arg(args.iterations.to_string())
        .arg(&args.event)
        .arg(&warmups)
        .arg(summary_path)
        .envs(&manifest.env)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONHASHSEED", "0")
        .envs(
            [
                "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS",
            ]
            .map(|k| (k, "1")),
        )
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", args.python.display()))?;
    if !status.success() {
        bail!("the driver failed: {status}");
    }
    Ok(())
}
