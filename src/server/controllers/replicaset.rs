//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the
//! selector, adopting orphans and releasing pods that no longer match, and
//! reports replicas/ready/available in the status.
//!
//! When there are too many pods it deletes, in order: unscheduled before
//! scheduled, pending before running, not ready before ready, newer before
//! older (as upstream ranks them).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{
    Action, Context, controller_of, controller_ref, is_deleting, meta_str, pod_is_active,
    pod_ready_since, record_event, run_workers,
};
use super::{adopt, release};
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key, split_key};
use crate::server::registry::{DeleteOptions, WriteOptions};
use crate::store::Revision;

/// Most pods created or deleted in one reconcile (upstream's burst).
const BURST: usize = 500;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    // ReplicaSets themselves.
    {
        let (queue, mut rx) = (queue.clone(), ctx.informers.replicasets.subscribe());
        let informer = ctx.informers.replicasets.clone();
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
    // Pods: their owner, or any ReplicaSet that could adopt them.
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
                            for key in owners_of(&ctx, pod) {
                                queue.add(key);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for rs in ctx.informers.replicasets.list(None) {
                            queue.add(object_key(&rs));
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    run_workers(tasks, "replicaset", queue, 2, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// The ReplicaSets a pod change concerns.
fn owners_of(ctx: &Context, pod: &Value) -> Vec<String> {
    let ns = meta_str(pod, "namespace");
    if let Some(owner) = controller_of(pod) {
        if owner.get("kind").and_then(Value::as_str) == Some("ReplicaSet") {
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
    ctx.informers
        .replicasets
        .list(Some(ns))
        .iter()
        .filter(|rs| selector_of(rs).is_some_and(|s| s.matches_object(pod)))
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

/// A pod for the ReplicaSet, from its template.
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

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let Some(rs) = ctx.informers.replicasets.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    let (ns, _) = split_key(&key);
    let ns = ns.unwrap_or_default().to_owned();
    let Some(selector) = selector_of(&rs) else {
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

    if !is_deleting(&rs) {
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let mut active: Vec<Arc<Value>> =
            owned.iter().filter(|p| pod_is_active(p)).cloned().collect();
        if active.len() < want {
            let missing = (want - active.len()).min(BURST);
            let template = new_pod(&rs);
            let mut creates = tokio::task::JoinSet::new();
            for _ in 0..missing {
                let (registry, res, pod, ns) = (
                    ctx.registry.clone(),
                    pods_res.clone(),
                    template.clone(),
                    ns.clone(),
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
                        last_write = last_write.max(rv_of(&written.object));
                        record_event(
                            &ctx,
                            &rs,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created pod: {}", meta_str(&written.object, "name")),
                            "replicaset-controller",
                        );
                    }
                    // The namespace is being deleted: nothing to create.
                    Err(e) if e.code == 403 => return Ok(Action::AwaitChange),
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
                        Some(&ns),
                        meta_str(pod, "name"),
                        &DeleteOptions::default(),
                    )
                    .await
                {
                    Ok(obj) => {
                        last_write = last_write.max(rv_of(&obj));
                        record_event(
                            &ctx,
                            &rs,
                            "Normal",
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", meta_str(pod, "name")),
                            "replicaset-controller",
                        );
                    }
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

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
    let min_ready = rs
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let mut ready = 0;
    let mut available = 0;
    let mut next_check: Option<i64> = None;
    for p in &owned {
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
    if rs.get("status") != Some(&status) {
        let mut updated = (*rs).clone();
        updated["status"] = status;
        let rs_res = ctx.res("apps", "replicasets");
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
    Ok(match next_check {
        Some(secs) => Action::RequeueAfter(Duration::from_secs(secs.max(1) as u64)),
        None => Action::AwaitChange,
    })
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
