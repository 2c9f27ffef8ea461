//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`,
//! created in order and removed in reverse order.
//!
//! - `OrderedReady` (the default) creates ordinal i+1 only once ordinals up
//!   to i are Running and Ready, and scales down from the highest ordinal,
//!   one pod at a time, only while every pod is healthy. `Parallel` creates
//!   and deletes all at once.
//! - `RollingUpdate` replaces pods from the highest ordinal down to
//!   `partition`, one at a time, each once the rest are Running and Ready;
//!   pods below the partition keep (and are recreated at) the current
//!   revision. `OnDelete` replaces a pod only when the user deletes it.
//! - Pods get `hostname` = their name and `subdomain` = `serviceName`, and
//!   the labels `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`.
//!   Templates are kept as ControllerRevisions (`kubectl rollout
//!   history/undo statefulset`).
//!
//! `volumeClaimTemplates` need PersistentVolumeClaims, which orch does not
//! serve yet; they are ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::deployment::template_hash;
use super::replicaset::{rv_of, selector_of};
use super::revisions::{self, HASH_LABEL};
use super::{
    Action, Context, controller_of, controller_ref, feed, is_deleting, meta_str, owner_keys,
    pod_ready_since, record_event, run_workers,
};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, split_key};
use crate::server::registry::WriteOptions;
use crate::store::Revision;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    feed(
        tasks,
        &ctx.informers.statefulsets,
        &queue,
        |c| vec![c.key.clone()],
        super::all_keys(&ctx.informers.statefulsets),
    );
    feed(
        tasks,
        &ctx.informers.pods,
        &queue,
        owner_keys("StatefulSet"),
        Vec::new,
    );
    run_workers(tasks, "statefulset", queue, 2, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// The ordinal in a pod name `<set>-<ordinal>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n: &i64| *n >= 0)
}

fn running_and_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase") == Some(&json!("Running"))
        && pod_ready_since(pod).is_some()
        && !is_deleting(pod)
}

fn revision_of_pod(pod: &Value) -> &str {
    pod.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The pod for `ordinal`, from `template`, labelled with `revision`.
fn new_pod(set: &Value, template: &Value, ordinal: i64, revision: &str) -> Value {
    let set_name = meta_str(set, "name");
    let name = format!("{set_name}-{ordinal}");
    let mut metadata = json!({
        "name": name,
        "namespace": meta_str(set, "namespace"),
        "ownerReferences": [controller_ref(set)],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            metadata[field] = v.clone();
        }
    }
    metadata["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
    metadata["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    metadata["labels"][HASH_LABEL] = json!(revision);
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(svc) = set
        .pointer("/spec/serviceName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

async fn delete_pod(ctx: &Context, set: &Value, pod: &Value) -> Result<Revision, ApiError> {
    let rev = super::delete_pod(ctx, pod).await?;
    if rev > Revision(0) {
        record_event(
            ctx,
            set,
            "Normal",
            "SuccessfulDelete",
            format!(
                "delete Pod {} in StatefulSet {} successful",
                meta_str(pod, "name"),
                meta_str(set, "name")
            ),
            "statefulset-controller",
        );
    }
    Ok(rev)
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let Some(set) = ctx.informers.statefulsets.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&set) {
        return Ok(Action::AwaitChange);
    }
    let (ns, set_name) = split_key(&key);
    let (ns, set_name) = (ns.unwrap_or_default().to_owned(), set_name.to_owned());
    let Some(selector) = selector_of(&set) else {
        return Ok(Action::AwaitChange);
    };
    let uid = meta_str(&set, "uid").to_owned();
    let pods_res = ctx.res("", "pods");

    // Revisions: the one for the template now, and the one pods had before.
    let revs = revisions::owned(&ctx, &set);
    let update_rev =
        revisions::ensure_current(&ctx, &set, &template_hash(&set["spec"]["template"]), &revs)
            .await?;
    let update_name = meta_str(&update_rev, "name").to_owned();
    let current_name = set
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .filter(|c| revs.iter().any(|r| meta_str(r, "name") == *c))
        .unwrap_or(&update_name)
        .to_owned();
    let current_template = revs
        .iter()
        .find(|r| meta_str(r, "name") == current_name)
        .and_then(|r| r.pointer("/data/spec/template").cloned())
        .map(|mut t| {
            if let Some(m) = t.as_object_mut() {
                m.remove("$patch");
            }
            t
        })
        .unwrap_or_else(|| set["spec"]["template"].clone());

    // Our pods by ordinal (adopting matching orphans).
    let mut pods: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
    for pod in ctx.informers.pods.list(Some(&ns)) {
        let Some(ord) = ordinal_of(&set_name, meta_str(&pod, "name")) else {
            continue;
        };
        let pod = match controller_of(&pod).and_then(|o| o["uid"].as_str()) {
            Some(u) if u == uid => pod,
            None if selector.matches_object(&pod) && !is_deleting(&pod) => {
                Arc::new(super::adopt(&ctx, &pods_res, &pod, &set).await?)
            }
            _ => continue,
        };
        pods.insert(ord, pod);
    }

    let replicas = set
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let start = set
        .pointer("/spec/ordinals/start")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let wanted = start..start + replicas;
    let parallel = set.pointer("/spec/podManagementPolicy") == Some(&json!("Parallel"));
    let strategy = set
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let partition = set
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut last = Revision(0);

    let result: Result<(), ApiError> = async {
        // Failed pods are replaced.
        for pod in pods.values() {
            if pod.pointer("/status/phase") == Some(&json!("Failed")) && !is_deleting(pod) {
                last = last.max(delete_pod(&ctx, &set, pod).await?);
            }
        }
        // Create the missing, in order.
        for ord in wanted.clone() {
            match pods.get(&ord) {
                None => {
                    let (template, rev) = if strategy == "RollingUpdate" && ord < start + partition {
                        (&current_template, &current_name)
                    } else {
                        (&set["spec"]["template"], &update_name)
                    };
                    let pod = new_pod(&set, template, ord, rev);
                    match ctx
                        .registry
                        .create(&pods_res, Some(&ns), pod, &WriteOptions::default())
                        .await
                    {
                        Ok(w) => {
                            last = last.max(rv_of(&w.object));
                            record_event(
                                &ctx,
                                &set,
                                "Normal",
                                "SuccessfulCreate",
                                format!("create Pod {set_name}-{ord} in StatefulSet {set_name} successful"),
                                "statefulset-controller",
                            );
                        }
                        // Still there (terminating) or a namespace going away.
                        Err(e) if e.code == 409 || e.code == 403 => return Ok(()),
                        Err(e) => return Err(e),
                    }
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if !parallel && !running_and_ready(pod) => return Ok(()),
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal.
        let condemned: Vec<&Arc<Value>> = pods
            .iter()
            .rev()
            .filter(|(ord, _)| !wanted.contains(ord))
            .map(|(_, p)| p)
            .collect();
        if !condemned.is_empty() {
            let all_healthy = pods.values().all(|p| running_and_ready(p) || is_deleting(p));
            for pod in condemned {
                if is_deleting(pod) {
                    if parallel {
                        continue;
                    }
                    return Ok(());
                }
                if !parallel && !all_healthy {
                    return Ok(());
                }
                last = last.max(delete_pod(&ctx, &set, pod).await?);
                if !parallel {
                    return Ok(());
                }
            }
            return Ok(());
        }
        // Rolling update: highest ordinal first, down to the partition,
        // one at a time while the rest are healthy.
        if strategy == "RollingUpdate"
            && pods.values().all(|p| running_and_ready(p))
        {
            for (ord, pod) in pods.iter().rev() {
                if *ord < start + partition {
                    break;
                }
                if revision_of_pod(pod) != update_name {
                    last = last.max(delete_pod(&ctx, &set, pod).await?);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
    .await;
    result?;
    if last > Revision(0) {
        ctx.informers.pods.wait_for(last).await;
    }

    // Status.
    let pods: Vec<Arc<Value>> = ctx
        .informers
        .pods
        .list(Some(&ns))
        .into_iter()
        .filter(|p| {
            controller_of(p).and_then(|o| o["uid"].as_str()) == Some(uid.as_str())
                && ordinal_of(&set_name, meta_str(p, "name")).is_some()
                && !is_deleting(p)
        })
        .collect();
    let min_ready = set
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let ready = pods.iter().filter(|p| running_and_ready(p)).count() as i64;
    let available = pods
        .iter()
        .filter(|p| {
            running_and_ready(p)
                && pod_ready_since(p).is_some_and(|s| (now - s).get_seconds() >= min_ready)
        })
        .count() as i64;
    let updated = pods
        .iter()
        .filter(|p| revision_of_pod(p) == update_name)
        .count() as i64;
    let mut current_name = current_name;
    let mut current = pods
        .iter()
        .filter(|p| revision_of_pod(p) == current_name)
        .count() as i64;
    let count = pods.len() as i64;
    // A finished rollout makes the update revision the current one.
    if updated == replicas && ready == replicas && count == replicas {
        current_name = update_name.clone();
        current = updated;
    }
    let mut status = set.get("status").cloned().unwrap_or(json!({}));
    status["replicas"] = json!(count);
    status["readyReplicas"] = json!(ready);
    status["availableReplicas"] = json!(available);
    status["currentReplicas"] = json!(current);
    status["updatedReplicas"] = json!(updated);
    status["currentRevision"] = json!(current_name);
    status["updateRevision"] = json!(update_name);
    status["collisionCount"] = json!(0);
    status["observedGeneration"] = set["metadata"]["generation"].clone();
    if set.get("status") != Some(&status) {
        let mut obj = (*set).clone();
        obj["status"] = status;
        ctx.registry
            .update(
                &ctx.res("apps", "statefulsets"),
                Some(&ns),
                &set_name,
                obj,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
    }
    let limit = set
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let in_use: Vec<String> = pods
        .iter()
        .map(|p| revision_of_pod(p).to_owned())
        .chain([current_name])
        .collect();
    revisions::prune(&ctx, &revs, &update_name, &in_use, limit).await;
    Ok(if min_ready > 0 && available < ready {
        Action::RequeueAfter(Duration::from_secs(1))
    } else {
        Action::AwaitChange
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_canonical_names_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web--1"), None);
    }

    #[test]
    fn pods_have_stable_identity() {
        let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "db-headless"}});
        let template = json!({"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let pod = new_pod(&set, &template, 2, "db-abc");
        assert_eq!(pod["metadata"]["name"], "db-2");
        assert_eq!(pod["spec"]["hostname"], "db-2");
        assert_eq!(pod["spec"]["subdomain"], "db-headless");
        assert_eq!(
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            "2"
        );
        assert_eq!(
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            "db-2"
        );
        assert_eq!(pod["metadata"]["labels"][HASH_LABEL], "db-abc");
        assert_eq!(pod["metadata"]["labels"]["app"], "db");
    }
}
