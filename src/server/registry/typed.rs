//! Decoding through the typed Kubernetes schema (k8s-openapi, v1.33): a
//! body with a wrong type fails as upstream's decoder does, and fields the
//! schema does not know are dropped (and reported by the caller).

use k8s_openapi::api::{apps, batch, coordination, core, discovery, events};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn through<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decode and re-encode `obj` as its kind; `None` for kinds without a type.
pub fn round_trip(group: &str, kind: &str, obj: &Value) -> Option<Result<Value, String>> {
    Some(match (group, kind) {
        ("", "Namespace") => through::<core::v1::Namespace>(obj),
        ("", "Node") => through::<core::v1::Node>(obj),
        ("", "Pod") => through::<core::v1::Pod>(obj),
        ("", "Service") => through::<core::v1::Service>(obj),
        ("", "Endpoints") => through::<core::v1::Endpoints>(obj),
        ("", "ConfigMap") => through::<core::v1::ConfigMap>(obj),
        ("", "Secret") => through::<core::v1::Secret>(obj),
        ("", "ServiceAccount") => through::<core::v1::ServiceAccount>(obj),
        ("", "Event") => through::<core::v1::Event>(obj),
        ("coordination.k8s.io", "Lease") => through::<coordination::v1::Lease>(obj),
        ("apps", "Deployment") => through::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => through::<apps::v1::ReplicaSet>(obj),
        ("apps", "DaemonSet") => through::<apps::v1::DaemonSet>(obj),
        ("apps", "StatefulSet") => through::<apps::v1::StatefulSet>(obj),
        ("apps", "ControllerRevision") => through::<apps::v1::ControllerRevision>(obj),
        ("batch", "Job") => through::<batch::v1::Job>(obj),
        ("batch", "CronJob") => through::<batch::v1::CronJob>(obj),
        ("discovery.k8s.io", "EndpointSlice") => through::<discovery::v1::EndpointSlice>(obj),
        ("events.k8s.io", "Event") => through::<events::v1::Event>(obj),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_known_fields_and_formats() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": "2026-01-02T03:04:05Z", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "500m"}}, "ports": [{"containerPort": 80}]}]}
        });
        let out = round_trip("", "Pod", &pod).unwrap().unwrap();
        assert_eq!(out, pod);
    }

    #[test]
    fn wrong_types_fail_and_unknown_fields_are_dropped() {
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "three"}});
        assert!(round_trip("apps", "Deployment", &bad).unwrap().is_err());
        let extra = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}, "bogus": 1});
        let out = round_trip("", "ConfigMap", &extra).unwrap().unwrap();
        assert!(out.get("bogus").is_none());
        assert_eq!(out["data"]["a"], "b");
    }
}
