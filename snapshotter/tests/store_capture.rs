//! Capture of a real Python process straight into the page store, then an
//! image built from the store compared byte for byte with the process's
//! memory (it stays blocked in `read`, so its memory does not change).

mod capture_support;

use std::fs::File;
use std::os::unix::fs::FileExt;

use capture_support::{can_capture, have_python, python};
use snapshotter::capture::{capture, CaptureOptions};
use snapshotter::store::{area_pages, AreaPages, PageSlot, PageStore, StoreSink, PAGE_SIZE};

/// Captures `pid` into `store` as snapshot `id`; returns the page lists and
/// the number of new objects.
fn capture_into(store: &PageStore, pid: i32, id: &str) -> (Vec<u64>, Vec<AreaPages>, u64) {
    let mut writer = store.writer().unwrap();
    let mut sink = StoreSink::new(&mut writer);
    let state = capture(pid, &CaptureOptions::default(), &mut sink).unwrap();
    let stored = sink.into_stored();
    let areas: Vec<AreaPages> = state
        .areas
        .iter()
        .enumerate()
        .map(|(i, area)| area_pages(area, stored.get(i).map_or(&[], |v| v.as_slice())).unwrap())
        .collect();
    for (area, pages) in state.areas.iter().zip(&areas) {
        assert_eq!(pages.page_count(), area.len() / PAGE_SIZE as u64);
    }
    let summary = writer.commit_snapshot(id, &areas).unwrap();
    let starts = state.areas.iter().map(|a| a.start).collect();
    (starts, areas, summary.new_objects)
}

#[test]
fn captured_python_round_trips_through_store_and_image() {
    if !can_capture("captured_python_round_trips_through_store_and_image")
        || !have_python("captured_python_round_trips_through_store_and_image")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let (worker, _) = python("plain", &[]);
    let pid = worker.pid();

    let (starts, areas, first_new) = capture_into(&store, pid, "py");
    let stats = store.stats().unwrap();
    println!(
        "python: {} areas, {} new objects, {} stored pages, {} zero, {} file, dedup x{:.2}",
        areas.len(),
        first_new,
        stats.logical_bytes / 4096,
        stats.zero_pages,
        stats.file_pages,
        stats.dedup_ratio
    );
    // Its 8 MiB blob is 8 copies of 1 MiB: stored once.
    assert!(stats.dedup_ratio > 1.3, "{stats:?}");
    // The blocked process's memory has not changed: a second capture of it
    // adds (next to) nothing.
    let (_, _, second_new) = capture_into(&store, pid, "py-again");
    println!("second capture: {second_new} new objects");
    assert!(second_new * 100 <= first_new, "{second_new} of {first_new}");

    // The image holds exactly the process's memory.
    let image = store.image("py").unwrap();
    let mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut live = vec![0u8; PAGE_SIZE];
    let mut img = vec![0u8; PAGE_SIZE];
    let mut compared = 0;
    for ((start, pages), place) in starts.iter().zip(&areas).zip(&image.layout.areas) {
        for (i, slot) in pages.iter().enumerate() {
            if !matches!(slot, PageSlot::Hash(_)) {
                continue;
            }
            mem.read_exact_at(&mut live, start + (i * PAGE_SIZE) as u64)
                .unwrap();
            image
                .file
                .read_exact_at(&mut img, place.offset + (i * PAGE_SIZE) as u64)
                .unwrap();
            assert_eq!(live, img, "area at {start:#x} page {i}");
            compared += 1;
        }
    }
    println!("compared {compared} pages of the image with /proc/{pid}/mem");
    assert!(compared > 2048);
    store.verify().unwrap();
    drop(worker);
}
