//! Decoding through the typed Kubernetes schema (k8s-openapi, v1.33): a
//! body with a wrong type fails as upstream's decoder does, and fields the
//! schema does not know are dropped (and reported by the caller).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn through<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decode and re-encode `obj` as its kind; `None` for kinds without a type.
pub fn round_trip(group: &str, kind: &str, obj: &Value) -> Option<Result<Value, String>> {
    macro_rules! kinds {
        ($( ($g:expr, $k:expr, $($path:ident)::+) ),* $(,)?) => {
            match (group, kind) {
                $( ($g, $k) => Some(through::<k8s_openapi::api::$($path)::+>(obj)), )*
                _ => None,
            }
        };
    }
    include!("../../api/kinds.in")
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

    #[test]
    fn every_kind_with_a_type_is_in_the_catalog() {
        let catalog = crate::api::catalog::Catalog::builtin();
        macro_rules! kinds {
            ($( ($g:expr, $k:expr, $($path:ident)::+) ),* $(,)?) => {
                {
                    $( assert!(catalog.find_kind($g, "v1", $k).is_some(), "{}/{} is not served", $g, $k); )*
                }
            };
        }
        include!("../../api/kinds.in");
    }
}
