//! Restart policy and crash-loop back-off: whether an exited container
//! starts again, and when (upstream's 10 s doubling to 5 min, reset after
//! 10 min of running).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::start::start_container;
use super::{Kubelet, MAX_BACKOFF, WorkerState, event};

/// A container's crash-loop back-off, kept as the kubelet keeps it
/// (`flowcontrol.Backoff`): the first exit restarts at once, the next ones
/// wait 10 s, 20 s, 40 s … up to 5 minutes; an exit more than 10 minutes
/// after the last restart counts as a first one again. In memory only, as
/// the kubelet's: a restarted agent starts the count afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CrashBackoff {
    /// What the next exit waits.
    delay: Duration,
    /// When it was last restarted.
    restarted: Instant,
}

impl CrashBackoff {
    const INITIAL: Duration = Duration::from_secs(10);
    /// Twice the longest delay, as upstream.
    const RESET: Duration = Duration::from_secs(600);

    /// How long a container that exited at `exited` waits before it
    /// restarts (zero: at once).
    fn wait(prev: Option<Self>, exited: Instant) -> Duration {
        match prev {
            Some(b) if exited.saturating_duration_since(b.restarted) <= Self::RESET => b.delay,
            _ => Duration::ZERO,
        }
    }

    /// The back-off after a restart at `now` of a container that exited
    /// at `exited`.
    fn restart(prev: Option<Self>, exited: Instant, now: Instant) -> Self {
        let delay = match prev {
            Some(b) if exited.saturating_duration_since(b.restarted) <= Self::RESET => {
                (b.delay * 2).min(MAX_BACKOFF)
            }
            _ => Self::INITIAL,
        };
        CrashBackoff {
            delay,
            restarted: now,
        }
    }
}

/// What to do about an exited container now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RestartStep {
    /// Wait until `until` (`wait` in all) for the container that exited
    /// at `exited`; `first` on the sync that saw the exit.
    Wait {
        until: Instant,
        wait: Duration,
        exited: Instant,
        first: bool,
    },
    /// Restart it now; its back-off from then on.
    Now(CrashBackoff),
}

/// The step for an exited container at `now`, given the wait it is in
/// (`pending`: until, delay, exited) and its crash-loop back-off.
pub(super) fn restart_step(
    pending: Option<(Instant, Duration, Instant)>,
    crash: Option<CrashBackoff>,
    now: Instant,
) -> RestartStep {
    let (until, wait, exited, first) = match pending {
        Some((until, wait, exited)) => (until, wait, exited, false),
        // It has just exited.
        None => {
            let wait = CrashBackoff::wait(crash, now);
            (now + wait, wait, now, true)
        }
    };
    if until > now {
        RestartStep::Wait {
            until,
            wait,
            exited,
            first,
        }
    } else {
        RestartStep::Now(CrashBackoff::restart(crash, exited, now))
    }
}

/// Restart an exited container once its back-off has passed (instance
/// `n + 1`); until then it waits in CrashLoopBackOff.
pub(super) async fn restart_later(
    k: &Arc<Kubelet>,
    pod: &Value,
    c: &Value,
    n: u32,
    state: &mut WorkerState,
) -> Result<(), String> {
    let name = c["name"].as_str().unwrap_or_default().to_owned();
    let now = Instant::now();
    let pending = state.backoff.get(&name).copied();
    let crash = state.crash_backoff.get(&name).copied();
    match restart_step(pending, crash, now) {
        RestartStep::Wait {
            until,
            wait,
            exited,
            first,
        } => {
            if first {
                state.backoff.insert(name.clone(), (until, wait, exited));
                event(
                    k,
                    pod,
                    "Warning",
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        pod["metadata"]["name"].as_str().unwrap_or_default(),
                        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                        pod["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                );
            }
            state.waiting.insert(
                name.clone(),
                (
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={name} pod={}",
                        wait.as_secs(),
                        pod["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                ),
            );
            Ok(())
        }
        RestartStep::Now(next) => {
            state.backoff.remove(&name);
            state.waiting.remove(&name);
            state.crash_backoff.insert(name, next);
            // The previous instance stays in the runtime for its last state.
            start_container(k, pod, c, n + 1, state).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_restart_at_once_then_back_off_doubling_and_reset_after_a_long_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Exits one second after each restart: 0, 10, 20, 40, … 300, 300.
        let (mut b, mut now, mut waits) = (None, t0, Vec::new());
        for _ in 0..9 {
            let exited = now + s(1);
            let wait = CrashBackoff::wait(b, exited);
            waits.push(wait.as_secs());
            now = exited + wait;
            b = Some(CrashBackoff::restart(b, exited, now));
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        // Ten minutes of running since the last restart: a first exit again.
        let exited = now + s(601);
        assert_eq!(CrashBackoff::wait(b, exited), Duration::ZERO);
        let b = CrashBackoff::restart(b, exited, exited);
        assert_eq!(b.delay, s(10));
        assert_eq!(CrashBackoff::wait(Some(b), exited + s(1)), s(10));
    }

    #[test]
    fn an_exited_container_waits_out_its_back_off_then_restarts() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let restarted = |delay: u64, at: Instant| CrashBackoff {
            delay: s(delay),
            restarted: at,
        };
        for (case, pending, crash, now, want) in [
            (
                "a first exit restarts at once",
                None,
                None,
                t0,
                RestartStep::Now(restarted(10, t0)),
            ),
            (
                "an exit soon after a restart waits the delay",
                None,
                Some(restarted(10, t0)),
                t0 + s(5),
                RestartStep::Wait {
                    until: t0 + s(15),
                    wait: s(10),
                    exited: t0 + s(5),
                    first: true,
                },
            ),
            (
                "a wait not yet over goes on",
                Some((t0 + s(15), s(10), t0 + s(5))),
                Some(restarted(10, t0)),
                t0 + s(9),
                RestartStep::Wait {
                    until: t0 + s(15),
                    wait: s(10),
                    exited: t0 + s(5),
                    first: false,
                },
            ),
            (
                "a wait that is over restarts, doubling the delay",
                Some((t0 + s(15), s(10), t0 + s(5))),
                Some(restarted(10, t0)),
                t0 + s(15),
                RestartStep::Now(restarted(20, t0 + s(15))),
            ),
            (
                "an exit after ten minutes of running restarts at once",
                None,
                Some(restarted(160, t0)),
                t0 + s(601),
                RestartStep::Now(restarted(10, t0 + s(601))),
            ),
        ] {
            assert_eq!(restart_step(pending, crash, now), want, "{case}");
        }
    }
}
