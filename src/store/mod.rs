//! The revisioned key-value store: etcd's data model, SQLite underneath.
//!
//! Every write gets the next value of one global [`Revision`]; that revision is
//! the Kubernetes `resourceVersion`. Each key remembers the revision that created
//! it and the one that last modified it, updates and deletes can be made
//! conditional on the latter (compare-and-swap), lists are consistent at one
//! revision and can be paged, and a prefix can be watched from any revision
//! that has not been compacted away.
//!
//! The model is the [`Backend`] trait; [`SqliteBackend`] is its only
//! implementation today. An etcd backend for several servers fits behind the
//! same trait. [`Store`] is the cheap, cloneable handle the rest of orch uses.
//!
//! This module knows nothing about Kubernetes: keys are strings, values bytes.
//! It does not encode objects, map errors to HTTP, or know resource kinds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), orch::store::Error> {
//! use orch::store::{SqliteConfig, Store};
//! let store = Store::open_sqlite(SqliteConfig::new("/var/lib/orch/server/db/state.db"))?;
//! let kv = store.create("/registry/configmaps/default/a", b"{}".to_vec()).await?;
//! let mut watcher = store.watch("/registry/configmaps/", kv.mod_revision).await?;
//! store.update("/registry/configmaps/default/a", b"{\"x\":1}".to_vec(), Some(kv.mod_revision)).await?;
//! let event = watcher.next().await.expect("watch open")?;
//! assert_eq!(event.kv.key, "/registry/configmaps/default/a");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod compaction;
mod sqlite;
mod watch;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

pub use compaction::{CompactionPolicy, Compactor};
pub use sqlite::{SqliteBackend, SqliteConfig};
pub use watch::{Cutoff, WatchLimits, Watcher};

/// A point in the store's history. Revision 0 is the empty store; the first
/// write is revision 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key and its value as of some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// The revision of the write that produced this value.
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the new value. For a delete, the key with an empty value,
    /// the deleted incarnation's create revision and `mod_revision` set to the
    /// delete's revision.
    pub kv: KeyValue,
    /// The value before this change; `None` when the key was created.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this change was committed.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// What a successful delete returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The value that was deleted, with its own revisions.
    pub prev: KeyValue,
    /// The revision of the delete itself.
    pub revision: Revision,
}

/// Options for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Read at this revision instead of the current one. Must not be older
    /// than the compacted revision nor newer than the current one.
    pub revision: Option<Revision>,
    /// Return at most this many items; `None` or `Some(0)` means all.
    pub limit: Option<usize>,
    /// Continue a previous paged list; the token fixes the revision, so
    /// `revision` must be `None` or equal to it.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The revision the whole list (every page of it) is consistent at.
    pub revision: Revision,
    /// Pass this to get the next page; `None` on the last page.
    pub continue_token: Option<String>,
}

/// Where a paged list stopped: the revision it reads at and the last key it
/// returned. Encoded as `<revision>/<hex of last key>` so that it is opaque,
/// printable and free of separators that clients might mangle. Callers that
/// filter a page may make their own token to stop at any key of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    pub revision: Revision,
    pub last_key: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        let mut s = format!("{}/", self.revision.0);
        for b in self.last_key.as_bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// # Errors
    /// [`Error::InvalidContinue`] for a token this store did not make.
    pub fn decode(token: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::InvalidContinue {
            token: token.to_owned(),
            reason: why.to_owned(),
        };
        let (rev, hex) = token
            .split_once('/')
            .ok_or_else(|| invalid("missing '/'"))?;
        let revision = rev
            .parse::<u64>()
            .map_err(|_| invalid("revision is not a number"))?;
        if hex.len() % 2 != 0 {
            return Err(invalid("odd-length key"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| invalid("key is not hex"))?;
        let last_key = String::from_utf8(bytes).map_err(|_| invalid("key is not UTF-8"))?;
        Ok(Self {
            revision: Revision(revision),
            last_key,
        })
    }
}

/// Everything that can go wrong in the store. The API layer maps
/// [`Error::AlreadyExists`] to 409 AlreadyExists, [`Error::Conflict`] to 409
/// Conflict, [`Error::NotFound`] to 404, [`Error::Compacted`] to 410 Gone and
/// [`Error::WatchLagged`] to a watch error the client resumes from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },

    #[error("key {key} not found")]
    NotFound { key: String },

    #[error(
        "key {key} was modified concurrently: expected mod revision {expected}, found {actual}; read it again and retry"
    )]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },

    #[error(
        "revision {requested} has been compacted (oldest available is {compacted}); list again from the current revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    #[error("invalid continue token {token:?}: {reason}")]
    InvalidContinue { token: String, reason: String },

    #[error(
        "watch fell more than {buffer} events or {bytes} bytes behind and was closed; resume it from revision {resume}"
    )]
    WatchLagged {
        resume: Revision,
        buffer: usize,
        bytes: usize,
    },

    #[error("cannot open {}: {problem}", path.display())]
    Open { path: PathBuf, problem: String },

    #[error("database {} failed while {step}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// The failure as the API server may tell its clients: without the
    /// database's path, which only the server's log shows. A full disk is
    /// named as such, so clients and operators see what to fix.
    pub fn public_message(&self) -> String {
        match self {
            Self::Sqlite { source, .. }
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                "the store is out of space".into()
            }
            Self::Sqlite { step, .. } => format!("the store failed while {step}"),
            Self::Open { .. } => "the store cannot be opened".into(),
            other => other.to_string(),
        }
    }
}

/// A boxed future, so that [`Backend`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The storage model: what a backend (SQLite today, etcd later) must provide.
///
/// Guarantees every implementation keeps:
/// - revisions increase by exactly one per successful write, with no gaps;
/// - a write is durable before its future resolves;
/// - watch events arrive in revision order, each exactly once, from the
///   requested revision onwards, or the watch ends with an error naming the
///   revision to resume from.
pub trait Backend: Send + Sync + 'static {
    /// The revision of the newest acknowledged write.
    fn current_revision(&self) -> Revision;
    /// Revisions older than this are gone.
    fn compacted_revision(&self) -> Revision;
    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>, Error>>;
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        options: ListOptions,
    ) -> BoxFuture<'a, Result<ListPage, Error>>;
    fn create(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, Result<KeyValue, Error>>;
    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<KeyValue, Error>>;
    fn delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Deleted, Error>>;
    /// Drop history before `revision`. Returns once the compaction is done.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<(), Error>>;
    /// Watch keys under `prefix`, starting with the first change after `after`.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<Watcher, Error>>;
}

/// The handle the rest of orch holds: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Open (or create) the SQLite store described by `config`.
    ///
    /// # Errors
    /// [`Error::Open`] when the file is corrupt, not an orch database, locked by
    /// another process, or cannot be created.
    pub fn open_sqlite(config: SqliteConfig) -> Result<Self, Error> {
        Ok(Self::new(Arc::new(SqliteBackend::open(config)?)))
    }

    pub fn current_revision(&self) -> Revision {
        self.backend.current_revision()
    }

    pub fn compacted_revision(&self) -> Revision {
        self.backend.compacted_revision()
    }

    /// The value of `key` now, or at `revision`.
    ///
    /// # Errors
    /// [`Error::Compacted`] / [`Error::FutureRevision`] for an unavailable revision.
    pub async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<Option<KeyValue>, Error> {
        self.backend.get(key, revision).await
    }

    /// Keys under `prefix` in key order, all at one revision.
    ///
    /// # Errors
    /// [`Error::Compacted`] when the list (or the list a continue token
    /// belongs to) is older than the compacted revision,
    /// [`Error::InvalidContinue`] for a token this store did not make.
    pub async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, Error> {
        self.backend.list(prefix, options).await
    }

    /// Create `key`; fails if it exists.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`].
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, Error> {
        self.backend.create(key.to_owned(), value).await
    }

    /// Replace the value of an existing `key`, if its mod revision is
    /// `expected` (when given).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`].
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<KeyValue, Error> {
        self.backend.update(key.to_owned(), value, expected).await
    }

    /// Delete `key`, if its mod revision is `expected` (when given).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`].
    pub async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted, Error> {
        self.backend.delete(key.to_owned(), expected).await
    }

    /// Remove history before `revision`.
    ///
    /// # Errors
    /// [`Error::FutureRevision`] when `revision` is newer than the current one.
    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        self.backend.compact(revision).await
    }

    /// Watch `prefix` for changes after `after`; pass the revision of a list
    /// to see every change since that list.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `after` is older than the compacted revision.
    pub async fn watch(&self, prefix: &str, after: Revision) -> Result<Watcher, Error> {
        self.backend.watch(prefix, after).await
    }
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when no such bound exists (empty prefix or all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests;
