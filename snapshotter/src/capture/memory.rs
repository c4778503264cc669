//! Reading a stopped process's private pages in large batches.
//!
//! The ranges found by [`super::pagemap`] are gathered into batches of up to
//! `batch_bytes` (and at most `IOV_MAX` remote pieces), each read with one
//! `process_vm_readv` into one buffer by a reader thread, which also checks
//! every page for zero. The calling thread records zero pages and hands runs
//! of non-zero pages to the [`PageSink`] as one contiguous slice each, while
//! the reader fills the next buffer:
//!
//! ```text
//! reader:  | read+zero 0 | read+zero 1 | read+zero 2 |
//! caller:                | sink 0      | sink 1      | sink 2 |
//! ``` Areas the process
//! cannot read itself (`PROT_NONE` with present pages) are read through
//! `/proc/pid/mem`, which may read them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::pagemap::Range;
use super::PageSink;
use crate::state::{memory::push_run, MemoryArea, PageRunKind, PAGE_SIZE};

/// Most iovecs the kernel takes in one call.
const IOV_MAX: usize = 1024;

/// Failure reading or writing another process's memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The read failed or came back short.
    #[error("reading {len} bytes at {addr:#x} of pid {pid} failed: {source}")]
    Read {
        /// The process.
        pid: i32,
        /// First address of the failed batch piece.
        addr: u64,
        /// Bytes asked for.
        len: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The write failed or came back short.
    #[error("writing {len} bytes at {addr:#x} of pid {pid} failed: {source}")]
    Write {
        /// The process.
        pid: i32,
        /// Address.
        addr: u64,
        /// Bytes.
        len: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The sink refused pages.
    #[error(transparent)]
    Sink(#[from] super::SinkError),
}

/// Reads `local.len()` bytes at `addr` of `pid` with `process_vm_readv`.
pub fn read_remote(pid: i32, addr: u64, local: &mut [u8]) -> Result<(), MemoryError> {
    let remote = [libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: local.len(),
    }];
    read_scattered(pid, &remote, local)
}

/// Reads the remote pieces `remote` of `pid`, back to back, into `local`
/// (whose length is their total).
fn read_scattered(pid: i32, remote: &[libc::iovec], local: &mut [u8]) -> Result<(), MemoryError> {
    let local_iov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    // SAFETY: the local iovec describes `local`, borrowed mutably for the
    // call; the remote iovecs only name addresses in the other process and
    // are never dereferenced here.
    let n = unsafe {
        libc::process_vm_readv(
            pid,
            &local_iov,
            1,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    if n < 0 || n as usize != local.len() {
        let source = if n < 0 {
            std::io::Error::last_os_error()
        } else {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short read: {n} bytes"),
            )
        };
        let first = remote.first().map(|r| r.iov_base as u64).unwrap_or(0);
        return Err(MemoryError::Read {
            pid,
            addr: first,
            len: local.len(),
            source,
        });
    }
    Ok(())
}

/// Writes `data` at `addr` of `pid` with `process_vm_writev`.
pub fn write_remote(pid: i32, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the local iovec describes `data`, which the kernel only reads;
    // the remote iovec names memory of the other process.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n < 0 || n as usize != data.len() {
        let source = if n < 0 {
            std::io::Error::last_os_error()
        } else {
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} bytes"),
            )
        };
        return Err(MemoryError::Write {
            pid,
            addr,
            len: data.len(),
            source,
        });
    }
    Ok(())
}

/// Whether a page holds only zero bytes.
pub fn is_zero(page: &[u8]) -> bool {
    // SAFETY: reinterpreting bytes as u64 words is valid for any bit pattern;
    // `align_to` keeps the unaligned head and tail as bytes.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && words
            .chunks(32)
            .all(|chunk| chunk.iter().fold(0, |acc, w| acc | w) == 0)
}

/// The private ranges of one area, as found by the page scan.
#[derive(Debug)]
pub struct AreaPlan {
    /// Index of the area in the state's area list.
    pub area: usize,
    /// Whether the process may read the area itself (else `/proc/pid/mem`).
    pub readable: bool,
    /// Ranges to read, in address order.
    pub ranges: Vec<Range>,
}

/// Time and volume of a page read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadStats {
    /// In `process_vm_readv` / `pread` and zero checks (reader thread).
    pub read: Duration,
    /// In the sink (calling thread).
    pub sink: Duration,
    /// Wall time of the whole read; less than `read + sink` because the
    /// two overlap.
    pub wall: Duration,
    /// Bytes read from the process.
    pub bytes_read: u64,
    /// Bytes handed to the sink.
    pub bytes_stored: u64,
}

/// One piece of a batch: a remote range, read to the next free place of the
/// batch buffer.
#[derive(Debug, Clone, Copy)]
struct Piece {
    area: usize,
    area_start: u64,
    addr: u64,
    len: usize,
    readable: bool,
}

/// A batch read by the reader thread: its buffer and, per page, whether it
/// is zero.
struct Filled {
    pieces: Vec<Piece>,
    buffer: Vec<u8>,
    zero: Vec<bool>,
}

/// Batches in flight between the reader thread and the sink: one being
/// read while the previous one is stored.
const IN_FLIGHT: usize = 2;

/// Splits the plans into batches of at most `batch_bytes` and `IOV_MAX`
/// pieces.
fn batches(plans: &[AreaPlan], areas: &[MemoryArea], batch_bytes: usize) -> Vec<Vec<Piece>> {
    let mut batches = Vec::new();
    let mut current: Vec<Piece> = Vec::new();
    let mut used = 0;
    for plan in plans {
        let area_start = areas[plan.area].start;
        for range in &plan.ranges {
            let mut addr = range.start;
            while addr < range.end {
                if used == batch_bytes || current.len() == IOV_MAX {
                    batches.push(std::mem::take(&mut current));
                    used = 0;
                }
                let len = (range.end - addr).min((batch_bytes - used) as u64) as usize;
                current.push(Piece {
                    area: plan.area,
                    area_start,
                    addr,
                    len,
                    readable: plan.readable,
                });
                used += len;
                addr += len as u64;
            }
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Reads every planned range of `pid`, sends non-zero pages to `sink` and
/// records stored and zero runs in `areas`.
///
/// A reader thread reads batch `n + 1` (and checks its pages for zero)
/// while this thread hands batch `n` to the sink; [`IN_FLIGHT`] buffers
/// circulate between them.
pub fn read_pages(
    pid: i32,
    plans: &[AreaPlan],
    areas: &mut [MemoryArea],
    batch_bytes: usize,
    sink: &mut dyn PageSink,
) -> Result<ReadStats, MemoryError> {
    let started = Instant::now();
    let page = PAGE_SIZE as usize;
    let batch_bytes = (batch_bytes.max(page) / page) * page;
    let batches = batches(plans, areas, batch_bytes);
    let mut stats = ReadStats::default();
    if batches.is_empty() {
        return Ok(stats);
    }
    let (filled_tx, filled_rx) = std::sync::mpsc::sync_channel::<Result<Filled, MemoryError>>(1);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..IN_FLIGHT.min(batches.len()) {
        free_tx
            .send(vec![0u8; batch_bytes])
            .expect("receiver alive");
    }
    let outcome = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut reader = Reader {
                pid,
                mem: None,
                read: Duration::ZERO,
            };
            for pieces in batches {
                // The sink side hung up (it failed): stop reading.
                let Ok(buffer) = free_rx.recv() else { break };
                let filled = reader.fill(pieces, buffer);
                let failed = filled.is_err();
                if filled_tx.send(filled).is_err() || failed {
                    break;
                }
            }
            reader.read
        });
        let result = store_batches(&filled_rx, &free_tx, areas, sink, &mut stats);
        // Unblock the reader if we stopped early.
        drop(filled_rx);
        drop(free_tx);
        let read = reader.join().expect("page reader thread panicked");
        stats.read = read;
        result
    });
    outcome?;
    stats.wall = started.elapsed();
    Ok(stats)
}

/// The sink side: records runs and hands non-zero runs to the sink.
fn store_batches(
    filled_rx: &std::sync::mpsc::Receiver<Result<Filled, MemoryError>>,
    free_tx: &std::sync::mpsc::Sender<Vec<u8>>,
    areas: &mut [MemoryArea],
    sink: &mut dyn PageSink,
    stats: &mut ReadStats,
) -> Result<(), MemoryError> {
    let page = PAGE_SIZE as usize;
    for filled in filled_rx.iter() {
        let filled = filled?;
        let mut offset = 0;
        for piece in &filled.pieces {
            let data = &filled.buffer[offset..offset + piece.len];
            let zero = &filled.zero[offset / page..(offset + piece.len) / page];
            let first_page = (piece.addr - piece.area_start) / PAGE_SIZE;
            let runs = &mut areas[piece.area].pages;
            // Runs of non-zero pages go to the sink whole.
            let mut run_start: Option<usize> = None;
            for i in 0..=zero.len() {
                let is_zero = i < zero.len() && zero[i];
                if i == zero.len() || is_zero {
                    if let Some(s) = run_start.take() {
                        let sink_started = Instant::now();
                        sink.pages(piece.area, first_page + s as u64, &data[s * page..i * page])?;
                        stats.sink += sink_started.elapsed();
                        push_run(
                            runs,
                            first_page + s as u64,
                            (i - s) as u64,
                            PageRunKind::Stored,
                        );
                        stats.bytes_stored += ((i - s) * page) as u64;
                    }
                    if is_zero {
                        push_run(runs, first_page + i as u64, 1, PageRunKind::Zero);
                    }
                } else if run_start.is_none() {
                    run_start = Some(i);
                }
            }
            offset += piece.len;
        }
        stats.bytes_read += offset as u64;
        // The reader may already be done; a lost buffer is then harmless.
        let _ = free_tx.send(filled.buffer);
    }
    Ok(())
}

/// The reader thread's state.
struct Reader {
    pid: i32,
    mem: Option<File>,
    read: Duration,
}

impl Reader {
    /// Reads all pieces into `buffer` and checks every page for zero.
    fn fill(&mut self, pieces: Vec<Piece>, mut buffer: Vec<u8>) -> Result<Filled, MemoryError> {
        let started = Instant::now();
        let used: usize = pieces.iter().map(|p| p.len).sum();
        self.read_pieces(&pieces, &mut buffer[..used])?;
        let zero = buffer[..used]
            .chunks_exact(PAGE_SIZE as usize)
            .map(is_zero)
            .collect();
        self.read += started.elapsed();
        Ok(Filled {
            pieces,
            buffer,
            zero,
        })
    }

    /// Readable pieces are read with one `process_vm_readv` per stretch of
    /// consecutive readable pieces, the others through `/proc/pid/mem`.
    fn read_pieces(&mut self, pieces: &[Piece], buffer: &mut [u8]) -> Result<(), MemoryError> {
        let mut iovecs = Vec::with_capacity(pieces.len());
        let mut offset = 0;
        let mut stretch_start = 0;
        for piece in pieces {
            if piece.readable {
                iovecs.push(libc::iovec {
                    iov_base: piece.addr as *mut libc::c_void,
                    iov_len: piece.len,
                });
            } else {
                if !iovecs.is_empty() {
                    read_scattered(self.pid, &iovecs, &mut buffer[stretch_start..offset])?;
                    iovecs.clear();
                }
                let pid = self.pid;
                let err = |source| MemoryError::Read {
                    pid,
                    addr: piece.addr,
                    len: piece.len,
                    source,
                };
                let mem = match &self.mem {
                    Some(mem) => mem,
                    None => self
                        .mem
                        .insert(File::open(format!("/proc/{pid}/mem")).map_err(err)?),
                };
                mem.read_exact_at(&mut buffer[offset..offset + piece.len], piece.addr)
                    .map_err(err)?;
                stretch_start = offset + piece.len;
            }
            offset += piece.len;
        }
        if !iovecs.is_empty() {
            read_scattered(self.pid, &iovecs, &mut buffer[stretch_start..offset])?;
        }
        Ok(())
    }
}

/// Reads memory through `/proc/pid/mem` (works on areas without read access).
pub fn read_mem_file(pid: i32, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
    let len = buf.len();
    let err = |source| MemoryError::Read {
        pid,
        addr,
        len,
        source,
    };
    let file = File::open(format!("/proc/{pid}/mem")).map_err(err)?;
    file.read_exact_at(buf, addr).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        page[4095] = 1;
        assert!(!is_zero(&page));
        page[4095] = 0;
        page[0] = 1;
        assert!(!is_zero(&page));
        page[0] = 0;
        assert!(is_zero(&page[1..]));
    }

    #[test]
    fn remote_read_and_write_of_self() {
        let pid = std::process::id() as i32;
        let data = vec![0x5au8; 10000];
        let mut copy = vec![0u8; 10000];
        read_remote(pid, data.as_ptr() as u64, &mut copy).unwrap();
        assert_eq!(copy, data);
        let mut target = [0u8; 16];
        let addr = target.as_mut_ptr() as u64;
        write_remote(pid, addr, b"0123456789abcdef").unwrap();
        // SAFETY: `target` is a live local array; the volatile read keeps the
        // compiler from assuming it still holds zeros.
        let seen = unsafe { std::ptr::read_volatile(&target) };
        assert_eq!(&seen, b"0123456789abcdef");
    }
}
