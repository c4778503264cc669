//! Reading a stopped process's private pages in large batches.
//!
//! The ranges found by [`super::pagemap`] are gathered into batches of up to
//! `batch_bytes` (and at most `IOV_MAX` remote pieces), each read with one
//! `process_vm_readv` into one buffer. Every page of the batch is then
//! checked for zero: zero pages are only recorded, runs of non-zero pages go
//! to the [`PageSink`] as one contiguous slice each. Areas the process
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
    /// In `process_vm_readv` / `pread` and zero checks.
    pub read: Duration,
    /// In the sink.
    pub sink: Duration,
    /// Bytes read from the process.
    pub bytes_read: u64,
    /// Bytes handed to the sink.
    pub bytes_stored: u64,
}

/// One piece of a batch: a remote range and where it landed in the buffer.
struct Piece {
    area: usize,
    area_start: u64,
    addr: u64,
    len: usize,
    readable: bool,
}

/// Reads every planned range of `pid`, sends non-zero pages to `sink` and
/// records stored and zero runs in `areas`.
pub fn read_pages(
    pid: i32,
    plans: &[AreaPlan],
    areas: &mut [MemoryArea],
    batch_bytes: usize,
    sink: &mut dyn PageSink,
) -> Result<ReadStats, MemoryError> {
    let batch_bytes =
        (batch_bytes.max(PAGE_SIZE as usize) / PAGE_SIZE as usize) * PAGE_SIZE as usize;
    let mut reader = BatchReader {
        pid,
        mem: None,
        buffer: vec![0u8; batch_bytes],
        pieces: Vec::new(),
        used: 0,
        stats: ReadStats::default(),
    };
    for plan in plans {
        let area_start = areas[plan.area].start;
        for range in &plan.ranges {
            let mut addr = range.start;
            while addr < range.end {
                if reader.used == reader.buffer.len() || reader.pieces.len() == IOV_MAX {
                    reader.flush(areas, sink)?;
                }
                let room = (reader.buffer.len() - reader.used) as u64;
                let len = (range.end - addr).min(room) as usize;
                reader.pieces.push(Piece {
                    area: plan.area,
                    area_start,
                    addr,
                    len,
                    readable: plan.readable,
                });
                reader.used += len;
                addr += len as u64;
            }
        }
    }
    reader.flush(areas, sink)?;
    Ok(reader.stats)
}

struct BatchReader {
    pid: i32,
    mem: Option<File>,
    buffer: Vec<u8>,
    pieces: Vec<Piece>,
    used: usize,
    stats: ReadStats,
}

impl BatchReader {
    fn flush(
        &mut self,
        areas: &mut [MemoryArea],
        sink: &mut dyn PageSink,
    ) -> Result<(), MemoryError> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.read_batch()?;
        let mut sink_time = Duration::ZERO;
        let page = PAGE_SIZE as usize;
        let mut offset = 0;
        for piece in &self.pieces {
            let data = &self.buffer[offset..offset + piece.len];
            let first_page = (piece.addr - piece.area_start) / PAGE_SIZE;
            let runs = &mut areas[piece.area].pages;
            // Walk the piece: runs of non-zero pages go to the sink whole.
            let mut run_start: Option<usize> = None;
            let pages = piece.len / page;
            for i in 0..=pages {
                let zero = i < pages && is_zero(&data[i * page..(i + 1) * page]);
                let end_of_run = i == pages || zero;
                if end_of_run {
                    if let Some(s) = run_start.take() {
                        let sink_started = Instant::now();
                        sink.pages(piece.area, first_page + s as u64, &data[s * page..i * page])?;
                        sink_time += sink_started.elapsed();
                        push_run(
                            runs,
                            first_page + s as u64,
                            (i - s) as u64,
                            PageRunKind::Stored,
                        );
                        self.stats.bytes_stored += ((i - s) * page) as u64;
                    }
                    if zero {
                        push_run(runs, first_page + i as u64, 1, PageRunKind::Zero);
                    }
                } else if run_start.is_none() {
                    run_start = Some(i);
                }
            }
            offset += piece.len;
        }
        self.stats.bytes_read += self.used as u64;
        self.stats.sink += sink_time;
        self.stats.read += started.elapsed() - sink_time;
        self.pieces.clear();
        self.used = 0;
        Ok(())
    }

    /// Reads all pieces into the buffer: readable ones with one
    /// `process_vm_readv`, the others through `/proc/pid/mem`.
    fn read_batch(&mut self) -> Result<(), MemoryError> {
        let mut iovecs = Vec::with_capacity(self.pieces.len());
        let mut offset = 0;
        // Readable pieces are read together, but they are not contiguous in
        // the buffer when unreadable pieces sit between them: read each
        // maximal stretch of readable pieces in one call.
        let mut stretch_start = 0;
        for piece in &self.pieces {
            if piece.readable {
                iovecs.push(libc::iovec {
                    iov_base: piece.addr as *mut libc::c_void,
                    iov_len: piece.len,
                });
            } else {
                if !iovecs.is_empty() {
                    read_scattered(self.pid, &iovecs, &mut self.buffer[stretch_start..offset])?;
                    iovecs.clear();
                }
                let mem = match &self.mem {
                    Some(mem) => mem,
                    None => {
                        let file =
                            File::open(format!("/proc/{}/mem", self.pid)).map_err(|source| {
                                MemoryError::Read {
                                    pid: self.pid,
                                    addr: piece.addr,
                                    len: piece.len,
                                    source,
                                }
                            })?;
                        self.mem.insert(file)
                    }
                };
                mem.read_exact_at(&mut self.buffer[offset..offset + piece.len], piece.addr)
                    .map_err(|source| MemoryError::Read {
                        pid: self.pid,
                        addr: piece.addr,
                        len: piece.len,
                        source,
                    })?;
                stretch_start = offset + piece.len;
            }
            offset += piece.len;
        }
        if !iovecs.is_empty() {
            read_scattered(self.pid, &iovecs, &mut self.buffer[stretch_start..offset])?;
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
