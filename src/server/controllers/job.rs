//! The Job controller: runs pods until `completions` succeed (or, without
//! `completions`, until one succeeds and the rest finish), at most
//! `parallelism` at a time, and gives up after `backoffLimit` failures or
//! `activeDeadlineSeconds`; `suspend` stops the pods, and
//! `ttlSecondsAfterFinished` deletes a finished Job (upstream's TTL
//! controller).
//!
//! Terminated pods are counted exactly once, even when they are deleted
//! right away (pod GC, a user): each pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer; a finished pod's uid is
//! first written to `status.uncountedTerminatedPods`, then its finalizer is
//! removed, then it moves into `status.succeeded`/`failed` — upstream's
//! protocol, so a crash between steps neither loses nor doubles a count.
//!
//! Failed pods are replaced after a back-off of 10 s doubling per failure,
//! capped at 6 minutes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::replicaset::rv_of;
use super::{
    Action, Context, controller_of, controller_ref, feed, is_deleting, meta_str, owner_keys,
    pod_ready_since, record_event, run_workers,
};
use crate::api::patch::PatchType;
use crate::api::status::ApiError;
use crate::server::informer::{Queue, split_key};
use crate::server::registry::{DeleteOptions, WriteOptions};
use crate::store::Revision;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const BURST: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(360);

/// Per Job: the failure count last seen, and when it last grew.
type Backoffs = Mutex<HashMap<String, (i64, Instant)>>;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    feed(
        tasks,
        &ctx.informers.jobs,
        &queue,
        |c| vec![c.key.clone()],
        super::all_keys(&ctx.informers.jobs),
    );
    feed(
        tasks,
        &ctx.informers.pods,
        &queue,
        owner_keys("Job"),
        Vec::new,
    );
    let backoffs: Arc<Backoffs> = Arc::default();
    run_workers(tasks, "job", queue, 2, move |key| {
        reconcile(ctx.clone(), backoffs.clone(), key)
    });
}

fn int(obj: &Value, ptr: &str) -> Option<i64> {
    obj.pointer(ptr).and_then(Value::as_i64)
}

fn now_str() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn has_condition(job: &Value, kind: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// Complete or Failed, and when.
pub fn finished(job: &Value) -> Option<(&'static str, jiff::Timestamp)> {
    let cs = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)?;
    cs.iter().find_map(|c| {
        let kind = match c["type"].as_str()? {
            "Complete" => "Complete",
            "Failed" => "Failed",
            _ => return None,
        };
        (c["status"] == "True").then(|| {
            let at = c["lastTransitionTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(jiff::Timestamp::now);
            (kind, at)
        })
    })
}

fn set_condition(status: &mut Value, kind: &str, state: &str, reason: &str, message: &str) {
    let now = now_str();
    let new = json!({"type": kind, "status": state, "reason": reason, "message": message,
                     "lastProbeTime": now, "lastTransitionTime": now});
    let conditions = status
        .as_object_mut()
        .expect("status is an object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    match list.iter_mut().find(|c| c["type"] == kind) {
        Some(old) if old["status"] == state => {}
        Some(old) => *old = new,
        None => list.push(new),
    }
}

/// How a pod of the Job ended, if it has.
fn terminal(pod: &Value) -> Option<bool> {
    match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        // Deleted before it finished: a failure (upstream, without a pod
        // failure policy).
        _ if is_deleting(pod) => Some(false),
        _ => None,
    }
}

fn has_tracking_finalizer(pod: &Value) -> bool {
    pod.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|v| v == TRACKING_FINALIZER))
}

fn uid_list(status: &Value, which: &str) -> Vec<String> {
    status
        .pointer(&format!("/uncountedTerminatedPods/{which}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// A pod for the Job, from its template.
fn new_pod(job: &Value) -> Value {
    let template = &job["spec"]["template"];
    let mut metadata = json!({
        "generateName": format!("{}-", meta_str(job, "name")),
        "namespace": meta_str(job, "namespace"),
        "ownerReferences": [controller_ref(job)],
        "finalizers": [TRACKING_FINALIZER],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            metadata[field] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// Remove our finalizer from `pod`; the revision written, if any.
async fn drop_finalizer(ctx: &Context, pod: &Value) -> Result<Revision, ApiError> {
    let finalizers: Vec<Value> = pod["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| *f != TRACKING_FINALIZER)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pod["metadata"]["resourceVersion"]}});
    match ctx
        .registry
        .patch(
            &ctx.res("", "pods"),
            Some(meta_str(pod, "namespace")),
            meta_str(pod, "name"),
            (PatchType::Merge, &patch),
            None,
            &WriteOptions::default(),
        )
        .await
    {
        Ok(w) => Ok(rv_of(&w.object)),
        Err(ApiError { code: 404, .. }) => Ok(Revision(0)),
        Err(e) => Err(e),
    }
}

async fn write_status(ctx: &Context, job: &Value, status: Value) -> Result<Value, ApiError> {
    let mut updated = job.clone();
    updated["status"] = status;
    let written = ctx
        .registry
        .update(
            &ctx.res("batch", "jobs"),
            Some(meta_str(job, "namespace")),
            meta_str(job, "name"),
            updated,
            Some("status"),
            &WriteOptions::default(),
        )
        .await?;
    Ok(written.object)
}

async fn reconcile(
    ctx: Arc<Context>,
    backoffs: Arc<Backoffs>,
    key: String,
) -> Result<Action, ApiError> {
    let (ns, name) = split_key(&key);
    let ns = ns.unwrap_or_default().to_owned();
    let Some(job) = ctx.informers.jobs.get(&key) else {
        // Gone: its pods must not stay stuck on our finalizer.
        for pod in ctx.informers.pods.list(Some(&ns)) {
            let ours = controller_of(&pod)
                .is_some_and(|o| o["kind"] == "Job" && o["name"].as_str() == Some(name));
            if ours && has_tracking_finalizer(&pod) {
                drop_finalizer(&ctx, &pod).await?;
            }
        }
        return Ok(Action::AwaitChange);
    };
    let uid = meta_str(&job, "uid").to_owned();
    let pods: Vec<Arc<Value>> = ctx
        .informers
        .pods
        .list(Some(&ns))
        .into_iter()
        .filter(|p| controller_of(p).and_then(|o| o["uid"].as_str()) == Some(uid.as_str()))
        .collect();
    if is_deleting(&job) {
        for pod in pods.iter().filter(|p| has_tracking_finalizer(p)) {
            drop_finalizer(&ctx, pod).await?;
        }
        return Ok(Action::AwaitChange);
    }
    let mut job = (*job).clone();
    // The revision of our last pod write: the pod cache must include it
    // before the next look (no double counts, no duplicate pods).
    let mut pods_rev = Revision(0);
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    if !status.is_object() {
        status = json!({});
    }

    // 1. Record newly finished pods as uncounted.
    let mut unc_ok = uid_list(&status, "succeeded");
    let mut unc_failed = uid_list(&status, "failed");
    let before = (unc_ok.len(), unc_failed.len());
    for pod in pods.iter().filter(|p| has_tracking_finalizer(p)) {
        let pod_uid = meta_str(pod, "uid").to_owned();
        if unc_ok.contains(&pod_uid) || unc_failed.contains(&pod_uid) {
            continue;
        }
        match terminal(pod) {
            Some(true) => unc_ok.push(pod_uid),
            Some(false) => unc_failed.push(pod_uid),
            None => {}
        }
    }
    if (unc_ok.len(), unc_failed.len()) != before {
        status["uncountedTerminatedPods"] = json!({"succeeded": unc_ok, "failed": unc_failed});
        job = write_status(&ctx, &job, status.clone()).await?;
    }
    // 2. Release them.
    let uncounted: HashSet<&String> = unc_ok.iter().chain(&unc_failed).collect();
    for pod in pods
        .iter()
        .filter(|p| has_tracking_finalizer(p) && uncounted.contains(&meta_str(p, "uid").to_owned()))
    {
        pods_rev = pods_rev.max(drop_finalizer(&ctx, pod).await?);
    }
    // 3. Count them: their finalizers are gone, so they can never be
    // recorded again; the status write below makes it final.
    let succeeded = int(&status, "/succeeded").unwrap_or(0) + unc_ok.len() as i64;
    let failed = int(&status, "/failed").unwrap_or(0) + unc_failed.len() as i64;
    status["uncountedTerminatedPods"] = json!({});

    let active: Vec<&Arc<Value>> = pods.iter().filter(|p| terminal(p).is_none()).collect();
    let terminating = pods.iter().filter(|p| is_deleting(p)).count();
    let ready = active
        .iter()
        .filter(|p| pod_ready_since(p).is_some())
        .count();
    let now = jiff::Timestamp::now();
    let suspended = job.pointer("/spec/suspend") == Some(&json!(true));
    let mut next: Option<Duration> = None;

    if finished(&job).is_none() {
        if suspended {
            for pod in &active {
                pods_rev = pods_rev.max(super::delete_pod(&ctx, pod).await?);
            }
            if !has_condition(&job, "Suspended") {
                set_condition(
                    &mut status,
                    "Suspended",
                    "True",
                    "JobSuspended",
                    "Job suspended",
                );
                record_event(
                    &ctx,
                    &job,
                    "Normal",
                    "Suspended",
                    "Job suspended".into(),
                    "job-controller",
                );
            }
        } else {
            if has_condition(&job, "Suspended") {
                set_condition(
                    &mut status,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                );
                status["startTime"] = json!(now_str());
                record_event(
                    &ctx,
                    &job,
                    "Normal",
                    "Resumed",
                    "Job resumed".into(),
                    "job-controller",
                );
            }
            if status.get("startTime").is_none_or(Value::is_null) {
                status["startTime"] = json!(now_str());
            }
            let restarts: i64 =
                if job.pointer("/spec/template/spec/restartPolicy") == Some(&json!("OnFailure")) {
                    active
                        .iter()
                        .flat_map(|p| {
                            p.pointer("/status/containerStatuses")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter_map(|c| c["restartCount"].as_i64())
                        .sum()
                } else {
                    0
                };
            let backoff_limit = int(&job, "/spec/backoffLimit").unwrap_or(6);
            let completions = int(&job, "/spec/completions");
            let parallelism = int(&job, "/spec/parallelism").unwrap_or(1).max(0);
            let started: Option<jiff::Timestamp> =
                status["startTime"].as_str().and_then(|t| t.parse().ok());
            let deadline = int(&job, "/spec/activeDeadlineSeconds").and_then(|secs| {
                let elapsed = (now - started?).get_seconds();
                Some(secs - elapsed)
            });

            let failure = if failed + restarts > backoff_limit {
                Some((
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ))
            } else if deadline.is_some_and(|left| left <= 0) {
                Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ))
            } else {
                None
            };
            let complete = match completions {
                Some(c) => succeeded >= c,
                None => succeeded >= 1 && active.is_empty(),
            };
            if let Some((reason, message)) = failure {
                for pod in &active {
                    pods_rev = pods_rev.max(super::delete_pod(&ctx, pod).await?);
                }
                set_condition(&mut status, "FailureTarget", "True", reason, message);
                set_condition(&mut status, "Failed", "True", reason, message);
                record_event(
                    &ctx,
                    &job,
                    "Warning",
                    reason,
                    message.into(),
                    "job-controller",
                );
            } else if complete {
                set_condition(
                    &mut status,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                set_condition(
                    &mut status,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                status["completionTime"] = json!(now_str());
                record_event(
                    &ctx,
                    &job,
                    "Normal",
                    "Completed",
                    "Job completed".into(),
                    "job-controller",
                );
            } else {
                if let Some(left) = deadline {
                    next = Some(Duration::from_secs(left.max(1) as u64));
                }
                let want = match completions {
                    Some(c) => parallelism.min(c - succeeded).max(0),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                } as usize;
                let running: Vec<&Arc<Value>> =
                    active.iter().filter(|p| !is_deleting(p)).copied().collect();
                if running.len() < want {
                    // Back off after failures before trying again.
                    let wait = {
                        let mut b = backoffs.lock().expect("job backoff lock");
                        let entry = b.entry(uid.clone()).or_insert((0, Instant::now()));
                        if failed > entry.0 {
                            *entry = (failed, Instant::now());
                        }
                        let delay = if failed == 0 {
                            Duration::ZERO
                        } else {
                            (Duration::from_secs(10)
                                * 2u32.saturating_pow((failed - 1).min(16) as u32))
                            .min(MAX_BACKOFF)
                        };
                        delay.saturating_sub(entry.1.elapsed())
                    };
                    if wait.is_zero() {
                        let template = new_pod(&job);
                        for _ in 0..(want - running.len()).min(BURST) {
                            match ctx
                                .registry
                                .create(
                                    &ctx.res("", "pods"),
                                    Some(&ns),
                                    template.clone(),
                                    &WriteOptions::default(),
                                )
                                .await
                            {
                                Ok(w) => {
                                    pods_rev = pods_rev.max(rv_of(&w.object));
                                    record_event(
                                        &ctx,
                                        &job,
                                        "Normal",
                                        "SuccessfulCreate",
                                        format!("Created pod: {}", meta_str(&w.object, "name")),
                                        "job-controller",
                                    );
                                }
                                Err(e) if e.code == 403 => return Ok(Action::AwaitChange),
                                Err(e) => return Err(e),
                            }
                        }
                    } else {
                        next = Some(next.map_or(wait, |n| n.min(wait)));
                    }
                } else if running.len() > want {
                    let mut extra = running.clone();
                    extra.sort_by(|a, b| {
                        meta_str(b, "creationTimestamp").cmp(meta_str(a, "creationTimestamp"))
                    });
                    for pod in extra.iter().take(running.len() - want) {
                        pods_rev = pods_rev.max(super::delete_pod(&ctx, pod).await?);
                    }
                }
            }
        }
    }

    status["active"] = json!(active.iter().filter(|p| !is_deleting(p)).count());
    status["ready"] = json!(ready);
    status["terminating"] = json!(terminating);
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    if job.get("status") != Some(&status) {
        job = write_status(&ctx, &job, status).await?;
        ctx.informers.jobs.wait_for(rv_of(&job)).await;
    }
    if pods_rev > Revision(0) {
        ctx.informers.pods.wait_for(pods_rev).await;
    }

    // Finished: the pods may go, and the Job after its TTL.
    if let Some((_, at)) = finished(&job) {
        backoffs.lock().expect("job backoff lock").remove(&uid);
        if let Some(ttl) = int(&job, "/spec/ttlSecondsAfterFinished") {
            let left = ttl - (now - at).get_seconds();
            if left > 0 {
                return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
            }
            let opts = DeleteOptions {
                propagation_policy: Some("Background".into()),
                precondition_uid: Some(uid),
                ..DeleteOptions::default()
            };
            match ctx
                .registry
                .delete(&ctx.res("batch", "jobs"), Some(&ns), name, &opts)
                .await
            {
                Ok(_)
                | Err(ApiError {
                    code: 404 | 409, ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(Action::AwaitChange);
    }
    Ok(match next {
        Some(d) => Action::RequeueAfter(d),
        None => Action::AwaitChange,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_deleted_before_it_finished_counts_as_failed() {
        assert_eq!(
            terminal(&json!({"status": {"phase": "Succeeded"}})),
            Some(true)
        );
        assert_eq!(
            terminal(&json!({"status": {"phase": "Failed"}})),
            Some(false)
        );
        assert_eq!(terminal(&json!({"status": {"phase": "Running"}})), None);
        assert_eq!(
            terminal(
                &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}})
            ),
            Some(false)
        );
    }

    #[test]
    fn pods_carry_the_tracking_finalizer_and_the_job_as_controller() {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"job-name": "pi"}}, "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}});
        let pod = new_pod(&job);
        assert_eq!(pod["metadata"]["generateName"], "pi-");
        assert_eq!(pod["metadata"]["finalizers"], json!([TRACKING_FINALIZER]));
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "pi");
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut status = json!({});
        set_condition(
            &mut status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
        );
        let first = status["conditions"][0]["lastTransitionTime"].clone();
        set_condition(
            &mut status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
        );
        assert_eq!(status["conditions"][0]["lastTransitionTime"], first);
        assert_eq!(status["conditions"].as_array().unwrap().len(), 1);
        set_condition(
            &mut status,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
        );
        assert_eq!(status["conditions"][0]["status"], "False");
    }
}
