//! Strategies of the apps/v1 workloads: Deployment, ReplicaSet, DaemonSet
//! and StatefulSet. All count spec changes in `metadata.generation`, require
//! a selector that matches the template and keep it immutable.

use k8s_openapi::api::apps::v1 as appsv1;
use serde_json::Value;

use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::registry::strategy::Strategy;
use crate::server::registry::typed::through;

pub struct Deployment;

impl Strategy for Deployment {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<appsv1::Deployment>(obj))
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::deployment(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::deployment(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::selector_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        Printer::Deployment
    }
}

/// ReplicaSet, DaemonSet and StatefulSet differ only in type, defaults
/// and printer.
macro_rules! workload {
    ($name:ident, $defaulter:path) => {
        pub struct $name;

        impl Strategy for $name {
            fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
                Some(through::<appsv1::$name>(obj))
            }

            fn tracks_generation(&self) -> bool {
                true
            }

            fn defaults(&self, obj: &mut Value) {
                $defaulter(obj);
            }

            fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
                validation::workload(obj, errs);
            }

            fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
                validation::selector_update(old, new, errs);
            }

            fn printer(&self) -> Printer {
                Printer::$name
            }
        }
    };
}

workload!(ReplicaSet, defaults::replica_set);
workload!(DaemonSet, defaults::daemon_set);
workload!(StatefulSet, defaults::stateful_set);
