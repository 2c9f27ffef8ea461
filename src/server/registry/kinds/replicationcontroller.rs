//! The ReplicationController strategy (core/v1): the older ReplicaSet, with
//! an equality-based selector (a plain map) that defaults to the
//! template's labels. Upstream still serves it; orch adds it as this file
//! and a catalog entry, with no change to the generic registry.

use k8s_openapi::api::core::v1 as corev1;
use serde_json::Value;

use crate::api::selector::LabelSelector;
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::registry::strategy::Strategy;
use crate::server::registry::typed::through;

pub struct ReplicationController;

impl Strategy for ReplicationController {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::ReplicationController>(obj))
    }

    /// Upstream's rcStrategy bumps the generation on spec changes.
    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::replication_controller(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::replication_controller(obj, errs);
    }

    // Unlike a ReplicaSet's, an RC's selector may change on update
    // (upstream's ValidateReplicationControllerUpdate checks the spec only).

    fn printer(&self) -> Printer {
        Printer::ReplicationController
    }

    /// An RC's selector is a plain map (upstream: labels.SelectorFromSet).
    fn scale_selector(&self, obj: &Value) -> String {
        obj.pointer("/spec/selector")
            .filter(|m| m.is_object())
            .and_then(|m| {
                LabelSelector::from_label_selector(&serde_json::json!({"matchLabels": m})).ok()
            })
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
}
