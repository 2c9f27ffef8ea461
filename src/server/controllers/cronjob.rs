//! The CronJob controller: creates a Job at each time of `spec.schedule`
//! (standard cron syntax, in `spec.timeZone` or the server's zone).
//!
//! - After downtime only the most recent missed time runs (and none older
//!   than `startingDeadlineSeconds`); more than 100 missed times get a
//!   warning event, as upstream.
//! - `concurrencyPolicy`: Allow runs Jobs side by side, Forbid skips a time
//!   while one is active (it runs late when the previous one ends, within
//!   the deadline), Replace deletes the active ones first.
//! - Finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` are deleted, oldest first; `suspend` stops new
//!   runs.
//! - Jobs are named `<cronjob>-<scheduled minutes since the epoch>` (or
//!   seconds, for sub-minute `@every` schedules), so a time is never run
//!   twice even across restarts.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::job::finished;
use super::replicaset::rv_of;
use super::{
    Action, Context, controller_of, controller_ref, feed, is_deleting, meta_str, owner_keys,
    record_event, run_workers,
};
use crate::api::cron::{Schedule, time_zone};
use crate::api::status::ApiError;
use crate::server::informer::Queue;
use crate::server::informer::split_key;
use crate::server::registry::{DeleteOptions, WriteOptions};

const MAX_MISSED: usize = 100;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    feed(
        tasks,
        &ctx.informers.cronjobs,
        &queue,
        |c| vec![c.key.clone()],
        super::all_keys(&ctx.informers.cronjobs),
    );
    feed(
        tasks,
        &ctx.informers.jobs,
        &queue,
        owner_keys("CronJob"),
        Vec::new,
    );
    run_workers(tasks, "cronjob", queue, 1, move |key| {
        reconcile(ctx.clone(), key)
    });
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn ts_at(obj: &Value, ptr: &str) -> Option<jiff::Timestamp> {
    obj.pointer(ptr)?.as_str()?.parse().ok()
}

/// The times the schedule fired in (`earliest`, `now`]: the most recent,
/// and how many there were (counting stops above [`MAX_MISSED`]).
fn missed_times(
    schedule: &Schedule,
    earliest: &jiff::Zoned,
    now: &jiff::Zoned,
) -> (Option<jiff::Zoned>, usize) {
    let mut last = None;
    let mut count = 0;
    let mut t = earliest.clone();
    while let Some(next) = schedule.next_after(&t) {
        if next.timestamp() > now.timestamp() {
            break;
        }
        count += 1;
        t = next.clone();
        last = Some(next);
        if count > MAX_MISSED {
            // Jump ahead: only the most recent one matters.
            let mut probe = now.clone();
            // Step back until a time at or before now is found.
            for back in [
                60,
                3600,
                86_400,
                31 * 86_400,
                366 * 86_400,
                5 * 366 * 86_400,
            ] {
                let from = probe
                    .checked_sub(jiff::SignedDuration::from_secs(back))
                    .unwrap_or_else(|_| probe.clone());
                let mut candidate = None;
                let mut c = from.clone();
                while let Some(n) = schedule.next_after(&c) {
                    if n.timestamp() > now.timestamp() {
                        break;
                    }
                    c = n.clone();
                    candidate = Some(n);
                }
                if candidate.is_some() {
                    last = candidate;
                    break;
                }
                probe = from;
            }
            break;
        }
    }
    (last, count)
}

/// Upstream names a run by its minute; runs of sub-minute `@every`
/// schedules (not on a whole minute) are named by their second instead, so
/// they do not collide.
fn job_name(cj: &str, scheduled: &jiff::Zoned) -> String {
    let secs = scheduled.timestamp().as_second();
    if secs % 60 == 0 {
        format!("{cj}-{}", secs / 60)
    } else {
        format!("{cj}-{secs}")
    }
}

async fn delete_job(ctx: &Context, job: &Value) -> Result<(), ApiError> {
    let opts = DeleteOptions {
        propagation_policy: Some("Background".into()),
        precondition_uid: Some(meta_str(job, "uid").to_owned()),
        ..DeleteOptions::default()
    };
    match ctx
        .registry
        .delete(
            &ctx.res("batch", "jobs"),
            Some(meta_str(job, "namespace")),
            meta_str(job, "name"),
            &opts,
        )
        .await
    {
        Ok(_)
        | Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

fn job_ref(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
           "namespace": job["metadata"]["namespace"], "uid": job["metadata"]["uid"],
           "resourceVersion": job["metadata"]["resourceVersion"]})
}

async fn reconcile(ctx: Arc<Context>, key: String) -> Result<Action, ApiError> {
    let Some(cj) = ctx.informers.cronjobs.get(&key) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&cj) {
        return Ok(Action::AwaitChange);
    }
    let (ns, name) = split_key(&key);
    let (ns, name) = (ns.unwrap_or_default().to_owned(), name.to_owned());
    let uid = meta_str(&cj, "uid").to_owned();
    let component = "cronjob-controller";

    // Our Jobs, and which are still running.
    let mut jobs: Vec<Arc<Value>> = ctx
        .informers
        .jobs
        .list(Some(&ns))
        .into_iter()
        .filter(|j| controller_of(j).and_then(|o| o["uid"].as_str()) == Some(uid.as_str()))
        .collect();
    jobs.sort_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")));
    let mut status = cj.get("status").cloned().unwrap_or(json!({}));
    let was_active: Vec<String> = status["active"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
        .collect();
    let mut active: Vec<Value> = Vec::new();
    let mut last_success: Option<jiff::Timestamp> = ts_at(&status, "/lastSuccessfulTime");
    for job in &jobs {
        match finished(job) {
            None if !is_deleting(job) => active.push(job_ref(job)),
            None => {}
            Some((how, at)) => {
                if was_active.iter().any(|u| u == meta_str(job, "uid")) {
                    record_event(
                        &ctx,
                        &cj,
                        "Normal",
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {how}",
                            meta_str(job, "name")
                        ),
                        component,
                    );
                }
                if how == "Complete" {
                    let at = ts_at(job, "/status/completionTime").unwrap_or(at);
                    last_success = Some(last_success.map_or(at, |l| l.max(at)));
                }
            }
        }
    }

    // History limits, oldest first.
    for (kind, field, default) in [
        ("Complete", "successfulJobsHistoryLimit", 3),
        ("Failed", "failedJobsHistoryLimit", 1),
    ] {
        let limit = cj
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_i64)
            .unwrap_or(default)
            .max(0) as usize;
        let done: Vec<&Arc<Value>> = jobs
            .iter()
            .filter(|j| !is_deleting(j) && finished(j).is_some_and(|(k, _)| k == kind))
            .collect();
        if done.len() > limit {
            for job in &done[..done.len() - limit] {
                delete_job(&ctx, job).await?;
                record_event(
                    &ctx,
                    &cj,
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted job {}", meta_str(job, "name")),
                    component,
                );
            }
        }
    }

    let mut next = None;
    let tz = match time_zone(cj.pointer("/spec/timeZone").and_then(Value::as_str)) {
        Ok(tz) => Some(tz),
        Err(e) => {
            record_event(&ctx, &cj, "Warning", "UnknownTimeZone", e, component);
            None
        }
    };
    let schedule = match Schedule::parse(
        cj.pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            record_event(
                &ctx,
                &cj,
                "Warning",
                "InvalidSchedule",
                format!("invalid schedule: {e}"),
                component,
            );
            None
        }
    };
    if let (Some(tz), Some(schedule)) = (tz, schedule) {
        let now = jiff::Timestamp::now().to_zoned(tz.clone());
        let mut earliest = ts_at(&status, "/lastScheduleTime")
            .or_else(|| meta_str(&cj, "creationTimestamp").parse().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let deadline = cj
            .pointer("/spec/startingDeadlineSeconds")
            .and_then(Value::as_i64);
        if let Some(d) = deadline {
            let horizon = now.timestamp() - jiff::SignedDuration::from_secs(d);
            earliest = earliest.max(horizon);
        }
        let (missed, count) = missed_times(&schedule, &earliest.to_zoned(tz.clone()), &now);
        if count > MAX_MISSED {
            record_event(
                &ctx,
                &cj,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
                component,
            );
        }
        let suspended = cj.pointer("/spec/suspend") == Some(&json!(true));
        let policy = cj
            .pointer("/spec/concurrencyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        if let Some(scheduled) = missed.filter(|_| !suspended) {
            let mut run = true;
            if !active.is_empty() {
                match policy {
                    "Forbid" => {
                        tracing::debug!(cronjob = %key, "previous run still active, concurrencyPolicy Forbid: not starting");
                        run = false;
                    }
                    "Replace" => {
                        for job in jobs
                            .iter()
                            .filter(|j| finished(j).is_none() && !is_deleting(j))
                        {
                            delete_job(&ctx, job).await?;
                            record_event(
                                &ctx,
                                &cj,
                                "Normal",
                                "SuccessfulDelete",
                                format!("Deleted job {}", meta_str(job, "name")),
                                component,
                            );
                        }
                        active.clear();
                    }
                    _ => {}
                }
            }
            if run {
                let template = &cj["spec"]["jobTemplate"];
                let mut metadata = json!({
                    "name": job_name(&name, &scheduled),
                    "namespace": ns,
                    "ownerReferences": [controller_ref(&cj)],
                });
                for field in ["labels", "annotations"] {
                    if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                        metadata[field] = v.clone();
                    }
                }
                metadata["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
                    json!(scheduled.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
                let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]});
                match ctx
                    .registry
                    .create(
                        &ctx.res("batch", "jobs"),
                        Some(&ns),
                        job,
                        &WriteOptions::default(),
                    )
                    .await
                {
                    Ok(w) => {
                        ctx.informers.jobs.wait_for(rv_of(&w.object)).await;
                        record_event(
                            &ctx,
                            &cj,
                            "Normal",
                            "SuccessfulCreate",
                            format!("Created job {}", meta_str(&w.object, "name")),
                            component,
                        );
                        active.push(job_ref(&w.object));
                    }
                    // Already created for this time (a retry after a crash).
                    Err(e) if e.code == 409 => {}
                    Err(e) if e.code == 403 => return Ok(Action::AwaitChange),
                    Err(e) => return Err(e),
                }
                status["lastScheduleTime"] = json!(rfc3339(scheduled.timestamp()));
            }
        }
        if !suspended && let Some(n) = schedule.next_after(&now) {
            let wait = (n.timestamp() - jiff::Timestamp::now())
                .get_milliseconds()
                .max(0);
            // A little late rather than early: the time must have passed.
            next = Some(Duration::from_millis(wait as u64 + 100));
        }
    }

    status["active"] = if active.is_empty() {
        Value::Null
    } else {
        Value::Array(active)
    };
    if let Some(t) = last_success {
        status["lastSuccessfulTime"] = json!(rfc3339(t));
    }
    if let Some(m) = status.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if cj.get("status").cloned().unwrap_or(json!({})) != status {
        let mut obj = (*cj).clone();
        obj["status"] = status;
        ctx.registry
            .update(
                &ctx.res("batch", "cronjobs"),
                Some(&ns),
                &name,
                obj,
                Some("status"),
                &WriteOptions::default(),
            )
            .await?;
    }
    Ok(match next {
        Some(d) => Action::RequeueAfter(d),
        None => Action::AwaitChange,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Zoned {
        s.parse::<jiff::Timestamp>()
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
    }

    #[test]
    fn only_the_most_recent_missed_time_runs() {
        let every_5 = Schedule::parse("*/5 * * * *").unwrap();
        let (last, count) = missed_times(
            &every_5,
            &at("2026-01-01T00:00:00Z"),
            &at("2026-01-01T00:17:00Z"),
        );
        assert_eq!(
            last.unwrap().timestamp(),
            at("2026-01-01T00:15:00Z").timestamp()
        );
        assert_eq!(count, 3);
        let (none, zero) = missed_times(
            &every_5,
            &at("2026-01-01T00:00:00Z"),
            &at("2026-01-01T00:04:59Z"),
        );
        assert!(none.is_none());
        assert_eq!(zero, 0);
    }

    #[test]
    fn a_long_outage_still_finds_the_latest_time() {
        let hourly = Schedule::parse("@hourly").unwrap();
        let (last, count) = missed_times(
            &hourly,
            &at("2026-01-01T00:00:00Z"),
            &at("2026-03-01T10:30:00Z"),
        );
        assert!(count > MAX_MISSED);
        assert_eq!(
            last.unwrap().timestamp(),
            at("2026-03-01T10:00:00Z").timestamp()
        );
    }

    #[test]
    fn job_names_are_stable_per_scheduled_time() {
        assert_eq!(
            job_name("backup", &at("2026-01-01T00:05:00Z")),
            "backup-29453765"
        );
        assert_eq!(
            job_name("tick", &at("2026-01-01T00:05:02Z")),
            "tick-1767225902"
        );
    }
}
