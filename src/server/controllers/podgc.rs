//! Pod garbage collection, and expiry of old events.
//!
//! Every 20 s (as upstream's PodGC; sooner with a shorter node monitor
//! period):
//! - terminated pods (Succeeded/Failed) above the threshold are deleted,
//!   oldest first;
//! - pods bound to a node that no longer exists are deleted at once (after
//!   a quarantine of the node grace period, 40 s by default, so a node
//!   being re-registered is not mistaken for a gone one);
//! - terminating pods that were never scheduled are deleted at once (no
//!   agent will ever finish them).
//!
//! Every minute, events whose last occurrence is older than the event TTL
//! (1 h, as upstream's `--event-ttl`) are deleted, so a long-running edge
//! node does not fill its disk with them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Context, is_deleting, meta_str};
use crate::server::informer::object_key;
use crate::server::registry::{DeleteOptions, ListQuery};

const PERIOD: Duration = Duration::from_secs(20);

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let c = ctx.clone();
    tasks.spawn(async move {
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        let period = (c.config.node_monitor_period * 4).clamp(Duration::from_secs(1), PERIOD);
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            collect_pods(&c, &mut missing_since).await;
        }
    });
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            expire_events(&ctx).await;
        }
    });
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn node_of(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The terminated pods to delete to get down to `threshold`, oldest first.
fn over_threshold(pods: &[Arc<Value>], threshold: usize) -> Vec<Arc<Value>> {
    let mut terminated: Vec<Arc<Value>> = pods
        .iter()
        .filter(|p| matches!(phase(p), "Succeeded" | "Failed") && !is_deleting(p))
        .cloned()
        .collect();
    if terminated.len() <= threshold {
        return Vec::new();
    }
    terminated.sort_by(|a, b| {
        meta_str(a, "creationTimestamp")
            .cmp(meta_str(b, "creationTimestamp"))
            .then_with(|| object_key(a).cmp(&object_key(b)))
    });
    let excess = terminated.len() - threshold;
    terminated.truncate(excess);
    terminated
}

async fn force_delete(ctx: &Context, pod: &Value, why: &str) {
    let res = ctx.res("", "pods");
    let opts = DeleteOptions {
        grace_period_seconds: Some(0),
        precondition_uid: Some(meta_str(pod, "uid").to_owned()),
        ..DeleteOptions::default()
    };
    match ctx
        .registry
        .delete(
            &res,
            Some(meta_str(pod, "namespace")),
            meta_str(pod, "name"),
            &opts,
        )
        .await
    {
        Ok(_) => tracing::info!(pod = %object_key(pod), why, "pod garbage-collected"),
        Err(e) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(%e, pod = %object_key(pod), "pod garbage collection failed"),
    }
}

async fn collect_pods(ctx: &Context, missing_since: &mut HashMap<String, Instant>) {
    let pods = ctx.informers.pods.list(None);
    for pod in over_threshold(&pods, ctx.config.terminated_pod_gc_threshold) {
        force_delete(ctx, &pod, "terminated pods over the threshold").await;
    }
    let now = Instant::now();
    let mut still_missing = HashMap::new();
    for pod in &pods {
        let node = node_of(pod);
        if node.is_empty() {
            if is_deleting(pod) {
                force_delete(ctx, pod, "terminating and never scheduled").await;
            }
            continue;
        }
        if ctx.informers.nodes.get(node).is_some() {
            continue;
        }
        let since = *missing_since.get(node).unwrap_or(&now);
        still_missing.insert(node.to_owned(), since);
        if now.duration_since(since) < ctx.config.node_monitor_grace_period {
            continue;
        }
        // The cache may be behind: ask the store before deleting.
        let nodes = ctx.res("", "nodes");
        if let Err(e) = ctx.registry.get(&nodes, None, node).await
            && e.code == 404
        {
            force_delete(ctx, pod, "its node is gone").await;
        }
    }
    *missing_since = still_missing;
}

/// When an event last happened.
fn last_seen(event: &Value) -> Option<jiff::Timestamp> {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .filter_map(|f| event.get(*f).and_then(Value::as_str))
        .find_map(|t| t.parse().ok())
        .or_else(|| meta_str(event, "creationTimestamp").parse().ok())
}

async fn expire_events(ctx: &Context) {
    let res = ctx.res("", "events");
    let Ok(list) = ctx.registry.list(&res, None, &ListQuery::default()).await else {
        return;
    };
    let Ok(events) = list.decoded() else { return };
    let ttl = ctx.config.event_ttl.as_secs() as i64;
    let now = jiff::Timestamp::now();
    for event in events {
        let Some(when) = last_seen(&event) else {
            continue;
        };
        if (now - when).get_seconds() < ttl {
            continue;
        }
        let _ = ctx
            .registry
            .delete(
                &res,
                Some(meta_str(&event, "namespace")),
                meta_str(&event, "name"),
                &DeleteOptions::default(),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn oldest_terminated_pods_go_first() {
        let pod = |name: &str, phase: &str, created: &str| {
            Arc::new(
                json!({"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                            "status": {"phase": phase}}),
            )
        };
        let pods = vec![
            pod("new-done", "Succeeded", "2026-01-03T00:00:00Z"),
            pod("running", "Running", "2026-01-01T00:00:00Z"),
            pod("old-failed", "Failed", "2026-01-01T00:00:00Z"),
            pod("mid-done", "Succeeded", "2026-01-02T00:00:00Z"),
        ];
        let names = |v: Vec<Arc<Value>>| {
            v.iter()
                .map(|p| meta_str(p, "name").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(over_threshold(&pods, 1)), ["old-failed", "mid-done"]);
        assert!(over_threshold(&pods, 3).is_empty());
    }

    #[test]
    fn events_age_from_their_last_occurrence() {
        let e = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
                       "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-02T00:00:00Z"});
        assert_eq!(last_seen(&e), Some("2026-01-02T00:00:00Z".parse().unwrap()));
        let bare = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}});
        assert_eq!(
            last_seen(&bare),
            Some("2026-01-01T00:00:00Z".parse().unwrap())
        );
    }
}
