//! The Namespace strategy: DNS-label names, `Active` on create with its
//! name as a label, `Terminating` once deleted, and kept until the
//! namespace controller empties `spec.finalizers`.

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use crate::api::catalog::Resource;
use crate::api::defaults;
use crate::api::table::Printer;
use crate::api::validation::NameRule;
use crate::server::registry::meta_mut;
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;

pub struct Namespace;

impl Strategy for Namespace {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::Namespace>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::namespace(obj);
    }

    fn prepare_create(&self, _ctx: &Context<'_>, _res: &Resource, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
        if let Some(name) = obj.pointer("/metadata/name").cloned() {
            // Every namespace carries its name as a label (1.22+).
            let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = name;
        }
    }

    fn deletion_pending(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn mark_deleting(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn printer(&self) -> Printer {
        Printer::Namespace
    }
}
