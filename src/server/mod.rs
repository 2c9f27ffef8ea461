//! `orch server`: the control plane. Today it owns the state store and its
//! compaction; the API server, scheduler, controllers and the embedded agent
//! join it in later issues (#3, #4, #5).

#![forbid(unsafe_code)]

pub mod auth;

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::store::{self, CompactionPolicy, Compactor, SqliteConfig, Store};

/// What `orch server` needs to run, already validated by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub compaction: CompactionPolicy,
}

impl Config {
    /// `<data-dir>/server/db/state.db`
    pub fn store_path(&self) -> PathBuf {
        store_path(&self.data_dir)
    }
}

/// Where the store lives under a data dir.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("state.db")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Run the server until `shutdown` resolves.
///
/// # Errors
/// Fails when the store cannot be opened; the message names the file and
/// what to do.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let path = config.store_path();
    // Opening checks the file's integrity: file IO, so off the runtime.
    let store = tokio::task::spawn_blocking(move || Store::open_sqlite(SqliteConfig::new(path)))
        .await
        .map_err(|_| store::Error::Closed)??;
    let compactor = Compactor::spawn(store.clone(), config.compaction);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        revision = %store.current_revision(),
        "orch server ready"
    );
    shutdown.await;
    tracing::info!("orch server shutting down");
    compactor.abort();
    let _ = compactor.await;
    // Dropping the last handle flushes queued writes and closes the file.
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .map_err(|_| store::Error::Closed)?;
    Ok(())
}
