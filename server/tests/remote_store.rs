//! The shared store against a real Garage (test-support/garage.rs): a
//! captured process is uploaded with `thaw store push`, downloaded into an
//! empty folder with `thaw store pull`, verified and restored; a second
//! upload sends nothing; an upload killed midway resumes without sending
//! committed packs again; the bucket's objects hold no plaintext and open
//! with no other key; a damaged object is named in the error.
//! Needs root (ptrace) and the garage binary (`./dev.sh s3` installs it).

mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use garage::{Garage, BUCKET};
use object_store::ObjectStore;
use serde_json::Value;

const PREFIX: &str = "t";
const MARKER: &str = "THAW-PLAINTEXT-MARKER-";

/// Fills 6 MiB with random bytes and ~440 KB with a known text, prints a
/// digest of both, waits on stdin, prints the digest again.
const PROGRAM: &str = r#"
import hashlib, os, sys
data = bytearray(os.urandom(6 << 20))
text = ("THAW-PLAINTEXT-" + "MARKER-") * 20000
def digest():
    return hashlib.sha256(bytes(data) + text.encode()).hexdigest()
sys.stdout.write("ready " + digest() + "\n")
sys.stdout.flush()
sys.stdin.read(1)
sys.stdout.write(digest() + "\n")
sys.stdout.flush()
"#;

fn new_key() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn thaw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
}

/// `thaw ARGS` pointed at the test's Garage with `key`.
fn thaw_s3(g: &Garage, key: &str, args: &[&str]) -> Output {
    let mut c = thaw();
    c.args(args);
    for (k, v) in g.env() {
        c.env(k, v);
    }
    c.env("THAW_STORE_URL", format!("s3://{BUCKET}/{PREFIX}"))
        .env("THAW_STORE_KEY", key)
        .env_remove("THAW_STORE_KEY_FILE")
        .env_remove("THAW_FAILPOINT");
    c.output().unwrap()
}

fn json_ok(what: &str, out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Starts the program and captures it into `dir` with `thaw snapshot`;
/// returns its digest.
fn capture(dir: &Path) -> String {
    let line = common::c_programs::capture_at_first_line(
        Command::new("/usr/bin/python3").args(["-c", PROGRAM]),
        dir,
    );
    line.strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the program said {line:?}"))
        .trim()
        .to_string()
}

/// Restores `dir` and returns what the copy prints after resuming.
fn restore(dir: &Path, mode: &str) -> String {
    let copy = common::c_programs::run_copy(dir, mode);
    assert!(
        copy.code == 0,
        "the copy ({mode}) exited with {}: {}{}",
        copy.code,
        copy.printed,
        copy.log
    );
    copy.printed.trim().to_string()
}

fn prerequisites() -> Result<Garage, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("thaw snapshot and thaw restore need root (ptrace, pid namespaces)".into());
    }
    if !Path::new("/usr/bin/python3").exists() {
        return Err("/usr/bin/python3 is missing".into());
    }
    Garage::start()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A plain S3 client on the test's bucket (no thaw key).
fn s3(g: &Garage) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&g.endpoint)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .with_region(garage::REGION)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .build()
        .unwrap()
}

/// Every object under `folder/` of the prefix: (path, e_tag, last modified).
fn listing(g: &Garage, folder: &str) -> Vec<(String, Option<String>, String)> {
    use futures_util::TryStreamExt;
    let rt = runtime();
    let prefix = object_store::path::Path::from(format!("{PREFIX}/{folder}"));
    let mut all: Vec<_> = rt
        .block_on(s3(g).list(Some(&prefix)).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| {
            (
                m.location.to_string(),
                m.e_tag,
                m.last_modified.to_rfc3339(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_snapshot_uploaded_then_downloaded_into_an_empty_store_verifies_and_restores() {
    let g = match prerequisites() {
        Ok(g) => g,
        Err(why) => skip!("{why}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let digest = capture(&a);
    let key = new_key();

    let first = json_ok(
        "first push",
        &thaw_s3(
            &g,
            &key,
            &["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()],
        ),
    );
    println!("first push: {first}");
    let pages = first["pages"].as_u64().unwrap();
    assert!(
        pages > 1536,
        "6 MiB of random bytes are 1536 pages: {first}"
    );
    assert_eq!(first["pages_sent"], pages);
    assert_eq!(first["pages_in_bucket"], 0);
    assert_eq!(first["manifest_sent"], true);
    assert!(first["packs_sent"].as_u64().unwrap() >= pages / 256);

    // The second upload finds everything there and writes nothing.
    let before = listing(&g, "");
    let second = json_ok(
        "second push",
        &thaw_s3(
            &g,
            &key,
            &["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()],
        ),
    );
    println!("second push: {second}");
    assert_eq!(second["pages_in_bucket"], pages);
    assert_eq!(second["pages_sent"], 0);
    assert_eq!(second["objects_sent"], 0);
    assert_eq!(second["bytes_sent"], 0);
    assert_eq!(second["manifest_sent"], false);
    assert_eq!(
        listing(&g, ""),
        before,
        "the second push changed the bucket"
    );

    let status = json_ok(
        "remote-status",
        &thaw_s3(&g, &key, &["store", "remote-status", "py"]),
    );
    assert_eq!(status["snapshot"]["complete"], true, "{status}");
    assert_eq!(status["uncommitted_packs"], 0, "{status}");

    // Into an empty folder: every page fetched and verified.
    let pulled = json_ok(
        "pull",
        &thaw_s3(
            &g,
            &key,
            &["store", "pull", "py", "--snapshot-dir", b.to_str().unwrap()],
        ),
    );
    println!("pull: {pulled}");
    assert_eq!(pulled["pages"], pages);
    assert_eq!(pulled["pages_fetched"], pages);
    let verify = thaw()
        .args(["store", "verify", "--data-dir"])
        .arg(&b)
        .output()
        .unwrap();
    let report = json_ok("thaw store verify", &verify);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["snapshots_checked"], 1, "{report}");
    assert_eq!(report["objects_checked"], pages, "{report}");
    for mode in ["mmap", "uffd"] {
        assert_eq!(
            restore(&b, mode),
            digest,
            "the copy restored from the download ({mode})"
        );
    }
}

/// `thaw store pull` into a server's data directory keeps the bucket's
/// working set as the snapshot's fetch set (`<id>.fetchset`), as the
/// server's own pulls do: the node's copies record their own plan
/// (`<id>.workingset`) from their first invocation, since the set recorded
/// at deploy as a plan made an mmap copy's first invocation ×2.5 slower
/// (docs/cluster.md). Into a `thaw snapshot` folder it stays the folder's
/// `.workingset`, the plan of `thaw restore DIR`.
#[test]
fn a_pull_into_a_data_directory_keeps_the_buckets_working_set_as_its_fetch_set() {
    let g = match prerequisites() {
        Ok(g) => g,
        Err(why) => skip!("{why}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, data) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("data"),
    );
    capture(&a);
    // A working set for the folder: the first stored pages of its largest
    // area with stored pages, as a copy would have recorded them.
    let (snapshot, _store) = snapshotter::snapshot::open_snapshot_dir(&a).unwrap();
    let (area, pages) = snapshot
        .state
        .areas
        .iter()
        .zip(&snapshot.areas)
        .max_by_key(|(_, p)| {
            p.iter()
                .filter(|s| matches!(s, snapshotter::store::PageSlot::Hash(_)))
                .count()
        })
        .unwrap();
    let set: Vec<u64> = pages
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, snapshotter::store::PageSlot::Hash(_)))
        .take(16)
        .map(|(i, _)| area.start + i as u64 * 4096)
        .collect();
    assert_eq!(set.len(), 16, "an area with 16 stored pages");
    pool::restore::working_set::save(&a.join("snapshot.workingset"), &set).unwrap();
    let key = new_key();
    let pushed = json_ok(
        "push",
        &thaw_s3(
            &g,
            &key,
            &["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()],
        ),
    );
    assert_eq!(pushed["working_set_sent"], true, "{pushed}");

    let pulled = json_ok(
        "pull into a data directory",
        &thaw_s3(
            &g,
            &key,
            &["store", "--data-dir", data.to_str().unwrap(), "pull", "py"],
        ),
    );
    assert_eq!(pulled["working_set"], true, "{pulled}");
    let snapshots = data.join("snapshots");
    let fetch = pool::restore::working_set::fetch_path(&snapshots, "py");
    assert_eq!(
        pool::restore::working_set::load(&fetch).unwrap(),
        Some(set.clone()),
        "the bucket's set as the fetch set"
    );
    assert!(
        !pool::restore::working_set::path(&snapshots, "py").exists(),
        "the node's copies record their own plan"
    );

    let pulled = json_ok(
        "pull into a folder",
        &thaw_s3(
            &g,
            &key,
            &["store", "pull", "py", "--snapshot-dir", b.to_str().unwrap()],
        ),
    );
    assert_eq!(pulled["working_set"], true, "{pulled}");
    assert_eq!(
        pool::restore::working_set::load(&b.join("snapshot.workingset")).unwrap(),
        Some(set),
        "the folder's plan"
    );
}

#[test]
fn objects_in_the_bucket_hold_no_plaintext_and_open_with_no_other_key() {
    let g = match prerequisites() {
        Ok(g) => g,
        Err(why) => skip!("{why}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    capture(&a);
    let key = new_key();
    json_ok(
        "push",
        &thaw_s3(
            &g,
            &key,
            &["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()],
        ),
    );

    // Raw objects, fetched with a plain S3 client: no page of the snapshot
    // in the clear (the marker text fills ~100 pages), no page hash in a
    // name.
    let store = snapshotter::store::PageStore::open(a.join("store")).unwrap();
    let root = store.load_root("snapshot").unwrap();
    let hashes: Vec<String> = root
        .areas
        .iter()
        .flat_map(|a| a.hashes().map(|h| h.to_hex()))
        .collect();
    let rt = runtime();
    let client = s3(&g);
    let objects = listing(&g, "");
    assert!(objects.len() > 8, "{objects:?}");
    let mut marker_pages = 0;
    for h in &hashes {
        let page = store.get(&h.parse().unwrap()).unwrap();
        if page.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
            marker_pages += 1;
        }
    }
    assert!(
        marker_pages >= 100,
        "the marker is in {marker_pages} pages of the snapshot"
    );
    for (path, _, _) in &objects {
        let name = path.rsplit('/').next().unwrap();
        assert!(
            !hashes.iter().any(|h| h == name),
            "{path} is named by a page hash"
        );
        let bytes = rt
            .block_on(async {
                client
                    .get(&object_store::path::Path::from(path.as_str()))
                    .await?
                    .bytes()
                    .await
            })
            .unwrap();
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{path} holds plaintext"
        );
    }

    // Another key finds nothing under its names...
    let other = new_key();
    let out = thaw_s3(
        &g,
        &other,
        &[
            "store",
            "pull",
            "py",
            "--snapshot-dir",
            tmp.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot py is not in s3://thaw-test/t"),
        "{err}"
    );
    // ...and the objects themselves, copied under its names, do not
    // decrypt with it: the error names the object.
    let names = |k: &str| {
        remote_store::RemoteStore::connect(
            "s3://thaw-test/t".parse().unwrap(),
            &remote_store::StoreKey::from_hex(k).unwrap(),
            remote_store::AmazonS3Builder::new()
                .with_endpoint(&g.endpoint)
                .with_access_key_id(&g.key_id)
                .with_secret_access_key(&g.secret)
                .with_region(garage::REGION)
                .with_allow_http(true),
        )
        .unwrap()
    };
    let (mine, theirs) = (names(&key), names(&other));
    let kind = remote_store::Kind::Snapshot;
    let from = mine.object_path(kind, &mine.name(kind, b"py"));
    let to = theirs.object_path(kind, &theirs.name(kind, b"py"));
    rt.block_on(client.copy(&from.as_str().into(), &to.as_str().into()))
        .unwrap();
    let out = thaw_s3(
        &g,
        &other,
        &[
            "store",
            "pull",
            "py",
            "--snapshot-dir",
            tmp.path().join("y").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "s3://thaw-test/{to}: does not decrypt with this store key"
        )),
        "{err}"
    );

    // A damaged pack slot fails the download with the pack and slot named.
    let (pack, _, _) = objects
        .iter()
        .find(|(p, _, _)| p.contains("/packs/"))
        .unwrap();
    let path = object_store::path::Path::from(pack.as_str());
    let mut bytes = rt
        .block_on(async { client.get(&path).await?.bytes().await })
        .unwrap()
        .to_vec();
    let at = remote_store::seal::slot_range(3, 4).start as usize + 100;
    bytes[at] ^= 0x55;
    rt.block_on(client.put(&path, bytes.into())).unwrap();
    let out = thaw_s3(
        &g,
        &key,
        &[
            "store",
            "pull",
            "py",
            "--snapshot-dir",
            tmp.path().join("z").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "s3://thaw-test/{pack}, page slot 3: does not decrypt with this store key"
        )),
        "{err}"
    );
}

#[test]
fn an_upload_killed_midway_resumes_without_sending_committed_packs_again() {
    let g = match prerequisites() {
        Ok(g) => g,
        Err(why) => skip!("{why}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    capture(&a);
    let key = new_key();
    let mut c = thaw();
    c.args(["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()]);
    for (k, v) in g.env() {
        c.env(k, v);
    }
    let out = c
        .env("THAW_STORE_URL", format!("s3://{BUCKET}/{PREFIX}"))
        .env("THAW_STORE_KEY", &key)
        .env("THAW_FAILPOINT", "remote-pack-committed")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the push should abort after its first pack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = listing(&g, "packidx");
    let packs_before = listing(&g, "packs");
    assert!(
        !committed.is_empty(),
        "no pack was committed before the abort"
    );
    assert!(
        listing(&g, "snapshots").is_empty(),
        "the manifest went up before the pages"
    );

    let resumed = json_ok(
        "resumed push",
        &thaw_s3(
            &g,
            &key,
            &["store", "push", "py", "--snapshot-dir", a.to_str().unwrap()],
        ),
    );
    println!(
        "{} packs committed before the abort; resumed push: {resumed}",
        committed.len()
    );
    let pages = resumed["pages"].as_u64().unwrap();
    let in_bucket = resumed["pages_in_bucket"].as_u64().unwrap();
    assert!(in_bucket >= 256 * committed.len() as u64 - 256, "{resumed}");
    assert!(in_bucket > 0, "{resumed}");
    assert_eq!(resumed["pages_sent"].as_u64().unwrap(), pages - in_bucket);
    // The committed packs were not written again.
    let packs_after = listing(&g, "packs");
    for (idx, _, _) in &committed {
        let name = idx.rsplit('/').next().unwrap();
        let before = packs_before.iter().find(|p| p.0.ends_with(name)).unwrap();
        let after = packs_after.iter().find(|p| p.0.ends_with(name)).unwrap();
        assert_eq!(before, after, "pack {name} was sent again");
    }
    let status = json_ok(
        "remote-status",
        &thaw_s3(&g, &key, &["store", "remote-status", "py"]),
    );
    assert_eq!(status["snapshot"]["complete"], true, "{status}");
    let pulled = json_ok(
        "pull",
        &thaw_s3(
            &g,
            &key,
            &[
                "store",
                "pull",
                "py",
                "--snapshot-dir",
                tmp.path().join("b").to_str().unwrap(),
            ],
        ),
    );
    assert_eq!(pulled["pages_fetched"], pages);
}
