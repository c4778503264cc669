//! Small readers of `/proc/pid/*` files shared by the capture modules.

use std::collections::HashMap;

use super::CaptureError;

/// Reads `/proc/<pid>/<name>` as text.
pub fn read_text(pid: i32, name: &str) -> Result<String, CaptureError> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_to_string(&path).map_err(|source| CaptureError::Proc { path, source })
}

/// Reads `/proc/<pid>/<name>` as bytes.
pub fn read_bytes(pid: i32, name: &str) -> Result<Vec<u8>, CaptureError> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read(&path).map_err(|source| CaptureError::Proc { path, source })
}

/// Reads the target of the link `/proc/<pid>/<name>`.
pub fn read_link(pid: i32, name: &str) -> Result<String, CaptureError> {
    let path = format!("/proc/{pid}/{name}");
    std::fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| CaptureError::Proc { path, source })
}

/// `/proc/pid/status` as `key -> value` (value trimmed).
#[derive(Debug)]
pub struct Status {
    pid: i32,
    fields: HashMap<String, String>,
}

impl Status {
    /// Reads and splits `/proc/pid/status`.
    pub fn read(pid: i32) -> Result<Status, CaptureError> {
        Ok(Status::parse(pid, &read_text(pid, "status")?))
    }

    /// Splits the text of a status file.
    pub fn parse(pid: i32, text: &str) -> Status {
        let fields = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        Status { pid, fields }
    }

    fn bad(&self, key: &str, what: &str) -> CaptureError {
        CaptureError::Parse {
            path: format!("/proc/{}/status", self.pid),
            what: format!("field {key}: {what}"),
        }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Result<&str, CaptureError> {
        self.fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.bad(key, "missing"))
    }

    /// A hexadecimal mask such as `SigCgt`.
    pub fn hex(&self, key: &str) -> Result<u64, CaptureError> {
        u64::from_str_radix(self.get(key)?, 16).map_err(|_| self.bad(key, "not hexadecimal"))
    }

    /// An octal value such as `Umask`.
    pub fn octal(&self, key: &str) -> Result<u32, CaptureError> {
        u32::from_str_radix(self.get(key)?, 8).map_err(|_| self.bad(key, "not octal"))
    }

    /// Whitespace-separated decimal numbers such as `Uid` or `Groups`.
    pub fn numbers(&self, key: &str) -> Result<Vec<u32>, CaptureError> {
        self.get(key)?
            .split_whitespace()
            .map(|n| n.parse().map_err(|_| self.bad(key, "not a number")))
            .collect()
    }

    /// A single decimal number such as `Threads`.
    pub fn number(&self, key: &str) -> Result<u64, CaptureError> {
        self.get(key)?
            .parse()
            .map_err(|_| self.bad(key, "not a number"))
    }

    /// Four ids such as `Uid` (real, effective, saved, filesystem).
    pub fn ids(&self, key: &str) -> Result<[u32; 4], CaptureError> {
        let ids = self.numbers(key)?;
        ids.try_into().map_err(|_| self.bad(key, "not four ids"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_status() {
        let status = Status::read(std::process::id() as i32).unwrap();
        assert_eq!(status.octal("Umask").unwrap() & !0o777, 0);
        assert!(status.number("Threads").unwrap() >= 1);
        let _ = status.ids("Uid").unwrap();
        let _ = status.numbers("Groups").unwrap();
        let _ = status.hex("SigCgt").unwrap();
        assert!(status.get("NoSuchField").is_err());
    }
}
