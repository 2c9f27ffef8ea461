//! Watch a prefix of the store while writing to it.
//!
//! `cargo run --example store_watch` — uses a throwaway store in a temp dir.

use orch::store::{EventKind, SqliteConfig, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_sqlite(SqliteConfig::new(dir.path().join("state.db")))?;

    let mut watcher = store
        .watch("/registry/configmaps/", store.current_revision())
        .await?;

    let created = store
        .create(
            "/registry/configmaps/default/demo",
            br#"{"data":{"a":"1"}}"#.to_vec(),
        )
        .await?;
    store
        .update(
            "/registry/configmaps/default/demo",
            br#"{"data":{"a":"2"}}"#.to_vec(),
            Some(created.mod_revision),
        )
        .await?;
    store
        .delete("/registry/configmaps/default/demo", None)
        .await?;

    for _ in 0..3 {
        let Some(event) = watcher.next().await else {
            break;
        };
        let event = event?;
        let verb = match (event.kind, &event.prev) {
            (EventKind::Put, None) => "ADDED",
            (EventKind::Put, Some(_)) => "MODIFIED",
            (EventKind::Delete, _) => "DELETED",
        };
        println!(
            "{verb:<9} {} at revision {}: {}",
            event.kv.key,
            event.revision(),
            String::from_utf8_lossy(if event.kind == EventKind::Delete {
                &event
                    .prev
                    .as_ref()
                    .expect("a delete has a previous value")
                    .value
            } else {
                &event.kv.value
            })
        );
    }
    Ok(())
}
