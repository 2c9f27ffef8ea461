//! Watch fan-out: events go from the committing writer to every watcher
//! through memory, and a watcher that starts in the past first replays
//! history from the backend.
//!
//! Gap and duplicate freedom rests on one ordering: a watcher subscribes to
//! the live channel *before* it reads the newest revision `H` it will replay
//! up to. Every event newer than `H` was committed after that read, so it was
//! published after the subscription and is in the channel; every event up to
//! `H` comes from history; live events at or below the watcher's cursor are
//! dropped.
//!
//! Each watcher has its own queue of live events (only those under its
//! prefix), bounded by a count and by bytes. A watcher that falls further
//! behind than either bound is cut off at once — its queue dropped, so a
//! client that stopped reading pins no more than the bounds — and ends
//! with [`Error::WatchLagged`] naming the revision to resume from. It
//! never makes the writer or other watchers wait (upstream's watch cache
//! closes unresponsive watchers the same way; clients re-list or resume).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::{BoxFuture, Error, Event, Revision};

/// How many history events a resuming watcher loads at a time.
const REPLAY_PAGE: usize = 1000;

/// How far a watcher may fall behind the writer before it is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Events waiting for it.
    pub events: usize,
    /// Their keys' and values' bytes (the previous values' too).
    pub bytes: usize,
}

/// The bytes an event pins while it waits in a queue.
fn pinned(event: &Event) -> usize {
    let kv = |kv: &super::KeyValue| kv.key.len() + kv.value.len();
    kv(&event.kv) + event.prev.as_ref().map_or(0, kv)
}

/// The live side: every watcher's queue. Watchers end when the last `Hub`
/// clone is gone.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    subscribers: Mutex<Vec<Weak<Subscription>>>,
    limits: WatchLimits,
}

impl Hub {
    pub fn new(limits: WatchLimits) -> Self {
        Self {
            inner: Arc::new(HubInner {
                subscribers: Mutex::default(),
                limits: WatchLimits {
                    events: limits.events.max(1),
                    bytes: limits.bytes.max(1),
                },
            }),
        }
    }

    /// Hand a committed event to every watcher of a prefix it falls
    /// under. Never blocks on a watcher.
    pub fn publish(&self, event: Arc<Event>) {
        let size = pinned(&event);
        let limits = self.inner.limits;
        let mut subscribers = self.inner.subscribers.lock().expect("hub lock");
        subscribers.retain(|weak| {
            let Some(sub) = weak.upgrade() else {
                return false;
            };
            if event.kv.key.starts_with(&sub.prefix) {
                sub.push(&event, size, limits);
            }
            true
        });
    }

    /// A queue for the events under `prefix` published from now on.
    pub fn subscribe(&self, prefix: &str) -> Arc<Subscription> {
        let sub = Arc::new(Subscription {
            prefix: prefix.to_owned(),
            queue: Mutex::default(),
            ready: Notify::new(),
            ended: Notify::new(),
        });
        self.inner
            .subscribers
            .lock()
            .expect("hub lock")
            .push(Arc::downgrade(&sub));
        sub
    }

    pub fn limits(&self) -> WatchLimits {
        self.inner.limits
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        let subscribers = self.subscribers.get_mut().map(std::mem::take);
        for sub in subscribers
            .unwrap_or_default()
            .iter()
            .filter_map(Weak::upgrade)
        {
            sub.end(End::Closed);
        }
    }
}

/// Why a subscription's live events stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It fell too far behind; its queue was dropped.
    Lagged,
    /// The store closed.
    Closed,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    end: Option<End>,
}

/// One watcher's live events.
pub(crate) struct Subscription {
    prefix: String,
    queue: Mutex<Queue>,
    /// An event or the end is waiting (one consumer: the watcher).
    ready: Notify,
    /// The end came (any number of observers).
    ended: Notify,
}

impl Subscription {
    fn push(&self, event: &Arc<Event>, size: usize, limits: WatchLimits) {
        {
            let mut queue = self.queue.lock().expect("watch queue lock");
            if queue.end.is_some() {
                return;
            }
            queue.events.push_back(event.clone());
            queue.bytes += size;
            if queue.events.len() <= limits.events && queue.bytes <= limits.bytes {
                drop(queue);
                self.ready.notify_one();
                return;
            }
        }
        self.end(End::Lagged);
    }

    /// Stop: drop what waits (freeing it now) and wake everyone.
    fn end(&self, why: End) {
        let dropped = {
            let mut queue = self.queue.lock().expect("watch queue lock");
            if queue.end.is_some() {
                return;
            }
            queue.end = Some(why);
            queue.bytes = 0;
            std::mem::take(&mut queue.events)
        };
        drop(dropped);
        self.ready.notify_one();
        self.ended.notify_waiters();
    }

    /// The next live event, or why there are no more.
    async fn recv(&self) -> Result<Arc<Event>, End> {
        loop {
            {
                let mut queue = self.queue.lock().expect("watch queue lock");
                if let Some(event) = queue.events.pop_front() {
                    queue.bytes -= pinned(&event);
                    return Ok(event);
                }
                if let Some(end) = queue.end {
                    return Err(end);
                }
            }
            // A notification sent since the check above is kept as a
            // permit, so none is missed.
            self.ready.notified().await;
        }
    }

    /// Resolves once the subscription has ended (cut off or closed).
    async fn ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.queue.lock().expect("watch queue lock").end.is_some() {
                return;
            }
            ended.await;
        }
    }
}

/// Tells whoever serves a watcher that it was cut off (or the store
/// closed) without waiting for the watcher to be read: a server blocked
/// writing to a client that stopped reading can end the response.
#[derive(Clone)]
pub struct Cutoff(Arc<Subscription>);

impl Cutoff {
    /// Resolves once the watcher has been cut off or the store closed.
    pub async fn wait(&self) {
        self.0.ended().await;
    }
}

/// Where a resuming watcher gets the events it missed.
pub(crate) trait History: Send + Sync + 'static {
    /// Events for keys under `prefix` with revisions in `(after, upto]`,
    /// oldest first, at most `limit` of them.
    fn read_history<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, Error>>;
}

/// A stream of changes under one prefix. Ends (`None`) when the store closes;
/// after an error it yields nothing more.
pub struct Watcher {
    prefix: String,
    /// Every event up to and including this revision has been delivered or
    /// does not match the prefix.
    cursor: Revision,
    /// History is replayed up to here before live events are taken.
    replay_upto: Revision,
    /// More history pages may remain.
    replaying: bool,
    backlog: VecDeque<Event>,
    live: Arc<Subscription>,
    history: Arc<dyn History>,
    limits: WatchLimits,
    done: bool,
}

impl Watcher {
    /// `live` must have been subscribed before `replay_upto` was read; see the
    /// module docs.
    pub(crate) fn new(
        prefix: &str,
        after: Revision,
        replay_upto: Revision,
        live: Arc<Subscription>,
        history: Arc<dyn History>,
        limits: WatchLimits,
    ) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cursor: after,
            replay_upto,
            replaying: after < replay_upto,
            backlog: VecDeque::new(),
            live,
            history,
            limits,
            done: false,
        }
    }

    /// What resolves when this watcher is cut off, for whoever serves it.
    pub fn cutoff(&self) -> Cutoff {
        Cutoff(self.live.clone())
    }

    /// The revision up to which this watcher has seen everything: resume a
    /// new watch from here after this one ends.
    pub fn resume_revision(&self) -> Revision {
        self.cursor
    }

    /// The next change, in revision order.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, Error>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.cursor = event.revision();
                if self.backlog.is_empty() && !self.replaying {
                    // The last page was short: nothing else under the prefix
                    // up to replay_upto.
                    self.cursor = self.cursor.max(self.replay_upto);
                }
                return Some(Ok(Arc::new(event)));
            }
            if self.replaying {
                let page = self
                    .history
                    .read_history(&self.prefix, self.cursor, self.replay_upto, REPLAY_PAGE)
                    .await;
                match page {
                    Ok(page) => {
                        if page.len() < REPLAY_PAGE {
                            self.replaying = false;
                            if page.is_empty() {
                                self.cursor = self.cursor.max(self.replay_upto);
                            }
                        }
                        self.backlog.extend(page);
                        continue;
                    }
                    Err(err) => {
                        self.done = true;
                        return Some(Err(err));
                    }
                }
            }
            match self.live.recv().await {
                Ok(event) => {
                    if event.revision() <= self.cursor {
                        continue;
                    }
                    self.cursor = event.revision();
                    return Some(Ok(event));
                }
                Err(End::Lagged) => {
                    self.done = true;
                    return Some(Err(Error::WatchLagged {
                        resume: self.cursor,
                        buffer: self.limits.events,
                        bytes: self.limits.bytes,
                    }));
                }
                Err(End::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, KeyValue};

    fn event(rev: u64, key: &str) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: Vec::new(),
                create_revision: Revision(rev),
                mod_revision: Revision(rev),
            },
            prev: None,
        }
    }

    fn limits(events: usize) -> WatchLimits {
        WatchLimits {
            events,
            bytes: usize::MAX,
        }
    }

    /// History held in memory: the fake beside the `History` trait.
    struct Log(Vec<Event>);

    impl History for Log {
        fn read_history<'a>(
            &'a self,
            prefix: &'a str,
            after: Revision,
            upto: Revision,
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<Event>, Error>> {
            let page = self
                .0
                .iter()
                .filter(|e| e.revision() > after && e.revision() <= upto)
                .filter(|e| e.kv.key.starts_with(prefix))
                .take(limit)
                .cloned()
                .collect();
            Box::pin(async move { Ok(page) })
        }
    }

    async fn revisions(w: &mut Watcher, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(w.next().await.unwrap().unwrap().revision().0);
        }
        out
    }

    #[tokio::test]
    async fn events_both_replayed_and_live_are_delivered_once() {
        // Revisions 4 and 5 were committed between the subscription and the
        // read of the replay bound: they are in history *and* in the channel.
        let hub = Hub::new(limits(64));
        let live = hub.subscribe("/a/");
        let log: Vec<Event> = (1..=8).map(|r| event(r, "/a/x")).collect();
        for e in &log[3..] {
            hub.publish(Arc::new(e.clone()));
        }
        let mut w = Watcher::new(
            "/a/",
            Revision(1),
            Revision(5),
            live,
            Arc::new(Log(log)),
            limits(64),
        );
        assert_eq!(revisions(&mut w, 7).await, [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(w.resume_revision(), Revision(8));
    }

    #[tokio::test]
    async fn replay_pages_through_long_history_and_skips_other_prefixes() {
        let hub = Hub::new(limits(16));
        let live = hub.subscribe("/a/");
        let n = REPLAY_PAGE as u64 * 2 + 10;
        let log: Vec<Event> = (1..=n)
            .map(|r| event(r, if r % 3 == 0 { "/b/y" } else { "/a/x" }))
            .collect();
        let want: Vec<u64> = (1..=n).filter(|r| r % 3 != 0).collect();
        let mut w = Watcher::new(
            "/a/",
            Revision(0),
            Revision(n),
            live,
            Arc::new(Log(log)),
            limits(16),
        );
        assert_eq!(revisions(&mut w, want.len()).await, want);
        // Caught up: the cursor also covers the other prefix's last event.
        assert_eq!(n % 3, 0, "the last event belongs to the other prefix");
        assert_eq!(w.resume_revision(), Revision(n));
        hub.publish(Arc::new(event(n + 1, "/a/x")));
        assert_eq!(revisions(&mut w, 1).await, [n + 1]);
    }
}
