//! Parsing `/proc/pid/maps`.
//!
//! ```text
//! start-end         perms offset   dev   inode      path
//! 7f1c2a000000-7f1c2a022000 r--p 00000000 fd:01 1311012    /usr/lib/x86_64-linux-gnu/libc.so.6
//! 7ffd5e9f1000-7ffd5ea12000 rw-p 00000000 00:00 0          [stack]
//! 7f1c2a3f5000-7f1c2a3f9000 r--p 00000000 00:00 0          [vvar]
//! 55d0c4a53000-55d0c4a55000 rw-s 00000000 00:01 1041       /dev/zero (deleted)
//! ```
//!
//! The path is everything after the inode column with the padding removed;
//! it may contain spaces. A file that was unlinked gets ` (deleted)`
//! appended by the kernel.

/// One line of `/proc/pid/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` in perms.
    pub read: bool,
    /// `w` in perms.
    pub write: bool,
    /// `x` in perms.
    pub exec: bool,
    /// `s` (true) or `p` (false) in perms.
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Inode.
    pub inode: u64,
    /// Path or pseudo-name; empty for unnamed anonymous memory.
    pub path: String,
    /// The kernel appended ` (deleted)` (removed from `path`).
    pub deleted: bool,
}

/// A line that is not in the maps format.
#[derive(Debug, thiserror::Error)]
#[error("malformed /proc/pid/maps line {line:?}: {what}")]
pub struct MapsError {
    /// The offending line.
    pub line: String,
    /// What was wrong.
    pub what: &'static str,
}

/// Parses the whole content of a maps file.
pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>, MapsError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

/// Splits off the next space-separated field, skipping leading spaces.
fn field(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ');
    if rest.is_empty() {
        return None;
    }
    Some(match rest.find(' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    })
}

fn parse_line(line: &str) -> Result<MapsEntry, MapsError> {
    let bad = |what| MapsError {
        line: line.to_string(),
        what,
    };
    let hex = |s: &str, what| u64::from_str_radix(s, 16).map_err(|_| bad(what));

    let (range, rest) = field(line).ok_or_else(|| bad("no range"))?;
    let (perms, rest) = field(rest).ok_or_else(|| bad("no perms"))?;
    let (offset, rest) = field(rest).ok_or_else(|| bad("no offset"))?;
    let (dev, rest) = field(rest).ok_or_else(|| bad("no device"))?;
    let (inode, rest) = field(rest).ok_or_else(|| bad("no inode"))?;

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| bad("range without '-'"))?;
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| bad("device without ':'"))?;
    let perms = perms.as_bytes();
    if perms.len() != 4 {
        return Err(bad("perms not 4 characters"));
    }
    let mut path = rest.trim_start_matches(' ').to_string();
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path.truncate(path.len() - " (deleted)".len());
    }
    Ok(MapsEntry {
        start: hex(start, "start address")?,
        end: hex(end, "end address")?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset, "offset")?,
        major: u32::from_str_radix(major, 16).map_err(|_| bad("device major"))?,
        minor: u32::from_str_radix(minor, 16).map_err(|_| bad("device minor"))?,
        inode: inode.parse().map_err(|_| bad("inode"))?,
        path,
        deleted,
    })
}

/// What the path column names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    /// A file (inode is non-zero).
    File,
    /// Unnamed or `[anon:name]` anonymous memory.
    Anonymous,
    /// `[heap]`.
    Heap,
    /// `[stack]`.
    Stack,
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]`.
    VvarVclock,
    /// `[vsyscall]`.
    Vsyscall,
    /// `[anon_shmem:name]` or other bracketed names this code does not know.
    Other,
}

impl MapsEntry {
    /// Classifies the path column.
    pub fn pseudo(&self) -> Pseudo {
        // A System V segment's inode is its id, 0 for the first one of an
        // IPC namespace.
        if self.inode != 0 || self.path.starts_with("/SYSV") {
            return Pseudo::File;
        }
        match self.path.as_str() {
            "" => Pseudo::Anonymous,
            "[heap]" => Pseudo::Heap,
            "[stack]" => Pseudo::Stack,
            "[vdso]" => Pseudo::Vdso,
            "[vvar]" => Pseudo::Vvar,
            "[vvar_vclock]" => Pseudo::VvarVclock,
            "[vsyscall]" => Pseudo::Vsyscall,
            p if p.starts_with("[anon:") => Pseudo::Anonymous,
            _ => Pseudo::Other,
        }
    }

    /// `major:minor` folded into one number.
    pub fn dev(&self) -> u64 {
        (u64::from(self.major) << 32) | u64::from(self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c4a00000-55d0c4a53000 r--p 00000000 fd:01 1311012                    /usr/bin/python3.11
55d0c4a53000-55d0c4a55000 rw-s 00000000 00:01 1041                       /dev/zero (deleted)
55d0c5a00000-55d0c5b00000 rw-p 00000000 00:00 0                          [heap]
7f1c2a000000-7f1c2a022000 r-xp 00022000 fd:01 1311013                    /opt/my dir/lib x.so
7f1c2a100000-7f1c2a200000 rw-p 00000000 00:00 0 \n\
7f1c2a200000-7f1c2a201000 rw-p 00000000 00:00 0                          [anon:glibc: malloc]
7f1c2a3f5000-7f1c2a3f9000 r--p 00000000 00:00 0                          [vvar]
7f1c2a3f9000-7f1c2a3fb000 r--p 00000000 00:00 0                          [vvar_vclock]
7f1c2a3fb000-7f1c2a3fd000 r-xp 00000000 00:00 0                          [vdso]
7ffd5e9f1000-7ffd5ea12000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse_maps(SAMPLE).unwrap();
        assert_eq!(maps.len(), 11);
        let python = &maps[0];
        assert_eq!(python.start, 0x55d0c4a00000);
        assert_eq!(python.end, 0x55d0c4a53000);
        assert!(python.read && !python.write && !python.exec && !python.shared);
        assert_eq!(
            (python.major, python.minor, python.inode),
            (0xfd, 1, 1311012)
        );
        assert_eq!(python.path, "/usr/bin/python3.11");
        assert_eq!(python.pseudo(), Pseudo::File);

        let shm = &maps[1];
        assert!(shm.shared && shm.deleted);
        assert_eq!(shm.path, "/dev/zero");

        assert_eq!(maps[2].pseudo(), Pseudo::Heap);
        assert_eq!(maps[3].path, "/opt/my dir/lib x.so");
        assert_eq!(maps[3].offset, 0x22000);
        assert!(maps[3].exec);
        assert_eq!(maps[4].path, "");
        assert_eq!(maps[4].pseudo(), Pseudo::Anonymous);
        assert_eq!(maps[5].pseudo(), Pseudo::Anonymous);
        assert_eq!(maps[6].pseudo(), Pseudo::Vvar);
        assert_eq!(maps[7].pseudo(), Pseudo::VvarVclock);
        assert_eq!(maps[8].pseudo(), Pseudo::Vdso);
        assert_eq!(maps[9].pseudo(), Pseudo::Stack);
        assert_eq!(maps[10].pseudo(), Pseudo::Vsyscall);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_maps("hello world\n").is_err());
        assert!(parse_maps("1000-2000 rw 0 00:00 0\n").is_err());
    }

    #[test]
    fn parses_own_maps() {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let maps = parse_maps(&text).unwrap();
        assert!(maps.iter().any(|m| m.pseudo() == Pseudo::Stack));
        assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn a_system_v_segment_with_id_0_is_a_mapped_file() {
        let maps = parse_maps(
            "7ffff7fb7000-7ffff7fb9000 rw-s 00000000 00:01 0                          /SYSV00000000 (deleted)\n",
        )
        .unwrap();
        assert_eq!(maps[0].pseudo(), Pseudo::File);
        assert!(maps[0].shared && maps[0].deleted);
    }
}
