//! Which pages a capture stores, on a C program with known memory:
//! copy-on-write pages of a private file mapping, anonymous pages with and
//! without content, present pages behind `PROT_NONE`, a deleted file.

mod capture_support;

use capture_support::{can_capture, compile_c, wait_blocked_in_read, Worker};
use snapshotter::capture::{capture, memory, CaptureError, CaptureOptions, Refusal, VecSink};
use snapshotter::state::{AreaKind, MemoryArea, PageRun, PageRunKind, ProcessState, PAGE_SIZE};

const PROGRAM: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define PAGE 4096
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    char *file = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    volatile char touch = 0;
    for (int i = 0; i < 16; i++) touch += file[i * PAGE];
    memset(file + 3 * PAGE, 'C', PAGE);
    char *anon = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 32; i++) {
        if (i % 2 == 0) memset(anon + i * PAGE, i + 1, PAGE);
        else anon[i * PAGE] = 0;
    }
    for (int i = 32; i < 40; i++) memset(anon + i * PAGE, 0, PAGE);
    char *hidden = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(hidden, 'H', 2 * PAGE);
    mprotect(hidden, 2 * PAGE, PROT_NONE);
    int dfd = open(argv[2], O_RDONLY);
    char *deleted = mmap(NULL, 4 * PAGE, PROT_READ, MAP_PRIVATE, dfd, 0);
    close(dfd);
    unlink(argv[2]);
    if (argv[3][0] == 's' || argv[3][0] == 'S') {
        char *shared = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        shared[0] = 1;
        shared[2 * PAGE] = 3;
        if (argv[3][0] == 'S' && fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) pause();
        }
    }
    if (argv[3][0] == 't') alarm(1000);
    if (argv[3][0] == 'l') flock(fd, LOCK_SH);
    stack_t alt = { .ss_sp = malloc(65536), .ss_flags = 0, .ss_size = 65536 };
    sigaltstack(&alt, NULL);
    char line[256];
    int len = snprintf(line, sizeof line, "%lx %lx %lx %lx %lx\n", (unsigned long)file,
                       (unsigned long)anon, (unsigned long)hidden, (unsigned long)deleted,
                       (unsigned long)alt.ss_sp);
    write(4, line, len);
    char buf[64];
    for (;;) {
        ssize_t n = read(3, buf, sizeof buf);
        if (n <= 0) return 0;
        unsigned long sum = 0;
        for (int i = 0; i < 64 * PAGE; i++) sum += (unsigned char)anon[i];
        for (int i = 0; i < 16 * PAGE; i++) sum += (unsigned char)file[i];
        len = snprintf(line, sizeof line, "%lu %c\n", sum, deleted[0]);
        write(4, line, len);
    }
}
"#;

struct Setup {
    _dir: tempfile::TempDir,
    worker: Worker,
    addrs: Vec<u64>,
}

fn start(test: &str, mode: &str) -> Option<Setup> {
    if !can_capture(test) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c(dir.path(), "memory", PROGRAM)?;
    let data = dir.path().join("data");
    std::fs::write(&data, vec![b'F'; 16 * PAGE_SIZE as usize]).unwrap();
    let gone = dir.path().join("gone");
    std::fs::write(&gone, vec![b'D'; 3 * PAGE_SIZE as usize + 100]).unwrap();
    let (worker, line) = Worker::spawn(
        &bin,
        &[data.to_str().unwrap(), gone.to_str().unwrap(), mode],
    );
    wait_blocked_in_read(worker.pid());
    let addrs = line
        .split(' ')
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .collect();
    Some(Setup {
        _dir: dir,
        worker,
        addrs,
    })
}

/// The area containing `addr` and the page index of `addr` in it.
fn area_at(state: &ProcessState, addr: u64) -> (usize, &MemoryArea, u64) {
    let (i, area) = state
        .areas
        .iter()
        .enumerate()
        .find(|(_, a)| a.start <= addr && addr < a.end)
        .unwrap();
    (i, area, (addr - area.start) / PAGE_SIZE)
}

fn runs_within(area: &MemoryArea, first: u64, count: u64) -> Vec<PageRun> {
    area.pages
        .iter()
        .filter(|r| r.first < first + count && r.first + r.count > first)
        .map(|r| {
            let start = r.first.max(first);
            let end = (r.first + r.count).min(first + count);
            PageRun {
                first: start - first,
                count: end - start,
                kind: r.kind,
            }
        })
        .collect()
}

#[test]
fn stores_exactly_the_private_non_zero_pages() {
    let Some(mut setup) = start("stores_exactly_the_private_non_zero_pages", "plain") else {
        return;
    };
    let pid = setup.worker.pid();
    let mut sink = VecSink::default();
    let state = capture(pid, &CaptureOptions::default(), &mut sink).unwrap();
    let [file, anon, hidden, deleted, alt_stack] = setup.addrs[..] else {
        panic!()
    };

    // Thread registrations.
    let alt = state.main_thread().alt_stack.expect("sigaltstack was set");
    assert_eq!((alt.sp, alt.size, alt.flags), (alt_stack, 65536, 0));
    assert_ne!(
        state.main_thread().tid_address,
        0,
        "glibc sets clear_child_tid"
    );
    assert_ne!(
        state.main_thread().robust_list,
        0,
        "glibc registers a robust list"
    );
    let stored_page = |area: usize, index: u64| {
        sink.pages()
            .find(|&(a, i, _)| a == area && i == index)
            .map(|(_, _, d)| d.to_vec())
    };

    // Private file mapping: only the copy-on-write page 3 is stored.
    let (fi, farea, fpage) = area_at(&state, file);
    assert_eq!(farea.kind, AreaKind::FilePrivate);
    assert!(farea.file.is_some());
    assert_eq!(
        runs_within(farea, fpage, 16),
        vec![PageRun {
            first: 3,
            count: 1,
            kind: PageRunKind::Stored
        }]
    );
    assert_eq!(
        stored_page(fi, fpage + 3),
        Some(vec![b'C'; PAGE_SIZE as usize])
    );

    // Anonymous: even pages stored, odd pages and 32..40 zero, 40..64 untouched.
    let (ai, aarea, apage) = area_at(&state, anon);
    assert_eq!(aarea.kind, AreaKind::Anonymous);
    let mut expected = Vec::new();
    for i in 0..32 {
        let kind = if i % 2 == 0 {
            PageRunKind::Stored
        } else {
            PageRunKind::Zero
        };
        expected.push(PageRun {
            first: i,
            count: 1,
            kind,
        });
    }
    expected.pop();
    expected.push(PageRun {
        first: 31,
        count: 9,
        kind: PageRunKind::Zero,
    });
    assert_eq!(runs_within(aarea, apage, 64), expected);
    for i in (0..32).step_by(2) {
        assert_eq!(
            stored_page(ai, apage + i),
            Some(vec![i as u8 + 1; PAGE_SIZE as usize])
        );
    }

    // PROT_NONE with present pages: read through /proc/pid/mem.
    let (hi, harea, hpage) = area_at(&state, hidden);
    assert!(!harea.prot.read);
    assert_eq!(stored_page(hi, hpage), Some(vec![b'H'; PAGE_SIZE as usize]));
    assert_eq!(
        stored_page(hi, hpage + 1),
        Some(vec![b'H'; PAGE_SIZE as usize])
    );

    // Deleted file: every page inside the file is copied (the last partly).
    let (di, darea, dpage) = area_at(&state, deleted);
    assert_eq!(darea.kind, AreaKind::FileCopied);
    assert!(darea.deleted);
    assert_eq!(
        runs_within(darea, dpage, 4),
        vec![PageRun {
            first: 0,
            count: 4,
            kind: PageRunKind::Stored
        }]
    );
    let mut last = vec![b'D'; 100];
    last.resize(PAGE_SIZE as usize, 0);
    assert_eq!(stored_page(di, dpage + 3), Some(last));

    // Unchanged file areas (the program and libc) are not copied.
    for (index, area) in state.areas.iter().enumerate() {
        if area.kind == AreaKind::FileUnchanged {
            assert!(area.pages.is_empty());
            assert!(sink.pages().all(|(a, _, _)| a != index));
        }
    }

    // Every stored page equals the process's page.
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for (area, index, data) in sink.pages() {
        let area = &state.areas[area];
        let addr = area.start + index * PAGE_SIZE;
        if area.prot.read {
            memory::read_remote(pid, addr, &mut page).unwrap();
        } else {
            memory::read_mem_file(pid, addr, &mut page).unwrap();
        }
        assert!(
            capture_support::same_page(&state, addr, &page, data),
            "page at {addr:#x} differs"
        );
    }

    let sum: u64 = (0..32u64)
        .step_by(2)
        .map(|i| (i + 1) * PAGE_SIZE)
        .sum::<u64>()
        + 15 * PAGE_SIZE * u64::from(b'F')
        + PAGE_SIZE * u64::from(b'C');
    assert_eq!(setup.worker.ask("x"), format!("{sum} D"));
}

/// Anonymous shared memory only this process maps is captured (issue 19):
/// an `Anonymous` area with `shared` set, only the pages that exist in the
/// shmem object stored (pages 0 and 2 of 4 were written).
#[test]
fn own_shared_anonymous_memory_is_captured() {
    let Some(mut setup) = start("own_shared_anonymous_memory_is_captured", "shared") else {
        return;
    };
    let mut sink = VecSink::default();
    let state = capture(setup.worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    let (index, area) = state
        .areas
        .iter()
        .enumerate()
        .find(|(_, a)| a.shared && a.kind == AreaKind::Anonymous)
        .expect("the shared area");
    assert_eq!(area.len(), 4 * PAGE_SIZE);
    let stored: Vec<(u64, u8)> = sink
        .pages()
        .filter(|(a, _, _)| *a == index)
        .map(|(_, page, data)| (page, data[0]))
        .collect();
    assert_eq!(stored, vec![(0, 1), (2, 3)]);
    assert!(setup.worker.ask("x").ends_with(" D"));
}

/// Anonymous shared memory a parent and its child map: captured as one
/// tree, both keep the area, the same shmem object (device and inode), its
/// pages stored from each (the restore makes one memfd for the tree).
/// The child captured alone is refused: its parent, which a copy could
/// not share the memory with, maps it too.
#[test]
fn shared_anonymous_memory_mapped_by_another_process_is_refused_unless_in_the_tree() {
    let Some(mut setup) = start(
        "shared_anonymous_memory_mapped_by_another_process_is_refused_unless_in_the_tree",
        "Shared",
    ) else {
        return;
    };
    let mut sink = VecSink::default();
    let options = CaptureOptions {
        tree: true,
        ..CaptureOptions::default()
    };
    let (states, _) =
        snapshotter::capture::tree::capture_tree_timed(setup.worker.pid(), &options, &mut sink)
            .unwrap();
    assert_eq!(states.len(), 2);
    let shared: Vec<&MemoryArea> = states
        .iter()
        .map(|s| {
            s.areas
                .iter()
                .find(|a| a.shared && a.kind == AreaKind::Anonymous)
                .expect("the shared area in each process")
        })
        .collect();
    assert_eq!(
        (shared[0].maps_dev, shared[0].inode, shared[0].start),
        (shared[1].maps_dev, shared[1].inode, shared[1].start)
    );
    assert!(setup.worker.ask("x").ends_with(" D"));

    // The child alone: its parent, outside what is captured, maps the area.
    let parent = setup.worker.pid();
    let child: i32 = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the worker's child")
        .parse()
        .unwrap();
    let mut sink = VecSink::default();
    let err = capture(child, &CaptureOptions::default(), &mut sink).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            CaptureError::Refused {
                reason: Refusal::SharedMemory { .. },
                ..
            }
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "also mapped by pid {parent}, outside the captured process"
        )),
        "{message}"
    );
    assert!(setup.worker.ask("x").ends_with(" D"));
}

fn refusal(mode: &str, test: &str) -> Option<(Refusal, String)> {
    let mut setup = start(test, mode)?;
    let mut sink = VecSink::default();
    let err = capture(setup.worker.pid(), &CaptureOptions::default(), &mut sink).unwrap_err();
    let message = err.to_string();
    assert!(
        setup.worker.ask("x").ends_with(" D"),
        "still answers after refusal"
    );
    match err {
        CaptureError::Refused { reason, .. } => Some((reason, message)),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// An armed `alarm` used to refuse the capture; it is now captured with
/// what remained of it (issue 19), and the original keeps its alarm.
#[test]
fn armed_alarm_is_captured_with_its_remaining_time() {
    let Some(mut setup) = start("armed_alarm_is_captured_with_its_remaining_time", "t") else {
        return;
    };
    let mut sink = VecSink::default();
    let state = capture(setup.worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    assert!(state.timers.posix.is_empty());
    assert_eq!(state.timers.interval.len(), 1, "{:?}", state.timers);
    let alarm = state.timers.interval[0];
    assert_eq!(alarm.which, libc::ITIMER_REAL as u32);
    assert_eq!(alarm.interval_us, 0);
    // alarm(1000): at most 1000 s remain, and far more than none.
    assert!(
        alarm.value_us <= 1_000_000_000 && alarm.value_us > 900_000_000,
        "{alarm:?}"
    );
    assert!(setup.worker.ask("x").ends_with(" D"));
}

#[test]
fn held_file_lock_is_refused() {
    let Some((reason, message)) = refusal("l", "held_file_lock_is_refused") else {
        return;
    };
    assert!(matches!(reason, Refusal::FileLock { .. }), "{message}");
    assert!(
        message.contains("holds a file lock (1: FLOCK ADVISORY READ"),
        "{message}"
    );
}
