//! Behaviour of the store through its public handle, on real SQLite files.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::test_util::{config_in, open_in, temp_store};
use super::*;

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn next_event(w: &mut Watcher) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event did not arrive within 5s")
        .expect("watch ended unexpectedly")
        .expect("watch failed")
}

#[tokio::test]
async fn every_write_takes_the_next_revision() {
    let (_dir, store) = temp_store();
    assert_eq!(store.current_revision(), Revision(0));
    let a = store.create("/a", v("1")).await.unwrap();
    let b = store.create("/b", v("1")).await.unwrap();
    let a2 = store.update("/a", v("2"), None).await.unwrap();
    let d = store.delete("/b", None).await.unwrap();
    assert_eq!(
        [a.mod_revision, b.mod_revision, a2.mod_revision, d.revision],
        [Revision(1), Revision(2), Revision(3), Revision(4)]
    );
    assert_eq!(
        a2.create_revision,
        Revision(1),
        "update keeps create_revision"
    );
    assert_eq!(d.prev.value, v("1"), "delete returns the deleted value");
    assert_eq!(store.current_revision(), Revision(4));
}

#[tokio::test]
async fn refused_writes_change_nothing_and_take_no_revision() {
    let (_dir, store) = temp_store();
    let a = store.create("/a", v("1")).await.unwrap();
    let err = store.create("/a", v("x")).await.unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { ref key } if key == "/a"),
        "{err}"
    );
    let err = store.update("/missing", v("x"), None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = store.delete("/missing", None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let err = store
        .update("/a", v("x"), Some(Revision(99)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { expected: Revision(99), actual, .. } if actual == a.mod_revision),
        "{err}"
    );
    let err = store.delete("/a", Some(Revision(99))).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(store.current_revision(), Revision(1));
    assert_eq!(store.get("/a", None).await.unwrap().unwrap().value, v("1"));
}

#[tokio::test]
async fn compare_and_swap_succeeds_with_the_current_mod_revision() {
    let (_dir, store) = temp_store();
    let a = store.create("/a", v("1")).await.unwrap();
    let a2 = store
        .update("/a", v("2"), Some(a.mod_revision))
        .await
        .unwrap();
    let err = store
        .update("/a", v("3"), Some(a.mod_revision))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. }),
        "stale revision must conflict"
    );
    store.delete("/a", Some(a2.mod_revision)).await.unwrap();
    assert_eq!(store.get("/a", None).await.unwrap(), None);
}

#[tokio::test]
async fn recreated_key_gets_a_new_create_revision() {
    let (_dir, store) = temp_store();
    store.create("/a", v("1")).await.unwrap();
    store.delete("/a", None).await.unwrap();
    let again = store.create("/a", v("2")).await.unwrap();
    assert_eq!(again.create_revision, Revision(3));
}

#[tokio::test]
async fn get_reads_past_revisions() {
    let (_dir, store) = temp_store();
    store.create("/a", v("1")).await.unwrap();
    store.update("/a", v("2"), None).await.unwrap();
    store.delete("/a", None).await.unwrap();
    let at = |r| store.get("/a", Some(Revision(r)));
    assert_eq!(at(1).await.unwrap().unwrap().value, v("1"));
    assert_eq!(at(2).await.unwrap().unwrap().value, v("2"));
    assert_eq!(at(3).await.unwrap(), None);
    let err = at(4).await.unwrap_err();
    assert!(matches!(err, Error::FutureRevision { .. }), "{err}");
}

#[tokio::test]
async fn list_stays_inside_the_prefix() {
    let (_dir, store) = temp_store();
    for key in ["/r/a", "/r/a/x", "/r/b", "/r0", "/q", "/r"] {
        store.create(key, v(key)).await.unwrap();
    }
    let page = store.list("/r/", ListOptions::default()).await.unwrap();
    let keys: Vec<_> = page.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/r/a", "/r/a/x", "/r/b"]);
    assert_eq!(page.continue_token, None);
    assert_eq!(page.revision, Revision(6));
}

#[tokio::test]
async fn paged_list_is_consistent_at_the_first_page_revision() {
    let (_dir, store) = temp_store();
    for i in 0..10 {
        store.create(&format!("/p/{i}"), v("old")).await.unwrap();
    }
    let opts = |token| ListOptions {
        limit: Some(4),
        continue_token: token,
        ..Default::default()
    };
    let first = store.list("/p/", opts(None)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    // Changes after the first page must not show up in later pages.
    store.update("/p/7", v("new"), None).await.unwrap();
    store.delete("/p/8", None).await.unwrap();
    store.create("/p/99", v("new")).await.unwrap();
    let mut all = first.items.clone();
    let mut token = first.continue_token.clone();
    while let Some(t) = token {
        let page = store.list("/p/", opts(Some(t))).await.unwrap();
        assert_eq!(page.revision, first.revision);
        all.extend(page.items);
        token = page.continue_token;
    }
    let keys: Vec<_> = all.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<_> = (0..10).map(|i| format!("/p/{i}")).collect();
    assert_eq!(keys, expected);
    assert!(all.iter().all(|kv| kv.value == v("old")));
}

#[tokio::test]
async fn bad_continue_tokens_are_refused() {
    let (_dir, store) = temp_store();
    store.create("/p/a", v("1")).await.unwrap();
    store.create("/p/b", v("1")).await.unwrap();
    for token in ["garbage", "12/zz", "x/00", "1/2f70"] {
        let err = store
            .list(
                "/p/",
                ListOptions {
                    continue_token: Some(token.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidContinue { .. }),
            "{token}: {err}"
        );
    }
    let page = store
        .list(
            "/p/",
            ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = store
        .list(
            "/other/",
            ListOptions {
                continue_token: page.continue_token,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidContinue { .. }), "{err}");
}

#[tokio::test]
async fn compaction_makes_old_revisions_gone_and_keeps_the_state() {
    let (_dir, store) = temp_store();
    store.create("/c/a", v("1")).await.unwrap();
    store.create("/c/b", v("1")).await.unwrap();
    let page = store
        .list(
            "/c/",
            ListOptions {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store.update("/c/a", v("2"), None).await.unwrap();
    store.delete("/c/b", None).await.unwrap();
    store.create("/c/c", v("1")).await.unwrap();
    store.compact(Revision(4)).await.unwrap();
    assert_eq!(store.compacted_revision(), Revision(4));

    let err = store.get("/c/a", Some(Revision(3))).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Compacted {
                requested: Revision(3),
                compacted: Revision(4)
            }
        ),
        "{err}"
    );
    let err = store
        .list(
            "/c/",
            ListOptions {
                continue_token: page.continue_token,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Compacted { .. }),
        "old continue token: {err}"
    );
    let err = store.watch("/c/", Revision(3)).await.err().unwrap();
    assert!(matches!(err, Error::Compacted { .. }), "{err}");

    let at4 = store
        .list(
            "/c/",
            ListOptions {
                revision: Some(Revision(4)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let state: Vec<_> = at4
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone()))
        .collect();
    assert_eq!(state, [("/c/a", v("2"))]);
    let mut w = store.watch("/c/", Revision(4)).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kv.key.as_str(), e.revision()), ("/c/c", Revision(5)));
}

#[tokio::test]
async fn compaction_to_a_future_revision_is_refused() {
    let (_dir, store) = temp_store();
    store.create("/a", v("1")).await.unwrap();
    let err = store.compact(Revision(5)).await.unwrap_err();
    assert!(matches!(err, Error::FutureRevision { .. }), "{err}");
}

#[tokio::test]
async fn watch_delivers_puts_and_deletes_with_previous_values() {
    let (_dir, store) = temp_store();
    let mut w = store.watch("/w/", store.current_revision()).await.unwrap();
    store.create("/w/a", v("1")).await.unwrap();
    store.create("/elsewhere", v("1")).await.unwrap();
    store.update("/w/a", v("2"), None).await.unwrap();
    store.delete("/w/a", None).await.unwrap();

    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.prev.as_ref()),
        (EventKind::Put, Revision(1), None)
    );
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.revision()), (EventKind::Put, Revision(3)));
    assert_eq!(e.kv.value, v("2"));
    assert_eq!(e.prev.as_ref().unwrap().value, v("1"));
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.revision()), (EventKind::Delete, Revision(4)));
    assert_eq!(e.prev.as_ref().unwrap().value, v("2"));
    assert_eq!(e.kv.create_revision, Revision(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resuming_under_load_has_no_gaps_or_duplicates() {
    let (_dir, store) = temp_store();
    for i in 0..500 {
        store.create(&format!("/g/{i}"), v("x")).await.unwrap();
    }
    // Writers keep going while the watch starts from an old revision.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 500..1500 {
                store.create(&format!("/g/{i}"), v("x")).await.unwrap();
            }
        })
    };
    let mut w = store.watch("/g/", Revision(100)).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 1400 {
        seen.push(next_event(&mut w).await.revision().0);
    }
    writer.await.unwrap();
    let expected: Vec<u64> = (101..=1500).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn slow_watcher_is_cut_off_without_stalling_writers_and_can_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(&dir);
    config.watch_buffer = 16;
    let store = Store::open_sqlite(config).unwrap();
    let mut slow = store.watch("/s/", Revision(0)).await.unwrap();
    let mut fast = store.watch("/s/", Revision(0)).await.unwrap();
    let mut fast_seen = 0;
    for i in 0..200 {
        // The writer never waits for the slow watcher.
        tokio::time::timeout(
            Duration::from_secs(5),
            store.create(&format!("/s/{i:03}"), v("x")),
        )
        .await
        .expect("a slow watcher stalled the writer")
        .unwrap();
        next_event(&mut fast).await;
        fast_seen += 1;
    }
    assert_eq!(fast_seen, 200);

    let mut delivered = Vec::new();
    let resume = loop {
        match slow.next().await.expect("slow watch ends with an error") {
            Ok(e) => delivered.push(e.revision().0),
            Err(Error::WatchLagged { resume, .. }) => break resume,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert!(
        slow.next().await.is_none(),
        "a cut-off watcher stays closed"
    );
    assert_eq!(resume.0, delivered.last().copied().unwrap_or(0));
    let mut resumed = store.watch("/s/", resume).await.unwrap();
    while delivered.len() < 200 {
        delivered.push(next_event(&mut resumed).await.revision().0);
    }
    assert_eq!(delivered, (1..=200).collect::<Vec<_>>());
}

/// Large values fill a watcher's byte bound long before its count bound:
/// the watcher is cut off (its queue dropped, its cutoff resolved) while
/// another prefix's watcher, which these writes do not concern, goes on.
#[tokio::test]
async fn a_watcher_is_cut_off_by_bytes_and_only_its_prefix_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(&dir);
    config.watch_buffer = 1000;
    config.watch_buffer_bytes = 100 * 1024;
    let store = Store::open_sqlite(config).unwrap();
    let mut slow = store.watch("/big/", Revision(0)).await.unwrap();
    let cutoff = slow.cutoff();
    let mut other = store.watch("/small/", Revision(0)).await.unwrap();
    let big = vec![b'x'; 30 * 1024];
    // Each update pins its value and the previous one: 60 KiB.
    store.create("/big/a", big.clone()).await.unwrap();
    let mut kv = store.get("/big/a", None).await.unwrap().unwrap();
    for _ in 0..3 {
        kv = store
            .update("/big/a", big.clone(), Some(kv.mod_revision))
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), cutoff.wait())
        .await
        .expect("the slow watcher is cut off by bytes");
    match slow.next().await {
        Some(Err(Error::WatchLagged { resume, bytes, .. })) => {
            assert_eq!(resume, Revision(0), "nothing was delivered");
            assert_eq!(bytes, 100 * 1024);
        }
        other => panic!("expected WatchLagged, got {other:?}"),
    }
    store.create("/small/b", v("y")).await.unwrap();
    assert_eq!(next_event(&mut other).await.kv.key, "/small/b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_dense_unique_revisions() {
    let (_dir, store) = temp_store();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                revs.push(
                    store
                        .create(&format!("/k/{w}/{i}"), v("x"))
                        .await
                        .unwrap()
                        .mod_revision
                        .0,
                );
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "a writer's revisions increase"
        );
        all.extend(revs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1280).collect::<Vec<_>>());
}

#[tokio::test]
async fn reopening_keeps_data_revision_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        store.create("/a", v("1")).await.unwrap();
        store.update("/a", v("2"), None).await.unwrap();
        store.compact(Revision(1)).await.unwrap();
    }
    let store = open_in(&dir);
    assert_eq!(store.current_revision(), Revision(2));
    assert_eq!(store.compacted_revision(), Revision(1));
    assert_eq!(store.get("/a", None).await.unwrap().unwrap().value, v("2"));
    let next = store.create("/b", v("1")).await.unwrap();
    assert_eq!(next.mod_revision, Revision(3));
}

fn open_error(dir: &tempfile::TempDir) -> String {
    match Store::open_sqlite(config_in(dir)) {
        Ok(_) => panic!("open should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn opening_a_foreign_file_fails_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let junk = b"this is not a database, it is a shopping list\n".repeat(100);
    std::fs::write(&path, &junk).unwrap();
    let msg = open_error(&dir);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a SQLite database"), "{msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        junk,
        "file must be untouched"
    );
}

/// Issue #21: an empty state.db was adopted as a new store.
#[test]
fn opening_an_empty_file_fails_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, b"").unwrap();
    let msg = open_error(&dir);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("the file is empty") && msg.contains("remove it to start an empty store"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"", "file must be untouched");
}

#[test]
fn opening_another_programs_sqlite_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    let msg = open_error(&dir);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("another program") && msg.contains("kine"),
        "{msg}"
    );
}

#[test]
fn opening_a_corrupt_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_in(&dir);
        for i in 0..2000 {
            store
                .create(&format!("/x/{i:05}"), vec![b'v'; 200])
                .await
                .unwrap();
        }
    });
    {
        // Fold the WAL into the main file, then scribble over a data page.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 * 1024);
    let page = 4096;
    for b in &mut bytes[8 * page..12 * page] {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let msg = open_error(&dir);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("corrupt"), "{msg}");
}

#[test]
fn a_store_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open_in(&dir);
    let msg = open_error(&dir);
    assert!(msg.contains("in use by another process"), "{msg}");
}

#[tokio::test]
async fn the_file_stops_growing_under_steady_churn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = open_in(&dir);
    let size = || {
        let wal = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
        std::fs::metadata(&path).unwrap().len() + wal
    };
    for i in 0..100 {
        store
            .create(&format!("/churn/{i}"), vec![0; 1024])
            .await
            .unwrap();
    }
    let mut sizes = Vec::new();
    for round in 0..30 {
        for i in 0..100 {
            let value = vec![(round % 250) as u8; 1024];
            store
                .update(&format!("/churn/{i}"), value, None)
                .await
                .unwrap();
        }
        // Keep 200 revisions of history, as the automatic compactor would.
        let keep = Revision(store.current_revision().0 - 200);
        store.compact(keep).await.unwrap();
        sizes.push(size());
    }
    let settled = sizes[9];
    let last = *sizes.last().unwrap();
    assert!(
        last <= settled + settled / 4,
        "file kept growing under churn: after 10 rounds {settled} bytes, after 30 {last} bytes"
    );
}

// ---- model-based property tests ----

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Update(usize, bool),
    Delete(usize, bool),
    Compact(u8),
}

const KEYS: [&str; 6] = ["/m/a", "/m/b", "/m/c", "/m/d/e", "/n/a", "/m0"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS.len()).prop_map(Op::Create),
        4 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, cas)| Op::Update(k, cas)),
        2 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, cas)| Op::Delete(k, cas)),
        1 => any::<u8>().prop_map(Op::Compact),
    ]
}

/// The model: the full state after every revision, and every event.
#[derive(Default)]
struct Model {
    states: Vec<BTreeMap<String, KeyValue>>,
    events: Vec<Event>,
    compacted: u64,
}

impl Model {
    fn now(&self) -> BTreeMap<String, KeyValue> {
        self.states.last().cloned().unwrap_or_default()
    }
    fn rev(&self) -> u64 {
        self.states.len() as u64
    }
    fn commit(&mut self, state: BTreeMap<String, KeyValue>, event: Event) {
        self.states.push(state);
        self.events.push(event);
    }
    fn state_at(&self, rev: u64) -> BTreeMap<String, KeyValue> {
        if rev == 0 {
            BTreeMap::new()
        } else {
            self.states[rev as usize - 1].clone()
        }
    }
}

async fn run_ops(ops: Vec<Op>, page: usize, probe: u8) -> Result<(), TestCaseError> {
    let (_dir, store) = temp_store();
    let mut model = Model::default();
    for (i, op) in ops.into_iter().enumerate() {
        let value = format!("v{i}").into_bytes();
        match op {
            Op::Create(k) => {
                let key = KEYS[k];
                let got = store.create(key, value.clone()).await;
                let mut state = model.now();
                if state.contains_key(key) {
                    prop_assert!(matches!(got, Err(Error::AlreadyExists { .. })), "{:?}", got);
                } else {
                    let rev = Revision(model.rev() + 1);
                    let kv = KeyValue {
                        key: key.into(),
                        value,
                        create_revision: rev,
                        mod_revision: rev,
                    };
                    prop_assert_eq!(got.unwrap(), kv.clone());
                    state.insert(key.into(), kv.clone());
                    model.commit(
                        state,
                        Event {
                            kind: EventKind::Put,
                            kv,
                            prev: None,
                        },
                    );
                }
            }
            Op::Update(k, cas) | Op::Delete(k, cas) => {
                let key = KEYS[k];
                let delete = matches!(op, Op::Delete(..));
                let mut state = model.now();
                let old = state.get(key).cloned();
                // With cas, alternate between the right and a stale revision.
                let expected = cas.then(|| match &old {
                    Some(kv) if i % 2 == 0 => kv.mod_revision,
                    _ => Revision(model.rev() + 7),
                });
                let rev = Revision(model.rev() + 1);
                let result = if delete {
                    store
                        .delete(key, expected)
                        .await
                        .map(|d| (d.revision, Some(d.prev)))
                } else {
                    store
                        .update(key, value.clone(), expected)
                        .await
                        .map(|kv| (kv.mod_revision, None))
                };
                match old {
                    None => prop_assert!(
                        matches!(result, Err(Error::NotFound { .. })),
                        "{:?}",
                        result
                    ),
                    Some(old) if expected.is_some_and(|e| e != old.mod_revision) => {
                        prop_assert!(
                            matches!(result, Err(Error::Conflict { .. })),
                            "{:?}",
                            result
                        )
                    }
                    Some(old) => {
                        let (got_rev, got_prev) = result.unwrap();
                        prop_assert_eq!(got_rev, rev);
                        let kv = KeyValue {
                            key: key.into(),
                            value: if delete { Vec::new() } else { value },
                            create_revision: old.create_revision,
                            mod_revision: rev,
                        };
                        if delete {
                            prop_assert_eq!(got_prev, Some(old.clone()));
                            state.remove(key);
                        } else {
                            state.insert(key.into(), kv.clone());
                        }
                        let kind = if delete {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        };
                        model.commit(
                            state,
                            Event {
                                kind,
                                kv,
                                prev: Some(old),
                            },
                        );
                    }
                }
            }
            Op::Compact(f) => {
                let target = model.compacted.max(model.rev() * u64::from(f) / 255);
                store.compact(Revision(target)).await.unwrap();
                model.compacted = target;
            }
        }
        prop_assert_eq!(store.current_revision(), Revision(model.rev()));
    }

    // Lists: paged, at every revision, equal to the model or Compacted.
    for rev in 0..=model.rev() {
        let opts = |token| ListOptions {
            revision: Some(Revision(rev)),
            limit: Some(page),
            continue_token: token,
        };
        let first = store.list("/m/", opts(None)).await;
        if rev < model.compacted {
            prop_assert!(matches!(first, Err(Error::Compacted { .. })), "rev {}", rev);
            continue;
        }
        let mut page_ = first.unwrap();
        let mut got = page_.items.clone();
        while let Some(token) = page_.continue_token.take() {
            page_ = store
                .list(
                    "/m/",
                    ListOptions {
                        continue_token: Some(token),
                        limit: Some(page),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            prop_assert_eq!(page_.revision, Revision(rev));
            got.extend(page_.items.clone());
        }
        let want: Vec<KeyValue> = model
            .state_at(rev)
            .into_iter()
            .filter(|(k, _)| k.starts_with("/m/"))
            .map(|(_, kv)| kv)
            .collect();
        prop_assert_eq!(got, want, "list at revision {}", rev);
    }

    // Watch from a revision: exactly the model's later events under the prefix.
    let after = if model.rev() == 0 {
        0
    } else {
        u64::from(probe) % (model.rev() + 1)
    };
    let watched = store.watch("/m/", Revision(after)).await;
    if after < model.compacted {
        prop_assert!(
            matches!(watched, Err(Error::Compacted { .. })),
            "watch at {}",
            after
        );
        return Ok(());
    }
    let mut watcher = watched.unwrap();
    let want: Vec<Event> = model
        .events
        .iter()
        .filter(|e| e.revision().0 > after && e.kv.key.starts_with("/m/"))
        .cloned()
        .collect();
    for expected in want {
        let got = next_event(&mut watcher).await;
        prop_assert_eq!(&*got, &expected);
    }
    // And nothing more: a marker write must be the next event.
    store.create("/m/zz-marker", v("x")).await.unwrap();
    let marker = next_event(&mut watcher).await;
    prop_assert_eq!(marker.kv.key.as_str(), "/m/zz-marker");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model(
        ops in prop::collection::vec(op(), 1..60),
        page in 1usize..5,
        probe in any::<u8>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops, page, probe))?;
    }

    #[test]
    fn continue_tokens_round_trip(rev in any::<u64>(), key in "\\PC*") {
        let token = ContinueToken { revision: Revision(rev), last_key: key };
        prop_assert_eq!(ContinueToken::decode(&token.encode()).unwrap(), token);
    }
}

#[test]
fn prefix_end_is_the_least_upper_bound() {
    assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b""), None);
}

#[tokio::test]
async fn watchers_end_when_the_store_is_closed() {
    let (_dir, store) = temp_store();
    let mut w = store.watch("/", Revision(0)).await.unwrap();
    store.create("/a", v("1")).await.unwrap();
    next_event(&mut w).await;
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch did not end after the store closed");
    assert!(end.is_none(), "expected the end of the watch, got {end:?}");
}

/// Poll `check` until it holds, failing with `what` after 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_automatic_compactor_bounds_history() {
    let (_dir, store) = temp_store();
    for i in 0..300 {
        store.create(&format!("/auto/{i}"), v("x")).await.unwrap();
    }
    let policy = CompactionPolicy {
        retention: Duration::ZERO,
        min_revisions: 100,
        interval: Duration::from_millis(10),
    };
    let task = Compactor::spawn(store.clone(), policy);
    eventually("the compactor to compact to current - 100", async || {
        store.compacted_revision() == Revision(200)
    })
    .await;
    task.abort();
    let err = store.watch("/auto/", Revision(199)).await.err().unwrap();
    assert!(matches!(err, Error::Compacted { .. }), "{err}");
}

fn row_count(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn an_interrupted_compaction_finishes_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = open_in(&dir);
        store.create("/a", v("0")).await.unwrap();
        for i in 1..100 {
            store.update("/a", v(&i.to_string()), None).await.unwrap();
        }
    }
    assert_eq!(row_count(&path), 100);
    {
        // As if the process died right after recording the compaction
        // target, before removing any row.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE meta SET value = 90 WHERE name = 'compact_revision'",
            [],
        )
        .unwrap();
    }
    let store = open_in(&dir);
    assert_eq!(store.compacted_revision(), Revision(90));
    eventually(
        "the resumed compaction to remove superseded rows",
        async || row_count(&path) == 11,
    )
    .await;
    assert_eq!(store.get("/a", None).await.unwrap().unwrap().value, v("99"));
    let at90 = store.get("/a", Some(Revision(90))).await.unwrap().unwrap();
    assert_eq!(at90.value, v("89"));
}

/// Issue #21: a full disk showed clients the database's path.
#[test]
fn public_messages_name_a_full_disk_and_no_path() {
    let full = Error::Sqlite {
        path: "/var/lib/orch/server/db/state.db".into(),
        step: "committing a write",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ),
    };
    assert!(
        full.to_string().contains("/var/lib/orch"),
        "the log keeps the path"
    );
    assert_eq!(full.public_message(), "the store is out of space");
    let other = Error::Sqlite {
        path: "/var/lib/orch/server/db/state.db".into(),
        step: "committing a write",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        ),
    };
    assert_eq!(
        other.public_message(),
        "the store failed while committing a write"
    );
}
