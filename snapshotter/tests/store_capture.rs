//! Capture of a real Python process straight into the page store, then an
//! image built from the store compared byte for byte with what the capture
//! read from the process.

mod capture_support;

use std::os::unix::fs::FileExt;

use capture_support::{can_capture, have_python, python};
use snapshotter::capture::{capture, CaptureOptions, PageSink, SinkError, VecSink};
use snapshotter::store::{area_pages, AreaPages, PageSlot, PageStore, StoreSink, PAGE_SIZE};

/// Hands every batch to the store and keeps a copy.
struct Tee<'a, 'w, 's> {
    store: StoreSink<'w, 's>,
    copy: &'a mut VecSink,
}

impl PageSink for Tee<'_, '_, '_> {
    fn pages(&mut self, area: usize, first_page: u64, data: &[u8]) -> Result<(), SinkError> {
        self.copy.pages(area, first_page, data)?;
        self.store.pages(area, first_page, data)
    }
}

/// Captures `pid` into `store` as snapshot `id`; returns the page lists, the
/// number of new objects and a copy of what the capture read.
fn capture_into(store: &PageStore, pid: i32, id: &str) -> (Vec<AreaPages>, u64, VecSink) {
    let mut writer = store.writer().unwrap();
    let mut copy = VecSink::default();
    let mut tee = Tee {
        store: StoreSink::new(&mut writer),
        copy: &mut copy,
    };
    let state = capture(pid, &CaptureOptions::default(), &mut tee).unwrap();
    let stored = tee.store.into_stored();
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
    (areas, summary.new_objects, copy)
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

    let (areas, first_new, captured) = capture_into(&store, pid, "py");
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
    // The blocked process's memory has (next to) not changed: a second
    // capture of it adds (next to) nothing.
    let (_, second_new, _) = capture_into(&store, pid, "py-again");
    println!("second capture: {second_new} new objects");
    assert!(second_new * 100 <= first_new, "{second_new} of {first_new}");

    // The image holds exactly what the capture read, where the layout says.
    let image = store.image("py").unwrap();
    let mut img = vec![0u8; PAGE_SIZE];
    let mut compared = 0;
    for (area, page, data) in captured.pages() {
        let place = image.layout.areas[area];
        let slot = areas[area].iter().nth(page as usize).unwrap();
        assert!(
            matches!(slot, PageSlot::Hash(_)),
            "area {area} page {page}: {slot:?}"
        );
        image
            .file
            .read_exact_at(&mut img, place.offset + page * PAGE_SIZE as u64)
            .unwrap();
        assert!(
            img == data,
            "image differs from the capture: area {area} page {page}"
        );
        compared += 1;
    }
    println!("compared {compared} captured pages with the image");
    assert_eq!(compared, stats.logical_bytes / 4096);
    store.verify().unwrap();
    drop(worker);
}
