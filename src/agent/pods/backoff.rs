//! Restart policy and crash-loop back-off: whether an exited container
//! starts again, and when (upstream's 10 s doubling to 5 min, reset after
//! 10 min of running).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::start::start_container;
use super::{Kubelet, MAX_BACKOFF, WorkerState, event};
use crate::runtime::shim::ContainerState;

pub(super) fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

/// Should an exited container start again?
pub(super) fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

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
    restarted: tokio::time::Instant,
}

impl CrashBackoff {
    const INITIAL: Duration = Duration::from_secs(10);
    /// Twice the longest delay, as upstream.
    const RESET: Duration = Duration::from_secs(600);

    /// How long a container that exited at `exited` waits before it
    /// restarts (zero: at once).
    fn wait(prev: Option<Self>, exited: tokio::time::Instant) -> Duration {
        match prev {
            Some(b) if exited.saturating_duration_since(b.restarted) <= Self::RESET => b.delay,
            _ => Duration::ZERO,
        }
    }

    /// The back-off after a restart at `now` of a container that exited
    /// at `exited`.
    fn restart(
        prev: Option<Self>,
        exited: tokio::time::Instant,
        now: tokio::time::Instant,
    ) -> Self {
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

/// Have all regular (app) containers exited for good?
pub(super) fn regular_done(
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    policy: &str,
) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| {
            instances
                .get(c["name"].as_str().unwrap_or_default())
                .is_some_and(|(_, s)| {
                    s.status == "exited" && !should_restart(policy, s.exit_code.unwrap_or(1))
                })
        })
}

/// Restart an exited container once its back-off has passed.
pub(super) async fn restart_later(
    k: &Arc<Kubelet>,
    pod: &Value,
    c: &Value,
    n: u32,
    socket: &Path,
    state: &mut WorkerState,
) -> Result<(), String> {
    let name = c["name"].as_str().unwrap_or_default().to_owned();
    let now = tokio::time::Instant::now();
    let (until, wait, exited) = match state.backoff.get(&name).copied() {
        Some(pending) => pending,
        None => {
            // It has just exited.
            let wait = CrashBackoff::wait(state.crash_backoff.get(&name).copied(), now);
            state.backoff.insert(name.clone(), (now + wait, wait, now));
            if !wait.is_zero() {
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
            (now + wait, wait, now)
        }
    };
    if until > now {
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
        return Ok(());
    }
    state.backoff.remove(&name);
    state.waiting.remove(&name);
    let next = CrashBackoff::restart(state.crash_backoff.get(&name).copied(), exited, now);
    state.crash_backoff.insert(name, next);
    // The previous instance stays in the shim for its last state.
    start_container(k, pod, c, n + 1, socket, state).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_follow_the_policy_and_back_off() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn crashes_restart_at_once_then_back_off_doubling_and_reset_after_a_long_run() {
        let t0 = tokio::time::Instant::now();
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
}
