//! What of the host each runtime sees: an allow-list of host paths bound
//! read-only into its sandboxes, declared here, once per runtime.
//!
//! Everything else of the host is absent: `/work`, `/home`, `/opt`,
//! `/root`, `/srv`, `/var`, `/run`, `/mnt`, the rest of `/etc`, ... (the
//! root is an empty tmpfs; see [`super::mounts`]). Paths missing on a host
//! are skipped; a path under one already bound is not bound again; a
//! symbolic link is recreated as the same link when its target stays
//! inside what the sandbox sees, its target is bound in its place
//! otherwise. `/etc/passwd` and `/etc/group` are not the host's: the
//! sandbox gets its own, naming only `root` and the function's user.

use std::path::PathBuf;

/// Host paths one runtime needs, bound read-only at the same place.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeBinds {
    /// The runtime's name (the spec's `runtime`).
    pub name: &'static str,
    /// What it needs beyond [`BASE`].
    pub paths: &'static [&'static str],
}

/// What every runtime needs: the distribution's programs and libraries
/// (merged `/usr`: `/bin`, `/lib`, `/lib64`, `/sbin` are links into it),
/// the dynamic loader's cache, the alternatives links `/usr/bin` goes
/// through, time zone, TLS roots, and name resolution for `outbound`
/// functions (`resolv.conf`, `hosts`, `nsswitch.conf`, `gai.conf`,
/// `host.conf`, `services`, `protocols`).
pub const BASE: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/mime.types",
];

/// `python3`: the interpreter and its standard library are under `/usr`;
/// Debian's per-version configuration is in `/etc`.
pub const PYTHON3: RuntimeBinds = RuntimeBinds {
    name: "python3",
    paths: &["/usr/bin/python3", "/etc/python3", "/etc/python3.11"],
};

/// `node20`: the binary, its global modules, Debian's shared modules.
pub const NODE20: RuntimeBinds = RuntimeBinds {
    name: "node20",
    paths: &[
        "/usr/bin/node",
        "/usr/lib/node_modules",
        "/usr/share/nodejs",
    ],
};

/// `java17`: the JDK and its configuration (the JDK's `conf` links into
/// `/etc/java-17-openjdk`).
pub const JAVA17: RuntimeBinds = RuntimeBinds {
    name: "java17",
    paths: &["/usr/lib/jvm", "/etc/java-17-openjdk"],
};

/// Every runtime thaw knows.
pub const RUNTIMES: &[RuntimeBinds] = &[PYTHON3, NODE20, JAVA17];

/// The runtime called `name`, if thaw knows it.
pub fn for_runtime(name: &str) -> Option<&'static RuntimeBinds> {
    RUNTIMES.iter().find(|r| r.name == name)
}

impl RuntimeBinds {
    /// [`BASE`] and this runtime's own paths, in binding order.
    pub fn paths(&self) -> Vec<PathBuf> {
        BASE.iter().chain(self.paths).map(PathBuf::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_is_found_and_keeps_private_places_out() {
        for r in RUNTIMES {
            assert_eq!(for_runtime(r.name).unwrap().name, r.name);
            for p in r.paths() {
                let s = p.to_str().unwrap();
                assert!(p.is_absolute(), "{s}");
                for private in [
                    "/work", "/home", "/opt", "/root", "/srv", "/var", "/run", "/tmp",
                ] {
                    assert!(
                        !(s == private || s.starts_with(&format!("{private}/"))),
                        "{} binds {s}",
                        r.name
                    );
                }
                assert_ne!(s, "/etc", "{} binds all of /etc", r.name);
            }
        }
        assert!(for_runtime("cobol").is_none());
    }
}
