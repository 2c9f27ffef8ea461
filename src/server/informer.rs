//! Informers and work queues: the machinery the scheduler and controllers
//! share.
//!
//! An [`Informer`] keeps an in-memory copy of every object of one resource,
//! fed by the store's watch (list once, then watch from that revision; on a
//! lagged or compacted watch it lists again and reports the differences), and
//! fans each change out to subscribers. Readers never hit the store.
//!
//! A [`Queue`] holds object keys to reconcile: a key is queued at most once,
//! is never processed by two workers at once, and failed keys come back
//! after an exponential backoff. Controllers write through the registry, then
//! use [`Informer::wait_for`] so that their next look at the cache includes
//! their own writes (no duplicate creates from a stale cache).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};

use crate::api::catalog::Resource;
use crate::server::registry::{ListQuery, Registry};
use crate::store::{self, EventKind, Revision};

/// One observed change. `old` is `None` for an addition, `new` for a
/// deletion.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn object_key(obj: &Value) -> String {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// Split a key into namespace and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

pub struct Informer {
    pub res: Resource,
    cache: RwLock<BTreeMap<String, Arc<Value>>>,
    /// The store revision the cache reflects.
    revision: AtomicU64,
    advanced: Notify,
    changes: broadcast::Sender<Change>,
    synced: watch::Sender<bool>,
}

/// Admission plugins read an informer as their lister.
impl crate::server::admission::Cache for Informer {
    fn get(&self, key: &str) -> Option<Arc<Value>> {
        Informer::get(self, key)
    }
}

impl Informer {
    /// Start an informer for `res`; it runs until the registry's store closes.
    pub fn start(registry: Arc<Registry>, res: Resource) -> Arc<Self> {
        let (changes, _) = broadcast::channel(8192);
        let (synced, _) = watch::channel(false);
        let informer = Arc::new(Self {
            res,
            cache: RwLock::default(),
            revision: AtomicU64::new(0),
            advanced: Notify::new(),
            changes,
            synced,
        });
        let me = informer.clone();
        tokio::spawn(async move { me.run(registry).await });
        informer
    }

    /// Wait until the first list has been loaded.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub fn revision(&self) -> Revision {
        Revision(self.revision.load(Ordering::Acquire))
    }

    /// Wait (up to 10 s) until the cache has seen `rev`, which must be the
    /// revision of a write to this informer's resource (the informer sees
    /// no other revisions).
    pub async fn wait_for(&self, rev: Revision) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.advanced.notified();
            if self.revision() >= rev {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(resource = %self.res.plural, revision = %rev, "informer did not catch up within 10 s");
                return;
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.cache.read().expect("informer lock").get(key).cloned()
    }

    /// Every object, or those of one namespace.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let cache = self.cache.read().expect("informer lock");
        match namespace {
            Some(ns) => {
                let prefix = format!("{ns}/");
                cache
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v.clone())
                    .collect()
            }
            None => cache.values().cloned().collect(),
        }
    }

    fn advance(&self, rev: Revision) {
        self.revision.fetch_max(rev.0, Ordering::AcqRel);
        self.advanced.notify_waiters();
    }

    /// Replace the cache with a fresh list, reporting differences.
    fn replace(&self, items: Vec<Value>, rev: Revision) {
        let fresh: BTreeMap<String, Arc<Value>> = items
            .into_iter()
            .map(|o| (object_key(&o), Arc::new(o)))
            .collect();
        let mut changes = Vec::new();
        {
            let mut cache = self.cache.write().expect("informer lock");
            for (k, old) in cache.iter() {
                match fresh.get(k) {
                    None => changes.push(Change {
                        key: k.clone(),
                        old: Some(old.clone()),
                        new: None,
                    }),
                    Some(new) if new != old => changes.push(Change {
                        key: k.clone(),
                        old: Some(old.clone()),
                        new: Some(new.clone()),
                    }),
                    _ => {}
                }
            }
            for (k, new) in &fresh {
                if !cache.contains_key(k) {
                    changes.push(Change {
                        key: k.clone(),
                        old: None,
                        new: Some(new.clone()),
                    });
                }
            }
            *cache = fresh;
        }
        self.advance(rev);
        for c in changes {
            let _ = self.changes.send(c);
        }
    }

    async fn run(self: Arc<Self>, registry: Arc<Registry>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let list = match registry
                .list(&self.res, None, &ListQuery::default())
                .await
                .and_then(|l| Ok((l.decoded()?, l.revision)))
            {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(resource = %self.res.plural, %err, "informer list failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let (items, rev) = list;
            self.replace(items, rev);
            self.synced.send_replace(true);
            let mut watcher = match registry.store.watch(&self.res.key_prefix(), rev).await {
                Ok(w) => w,
                Err(store::Error::Closed) => return,
                Err(err) => {
                    tracing::warn!(resource = %self.res.plural, %err, "informer watch failed, relisting");
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            while let Some(event) = watcher.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(err) => {
                        tracing::debug!(resource = %self.res.plural, %err, "informer watch ended, relisting");
                        break;
                    }
                };
                let rev = event.revision();
                let decode = |bytes: &[u8]| -> Option<Arc<Value>> {
                    let mut obj: Value = serde_json::from_slice(bytes).ok()?;
                    obj["metadata"]["resourceVersion"] = Value::String(rev.0.to_string());
                    Some(Arc::new(obj))
                };
                let change = match event.kind {
                    EventKind::Put => {
                        let Some(new) = decode(&event.kv.value) else {
                            continue;
                        };
                        let key = object_key(&new);
                        let old = self
                            .cache
                            .write()
                            .expect("informer lock")
                            .insert(key.clone(), new.clone());
                        Change {
                            key,
                            old,
                            new: Some(new),
                        }
                    }
                    EventKind::Delete => {
                        let Some(prev) = event.prev.as_ref().and_then(|p| decode(&p.value)) else {
                            continue;
                        };
                        let key = object_key(&prev);
                        let old = self
                            .cache
                            .write()
                            .expect("informer lock")
                            .remove(&key)
                            .or(Some(prev));
                        Change {
                            key,
                            old,
                            new: None,
                        }
                    }
                };
                self.advance(rev);
                let _ = self.changes.send(change);
            }
            // The watch ended (lagged, compacted, or the store closing):
            // list again after a short pause.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Keys waiting to be reconciled, with per-key exponential backoff.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Added while being processed: requeue when done.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queue `key` (once, however often it is added before it is processed).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.state.lock().expect("queue lock");
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.queued.insert(key.clone()) {
            s.order.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queue `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.add(key);
        });
    }

    /// The next key to work on; the caller must call [`Queue::done`].
    pub async fn next(&self) -> String {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(key) = s.order.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Finish `key`; on failure it comes back after a backoff.
    pub fn done(self: &Arc<Self>, key: &str, failed: bool) {
        let mut s = self.state.lock().expect("queue lock");
        s.active.remove(key);
        let delay = if failed {
            let n = s.failures.entry(key.to_owned()).or_insert(0);
            *n += 1;
            Some(
                Duration::from_millis(50u64.saturating_mul(1 << (*n).min(10)))
                    .min(Duration::from_secs(60)),
            )
        } else {
            s.failures.remove(key);
            None
        };
        let dirty = s.dirty.remove(key);
        drop(s);
        if let Some(d) = delay {
            self.add_after(key.to_owned(), d);
        } else if dirty {
            self.add(key.to_owned());
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_processed_twice_at_once() {
        let q = Queue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let first = q.next().await;
        assert_eq!(first, "a");
        q.add("a"); // while active: remembered, not queued
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
        q.done("a", false);
        assert_eq!(q.next().await, "a", "re-added after done");
    }

    #[tokio::test]
    async fn failures_back_off_before_coming_back() {
        let q = Queue::new();
        q.add("k");
        let key = q.next().await;
        let start = std::time::Instant::now();
        q.done(&key, true);
        assert!(q.is_empty(), "a failed key is not retried at once");
        let again = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("the key comes back");
        assert_eq!(again, "k");
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }
}
