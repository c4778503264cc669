//! The runtime protocol codec: typed frames between thaw and a function's
//! runtime (see `docs/protocol.md`, which is the contract).
//!
//! Requests travel on the runtime's fd 3, answers on its fd 4. Every message,
//! in either direction, is one frame:
//!
//! ```text
//! +----------------+----------------+------------------------+----------------+
//! | header_len u32 | body_len u32   | header: UTF-8 JSON obj | body: raw bytes|
//! | little endian  | little endian  | header_len bytes       | body_len bytes |
//! +----------------+----------------+------------------------+----------------+
//! ```
//!
//! * `header_len` ≤ [`MAX_HEADER_LEN`] (1 MiB), `body_len` ≤ [`MAX_BODY_LEN`]
//!   (1 GiB) or a smaller limit chosen by the reader. A larger value means the
//!   stream is corrupt: the reader stops with [`ProtocolError::TooLarge`] and
//!   the stream must not be used again.
//! * The header is a JSON object whose `type` field names the message
//!   ([`ToRuntime`] from thaw, [`FromRuntime`] from the runtime). Unknown
//!   fields are ignored.
//! * The body is opaque bytes: the event or the answer.
//!
//! Thaw writes [`ToRuntime`] frames with [`write_frame`] and reads
//! [`FromRuntime`] frames with [`read_frame`] (or [`read_frame_limited`]).
//! The generic [`write_message`] / [`read_message`] speak the same framing for
//! any serde type; tests use them to play the runtime's side.
//!
//! None of the functions is cancel-safe: a read or write dropped half-way (by
//! a timeout, say) leaves the stream in the middle of a frame, and the stream
//! (with its runtime) must then be discarded.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this codec speaks (sent by the runtime in `ready`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest header a frame may carry: 1 MiB.
pub const MAX_HEADER_LEN: usize = 1 << 20;

/// Largest body a frame may carry: 1 GiB.
pub const MAX_BODY_LEN: usize = 1 << 30;

/// Length of the fixed prefix (`header_len`, `body_len`).
pub const PREFIX_LEN: usize = 8;

/// Bodies up to this size are written together with the header in one write,
/// so that a small frame costs one syscall and arrives in one piece.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Part of the body buffer reserved up front: a lying `body_len` must not make
/// the reader allocate a gigabyte before any byte arrived.
const INITIAL_BODY_RESERVE: usize = 16 << 20;

/// A message from thaw to the runtime (fd 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRuntime {
    /// Run the handler once on the frame's body (the event).
    Invoke {
        /// Invocation id, echoed in the answer.
        id: String,
        /// Unix time in milliseconds by which the answer is due.
        deadline_ms: u64,
        /// The function's name.
        function: String,
        /// The function's version.
        version: String,
        /// HTTP request headers passed on to the handler (lower-case names).
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// The runtime is a copy restored from a snapshot: reseed and run the
    /// function's restore hooks.
    Restored {
        /// 64 hex characters of fresh randomness.
        seed: String,
    },
}

/// A message from the runtime to thaw (fd 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromRuntime {
    /// The handler is loaded; the runtime waits for requests.
    Ready {
        /// The runtime's process id (as it sees itself).
        pid: u32,
        /// Runtime name, e.g. `python3`.
        runtime: String,
        /// Protocol version the runtime speaks.
        protocol: u32,
    },
    /// Loading the handler failed; the runtime exits non-zero after this.
    InitError {
        /// Exception type (e.g. `ModuleNotFoundError`).
        error_type: String,
        /// Exception message.
        message: String,
        /// Formatted traceback, possibly empty.
        #[serde(default)]
        traceback: String,
    },
    /// The handler returned; the body is the answer.
    Result {
        /// Invocation id from the `invoke`.
        id: String,
        /// HTTP status.
        #[serde(default = "default_status")]
        status: u16,
        /// Answer headers (e.g. `content-type`).
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// The handler raised.
    Error {
        /// Invocation id from the `invoke`.
        id: String,
        /// Exception type.
        error_type: String,
        /// Exception message.
        message: String,
        /// Formatted traceback, possibly empty.
        #[serde(default)]
        traceback: String,
    },
    /// Answer to `restored`: reseeding and the restore hooks ran.
    Restored {
        /// Whether every hook succeeded.
        ok: bool,
        /// What failed, when not ok.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl ToRuntime {
    /// A `restored` message carrying `seed` as 64 hex characters.
    pub fn restored_with_seed(seed: &[u8; 32]) -> ToRuntime {
        let mut hex = String::with_capacity(64);
        for b in seed {
            hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        ToRuntime::Restored { seed: hex }
    }
}

fn default_status() -> u16 {
    200
}

/// Which part of a frame a size error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The JSON header.
    Header,
    /// The raw body.
    Body,
}

impl std::fmt::Display for FramePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Body => "body",
        })
    }
}

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream ended cleanly before the first byte of a frame.
    #[error("stream closed before a frame")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// A length exceeds its limit: the stream is corrupt (when reading) or the
    /// message cannot be sent (when writing).
    #[error("frame {part} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Header or body.
        part: FramePart,
        /// The length found or asked for.
        len: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The header is not the JSON of a known message.
    #[error("bad frame header: {0}")]
    BadHeader(#[source] serde_json::Error),
    /// The underlying reader or writer failed.
    #[error("i/o error on the runtime channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one thaw → runtime frame carrying `msg` and `body`, then flushes.
pub async fn write_frame<W>(w: &mut W, msg: &ToRuntime, body: &[u8]) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_message(w, msg, body).await
}

/// Reads one runtime → thaw frame, with bodies up to [`MAX_BODY_LEN`].
pub async fn read_frame<R>(r: &mut R) -> Result<(FromRuntime, Bytes), ProtocolError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_message(r, MAX_BODY_LEN).await
}

/// Reads one runtime → thaw frame, refusing bodies larger than `max_body`
/// (capped at [`MAX_BODY_LEN`]).
pub async fn read_frame_limited<R>(
    r: &mut R,
    max_body: usize,
) -> Result<(FromRuntime, Bytes), ProtocolError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_message(r, max_body).await
}

/// Writes one frame whose header is `msg` serialised as JSON, then flushes.
///
/// Fails with [`ProtocolError::TooLarge`] before writing anything when the
/// header or the body exceeds the protocol's limits.
pub async fn write_message<W, M>(w: &mut W, msg: &M, body: &[u8]) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin + ?Sized,
    M: Serialize + ?Sized,
{
    let header = serde_json::to_vec(msg).map_err(ProtocolError::BadHeader)?;
    check_len(FramePart::Header, header.len(), MAX_HEADER_LEN)?;
    check_len(FramePart::Body, body.len(), MAX_BODY_LEN)?;

    let coalesce = body.len() <= COALESCE_LIMIT;
    let mut head =
        Vec::with_capacity(PREFIX_LEN + header.len() + if coalesce { body.len() } else { 0 });
    // Both lengths are below 2^30 after the checks above, so they fit a u32.
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&(body.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    if coalesce {
        head.extend_from_slice(body);
        w.write_all(&head).await?;
    } else {
        w.write_all(&head).await?;
        w.write_all(body).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Reads one frame and decodes its header as `M`, refusing bodies larger than
/// `max_body` (capped at [`MAX_BODY_LEN`]).
pub async fn read_message<R, M>(r: &mut R, max_body: usize) -> Result<(M, Bytes), ProtocolError>
where
    R: AsyncRead + Unpin + ?Sized,
    M: DeserializeOwned,
{
    let mut prefix = [0u8; PREFIX_LEN];
    let got = read_full(r, &mut prefix).await?;
    if got == 0 {
        return Err(ProtocolError::Closed);
    }
    if got < PREFIX_LEN {
        return Err(ProtocolError::Truncated);
    }
    let (header_len, body_len) = frame_lengths(&prefix, max_body)?;

    let mut header = vec![0u8; header_len];
    if read_full(r, &mut header).await? < header_len {
        return Err(ProtocolError::Truncated);
    }

    let mut body = Vec::with_capacity(body_len.min(INITIAL_BODY_RESERVE));
    let got = (&mut *r)
        .take(body_len as u64)
        .read_to_end(&mut body)
        .await?;
    if got < body_len {
        return Err(ProtocolError::Truncated);
    }

    // Decode the header only once the whole frame is consumed, so that a bad
    // header leaves the stream at a frame boundary.
    let msg = serde_json::from_slice(&header).map_err(ProtocolError::BadHeader)?;
    Ok((msg, Bytes::from(body)))
}

/// Decodes one frame from the start of `bytes` (a whole buffer, not a
/// stream): the same checks in the same order as [`read_message`] with
/// `max_body`, and the same errors (an empty buffer is
/// [`ProtocolError::Closed`], a short one [`ProtocolError::Truncated`]).
/// Returns the message, its body and how many bytes the frame took. The pure
/// entry point the fuzz targets drive.
pub fn parse_frame<M: DeserializeOwned>(
    bytes: &[u8],
    max_body: usize,
) -> Result<(M, Bytes, usize), ProtocolError> {
    if bytes.is_empty() {
        return Err(ProtocolError::Closed);
    }
    let prefix: &[u8; PREFIX_LEN] = bytes
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProtocolError::Truncated)?;
    let (header_len, body_len) = frame_lengths(prefix, max_body)?;
    let header_end = PREFIX_LEN + header_len;
    let end = header_end + body_len;
    if bytes.len() < end {
        return Err(ProtocolError::Truncated);
    }
    let msg =
        serde_json::from_slice(&bytes[PREFIX_LEN..header_end]).map_err(ProtocolError::BadHeader)?;
    Ok((msg, Bytes::copy_from_slice(&bytes[header_end..end]), end))
}

/// The header and body lengths of a frame's prefix, each checked against its
/// limit (`max_body` capped at [`MAX_BODY_LEN`]).
fn frame_lengths(
    prefix: &[u8; PREFIX_LEN],
    max_body: usize,
) -> Result<(usize, usize), ProtocolError> {
    let header_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let body_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    check_len(FramePart::Header, header_len, MAX_HEADER_LEN)?;
    check_len(FramePart::Body, body_len, max_body.min(MAX_BODY_LEN))?;
    Ok((header_len, body_len))
}

fn check_len(part: FramePart, len: usize, limit: usize) -> Result<(), ProtocolError> {
    if len > limit {
        return Err(ProtocolError::TooLarge {
            part,
            len: len as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_full<R>(r: &mut R, buf: &mut [u8]) -> Result<usize, std::io::Error>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke() -> ToRuntime {
        ToRuntime::Invoke {
            id: "inv-1".into(),
            deadline_ms: 1_700_000_000_123,
            function: "hello".into(),
            version: "3".into(),
            headers: BTreeMap::from([("x-trace".to_string(), "abc".to_string())]),
        }
    }

    /// Encodes one frame by hand, as a runtime in another language would.
    fn raw_frame(header: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(header);
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn to_runtime_round_trip() {
        let mut buf = Vec::new();
        let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        write_frame(&mut buf, &invoke(), &body).await.unwrap();
        write_frame(
            &mut buf,
            &ToRuntime::Restored {
                seed: "ab".repeat(32),
            },
            b"",
        )
        .await
        .unwrap();
        assert_eq!(
            buf.len(),
            2 * PREFIX_LEN + 100_000 + {
                let a = serde_json::to_vec(&invoke()).unwrap().len();
                let b = serde_json::to_vec(&ToRuntime::Restored {
                    seed: "ab".repeat(32),
                })
                .unwrap()
                .len();
                a + b
            }
        );

        let mut r = &buf[..];
        let (m, b) = read_message::<_, ToRuntime>(&mut r, MAX_BODY_LEN)
            .await
            .unwrap();
        assert_eq!(m, invoke());
        assert_eq!(&b[..], &body[..]);
        let (m, b) = read_message::<_, ToRuntime>(&mut r, MAX_BODY_LEN)
            .await
            .unwrap();
        assert_eq!(
            m,
            ToRuntime::Restored {
                seed: "ab".repeat(32)
            }
        );
        assert!(b.is_empty());
        assert!(matches!(
            read_message::<_, ToRuntime>(&mut r, MAX_BODY_LEN).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn from_runtime_round_trip_every_variant() {
        let msgs = [
            FromRuntime::Ready {
                pid: 42,
                runtime: "python3".into(),
                protocol: PROTOCOL_VERSION,
            },
            FromRuntime::InitError {
                error_type: "ImportError".into(),
                message: "no module".into(),
                traceback: "Traceback...".into(),
            },
            FromRuntime::Result {
                id: "x".into(),
                status: 201,
                headers: BTreeMap::from([("content-type".into(), "text/plain".into())]),
            },
            FromRuntime::Error {
                id: "x".into(),
                error_type: "ValueError".into(),
                message: "bad".into(),
                traceback: String::new(),
            },
            FromRuntime::Restored {
                ok: true,
                message: None,
            },
            FromRuntime::Restored {
                ok: false,
                message: Some("hook failed".into()),
            },
        ];
        let mut buf = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            write_message(&mut buf, m, &[i as u8; 3]).await.unwrap();
        }
        let mut r = &buf[..];
        for (i, m) in msgs.iter().enumerate() {
            let (got, body) = read_frame(&mut r).await.unwrap();
            assert_eq!(&got, m);
            assert_eq!(&body[..], &[i as u8; 3]);
        }
        assert!(matches!(
            read_frame(&mut r).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn restored_seed_is_hex() {
        let mut seed = [0u8; 32];
        seed[0] = 0xab;
        seed[31] = 0x01;
        let ToRuntime::Restored { seed: hex } = ToRuntime::restored_with_seed(&seed) else {
            panic!("not a restored message");
        };
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00"));
        assert!(hex.ends_with("0001"));
    }

    #[tokio::test]
    async fn wire_names_match_the_doc() {
        let v = serde_json::to_value(invoke()).unwrap();
        assert_eq!(v["type"], "invoke");
        assert_eq!(v["deadline_ms"], 1_700_000_000_123u64);
        assert_eq!(v["headers"]["x-trace"], "abc");
        let v = serde_json::to_value(ToRuntime::Restored { seed: "00".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"type": "restored", "seed": "00"}));
    }

    #[tokio::test]
    async fn defaults_and_unknown_fields() {
        let frames = [
            raw_frame(br#"{"type":"result","id":"a","extra":[1,2]}"#, b"hi"),
            raw_frame(br#"{"type":"restored","ok":true}"#, b""),
            raw_frame(
                br#"{"type":"error","id":"b","error_type":"E","message":"m"}"#,
                b"",
            ),
        ]
        .concat();
        let mut r = &frames[..];
        let (m, body) = read_frame(&mut r).await.unwrap();
        assert_eq!(
            m,
            FromRuntime::Result {
                id: "a".into(),
                status: 200,
                headers: BTreeMap::new()
            }
        );
        assert_eq!(&body[..], b"hi");
        let (m, _) = read_frame(&mut r).await.unwrap();
        assert_eq!(
            m,
            FromRuntime::Restored {
                ok: true,
                message: None
            }
        );
        let (m, _) = read_frame(&mut r).await.unwrap();
        assert!(matches!(m, FromRuntime::Error { traceback, .. } if traceback.is_empty()));
    }

    #[tokio::test]
    async fn torn_frames_are_truncated() {
        let mut full = Vec::new();
        write_message(
            &mut full,
            &FromRuntime::Restored {
                ok: true,
                message: None,
            },
            b"body",
        )
        .await
        .unwrap();
        // Every cut strictly inside the frame is a truncation; a cut at 0 is
        // a clean close.
        for cut in 1..full.len() {
            let mut r = &full[..cut];
            let err = read_frame(&mut r).await.unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated),
                "cut at {cut}: {err}"
            );
        }
        let mut r = &full[..0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn frames_split_across_many_reads() {
        // A duplex pipe with a tiny buffer forces many partial reads/writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let body2 = body.clone();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &invoke(), &body2).await.unwrap();
        });
        let (m, got) = read_message::<_, ToRuntime>(&mut b, MAX_BODY_LEN)
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(m, invoke());
        assert_eq!(&got[..], &body[..]);
    }

    #[tokio::test]
    async fn oversize_lengths_are_refused() {
        let mut big_header = Vec::new();
        big_header.extend_from_slice(&((MAX_HEADER_LEN as u32) + 1).to_le_bytes());
        big_header.extend_from_slice(&0u32.to_le_bytes());
        let err = read_frame(&mut &big_header[..]).await.unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                part: FramePart::Header,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "frame header of 1048577 bytes exceeds the limit of 1048576 bytes"
        );

        let mut big_body = Vec::new();
        big_body.extend_from_slice(&2u32.to_le_bytes());
        big_body.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame(&mut &big_body[..]).await.unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge { part: FramePart::Body, limit, .. } if limit == MAX_BODY_LEN as u64
        ));

        let frame = raw_frame(br#"{"type":"result","id":"a"}"#, &[0u8; 100]);
        let err = read_frame_limited(&mut &frame[..], 99).await.unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                part: FramePart::Body,
                len: 100,
                limit: 99
            }
        ));
        let (_, body) = read_frame_limited(&mut &frame[..], 100).await.unwrap();
        assert_eq!(body.len(), 100);
    }

    #[tokio::test]
    async fn oversize_writes_are_refused_before_writing() {
        let mut buf = Vec::new();
        let huge = ToRuntime::Invoke {
            id: "x".repeat(MAX_HEADER_LEN),
            deadline_ms: 0,
            function: String::new(),
            version: String::new(),
            headers: BTreeMap::new(),
        };
        let err = write_frame(&mut buf, &huge, b"").await.unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::TooLarge {
                part: FramePart::Header,
                ..
            }
        ));
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn garbage_headers_are_bad() {
        let cases: [&[u8]; 5] = [
            b"\xff\xfe not json",
            br#"{"no_type":1}"#,
            br#"{"type":"launch_missiles"}"#,
            br#"{"type":"result"}"#,
            br#"[1,2,3]"#,
        ];
        for header in cases {
            let frame = [
                raw_frame(header, b"xy"),
                raw_frame(br#"{"type":"restored","ok":true}"#, b""),
            ]
            .concat();
            let mut r = &frame[..];
            let err = read_frame(&mut r).await.unwrap_err();
            assert!(
                matches!(err, ProtocolError::BadHeader(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(header)
            );
            // The bad frame was consumed whole: the next one still decodes.
            let (m, _) = read_frame(&mut r).await.unwrap();
            assert_eq!(
                m,
                FromRuntime::Restored {
                    ok: true,
                    message: None
                }
            );
        }
    }

    #[tokio::test]
    async fn parse_frame_agrees_with_read_frame() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &FromRuntime::Result {
                id: "a".into(),
                status: 201,
                headers: BTreeMap::new(),
            },
            b"body",
        )
        .await
        .unwrap();
        let (m, body, used) = parse_frame::<FromRuntime>(&buf, MAX_BODY_LEN).unwrap();
        assert_eq!(used, buf.len());
        let (m2, body2) = read_frame(&mut &buf[..]).await.unwrap();
        assert_eq!((m, body), (m2, body2));
        for cut in 1..buf.len() {
            assert!(matches!(
                parse_frame::<FromRuntime>(&buf[..cut], MAX_BODY_LEN),
                Err(ProtocolError::Truncated)
            ));
        }
        assert!(matches!(
            parse_frame::<FromRuntime>(&[], MAX_BODY_LEN),
            Err(ProtocolError::Closed)
        ));
        assert!(matches!(
            parse_frame::<FromRuntime>(&buf, 3),
            Err(ProtocolError::TooLarge {
                part: FramePart::Body,
                len: 4,
                limit: 3
            })
        ));
    }

    #[tokio::test]
    async fn io_errors_surface() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("wire cut")))
            }
        }
        let err = read_frame(&mut Broken).await.unwrap_err();
        assert!(matches!(err, ProtocolError::Io(_)));
        assert_eq!(
            err.to_string(),
            "i/o error on the runtime channel: wire cut"
        );
    }
}
