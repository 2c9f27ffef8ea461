//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), rolled from old to new with the
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate strategy, revision
//! annotations for `kubectl rollout history/undo`, history cleanup, and the
//! status and conditions `kubectl rollout status` reads.
//!
//! Rollback needs nothing special: `kubectl rollout undo` writes an old
//! template back, the controller finds the ReplicaSet that has it and gives
//! it the next revision.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::replicaset::{rv_of, selector_of};
use super::{
    Action, Context, controller_of, controller_ref, is_deleting, meta_str, record_event,
    run_workers,
};
use crate::api::patch::PatchType;
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key, split_key};
use crate::server::registry::{DeleteOptions, WriteOptions};
use crate::store::Revision;

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    {
        let (queue, mut rx, informer) = (
            queue.clone(),
            ctx.informers.deployments.subscribe(),
            ctx.informers.deployments.clone(),
        );
        tasks.spawn(async move {
            for d in informer.list(None) {
                queue.add(object_key(&d));
            }
            loop {
                match rx.recv().await {
                    Ok(change) => queue.add(change.key),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => informer
                        .list(None)
                        .iter()
                        .for_each(|d| queue.add(object_key(d))),
                    Err(_) => return,
                }
            }
        });
    }
    {
        // ReplicaSet changes concern their owning Deployment; pod deletions
        // matter to Recreate, which waits for old pods to be gone.
        let (queue, ctx2) = (queue.clone(), ctx.clone());
        let mut rs_rx = ctx.informers.replicasets.subscribe();
        let mut pod_rx = ctx.informers.pods.subscribe();
        tasks.spawn(async move {
            loop {
                let owner_of_rs = |rs: &Value| -> Option<String> {
                    let o = controller_of(rs)?;
                    (o.get("kind").and_then(Value::as_str) == Some("Deployment")).then(|| format!("{}/{}", meta_str(rs, "namespace"), o["name"].as_str().unwrap_or_default()))
                };
                tokio::select! {
                    change = rs_rx.recv() => match change {
                        Ok(c) => {
                            for rs in [c.old.as_deref(), c.new.as_deref()].into_iter().flatten() {
                                if let Some(k) = owner_of_rs(rs) { queue.add(k) }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ctx2.informers.deployments.list(None).iter().for_each(|d| queue.add(object_key(d))),
                        Err(_) => return,
                    },
                    change = pod_rx.recv() => match change {
                        Ok(c) if c.new.is_none() => {
                            if let Some(pod) = c.old.as_deref()
                                && let Some(o) = controller_of(pod)
                                && o.get("kind").and_then(Value::as_str) == Some("ReplicaSet")
                                && let Some(rs) = ctx2.informers.replicasets.get(&format!("{}/{}", meta_str(pod, "namespace"), o["name"].as_str().unwrap_or_default()))
                                && let Some(k) = owner_of_rs(&rs)
                            {
                                queue.add(k);
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                }
            }
        });
    }
    run_workers(tasks, "deployment", queue, 2, move |key| {
        reconcile(ctx.clone(), key)
    });
}

/// A stable hash of a pod template, as a label value from upstream's
/// alphabet (no vowels, so no words).
pub fn template_hash(template: &Value) -> String {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    let bytes = serde_json::to_vec(&t).expect("JSON");
    // FNV-1a, 32 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut n = u64::from(h);
    while n > 0 || out.is_empty() {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

fn template_without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    t
}

fn revision_of(rs: &Value) -> u64 {
    rs.pointer(&format!(
        "/metadata/annotations/{}",
        REVISION.replace('/', "~1")
    ))
    .and_then(Value::as_str)
    .and_then(|s| s.parse().ok())
    .unwrap_or(0)
}

fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn status_i(obj: &Value, field: &str) -> i64 {
    obj.pointer(&format!("/status/{field}"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// An int-or-percent of `total`: percentages round up for surge, down for
/// unavailability, as upstream.
pub fn resolve(value: Option<&Value>, total: i64, round_up: bool, default: &str) -> i64 {
    let v = value.cloned().unwrap_or(json!(default));
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let scaled = total * p;
                if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: String, now: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
}

/// Put `new` in `conditions`, keeping lastTransitionTime when the status is
/// unchanged and lastUpdateTime when nothing changed.
fn set_condition(conditions: &mut Vec<Value>, mut new: Value) {
    if let Some(old) = conditions.iter_mut().find(|c| c["type"] == new["type"]) {
        if old["status"] == new["status"] {
            new["lastTransitionTime"] = old["lastTransitionTime"].clone();
            if old["reason"] == new["reason"] && old["message"] == new["message"] {
                new["lastUpdateTime"] = old["lastUpdateTime"].clone();
            }
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

struct Writer<'a> {
    ctx: &'a Context,
    ns: String,
    last: Revision,
}

impl Writer<'_> {
    async fn scale(&mut self, rs: &Value, to: i64) -> Result<(), ApiError> {
        if replicas(rs) == to {
            return Ok(());
        }
        let res = self.ctx.res("apps", "replicasets");
        let patch = json!({"spec": {"replicas": to}});
        let w = self
            .ctx
            .registry
            .patch(
                &res,
                Some(&self.ns),
                meta_str(rs, "name"),
                (PatchType::Merge, &patch),
                None,
                &WriteOptions::default(),
            )
            .await?;
        self.last = self.last.max(rv_of(&w.object));
        Ok(())
    }
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let Some(d) = ctx.informers.deployments.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&d) {
        return Ok(Action::AwaitChange);
    }
    let (ns, name) = split_key(&key);
    let (ns, name) = (ns.unwrap_or_default().to_owned(), name.to_owned());
    let Some(selector) = selector_of(&d) else {
        return Ok(Action::AwaitChange);
    };
    let uid = meta_str(&d, "uid").to_owned();
    let rs_res = ctx.res("apps", "replicasets");
    let mut w = Writer {
        ctx: &ctx,
        ns: ns.clone(),
        last: Revision(0),
    };

    // The ReplicaSets this Deployment owns (adopting matching orphans).
    let mut owned: Vec<Value> = Vec::new();
    for rs in ctx.informers.replicasets.list(Some(&ns)) {
        match controller_of(&rs)
            .and_then(|o| o.get("uid"))
            .and_then(Value::as_str)
        {
            Some(u) if u == uid => owned.push((*rs).clone()),
            None if selector.matches_object(&rs) && !is_deleting(&rs) => {
                let adopted = super::adopt(&ctx, &rs_res, &rs, &d).await?;
                w.last = w.last.max(rv_of(&adopted));
                owned.push(adopted);
            }
            _ => {}
        }
    }
    owned.sort_by(|a, b| {
        meta_str(a, "creationTimestamp")
            .cmp(meta_str(b, "creationTimestamp"))
            .then(revision_of(a).cmp(&revision_of(b)))
    });

    let template = d["spec"]["template"].clone();
    let paused = d.pointer("/spec/paused") == Some(&json!(true));
    let want = replicas(&d).max(0);
    let new_idx = owned
        .iter()
        .position(|rs| template_without_hash(&rs["spec"]["template"]) == template);
    let max_old_revision = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision_of(rs))
        .max()
        .unwrap_or(0);
    let change_cause = d
        .pointer(&format!(
            "/metadata/annotations/{}",
            CHANGE_CAUSE.replace('/', "~1")
        ))
        .cloned();
    let mut created_new = false;

    let new_rs: Option<Value> = match new_idx {
        Some(i) => {
            let rs = owned[i].clone();
            // A rollback (or first sight) gives it the newest revision.
            if revision_of(&rs) <= max_old_revision && !paused {
                let mut ann = json!({REVISION: (max_old_revision + 1).to_string()});
                if let Some(cc) = &change_cause {
                    ann[CHANGE_CAUSE] = cc.clone();
                }
                let patch = json!({"metadata": {"annotations": ann}});
                let written = ctx
                    .registry
                    .patch(
                        &rs_res,
                        Some(&ns),
                        meta_str(&rs, "name"),
                        (PatchType::Merge, &patch),
                        None,
                        &WriteOptions::default(),
                    )
                    .await?;
                w.last = w.last.max(rv_of(&written.object));
                owned[i] = written.object.clone();
                Some(written.object)
            } else {
                Some(rs)
            }
        }
        None if paused => None,
        None => {
            let hash = template_hash(&template);
            let mut t = template.clone();
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut sel = d["spec"]["selector"].clone();
            sel["matchLabels"][HASH_LABEL] = json!(hash);
            let mut labels = template
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let surge = resolve(
                d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
                want,
                true,
                "25%",
            );
            let mut annotations = json!({
                REVISION: (max_old_revision + 1).to_string(),
                "deployment.kubernetes.io/desired-replicas": want.to_string(),
                "deployment.kubernetes.io/max-replicas": (want + surge).to_string(),
            });
            if let Some(cc) = &change_cause {
                annotations[CHANGE_CAUSE] = cc.clone();
            }
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": labels, "annotations": annotations, "ownerReferences": [controller_ref(&d)]},
                "spec": {"replicas": 0, "minReadySeconds": d.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)), "selector": sel, "template": t},
            });
            match ctx
                .registry
                .create(&rs_res, Some(&ns), rs, &WriteOptions::default())
                .await
            {
                Ok(written) => {
                    w.last = w.last.max(rv_of(&written.object));
                    created_new = true;
                    owned.push(written.object.clone());
                    Some(written.object)
                }
                Err(e) if e.code == 409 => return Err(e),
                Err(e) => return Err(e),
            }
        }
    };
    let new_name = new_rs
        .as_ref()
        .map(|rs| meta_str(rs, "name").to_owned())
        .unwrap_or_default();
    let olds: Vec<Value> = owned
        .iter()
        .filter(|rs| meta_str(rs, "name") != new_name)
        .cloned()
        .collect();

    let strategy = d
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let max_surge = resolve(
        d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
        want,
        true,
        "25%",
    );
    let mut max_unavailable = resolve(
        d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        want,
        false,
        "25%",
    );
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    if strategy == "Recreate" {
        max_unavailable = want;
    }

    if let (Some(new_rs), false) = (&new_rs, paused) {
        if strategy == "Recreate" {
            let mut olds_running = false;
            for rs in &olds {
                if replicas(rs) > 0 {
                    w.scale(rs, 0).await?;
                    olds_running = true;
                }
                if status_i(rs, "replicas") > 0 {
                    olds_running = true;
                }
            }
            if !olds_running {
                w.scale(new_rs, want).await?;
            }
        } else {
            // Scale up the new ReplicaSet within maxSurge.
            let total: i64 = owned.iter().map(replicas).sum();
            let new_replicas = replicas(new_rs);
            let target = if new_replicas > want {
                want
            } else {
                let room = (want + max_surge - total).max(0);
                new_replicas + room.min(want - new_replicas)
            };
            if target != new_replicas {
                w.scale(new_rs, target).await?;
                record_event(
                    &ctx,
                    &d,
                    "Normal",
                    "ScalingReplicaSet",
                    format!(
                        "Scaled {} replica set {new_name} from {new_replicas} to {target}",
                        if target > new_replicas { "up" } else { "down" }
                    ),
                    "deployment-controller",
                );
            }
            // Scale down old ones within maxUnavailable.
            let all_pods = total - new_replicas + target;
            let min_available = want - max_unavailable;
            let new_unavailable = (target - status_i(new_rs, "availableReplicas")).max(0);
            let mut max_scaled_down = all_pods - min_available - new_unavailable;
            if max_scaled_down > 0 {
                // First the old pods that are not available anyway.
                let mut olds_now: Vec<(Value, i64)> =
                    olds.iter().map(|rs| (rs.clone(), replicas(rs))).collect();
                for (rs, reps) in &mut olds_now {
                    let unhealthy = (*reps - status_i(rs, "availableReplicas")).max(0);
                    let cut = unhealthy.min(max_scaled_down);
                    if cut > 0 {
                        *reps -= cut;
                        max_scaled_down -= cut;
                        w.scale(rs, *reps).await?;
                    }
                }
                let available: i64 = owned
                    .iter()
                    .map(|rs| status_i(rs, "availableReplicas"))
                    .sum();
                let mut can_remove = (available - min_available).min(max_scaled_down.max(0));
                for (rs, reps) in &mut olds_now {
                    if can_remove <= 0 {
                        break;
                    }
                    let cut = (*reps).min(can_remove);
                    if cut > 0 {
                        let from = *reps;
                        *reps -= cut;
                        can_remove -= cut;
                        w.scale(rs, *reps).await?;
                        record_event(
                            &ctx,
                            &d,
                            "Normal",
                            "ScalingReplicaSet",
                            format!(
                                "Scaled down replica set {} from {from} to {}",
                                meta_str(rs, "name"),
                                *reps
                            ),
                            "deployment-controller",
                        );
                    }
                }
            }
        }
    }

    // History: old ReplicaSets with no pods beyond revisionHistoryLimit.
    let limit = d
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10)
        .max(0) as usize;
    let idle: Vec<&Value> = olds
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_i(rs, "replicas") == 0)
        .collect();
    if idle.len() > limit {
        let mut by_rev = idle.clone();
        by_rev.sort_by_key(|rs| revision_of(rs));
        for rs in by_rev.iter().take(idle.len() - limit) {
            match ctx
                .registry
                .delete(
                    &rs_res,
                    Some(&ns),
                    meta_str(rs, "name"),
                    &DeleteOptions::default(),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }

    // The Deployment's own revision annotation follows the new ReplicaSet.
    let deploy_res = ctx.res("apps", "deployments");
    let mut deployment_write = Revision(0);
    if let Some(new_rs) = &new_rs {
        let rev = revision_of(new_rs)
            .max(if created_new { max_old_revision + 1 } else { 0 })
            .to_string();
        let current = d
            .pointer(&format!(
                "/metadata/annotations/{}",
                REVISION.replace('/', "~1")
            ))
            .and_then(Value::as_str);
        if current != Some(rev.as_str()) {
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            let written = ctx
                .registry
                .patch(
                    &deploy_res,
                    Some(&ns),
                    &name,
                    (PatchType::Merge, &patch),
                    None,
                    &WriteOptions::default(),
                )
                .await?;
            deployment_write = rv_of(&written.object);
        }
    }

    // Status from the ReplicaSets as they are now. (An informer only sees
    // revisions of its own kind, so each waits for its own writes.)
    if w.last > Revision(0) {
        ctx.informers.replicasets.wait_for(w.last).await;
    }
    if deployment_write > Revision(0) {
        ctx.informers.deployments.wait_for(deployment_write).await;
    }
    let Some(d) = ctx.informers.deployments.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    let rss: Vec<Arc<Value>> = ctx
        .informers
        .replicasets
        .list(Some(&ns))
        .into_iter()
        .filter(|rs| {
            controller_of(rs)
                .and_then(|o| o.get("uid"))
                .and_then(Value::as_str)
                == Some(uid.as_str())
        })
        .collect();
    let sum = |f: &str| -> i64 { rss.iter().map(|rs| status_i(rs, f)).sum() };
    let new_status = rss.iter().find(|rs| meta_str(rs, "name") == new_name);
    let updated = new_status.map_or(0, |rs| status_i(rs, "replicas"));
    let (total, ready, available) = (
        sum("replicas"),
        sum("readyReplicas"),
        sum("availableReplicas"),
    );
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut status = d.get("status").cloned().unwrap_or(json!({}));
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if available >= want - max_unavailable {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                &now,
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                &now,
            ),
        );
    }
    let complete = updated == want
        && available >= want
        && total == want
        && new_status.is_some_and(|rs| status_i(rs, "availableReplicas") >= want);
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64);
    let mut requeue = None;
    let counts_changed = [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ]
    .iter()
    .zip([total, updated, ready, available])
    .any(|(f, v)| status_i(&d, f) != v);
    if paused {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                &now,
            ),
        );
    } else if complete {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet {new_name:?} has successfully progressed."),
                &now,
            ),
        );
    } else if created_new {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set {new_name:?}"),
                &now,
            ),
        );
    } else if counts_changed || !conditions.iter().any(|c| c["type"] == "Progressing") {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet {new_name:?} is progressing."),
                &now,
            ),
        );
    } else if let Some(secs) = deadline {
        let last = conditions
            .iter()
            .find(|c| c["type"] == "Progressing")
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(last) = last {
            let elapsed = jiff::Timestamp::now().as_second() - last.as_second();
            if elapsed > secs {
                set_condition(
                    &mut conditions,
                    condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet {new_name:?} has timed out progressing."),
                        &now,
                    ),
                );
            } else {
                requeue = Some(Duration::from_secs((secs - elapsed + 1) as u64));
            }
        }
    }
    status["observedGeneration"] = d["metadata"]["generation"].clone();
    status["replicas"] = json!(total);
    status["updatedReplicas"] = json!(updated);
    status["readyReplicas"] = json!(ready);
    status["availableReplicas"] = json!(available);
    status["unavailableReplicas"] = json!((want - available).max(0));
    status["conditions"] = Value::Array(conditions);
    for zero in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ] {
        if status[zero] == json!(0) {
            status
                .as_object_mut()
                .expect("status is an object")
                .remove(zero);
        }
    }
    if d.get("status") != Some(&status) {
        let mut updated_d = (*d).clone();
        updated_d["status"] = status;
        ctx.registry
            .update(
                &deploy_res,
                Some(&ns),
                &name,
                updated_d,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
    }
    Ok(match requeue {
        Some(d) if !complete => Action::RequeueAfter(d),
        _ => Action::AwaitChange,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        assert_eq!(resolve(Some(&json!("25%")), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&json!("25%")), 10, false, "25%"), 2);
        assert_eq!(resolve(Some(&json!(2)), 10, false, "25%"), 2);
        assert_eq!(resolve(None, 4, true, "25%"), 1);
        assert_eq!(resolve(Some(&json!("0%")), 4, false, "25%"), 0);
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        let h = template_hash(&t);
        assert_eq!(h, template_hash(&t));
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(template_hash(&labelled), h);
        let mut changed = t.clone();
        changed["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_ne!(template_hash(&changed), h);
        assert!(
            crate::api::selector::check_value(&h).is_ok(),
            "{h} is a valid label value"
        );
    }

    #[test]
    fn conditions_keep_transition_times_while_status_holds() {
        let mut cs = vec![condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "m".into(),
            "t1",
        )];
        set_condition(
            &mut cs,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "m".into(),
                "t2",
            ),
        );
        assert_eq!(
            (
                cs[0]["lastTransitionTime"].as_str(),
                cs[0]["lastUpdateTime"].as_str()
            ),
            (Some("t1"), Some("t1"))
        );
        set_condition(
            &mut cs,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "m".into(),
                "t3",
            ),
        );
        assert_eq!(cs[0]["lastTransitionTime"], "t3");
    }
}
