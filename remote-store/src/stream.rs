//! Large objects streamed through files: sealed in chunks, sent in parts,
//! read back chunk by chunk, so that memory stays bounded whatever their
//! size (dependency layers: docs/cluster.md, "Functions with a dependency
//! file").
//!
//! A streamed object:
//!
//! ```text
//! 0   8  magic "THAWSTRM"
//! 8   4  format version, u32 LE (1)
//! 12  4  kind, u32 LE (see Kind::tag)
//! 16  4  chunk size c: plaintext bytes of every frame but the last, u32 LE
//! 20  4  zero
//! 24  .. frames, each: nonce (24, random) | XChaCha20-Poly1305 ciphertext
//!        of its plaintext | tag (16); every frame holds c bytes but the
//!        last, which holds 0..=c (an empty payload is one empty frame).
//!        Associated data of frame i: the 24 header bytes, the object's
//!        path under the store prefix, i as u64 LE, then 1 for the last
//!        frame and 0 for the others.
//! ```
//!
//! Binding the index and the last-frame flag into each tag means frames
//! cannot be reordered, dropped or cut off at the end without the reader
//! noticing. Objects written whole by [`crate::seal`] (`THAWSEAL`, the
//! format of dependency layers before this one) are still read: whole, in
//! memory, as before.
//!
//! Writing reads a local file [`CHUNK`] bytes at a time and sends the frames
//! as one object (one request when it is at most one [`PART`]) or as a
//! multipart upload of [`PART`]-sized parts, at most [`PARTS_IN_FLIGHT`] at
//! a time: at most `(PARTS_IN_FLIGHT + 1) * PART` bytes are held. Reading
//! decrypts frames as the response arrives and writes their plaintext to
//! the caller's writer, hashing it with blake3 on the way.

use std::path::Path;

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, Tag};
use chacha20poly1305::XNonce;
use futures_util::StreamExt;
use object_store::WriteMultipart;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::bucket::{ObjectError, RemoteStore};
use crate::key::{Keys, Kind};
use crate::seal;

const MAGIC: &[u8; 8] = b"THAWSTRM";
const FORMAT: u32 = 1;
const HEADER_LEN: usize = 24;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Plaintext bytes per frame.
pub const CHUNK: usize = 1 << 20;
/// Bytes per part of a multipart upload (S3 wants at least 5 MiB for every
/// part but the last).
pub const PART: usize = 6 << 20;
/// Parts of one upload sent at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Largest chunk size a reader accepts (it buffers one frame).
const MAX_CHUNK: u32 = 16 << 20;

/// What a streamed read delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streamed {
    /// Plaintext bytes written to the caller's writer.
    pub bytes: u64,
    /// blake3 of those bytes.
    pub blake3: blake3::Hash,
}

fn header(kind: Kind, chunk: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&kind.tag().to_le_bytes());
    h[16..20].copy_from_slice(&chunk.to_le_bytes());
    h
}

fn frame_aad(header: &[u8; HEADER_LEN], path: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + path.len() + 9);
    aad.extend_from_slice(header);
    aad.extend_from_slice(path.as_bytes());
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad
}

/// Seals the frames of one object, in order.
struct Sealer<'k> {
    keys: &'k Keys,
    header: [u8; HEADER_LEN],
    path: String,
    index: u64,
}

impl<'k> Sealer<'k> {
    fn new(keys: &'k Keys, kind: Kind, path: String) -> Sealer<'k> {
        Sealer {
            keys,
            header: header(kind, CHUNK as u32),
            path,
            index: 0,
        }
    }

    /// The frame of `plaintext` (the next one; `last` for the final one).
    fn frame(&mut self, plaintext: &[u8], last: bool) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aad = frame_aad(&self.header, &self.path, self.index, last);
        let tag = self
            .keys
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encrypts any chunk");
        out.extend_from_slice(&tag);
        self.index += 1;
        out
    }
}

/// Opens the frames of one object as its bytes arrive.
struct Opener<'k> {
    keys: &'k Keys,
    kind: Kind,
    path: String,
    header: Option<[u8; HEADER_LEN]>,
    frame_len: usize,
    index: u64,
    buf: Vec<u8>,
}

impl<'k> Opener<'k> {
    fn new(keys: &'k Keys, kind: Kind, path: String) -> Opener<'k> {
        Opener {
            keys,
            kind,
            path,
            header: None,
            frame_len: 0,
            index: 0,
            buf: Vec::new(),
        }
    }

    /// Takes the next bytes of the object; returns the plaintext of the
    /// frames now known not to be the last.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, seal::OpenError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.header.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(out);
            }
            self.read_header()?;
        }
        // A frame followed by more bytes is not the last one.
        let mut at = 0;
        while self.buf.len() - at > self.frame_len {
            out.push(self.open(at, self.frame_len, false)?);
            at += self.frame_len;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// The end of the object: the last frame's plaintext.
    fn finish(mut self) -> Result<Vec<u8>, seal::OpenError> {
        if self.header.is_none() {
            return Err(seal::OpenError::Malformed(format!(
                "{} bytes",
                self.buf.len()
            )));
        }
        let len = self.buf.len();
        if len < NONCE_LEN + TAG_LEN {
            return Err(seal::OpenError::Malformed(format!(
                "cut off: its last frame has {len} bytes"
            )));
        }
        self.open(0, len, true)
    }

    fn read_header(&mut self) -> Result<(), seal::OpenError> {
        let h: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("length checked");
        if h[..8] != MAGIC[..] {
            return Err(seal::OpenError::Malformed("bad magic".into()));
        }
        let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if word(8) != FORMAT {
            return Err(seal::OpenError::Malformed(format!(
                "unsupported streamed format version {}",
                word(8)
            )));
        }
        if word(12) != self.kind.tag() {
            return Err(seal::OpenError::Malformed(format!(
                "holds kind {}, not {:?}",
                word(12),
                self.kind
            )));
        }
        let chunk = word(16);
        if chunk == 0 || chunk > MAX_CHUNK || word(20) != 0 {
            return Err(seal::OpenError::Malformed(format!(
                "chunk size {chunk} (at most {MAX_CHUNK})"
            )));
        }
        self.frame_len = NONCE_LEN + chunk as usize + TAG_LEN;
        self.header = Some(h);
        self.buf.drain(..HEADER_LEN);
        Ok(())
    }

    fn open(&mut self, at: usize, len: usize, last: bool) -> Result<Vec<u8>, seal::OpenError> {
        let header = self.header.as_ref().expect("header read");
        let frame = &mut self.buf[at..at + len];
        let (nonce, rest) = frame.split_at_mut(NONCE_LEN);
        let (text, tag) = rest.split_at_mut(len - NONCE_LEN - TAG_LEN);
        let tag = Tag::<chacha20poly1305::XChaCha20Poly1305>::clone_from_slice(tag);
        let aad = frame_aad(header, &self.path, self.index, last);
        self.keys
            .cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad, text, &tag)
            .map_err(|_| seal::OpenError::Undecryptable)?;
        self.index += 1;
        Ok(text.to_vec())
    }
}

/// How [`RemoteStore::get_blob_to`] reads what arrives.
enum Mode {
    /// Fewer than 8 bytes so far.
    Undecided(Vec<u8>),
    /// Sealed in one piece: collected, opened at the end.
    Whole(Vec<u8>),
    /// Streamed: opened frame by frame.
    Streamed,
}

impl RemoteStore {
    /// Writes the file `file` as the object of `kind` addressed by
    /// `address`, in the streamed format, without holding it in memory.
    /// Returns the bytes sent (sealed).
    pub async fn put_blob_file(
        &self,
        kind: Kind,
        address: &[u8],
        file: &Path,
    ) -> Result<u64, ObjectError> {
        let name = self.name(kind, address);
        let object = self.describe(kind, &name);
        let local = |source| ObjectError::File {
            object: object.clone(),
            file: file.to_path_buf(),
            source,
        };
        let mut input = tokio::fs::File::open(file).await.map_err(local)?;
        let len = input.metadata().await.map_err(local)?.len();
        let frames = len.div_ceil(CHUNK as u64).max(1);
        let sealed_len = HEADER_LEN as u64 + len + frames * (NONCE_LEN + TAG_LEN) as u64;
        let mut sealer = Sealer::new(&self.keys, kind, RemoteStore::rel(kind, &name));
        let mut chunk = vec![0u8; CHUNK];
        let mut next_frame = async |sealer: &mut Sealer<'_>, i: u64| {
            let want = if i + 1 == frames {
                (len - i * CHUNK as u64) as usize
            } else {
                CHUNK
            };
            input.read_exact(&mut chunk[..want]).await.map_err(local)?;
            Ok::<_, ObjectError>(sealer.frame(&chunk[..want], i + 1 == frames))
        };

        if sealed_len <= PART as u64 {
            let mut whole = Vec::with_capacity(sealed_len as usize);
            whole.extend_from_slice(&sealer.header);
            for i in 0..frames {
                whole.extend_from_slice(&next_frame(&mut sealer, i).await?);
            }
            self.put_raw(kind, &name, whole).await?;
            return Ok(sealed_len);
        }

        let upload = self
            .client()
            .put_multipart(&self.path(kind, &name))
            .await
            .map_err(self.request(kind, &name))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
        parts.write(&sealer.header);
        for i in 0..frames {
            let frame = match next_frame(&mut sealer, i).await {
                Ok(frame) => frame,
                Err(e) => {
                    let _ = parts.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = parts.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = parts.abort().await;
                return Err(self.request(kind, &name)(e));
            }
            parts.put(Bytes::from(frame));
        }
        parts.finish().await.map_err(self.request(kind, &name))?;
        self.count_sent(sealed_len);
        Ok(sealed_len)
    }

    /// Reads the object of `kind` addressed by `address` into `out`, frame
    /// by frame (streamed format), or whole for an object sealed in one
    /// piece; `None` if it is not there. The plaintext is hashed on the
    /// way; `out` is flushed.
    pub async fn get_blob_to<W: AsyncWrite + Unpin>(
        &self,
        kind: Kind,
        address: &[u8],
        out: &mut W,
    ) -> Result<Option<Streamed>, ObjectError> {
        let name = self.name(kind, address);
        let object = self.describe(kind, &name);
        let got = match self.client().get(&self.path(kind, &name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request(kind, &name)(e)),
        };
        let rel = RemoteStore::rel(kind, &name);
        let open_error = |source| ObjectError::Open {
            object: object.clone(),
            source,
        };
        let local = |source| ObjectError::File {
            object: object.clone(),
            file: "(the download's destination)".into(),
            source,
        };
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut fetched = 0u64;
        let mut stream = got.into_stream();
        let mut opener = Opener::new(&self.keys, kind, rel.clone());
        // The first 8 bytes tell the format: objects sealed whole (the
        // older format) are read whole.
        let mut mode = Mode::Undecided(Vec::new());
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(self.request(kind, &name))?;
            fetched += bytes.len() as u64;
            let plain = match &mut mode {
                Mode::Whole(all) => {
                    all.extend_from_slice(&bytes);
                    continue;
                }
                Mode::Undecided(head) => {
                    head.extend_from_slice(&bytes);
                    if head.len() < MAGIC.len() {
                        continue;
                    }
                    let head = std::mem::take(head);
                    if head.starts_with(seal::SEAL_MAGIC) {
                        mode = Mode::Whole(head);
                        continue;
                    }
                    mode = Mode::Streamed;
                    opener.push(&head)
                }
                Mode::Streamed => opener.push(&bytes),
            };
            for plain in plain.map_err(open_error)? {
                hasher.update(&plain);
                written += plain.len() as u64;
                out.write_all(&plain).await.map_err(local)?;
            }
        }
        self.count_fetched(fetched);
        let last = match mode {
            Mode::Whole(all) => seal::open(&self.keys, kind, &rel, all).map_err(open_error)?,
            Mode::Undecided(head) => {
                opener.push(&head).map_err(open_error)?;
                opener.finish().map_err(open_error)?
            }
            Mode::Streamed => opener.finish().map_err(open_error)?,
        };
        hasher.update(&last);
        written += last.len() as u64;
        out.write_all(&last).await.map_err(local)?;
        out.flush().await.map_err(local)?;
        Ok(Some(Streamed {
            bytes: written,
            blake3: hasher.finalize(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::StoreKey;

    fn seal_all(keys: &Keys, kind: Kind, path: &str, payload: &[u8]) -> Vec<u8> {
        let mut s = Sealer::new(keys, kind, path.into());
        let mut out = s.header.to_vec();
        let chunks: Vec<&[u8]> = if payload.is_empty() {
            vec![&[]]
        } else {
            payload.chunks(CHUNK).collect()
        };
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            out.extend_from_slice(&s.frame(c, i + 1 == n));
        }
        out
    }

    fn open_all(
        keys: &Keys,
        kind: Kind,
        path: &str,
        sealed: &[u8],
        step: usize,
    ) -> Result<Vec<u8>, seal::OpenError> {
        let mut o = Opener::new(keys, kind, path.into());
        let mut out = Vec::new();
        for piece in sealed.chunks(step) {
            for p in o.push(piece)? {
                out.extend_from_slice(&p);
            }
        }
        out.extend_from_slice(&o.finish()?);
        Ok(out)
    }

    #[test]
    fn frames_open_in_order_whatever_the_pieces_and_nothing_else_opens() {
        let keys = Keys::derive(&StoreKey::generate());
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 77] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal_all(&keys, Kind::Code, "code/a", &payload);
            for step in [1000, 65536, sealed.len().max(1)] {
                assert_eq!(
                    open_all(&keys, Kind::Code, "code/a", &sealed, step).unwrap(),
                    payload,
                    "{len} bytes in pieces of {step}"
                );
            }
        }
        let payload = vec![5u8; 2 * CHUNK + 10];
        let sealed = seal_all(&keys, Kind::Code, "code/a", &payload);
        let frame = NONCE_LEN + CHUNK + TAG_LEN;
        // Another path, another key, another kind.
        let other = Keys::derive(&StoreKey::generate());
        assert_eq!(
            open_all(&keys, Kind::Code, "code/b", &sealed, 4096),
            Err(seal::OpenError::Undecryptable)
        );
        assert_eq!(
            open_all(&other, Kind::Code, "code/a", &sealed, 4096),
            Err(seal::OpenError::Undecryptable)
        );
        assert!(matches!(
            open_all(&keys, Kind::Function, "code/a", &sealed, 4096),
            Err(seal::OpenError::Malformed(_))
        ));
        // Cut after a whole frame: that frame was not sealed as the last.
        let cut = &sealed[..HEADER_LEN + 2 * frame];
        assert_eq!(
            open_all(&keys, Kind::Code, "code/a", cut, 4096),
            Err(seal::OpenError::Undecryptable)
        );
        // Frames swapped.
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&sealed[HEADER_LEN + frame..HEADER_LEN + 2 * frame]);
        swapped.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + frame]);
        swapped.extend_from_slice(&sealed[HEADER_LEN + 2 * frame..]);
        assert_eq!(
            open_all(&keys, Kind::Code, "code/a", &swapped, 4096),
            Err(seal::OpenError::Undecryptable)
        );
        // One byte flipped.
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + frame + 100] ^= 1;
        assert_eq!(
            open_all(&keys, Kind::Code, "code/a", &flipped, 4096),
            Err(seal::OpenError::Undecryptable)
        );
        assert!(!sealed.windows(16).any(|w| w == [5u8; 16]), "encrypted");
    }
}
