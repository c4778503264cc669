//! The connection to the bucket: object paths under the store's prefix,
//! sealed puts and gets, ranged reads, listings, transfer counters.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore, PutPayload, RetryConfig};

use crate::index::BucketIndex;
use crate::key::{Keys, Kind, StoreKey};
use crate::seal;

/// `s3://BUCKET/PREFIX`: where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The folder in it (no leading or trailing `/`; may be empty).
    pub prefix: String,
}

/// A store URL that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("store URL {url:?}: {what} (expected s3://BUCKET/PREFIX)")]
pub struct BadStoreUrl {
    /// The URL given.
    pub url: String,
    /// What is wrong.
    pub what: &'static str,
}

impl FromStr for StoreUrl {
    type Err = BadStoreUrl;

    fn from_str(url: &str) -> Result<StoreUrl, BadStoreUrl> {
        let bad = |what| BadStoreUrl {
            url: url.to_string(),
            what,
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad("the bucket name must be 3-63 of a-z 0-9 . -"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix_ok = prefix.split('/').all(|segment| {
            prefix.is_empty()
                || (!segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        });
        if !prefix_ok {
            return Err(bad(
                "the prefix must be /-separated names of A-Z a-z 0-9 - _ .",
            ));
        }
        Ok(StoreUrl {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Error connecting to the bucket.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the object store {url}: {source}")]
pub struct ConnectError {
    /// The store URL.
    pub url: String,
    /// Why (missing endpoint, credentials, region ...).
    #[source]
    pub source: object_store::Error,
}

/// Error on one object; every variant names it (`s3://bucket/prefix/...`).
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The request failed.
    #[error("{object}: {source}")]
    Request {
        /// The object.
        object: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// The object is not readable with this key, or not a thaw object.
    #[error("{object}: {source}")]
    Open {
        /// The object.
        object: String,
        /// Why.
        #[source]
        source: seal::OpenError,
    },
    /// One slot of a pack is not readable with this key.
    #[error("{object}, page slot {slot}: {source}")]
    OpenSlot {
        /// The pack.
        object: String,
        /// The slot.
        slot: u32,
        /// Why.
        #[source]
        source: seal::OpenError,
    },
    /// A slot decrypts to a page other than the one the snapshot names.
    #[error("{object}, page slot {slot} is corrupt: it should hold page {expected} but its content hashes to {actual}")]
    Corrupt {
        /// The pack.
        object: String,
        /// The slot.
        slot: u32,
        /// The page the snapshot names.
        expected: String,
        /// What the slot holds.
        actual: String,
    },
    /// The object is not in the bucket.
    #[error("{object} is missing from the bucket")]
    Missing {
        /// The object.
        object: String,
    },
    /// The local file an object is streamed from or to failed.
    #[error("{object}: local file {}: {source}", file.display())]
    File {
        /// The object.
        object: String,
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its content is not what its name or kind promise.
    #[error("{object}: {what}")]
    Invalid {
        /// The object.
        object: String,
        /// What is wrong.
        what: String,
    },
}

/// One object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its name (64 hex digits).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: std::time::SystemTime,
    /// Its entity tag, if the server gives one.
    pub e_tag: Option<String>,
}

/// Bytes and objects moved since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Objects written.
    pub objects_sent: u64,
    /// Bytes written (sealed).
    pub bytes_sent: u64,
    /// Objects or ranges read.
    pub requests_fetched: u64,
    /// Bytes read.
    pub bytes_fetched: u64,
}

#[derive(Debug, Default)]
struct Counters {
    objects_sent: AtomicU64,
    bytes_sent: AtomicU64,
    requests_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
}

/// `THAW_STORE_REUSE_CONNECTIONS=1`: ranged reads over a plain-HTTP
/// endpoint reuse pooled connections, as before 2026-12-06 (the A/B's old
/// arm; see [`fresh_connections`]).
pub const ENV_REUSE_CONNECTIONS: &str = "THAW_STORE_REUSE_CONNECTIONS";

/// Whether ranged reads (pages) open a connection each: over a plain-HTTP
/// endpoint (a Garage on the node or its network), unless
/// [`ENV_REUSE_CONNECTIONS`] is `1`.
///
/// Measured (docs/cluster.md, 2026-12-06 23:07 UTC): a ranged GET of 4 KiB
/// from Garage over a reused loopback connection takes 42-48 ms, over a
/// new one 2-8 ms. Garage writes a response's headers and its body apart
/// without `TCP_NODELAY`; on a connection the kernel deems interactive
/// (request, answer, request: "pingpong") the client delays its ACK of the
/// headers by up to 40 ms, and Nagle holds the body (shorter than the
/// MSS, 64 KiB on loopback) until that ACK. A new connection ACKs at once
/// (quick-ack mode); over loopback it costs ~0.1 ms. Over HTTPS a new
/// connection costs a TLS handshake, and on Ethernet (MSS 1,448 bytes) a
/// page's body spans several segments, which the client ACKs at once:
/// pooled there.
fn fresh_connections(builder: &AmazonS3Builder) -> bool {
    let http = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_some_and(|e| e.starts_with("http://"));
    http && std::env::var(ENV_REUSE_CONNECTIONS).as_deref() != Ok("1")
}

/// A thaw store in a bucket: every object encrypted and named with the
/// store key.
#[derive(Debug)]
pub struct RemoteStore {
    client: Arc<dyn ObjectStore>,
    /// The client of ranged reads (pages): over a plain-HTTP endpoint, one
    /// that opens a connection per read ([`fresh_connections`]); else
    /// `client`.
    reads: Arc<dyn ObjectStore>,
    url: StoreUrl,
    pub(crate) keys: Keys,
    pub(crate) index: tokio::sync::Mutex<BucketIndex>,
    /// Uploads hold it shared for their whole run, the bucket's gc
    /// exclusively (`gc.rs`): a gc never runs while an upload of this
    /// process may still name a pack it would delete.
    pub(crate) uploads: tokio::sync::RwLock<()>,
    counters: Counters,
}

impl RemoteStore {
    /// Connects with endpoint, credentials and region from the standard
    /// variables: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
    /// `AWS_ALLOW_HTTP` for a plain-HTTP endpoint.
    pub fn from_env(url: StoreUrl, key: &StoreKey) -> Result<RemoteStore, ConnectError> {
        RemoteStore::connect(url, key, AmazonS3Builder::from_env())
    }

    /// Connects with a configured S3 builder (the bucket comes from `url`).
    pub fn connect(
        url: StoreUrl,
        key: &StoreKey,
        builder: AmazonS3Builder,
    ) -> Result<RemoteStore, ConnectError> {
        let retry = RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        };
        let builder = builder.with_bucket_name(&url.bucket).with_retry(retry);
        let fresh = fresh_connections(&builder);
        let build = |builder: AmazonS3Builder| {
            builder.build().map_err(|source| ConnectError {
                url: url.to_string(),
                source,
            })
        };
        let reads = if fresh {
            Some(build(builder.clone().with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::PoolMaxIdlePerHost),
                "0",
            ))?)
        } else {
            None
        };
        let client = Arc::new(build(builder)?);
        let mut store = RemoteStore::with_client(url, key, client);
        if let Some(reads) = reads {
            store.reads = Arc::new(reads);
        }
        Ok(store)
    }

    /// A store over any object store client (`url` names it in messages and
    /// gives the prefix; its bucket must be the client's).
    pub fn with_client(url: StoreUrl, key: &StoreKey, client: Arc<dyn ObjectStore>) -> RemoteStore {
        RemoteStore {
            reads: client.clone(),
            client,
            url,
            keys: Keys::derive(key),
            index: Default::default(),
            uploads: Default::default(),
            counters: Counters::default(),
        }
    }

    /// Where the store lives.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// Bytes and objects moved so far.
    pub fn transfers(&self) -> Transfers {
        Transfers {
            objects_sent: self.counters.objects_sent.load(Ordering::Relaxed),
            bytes_sent: self.counters.bytes_sent.load(Ordering::Relaxed),
            requests_fetched: self.counters.requests_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.counters.bytes_fetched.load(Ordering::Relaxed),
        }
    }

    /// The name of the object of `kind` for `address` (see [`crate::key`]).
    pub fn name(&self, kind: Kind, address: &[u8]) -> String {
        self.keys.name(kind, address)
    }

    /// An object's path relative to the prefix (what its tag binds).
    pub(crate) fn rel(kind: Kind, name: &str) -> String {
        format!("{}/{name}", kind.folder())
    }

    /// An object's full path in the bucket.
    pub fn object_path(&self, kind: Kind, name: &str) -> String {
        let rel = RemoteStore::rel(kind, name);
        if self.url.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.url.prefix)
        }
    }

    /// The object as messages name it.
    pub(crate) fn describe(&self, kind: Kind, name: &str) -> String {
        format!("s3://{}/{}", self.url.bucket, self.object_path(kind, name))
    }

    /// The client (for streamed transfers, `stream.rs`).
    pub(crate) fn client(&self) -> &Arc<dyn ObjectStore> {
        &self.client
    }

    /// Counts one object of `bytes` written.
    pub(crate) fn count_sent(&self, bytes: u64) {
        self.counters.objects_sent.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one read of `bytes`.
    pub(crate) fn count_fetched(&self, bytes: u64) {
        self.counters
            .requests_fetched
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_fetched
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn path(&self, kind: Kind, name: &str) -> ObjectPath {
        ObjectPath::from(self.object_path(kind, name))
    }

    pub(crate) fn request(
        &self,
        kind: Kind,
        name: &str,
    ) -> impl FnOnce(object_store::Error) -> ObjectError {
        let object = self.describe(kind, name);
        move |source| match source {
            object_store::Error::NotFound { .. } => ObjectError::Missing { object },
            source => ObjectError::Request { object, source },
        }
    }

    /// Writes raw bytes.
    pub(crate) async fn put_raw(
        &self,
        kind: Kind,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ObjectError> {
        let len = bytes.len() as u64;
        self.client
            .put(&self.path(kind, name), PutPayload::from(bytes))
            .await
            .map_err(self.request(kind, name))?;
        self.counters.objects_sent.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes an object (absent already counts as deleted).
    pub(crate) async fn delete(&self, kind: Kind, name: &str) -> Result<(), ObjectError> {
        match self.client.delete(&self.path(kind, name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.request(kind, name)(e)),
        }
    }

    /// Reads a whole object; `None` if it is not there.
    pub(crate) async fn get_raw(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Vec<u8>>, ObjectError> {
        let got = match self.client.get(&self.path(kind, name)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request(kind, name)(e)),
        };
        let bytes = got.bytes().await.map_err(self.request(kind, name))?;
        self.counters
            .requests_fetched
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(bytes.to_vec()))
    }

    /// Reads a byte range of an object.
    pub(crate) async fn get_range(
        &self,
        kind: Kind,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, ObjectError> {
        let want = range.end - range.start;
        let bytes = self
            .reads
            .get_range(&self.path(kind, name), range)
            .await
            .map_err(self.request(kind, name))?;
        self.counters
            .requests_fetched
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != want {
            return Err(ObjectError::Invalid {
                object: self.describe(kind, name),
                what: format!("a range of {want} bytes came back as {}", bytes.len()),
            });
        }
        Ok(bytes.to_vec())
    }

    /// Encrypts and writes `payload` as the object `name` of `kind`.
    pub(crate) async fn put_sealed(
        &self,
        kind: Kind,
        name: &str,
        payload: &[u8],
    ) -> Result<(), ObjectError> {
        let sealed = seal::seal(&self.keys, kind, &RemoteStore::rel(kind, name), payload);
        self.put_raw(kind, name, sealed).await
    }

    /// Reads and decrypts the object `name` of `kind`; `None` if absent.
    pub(crate) async fn get_sealed(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Vec<u8>>, ObjectError> {
        let Some(bytes) = self.get_raw(kind, name).await? else {
            return Ok(None);
        };
        seal::open(&self.keys, kind, &RemoteStore::rel(kind, name), bytes)
            .map(Some)
            .map_err(|source| ObjectError::Open {
                object: self.describe(kind, name),
                source,
            })
    }

    /// Writes `payload` as the object of `kind` addressed by `address`
    /// (a function name, a code version ...) unless the bucket already
    /// holds exactly that. Returns whether it was sent.
    pub async fn put_blob(
        &self,
        kind: Kind,
        address: &[u8],
        payload: &[u8],
    ) -> Result<bool, ObjectError> {
        let name = self.name(kind, address);
        match self.get_sealed(kind, &name).await {
            Ok(Some(old)) if old == payload => return Ok(false),
            // Unreadable (another key, a torn write): replaced.
            Ok(_) | Err(ObjectError::Open { .. }) => {}
            Err(e) => return Err(e),
        }
        self.put_sealed(kind, &name, payload).await?;
        Ok(true)
    }

    /// Reads the object of `kind` addressed by `address`.
    pub async fn get_blob(
        &self,
        kind: Kind,
        address: &[u8],
    ) -> Result<Option<Vec<u8>>, ObjectError> {
        self.get_sealed(kind, &self.name(kind, address)).await
    }

    /// Whether the bucket holds an object of `kind` addressed by `address`
    /// (one HEAD request; the content is not read). For objects named by
    /// their content, such as dependency layers, presence is enough.
    pub async fn has_blob(&self, kind: Kind, address: &[u8]) -> Result<bool, ObjectError> {
        self.has_object(kind, &self.name(kind, address)).await
    }

    /// Whether the bucket holds the object `name` of `kind` (one HEAD).
    pub(crate) async fn has_object(&self, kind: Kind, name: &str) -> Result<bool, ObjectError> {
        match self.client.head(&self.path(kind, name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.request(kind, name)(e)),
        }
    }

    /// Every object of `kind`.
    pub async fn list(&self, kind: Kind) -> Result<Vec<Listed>, ObjectError> {
        let folder = ObjectPath::from(self.object_path(kind, ""));
        let metas: Vec<object_store::ObjectMeta> = self
            .client
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|source| ObjectError::Request {
                object: format!("s3://{}/{folder}/", self.url.bucket),
                source,
            })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                Some(Listed {
                    name: m.location.filename()?.to_string(),
                    size: m.size,
                    last_modified: m.last_modified.into(),
                    e_tag: m.e_tag,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_bad_ones_say_why() {
        let u: StoreUrl = "s3://thaw/dev/a".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("thaw", "dev/a"));
        assert_eq!(u.to_string(), "s3://thaw/dev/a");
        let u: StoreUrl = "s3://thaw".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert_eq!(u.to_string(), "s3://thaw");
        assert_eq!("s3://thaw/p/".parse::<StoreUrl>().unwrap().prefix, "p");
        for (bad, why) in [
            ("http://thaw/p", "not s3://"),
            ("s3://Th/p", "bucket"),
            ("s3://thaw/a/../b", "prefix"),
            ("s3://thaw/a//b", "prefix"),
        ] {
            let err = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
