//! The DaemonSet controller: one pod on every eligible node.
//!
//! A node is eligible when the daemon pod may go there: node selector and
//! required node affinity match and its taints are tolerated — with the
//! tolerations every daemon pod gets (not-ready and unreachable NoExecute
//! without a time limit, the pressure and unschedulable NoSchedule taints),
//! so daemons stay on troubled or cordoned nodes as upstream's do. Pods are
//! pinned with a required node affinity on `metadata.name` and placed by the
//! scheduler (upstream since 1.12).
//!
//! Updates: RollingUpdate replaces old pods node by node, never leaving
//! more than `maxUnavailable` nodes without an available daemon (with
//! `maxSurge`, the new pod starts before the old one goes); OnDelete waits
//! for the user to delete old pods. Templates are kept as
//! ControllerRevisions (`kubectl rollout history/undo daemonset`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::deployment::{resolve, template_hash};
use super::replicaset::{rv_of, selector_of};
use super::revisions::{self, HASH_LABEL};
use super::{
    Action, Context, controller_of, controller_ref, feed, is_deleting, meta_str, owner_keys,
    pod_ready_since, record_event, run_workers,
};
use crate::api::placement::{NodeInfo, PodView, placement};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key, split_key};
use crate::server::registry::WriteOptions;
use crate::store::Revision;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    feed(
        tasks,
        &ctx.informers.daemonsets,
        &queue,
        |c| vec![c.key.clone()],
        super::all_keys(&ctx.informers.daemonsets),
    );
    feed(
        tasks,
        &ctx.informers.pods,
        &queue,
        owner_keys("DaemonSet"),
        Vec::new,
    );
    // A node coming, going or changing labels/taints concerns every DaemonSet.
    {
        let daemonsets = ctx.informers.daemonsets.clone();
        feed(
            tasks,
            &ctx.informers.nodes,
            &queue,
            move |c| {
                let placement_of = |n: &Option<Arc<Value>>| {
                    n.as_deref().map(|n| {
                        (
                            n.pointer("/metadata/labels").cloned(),
                            n.pointer("/spec/taints").cloned(),
                            n.pointer("/spec/unschedulable").cloned(),
                        )
                    })
                };
                if placement_of(&c.old) == placement_of(&c.new) {
                    return Vec::new();
                }
                daemonsets
                    .list(None)
                    .iter()
                    .map(|d| object_key(d))
                    .collect()
            },
            Vec::new,
        );
    }
    run_workers(tasks, "daemonset", queue, 2, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// Tolerations every daemon pod gets (upstream's AddOrUpdateDaemonPodTolerations).
fn add_daemon_tolerations(spec: &mut Value) {
    let mut wanted = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if spec["hostNetwork"] == true {
        wanted.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    let list = spec
        .as_object_mut()
        .expect("pod spec is an object")
        .entry("tolerations")
        .or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        for t in wanted {
            if !list
                .iter()
                .any(|have| have["key"] == t["key"] && have["effect"] == t["effect"])
            {
                list.push(t);
            }
        }
    }
}

/// The daemon pod's spec for `node`: the template's, with the daemon
/// tolerations and a required node affinity to that node alone.
fn pod_spec_for(template: &Value, node: &str) -> Value {
    let mut spec = template["spec"].clone();
    add_daemon_tolerations(&mut spec);
    let term =
        json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]});
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": [term]});
    spec
}

/// The node a daemon pod is for: where it runs, or where its affinity pins it.
fn target_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Some(n.to_owned());
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn available(pod: &Value, min_ready: i64, now: jiff::Timestamp) -> bool {
    pod_ready_since(pod).is_some_and(|since| (now - since).get_seconds() >= min_ready)
}

fn hash_of(pod: &Value) -> &str {
    pod.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let Some(ds) = ctx.informers.daemonsets.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&ds) {
        return Ok(Action::AwaitChange);
    }
    let (ns, _) = split_key(&key);
    let ns = ns.unwrap_or_default().to_owned();
    let Some(selector) = selector_of(&ds) else {
        return Ok(Action::AwaitChange);
    };
    let uid = meta_str(&ds, "uid").to_owned();
    let pods_res = ctx.res("", "pods");
    let mut last = Revision(0);

    // History.
    let template = ds["spec"]["template"].clone();
    let hash = template_hash(&template);
    let revs = revisions::owned(&ctx, &ds);
    let current = revisions::ensure_current(&ctx, &ds, &hash, &revs).await?;

    // The daemon pods, by node (adopting orphans that match).
    let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for pod in ctx.informers.pods.list(Some(&ns)) {
        let owner = controller_of(&pod)
            .and_then(|o| o["uid"].as_str())
            .map(str::to_owned);
        let pod = match owner {
            Some(u) if u == uid => pod,
            None if selector.matches_object(&pod) && !is_deleting(&pod) => {
                Arc::new(super::adopt(&ctx, &pods_res, &pod, &ds).await?)
            }
            _ => continue,
        };
        if is_deleting(&pod) {
            continue;
        }
        if let Some(node) = target_node(&pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }

    let min_ready = ds
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let mut eligible: Vec<String> = Vec::new();
    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<Arc<Value>> = Vec::new();
    let nodes = ctx.informers.nodes.list(None);
    for node in &nodes {
        let name = meta_str(node, "name").to_owned();
        let spec = pod_spec_for(&template, &name);
        let probe = json!({"metadata": {"namespace": ns}, "spec": spec});
        let view = PodView::of(&probe);
        let info = NodeInfo::from_node(node);
        let mut pods = by_node.remove(&name).unwrap_or_default();
        if placement(&view, &info).is_err() {
            // Not a place for a new daemon; one already there stays unless
            // a NoExecute taint it does not tolerate says otherwise
            // (upstream's shouldRun / shouldContinueRunning).
            let mut lenient = info;
            lenient.unschedulable = false;
            lenient.taints.retain(|t| t.effect == "NoExecute");
            if placement(&view, &lenient).is_err() {
                to_delete.extend(pods);
            }
            continue;
        }
        eligible.push(name.clone());
        // Failed daemons are replaced; duplicates go (keep the oldest).
        let (failed, mut live): (Vec<_>, Vec<_>) = pods
            .drain(..)
            .partition(|p| p.pointer("/status/phase") == Some(&json!("Failed")));
        to_delete.extend(failed);
        live.sort_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")));
        // During a surge a node has one old and one new pod: keep both.
        let (new, old): (Vec<_>, Vec<_>) = live.into_iter().partition(|p| hash_of(p) == hash);
        if new.len() > 1 {
            to_delete.extend(new[1..].iter().cloned());
        }
        if old.len() > 1 {
            to_delete.extend(old[1..].iter().cloned());
        }
        if new.is_empty() && old.is_empty() {
            to_create.push(name);
        } else {
            by_node.insert(
                name,
                new.into_iter()
                    .take(1)
                    .chain(old.into_iter().take(1))
                    .collect(),
            );
        }
    }
    // Pods whose node is gone or not eligible.
    let stale: Vec<String> = by_node
        .keys()
        .filter(|n| !eligible.contains(n))
        .cloned()
        .collect();
    for n in stale {
        to_delete.extend(by_node.remove(&n).unwrap_or_default());
    }

    // Rolling update.
    let strategy = ds
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let desired = eligible.len() as i64;
    if strategy == "RollingUpdate" {
        let ru = ds.pointer("/spec/updateStrategy/rollingUpdate");
        let max_unavailable = resolve(ru.and_then(|r| r.get("maxUnavailable")), desired, true, "1");
        let max_surge = resolve(ru.and_then(|r| r.get("maxSurge")), desired, true, "0");
        let unavailable = eligible
            .iter()
            .filter(|n| {
                !by_node
                    .get(*n)
                    .is_some_and(|ps| ps.iter().any(|p| available(p, min_ready, now)))
            })
            .count() as i64;
        let mut budget = max_unavailable - unavailable;
        let mut surging = by_node.values().filter(|ps| ps.len() == 2).count() as i64;
        let mut nodes_sorted: Vec<&String> = by_node.keys().collect();
        nodes_sorted.sort();
        for node in nodes_sorted {
            let ps = &by_node[node];
            let new = ps.iter().find(|p| hash_of(p) == hash);
            let Some(old) = ps.iter().find(|p| hash_of(p) != hash) else {
                continue;
            };
            match new {
                // Surge finished on this node: the old pod may go.
                Some(new) if available(new, min_ready, now) => to_delete.push(old.clone()),
                Some(_) => {}
                None if !available(old, min_ready, now) => to_delete.push(old.clone()),
                None if max_surge > 0 && surging < max_surge => {
                    surging += 1;
                    to_create.push(node.clone());
                }
                // Surging: wait for a slot rather than take one away.
                None if max_surge > 0 => {}
                None if budget > 0 => {
                    budget -= 1;
                    to_delete.push(old.clone());
                }
                None => {}
            }
        }
    }

    for pod in &to_delete {
        let rev = super::delete_pod(&ctx, pod).await?;
        if rev > Revision(0) {
            last = last.max(rev);
            record_event(
                &ctx,
                &ds,
                "Normal",
                "SuccessfulDelete",
                format!("Deleted pod: {}", meta_str(pod, "name")),
                "daemonset-controller",
            );
        }
    }
    for node in &to_create {
        let mut metadata = json!({
            "generateName": format!("{}-", meta_str(&ds, "name")),
            "namespace": ns,
            "ownerReferences": [controller_ref(&ds)],
        });
        for field in ["labels", "annotations"] {
            if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                metadata[field] = v.clone();
            }
        }
        metadata["labels"][HASH_LABEL] = json!(hash);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec_for(&template, node)});
        match ctx
            .registry
            .create(&pods_res, Some(&ns), pod, &WriteOptions::default())
            .await
        {
            Ok(w) => {
                last = last.max(rv_of(&w.object));
                record_event(
                    &ctx,
                    &ds,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created pod: {}", meta_str(&w.object, "name")),
                    "daemonset-controller",
                );
            }
            Err(e) if e.code == 403 => return Ok(Action::AwaitChange),
            Err(e) => return Err(e),
        }
    }
    if last > Revision(0) {
        ctx.informers.pods.wait_for(last).await;
    }

    // Status, from the cache with this reconcile's writes.
    let mut per_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for pod in ctx.informers.pods.list(Some(&ns)) {
        if controller_of(&pod).and_then(|o| o["uid"].as_str()) == Some(uid.as_str())
            && !is_deleting(&pod)
            && let Some(node) = target_node(&pod)
        {
            per_node.entry(node).or_default().push(pod);
        }
    }
    let scheduled = |n: &String| {
        per_node.get(n).is_some_and(|ps| {
            ps.iter()
                .any(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(n.as_str()))
        })
    };
    let current_scheduled = eligible.iter().filter(|n| scheduled(n)).count();
    let misscheduled = per_node
        .keys()
        .filter(|n| !eligible.contains(n) && scheduled(n))
        .count();
    let ready = eligible
        .iter()
        .filter(|n| {
            per_node
                .get(*n)
                .is_some_and(|ps| ps.iter().any(|p| pod_ready_since(p).is_some()))
        })
        .count();
    let avail = eligible
        .iter()
        .filter(|n| {
            per_node
                .get(*n)
                .is_some_and(|ps| ps.iter().any(|p| available(p, min_ready, now)))
        })
        .count();
    let updated = eligible
        .iter()
        .filter(|n| {
            per_node
                .get(*n)
                .is_some_and(|ps| ps.iter().any(|p| hash_of(p) == hash))
        })
        .count();
    let mut status = ds.get("status").cloned().unwrap_or(json!({}));
    status["desiredNumberScheduled"] = json!(desired);
    status["currentNumberScheduled"] = json!(current_scheduled);
    status["numberMisscheduled"] = json!(misscheduled);
    status["numberReady"] = json!(ready);
    status["numberAvailable"] = json!(avail);
    status["numberUnavailable"] = json!(desired as usize - avail.min(desired as usize));
    status["updatedNumberScheduled"] = json!(updated);
    status["observedGeneration"] = ds["metadata"]["generation"].clone();
    if ds.get("status") != Some(&status) {
        let mut updated = (*ds).clone();
        updated["status"] = status;
        ctx.registry
            .update(
                &ctx.res("apps", "daemonsets"),
                Some(&ns),
                meta_str(&ds, "name"),
                updated,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
    }

    // History beyond the limit, except revisions live pods still run.
    let limit = ds
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let in_use: Vec<String> = per_node
        .values()
        .flatten()
        .map(|p| format!("{}-{}", meta_str(&ds, "name"), hash_of(p)))
        .collect();
    revisions::prune(&ctx, &revs, meta_str(&current, "name"), &in_use, limit).await;

    // Look again when a pod's minReadySeconds is up.
    let waiting = min_ready > 0
        && per_node
            .values()
            .flatten()
            .any(|p| pod_ready_since(p).is_some() && !available(p, min_ready, now));
    Ok(if waiting {
        Action::RequeueAfter(Duration::from_secs(1))
    } else {
        Action::AwaitChange
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_pods_are_pinned_and_tolerate_node_trouble() {
        let template = json!({"spec": {"containers": [{"name": "c", "image": "i"}],
            "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}});
        let spec = pod_spec_for(&template, "n1");
        let pod = json!({"spec": spec});
        assert_eq!(target_node(&pod).as_deref(), Some("n1"));
        let tolerations = spec["tolerations"].as_array().unwrap();
        assert_eq!(
            tolerations.len(),
            6,
            "no duplicate of the user's own toleration"
        );
        assert!(
            tolerations
                .iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable"
                    && t["effect"] == "NoExecute"
                    && t.get("tolerationSeconds").is_none())
        );
    }

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let node = |labels: Value, taints: Value| {
            NodeInfo::from_node(
                &json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            )
        };
        let template = json!({"spec": {"containers": [], "nodeSelector": {"disk": "ssd"}}});
        let pod = json!({"metadata": {"namespace": "ns"}, "spec": pod_spec_for(&template, "n")});
        let view = PodView::of(&pod);
        assert!(placement(&view, &node(json!({"disk": "ssd"}), json!([]))).is_ok());
        assert!(placement(&view, &node(json!({"disk": "hdd"}), json!([]))).is_err());
        let tainted = node(
            json!({"disk": "ssd"}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert!(placement(&view, &tainted).is_err());
        // Cordoned and unreachable nodes keep their daemons.
        let lost = node(
            json!({"disk": "ssd"}),
            json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                   {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert!(placement(&view, &lost).is_ok());
    }
}
