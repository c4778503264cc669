//! Writes the seed corpora of the fuzz targets with thaw's own writers:
//! `fuzz/corpus/<target>/seed-*`. Run from the repository root, as root
//! (the snapshot seed captures a real process with ptrace):
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Seeds are kept small (the whole corpus well under 2 MB): a tiny process
//! is captured, packs hold two pages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(corpus: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = corpus.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    println!("{target}/seed-{name}: {} bytes", bytes.len());
    Ok(())
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

/// A real snapshot of a small process (`sleep`), captured into its own
/// directory: its manifest, store index, root and pack.
fn snapshot_seeds(corpus: &Path) -> Result<()> {
    let mut command = Command::new("/bin/sleep");
    command
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only close_range runs between fork and exec (descriptors this
    // generator inherited would make capture refuse the process).
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("snap");
    let taken = snapshotter::snapshot::snapshot_to_dir(child.id() as i32, &out);
    let _ = child.kill();
    let _ = child.wait();
    taken?;
    let manifest = std::fs::read(out.join("snapshot.snapshot"))?;
    write(corpus, "snapshot_manifest", "sleep", &with_mode(0, &manifest))?;
    let payload = &manifest[snapshotter::store::MANIFEST_HEADER_LEN..];
    write(corpus, "snapshot_manifest", "sleep-payload", &with_mode(1, payload))?;

    let root = std::fs::read(out.join("store/roots/snapshot"))?;
    write(corpus, "store_root", "sleep", &with_mode(0, &root))?;
    let payload = &root[snapshotter::store::MANIFEST_HEADER_LEN..];
    write(corpus, "store_root", "sleep-payload", &with_mode(1, payload))?;

    let index = std::fs::read(out.join("store/index"))?;
    write(corpus, "store_index", "sleep", &with_mode(0, &index))?;
    write(corpus, "store_index", "sleep-fixed", &with_mode(1, &index))?;
    Ok(())
}

/// A store of two pages: its index (with a torn tail too) and its pack.
fn store_seeds(corpus: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = snapshotter::store::PageStore::open(dir.path())?;
    let mut pages = vec![0u8; 3 * 4096];
    pages[..4096].fill(1);
    pages[4096..8192].fill(2);
    let mut w = store.writer()?;
    let refs = w.put_batch(&pages)?;
    let area = snapshotter::store::AreaPages::from_refs(&refs);
    w.commit_snapshot("two", std::slice::from_ref(&area))?;

    let index = std::fs::read(dir.path().join("index"))?;
    write(corpus, "store_index", "two", &with_mode(0, &index))?;
    let mut torn = index.clone();
    torn.extend_from_slice(&snapshotter::store::encode_record(7, &[])[..20]);
    write(corpus, "store_index", "torn", &with_mode(0, &torn))?;

    let id = store.pack_ids()[0];
    let pack = std::fs::read(store.pack_path(id))?;
    let mut seed = id.to_le_bytes().to_vec();
    seed.extend_from_slice(&(pack.len() as u64).to_le_bytes());
    seed.extend_from_slice(&pack);
    write(corpus, "store_pack", "two", &seed)?;
    // The header alone, claiming its real length.
    let mut seed = id.to_le_bytes().to_vec();
    seed.extend_from_slice(&(pack.len() as u64).to_le_bytes());
    seed.extend_from_slice(&pack[..24]);
    write(corpus, "store_pack", "header", &seed)?;
    Ok(())
}

fn working_set_seeds(corpus: &Path) -> Result<()> {
    use pool::restore::working_set::encode;
    let pages = [0x5555_0000_0000u64, 0x7f00_0000_1000, 0x7f00_0000_0000];
    let bytes = encode(&pages);
    write(corpus, "working_set", "three", &with_mode(0, &bytes))?;
    write(
        corpus,
        "working_set",
        "three-unsummed",
        &with_mode(1, &bytes[..bytes.len() - 32]),
    )?;
    write(corpus, "working_set", "empty", &with_mode(0, &encode(&[])))?;
    Ok(())
}

fn protocol_seeds(corpus: &Path) -> Result<()> {
    use pool::protocol::{write_message, FromRuntime, PROTOCOL_VERSION};
    let msgs = [
        FromRuntime::Ready {
            pid: 2,
            runtime: "python3".into(),
            protocol: PROTOCOL_VERSION,
        },
        FromRuntime::Result {
            id: "inv-1".into(),
            status: 200,
            headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
        },
        FromRuntime::Error {
            id: "inv-2".into(),
            error_type: "ValueError".into(),
            message: "bad".into(),
            traceback: "Traceback (most recent call last):\n".into(),
        },
        FromRuntime::InitError {
            error_type: "ImportError".into(),
            message: "no module named x".into(),
            traceback: String::new(),
        },
        FromRuntime::Restored {
            ok: false,
            message: Some("hook failed".into()),
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let mut all = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let mut one = Vec::new();
        rt.block_on(write_message(&mut one, m, format!("{{\"n\": {i}}}").as_bytes()))?;
        write(corpus, "protocol_frame", &format!("msg{i}"), &one)?;
        all.extend_from_slice(&one);
    }
    write(corpus, "protocol_frame", "stream", &all)?;
    Ok(())
}

fn deploy_seeds(corpus: &Path, repo: &Path) -> Result<()> {
    for example in ["hello", "json-api"] {
        let bundle = server::bundle::read_bundle(&repo.join("examples").join(example))
            .map_err(|e| e.to_string())?;
        let archive = bundle.archive.expect("an archive");
        write(corpus, "deploy_archive", example, &with_mode(0, &archive))?;
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&archive[..]), &mut tar)?;
        write(corpus, "deploy_archive", &format!("{example}-tar"), &with_mode(1, &tar))?;

        let toml = std::fs::read(repo.join("examples").join(example).join("thaw.toml"))?;
        write(corpus, "function_spec", example, &with_mode(0, &toml))?;
        let json = serde_json::to_vec(&bundle.spec)?;
        write(corpus, "function_spec", &format!("{example}-json"), &with_mode(1, &json))?;
    }
    Ok(())
}

fn config_seeds(corpus: &Path) -> Result<()> {
    let full = "\
listen = \"127.0.0.1:7070\"
data_dir = \".thaw\"
python = \"/usr/bin/python3\"
max_body_mb = 6
memory_budget_mb = 4096
allow_forced_cold = false
stop_timeout_s = 30
memory_mode = \"uffd\"
log_format = \"json\"
log_kb_per_function = 1024
log_max_age_s = 86400
spare_sandboxes = 2
spare_sandboxes_max = 16
spare_sandboxes_burst = 16
spare_demand_half_life_s = 120
sessions_per_role = 10000
network_range = \"100.96.0.0/12\"
dns_upstream = [\"192.0.2.53\", \"192.0.2.54:5353\"]
deploy = [\"examples/hello\"]
";
    write(corpus, "config_file", "full", full.as_bytes())?;
    write(corpus, "config_file", "small", b"memory_mode = \"mmap\"\nspare_sandboxes = 0\n")?;
    Ok(())
}

fn main() -> Result<()> {
    let repo: PathBuf = std::env::current_dir()?;
    let corpus = repo.join("fuzz/corpus");
    snapshot_seeds(&corpus)?;
    store_seeds(&corpus)?;
    working_set_seeds(&corpus)?;
    protocol_seeds(&corpus)?;
    deploy_seeds(&corpus, &repo)?;
    config_seeds(&corpus)?;
    Ok(())
}
