//! A custom resource's structural schema applied to its objects, as
//! upstream's apiextensions server applies it: [`prune`] drops the fields
//! the schema does not know (what `fieldValidation` reports), [`default`]
//! fills `default`s, and [`validate`] checks every value against the
//! schema, reporting as kube-openapi's validator does through
//! apiextensions (`<path> in body must be of type integer: "string"`).
//!
//! Errors follow the schema walk; sibling properties come in name order
//! (upstream's order among siblings is not stable).

use serde_json::{Map, Value};

use super::status::FieldError;

/// The JSON type name of a value, as kube-openapi names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key) == Some(&Value::Bool(true))
}

/// The fields of ObjectMeta.
pub const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Drop what `schema` does not know from `obj` (the root keeps
/// apiVersion, kind and metadata; `x-kubernetes-preserve-unknown-fields`
/// keeps everything below it). The paths dropped, for Strict and Warn
/// field validation.
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut dropped = Vec::new();
    prune_at(schema, obj, "", true, &mut dropped);
    dropped
}

fn prune_at(schema: &Value, v: &mut Value, path: &str, root: bool, dropped: &mut Vec<String>) {
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let here = child(path, &key);
                if (root || embedded) && matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    // ObjectMeta drops what it does not have, whatever the
                    // schema says of metadata.
                    if key == "metadata"
                        && let Some(Value::Object(meta)) = map.get_mut(&key)
                    {
                        meta.retain(|field, _| {
                            let known = OBJECT_META_FIELDS.contains(&field.as_str());
                            if !known {
                                dropped.push(child(&here, field));
                            }
                            known
                        });
                    }
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(&key)) {
                    prune_at(
                        s,
                        map.get_mut(&key).expect("listed key"),
                        &here,
                        false,
                        dropped,
                    );
                } else if let Some(s) = additional {
                    prune_at(
                        s,
                        map.get_mut(&key).expect("listed key"),
                        &here,
                        false,
                        dropped,
                    );
                } else if !preserve && !flag(schema, "x-kubernetes-int-or-string") {
                    map.remove(&key);
                    dropped.push(here);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(s, item, &format!("{path}[{i}]"), false, dropped);
                }
            }
        }
        _ => {}
    }
}

/// Fill the `default`s of `schema` into `obj` where a field is missing
/// (or null and not nullable); nested defaults only where their parent
/// exists. A null that is neither nullable nor defaulted is dropped.
pub fn default(schema: &Value, obj: &mut Value) {
    match obj {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, s) in props {
                    let missing = match map.get(key) {
                        None => true,
                        Some(Value::Null) => !flag(s, "nullable"),
                        Some(_) => false,
                    };
                    if missing {
                        match s.get("default") {
                            Some(d) => {
                                map.insert(key.clone(), d.clone());
                            }
                            None => {
                                if map.get(key) == Some(&Value::Null) {
                                    map.remove(key);
                                }
                            }
                        }
                    }
                    if let Some(v) = map.get_mut(key) {
                        default(s, v);
                    }
                }
            }
            if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for v in map.values_mut() {
                    default(s, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    default(s, item);
                }
            }
        }
        _ => {}
    }
}

/// Check `obj` against `schema`: every failing field, as upstream
/// reports it.
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check(schema, obj, "", true, &mut errs);
    embedded_at(schema, obj, "", true, &mut errs);
    errs
}

/// Upstream's checks of embedded resources (`x-kubernetes-embedded-resource`
/// nodes below the root): apiVersion and kind are required and well
/// formed, and the name, if any, is a valid path segment.
fn embedded_at(schema: &Value, v: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    match v {
        Value::Object(map) => {
            if !root && flag(schema, "x-kubernetes-embedded-resource") {
                embedded_resource(map, path, errs);
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child_value) in map {
                if let Some(s) = props.and_then(|p| p.get(key)).or(extra) {
                    embedded_at(s, child_value, &child(path, key), false, errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    embedded_at(s, item, &format!("{path}[{i}]"), false, errs);
                }
            }
        }
        _ => {}
    }
}

fn embedded_resource(map: &serde_json::Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for key in ["apiVersion", "kind"] {
        match map.get(key) {
            None => errs.push(FieldError {
                reason: "FieldValueRequired",
                field: field(&child(path, key)),
                message: "Required value: must not be empty".into(),
            }),
            Some(Value::String(s)) if s.is_empty() => {
                errs.push(invalid(
                    &child(path, key),
                    &Value::from(""),
                    "must not be empty".into(),
                ));
            }
            Some(Value::String(s)) if key == "apiVersion" && s.matches('/').count() > 1 => {
                errs.push(invalid(
                    &child(path, key),
                    &Value::from(s.as_str()),
                    format!("unexpected GroupVersion string: {s}"),
                ));
            }
            Some(Value::String(s))
                if key == "kind" && !crate::api::names::is_dns1035_label(&s.to_lowercase()) =>
            {
                errs.push(invalid(
                    &child(path, key),
                    &Value::from(s.as_str()),
                    format!(
                        "may have mixed case, but should otherwise match: {}",
                        crate::api::validation::DNS1035_LABEL_MSG
                    ),
                ));
            }
            Some(Value::String(_)) => {}
            Some(other) => errs.push(invalid(&child(path, key), other, "must be a string".into())),
        }
    }
    // Its metadata as an object's (upstream fills in a name if there is
    // none, so only what is there is checked).
    if let Some(meta) = map.get("metadata").filter(|m| m.is_object()) {
        use crate::api::validation::{NameRule, validate_meta};
        let mut meta = meta.clone();
        if meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta["name"] = Value::from("fakename");
        }
        let namespaced = meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let mut found = Vec::new();
        validate_meta(
            &serde_json::json!({ "metadata": meta }),
            NameRule::PathSegment,
            namespaced,
            &mut found,
        );
        for mut e in found {
            e.field = child(path, &e.field);
            errs.push(e);
        }
    }
}

/// What is wrong with the defaults of a definition's schema (at `path`),
/// as upstream checks them at creation: a default must keep all its fields
/// through pruning ("must not have unknown fields") and validate against
/// its own node's schema. Defaults under the root's `metadata` are left
/// alone.
pub fn default_problems(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    defaults_at(schema, path, true, &mut errs);
    errs
}

fn defaults_at(node: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    if let Some(default) = node.get("default") {
        let at = format!("{path}.default");
        let mut pruned = default.clone();
        let mut dropped = Vec::new();
        prune_at(
            node,
            &mut pruned,
            "",
            flag(node, "x-kubernetes-embedded-resource"),
            &mut dropped,
        );
        if &pruned == default {
            check(node, default, &at, false, errs);
        } else {
            errs.push(invalid(&at, default, "must not have unknown fields".into()));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            if root && key == "metadata" {
                continue;
            }
            defaults_at(sub, &format!("{path}.properties[{key}]"), false, errs);
        }
    }
    if let Some(items) = node.get("items").filter(|i| i.is_object()) {
        defaults_at(items, &format!("{path}.items"), false, errs);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
        defaults_at(extra, &format!("{path}.additionalProperties"), false, errs);
    }
}

/// The value at a field path as validation errors name it
/// (`spec.ports[0].name`), if there is one.
pub fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = obj;
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            v = v.get(name)?;
        }
        for index in indexes.split(']').filter(|s| !s.is_empty()) {
            let index = index.trim_start_matches('[');
            v = match index.parse::<usize>() {
                Ok(i) => v.get(i)?,
                Err(_) => v.get(index)?,
            };
        }
    }
    Some(v)
}

/// A field path as errors show it (`<nil>` for the object itself).
pub(crate) fn field(path: &str) -> String {
    if path.is_empty() {
        "<nil>".into()
    } else {
        path.to_owned()
    }
}

fn invalid(path: &str, value: &Value, detail: String) -> FieldError {
    FieldError::invalid(field(path), value, detail)
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// `%v` of a bound: integers bare, fractions as Go prints them.
fn show(n: &Value) -> String {
    n.to_string()
}

fn check(schema: &Value, v: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    if v.is_null() && flag(schema, "nullable") {
        return;
    }
    let at = if path.is_empty() { "" } else { path };
    // type
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let actual = type_name(v);
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let ok = actual == want || (want == "number" && actual == "integer");
        if !ok {
            errs.push(invalid(
                path,
                &Value::String(actual.into()),
                format!("{at} in body must be of type {want}: {actual:?}"),
            ));
        }
    } else if int_or_string && !matches!(actual, "integer" | "string") {
        errs.push(invalid(
            path,
            &Value::String(actual.into()),
            format!("{at} in body must be of type integer,string: {actual:?}"),
        ));
    }
    // format
    if let (Some(format), Value::String(s)) = (schema.get("format").and_then(Value::as_str), v)
        && !format_ok(format, s)
    {
        errs.push(invalid(
            path,
            v,
            format!("{at} in body must be of type {format}: {s:?}"),
        ));
    }
    // enum
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.contains(v)
    {
        let shown: Vec<String> = values
            .iter()
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
            .collect();
        let refs: Vec<&str> = shown.iter().map(String::as_str).collect();
        errs.push(FieldError::not_supported(field(path), v, &refs));
    }
    match v {
        Value::String(s) => check_string(schema, s, v, path, errs),
        Value::Number(_) => check_number(schema, v, path, errs),
        Value::Array(items) => {
            let n = items.len();
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && n as u64 > max
            {
                errs.push(too_many(path, n, max));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (n as u64) < min
            {
                errs.push(invalid(
                    path,
                    &Value::from(n),
                    format!("{at} in body should have at least {min} items"),
                ));
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(s, item, &format!("{path}[{i}]"), false, errs);
                }
            }
            check_list_type(schema, items, path, errs);
        }
        Value::Object(map) => check_object(schema, map, path, root, errs),
        _ => {}
    }
    check_composites(schema, v, path, errs);
}

/// Sets hold each value once, map lists each key once (upstream's
/// `Duplicate value` errors, the value as Go's `%#v` prints it).
fn check_list_type(schema: &Value, items: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(FieldError::duplicate(format!("{path}[{i}]"), item));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Vec<(String, Value)> {
                keys.iter()
                    .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect()
            };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                    let shown: Vec<String> = key
                        .iter()
                        .map(|(k, v)| format!("{k:?}:{}", go_value(v)))
                        .collect();
                    errs.push(FieldError {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}[{i}]"),
                        message: format!(
                            "Duplicate value: map[string]interface {{}}{{{}}}",
                            shown.join(", ")
                        ),
                    });
                }
            }
        }
        _ => {}
    }
}

/// A JSON scalar as Go's `%#v` prints it inside an `interface{}` map.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn too_many(path: &str, n: usize, max: u64) -> FieldError {
    FieldError {
        reason: "FieldValueTooMany",
        field: field(path),
        message: format!("Too many: {n}: must have at most {max} items"),
    }
}

fn check_string(schema: &Value, s: &str, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        errs.push(FieldError::too_long(field(path), max as usize));
        return;
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body should be at least {min} chars long"),
        ));
        return;
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(s))
    {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body should match '{pattern}'"),
        ));
    }
}

fn check_number(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(x) = number(v) else {
        return;
    };
    if let Some(max) = schema.get("maximum") {
        let m = number(max).unwrap_or(f64::INFINITY);
        let exclusive = flag(schema, "exclusiveMaximum");
        if (exclusive && x >= m) || (!exclusive && x > m) {
            let words = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should be {words} {}", show(max)),
            ));
        }
    }
    if let Some(min) = schema.get("minimum") {
        let m = number(min).unwrap_or(f64::NEG_INFINITY);
        let exclusive = flag(schema, "exclusiveMinimum");
        if (exclusive && x <= m) || (!exclusive && x < m) {
            let words = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should be {words} {}", show(min)),
            ));
        }
    }
    if let Some(factor) = schema.get("multipleOf").and_then(number)
        && factor > 0.0
        && (x / factor).fract().abs() > 1e-9
    {
        errs.push(invalid(
            path,
            v,
            format!(
                "{path} in body should be a multiple of {}",
                show(&schema["multipleOf"])
            ),
        ));
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    errs: &mut Vec<FieldError>,
) {
    let n = map.len();
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && n as u64 > max
    {
        errs.push(too_many(path, n, max));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (n as u64) < min
    {
        errs.push(invalid(
            path,
            &Value::from(n),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(key) {
            errs.push(FieldError::required(child(path, key)));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (key, value) in map {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.and_then(|p| p.get(key)) {
            check(s, value, &child(path, key), false, errs);
        } else if let Some(s) = additional.filter(|a| a.is_object()) {
            check(s, value, &child(path, key), false, errs);
        } else if additional == Some(&Value::Bool(false)) {
            errs.push(invalid(
                path,
                &Value::String(key.clone()),
                format!("{} in body is a forbidden property", child(path, key)),
            ));
        }
    }
}

/// allOf, anyOf, oneOf and not: reported at no field, as upstream.
fn check_composites(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let passes = |s: &Value| {
        let mut e = Vec::new();
        check(s, v, path, false, &mut e);
        e.is_empty()
    };
    let branches = |key: &str| {
        schema
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let nil = |detail: String| FieldError::invalid("<nil>", &Value::String(String::new()), detail);
    let any = branches("anyOf");
    if !any.is_empty() && !any.iter().any(passes) {
        errs.push(nil(format!(
            "{path:?} must validate at least one schema (anyOf)"
        )));
    }
    let one = branches("oneOf");
    if !one.is_empty() {
        let valid = one.iter().filter(|s| passes(s)).count();
        if valid != 1 {
            let found = if valid == 0 {
                "Found none valid".to_owned()
            } else {
                format!("Found {valid} valid alternatives")
            };
            errs.push(nil(format!(
                "{path:?} must validate one and only one schema (oneOf). {found}"
            )));
        }
    }
    let all = branches("allOf");
    if !all.is_empty() && !all.iter().all(passes) {
        errs.push(nil(format!(
            "{path:?} must validate all the schemas (allOf)"
        )));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        errs.push(nil(format!("{path:?} must not validate the schema (not)")));
    }
}

/// Does `s` have `format`? Formats upstream does not check (int32,
/// int64, float, double, password, unknown ones) always do.
pub(crate) fn format_ok(format: &str, s: &str) -> bool {
    use base64::Engine;
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "uuid" => uuid::Uuid::try_parse(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let bits: Option<u8> = bits.parse().ok();
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => bits.is_some_and(|b| b <= 32),
                Ok(std::net::IpAddr::V6(_)) => bits.is_some_and(|b| b <= 128),
                Err(_) => false,
            }
        }),
        "email" => s
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.')),
        "hostname" => super::names::is_dns1123_subdomain(&s.to_lowercase()),
        _ => true,
    }
}

/// Where a node sits, for the "must not be empty" wording.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Items,
    Field,
}

/// Why `schema` (a definition's `openAPIV3Schema`, reported at `path`)
/// is not structural or uses what upstream does not support, in
/// upstream's words (`ValidateStructural` and the standard validator),
/// sorted by their text as upstream sorts them.
pub fn structural_problems(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    structural_at(schema, path, Level::Root, &mut errs);
    errs.sort_by_key(|e| format!("{}: {}", e.field, e.message));
    errs
}

fn required_with(field: String, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field,
        message: format!("Required value: {detail}"),
    }
}

fn structural_at(schema: &Value, path: &str, level: Level, errs: &mut Vec<FieldError>) {
    let Some(node) = schema.as_object() else {
        return;
    };
    for (key, what) in [
        ("id", "id"),
        ("$ref", "$ref"),
        ("patternProperties", "patternProperties"),
        ("dependencies", "dependencies"),
        ("additionalItems", "additionalItems"),
        ("definitions", "definitions"),
    ] {
        if node.contains_key(key) {
            errs.push(FieldError::forbidden(
                format!("{path}.{key}"),
                format!("{what} is not supported"),
            ));
        }
    }
    if node.get("items").is_some_and(Value::is_array) {
        errs.push(FieldError::forbidden(
            format!("{path}.items"),
            "items must be a schema object and not an array",
        ));
    }
    if flag(schema, "uniqueItems") {
        errs.push(FieldError::forbidden(
            format!("{path}.uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    let ty = node.get("type").and_then(Value::as_str).unwrap_or_default();
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    if ty.is_empty() && !int_or_string && !preserve {
        let detail = match level {
            Level::Root => "must not be empty at the root",
            Level::Items => "must not be empty for specified array items",
            Level::Field => "must not be empty for specified object fields",
        };
        errs.push(required_with(format!("{path}.type"), detail));
    }
    if level == Level::Root {
        if !ty.is_empty() && ty != "object" {
            errs.push(FieldError::invalid(
                format!("{path}.type"),
                &Value::String(ty.into()),
                "must be object at the root",
            ));
        }
        if node.contains_key("additionalProperties") {
            errs.push(FieldError::forbidden(
                format!("{path}.additionalProperties"),
                "must not be used at the root",
            ));
        }
        if flag(schema, "nullable") {
            errs.push(FieldError::forbidden(
                format!("{path}.nullable"),
                "nullable cannot be true at the root",
            ));
        }
        if let Some(meta) = node.get("properties").and_then(|p| p.get("metadata")) {
            let extra = meta
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.keys().any(|k| k != "name" && k != "generateName"));
            let other = meta.as_object().is_some_and(|m| {
                m.keys()
                    .any(|k| !matches!(k.as_str(), "type" | "properties" | "description"))
            });
            if extra || other {
                errs.push(FieldError::forbidden(
                    format!("{path}.properties[metadata]"),
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
    }
    if ty == "array" && !node.contains_key("items") {
        errs.push(required_with(format!("{path}.items"), "must be specified"));
    }
    if int_or_string {
        for key in [
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-embedded-resource",
        ] {
            if flag(schema, key) {
                errs.push(FieldError::invalid(
                    format!("{path}.{key}"),
                    &Value::Bool(true),
                    "must be false if x-kubernetes-int-or-string is true",
                ));
            }
        }
    }
    if embedded && !ty.is_empty() && ty != "object" {
        errs.push(FieldError::invalid(
            format!("{path}.type"),
            &Value::String(ty.into()),
            "must be object if x-kubernetes-embedded-resource is true",
        ));
    }
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(pattern)
    {
        errs.push(FieldError::invalid(
            format!("{path}.pattern"),
            &Value::String(pattern.into()),
            format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, s) in props {
            structural_at(s, &format!("{path}.properties[{key}]"), Level::Field, errs);
        }
    }
    if let Some(s) = node.get("additionalProperties").filter(|a| a.is_object()) {
        structural_at(
            s,
            &format!("{path}.additionalProperties"),
            Level::Field,
            errs,
        );
    }
    if let Some(s) = node.get("items").filter(|i| i.is_object()) {
        structural_at(s, &format!("{path}.items"), Level::Items, errs);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, s) in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            value_validation(s, &format!("{path}.{key}[{i}]"), int_or_string, errs);
        }
    }
    if let Some(s) = node.get("not") {
        value_validation(s, &format!("{path}.not"), false, errs);
    }
}

/// Inside allOf/anyOf/oneOf/not only value checks may stand.
fn value_validation(schema: &Value, path: &str, int_or_string: bool, errs: &mut Vec<FieldError>) {
    let Some(node) = schema.as_object() else {
        return;
    };
    let exempt = int_or_string
        && node.len() == 1
        && matches!(
            node.get("type").and_then(Value::as_str),
            Some("integer" | "string")
        );
    if exempt {
        return;
    }
    for key in [
        "type",
        "title",
        "description",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-validations",
    ] {
        if node.contains_key(key) {
            errs.push(FieldError::forbidden(
                format!("{path}.{key}"),
                "must be empty to be structural",
            ));
        }
    }
    for key in [
        "additionalProperties",
        "default",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
    ] {
        if node.contains_key(key) {
            errs.push(FieldError::forbidden(
                format!("{path}.{key}"),
                "must be undefined to be structural",
            ));
        }
    }
    for key in [
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
    ] {
        if flag(schema, key) {
            errs.push(FieldError::forbidden(
                format!("{path}.{key}"),
                "must be false to be structural",
            ));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        if props.contains_key("metadata") {
            errs.push(FieldError::forbidden(
                format!("{path}.properties[metadata]"),
                "must not be specified in a nested context",
            ));
        }
        for (key, s) in props {
            value_validation(s, &format!("{path}.properties[{key}]"), false, errs);
        }
    }
    if let Some(s) = node.get("items").filter(|i| i.is_object()) {
        value_validation(s, &format!("{path}.items"), false, errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                "cronSpec": {"type": "string", "pattern": "^\\d+$"},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "name": {"type": "string", "maxLength": 3},
                "items": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "port": {"x-kubernetes-int-or-string": true},
                "when": {"type": "string", "format": "date-time"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "maybe": {"type": "string", "nullable": true},
            }},
        }})
    }

    fn lines(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn sets_and_map_lists_hold_each_value_and_key_once() {
        let schema = json!({"type": "object", "properties": {
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name", "port"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
        }});
        let obj = json!({"tags": ["a", "b", "a"],
            "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}, {"name": "http", "port": 80}]});
        assert_eq!(
            lines(&validate(&schema, &obj)),
            [
                "ports[2]: Duplicate value: map[string]interface {}{\"name\":\"http\", \"port\":80}",
                "tags[2]: Duplicate value: \"a\"",
            ]
        );
    }

    #[test]
    fn values_are_checked_as_upstream_reports_them() {
        let obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "spec": {
            "replicas": "three", "mode": "c", "name": "long", "items": ["a", "b", 3],
            "port": true, "when": "yesterday", "labels": {"a": 1}, "maybe": null,
        }});
        assert_eq!(
            lines(&validate(&schema(), &obj)),
            [
                "spec.cronSpec: Required value",
                "spec.items: Too many: 3: must have at most 2 items",
                "spec.items[2]: Invalid value: \"integer\": spec.items[2] in body must be of type string: \"integer\"",
                "spec.labels.a: Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\"",
                "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
                "spec.name: Too long: may not be more than 3 bytes",
                "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
                "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
                "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
            ]
        );
        let numbers = json!({"spec": {"cronSpec": "x", "replicas": 11}});
        assert_eq!(
            lines(&validate(&schema(), &numbers)),
            [
                "spec.cronSpec: Invalid value: \"x\": spec.cronSpec in body should match '^\\d+$'",
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            ]
        );
        let good = json!({"spec": {"cronSpec": "5", "replicas": 3, "port": "http", "when": "2026-01-01T00:00:00Z"}});
        assert!(validate(&schema(), &good).is_empty());
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "labels": {"k": "v"}, "unknownMeta": 1},
            "spec": {"cronSpec": "5", "extra": 1, "free": {"any": {"thing": 1}}, "labels": {"a": "b"}, "replicas": null},
            "top": true});
        let dropped = prune(&schema(), &mut obj);
        assert_eq!(dropped, ["metadata.unknownMeta", "spec.extra", "top"]);
        default(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "labels": {"k": "v"}},
                   "spec": {"cronSpec": "5", "free": {"any": {"thing": 1}}, "labels": {"a": "b"}, "replicas": 1}})
        );
    }

    #[test]
    fn schemas_that_are_not_structural_are_named_as_upstream_names_them() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"properties": {"list": {"type": "array"}, "bad": {"type": "string", "pattern": "("}}},
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "odd": {"type": "string", "anyOf": [{"type": "string", "default": "x"}], "$ref": "#/x"},
        }});
        let p = "spec.validation.openAPIV3Schema";
        let got = lines(&structural_problems(&schema, p));
        let want = [
            format!(
                "{p}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
            ),
            format!("{p}.properties[odd].$ref: Forbidden: $ref is not supported"),
            format!(
                "{p}.properties[odd].anyOf[0].default: Forbidden: must be undefined to be structural"
            ),
            format!("{p}.properties[odd].anyOf[0].type: Forbidden: must be empty to be structural"),
            format!(
                "{p}.properties[spec].properties[list].items: Required value: must be specified"
            ),
            format!(
                "{p}.properties[spec].type: Required value: must not be empty for specified object fields"
            ),
        ];
        for w in &want {
            assert!(got.contains(w), "missing {w}\ngot {got:#?}");
        }
        assert!(
            got.iter().any(|l| l.starts_with(&format!("{p}.properties[spec].properties[bad].pattern: Invalid value: \"(\": must be a valid regular expression, but isn't:"))),
            "{got:#?}"
        );
        assert_eq!(got.len(), want.len() + 1, "{got:#?}");
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        assert_eq!(
            lines(&structural_problems(&json!({"type": "string"}), "P")),
            ["P.type: Invalid value: \"string\": must be object at the root"]
        );
        assert_eq!(
            lines(&structural_problems(&json!({"properties": {}}), "P")),
            ["P.type: Required value: must not be empty at the root"]
        );
    }

    #[test]
    fn composites_report_at_no_field() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "x": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}}}}});
        let errs = validate(&schema, &json!({"spec": {"x": "long"}}));
        assert_eq!(
            lines(&errs),
            ["<nil>: Invalid value: \"\": \"spec.x\" must validate at least one schema (anyOf)"]
        );
    }

    #[test]
    fn embedded_resources_need_api_version_and_kind() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                "x-kubernetes-preserve-unknown-fields": true}}}}});
        let errs = |obj: Value| -> Vec<String> {
            validate(&schema, &obj)
                .iter()
                .map(FieldError::display)
                .collect()
        };
        assert_eq!(
            errs(json!({"spec": {"template": {"metadata": {"name": "a/b"}}}})),
            [
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty",
                "spec.template.metadata.name: Invalid value: \"a/b\": may not contain '/'",
            ]
        );
        assert_eq!(
            errs(json!({"spec": {"template": {"apiVersion": "a/b/c", "kind": "Bad_Kind"}}})),
            [
                "spec.template.apiVersion: Invalid value: \"a/b/c\": unexpected GroupVersion string: a/b/c",
                format!("spec.template.kind: Invalid value: \"Bad_Kind\": may have mixed case, but should otherwise match: {}", crate::api::validation::DNS1035_LABEL_MSG).as_str(),
            ]
        );
        assert!(
            errs(json!({"spec": {"template": {"apiVersion": "v1", "kind": "ConfigMap"}}}))
                .is_empty()
        );
        // Its labels are checked as an object's are.
        let bad_label = errs(
            json!({"spec": {"template": {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"labels": {"app": "-x"}}}}}),
        );
        assert!(
            bad_label.len() == 1 && bad_label[0].starts_with("spec.template.metadata.labels"),
            "{bad_label:?}"
        );
    }

    #[test]
    fn defaults_must_validate_and_survive_pruning() {
        let schema = json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer", "default": "three"},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "c"},
                "limits": {"type": "object", "properties": {"cpu": {"type": "string"}},
                    "default": {"cpu": "1", "memory": "1Gi"}},
                "ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "default": 0}},
                "fine": {"type": "integer", "default": 3}}}}});
        let errs: Vec<String> = default_problems(&schema, "spec.validation.openAPIV3Schema")
            .iter()
            .map(FieldError::display)
            .collect();
        let p = "spec.validation.openAPIV3Schema.properties[spec].properties";
        assert_eq!(
            errs,
            [
                format!(
                    "{p}[limits].default: Invalid value: {{\"cpu\":\"1\",\"memory\":\"1Gi\"}}: must not have unknown fields"
                ),
                format!(
                    "{p}[mode].default: Unsupported value: \"c\": supported values: \"a\", \"b\""
                ),
                format!(
                    "{p}[ports].items.default: Invalid value: 0: {p}[ports].items.default in body should be greater than or equal to 1"
                ),
                format!(
                    "{p}[replicas].default: Invalid value: \"string\": {p}[replicas].default in body must be of type integer: \"string\""
                ),
            ]
        );
    }
}
