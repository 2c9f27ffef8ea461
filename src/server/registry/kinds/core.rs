//! Strategies of small core/v1 kinds with a rule or two of their own:
//! Node (status written by its agent from the start), ConfigMap and Secret
//! (data keys, immutability, the 1 MiB data limit, Secret's `stringData`).

use k8s_openapi::api::core::v1 as corev1;
use serde_json::Value;

use crate::api::catalog::Resource;
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;

pub struct Node;

impl Strategy for Node {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::Node>(obj))
    }

    /// A Node registers with its status (the agent writes both at once).
    fn prepare_create(&self, _ctx: &Context<'_>, _res: &Resource, _obj: &mut Value) {}

    fn printer(&self) -> Printer {
        Printer::Node
    }
}

pub struct ConfigMap;

impl Strategy for ConfigMap {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::ConfigMap>(obj))
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::config_data(obj, errs);
        validation::config_map_size(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::config_data_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        Printer::ConfigMap
    }
}

pub struct Secret;

impl Strategy for Secret {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::Secret>(obj))
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::secret(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::config_data(obj, errs);
        validation::secret_size(obj, errs);
        // Upstream asks only the service account's name of a token Secret;
        // the token controller fills the rest.
        let annotation = "kubernetes.io/service-account.name";
        if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
            && obj["metadata"]["annotations"][annotation]
                .as_str()
                .is_none_or(str::is_empty)
        {
            errs.push(FieldError::required(format!(
                "metadata.annotations[{annotation}]"
            )));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::config_data_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        Printer::Secret
    }
}
