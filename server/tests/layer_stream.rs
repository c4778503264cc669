//! Dependency layers stream between the writer and a reader (docs/cluster.md,
//! "Functions with a dependency file"): a layer of ~100 MB of incompressible
//! bytes is uploaded by the writer's code (`cluster::layers::upload`) and
//! installed by a reader's (`cluster::layers::install`) through a private
//! Garage, and neither holds it in memory: the growth of this process's
//! peak resident memory (`VmHWM` of /proc/self/status, reset before each
//! side through /proc/self/clear_refs) stays a small fraction of the
//! layer's size, where holding it whole (as both sides did before) grows
//! it by more than the layer (measured in the same run).
//!
//! One test in its own binary, so nothing else runs in the process while
//! it measures. Needs the garage binary (`./dev.sh s3`).

mod cluster_support;
mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::io::Write;
use std::path::Path;

use cluster_support::{store, SERIAL};
use server::build::layer::{self, LayerRef};
use server::cluster::layers;

/// MiB of the layer's big files (~105 MB).
const LAYER_MB: usize = 100;
/// The most a transfer may add to the peak resident memory.
const BOUND_MIB: u64 = 32;

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak resident memory to the current one; returns that.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM (Linux >= 4.0)");
    status_kib("VmRSS:")
}

/// Writes `mb` MiB of incompressible bytes to `path`, 1 MiB at a time.
fn incompressible(path: &Path, mb: usize, seed: &str) {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    let mut xof = h.finalize_xof();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        xof.fill(&mut buf);
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_of_100_mb_travels_without_being_held_in_memory() {
    let _serial = SERIAL.lock().await;
    let s = match store("layerstream") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let remote = s.remote();
    let dir = |what: &str| {
        tempfile::Builder::new()
            .prefix(what)
            .tempdir_in("/var/tmp")
            .unwrap()
    };
    let (cache_a, cache_b) = (dir("thaw-stream-a"), dir("thaw-stream-b"));
    let reference = LayerRef {
        key: "5a".repeat(32),
        into: ".thaw/python".into(),
    };
    let src = layer::path(cache_a.path(), &reference.key);
    std::fs::create_dir_all(src.join("big/data")).unwrap();
    for i in 0..4 {
        incompressible(
            &src.join(format!("big/data/blob{i}.bin")),
            LAYER_MB / 4,
            &format!("blob {i}"),
        );
    }
    std::fs::write(src.join("big/__init__.py"), "SIZE = 100\n").unwrap();

    // The writer.
    let rss = reset_peak();
    let obj = layers::upload(&remote, cache_a.path(), &reference)
        .await
        .unwrap();
    let writer_growth = status_kib("VmHWM:").saturating_sub(rss);
    assert!(obj.bytes >= (LAYER_MB << 20) as u64, "{obj:?}");
    let sent = remote.transfers().bytes_sent;
    assert!(sent > obj.bytes, "the bucket got {sent} bytes for {obj:?}");

    // A reader with an empty cache.
    let rss = reset_peak();
    let installed = layers::install(&remote, cache_b.path(), &reference, &obj)
        .await
        .unwrap();
    let reader_growth = status_kib("VmHWM:").saturating_sub(rss);
    let fetched = remote.transfers().bytes_fetched;
    assert!(fetched >= obj.bytes, "fetched {fetched} bytes for {obj:?}");

    let size_kib = obj.bytes / 1024;
    eprintln!(
        "layer of {:.1} MB: peak resident memory grew by {:.1} MiB on the writer ({:.3} of the layer), {:.1} MiB on the reader ({:.3})",
        obj.bytes as f64 / 1e6,
        writer_growth as f64 / 1024.0,
        writer_growth as f64 / size_kib as f64,
        reader_growth as f64 / 1024.0,
        reader_growth as f64 / size_kib as f64,
    );
    for (side, growth) in [("writer", writer_growth), ("reader", reader_growth)] {
        assert!(
            growth <= BOUND_MIB * 1024,
            "the {side}'s peak memory grew by {growth} KiB for a layer of {size_kib} KiB (bound {BOUND_MIB} MiB)"
        );
    }

    // What the reader installed is the writer's layer, and no temporary
    // file or folder is left on either side.
    assert_eq!(
        installed,
        cache_b
            .path()
            .join(layer::fetched_name(&reference.key, &obj.blake3))
    );
    let again = layer::archive_to_file(&installed, cache_b.path()).unwrap();
    assert_eq!(again.blake3, obj.blake3);
    drop(again);
    for cache in [cache_a.path(), cache_b.path()] {
        let names: Vec<String> = std::fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{}: {names:?}", cache.display());
    }

    // Sent again: the bucket has it (one HEAD, nothing sent).
    let before = remote.transfers().bytes_sent;
    let same = layers::upload(&remote, cache_a.path(), &reference)
        .await
        .unwrap();
    assert_eq!(same, obj);
    assert_eq!(remote.transfers().bytes_sent, before);

    // The measure sees what it should: the same layer held in memory, as
    // both sides did before streaming (archive, seal and PUT it whole; GET,
    // open and unpack it whole), grows the peak by more than its size.
    let rss = reset_peak();
    let tar = layer::archive(&src).unwrap();
    remote
        .put_blob(remote_store::Kind::Code, b"#whole", &tar)
        .await
        .unwrap();
    drop(tar);
    let whole_writer = status_kib("VmHWM:").saturating_sub(rss);
    let rss = reset_peak();
    let tar = remote
        .get_blob(remote_store::Kind::Code, b"#whole")
        .await
        .unwrap()
        .unwrap();
    let cache_d = dir("thaw-stream-d");
    layer::install_archive(cache_d.path(), &reference, &obj.blake3, &tar).unwrap();
    drop(tar);
    let whole_reader = status_kib("VmHWM:").saturating_sub(rss);
    eprintln!(
        "held whole instead: {:.1} MiB on the writer ({:.3} of the layer), {:.1} MiB on the reader ({:.3})",
        whole_writer as f64 / 1024.0,
        whole_writer as f64 / size_kib as f64,
        whole_reader as f64 / 1024.0,
        whole_reader as f64 / size_kib as f64,
    );
    assert!(whole_writer > size_kib && whole_reader > size_kib);

    // A catalog entry with another hash: refused, nothing installed.
    let wrong = layers::LayerObject {
        blake3: "00".repeat(32),
        bytes: obj.bytes,
    };
    let err = layers::install(&remote, dir("thaw-stream-c").path(), &reference, &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(err, layers::InstallError::Missing(_)),
        "no object has that address: {err}"
    );
}
