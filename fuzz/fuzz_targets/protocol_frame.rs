//! Runtime protocol frames (fd 4, runtime → thaw), as the pool reads them
//! from a runtime that may be buggy or hostile.
//!
//! The input is a stream of frames. It is decoded twice: with the pure
//! `parse_frame` frame by frame, and with the async `read_frame` the pool
//! uses, over a reader that hands out a few bytes per read. Both must agree
//! on every frame and on the error that ends the stream; neither may panic,
//! hang or allocate without bound.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use pool::protocol::{parse_frame, read_frame_limited, FromRuntime, ProtocolError};
use tokio::io::{AsyncRead, ReadBuf};

/// Small enough that fuzzed frames reach it; the real limit is the
/// function's body limit.
const MAX_BODY: usize = 1 << 16;

/// Yields the input in pieces of 1 to 7 bytes.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// The error's kind, for comparing the two decoders.
fn kind(e: &ProtocolError) -> String {
    match e {
        ProtocolError::Closed => "closed".into(),
        ProtocolError::Truncated => "truncated".into(),
        ProtocolError::TooLarge { part, len, limit } => format!("too large {part} {len} {limit}"),
        ProtocolError::BadHeader(_) => "bad header".into(),
        ProtocolError::Io(e) => format!("io {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut pure = Vec::new();
    let mut rest = data;
    let pure_end = loop {
        match parse_frame::<FromRuntime>(rest, MAX_BODY) {
            Ok((msg, body, used)) => {
                assert!(used >= 8 && used <= rest.len());
                pure.push((msg, body));
                rest = &rest[used..];
            }
            Err(ProtocolError::BadHeader(_)) => {
                // The stream stays at a frame boundary: skip the frame as
                // the async reader does, and go on.
                let h = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                let b = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
                pure.push((
                    FromRuntime::Restored {
                        ok: false,
                        message: Some("bad header".into()),
                    },
                    bytes::Bytes::new(),
                ));
                rest = &rest[8 + h + b..];
            }
            Err(e) => break kind(&e),
        }
    };

    let mut streamed = Vec::new();
    let mut reader = Trickle { data, step: 0 };
    let stream_end = runtime().block_on(async {
        loop {
            match read_frame_limited(&mut reader, MAX_BODY).await {
                Ok(frame) => streamed.push(frame),
                Err(ProtocolError::BadHeader(_)) => streamed.push((
                    FromRuntime::Restored {
                        ok: false,
                        message: Some("bad header".into()),
                    },
                    bytes::Bytes::new(),
                )),
                Err(e) => break kind(&e),
            }
        }
    });
    assert_eq!(pure, streamed);
    assert_eq!(pure_end, stream_end);
});
