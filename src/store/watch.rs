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
//! A watcher that falls more than the channel's capacity behind is cut off
//! with [`Error::WatchLagged`] naming the revision to resume from; it never
//! makes the writer or other watchers wait.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{BoxFuture, Error, Event, Revision};

/// How many history events a resuming watcher loads at a time.
const REPLAY_PAGE: usize = 1000;

/// The live side: one broadcast channel every watcher subscribes to. The
/// channel closes, ending every watcher, when the last `Hub` clone is gone.
#[derive(Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    capacity: usize,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx, capacity }
    }

    /// Hand a committed event to every watcher. Never blocks.
    pub fn publish(&self, event: Arc<Event>) {
        // An error only means nobody is watching right now.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
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
    live: broadcast::Receiver<Arc<Event>>,
    history: Arc<dyn History>,
    buffer: usize,
    done: bool,
}

impl Watcher {
    /// `live` must have been subscribed before `replay_upto` was read; see the
    /// module docs.
    pub(crate) fn new(
        prefix: &str,
        after: Revision,
        replay_upto: Revision,
        live: broadcast::Receiver<Arc<Event>>,
        history: Arc<dyn History>,
        buffer: usize,
    ) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cursor: after,
            replay_upto,
            replaying: after < replay_upto,
            backlog: VecDeque::new(),
            live,
            history,
            buffer,
            done: false,
        }
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
                    if event.revision() <= self.cursor || !event.kv.key.starts_with(&self.prefix) {
                        continue;
                    }
                    self.cursor = event.revision();
                    return Some(Ok(event));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.done = true;
                    return Some(Err(Error::WatchLagged {
                        resume: self.cursor,
                        buffer: self.buffer,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => {
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
        let hub = Hub::new(64);
        let live = hub.subscribe();
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
            64,
        );
        assert_eq!(revisions(&mut w, 7).await, [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(w.resume_revision(), Revision(8));
    }

    #[tokio::test]
    async fn replay_pages_through_long_history_and_skips_other_prefixes() {
        let hub = Hub::new(16);
        let live = hub.subscribe();
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
            16,
        );
        assert_eq!(revisions(&mut w, want.len()).await, want);
        // Caught up: the cursor also covers the other prefix's last event.
        assert_eq!(n % 3, 0, "the last event belongs to the other prefix");
        assert_eq!(w.resume_revision(), Revision(n));
        hub.publish(Arc::new(event(n + 1, "/a/x")));
        assert_eq!(revisions(&mut w, 1).await, [n + 1]);
    }
}
