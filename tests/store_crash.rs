//! Durability: writes acknowledged before a SIGKILL are all there after it.
//!
//! The test re-runs its own binary as the child (selected by an environment
//! variable); the child writes as fast as it can and prints each acknowledged
//! write; the parent kills it with SIGKILL mid-stream, reopens the store and
//! checks every acknowledged write and SQLite's integrity check.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use orch::store::{Revision, SqliteConfig, Store};

const CHILD_ENV: &str = "ORCH_CRASH_TEST_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_writes_survive_sigkill";
const ACKS_BEFORE_KILL: usize = 3000;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_writes_forever(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut acked: HashMap<String, (u64, String)> = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let Some(rest) = line.strip_prefix("ack ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (key, rev, value) = (
            parts.next().expect("key").to_owned(),
            parts.next().expect("rev").parse::<u64>().expect("rev"),
            parts.next().expect("value").to_owned(),
        );
        acked.insert(key, (rev, value));
        if acked.len() >= ACKS_BEFORE_KILL {
            break;
        }
    }
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "the child stopped after {} acknowledged writes",
        acked.len()
    );
    // SIGKILL while the child's writers are still going.
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");

    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open with sqlite");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check runs");
        assert_eq!(check, "ok", "integrity check after SIGKILL");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open_sqlite(SqliteConfig::new(&path)).expect("reopen after SIGKILL");
        let max_acked = acked.values().map(|(rev, _)| *rev).max().unwrap_or(0);
        assert!(
            store.current_revision() >= Revision(max_acked),
            "current revision {} is below an acknowledged one {max_acked}",
            store.current_revision()
        );
        let mut missing = Vec::new();
        for (key, (rev, value)) in &acked {
            match store.get(key, None).await.expect("get") {
                Some(kv) if kv.mod_revision >= Revision(*rev) => {
                    if kv.mod_revision == Revision(*rev) {
                        assert_eq!(kv.value, value.as_bytes(), "value of {key}");
                    }
                }
                other => missing.push(format!("{key}@{rev}: {other:?}")),
            }
        }
        assert!(
            missing.is_empty(),
            "{} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    });
}

/// The child: 16 writers creating and updating keys until killed, printing
/// `ack <key> <revision> <value>` once each write is acknowledged.
fn child_writes_forever(dir: &Path) -> ! {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store =
            Store::open_sqlite(SqliteConfig::new(dir.join("state.db"))).expect("open store");
        let mut tasks = Vec::new();
        for w in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                loop {
                    // Every writer creates a key, then updates it once, so
                    // both creates and updates are in flight at the kill.
                    let key = format!("/crash/{w}/{}", i / 2);
                    let value = format!("v{i}-{}", "x".repeat(200));
                    let kv = if i.is_multiple_of(2) {
                        store.create(&key, value.clone().into_bytes()).await
                    } else {
                        store.update(&key, value.clone().into_bytes(), None).await
                    }
                    .expect("write");
                    println!("ack {key} {} {value}", kv.mod_revision);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    unreachable!("the writers run until the parent kills this process")
}
