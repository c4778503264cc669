//! Memory of processes as the kernel accounts it, shared pages included:
//! RSS (resident), PSS (resident, each shared page divided by its sharers)
//! and USS (resident and private to the process), from
//! `/proc/PID/smaps_rollup`.

use serde::Serialize;

/// Memory of one or more processes, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// Resident set size.
    pub rss: u64,
    /// Proportional set size.
    pub pss: u64,
    /// Unique set size (private clean + private dirty).
    pub uss: u64,
}

impl MemoryUse {
    /// The three figures with their names: `rss`, `pss`, `uss`.
    pub fn kinds(&self) -> [(&'static str, u64); 3] {
        [("rss", self.rss), ("pss", self.pss), ("uss", self.uss)]
    }
}

impl std::ops::AddAssign for MemoryUse {
    fn add_assign(&mut self, o: MemoryUse) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.uss += o.uss;
    }
}

/// Parses the text of an `smaps_rollup` file.
pub fn parse_smaps_rollup(text: &str) -> MemoryUse {
    let mut m = MemoryUse::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(kb)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(kb) = kb.parse::<u64>() else { continue };
        let bytes = kb * 1024;
        match key {
            "Rss:" => m.rss = bytes,
            "Pss:" => m.pss = bytes,
            "Private_Clean:" | "Private_Dirty:" => m.uss += bytes,
            _ => {}
        }
    }
    m
}

/// Memory of one process (zero if it is gone or unreadable).
pub fn of_pid(pid: i32) -> MemoryUse {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map(|t| parse_smaps_rollup(&t))
        .unwrap_or_default()
}

/// Memory of several processes, summed.
pub fn of_pids(pids: &[i32]) -> MemoryUse {
    let mut total = MemoryUse::default();
    for pid in pids {
        total += of_pid(*pid);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rollup() {
        let text = "55a0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:   1000 kB\nPss:    400 kB\nPss_Anon: 300 kB\nShared_Clean: 500 kB\nPrivate_Clean: 100 kB\nPrivate_Dirty: 200 kB\n";
        let m = parse_smaps_rollup(text);
        assert_eq!(
            m,
            MemoryUse {
                rss: 1_024_000,
                pss: 409_600,
                uss: 307_200
            }
        );
    }

    #[test]
    fn reads_our_own_process() {
        let m = of_pid(std::process::id() as i32);
        assert!(
            m.rss > 0 && m.pss > 0 && m.pss <= m.rss && m.uss <= m.rss,
            "{m:?}"
        );
    }
}
