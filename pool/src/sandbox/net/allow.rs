//! `network_allow` entries: `CIDR[:port]` destinations an outbound sandbox
//! may reach although they are private.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::range::Ipv4Range;

/// One opened destination: an IPv4 network and, optionally, one TCP/UDP
/// port (without a port, every protocol and port is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRule {
    /// The destination network.
    pub net: Ipv4Range,
    /// The one TCP and UDP port opened, if any.
    pub port: Option<u16>,
}

/// Why an `network_allow` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowRuleError {
    /// Not `A.B.C.D[/N][:PORT]`.
    #[error("{0:?} is not CIDR[:port] (for example \"10.0.0.0/8\" or \"10.1.2.3/32:5432\")")]
    Syntax(String),
    /// An IPv6 destination: sandboxes have IPv4 only.
    #[error("{0:?}: only IPv4 destinations can be opened (sandboxes have no IPv6)")]
    Ipv6(String),
    /// Bad network part.
    #[error("{entry:?}: {reason}")]
    Network {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Port 0 or not a number up to 65535.
    #[error("{0:?}: the port must be 1-65535")]
    Port(String),
    /// A destination no sandbox can ever reach (loopback, `0.0.0.0/8`).
    #[error(
        "{0:?}: loopback and 0.0.0.0/8 cannot be opened (the host's loopback is never reachable)"
    )]
    Never(String),
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    fn from_str(s: &str) -> Result<AllowRule, AllowRuleError> {
        let entry = s.trim();
        if entry.contains('[') || entry.matches(':').count() > 1 {
            return Err(AllowRuleError::Ipv6(s.to_string()));
        }
        let (net_part, port) = match entry.split_once(':') {
            Some((net, port)) => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| AllowRuleError::Port(s.to_string()))?;
                (net, Some(port))
            }
            None => (entry, None),
        };
        if net_part.is_empty() || !net_part.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(AllowRuleError::Syntax(s.to_string()));
        }
        let net = if net_part.contains('/') {
            net_part.parse::<Ipv4Range>()
        } else {
            net_part
                .parse::<Ipv4Addr>()
                .map_err(|e| e.to_string())
                .and_then(|a| Ipv4Range::new(a, 32))
        }
        .map_err(|reason| AllowRuleError::Network {
            entry: s.to_string(),
            reason,
        })?;
        let never = [
            Ipv4Range::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid"),
            Ipv4Range::new(Ipv4Addr::new(0, 0, 0, 0), 8).expect("valid"),
        ];
        if never.iter().any(|n| n.overlaps(&net)) {
            return Err(AllowRuleError::Never(s.to_string()));
        }
        Ok(AllowRule { net, port })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.net),
            None => write!(f, "{}", self.net),
        }
    }
}

impl Serialize for AllowRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AllowRule, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_and_without_port() {
        let r: AllowRule = "10.0.0.0/8".parse().unwrap();
        assert_eq!(r.net.to_string(), "10.0.0.0/8");
        assert_eq!(r.port, None);
        let r: AllowRule = "10.1.2.3:5432".parse().unwrap();
        assert_eq!(r.net.to_string(), "10.1.2.3/32");
        assert_eq!(r.port, Some(5432));
        let r: AllowRule = " 192.168.1.0/24:53 ".parse().unwrap();
        assert_eq!(r.to_string(), "192.168.1.0/24:53");
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, needle) in [
            ("", "CIDR[:port]"),
            ("db.internal:5432", "CIDR[:port]"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.1/8", "host bits"),
            ("10.0.0.0/8:0", "port"),
            ("10.0.0.0/8:70000", "port"),
            ("10.0.0.0/8:x", "port"),
            ("300.0.0.1", "invalid"),
            ("fc00::/7", "IPv6"),
            ("[fd00::1]:80", "IPv6"),
            ("127.0.0.1:7070", "loopback"),
            ("0.0.0.0/0", "loopback"),
        ] {
            let err = entry.parse::<AllowRule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{entry:?}: {err}");
        }
    }
}
