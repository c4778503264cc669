//! Client-side encryption of objects.
//!
//! A sealed object (every kind but packs):
//!
//! ```text
//! 0   8  magic "THAWSEAL"
//! 8   4  format version, u32 LE (1)
//! 12  4  kind, u32 LE (see Kind::tag)
//! 16 24  nonce (random per object)
//! 40  n  XChaCha20-Poly1305 ciphertext of the payload, then its 16-byte tag
//!        associated data: the 16 header bytes, then the object's path
//!        under the store prefix (e.g. "snapshots/<name>")
//! ```
//!
//! A pack of pages (`packs/`, and a snapshot's working-set packs in
//! `wspacks/`), laid out so that any run of slots is one ranged read and
//! decrypts on its own:
//!
//! ```text
//! 0   8  magic "THAWRPAK"
//! 8   4  format version, u32 LE (1)
//! 12  4  slot count n, u32 LE (at most MAX_PACK_PAGES)
//! 16 + i * SLOT_LEN  slot i: nonce (24, random) | ciphertext of the page
//!        (4096) | tag (16); associated data: the pack's path, then i as
//!        u32 LE
//! ```
//!
//! Binding the path (and the slot number) into the tag means an object
//! moved to another name, or a slot moved within or between packs, does
//! not decrypt. The plaintext of a page is checked against its blake3 hash
//! after decryption (`pull`), so a node with the right key still never
//! takes a page that is not the one it asked for.

use chacha20poly1305::aead::{AeadInPlace, Tag};
use chacha20poly1305::XNonce;
use snapshotter::store::PAGE_SIZE;

use crate::key::{Keys, Kind};

pub(crate) const SEAL_MAGIC: &[u8; 8] = b"THAWSEAL";
const PACK_MAGIC: &[u8; 8] = b"THAWRPAK";
const FORMAT: u32 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes before a sealed object's ciphertext.
pub const SEAL_HEADER_LEN: usize = 16 + NONCE_LEN;
/// Bytes before a pack's first slot.
pub const PACK_HEADER_LEN: u64 = 16;
/// Bytes of one slot of a pack.
pub const SLOT_LEN: u64 = (NONCE_LEN + PAGE_SIZE + TAG_LEN) as u64;
/// Most pages in one pack (a pack is at most ~4 MiB).
pub const MAX_PACK_PAGES: u32 = 1024;

/// Why an object could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Too short, wrong magic, version or kind.
    #[error("not a thaw object: {0}")]
    Malformed(String),
    /// The tag does not match: another key, or altered bytes.
    #[error("does not decrypt with this store key (another key, or altered bytes)")]
    Undecryptable,
}

fn header(magic: &[u8; 8], word: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&word.to_le_bytes());
    h
}

/// Encrypts `payload` as the object `path` (relative to the prefix) of
/// `kind`.
pub(crate) fn seal(keys: &Keys, kind: Kind, path: &str, payload: &[u8]) -> Vec<u8> {
    let header = header(SEAL_MAGIC, kind.tag());
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut out = Vec::with_capacity(SEAL_HEADER_LEN + payload.len() + TAG_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(payload);
    let aad = [&header[..], path.as_bytes()].concat();
    let tag = keys
        .cipher
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &aad,
            &mut out[SEAL_HEADER_LEN..],
        )
        .expect("XChaCha20-Poly1305 encrypts any length below 256 GiB");
    out.extend_from_slice(&tag);
    out
}

/// Decrypts the sealed object `path` of `kind`.
pub(crate) fn open(
    keys: &Keys,
    kind: Kind,
    path: &str,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>, OpenError> {
    if bytes.len() < SEAL_HEADER_LEN + TAG_LEN {
        return Err(OpenError::Malformed(format!("{} bytes", bytes.len())));
    }
    let expected = header(SEAL_MAGIC, kind.tag());
    if bytes[..8] != expected[..8] {
        return Err(OpenError::Malformed("bad magic".into()));
    }
    if bytes[8..12] != expected[8..12] {
        return Err(OpenError::Malformed(format!(
            "unsupported format version {}",
            u32::from_le_bytes(bytes[8..12].try_into().unwrap())
        )));
    }
    if bytes[12..16] != expected[12..16] {
        return Err(OpenError::Malformed(format!(
            "holds kind {}, not {:?}",
            u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
            kind
        )));
    }
    let nonce = *XNonce::from_slice(&bytes[16..SEAL_HEADER_LEN]);
    let tag_at = bytes.len() - TAG_LEN;
    let tag = Tag::<chacha20poly1305::XChaCha20Poly1305>::clone_from_slice(&bytes[tag_at..]);
    let aad = [&expected[..], path.as_bytes()].concat();
    keys.cipher
        .decrypt_in_place_detached(&nonce, &aad, &mut bytes[SEAL_HEADER_LEN..tag_at], &tag)
        .map_err(|_| OpenError::Undecryptable)?;
    bytes.truncate(tag_at);
    bytes.drain(..SEAL_HEADER_LEN);
    Ok(bytes)
}

/// Byte range of slots `first..end` in a pack.
pub fn slot_range(first: u32, end: u32) -> std::ops::Range<u64> {
    PACK_HEADER_LEN + u64::from(first) * SLOT_LEN..PACK_HEADER_LEN + u64::from(end) * SLOT_LEN
}

/// Encrypts `pages` (back to back, a multiple of PAGE_SIZE bytes) as the
/// pack `path`.
pub(crate) fn seal_pack(keys: &Keys, path: &str, pages: &[u8]) -> Vec<u8> {
    assert_eq!(pages.len() % PAGE_SIZE, 0, "pack slots hold whole pages");
    let count = (pages.len() / PAGE_SIZE) as u32;
    assert!(count <= MAX_PACK_PAGES, "{count} pages in one pack");
    let mut out = Vec::with_capacity(slot_range(0, count).end as usize);
    out.extend_from_slice(&header(PACK_MAGIC, count));
    for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
        let nonce: [u8; NONCE_LEN] = rand::random();
        out.extend_from_slice(&nonce);
        let at = out.len();
        out.extend_from_slice(page);
        let aad = slot_aad(path, i as u32);
        let tag = keys
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[at..])
            .expect("a page always encrypts");
        out.extend_from_slice(&tag);
    }
    out
}

fn slot_aad(path: &str, slot: u32) -> Vec<u8> {
    [path.as_bytes(), &slot.to_le_bytes()].concat()
}

/// Checks a pack's header (its first [`PACK_HEADER_LEN`] bytes) and returns
/// its slot count.
pub fn pack_count(header_bytes: &[u8]) -> Result<u32, OpenError> {
    if header_bytes.len() < PACK_HEADER_LEN as usize || header_bytes[..8] != PACK_MAGIC[..] {
        return Err(OpenError::Malformed("bad pack magic".into()));
    }
    let version = u32::from_le_bytes(header_bytes[8..12].try_into().unwrap());
    if version != FORMAT {
        return Err(OpenError::Malformed(format!(
            "unsupported pack format version {version}"
        )));
    }
    let count = u32::from_le_bytes(header_bytes[12..16].try_into().unwrap());
    if count > MAX_PACK_PAGES {
        return Err(OpenError::Malformed(format!("{count} slots")));
    }
    Ok(count)
}

/// Decrypts slots `first..` of the pack `path` from `bytes` (exactly the
/// bytes of [`slot_range`]); returns the plaintext pages back to back.
pub(crate) fn open_slots(
    keys: &Keys,
    path: &str,
    first: u32,
    mut bytes: Vec<u8>,
) -> Result<Vec<u8>, (u32, OpenError)> {
    let slot_len = SLOT_LEN as usize;
    if bytes.len() % slot_len != 0 {
        return Err((
            first,
            OpenError::Malformed(format!(
                "a range of {} bytes is not whole slots",
                bytes.len()
            )),
        ));
    }
    let n = bytes.len() / slot_len;
    for i in 0..n {
        let slot = &mut bytes[i * slot_len..(i + 1) * slot_len];
        let (nonce, rest) = slot.split_at_mut(NONCE_LEN);
        let (page, tag) = rest.split_at_mut(PAGE_SIZE);
        let index = first + i as u32;
        let tag = Tag::<chacha20poly1305::XChaCha20Poly1305>::clone_from_slice(tag);
        keys.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &slot_aad(path, index),
                page,
                &tag,
            )
            .map_err(|_| (index, OpenError::Undecryptable))?;
    }
    // Keep only the pages.
    let mut pages = Vec::with_capacity(n * PAGE_SIZE);
    for i in 0..n {
        let at = i * slot_len + NONCE_LEN;
        pages.extend_from_slice(&bytes[at..at + PAGE_SIZE]);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::StoreKey;

    #[test]
    fn sealed_objects_open_only_with_their_key_path_and_kind() {
        let keys = Keys::derive(&StoreKey::generate());
        let other = Keys::derive(&StoreKey::generate());
        let sealed = seal(&keys, Kind::Snapshot, "snapshots/a", b"secret payload");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            open(&keys, Kind::Snapshot, "snapshots/a", sealed.clone()).unwrap(),
            b"secret payload"
        );
        assert_eq!(
            open(&other, Kind::Snapshot, "snapshots/a", sealed.clone()),
            Err(OpenError::Undecryptable)
        );
        assert_eq!(
            open(&keys, Kind::Snapshot, "snapshots/b", sealed.clone()),
            Err(OpenError::Undecryptable)
        );
        assert!(matches!(
            open(&keys, Kind::Function, "snapshots/a", sealed.clone()),
            Err(OpenError::Malformed(_))
        ));
        let mut flipped = sealed;
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert_eq!(
            open(&keys, Kind::Snapshot, "snapshots/a", flipped),
            Err(OpenError::Undecryptable)
        );
    }

    #[test]
    fn pack_slots_decrypt_alone_and_only_in_place() {
        let keys = Keys::derive(&StoreKey::generate());
        let pages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i + 1; PAGE_SIZE]).collect();
        let pack = seal_pack(&keys, "packs/p", &pages.concat());
        assert_eq!(pack.len() as u64, slot_range(0, 5).end);
        assert_eq!(pack_count(&pack).unwrap(), 5);
        let r = slot_range(2, 4);
        let got = open_slots(
            &keys,
            "packs/p",
            2,
            pack[r.start as usize..r.end as usize].to_vec(),
        )
        .unwrap();
        assert_eq!(&got[..PAGE_SIZE], &pages[2][..]);
        assert_eq!(&got[PAGE_SIZE..], &pages[3][..]);
        // The same bytes read as other slots, or from another pack, fail.
        let err = open_slots(
            &keys,
            "packs/p",
            1,
            pack[r.start as usize..r.end as usize].to_vec(),
        )
        .unwrap_err();
        assert_eq!(err, (1, OpenError::Undecryptable));
        let err = open_slots(
            &keys,
            "packs/q",
            2,
            pack[r.start as usize..r.end as usize].to_vec(),
        )
        .unwrap_err();
        assert_eq!(err.1, OpenError::Undecryptable);
    }
}
