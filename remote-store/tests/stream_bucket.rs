//! Large objects streamed from and to files (`stream.rs`) through an
//! in-memory object store (object_store's own `InMemory`, which does
//! multipart uploads like S3): what goes in comes out, hashed; an object
//! sealed whole by an older writer is still read; what is stored is
//! encrypted. The same against a real Garage, with memory measured, is
//! server/tests/layer_stream.rs.

use std::sync::Arc;

use object_store::ObjectStore;
use remote_store::stream::{CHUNK, PART};
use remote_store::{Kind, RemoteStore, StoreKey};

fn incompressible(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut h = blake3::Hasher::new();
    h.update(b"stream test");
    let mut xof = h.finalize_xof();
    out.resize(len, 0);
    xof.fill(&mut out);
    out
}

#[tokio::test]
async fn files_stream_through_the_bucket_and_whole_sealed_objects_still_read() {
    let bucket = Arc::new(object_store::memory::InMemory::new());
    let key = StoreKey::generate();
    let remote = RemoteStore::with_client("s3://mem/x".parse().unwrap(), &key, bucket.clone());
    let dir = tempfile::tempdir().unwrap();

    // Sizes around the frame and part boundaries: one request, several
    // parts, an empty file.
    for (i, len) in [0, 1000, CHUNK, PART - 100, 3 * PART + CHUNK / 2 + 3]
        .into_iter()
        .enumerate()
    {
        let payload = incompressible(len);
        let file = dir.path().join(format!("in{i}"));
        std::fs::write(&file, &payload).unwrap();
        let address = format!("#test/{i}");
        let before = remote.transfers();
        let sent = remote
            .put_blob_file(Kind::Code, address.as_bytes(), &file)
            .await
            .unwrap();
        let after = remote.transfers();
        assert_eq!(after.objects_sent - before.objects_sent, 1, "{len} bytes");
        assert_eq!(after.bytes_sent - before.bytes_sent, sent);
        assert!(sent > len as u64, "{len} bytes sealed as {sent}");

        let stored = bucket
            .get(
                &remote
                    .object_path(Kind::Code, &remote.name(Kind::Code, address.as_bytes()))
                    .into(),
            )
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(stored.len() as u64, sent, "{len} bytes");
        if len >= 64 {
            assert!(
                !stored.windows(32).any(|w| w == &payload[..32]),
                "{len} bytes: the plaintext is in the bucket"
            );
        }

        let mut out = Vec::new();
        let got = remote
            .get_blob_to(Kind::Code, address.as_bytes(), &mut out)
            .await
            .unwrap()
            .expect("the object");
        assert_eq!(got.bytes, len as u64);
        assert_eq!(got.blake3, blake3::hash(&payload));
        assert!(out == payload, "{len} bytes came back different");
    }

    // Absent: None.
    let mut out = Vec::new();
    assert!(remote
        .get_blob_to(Kind::Code, b"#test/none", &mut out)
        .await
        .unwrap()
        .is_none());

    // Sealed whole (put_blob, the format of layers before streaming).
    let old = incompressible(300_000);
    remote
        .put_blob(Kind::Code, b"#test/old", &old)
        .await
        .unwrap();
    let mut out = Vec::new();
    let got = remote
        .get_blob_to(Kind::Code, b"#test/old", &mut out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.blake3, blake3::hash(&old));
    assert!(out == old);

    // Another key: refused, and the error names the object.
    let other = RemoteStore::with_client(
        "s3://mem/x".parse().unwrap(),
        &StoreKey::generate(),
        bucket.clone(),
    );
    let file = dir.path().join("in4");
    remote
        .put_blob_file(Kind::Code, b"#test/k", &file)
        .await
        .unwrap();
    let name = other.name(Kind::Code, b"#test/k");
    // The other key names objects differently: copy it under that name.
    let bytes = bucket
        .get(
            &remote
                .object_path(Kind::Code, &remote.name(Kind::Code, b"#test/k"))
                .into(),
        )
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    bucket
        .put(&other.object_path(Kind::Code, &name).into(), bytes.into())
        .await
        .unwrap();
    let err = other
        .get_blob_to(Kind::Code, b"#test/k", &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not decrypt with this store key"),
        "{err}"
    );
    assert!(err.to_string().contains(&name), "{err}");

    // A missing local file is an error about that file.
    let err = remote
        .put_blob_file(Kind::Code, b"#test/gone", &dir.path().join("gone"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
}
