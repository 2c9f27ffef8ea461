//! Node lifecycle: notices nodes that stopped heartbeating and moves their
//! pods elsewhere.
//!
//! - A node's agent renews its Lease in `kube-node-lease` (and posts
//!   status). When neither changes for the grace period (40 s by default,
//!   measured on this server's clock from when the change was *seen*, so
//!   clock skew does not matter), its conditions become `Unknown`
//!   (`NodeStatusUnknown`) and its pods are marked not ready.
//! - Nodes get `node.kubernetes.io/unreachable` (Ready=Unknown) or
//!   `node.kubernetes.io/not-ready` (Ready=False) taints, NoSchedule and
//!   NoExecute; recovery removes them.
//! - NoExecute taints evict (delete) the pods on the node that do not
//!   tolerate them, at once or after their `tolerationSeconds` counted from
//!   the taint's `timeAdded` (upstream's taint eviction controller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Action, Context, feed, is_deleting, meta_str, record_event, run_workers};
use crate::api::patch::PatchType;
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key};
use crate::server::registry::{DeleteOptions, WriteOptions};

const LEASE_NS: &str = "kube-node-lease";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// What was last seen of a node's heartbeat, and when (our clock).
#[derive(Default)]
struct Seen {
    heartbeats: HashMap<String, (String, Instant)>,
}

impl Seen {
    /// How long ago (our clock) the node's heartbeat last changed.
    fn silent_for(&mut self, node: &str, heartbeat: String) -> Duration {
        let now = Instant::now();
        let entry = self
            .heartbeats
            .entry(node.to_owned())
            .or_insert_with(|| (heartbeat.clone(), now));
        if entry.0 != heartbeat {
            *entry = (heartbeat, now);
        }
        now.duration_since(entry.1)
    }
}

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let nodes = ctx.informers.nodes.clone();
    feed(
        tasks,
        &ctx.informers.nodes,
        &queue,
        |c| vec![c.key.clone()],
        super::all_keys(&nodes),
    );
    feed(
        tasks,
        &ctx.informers.leases,
        &queue,
        |c| match c.key.split_once('/') {
            Some((LEASE_NS, node)) => vec![node.to_owned()],
            _ => Vec::new(),
        },
        Vec::new,
    );
    // A pod bound to a node with NoExecute taints may have to go.
    {
        let nodes = nodes.clone();
        feed(
            tasks,
            &ctx.informers.pods,
            &queue,
            move |c| {
                let Some(node) = c
                    .new
                    .as_deref()
                    .and_then(|p| p.pointer("/spec/nodeName"))
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                else {
                    return Vec::new();
                };
                match nodes.get(node) {
                    Some(n) if !no_execute_taints(&n).is_empty() => vec![node.to_owned()],
                    _ => Vec::new(),
                }
            },
            Vec::new,
        );
    }
    // Silence is noticed by looking, not by an event.
    {
        let (queue, nodes, period) = (queue.clone(), nodes.clone(), ctx.config.node_monitor_period);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                for node in nodes.list(None) {
                    queue.add(object_key(&node));
                }
            }
        });
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    run_workers(tasks, "node-lifecycle", queue, 1, move |name| {
        reconcile(ctx.clone(), seen.clone(), name)
    });
}

fn now_str() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn ready_status(node: &Value) -> &str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
}

/// The node's NoExecute taints as (key, value, timeAdded).
fn no_execute_taints(node: &Value) -> Vec<(String, String, Option<jiff::Timestamp>)> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
        .map(|t| {
            (
                t["key"].as_str().unwrap_or_default().to_owned(),
                t["value"].as_str().unwrap_or_default().to_owned(),
                t["timeAdded"].as_str().and_then(|s| s.parse().ok()),
            )
        })
        .collect()
}

/// The taints a node with this Ready status should carry.
fn wanted_taints(ready: &str) -> Option<&'static str> {
    match ready {
        "True" => None,
        "False" => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    }
}

/// `taints` with the lifecycle taints made to match `key` (None: removed),
/// keeping the `timeAdded` of those already there.
fn with_lifecycle_taints(taints: &[Value], key: Option<&str>, now: &str) -> Vec<Value> {
    let mut out: Vec<Value> = taints
        .iter()
        .filter(|t| {
            let k = t["key"].as_str().unwrap_or_default();
            (k != UNREACHABLE && k != NOT_READY) || Some(k) == key
        })
        .cloned()
        .collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t["key"] == key && t["effect"] == effect) {
                let mut taint = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    taint["timeAdded"] = json!(now);
                }
                out.push(taint);
            }
        }
    }
    out
}

/// How long `pod` may stay on a node with these NoExecute taints: `None`
/// forever, `Some(ZERO)` not at all.
fn toleration_left(
    pod: &Value,
    taints: &[(String, String, Option<jiff::Timestamp>)],
    now: jiff::Timestamp,
) -> Option<Duration> {
    let tolerations: &[Value] = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let mut left: Option<Duration> = None;
    for (key, value, added) in taints {
        let matching: Vec<&Value> = tolerations
            .iter()
            .filter(|t| {
                let tk = t["key"].as_str().unwrap_or_default();
                let op = t["operator"].as_str().unwrap_or("Equal");
                let effect = t["effect"].as_str().unwrap_or_default();
                (tk.is_empty() && op == "Exists" || tk == key)
                    && (op == "Exists" || t["value"].as_str().unwrap_or_default() == value)
                    && (effect.is_empty() || effect == "NoExecute")
            })
            .collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Tolerated forever unless every matching toleration is bounded.
        let bounded: Option<i64> = matching
            .iter()
            .map(|t| t["tolerationSeconds"].as_i64())
            .collect::<Option<Vec<i64>>>()
            .and_then(|secs| secs.into_iter().min());
        if let Some(secs) = bounded {
            let since = added.map_or(0, |a| (now - a).get_seconds().max(0));
            let remaining = Duration::from_secs((secs.max(0) - since).max(0) as u64);
            left = Some(left.map_or(remaining, |l| l.min(remaining)));
        }
    }
    left
}

async fn reconcile(
    ctx: Arc<Context>,
    seen: Arc<Mutex<Seen>>,
    name: String,
) -> Result<Action, ApiError> {
    let Some(node) = ctx.informers.nodes.get(&name) else {
        seen.lock()
            .expect("node lifecycle lock")
            .heartbeats
            .remove(&name);
        return Ok(Action::AwaitChange);
    };
    let nodes_res = ctx.res("", "nodes");
    let grace = ctx.config.node_monitor_grace_period;
    let lease_renew = ctx
        .informers
        .leases
        .get(&format!("{LEASE_NS}/{name}"))
        .and_then(|l| l.pointer("/spec/renewTime").cloned())
        .unwrap_or(Value::Null);
    let ready_heartbeat = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c.get("lastHeartbeatTime").cloned())
        .unwrap_or(Value::Null);
    let heartbeat = format!("{lease_renew}|{ready_heartbeat}");
    let silent = seen
        .lock()
        .expect("node lifecycle lock")
        .silent_for(&name, heartbeat);
    let mut next = grace.saturating_sub(silent).max(Duration::from_millis(100));

    let mut node = (*node).clone();
    let now = now_str();
    if silent >= grace && ready_status(&node) != "Unknown" {
        let mut conditions = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !conditions.iter().any(|c| c["type"] == "Ready") {
            conditions.push(json!({"type": "Ready"}));
        }
        for c in &mut conditions {
            if c["status"] != "Unknown" {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
            }
        }
        node["status"]["conditions"] = Value::Array(conditions);
        let written = ctx
            .registry
            .update(
                &nodes_res,
                None,
                &name,
                node,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
        node = written.object;
        tracing::info!(node = %name, silent_secs = silent.as_secs(), "node stopped heartbeating: marked unreachable");
        record_event(
            &ctx,
            &node,
            "Normal",
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
            "node-controller",
        );
        mark_pods_not_ready(&ctx, &name).await;
    }

    // Taints follow the Ready condition.
    let taints: Vec<Value> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let wanted = with_lifecycle_taints(&taints, wanted_taints(ready_status(&node)), &now);
    if wanted != taints {
        node["spec"]["taints"] = if wanted.is_empty() {
            Value::Null
        } else {
            Value::Array(wanted)
        };
        let written = ctx
            .registry
            .update(
                &nodes_res,
                None,
                &name,
                node,
                None,
                &WriteOptions::default(),
            )
            .await?;
        node = written.object;
    }

    // Evict what does not tolerate the NoExecute taints (in time).
    let taints = no_execute_taints(&node);
    if !taints.is_empty() {
        let pods_res = ctx.res("", "pods");
        let now = jiff::Timestamp::now();
        for pod in ctx.informers.pods.list(None) {
            if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(name.as_str())
                || is_deleting(&pod)
            {
                continue;
            }
            match toleration_left(&pod, &taints, now) {
                Some(left) if left.is_zero() => {
                    record_event(
                        &ctx,
                        &pod,
                        "Normal",
                        "TaintManagerEviction",
                        format!("Marking for deletion Pod {}", object_key(&pod)),
                        "taint-eviction-controller",
                    );
                    let ns = meta_str(&pod, "namespace");
                    let opts = DeleteOptions {
                        precondition_uid: Some(meta_str(&pod, "uid").to_owned()),
                        ..DeleteOptions::default()
                    };
                    match ctx
                        .registry
                        .delete(&pods_res, Some(ns), meta_str(&pod, "name"), &opts)
                        .await
                    {
                        Ok(_)
                        | Err(ApiError {
                            code: 404 | 409, ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Some(left) => next = next.min(left),
                None => {}
            }
        }
    }
    Ok(Action::RequeueAfter(next))
}

/// Pods on an unreachable node are not ready (so Services stop sending
/// them traffic).
async fn mark_pods_not_ready(ctx: &Context, node: &str) {
    let res = ctx.res("", "pods");
    let now = now_str();
    for pod in ctx.informers.pods.list(None) {
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
            continue;
        }
        let conditions = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
        {
            continue;
        }
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
        ]}});
        let ns = meta_str(&pod, "namespace");
        if let Err(e) = ctx
            .registry
            .patch(
                &res,
                Some(ns),
                meta_str(&pod, "name"),
                (PatchType::Strategic, &patch),
                Some("status"),
                &WriteOptions::default(),
            )
            .await
        {
            tracing::debug!(%e, pod = %object_key(&pod), "could not mark pod not ready");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn taints_follow_readiness_and_keep_their_time() {
        let now = "2026-01-01T00:00:10Z";
        let custom = json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"});
        let lost = with_lifecycle_taints(std::slice::from_ref(&custom), Some(UNREACHABLE), now);
        assert_eq!(lost.len(), 3);
        assert!(lost.contains(&custom));
        assert!(lost.iter().any(|t| t["key"] == UNREACHABLE
            && t["effect"] == "NoExecute"
            && t["timeAdded"] == now));
        // Still unreachable later: the taint keeps its first timeAdded.
        assert_eq!(
            with_lifecycle_taints(&lost, Some(UNREACHABLE), "2026-01-01T00:05:00Z"),
            lost
        );
        // Now not ready instead: unreachable goes, not-ready comes.
        let not_ready = with_lifecycle_taints(&lost, Some(NOT_READY), now);
        assert!(not_ready.iter().all(|t| t["key"] != UNREACHABLE));
        assert_eq!(
            not_ready.iter().filter(|t| t["key"] == NOT_READY).count(),
            2
        );
        // Recovered: only the user's taint is left.
        assert_eq!(with_lifecycle_taints(&lost, None, now), vec![custom]);
        assert_eq!(wanted_taints("True"), None);
        assert_eq!(wanted_taints("Unknown"), Some(UNREACHABLE));
    }

    #[test]
    fn pods_leave_after_their_toleration_seconds() {
        let taints = vec![(
            UNREACHABLE.to_owned(),
            String::new(),
            Some(ts("2026-01-01T00:00:00Z")),
        )];
        let now = ts("2026-01-01T00:01:00Z");
        let default_pod = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        assert_eq!(
            toleration_left(&default_pod, &taints, now),
            Some(Duration::from_secs(240))
        );
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(toleration_left(&forever, &taints, now), None);
        let intolerant = json!({"spec": {}});
        assert_eq!(
            toleration_left(&intolerant, &taints, now),
            Some(Duration::ZERO)
        );
        let expired = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}});
        assert_eq!(
            toleration_left(&expired, &taints, now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn silence_is_measured_from_when_a_change_was_seen() {
        let mut seen = Seen::default();
        assert!(seen.silent_for("n", "a".into()) < Duration::from_secs(1));
        seen.heartbeats.get_mut("n").unwrap().1 -= Duration::from_secs(60);
        assert!(seen.silent_for("n", "a".into()) >= Duration::from_secs(60));
        assert!(seen.silent_for("n", "b".into()) < Duration::from_secs(1));
    }
}
