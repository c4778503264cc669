//! Memory of a process tree, read from outside through `/proc`: the
//! descendants of a pid (by walking the parent links of `/proc/*/stat`) and
//! the sum of their `Pss` and `Rss` from `/proc/PID/smaps_rollup`.
//!
//! The sum of PSS over a set of processes is the physical memory they use,
//! with each shared page divided among its sharers; the change of that sum
//! when N copies are added is what the N copies cost.

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
