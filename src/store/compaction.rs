//! Automatic compaction: keep a bounded window of history.
//!
//! Every `interval` the compactor samples the current revision. It compacts
//! to the newest sample that is at least `retention` old, but never closer
//! than `min_revisions` to the current revision — so watchers that reconnect
//! within the retention window can resume, and a quiet store still keeps some
//! history. Works against any [`super::Backend`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Revision, Store};

/// How much history automatic compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Keep at least this much time of history.
    pub retention: Duration,
    /// Keep at least this many revisions of history.
    pub min_revisions: u64,
    /// How often to sample the revision and compact.
    pub interval: Duration,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(5 * 60),
            min_revisions: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// The compaction schedule: revision samples in, compaction targets out. Pure,
/// so the policy is tested without a clock.
#[derive(Debug, Default)]
pub struct Compactor {
    samples: VecDeque<(Instant, Revision)>,
}

impl Compactor {
    /// Record that the store was at `current` at `now`, and say which
    /// revision (if any, and if newer than `compacted`) to compact to.
    pub fn tick(
        &mut self,
        policy: &CompactionPolicy,
        now: Instant,
        current: Revision,
        compacted: Revision,
    ) -> Option<Revision> {
        self.samples.push_back((now, current));
        // Drop samples once a newer one is also old enough: only the newest
        // qualifying sample matters.
        let old = |at: Instant| now.saturating_duration_since(at) >= policy.retention;
        while self.samples.len() >= 2 && old(self.samples[1].0) {
            self.samples.pop_front();
        }
        let old_enough = self
            .samples
            .front()
            .filter(|(at, _)| old(*at))
            .map(|&(_, rev)| rev);
        let by_time = old_enough?;
        let by_count = Revision(current.0.saturating_sub(policy.min_revisions));
        let target = by_time.min(by_count);
        (target > compacted).then_some(target)
    }

    /// Run the schedule against `store` until the returned task is aborted.
    pub fn spawn(store: Store, policy: CompactionPolicy) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut compactor = Compactor::default();
            let mut ticker = tokio::time::interval(policy.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let target = compactor.tick(
                    &policy,
                    Instant::now(),
                    store.current_revision(),
                    store.compacted_revision(),
                );
                if let Some(target) = target {
                    match store.compact(target).await {
                        Ok(()) => tracing::debug!(revision = %target, "compacted store history"),
                        Err(err) => {
                            tracing::warn!(%err, "store compaction failed, will retry next interval")
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CompactionPolicy {
        CompactionPolicy {
            retention: Duration::from_secs(300),
            min_revisions: 1000,
            interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn nothing_is_compacted_before_the_retention_window_passes() {
        let mut c = Compactor::default();
        let t0 = Instant::now();
        for minute in 0..5 {
            let now = t0 + Duration::from_secs(60 * minute);
            let current = Revision(10_000 * (minute + 1));
            assert_eq!(c.tick(&policy(), now, current, Revision(0)), None);
        }
    }

    #[test]
    fn compacts_to_the_revision_of_five_minutes_ago() {
        let mut c = Compactor::default();
        let t0 = Instant::now();
        let mut last = None;
        for minute in 0..=6 {
            let now = t0 + Duration::from_secs(60 * minute);
            last = c.tick(&policy(), now, Revision(10_000 * (minute + 1)), Revision(0));
        }
        // At minute 6 the sample from minute 1 (revision 20,000) is 5 minutes old.
        assert_eq!(last, Some(Revision(20_000)));
    }

    #[test]
    fn keeps_at_least_min_revisions() {
        let mut c = Compactor::default();
        let t0 = Instant::now();
        assert_eq!(c.tick(&policy(), t0, Revision(1500), Revision(0)), None);
        let later = t0 + Duration::from_secs(600);
        // The old sample says 1500, but only 1000 revisions would remain.
        assert_eq!(
            c.tick(&policy(), later, Revision(1800), Revision(0)),
            Some(Revision(800))
        );
        // A quiet store (no new writes) is not compacted again.
        let much_later = later + Duration::from_secs(600);
        assert_eq!(
            c.tick(&policy(), much_later, Revision(1800), Revision(800)),
            None
        );
    }

    #[test]
    fn samples_do_not_accumulate() {
        let mut c = Compactor::default();
        let t0 = Instant::now();
        for minute in 0..1000 {
            let now = t0 + Duration::from_secs(60 * minute);
            c.tick(&policy(), now, Revision(5000 * minute), Revision(0));
        }
        assert!(c.samples.len() <= 7, "{} samples kept", c.samples.len());
    }
}
