//! Fixtures for store tests: a store in a temporary directory.

use tempfile::TempDir;

use super::{SqliteConfig, Store};

/// A fresh store without fsync (durability is tested separately).
pub fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let store = open_in(&dir);
    (dir, store)
}

pub fn config_in(dir: &TempDir) -> SqliteConfig {
    let mut config = SqliteConfig::new(dir.path().join("state.db"));
    config.durable = false;
    config
}

pub fn open_in(dir: &TempDir) -> Store {
    Store::open_sqlite(config_in(dir)).expect("open store")
}
