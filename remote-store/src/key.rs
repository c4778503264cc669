//! The store key, and the two keys derived from it: one encrypts objects,
//! one names them.
//!
//! A node's `store_key` is 32 random bytes, given as 64 hex digits
//! (`THAW_STORE_KEY`) or in a file (`store_key_file`: 64 hex digits, or the
//! 32 raw bytes). Nodes that share a bucket share the key. From it,
//! [`Keys::derive`] takes (blake3 `derive_key`, one context string each):
//!
//! - the object key: XChaCha20-Poly1305, a random 24-byte nonce per object
//!   or page slot (`seal`);
//! - the name key: an object's name is `blake3_keyed(name key, kind || 0 ||
//!   content address)` in hex, so nodes with the same key agree on names,
//!   and a name says nothing about the content to someone without the key.

use std::path::Path;

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// Length of the store key, bytes.
pub const KEY_LEN: usize = 32;

const SEAL_CONTEXT: &str = "thaw remote store 2026-12-06 object encryption";
const NAME_CONTEXT: &str = "thaw remote store 2026-12-06 object names";

/// The key every object in the bucket is encrypted and named with.
#[derive(Clone)]
pub struct StoreKey([u8; KEY_LEN]);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// A store key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("the store key must be 64 hex digits (32 bytes), got {0} characters that are not")]
    BadHex(usize),
    /// The key file could not be read.
    #[error("cannot read the store key file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds neither 32 bytes nor 64 hex digits.
    #[error("the store key file {0} must hold 64 hex digits or exactly 32 bytes")]
    BadFile(String),
}

impl StoreKey {
    /// A key from its 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<StoreKey, KeyError> {
        let text = text.trim();
        let bad = || KeyError::BadHex(text.len());
        if text.len() != 2 * KEY_LEN || !text.is_ascii() {
            return Err(bad());
        }
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(StoreKey(key))
    }

    /// A key from a file holding 64 hex digits or the 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<StoreKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::File {
            path: path.display().to_string(),
            source,
        })?;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(key) = StoreKey::from_hex(text) {
                return Ok(key);
            }
        }
        match <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
            Ok(key) => Ok(StoreKey(key)),
            Err(_) => Err(KeyError::BadFile(path.display().to_string())),
        }
    }

    /// A new random key.
    pub fn generate() -> StoreKey {
        StoreKey(rand::random())
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What an object holds; part of its name and of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A pack of encrypted pages.
    Pack,
    /// The page hashes of the pack of the same name (its commit).
    PackIndex,
    /// A snapshot: manifest and page locations.
    Snapshot,
    /// A snapshot's recorded working set.
    WorkingSet,
    /// A function's record (`function.json`).
    Function,
    /// A version's code, as a tar archive.
    Code,
    /// A snapshot's working-set pack: the pages a lazy restore fetches
    /// before the copy resumes, again, contiguous (laid out as a pack).
    WorkingPack,
}

impl Kind {
    /// Every kind, in the order `remote-status` shows them.
    pub const ALL: [Kind; 7] = [
        Kind::Pack,
        Kind::PackIndex,
        Kind::Snapshot,
        Kind::WorkingSet,
        Kind::Function,
        Kind::Code,
        Kind::WorkingPack,
    ];

    /// The folder of the kind under the store's prefix.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Pack => "packs",
            Kind::PackIndex => "packidx",
            Kind::Snapshot => "snapshots",
            Kind::WorkingSet => "workingsets",
            Kind::Function => "functions",
            Kind::Code => "code",
            Kind::WorkingPack => "wspacks",
        }
    }

    /// The number in sealed objects' headers.
    pub(crate) fn tag(self) -> u32 {
        match self {
            Kind::Pack => 1,
            Kind::PackIndex => 2,
            Kind::Snapshot => 3,
            Kind::WorkingSet => 4,
            Kind::Function => 5,
            Kind::Code => 6,
            Kind::WorkingPack => 7,
        }
    }
}

/// The keys derived from a [`StoreKey`].
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) cipher: XChaCha20Poly1305,
    names: [u8; KEY_LEN],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derives the object key and the name key.
    pub(crate) fn derive(key: &StoreKey) -> Keys {
        let seal = blake3::derive_key(SEAL_CONTEXT, &key.0);
        Keys {
            cipher: XChaCha20Poly1305::new(&seal.into()),
            names: blake3::derive_key(NAME_CONTEXT, &key.0),
        }
    }

    /// The name (64 hex digits) of the object of `kind` whose content
    /// address is `address`.
    pub(crate) fn name(&self, kind: Kind, address: &[u8]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.names);
        h.update(kind.folder().as_bytes());
        h.update(&[0]);
        h.update(address);
        h.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_round_trip_and_bad_ones_are_refused() {
        let key = StoreKey::generate();
        assert_eq!(StoreKey::from_hex(&key.to_hex()).unwrap().0, key.0);
        assert!(StoreKey::from_hex("abc").is_err());
        assert!(StoreKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "StoreKey(<redacted>)");
    }

    #[test]
    fn names_depend_on_the_key_and_the_kind_and_reveal_no_address() {
        let a = Keys::derive(&StoreKey([1; 32]));
        let b = Keys::derive(&StoreKey([2; 32]));
        let address = blake3::hash(b"page").as_bytes().to_vec();
        let name = a.name(Kind::Pack, &address);
        assert_eq!(
            name,
            Keys::derive(&StoreKey([1; 32])).name(Kind::Pack, &address)
        );
        assert_ne!(name, b.name(Kind::Pack, &address));
        assert_ne!(name, a.name(Kind::Snapshot, &address));
        assert_ne!(name, blake3::hash(&address).to_hex().to_string());
        assert!(!name.contains(&blake3::hash(b"page").to_hex().to_string()));
    }
}
