//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the
//! selector, adopting orphans and releasing pods that no longer match, and
//! reports replicas/ready/available in the status.
//!
//! The same loop serves every kind that keeps a number of identical pods
//! (ReplicaSet, ReplicationController): [`run`] takes a [`Replicated`] that
//! says which kind, how its selector reads and what it reports.
//!
//! When there are too many pods it deletes, in order: unscheduled before
//! scheduled, pending before running, not ready before ready, newer before
//! older (as upstream ranks them).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{
    Action, Context, Informers, controller_of, controller_ref, is_deleting, meta_str,
    pod_is_active, pod_ready_since, record_event, run_workers,
};
use super::{adopt, release};
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;
use crate::server::informer::{Informer, Queue, object_key, split_key};
use crate::server::registry::{DeleteOptions, WriteOptions};
use crate::store::Revision;

/// Most pods created or deleted in one reconcile (upstream's burst).
const BURST: usize = 500;

/// A kind that keeps `spec.replicas` pods from `spec.template`.
pub struct Replicated {
    /// The owner kind in pods' ownerReferences.
    pub kind: &'static str,
    /// Where its objects are served (for status writes).
    pub group: &'static str,
    pub plural: &'static str,
    /// Worker and event source name (`replicaset-controller`).
    pub controller: &'static str,
    pub informer: fn(&Informers) -> &Arc<Informer>,
    /// The object's pod selector; `None` when it has none (or an empty one).
    pub selector: fn(&Value) -> Option<LabelSelector>,
    /// Report a failed create or delete as a `ReplicaFailure` condition.
    pub failure_condition: bool,
}

/// ReplicaSets (apps/v1).
pub const REPLICA_SET: Replicated = Replicated {
    kind: "ReplicaSet",
    group: "apps",
    plural: "replicasets",
    controller: "replicaset-controller",
    informer: |i| &i.replicasets,
    selector: selector_of,
    failure_condition: false,
};

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    run(ctx, tasks, &REPLICA_SET);
}

/// Watch objects of `kind` and their pods, and reconcile them.
pub fn run(ctx: Arc<Context>, tasks: &mut JoinSet<()>, kind: &'static Replicated) {
    let queue = Queue::new();
    // The owners themselves.
    {
        let informer = (kind.informer)(&ctx.informers).clone();
        let (queue, mut rx) = (queue.clone(), informer.subscribe());
        tasks.spawn(async move {
            for rs in informer.list(None) {
                queue.add(object_key(&rs));
            }
            loop {
                match rx.recv().await {
                    Ok(change) => queue.add(change.key),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for rs in informer.list(None) {
                            queue.add(object_key(&rs));
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    // Pods: their owner, or any owner that could adopt them.
    {
        let (queue, mut rx) = (queue.clone(), ctx.informers.pods.subscribe());
        let ctx = ctx.clone();
        tasks.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(change) => {
                        for pod in [change.old.as_deref(), change.new.as_deref()]
                            .into_iter()
                            .flatten()
                        {
                            for key in owners_of(&ctx, kind, pod) {
                                queue.add(key);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for rs in (kind.informer)(&ctx.informers).list(None) {
                            queue.add(object_key(&rs));
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    let worker = kind.controller.trim_end_matches("-controller");
    run_workers(tasks, worker, queue, 2, move |key| {
        reconcile(ctx.clone(), kind, key)
    });
}

/// The owners of `kind` a pod change concerns.
fn owners_of(ctx: &Context, kind: &Replicated, pod: &Value) -> Vec<String> {
    let ns = meta_str(pod, "namespace");
    if let Some(owner) = controller_of(pod) {
        if owner.get("kind").and_then(Value::as_str) == Some(kind.kind) {
            return vec![format!(
                "{ns}/{}",
                owner
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )];
        }
        return Vec::new();
    }
    (kind.informer)(&ctx.informers)
        .list(Some(ns))
        .iter()
        .filter(|rs| (kind.selector)(rs).is_some_and(|s| s.matches_object(pod)))
        .map(|rs| object_key(rs))
        .collect()
}

pub fn selector_of(obj: &Value) -> Option<LabelSelector> {
    obj.pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_label_selector(s).ok())
        .filter(|s| !s.is_empty())
}

/// The order in which surplus pods are deleted (first = deleted first).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = pod_ready_since(pod).is_some();
    let created = meta_str(pod, "creationTimestamp").to_owned();
    (
        u8::from(scheduled),
        phase,
        u8::from(ready),
        std::cmp::Reverse(created),
    )
}

/// A pod for the owner, from its template.
fn new_pod(rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let mut metadata = json!({
        "generateName": format!("{}-", meta_str(rs, "name")),
        "namespace": meta_str(rs, "namespace"),
        "ownerReferences": [controller_ref(rs)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            metadata[field] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

async fn reconcile(
    ctx: Arc<Context>,
    kind: &'static Replicated,
    key: String,
) -> Result<Action, ApiError> {
    let Some(rs) = (kind.informer)(&ctx.informers).get(&key) else {
        return Ok(Action::AwaitChange);
    };
    let (ns, _) = split_key(&key);
    let ns = ns.unwrap_or_default().to_owned();
    let Some(selector) = (kind.selector)(&rs) else {
        return Ok(Action::AwaitChange);
    };
    let pods_res = ctx.res("", "pods");
    let uid = meta_str(&rs, "uid").to_owned();
    let mut last_write = Revision(0);

    // Adopt matching orphans, release owned pods that no longer match.
    let mut owned = Vec::new();
    for pod in ctx.informers.pods.list(Some(&ns)) {
        let owner_uid = controller_of(&pod)
            .and_then(|o| o.get("uid"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let matches = selector.matches_object(&pod);
        match owner_uid {
            Some(u) if u == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    let released = release(&ctx, &pods_res, &pod, &uid).await?;
                    last_write = last_write.max(rv_of(&released));
                }
            }
            None if matches && pod_is_active(&pod) && !is_deleting(&rs) => {
                let adopted = adopt(&ctx, &pods_res, &pod, &rs).await?;
                last_write = last_write.max(rv_of(&adopted));
                owned.push(Arc::new(adopted));
            }
            _ => {}
        }
    }

    let managed = if is_deleting(&rs) {
        Ok(())
    } else {
        manage(&ctx, kind, &rs, &ns, &owned, &mut last_write).await
    };
    let managed = match managed {
        Ok(()) => None,
        // The namespace is being deleted: nothing to create.
        Err(e) if e.code == 403 => return Ok(Action::AwaitChange),
        Err(e) if !kind.failure_condition => return Err(e),
        Err(e) => Some(e),
    };

    // Status, from a cache that includes this reconcile's writes.
    if last_write > Revision(0) {
        ctx.informers.pods.wait_for(last_write).await;
    }
    let owned: Vec<Arc<Value>> = ctx
        .informers
        .pods
        .list(Some(&ns))
        .into_iter()
        .filter(|p| {
            controller_of(p)
                .and_then(|o| o.get("uid"))
                .and_then(Value::as_str)
                == Some(uid.as_str())
        })
        .filter(|p| pod_is_active(p))
        .collect();
    let (mut status, next_check) = counts(&rs, &owned);
    if kind.failure_condition {
        let want = replicas_of(&rs);
        set_failure(&mut status, managed.as_ref(), owned.len().cmp(&want));
    }
    if rs.get("status") != Some(&status) {
        let mut updated = (*rs).clone();
        updated["status"] = status;
        let rs_res = ctx.res(kind.group, kind.plural);
        ctx.registry
            .update(
                &rs_res,
                Some(&ns),
                meta_str(&rs, "name"),
                updated,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
    }
    if let Some(e) = managed {
        return Err(e);
    }
    Ok(match next_check {
        Some(secs) => Action::RequeueAfter(Duration::from_secs(secs.max(1) as u64)),
        None => Action::AwaitChange,
    })
}

fn replicas_of(rs: &Value) -> usize {
    rs.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0) as usize
}

/// Create missing pods or delete surplus ones (at most [`BURST`]).
async fn manage(
    ctx: &Arc<Context>,
    kind: &Replicated,
    rs: &Value,
    ns: &str,
    owned: &[Arc<Value>],
    last_write: &mut Revision,
) -> Result<(), ApiError> {
    let pods_res = ctx.res("", "pods");
    {
        let want = replicas_of(rs);
        let mut active: Vec<Arc<Value>> =
            owned.iter().filter(|p| pod_is_active(p)).cloned().collect();
        if active.len() < want {
            let missing = (want - active.len()).min(BURST);
            let template = new_pod(rs);
            let mut creates = tokio::task::JoinSet::new();
            for _ in 0..missing {
                let (registry, res, pod, ns) = (
                    ctx.registry.clone(),
                    pods_res.clone(),
                    template.clone(),
                    ns.to_owned(),
                );
                creates.spawn(async move {
                    registry
                        .create(&res, Some(&ns), pod, &WriteOptions::default())
                        .await
                });
            }
            while let Some(done) = creates.join_next().await {
                match done.map_err(|e| ApiError::internal(e.to_string()))? {
                    Ok(written) => {
                        *last_write = (*last_write).max(rv_of(&written.object));
                        record_event(
                            ctx,
                            rs,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created pod: {}", meta_str(&written.object, "name")),
                            kind.controller,
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        } else if active.len() > want {
            active.sort_by_key(|p| deletion_rank(p));
            for pod in active.iter().take((active.len() - want).min(BURST)) {
                match ctx
                    .registry
                    .delete(
                        &pods_res,
                        Some(ns),
                        meta_str(pod, "name"),
                        &DeleteOptions::default(),
                    )
                    .await
                {
                    Ok(obj) => {
                        *last_write = (*last_write).max(rv_of(&obj));
                        record_event(
                            ctx,
                            rs,
                            "Normal",
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", meta_str(pod, "name")),
                            kind.controller,
                        );
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// The status counts of `rs` over its active pods, and when to look again
/// for pods that become available.
fn counts(rs: &Value, owned: &[Arc<Value>]) -> (Value, Option<i64>) {
    let min_ready = rs
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let mut ready = 0;
    let mut available = 0;
    let mut next_check: Option<i64> = None;
    for p in owned {
        if let Some(since) = pod_ready_since(p) {
            ready += 1;
            let age = now.as_second() - since.as_second();
            if age >= min_ready {
                available += 1;
            } else {
                let left = min_ready - age;
                next_check = Some(next_check.map_or(left, |n: i64| n.min(left)));
            }
        }
    }
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            template_labels.as_object().is_none_or(|m| {
                m.iter().all(|(k, v)| {
                    p.pointer(&format!(
                        "/metadata/labels/{}",
                        k.replace('~', "~0").replace('/', "~1")
                    )) == Some(v)
                })
            })
        })
        .count();
    let mut status = rs.get("status").cloned().unwrap_or(json!({}));
    status["replicas"] = json!(owned.len());
    status["fullyLabeledReplicas"] = json!(fully_labeled);
    status["readyReplicas"] = json!(ready);
    status["availableReplicas"] = json!(available);
    status["observedGeneration"] = rs["metadata"]["generation"].clone();
    (status, next_check)
}

/// Upstream's ReplicaFailure condition: set (FailedCreate or FailedDelete)
/// when managing pods failed, removed once it works again.
fn set_failure(status: &mut Value, failed: Option<&ApiError>, have: std::cmp::Ordering) {
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let present = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match failed {
        Some(e) if !present => {
            let reason = match have {
                std::cmp::Ordering::Less => "FailedCreate",
                std::cmp::Ordering::Greater => "FailedDelete",
                std::cmp::Ordering::Equal => "",
            };
            conditions.push(json!({
                "type": "ReplicaFailure",
                "status": "True",
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "reason": reason,
                "message": e.message,
            }));
        }
        None if present => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => return,
    }
    if conditions.is_empty() {
        if let Some(m) = status.as_object_mut() {
            m.remove("conditions");
        }
    } else {
        status["conditions"] = Value::Array(conditions);
    }
}

pub fn rv_of(obj: &Value) -> Revision {
    Revision(meta_str(obj, "resourceVersion").parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surplus_pods_are_deleted_unscheduled_pending_unready_newest_first() {
        let pod = |name: &str, node: &str, phase: &str, ready: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
                   "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let mut pods = [
            pod("old-ready", "n1", "Running", true, "2026-01-01T00:00:00Z"),
            pod("new-ready", "n1", "Running", true, "2026-01-02T00:00:00Z"),
            pod("unready", "n1", "Running", false, "2026-01-01T00:00:00Z"),
            pod("pending", "n1", "Pending", false, "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn pods_come_from_the_template_with_a_controller_reference() {
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d8f", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let pod = new_pod(&rs);
        assert_eq!(pod["metadata"]["generateName"], "web-5d8f-");
        assert_eq!(pod["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(pod["spec"]["containers"][0]["image"], "i");
    }
}
