//! The SQLite backend: an append-only log of every write, one row per
//! revision, in one table.
//!
//! Schema: `kv(revision PRIMARY KEY, key, create_revision, prev_revision,
//! deleted, value)`. The newest row of a key at or below a revision is the
//! key's state at that revision (a `deleted` row is a tombstone);
//! `prev_revision` links each row to the key's previous row, which gives
//! watch events their previous value and lets compaction find superseded rows
//! by walking only the revisions it compacts.
//!
//! Writes: one thread owns the only read-write connection. It takes every
//! queued request (up to `max_batch`), applies them in one transaction, each
//! with its own revision, commits with `synchronous=FULL`, publishes the
//! events, and only then answers the callers — durable before acknowledged,
//! one fsync per batch rather than per write (group commit). Compaction runs
//! on the same thread in small chunks between batches so it never holds
//! writers up for long.
//!
//! Reads run on tokio's blocking pool, each in one read transaction (a WAL
//! snapshot) on a pooled read-only connection, so a list is consistent at one
//! revision without blocking the writer.
//!
//! Startup refuses a file that is not ours, corrupt, or held by another
//! process, naming the path and the problem; it never re-initialises.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::watch::{History, Hub, WatchLimits};
use super::{
    BoxFuture, ContinueToken, Deleted, Error, Event, EventKind, KeyValue, ListOptions, ListPage,
    Revision, Watcher, prefix_end,
};

/// `PRAGMA application_id` of an orch store: "orch" in ASCII.
const APPLICATION_ID: i64 = 0x6f72_6368;
/// Bumped when the schema changes; older binaries refuse newer files.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE kv (
    revision        INTEGER PRIMARY KEY,
    key             BLOB    NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    value           BLOB    NOT NULL
);
CREATE INDEX kv_key_revision ON kv (key, revision);
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// How to open a SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file, e.g. `<data-dir>/server/db/state.db`.
    pub path: PathBuf,
    /// fsync every commit (`synchronous=FULL`). Only tests that do not test
    /// durability turn this off.
    pub durable: bool,
    /// Live events buffered per watcher before it is cut off.
    pub watch_buffer: usize,
    /// Bytes of live events (keys, values and previous values) buffered
    /// per watcher before it is cut off: what a client that stopped
    /// reading can pin.
    pub watch_buffer_bytes: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Idle read connections kept open.
    pub max_idle_readers: usize,
    /// Revisions compacted per transaction, so that writers wait at most one
    /// chunk for a compaction.
    pub compaction_chunk: u64,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durable: true,
            watch_buffer: 8192,
            watch_buffer_bytes: 16 * 1024 * 1024,
            max_batch: 512,
            max_idle_readers: 4,
            compaction_chunk: 2000,
        }
    }
}

/// The SQLite implementation of [`super::Backend`].
pub struct SqliteBackend {
    shared: Arc<Shared>,
    /// The writer thread holds the only other clone, so watchers end once
    /// the backend is dropped and the writer has stopped.
    hub: Hub,
    writes: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    /// Held (flock) for the backend's life so a second process cannot open
    /// the same file. Declared last: it must close after every SQLite
    /// connection, because closing any descriptor of a file drops the
    /// process's POSIX locks on it, which SQLite relies on.
    _lock: File,
}

struct Shared {
    path: PathBuf,
    readers: ReaderPool,
    current: AtomicU64,
    compacted: AtomicU64,
}

impl SqliteBackend {
    /// Open or create the store at `config.path`.
    ///
    /// # Errors
    /// [`Error::Open`] when the directory cannot be created, the file is in
    /// use by another process, is not an orch database, or is corrupt.
    pub fn open(config: SqliteConfig) -> Result<Self, Error> {
        let path = config.path.clone();
        let open_err = |problem: String| Error::Open {
            path: path.clone(),
            problem,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    open_err(format!(
                        "cannot create directory {}: {}",
                        dir.display(),
                        io_hint(&e)
                    ))
                })?;
        }
        // Only a file this call creates may start empty: orch writes the
        // SQLite header before it returns, so an empty file that was
        // already there is not an orch store (an interrupted first start,
        // a truncation, or another program's placeholder).
        let existed = path.exists();
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| open_err(io_hint(&e)))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(open_err(
                    "the database is in use by another process; is another orch server running with the same --data-dir?"
                        .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(open_err(format!("cannot lock the file: {e}")));
            }
        }
        if existed && lock.metadata().is_ok_and(|m| m.len() == 0) {
            return Err(open_err(
                "the file is empty, so not an orch store (an interrupted first start or a truncated file); remove it to start an empty store, or restore a backup"
                    .into(),
            ));
        }
        check_header(&mut lock).map_err(open_err)?;

        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(sqlite_hint(&e)))?;
        let state = prepare_writer(&mut conn, config.durable).map_err(open_err)?;

        let shared = Arc::new(Shared {
            path: path.clone(),
            readers: ReaderPool {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
                max_idle: config.max_idle_readers,
            },
            current: AtomicU64::new(state.current),
            compacted: AtomicU64::new(state.compact_revision),
        });
        // Fail now, not on the first request, if readers cannot open.
        shared.readers.read(|_, _| Ok(()))?;

        let hub = Hub::new(WatchLimits {
            events: config.watch_buffer,
            bytes: config.watch_buffer_bytes,
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            conn,
            shared: shared.clone(),
            hub: hub.clone(),
            max_batch: config.max_batch.max(1),
            chunk: config.compaction_chunk.max(1),
            compacted_through: state.compacted_through,
            compaction: (state.compacted_through < state.compact_revision).then(|| Compaction {
                target: state.compact_revision,
                waiters: Vec::new(),
            }),
        };
        let handle = std::thread::Builder::new()
            .name("orch-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(path = %path.display(), revision = state.current, compacted = state.compact_revision, "store opened");
        Ok(Self {
            shared,
            hub,
            writes: Some(tx),
            writer: Some(handle),
            _lock: lock,
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, Error> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or(Error::Closed)?
            .send(WriteRequest { op, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, Snapshot) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.readers.read(f))
            .await
            .map_err(|_| Error::Closed)?
    }
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after the queued writes.
        drop(self.writes.take());
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        if let Ok(mut idle) = self.shared.readers.idle.lock() {
            idle.clear();
        }
    }
}

impl super::Backend for SqliteBackend {
    fn current_revision(&self) -> Revision {
        Revision(self.shared.current.load(Ordering::Acquire))
    }

    fn compacted_revision(&self) -> Revision {
        Revision(self.shared.compacted.load(Ordering::Acquire))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>, Error>> {
        let key = key.to_owned();
        Box::pin(self.read(move |tx, snap| {
            let at = snap.resolve(revision)?;
            let row = latest_row(tx, &key, at.0).map_err(|e| snap.sqlite("reading a key", e))?;
            Ok(row.filter(|r| !r.deleted).map(|r| r.into_kv(key)))
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        options: ListOptions,
    ) -> BoxFuture<'a, Result<ListPage, Error>> {
        let prefix = prefix.to_owned();
        Box::pin(self.read(move |tx, snap| list_at(tx, snap, &prefix, options)))
    }

    fn create(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, Result<KeyValue, Error>> {
        Box::pin(async move {
            match self.write(WriteOp::Create { key, value }).await? {
                WriteOutcome::Put(kv) => Ok(kv),
                _ => unreachable!("create answers with a put"),
            }
        })
    }

    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<KeyValue, Error>> {
        Box::pin(async move {
            match self
                .write(WriteOp::Update {
                    key,
                    value,
                    expected,
                })
                .await?
            {
                WriteOutcome::Put(kv) => Ok(kv),
                _ => unreachable!("update answers with a put"),
            }
        })
    }

    fn delete(
        &self,
        key: String,
        expected: Option<Revision>,
    ) -> BoxFuture<'_, Result<Deleted, Error>> {
        Box::pin(async move {
            match self.write(WriteOp::Delete { key, expected }).await? {
                WriteOutcome::Deleted(d) => Ok(d),
                _ => unreachable!("delete answers with a delete"),
            }
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.write(WriteOp::Compact { revision }).await?;
            Ok(())
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<Watcher, Error>> {
        Box::pin(async move {
            // Subscribe before reading the replay bound: see watch.rs.
            let live = self.hub.subscribe(prefix);
            let upto = self
                .read(move |_, snap| {
                    if after < snap.compacted {
                        return Err(Error::Compacted {
                            requested: after,
                            compacted: snap.compacted,
                        });
                    }
                    Ok(snap.current)
                })
                .await?;
            let history: Arc<dyn History> = Arc::new(SqliteHistory(Arc::downgrade(&self.shared)));
            Ok(Watcher::new(
                prefix,
                after,
                upto,
                live,
                history,
                self.hub.limits(),
            ))
        })
    }
}

/// The current and compacted revisions as a read transaction sees them.
#[derive(Debug, Clone)]
struct Snapshot {
    path: Arc<Path>,
    current: Revision,
    compacted: Revision,
}

impl Snapshot {
    /// The revision a read at `requested` (or now) must use.
    fn resolve(&self, requested: Option<Revision>) -> Result<Revision, Error> {
        let Some(r) = requested else {
            return Ok(self.current);
        };
        if r < self.compacted {
            return Err(Error::Compacted {
                requested: r,
                compacted: self.compacted,
            });
        }
        if r > self.current {
            return Err(Error::FutureRevision {
                requested: r,
                current: self.current,
            });
        }
        Ok(r)
    }

    fn sqlite(&self, step: &'static str, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.path.to_path_buf(),
            step,
            source,
        }
    }
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReaderPool {
    /// Run `f` in one read transaction. Blocking: call from a blocking thread.
    fn read<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, Snapshot) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let sqlite = |step, source| Error::Sqlite {
            path: self.path.clone(),
            step,
            source,
        };
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|e| sqlite("opening a read connection", e))?,
        };
        let result = (|| {
            let tx = conn
                .transaction()
                .map_err(|e| sqlite("starting a read", e))?;
            let meta = read_meta(&tx).map_err(|e| sqlite("reading the store revision", e))?;
            let snap = Snapshot {
                path: Arc::from(self.path.as_path()),
                current: Revision(meta.current),
                compacted: Revision(meta.compact_revision),
            };
            let out = f(&tx, snap)?;
            tx.commit().map_err(|e| sqlite("ending a read", e))?;
            Ok(out)
        })();
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // 1 MiB of page cache per reader: enough for index pages, and readers
    // are many while the writer is one.
    conn.execute_batch("PRAGMA cache_size = -1024;")?;
    Ok(conn)
}

/// Weak, so that a forgotten watcher does not keep the database open.
struct SqliteHistory(std::sync::Weak<Shared>);

impl History for SqliteHistory {
    fn read_history<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, Error>> {
        let shared = self.0.upgrade();
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let shared = shared.ok_or(Error::Closed)?;
            tokio::task::spawn_blocking(move || {
                shared.readers.read(move |tx, snap| {
                    if after < snap.compacted {
                        return Err(Error::Compacted {
                            requested: after,
                            compacted: snap.compacted,
                        });
                    }
                    read_events(tx, &prefix, after, upto, limit)
                        .map_err(|e| snap.sqlite("replaying watch history", e))
                })
            })
            .await
            .map_err(|_| Error::Closed)?
        })
    }
}

/// Events under `prefix` in `(after, upto]`, each with its previous value.
fn read_events(
    tx: &rusqlite::Transaction<'_>,
    prefix: &str,
    after: Revision,
    upto: Revision,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let end = prefix_end(prefix.as_bytes());
    let sql = format!(
        "SELECT a.revision, a.key, a.create_revision, a.deleted, a.value,
                p.revision, p.create_revision, p.deleted, p.value
         FROM kv a LEFT JOIN kv p ON p.revision = a.prev_revision
         WHERE a.revision > ?1 AND a.revision <= ?2 AND a.key >= ?3 {}
         ORDER BY a.revision LIMIT ?5",
        if end.is_some() {
            "AND a.key < ?4"
        } else {
            "AND ?4 IS NULL"
        }
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![
            after.0 as i64,
            upto.0 as i64,
            prefix.as_bytes(),
            end,
            limit as i64
        ],
        |r| {
            let revision: i64 = r.get(0)?;
            let key = key_from_blob(r.get(1)?);
            let deleted: bool = r.get(3)?;
            let prev_rev: Option<i64> = r.get(5)?;
            let prev_deleted: Option<bool> = r.get(7)?;
            let prev = match (prev_rev, prev_deleted) {
                (Some(rev), Some(false)) => Some(KeyValue {
                    key: key.clone(),
                    value: r.get(8)?,
                    create_revision: Revision(r.get::<_, i64>(6)? as u64),
                    mod_revision: Revision(rev as u64),
                }),
                _ => None,
            };
            Ok(Event {
                kind: if deleted {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: KeyValue {
                    key,
                    value: r.get(4)?,
                    create_revision: Revision(r.get::<_, i64>(2)? as u64),
                    mod_revision: Revision(revision as u64),
                },
                prev,
            })
        },
    )?;
    rows.collect()
}

fn list_at(
    tx: &rusqlite::Transaction<'_>,
    snap: Snapshot,
    prefix: &str,
    options: ListOptions,
) -> Result<ListPage, Error> {
    let (requested, start) = match &options.continue_token {
        Some(token) => {
            let token = ContinueToken::decode(token)?;
            if !token.last_key.starts_with(prefix) {
                return Err(Error::InvalidContinue {
                    token: options.continue_token.clone().unwrap_or_default(),
                    reason: format!("it belongs to a list of another prefix than {prefix}"),
                });
            }
            if options.revision.is_some_and(|r| r != token.revision) {
                return Err(Error::InvalidContinue {
                    token: options.continue_token.clone().unwrap_or_default(),
                    reason: "it was issued for another revision".into(),
                });
            }
            // The smallest key after the last one returned.
            let mut start = token.last_key.into_bytes();
            start.push(0);
            (Some(token.revision), start)
        }
        None => (options.revision, prefix.as_bytes().to_vec()),
    };
    let at = snap.resolve(requested)?;
    let limit = options.limit.filter(|&l| l > 0);
    let end = prefix_end(prefix.as_bytes());
    // SQLite documents that with a single max() aggregate, bare columns come
    // from the row holding the maximum, so this reads each key's newest row at
    // or below the revision, walking the (key, revision) index in key order.
    let sql = format!(
        "SELECT key, max(revision), create_revision, deleted, value FROM kv
         WHERE key >= ?1 {} AND revision <= ?3
         GROUP BY key HAVING deleted = 0 ORDER BY key LIMIT ?4",
        if end.is_some() {
            "AND key < ?2"
        } else {
            "AND ?2 IS NULL"
        }
    );
    let fetch = limit.map_or(-1, |l| l as i64 + 1);
    let mut stmt = tx
        .prepare_cached(&sql)
        .map_err(|e| snap.sqlite("listing keys", e))?;
    let mut items = stmt
        .query_map(params![start, end, at.0 as i64, fetch], |r| {
            Ok(KeyValue {
                key: key_from_blob(r.get(0)?),
                mod_revision: Revision(r.get::<_, i64>(1)? as u64),
                create_revision: Revision(r.get::<_, i64>(2)? as u64),
                value: r.get(4)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| snap.sqlite("listing keys", e))?;
    let continue_token = match limit {
        Some(l) if items.len() > l => {
            items.truncate(l);
            items.last().map(|kv| {
                ContinueToken {
                    revision: at,
                    last_key: kv.key.clone(),
                }
                .encode()
            })
        }
        _ => None,
    };
    Ok(ListPage {
        items,
        revision: at,
        continue_token,
    })
}

/// Keys are stored as BLOBs so that range bounds compare bytewise; they were
/// written from `&str`, so they are UTF-8.
fn key_from_blob(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

struct Row {
    revision: i64,
    create_revision: i64,
    deleted: bool,
    value: Vec<u8>,
}

impl Row {
    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: Revision(self.create_revision as u64),
            mod_revision: Revision(self.revision as u64),
        }
    }
}

/// A revision above every real one (SQLite integers are signed).
const LATEST: u64 = i64::MAX as u64;

/// The newest row of `key` at or below `at`.
fn latest_row(conn: &Connection, key: &str, at: u64) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT revision, create_revision, deleted, value FROM kv
         WHERE key = ?1 AND revision <= ?2 ORDER BY revision DESC LIMIT 1",
    )?
    .query_row(params![key.as_bytes(), at as i64], |r| {
        Ok(Row {
            revision: r.get(0)?,
            create_revision: r.get(1)?,
            deleted: r.get(2)?,
            value: r.get(3)?,
        })
    })
    .optional()
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    current: u64,
    compact_revision: u64,
    compacted_through: u64,
}

fn read_meta(conn: &Connection) -> rusqlite::Result<Meta> {
    let get = |name: &str| -> rusqlite::Result<u64> {
        conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
            .query_row([name], |r| r.get::<_, i64>(0))
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
    };
    Ok(Meta {
        current: get("current_revision")?,
        compact_revision: get("compact_revision")?,
        compacted_through: get("compacted_through")?,
    })
}

fn set_meta(conn: &Connection, name: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value as i64])?;
    Ok(())
}

/// Refuse files that are not SQLite before SQLite touches them.
fn check_header(file: &mut File) -> Result<(), String> {
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("cannot read the file: {e}")),
        }
    }
    if read == 0 || &header[..read] == b"SQLite format 3\0" {
        return Ok(());
    }
    Err("the file is not a SQLite database (corrupt, or written by another program); move it away to start an empty store, or restore a backup".into())
}

/// Configure the writer connection and check (or create) the schema.
fn prepare_writer(conn: &mut Connection, durable: bool) -> Result<Meta, String> {
    let step = |what: &str, e: rusqlite::Error| format!("{what}: {}", sqlite_hint(&e));
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| step("cannot configure the connection", e))?;
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| step("cannot read the database header", e))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| step("cannot read the schema", e))?;
    let fresh = app_id == 0 && tables.is_empty();
    if !fresh && app_id != APPLICATION_ID {
        return Err(format!(
            "the file is a SQLite database of another program (application id {app_id:#x}, tables: {}), not an orch store; pass another --data-dir or move the file away",
            if tables.is_empty() {
                "none".to_owned()
            } else {
                tables.join(", ")
            }
        ));
    }
    if !fresh {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| step("the integrity check failed", e))?;
        if check != "ok" {
            return Err(format!(
                "the database is corrupt ({check}); restore it from a backup or move it away to start an empty store"
            ));
        }
    }
    // Auto-vacuum must be chosen before the first table exists.
    let pragmas = format!(
        "{} PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA journal_size_limit = {}; PRAGMA temp_store = MEMORY;",
        if fresh {
            "PRAGMA auto_vacuum = INCREMENTAL;"
        } else {
            ""
        },
        if durable { "FULL" } else { "OFF" },
        64 * 1024 * 1024,
    );
    conn.execute_batch(&pragmas)
        .map_err(|e| step("cannot configure the database", e))?;
    if fresh {
        let tx = conn
            .transaction()
            .map_err(|e| step("cannot create the schema", e))?;
        tx.execute_batch(SCHEMA)
            .and_then(|_| tx.pragma_update(None, "application_id", APPLICATION_ID))
            .and_then(|_| set_meta(&tx, "schema_version", SCHEMA_VERSION as u64))
            .and_then(|_| set_meta(&tx, "current_revision", 0))
            .and_then(|_| set_meta(&tx, "compact_revision", 0))
            .and_then(|_| set_meta(&tx, "compacted_through", 0))
            .and_then(|_| tx.commit())
            .map_err(|e| step("cannot create the schema", e))?;
    } else {
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| step("cannot read the schema version", e))?;
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(format!(
                    "the store has schema version {v}, newer than this orch understands ({SCHEMA_VERSION}); run a newer orch"
                ));
            }
            other => {
                return Err(format!(
                    "the store has an unknown schema version ({other:?}); restore it from a backup"
                ));
            }
        }
    }
    read_meta(conn).map_err(|e| step("cannot read the store revision", e))
}

/// Turn an IO error into words that say what to do.
fn io_hint(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "permission denied; run as root or pass a writable --data-dir".into()
        }
        std::io::ErrorKind::ReadOnlyFilesystem => {
            "the file system is read-only; pass a writable --data-dir".into()
        }
        _ => e.to_string(),
    }
}

fn sqlite_hint(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "the file is not a SQLite database (corrupt, or written by another program); move it away to start an empty store, or restore a backup".into()
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            format!("the database is corrupt ({e}); restore it from a backup or move it away to start an empty store")
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            "the database is locked by another process; is another orch server running with the same --data-dir?".into()
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied) => {
            "permission denied; run as root or pass a writable --data-dir".into()
        }
        _ => e.to_string(),
    }
}

// ---- the writer thread ----

enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum WriteOutcome {
    Put(KeyValue),
    Deleted(Deleted),
    Compacted,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, Error>>,
}

struct Compaction {
    target: u64,
    waiters: Vec<oneshot::Sender<Result<WriteOutcome, Error>>>,
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    hub: Hub,
    max_batch: usize,
    chunk: u64,
    compacted_through: u64,
    compaction: Option<Compaction>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteRequest>) {
        loop {
            // Wait for work unless a compaction has chunks left to do.
            let first = if self.compaction.is_some() {
                match rx.try_recv() {
                    Ok(req) => Some(req),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(req) => Some(req),
                    Err(_) => break,
                }
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < self.max_batch {
                    match rx.try_recv() {
                        Ok(req) => batch.push(req),
                        Err(_) => break,
                    }
                }
                self.commit_batch(batch);
            }
            if self.compaction.is_some() {
                self.compact_chunk();
            }
        }
        tracing::debug!("store writer stopped");
    }

    fn sqlite(&self, step: &'static str, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: self.shared.path.clone(),
            step,
            source,
        }
    }

    /// Apply `batch` in one transaction and answer each request.
    fn commit_batch(&mut self, batch: Vec<WriteRequest>) {
        let path = self.shared.path.clone();
        let sqlite = |step, source| Error::Sqlite {
            path: path.clone(),
            step,
            source,
        };
        let start = self.shared.current.load(Ordering::Acquire);
        let mut revision = start;
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut compactions = Vec::new();
        let committed = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut failure = None;
            for req in batch {
                if let WriteOp::Compact { revision: target } = req.op {
                    compactions.push((target, req.reply));
                    continue;
                }
                if failure.is_some() {
                    replies.push((req.reply, Err(Error::Closed)));
                    continue;
                }
                match apply(&tx, &mut revision, req.op) {
                    Ok(Applied::Done(outcome, event)) => {
                        events.extend(event);
                        replies.push((req.reply, Ok(outcome)));
                    }
                    Ok(Applied::Refused(err)) => replies.push((req.reply, Err(err))),
                    Err(e) => {
                        failure = Some(e);
                        replies.push((req.reply, Err(Error::Closed)));
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if revision != start {
                set_meta(&tx, "current_revision", revision)?;
            }
            tx.commit()
        })();
        if let Err(e) = committed {
            // The transaction rolled back: nothing in the batch was applied,
            // and every caller learns why.
            let err = sqlite("committing writes", e);
            tracing::error!(%err, "store write failed");
            fail_all(replies.into_iter().map(|(r, _)| r), &err);
            fail_all(compactions.into_iter().map(|(_, r)| r), &err);
            return;
        }
        self.shared.current.store(revision, Ordering::Release);
        for event in events {
            self.hub.publish(Arc::new(event));
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        for (target, reply) in compactions {
            self.start_compaction(target, reply);
        }
    }

    /// Record a compaction target; rows are removed chunk by chunk later.
    fn start_compaction(
        &mut self,
        target: Revision,
        reply: oneshot::Sender<Result<WriteOutcome, Error>>,
    ) {
        let current = self.shared.current.load(Ordering::Acquire);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if target.0 > current {
            let _ = reply.send(Err(Error::FutureRevision {
                requested: target,
                current: Revision(current),
            }));
            return;
        }
        if target.0 > compacted {
            // From this commit on, reads older than the target fail even
            // though the rows are removed later.
            if let Err(e) = set_meta(&self.conn, "compact_revision", target.0) {
                let _ = reply.send(Err(self.sqlite("recording a compaction", e)));
                return;
            }
            self.shared.compacted.store(target.0, Ordering::Release);
        }
        if self.compacted_through >= target.0 {
            let _ = reply.send(Ok(WriteOutcome::Compacted));
            return;
        }
        let job = self.compaction.get_or_insert(Compaction {
            target: target.0,
            waiters: Vec::new(),
        });
        job.target = job.target.max(target.0);
        job.waiters.push(reply);
    }

    /// Remove superseded rows and tombstones for one chunk of revisions.
    fn compact_chunk(&mut self) {
        let Some(job) = self.compaction.as_ref() else {
            return;
        };
        let lo = self.compacted_through;
        let hi = job.target.min(lo + self.chunk);
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A row is superseded once a newer row of its key is at or below
            // the target: each row in (lo, hi] supersedes its prev_revision.
            // SQLite evaluates the IN list before deleting.
            tx.execute(
                "DELETE FROM kv WHERE revision IN (
                     SELECT prev_revision FROM kv
                     WHERE revision > ?1 AND revision <= ?2 AND prev_revision > 0)",
                params![lo as i64, hi as i64],
            )?;
            tx.execute(
                "DELETE FROM kv WHERE revision > ?1 AND revision <= ?2 AND deleted = 1",
                params![lo as i64, hi as i64],
            )?;
            set_meta(&tx, "compacted_through", hi)?;
            tx.commit()
        })();
        match result {
            Ok(()) => self.compacted_through = hi,
            Err(e) => {
                let err = self.sqlite("compacting", e);
                tracing::error!(%err, "store compaction failed");
                if let Some(job) = self.compaction.take() {
                    fail_all(job.waiters, &err);
                }
                return;
            }
        }
        if hi >= job.target {
            if let Some(job) = self.compaction.take() {
                for w in job.waiters {
                    let _ = w.send(Ok(WriteOutcome::Compacted));
                }
            }
            self.release_free_pages();
            tracing::debug!(revision = hi, "store compacted");
        }
    }

    /// Give pages freed by compaction back to the file system when they are
    /// a large part of the file; otherwise SQLite reuses them for new rows.
    fn release_free_pages(&mut self) {
        let counts = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
            .and_then(|free| {
                self.conn
                    .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                    .map(|pages| (free, pages))
            });
        if let Ok((free, pages)) = counts
            && free > 256
            && free * 4 > pages
            && let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum;")
        {
            tracing::warn!(error = %e, "store vacuum failed, will retry after the next compaction");
        }
    }
}

enum Applied {
    Done(WriteOutcome, Option<Event>),
    /// The request was refused (exists, missing, conflict); nothing written.
    Refused(Error),
}

/// Apply one write inside the batch transaction, taking the next revision.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    revision: &mut u64,
    op: WriteOp,
) -> rusqlite::Result<Applied> {
    let (key, value, expected, delete) = match op {
        WriteOp::Create { key, value } => {
            let latest = latest_row(tx, &key, LATEST)?;
            if latest.as_ref().is_some_and(|r| !r.deleted) {
                return Ok(Applied::Refused(Error::AlreadyExists { key }));
            }
            let rev = *revision + 1;
            let prev_row = latest.map_or(0, |r| r.revision as u64);
            insert_row(tx, rev, &key, rev, prev_row, false, &value)?;
            *revision = rev;
            let kv = KeyValue {
                key,
                value,
                create_revision: Revision(rev),
                mod_revision: Revision(rev),
            };
            let event = Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            };
            return Ok(Applied::Done(WriteOutcome::Put(kv), Some(event)));
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => (key, value, expected, false),
        WriteOp::Delete { key, expected } => (key, Vec::new(), expected, true),
        WriteOp::Compact { .. } => unreachable!("compactions are not applied in a batch"),
    };
    let Some(current) = latest_row(tx, &key, LATEST)?.filter(|r| !r.deleted) else {
        return Ok(Applied::Refused(Error::NotFound { key }));
    };
    if let Some(expected) = expected
        && expected.0 != current.revision as u64
    {
        return Ok(Applied::Refused(Error::Conflict {
            key,
            expected,
            actual: Revision(current.revision as u64),
        }));
    }
    let rev = *revision + 1;
    insert_row(
        tx,
        rev,
        &key,
        current.create_revision as u64,
        current.revision as u64,
        delete,
        &value,
    )?;
    *revision = rev;
    let prev = current.into_kv(key.clone());
    let kv = KeyValue {
        key,
        value,
        create_revision: prev.create_revision,
        mod_revision: Revision(rev),
    };
    Ok(if delete {
        let outcome = WriteOutcome::Deleted(Deleted {
            prev: prev.clone(),
            revision: Revision(rev),
        });
        let event = Event {
            kind: EventKind::Delete,
            kv,
            prev: Some(prev),
        };
        Applied::Done(outcome, Some(event))
    } else {
        let event = Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev: Some(prev),
        };
        Applied::Done(WriteOutcome::Put(kv), Some(event))
    })
}

fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    revision: u64,
    key: &str,
    create_revision: u64,
    prev_revision: u64,
    deleted: bool,
    value: &[u8],
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO kv (revision, key, create_revision, prev_revision, deleted, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        revision as i64,
        key.as_bytes(),
        create_revision as i64,
        prev_revision as i64,
        deleted,
        value
    ])?;
    Ok(())
}

fn fail_all(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<WriteOutcome, Error>>>,
    err: &Error,
) {
    for reply in replies {
        let _ = reply.send(Err(copy_error(err)));
    }
}

/// Store errors are not `Clone` (rusqlite's are not); one batch failure is
/// reported to every caller in the batch with the same message.
fn copy_error(err: &Error) -> Error {
    match err {
        Error::Sqlite { path, step, source } => Error::Sqlite {
            path: path.clone(),
            step,
            source: match source {
                rusqlite::Error::SqliteFailure(code, msg) => {
                    rusqlite::Error::SqliteFailure(*code, msg.clone())
                }
                other => rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(other.to_string()),
                ),
            },
        },
        _ => Error::Closed,
    }
}
