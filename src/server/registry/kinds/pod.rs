//! The Pod strategy: initial status (phase, QoS class), what an update may
//! change, graceful deletion for pods bound to a node, binding to a node
//! (`pods/binding`) and eviction (`pods/eviction`). What admission adds to
//! pods (service account and token, priority, default tolerations) is the
//! admission plugins' ([`crate::server::admission`]).

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use crate::api::catalog::Resource;
use crate::api::status::{ApiError, FieldError};
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::admission::{Attributes, Operation};
use crate::server::auth::User;
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;
use crate::server::registry::{
    DeleteOptions, Registry, WriteOptions, encode, meta, meta_mut, now_rfc3339, store_error, target,
};

pub struct Pod;

impl Strategy for Pod {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::Pod>(obj))
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::pod(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::pod(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::pod_update(old, new, errs);
    }

    fn prepare_create(&self, _ctx: &Context<'_>, _res: &Resource, obj: &mut Value) {
        let qos = qos_class(obj);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
    }

    /// Only pods bound to a node wait, for their grace period, so their
    /// agent can stop the containers.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bound || phase == "Succeeded" || phase == "Failed" {
            return Some(0);
        }
        let requested = requested
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0);
        // An earlier, shorter grace period is never extended.
        Some(
            match meta(obj)
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
            {
                Some(current) if meta(obj).get("deletionTimestamp").is_some() => {
                    requested.min(current)
                }
                _ => requested,
            },
        )
    }

    fn printer(&self) -> Printer {
        Printer::Pod
    }
}

/// Pod QoS class from requests and limits.
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let req = requests.and_then(|m| m.get(r));
            let lim = limits.and_then(|m| m.get(r));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q != l => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl Registry {
    /// Bind a pod to a node (`pods/binding`), admitted as a create of the
    /// binding.
    ///
    /// # Errors
    /// 409 when the pod is already bound or being deleted, and what
    /// admission refuses.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        binding: &Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        let res = self
            .resource("", "pods")
            .expect("pods are in the catalog")
            .clone();
        let attrs = subresource_create(&res, "binding", namespace, name, opts.user(), opts.dry_run);
        let mut binding = binding.clone();
        self.admission.admit(&attrs, &mut binding, self).await?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::invalid(
                "",
                "Binding",
                name,
                vec![FieldError::required("target.name")],
            ));
        }
        self.admission.validate(&attrs, &binding, self).await?;
        let (kv, old) = self.get_kv(&res, Some(namespace), name).await?;
        if meta(&old).get("deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                target(&res, name),
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        let current = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !current.is_empty() {
            return Err(ApiError::conflict(
                target(&res, name),
                &format!("pod {name} is already assigned to node {current:?}"),
            ));
        }
        let mut obj = old.clone();
        obj["spec"]["nodeName"] = json!(node);
        let conditions = obj
            .pointer_mut("/status")
            .and_then(Value::as_object_mut)
            .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = conditions {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        }
        meta_mut(&mut obj).remove("resourceVersion");
        if opts.dry_run {
            return Ok(());
        }
        self.store
            .update(&kv.key, encode(&obj), Some(kv.mod_revision))
            .await
            .map_err(|e| store_error(&res, name, e))?;
        Ok(())
    }

    /// Evict a pod (`pods/eviction`): admitted as a create of the
    /// eviction (only that, as upstream), then a delete of the pod with
    /// the eviction's options.
    ///
    /// # Errors
    /// As [`Registry::delete`], and what admission refuses.
    pub async fn evict(
        &self,
        namespace: &str,
        name: &str,
        eviction: &Value,
        opts: &DeleteOptions,
    ) -> Result<(), ApiError> {
        let res = self
            .resource("", "pods")
            .expect("pods are in the catalog")
            .clone();
        let attrs =
            subresource_create(&res, "eviction", namespace, name, opts.user(), opts.dry_run);
        let mut eviction = eviction.clone();
        self.admission.admit(&attrs, &mut eviction, self).await?;
        self.admission.validate(&attrs, &eviction, self).await?;
        let opts = DeleteOptions {
            admitted: true,
            ..opts.clone()
        };
        self.delete(&res, Some(namespace), name, &opts).await?;
        Ok(())
    }
}

/// What admission sees for a create of pod subresource `sub` (a binding
/// or an eviction).
fn subresource_create<'a>(
    res: &'a Resource,
    sub: &'static str,
    namespace: &'a str,
    name: &'a str,
    user: &'a User,
    dry_run: bool,
) -> Attributes<'a> {
    Attributes {
        user,
        operation: Operation::Create,
        resource: res,
        subresource: Some(sub),
        namespace: Some(namespace),
        name,
        old_object: None,
        dry_run,
    }
}
