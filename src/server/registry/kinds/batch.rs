//! Strategies of batch/v1: Job (a generated selector tying its pods to its
//! uid, unless `manualSelector`) and CronJob.

use k8s_openapi::api::batch::v1 as batchv1;
use serde_json::{Value, json};

use crate::api::catalog::Resource;
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::registry::meta_str;
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;

pub struct Job;

impl Strategy for Job {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<batchv1::Job>(obj))
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::job(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::job(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::job_update(old, new, errs);
    }

    /// No status yet; unless the client chose its own selector, the Job's
    /// pods are selected by its uid (labels added to the template).
    fn prepare_create(&self, _ctx: &Context<'_>, _res: &Resource, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
            return;
        }
        let uid = meta_str(obj, "uid").to_owned();
        let name = meta_str(obj, "name").to_owned();
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
        obj["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        if let Some(t) = obj.pointer_mut("/spec/template")
            && let Some(tm) = t.as_object_mut()
        {
            let tmeta = tm.entry("metadata").or_insert_with(|| json!({}));
            let tl = meta_mut_labels(tmeta);
            for (k, v) in labels.as_object().into_iter().flatten() {
                tl[k] = v.clone();
            }
        }
    }

    fn printer(&self) -> Printer {
        Printer::Job
    }
}

/// `labels` of a template's metadata, created when missing.
fn meta_mut_labels(tmeta: &mut Value) -> &mut Value {
    if !tmeta.is_object() {
        *tmeta = json!({});
    }
    if !tmeta.get("labels").is_some_and(Value::is_object) {
        tmeta["labels"] = json!({});
    }
    &mut tmeta["labels"]
}

pub struct CronJob;

impl Strategy for CronJob {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<batchv1::CronJob>(obj))
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::cron_job(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::cron_job(obj, errs);
    }

    fn printer(&self) -> Printer {
        Printer::CronJob
    }
}
