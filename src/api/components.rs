//! The OpenAPI v3 component schemas of the built-in kinds, generated at
//! build time from the k8s-openapi types (see build.rs) and embedded
//! gzip-compressed, so the binary carries ~0.1 MB of compressed JSON instead
//! of the schema code.
//!
//! Two readings of them: the whole schemas, for the OpenAPI documents
//! (`kubectl explain`), parsed on first use; and their structure alone
//! (types, properties, items, `$ref`s and `x-kubernetes-*` marks, no
//! descriptions), which the field manager walks on every write and which is
//! a fraction of the size.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use serde_json::{Map, Value};

static SCHEMAS_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi-schemas.json.gz"));

/// Where a component schema's references point.
pub const REF_PREFIX: &str = "#/components/schemas/";

/// The embedded component schemas, decompressed and parsed (not cached).
pub fn parse() -> Map<String, Value> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(SCHEMAS_GZ)
        .read_to_end(&mut json)
        .expect("the embedded schemas were compressed by build.rs");
    serde_json::from_slice(&json).expect("the embedded schemas are a JSON object")
}

/// The component schemas, keyed by their OpenAPI names (parsed once).
pub fn all() -> &'static Value {
    static SCHEMAS: OnceLock<Value> = OnceLock::new();
    SCHEMAS.get_or_init(|| Value::Object(parse()))
}

/// The keywords that say how an object is shaped; the rest (descriptions,
/// formats, limits) is left out of [`structure`].
const SHAPE_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "additionalProperties",
    "items",
    "$ref",
    "allOf",
    "default",
    "required",
];

fn shape_only(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        let keep = SHAPE_KEYWORDS.contains(&key.as_str()) || key.starts_with("x-kubernetes-");
        if !keep {
            continue;
        }
        let value = match key.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| (k.clone(), shape_only(v))).collect())
                    .unwrap_or_default(),
            ),
            "additionalProperties" | "items" => shape_only(value),
            "allOf" => Value::Array(
                value
                    .as_array()
                    .map(|a| a.iter().map(shape_only).collect())
                    .unwrap_or_default(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

/// The component schemas reduced to their shape (parsed once).
pub fn structure() -> &'static Map<String, Value> {
    static STRUCTURE: OnceLock<Map<String, Value>> = OnceLock::new();
    STRUCTURE.get_or_init(|| {
        parse()
            .iter()
            .map(|(name, schema)| (name.clone(), shape_only(schema)))
            .collect()
    })
}

/// The name of the component schema of a built-in kind.
pub fn of_kind(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    static INDEX: OnceLock<HashMap<(String, String, String), String>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        let mut index = HashMap::new();
        for (name, schema) in structure() {
            let marks = schema
                .get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array);
            for mark in marks.into_iter().flatten() {
                let part = |k: &str| {
                    mark.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                index.insert((part("group"), part("version"), part("kind")), name.clone());
            }
        }
        index
    });
    index
        .get(&(group.to_owned(), version.to_owned(), kind.to_owned()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_keeps_merge_marks_and_drops_descriptions() {
        let container = &structure()["io.k8s.api.core.v1.Container"];
        assert!(container.get("description").is_none());
        let ports = &container["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-list-type"], "map");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            serde_json::json!(["containerPort", "protocol"])
        );
        assert_eq!(
            structure()["io.k8s.api.core.v1.ContainerPort"]["properties"]["protocol"]["default"],
            "TCP"
        );
        assert_eq!(
            structure()["io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"]["x-kubernetes-map-type"],
            "atomic"
        );
    }

    #[test]
    fn kinds_find_their_schemas() {
        assert_eq!(
            of_kind("apps", "v1", "Deployment"),
            Some("io.k8s.api.apps.v1.Deployment")
        );
        assert_eq!(of_kind("", "v1", "Pod"), Some("io.k8s.api.core.v1.Pod"));
        assert_eq!(of_kind("example.com", "v1", "CronTab"), None);
    }
}
