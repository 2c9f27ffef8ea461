//! The Pod strategy: initial status (phase, QoS class), admission on
//! create (service account and its token volume, default not-ready and
//! unreachable tolerations), what an update may change, graceful deletion
//! for pods bound to a node, and binding to a node (`pods/binding`).

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use crate::api::catalog::Resource;
use crate::api::status::{ApiError, FieldError};
use crate::api::table::Printer;
use crate::api::{defaults, validation};
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;
use crate::server::registry::{
    Admission, Registry, encode, meta, meta_mut, now_rfc3339, store_error, target,
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

    fn prepare_create(&self, ctx: &Context<'_>, _res: &Resource, obj: &mut Value) {
        let qos = qos_class(obj);
        obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        admit_pod(obj, ctx.admission);
    }

    fn prepare_update(&self, ctx: &Context<'_>, _old: &Value, obj: &mut Value) {
        // Admission fields the client may have dropped stay as they were.
        if obj.pointer("/spec/serviceAccountName").is_none() {
            admit_pod(obj, ctx.admission);
        }
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

/// Where pods find their service account's token, CA and namespace.
const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Upstream's ServiceAccount admission: unless the pod opts out
/// (`automountServiceAccountToken: false`), a projected
/// `kube-api-access-xxxxx` volume (a bound token, `kube-root-ca.crt`'s
/// `ca.crt`, the namespace) mounted read-only at [`SA_MOUNT`] in every
/// container that has nothing there.
fn mount_service_account_token(spec: &mut serde_json::Map<String, Value>) {
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(list) = volumes.as_array_mut() else {
        return;
    };
    if list.iter().any(|v| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    }) {
        return;
    }
    let suffix: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .filter(char::is_ascii_lowercase)
        .chain("bcdfg".chars())
        .take(5)
        .collect();
    let name = format!("kube-api-access-{suffix}");
    list.push(json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}));
    for key in ["initContainers", "containers"] {
        for c in spec
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = c
                .as_object_mut()
                .map(|o| o.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(m) = mounts.and_then(Value::as_array_mut)
                && !m.iter().any(|x| x["mountPath"] == SA_MOUNT)
            {
                m.push(json!({"name": name, "mountPath": SA_MOUNT, "readOnly": true}));
            }
        }
    }
}

/// Admission a pod gets on create: its service account, and tolerating
/// not-ready/unreachable nodes for 300 s (upstream's
/// DefaultTolerationSeconds).
fn admit_pod(pod: &mut Value, admission: Admission) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    spec.insert("serviceAccountName".into(), json!(sa));
    spec.insert("serviceAccount".into(), json!(sa));
    mount_service_account_token(spec);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for (key, seconds) in [
            (
                "node.kubernetes.io/not-ready",
                admission.not_ready_toleration_seconds,
            ),
            (
                "node.kubernetes.io/unreachable",
                admission.unreachable_toleration_seconds,
            ),
        ] {
            let present = list.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    || (t.get("operator").and_then(Value::as_str) == Some("Exists")
                        && t.get("key").is_none())
            });
            if !present {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
            }
        }
    }
}

impl Registry {
    /// Bind a pod to a node (`pods/binding`).
    ///
    /// # Errors
    /// 409 when the pod is already bound or being deleted.
    pub async fn bind(&self, namespace: &str, name: &str, binding: &Value) -> Result<(), ApiError> {
        let res = self
            .resource("", "pods")
            .expect("pods are in the catalog")
            .clone();
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
        self.store
            .update(&kv.key, encode(&obj), Some(kv.mod_revision))
            .await
            .map_err(|e| store_error(&res, name, e))?;
        Ok(())
    }
}
