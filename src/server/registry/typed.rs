//! Decoding through the typed Kubernetes schema (k8s-openapi, v1.33): a
//! body with a wrong type fails as upstream's decoder does, and fields the
//! schema does not know are dropped (and reported by the caller). Each
//! typed kind's strategy calls [`through`] with its type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decode `obj` as a `T` and encode it again.
///
/// # Errors
/// The decoder's message when `obj` does not fit `T`.
pub fn through<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    // Read in place (no copy of what can be a megabyte object).
    let typed = T::deserialize(obj).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::registry::strategy;
    use serde_json::json;

    fn round_trip(group: &str, kind: &str, obj: &Value) -> Option<Result<Value, String>> {
        let catalog = crate::api::catalog::Catalog::builtin();
        let res = catalog.find_kind(group, "v1", kind)?;
        strategy::of(res).round_trip(obj)
    }

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
    fn every_kind_with_a_type_is_served_and_decoded_by_its_strategy() {
        let catalog = crate::api::catalog::Catalog::builtin();
        macro_rules! kinds {
            ($( ($g:expr, $k:expr, $($path:ident)::+) ),* $(,)?) => {
                {
                    $(
                        let res = catalog.find_kind($g, "v1", $k);
                        assert!(res.is_some(), "{}/{} is not served", $g, $k);
                        let obj = json!({"metadata": {"name": "x"}});
                        let typed = strategy::of(res.unwrap()).round_trip(&obj);
                        assert!(typed.is_some(), "{}/{} has no typed round trip", $g, $k);
                        assert_eq!(
                            typed.unwrap(),
                            through::<k8s_openapi::api::$($path)::+>(&obj),
                            "{}/{} decodes as its own type", $g, $k
                        );
                    )*
                }
            };
        }
        include!("../../api/kinds.in");
    }
}
