//! Memory of a process tree, read from outside through `/proc`: the
//! descendants of a pid (by walking the parent links of `/proc/*/stat`) and
//! the sum of their `Pss` and `Rss` from `/proc/PID/smaps_rollup`.
//!
//! The sum of PSS over a set of processes is the physical memory they use,
//! with each shared page divided among its sharers; the change of that sum
//! when N copies are added is what the N copies cost.
//!
//! [`footprint`] counts a server the way the density section reports it:
//! the server process itself and every process under it (instances, restored
//! copies, spares, their inits) by PSS, except the pages they map from
//! snapshot images, and instead the images' page cache counted whole, once
//! (resident bytes of every `*.img` under the data directory, from
//! `fincore`), mapped or not.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

/// Memory of a set of processes, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeMemory {
    /// Processes counted.
    pub processes: usize,
    /// Sum of their proportional set sizes.
    pub pss: u64,
    /// Sum of their resident set sizes (shared pages counted in each).
    pub rss: u64,
}

/// The pids of every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            todo.push(c);
        }
    }
    out.sort_unstable();
    out
}

/// The parent pid of `pid`, from `/proc/PID/stat` (`None` if it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

/// The 4th field of a stat line; the command (2nd) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// `Pss` and `Rss` of one process, bytes (`None` if it is gone or has no
/// memory, like a kernel thread).
pub fn rollup(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_rollup(&text)
}

fn parse_rollup(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some((field("Pss")?, field("Rss")?))
}

/// Σ `Pss` of the mappings of `pid` whose file is a snapshot image
/// (`…/images/….img`), bytes, from `/proc/PID/smaps`.
pub fn image_pss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map(|t| parse_image_pss(&t))
        .unwrap_or(0)
}

fn parse_image_pss(smaps: &str) -> u64 {
    let mut in_image = false;
    let mut total = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode path".
            let path = line.split_whitespace().nth(5).unwrap_or("");
            in_image = is_image(Path::new(path));
        } else if in_image {
            if let Some(rest) = line.strip_prefix("Pss:") {
                let kb: u64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                total += kb * 1024;
            }
        }
    }
    total
}

fn is_image(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "img")
        && path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "images")
}

/// Every snapshot image under `dir`.
pub fn images_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() && is_image(&p) => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Resident page cache of `files`, bytes (`fincore --bytes`).
pub fn page_cache(files: &[PathBuf]) -> Result<u64, String> {
    if files.is_empty() {
        return Ok(0);
    }
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(files)
        .output()
        .map_err(|e| format!("cannot run fincore (util-linux): {e}"))?;
    if !out.status.success() {
        // An image removed meanwhile (gc) is not an error of the others.
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("No such file") {
            return Err(format!("fincore failed: {}", err.trim()));
        }
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum())
}

/// `MemAvailable` of `/proc/meminfo`, bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a server and everything under it hold (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Σ PSS of the server and its descendants, image mappings left out.
    pub pss_without_images: u64,
    /// Resident page cache of every snapshot image, counted once.
    pub image_cache: u64,
    /// Processes counted.
    pub processes: usize,
}

impl Footprint {
    /// Both together: the memory the server's side holds.
    pub fn total(&self) -> u64 {
        self.pss_without_images + self.image_cache
    }
}

/// The footprint of the server `root` whose data directory is `data`.
pub fn footprint(root: u32, data: &Path) -> Result<Footprint, String> {
    let mut f = Footprint::default();
    for pid in std::iter::once(root).chain(descendants(root)) {
        if let Some((pss, _)) = rollup(pid) {
            f.processes += 1;
            f.pss_without_images += pss.saturating_sub(image_pss(pid));
        }
    }
    f.image_cache = page_cache(&images_under(data))?;
    Ok(f)
}

/// The memory of every descendant of `root`.
pub fn tree_memory(root: u32) -> TreeMemory {
    let mut total = TreeMemory::default();
    for pid in descendants(root) {
        if let Some((pss, rss)) = rollup(pid) {
            total.processes += 1;
            total.pss += pss;
            total.rss += rss;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn image_mappings_in_smaps() {
        let text = "\
7f0000000000-7f0000100000 r--p 00000000 08:01 123 /tmp/d/store/images/abc-def.img
Size:               1024 kB
Rss:                 512 kB
Pss:                 256 kB
7f0000100000-7f0000200000 r-xp 00000000 08:01 124 /usr/lib/libc.so.6
Pss:                 100 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Pss:                  10 kB
7f0000300000-7f0000400000 rw-p 00100000 08:01 123 /tmp/d/store/images/abc-def.img
Pss:                   4 kB
";
        assert_eq!(parse_image_pss(text), 260 * 1024);
        assert!(!is_image(Path::new("/tmp/x.img")));
        assert!(is_image(Path::new("/d/images/x.img")));
    }

    #[test]
    fn page_cache_of_a_file_just_written() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("store/images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("a.img"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(images.join("a.tmp"), vec![7u8; 1 << 20]).unwrap();
        let found = images_under(dir.path());
        assert_eq!(found, vec![images.join("a.img")]);
        // Just written, so in the page cache (a tmpfs or disk alike).
        let cached = page_cache(&found).expect("fincore");
        assert!((1 << 19..=1 << 20).contains(&cached), "{cached}");
        assert!(mem_available().is_some_and(|m| m > 0));
    }

    #[test]
    fn rollup_fields() {
        let text = "00400000-7fff [rollup]\nRss:                2048 kB\nPss:                1024 kB\nPss_Anon:  1 kB\n";
        assert_eq!(parse_rollup(text), Some((1024 * 1024, 2048 * 1024)));
    }

    #[test]
    fn finds_a_real_child_and_its_memory() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        let mem = tree_memory(me);
        assert!(mem.processes >= 1 && mem.pss > 0 && mem.rss >= mem.pss);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
