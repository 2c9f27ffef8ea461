//! One OpenAPI v3 component schema turned into a Swagger 2.0 definition.
//!
//! The schemas are generated once, in OpenAPI v3 form (build.rs); `/openapi/v2`
//! serves them converted. Swagger 2.0 is a subset, and kubectl's v2 reader
//! (kube-openapi `pkg/util/proto`) is stricter than the format: it refuses a
//! `$ref` beside a `type` or `properties`, an array without exactly one
//! `items` schema, and a `type` that is not a single name. So the conversion:
//! - rewrites `#/components/schemas/X` to `#/definitions/X`;
//! - unwraps `allOf: [{$ref}]` (how v3 puts a description beside a
//!   reference) into a `$ref` with its siblings, as upstream's v2 writes it;
//! - drops what v2 has no word for (`nullable`, `oneOf`, `anyOf`, `not`,
//!   `writeOnly`, `deprecated`, …), the way upstream's CRD v2 conversion
//!   does: a nullable schema loses its type, so a client validating against
//!   v2 accepts the `null`;
//! - gives an untyped `x-kubernetes-int-or-string` schema upstream's v2 form
//!   (`type: string, format: int-or-string`).
//!
//! It keeps every `x-` extension. It does not check that references resolve
//! (the document builder does, in its tests).

use serde_json::{Map, Value, json};

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";

/// The keywords of a Swagger 2.0 Schema Object (extensions aside), copied
/// as they are unless [`to_v2`] treats them.
const V2_KEYWORDS: &[&str] = &[
    "format",
    "title",
    "description",
    "default",
    "multipleOf",
    "maximum",
    "minimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "enum",
    "readOnly",
    "xml",
    "externalDocs",
    "example",
];

/// A v3 reference as v2 writes it (other references are left alone).
pub fn v2_ref(reference: &str) -> String {
    match reference.strip_prefix(V3_REF) {
        Some(name) => format!("{V2_REF}{name}"),
        None => reference.to_owned(),
    }
}

/// The Swagger 2.0 form of one OpenAPI v3 schema.
pub fn to_v2(schema: &Value) -> Value {
    // `true` (anything) and `false` (nothing) have no v2 form; an empty
    // schema accepts anything, which is the safe reading for a client.
    let Some(v3) = schema.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    for (key, value) in v3 {
        if key.starts_with("x-") {
            out.insert(key.clone(), value.clone());
            continue;
        }
        match key.as_str() {
            "$ref" => {
                if let Some(r) = value.as_str() {
                    out.insert(key.clone(), Value::String(v2_ref(r)));
                }
            }
            "type" => match value {
                Value::String(_) => {
                    out.insert(key.clone(), value.clone());
                }
                // OpenAPI 3.1 type lists: `["string", "null"]` is a
                // nullable string; several real types have no v2 form.
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let [one] = real.as_slice() {
                        out.insert(key.clone(), (*one).clone());
                    }
                }
                _ => {}
            },
            "properties" => {
                if let Some(props) = value.as_object() {
                    let props = props.iter().map(|(k, v)| (k.clone(), to_v2(v))).collect();
                    out.insert(key.clone(), Value::Object(props));
                }
            }
            "items" => match value {
                Value::Array(items) => {
                    // Tuple items: kubectl reads exactly one item schema.
                    if let [one] = items.as_slice() {
                        out.insert(key.clone(), to_v2(one));
                    }
                }
                other => {
                    out.insert(key.clone(), to_v2(other));
                }
            },
            "additionalProperties" => {
                let converted = match value {
                    Value::Bool(_) => value.clone(),
                    other => to_v2(other),
                };
                out.insert(key.clone(), converted);
            }
            "allOf" => {
                if let Some(all) = value.as_array() {
                    out.insert(key.clone(), all.iter().map(to_v2).collect());
                }
            }
            // v2 has only the boolean forms (OpenAPI 3.0 has them too).
            "exclusiveMinimum" | "exclusiveMaximum" if value.is_boolean() => {
                out.insert(key.clone(), value.clone());
            }
            "const" => {
                out.entry("enum")
                    .or_insert_with(|| Value::Array(vec![value.clone()]));
            }
            // v3's discriminator object; v2's is the property name.
            "discriminator" => {
                let name = value
                    .get("propertyName")
                    .cloned()
                    .unwrap_or_else(|| value.clone());
                if name.is_string() {
                    out.insert(key.clone(), name);
                }
            }
            k if V2_KEYWORDS.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            // nullable, oneOf, anyOf, not, writeOnly, deprecated, examples…
            _ => {}
        }
    }
    unwrap_single_ref(&mut out);
    if out.contains_key("$ref") {
        for k in ["type", "properties", "items", "additionalProperties"] {
            out.remove(k);
        }
    }
    if v3.get("nullable") == Some(&Value::Bool(true)) {
        // As upstream's CRD conversion: an untyped schema takes the null.
        for k in ["type", "items", "properties"] {
            out.remove(k);
        }
    }
    let untyped = !out.contains_key("type") && !out.contains_key("$ref");
    if untyped && out.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("x-kubernetes-int-or-string");
        out.insert("type".into(), "string".into());
        out.insert("format".into(), "int-or-string".into());
    }
    if out.get("type").and_then(Value::as_str) == Some("array") && !out.contains_key("items") {
        out.insert("items".into(), json!({}));
    }
    Value::Object(out)
}

/// `allOf: [{"$ref": X}]` beside a description or extensions becomes
/// `"$ref": X` beside them.
fn unwrap_single_ref(schema: &mut Map<String, Value>) {
    if schema.contains_key("$ref") || schema.contains_key("type") {
        return;
    }
    let reference = match schema
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([only]) => match only.as_object() {
            Some(inner) if inner.len() == 1 => inner.get("$ref").cloned(),
            _ => None,
        },
        _ => None,
    };
    if let Some(reference) = reference {
        schema.remove("allOf");
        schema.insert("$ref".into(), reference);
    }
}

/// Every schema of `schemas` in its v2 form, under the same names.
pub fn definitions(schemas: &Map<String, Value>) -> Map<String, Value> {
    schemas
        .iter()
        .map(|(name, schema)| (name.clone(), to_v2(schema)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_of_wrapper_becomes_a_ref_with_its_description() {
        let v3 = json!({
            "allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"}],
            "description": "The deployment strategy.",
            "x-kubernetes-patch-strategy": "retainKeys",
        });
        assert_eq!(
            to_v2(&v3),
            json!({
                "$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy",
                "description": "The deployment strategy.",
                "x-kubernetes-patch-strategy": "retainKeys",
            })
        );
    }

    #[test]
    fn all_of_with_several_schemas_stays_all_of() {
        let v3 = json!({"allOf": [
            {"$ref": "#/components/schemas/A"},
            {"properties": {"b": {"type": "string"}}},
        ]});
        assert_eq!(
            to_v2(&v3),
            json!({"allOf": [
                {"$ref": "#/definitions/A"},
                {"properties": {"b": {"type": "string"}}},
            ]})
        );
    }

    #[test]
    fn refs_are_rewritten_in_properties_items_and_additional_properties() {
        let v3 = json!({
            "type": "object",
            "properties": {
                "list": {"type": "array", "items": {"$ref": "#/components/schemas/A"}},
                "map": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/B"}},
            },
        });
        let v2 = to_v2(&v3);
        assert_eq!(v2["properties"]["list"]["items"]["$ref"], "#/definitions/A");
        assert_eq!(
            v2["properties"]["map"]["additionalProperties"]["$ref"],
            "#/definitions/B"
        );
    }

    #[test]
    fn nullable_one_of_and_any_of_have_no_v2_form() {
        let v3 = json!({
            "type": "object",
            "nullable": true,
            "description": "maybe",
            "properties": {"a": {"type": "string"}},
        });
        assert_eq!(to_v2(&v3), json!({"description": "maybe"}));
        let v3 = json!({
            "description": "one of",
            "oneOf": [{"type": "string"}, {"type": "integer"}],
            "anyOf": [{"type": "string"}],
            "not": {"type": "boolean"},
            "writeOnly": true,
            "deprecated": true,
        });
        assert_eq!(to_v2(&v3), json!({"description": "one of"}));
    }

    #[test]
    fn type_lists_keep_their_one_real_type() {
        assert_eq!(
            to_v2(&json!({"type": ["string", "null"]})),
            json!({"type": "string"})
        );
        assert_eq!(to_v2(&json!({"type": ["string", "integer"]})), json!({}));
    }

    #[test]
    fn ref_siblings_kubectl_refuses_are_dropped() {
        let v3 = json!({"$ref": "#/components/schemas/A", "type": "object", "properties": {}});
        assert_eq!(to_v2(&v3), json!({"$ref": "#/definitions/A"}));
    }

    #[test]
    fn int_or_string_gets_upstream_v2_form() {
        let v3 = json!({"description": "int or string", "x-kubernetes-int-or-string": true});
        assert_eq!(
            to_v2(&v3),
            json!({"description": "int or string", "type": "string", "format": "int-or-string"})
        );
        // With a type of its own it is left as it is.
        let typed = json!({"type": "integer", "x-kubernetes-int-or-string": true});
        assert_eq!(to_v2(&typed), typed);
    }

    #[test]
    fn arrays_always_have_one_item_schema() {
        assert_eq!(
            to_v2(&json!({"type": "array"})),
            json!({"type": "array", "items": {}})
        );
        assert_eq!(
            to_v2(&json!({"type": "array", "items": [{"type": "string"}]})),
            json!({"type": "array", "items": {"type": "string"}})
        );
    }

    #[test]
    fn boolean_schemas_and_keywords() {
        assert_eq!(to_v2(&json!(true)), json!({}));
        assert_eq!(
            to_v2(&json!({"type": "object", "additionalProperties": false})),
            json!({"type": "object", "additionalProperties": false})
        );
        assert_eq!(
            to_v2(&json!({"const": "x", "discriminator": {"propertyName": "kind"}})),
            json!({"enum": ["x"], "discriminator": "kind"})
        );
        assert_eq!(
            to_v2(&json!({"type": "number", "exclusiveMinimum": 3, "minimum": 1})),
            json!({"type": "number", "minimum": 1})
        );
    }

    #[test]
    fn embedded_schemas_convert_without_v3_constructs() {
        let v2 = Value::Object(definitions(&super::super::parse_schemas()));
        assert!(!v2.to_string().contains("#/components/"));
        // v3's keywords, not properties that happen to bear their names
        // (a CustomResourceDefinition's schema has `nullable` and `oneOf`
        // properties).
        fn keywords_left(schema: &Value, path: &str, found: &mut Vec<String>) {
            let Some(obj) = schema.as_object() else {
                return;
            };
            for (key, value) in obj {
                if key == "properties" {
                    for (name, prop) in value.as_object().into_iter().flatten() {
                        keywords_left(prop, &format!("{path}.{name}"), found);
                    }
                    continue;
                }
                if ["nullable", "oneOf", "anyOf"].contains(&key.as_str()) {
                    found.push(format!("{path}: {key}"));
                }
                keywords_left(value, path, found);
            }
        }
        let mut found = Vec::new();
        for (name, schema) in v2.as_object().unwrap() {
            keywords_left(schema, name, &mut found);
        }
        assert!(found.is_empty(), "v3 keywords left: {found:?}");
        let props = &v2["io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"]
            ["properties"];
        assert!(
            props["nullable"].is_object() && props["oneOf"].is_object(),
            "{props}"
        );
        let deployment = &v2["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert_eq!(
            v2["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
            "int-or-string"
        );
    }
}
