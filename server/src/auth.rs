//! API tokens: who may call what.
//!
//! A token file holds one token per line, optionally prefixed by its role:
//!
//! ```text
//! # admins may deploy, delete and force cold starts
//! admin:3f9c...
//! # invoke-only tokens may invoke and read
//! invoke:8a1d...
//! 77be...            (no prefix: admin)
//! ```
//!
//! Tokens are compared in constant time and never logged.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Invoke functions and read state.
    Invoke,
    /// Everything, including deploy, delete, store maintenance and forced
    /// cold starts.
    Admin,
}

/// The tokens a server accepts. Empty: no authentication (loopback only).
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(Role, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// No tokens.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a token.
    pub fn add(&mut self, role: Role, token: &str) -> Result<()> {
        let token = token.trim();
        if token.len() < 16 {
            bail!("API tokens must be at least 16 characters long");
        }
        self.entries.push((role, token.as_bytes().to_vec()));
        Ok(())
    }

    /// Parses a token file.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut tokens = Tokens::none();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (role, token) = match line.split_once(':') {
                Some(("admin", t)) => (Role::Admin, t),
                Some(("invoke", t)) => (Role::Invoke, t),
                _ => (Role::Admin, line),
            };
            tokens
                .add(role, token)
                .with_context(|| format!("line {}", n + 1))?;
        }
        Ok(tokens)
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        Tokens::parse(&text).with_context(|| format!("in token file {}", path.display()))
    }

    /// The role of a presented token, if it is one of ours. Every token is
    /// compared, so the time taken does not tell which one matched.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, token) in &self.entries {
            if constant_time_eq(presented, token) {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_prefixes() {
        let t = Tokens::parse(
            "# c\nadmin:aaaaaaaaaaaaaaaaaaaa\ninvoke:bbbbbbbbbbbbbbbbbbbb\ncccccccccccccccccccc\n",
        )
        .unwrap();
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaaaaaaa"), Some(Role::Admin));
        assert_eq!(t.role_of(b"bbbbbbbbbbbbbbbbbbbb"), Some(Role::Invoke));
        assert_eq!(t.role_of(b"cccccccccccccccccccc"), Some(Role::Admin));
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(t.role_of(b""), None);
        assert!(format!("{t:?}").contains("count: 3"));
        assert!(!format!("{t:?}").contains("aaaa"));
    }

    #[test]
    fn short_tokens_are_refused() {
        let err = Tokens::parse("admin:short\n").unwrap_err();
        assert!(format!("{err:#}").contains("16 characters"), "{err:#}");
    }
}
