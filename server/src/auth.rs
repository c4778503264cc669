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
//! Tokens are kept only as blake3 hashes, compared in constant time
//! (`blake3::Hash` equality), and never logged: neither the time a check
//! takes nor what is kept in memory tells a token's length or content.
//!
//! What a request needs is decided by its route (the template axum matched,
//! such as `/functions/{id}`) and method, never by the shape of the path:
//! see [`required_role`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use axum::http::{HeaderMap, Method};

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
    entries: Vec<(Role, blake3::Hash)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
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
        self.entries.push((role, blake3::hash(token.as_bytes())));
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

    /// The role of a presented token, if it is one of ours. The presented
    /// token is hashed and its hash compared in constant time with every
    /// kept hash, so the time taken tells neither which one matched nor
    /// how long any of them is.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let presented = blake3::hash(presented);
        let mut found = None;
        for (role, token) in &self.entries {
            // `blake3::Hash`'s `==` is constant time.
            if presented == *token {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

/// The header that forces a cold start (admin only).
pub const COLD_HEADER: &str = "x-thaw-cold";

/// What a request to `route` (the matched route template, such as
/// `/functions/{id}/invoke`) with `method` and `headers` needs.
///
/// Invoking and reading are an invoke token's; everything else, and any
/// route not listed here, needs an admin. Test switches and forced cold
/// starts on an invocation need an admin too.
pub fn required_role(method: &Method, route: &str, headers: &HeaderMap) -> Role {
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/functions/{id}/invoke" if *method == Method::POST => {
            let switches = [COLD_HEADER, pool::instance::FAIL_PAGE_SERVER_HEADER];
            if switches.iter().any(|h| headers.contains_key(*h)) {
                Role::Admin
            } else {
                Role::Invoke
            }
        }
        "/functions"
        | "/functions/{id}"
        | "/functions/{id}/logs"
        | "/store"
        | "/store/snapshots"
        | "/metrics"
        | "/events"
            if read =>
        {
            Role::Invoke
        }
        _ => Role::Admin,
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
    fn only_hashes_are_kept() {
        let t = Tokens::parse("admin:aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        assert_eq!(t.entries[0].1, blake3::hash(b"aaaaaaaaaaaaaaaaaaaa"));
        // Presented tokens of any length are hashed, not length-checked.
        assert_eq!(t.role_of(&[b'a'; 4096]), None);
        assert_eq!(t.role_of(b"a"), None);
    }

    #[test]
    fn roles_follow_the_route_not_the_path() {
        let none = HeaderMap::new();
        let r = |m: Method, route: &str| required_role(&m, route, &none);
        assert_eq!(r(Method::POST, "/functions/{id}/invoke"), Role::Invoke);
        // A function named `invoke` is deleted through `/functions/{id}`.
        assert_eq!(r(Method::DELETE, "/functions/{id}"), Role::Admin);
        assert_eq!(r(Method::GET, "/functions/{id}"), Role::Invoke);
        assert_eq!(r(Method::POST, "/functions"), Role::Admin);
        assert_eq!(r(Method::GET, "/functions"), Role::Invoke);
        assert_eq!(r(Method::GET, "/events"), Role::Invoke);
        assert_eq!(r(Method::POST, "/store/gc"), Role::Admin);
        assert_eq!(r(Method::POST, "/store/verify"), Role::Admin);
        assert_eq!(r(Method::GET, "/somewhere/new"), Role::Admin);
        for switch in [COLD_HEADER, pool::instance::FAIL_PAGE_SERVER_HEADER] {
            let mut h = HeaderMap::new();
            h.insert(switch, "1".parse().unwrap());
            assert_eq!(
                required_role(&Method::POST, "/functions/{id}/invoke", &h),
                Role::Admin,
                "{switch}"
            );
        }
    }

    #[test]
    fn short_tokens_are_refused() {
        let err = Tokens::parse("admin:short\n").unwrap_err();
        assert!(format!("{err:#}").contains("16 characters"), "{err:#}");
    }
}
