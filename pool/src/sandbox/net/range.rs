//! IPv4 networks (`A.B.C.D/N`): the sandbox address range and allowed
//! destinations.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Range {
    base: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Range {
    /// The network `base/prefix`; refuses host bits and prefixes over 32.
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Ipv4Range, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32"));
        }
        let range = Ipv4Range { base, prefix };
        if u32::from(base) & !range.mask() != 0 {
            return Err(format!(
                "{base}/{prefix} has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(base) & range.mask())
            ));
        }
        Ok(range)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The first address.
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `i`th address of the network, if inside.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size()).then(|| Ipv4Addr::from(u32::from(self.base) + i as u32))
    }

    /// Whether `addr` is in the network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.base)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Range) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }
}

impl FromStr for Ipv4Range {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Range, String> {
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not A.B.C.D/N"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("{addr:?}: {e} (invalid IPv4 address)"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        Ipv4Range::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_contain() {
        let r: Ipv4Range = "100.96.0.0/12".parse().unwrap();
        assert_eq!(r.size(), 1 << 20);
        assert!(r.contains("100.111.255.255".parse().unwrap()));
        assert!(!r.contains("100.112.0.0".parse().unwrap()));
        assert_eq!(r.nth(1), Some("100.96.0.1".parse().unwrap()));
        assert_eq!(r.nth(1 << 20), None);
        let cgnat: Ipv4Range = "100.64.0.0/10".parse().unwrap();
        assert!(cgnat.overlaps(&r) && r.overlaps(&cgnat));
        assert!("0.0.0.0/0"
            .parse::<Ipv4Range>()
            .unwrap()
            .contains(Ipv4Addr::BROADCAST));
        assert!("10.0.0.1/8"
            .parse::<Ipv4Range>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.0.0.0".parse::<Ipv4Range>().is_err());
    }
}
