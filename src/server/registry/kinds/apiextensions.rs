//! apiextensions.k8s.io/v1 CustomResourceDefinition, as upstream's
//! registry keeps it: v1's defaults (singular from kind, listKind,
//! conversion None), `status.storedVersions` kept by the server, and the
//! definition's validation with upstream's paths and words
//! (`ValidateCustomResourceDefinition` of Kubernetes v1.33).
//!
//! Upstream validates the internal form, into which v1 moves a
//! per-version schema, subresources, printer columns or selectable fields
//! that every version has alike to the top level; errors about those name
//! `spec.validation`, `spec.subresources`, `spec.additionalPrinterColumns`
//! or `spec.selectableFields`, and the per-version paths only when the
//! versions differ. This does the same.
//!
//! The schemas' own rules (structural schemas, CEL) are checked by the
//! schema validator, not yet here.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextv1;
use serde_json::{Value, json};

use crate::api::status::FieldError;
use crate::api::validation::{NameRule, check_name, is_dns1035_label};
use crate::server::registry::strategy::{Context, Strategy};
use crate::server::registry::typed::through;

pub struct CustomResourceDefinition;

/// Held by a definition being deleted until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

impl Strategy for CustomResourceDefinition {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        // The schema requires these; a body without them gets the 422
        // naming them instead of a decoding error.
        let mut filled = obj.clone();
        if !filled["spec"].is_object() {
            filled["spec"] = json!({});
        }
        for key in ["group", "scope"] {
            if filled["spec"].get(key).is_none() {
                filled["spec"][key] = json!("");
            }
        }
        if !filled["spec"]["names"].is_object() {
            filled["spec"]["names"] = json!({});
        }
        for key in ["plural", "kind"] {
            if filled["spec"]["names"].get(key).is_none() {
                filled["spec"]["names"][key] = json!("");
            }
        }
        if !filled["spec"]["versions"].is_array() {
            filled["spec"]["versions"] = json!([]);
        }
        Some(through::<apiextv1::CustomResourceDefinition>(&filled))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn defaults(&self, obj: &mut Value) {
        let names = &mut obj["spec"]["names"];
        let kind = names["kind"].as_str().unwrap_or_default().to_owned();
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if !kind.is_empty() && names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
        let spec = &mut obj["spec"];
        if spec.get("conversion").is_none_or(Value::is_null) {
            spec["conversion"] = json!({"strategy": "None"});
        }
        if let Some(service) = spec.pointer_mut("/conversion/webhook/clientConfig/service")
            && service.is_object()
            && service.get("port").is_none_or(Value::is_null)
        {
            service["port"] = json!(443);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate(obj, true, errs);
    }

    /// Rules are checked when the versions change, as upstream checks
    /// only new expressions: a definition stored before a check existed
    /// can still have its status written and its finalizer removed.
    fn validate_object(&self, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
        let rules = old.is_none_or(|old| old["spec"]["versions"] != obj["spec"]["versions"]);
        validate(obj, rules, errs);
        if let Some(old) = old {
            validate_update(old, obj, errs);
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_update(old, new, errs);
    }

    /// A new definition starts with its storage version stored and no
    /// names accepted yet.
    fn prepare_create(
        &self,
        _ctx: &Context<'_>,
        _res: &crate::api::catalog::Resource,
        obj: &mut Value,
    ) {
        initial_status(obj);
    }

    /// Deleting a definition first deletes its objects: the first delete
    /// marks it (the cleanup finalizer, condition Terminating) and the
    /// naming controller finishes the job.
    fn deletion_pending(&self, obj: &Value) -> bool {
        obj.pointer("/metadata/deletionTimestamp").is_none()
    }

    fn mark_deleting(&self, obj: &mut Value) {
        if !obj["metadata"]["finalizers"].is_array() {
            obj["metadata"]["finalizers"] = json!([]);
        }
        if let Some(f) = obj["metadata"]["finalizers"].as_array_mut()
            && !f.iter().any(|x| x == CLEANUP_FINALIZER)
        {
            f.push(json!(CLEANUP_FINALIZER));
        }
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        set_condition(
            &mut obj["status"],
            "Terminating",
            "True",
            "InstanceDeletionPending",
            "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon",
        );
    }

    /// A new storage version joins `status.storedVersions` (the old ones
    /// stay until a storage migration removes them through `/status`).
    fn prepare_update(&self, _ctx: &Context<'_>, _old: &Value, obj: &mut Value) {
        store_storage_version(obj);
    }
}

/// A new definition's status: its storage version stored, no names
/// accepted yet.
fn initial_status(obj: &mut Value) {
    let stored: Vec<Value> = storage_version(obj).map(|v| json!(v)).into_iter().collect();
    obj["status"] = json!({
        "acceptedNames": {"kind": "", "plural": ""},
        "storedVersions": stored,
    });
}

/// Add the storage version to `status.storedVersions` if it is new.
fn store_storage_version(obj: &mut Value) {
    let Some(storage) = storage_version(obj).map(str::to_owned) else {
        return;
    };
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    let status = &mut obj["status"];
    if !status["storedVersions"].is_array() {
        status["storedVersions"] = json!([]);
    }
    if let Some(stored) = status["storedVersions"].as_array_mut()
        && !stored.iter().any(|v| v == storage.as_str())
    {
        stored.push(json!(storage));
    }
}

/// The name of the version marked `storage`, if one is.
pub fn storage_version(crd: &Value) -> Option<&str> {
    versions(crd)
        .iter()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
}

fn versions(crd: &Value) -> &[Value] {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn required_with(field: impl Into<String>, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field: field.into(),
        message: format!("Required value: {detail}"),
    }
}

/// Upstream's `IsDNS1035Label` messages for `value`, or none.
fn dns1035_problems(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    if value.len() > 63 {
        out.push("must be no more than 63 characters".to_owned());
    }
    if !is_dns1035_label(value) {
        out.extend(check_name(NameRule::Dns1035, value));
    }
    out
}

/// Where a per-version field is reported: at the top level (`top`) when
/// every version has it alike, else at each version that has it.
fn per_version_paths(crd: &Value, field: &str, top: &str) -> Vec<(String, Value)> {
    let vs = versions(crd);
    let values: Vec<Option<&Value>> = vs
        .iter()
        .map(|v| v.get(field).filter(|x| !x.is_null()))
        .collect();
    if values.windows(2).all(|w| w[0] == w[1]) {
        return values
            .first()
            .copied()
            .flatten()
            .map(|v| (top.to_owned(), v.clone()))
            .into_iter()
            .collect();
    }
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (format!("spec.versions[{i}].{field}"), v.clone())))
        .collect()
}

fn validate(crd: &Value, rules: bool, errs: &mut Vec<FieldError>) {
    let spec = &crd["spec"];
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let name = str_at(crd, "/metadata/name");
    if !name.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    // group
    if group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else if let Some(msg) = check_name(NameRule::Subdomain, group) {
        errs.push(FieldError::invalid("spec.group", &json!(group), msg));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    // scope
    match str_at(crd, "/spec/scope") {
        "" => errs.push(FieldError::required("spec.scope")),
        "Cluster" | "Namespaced" => {}
        other => errs.push(FieldError::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    let vs = versions(crd);
    // schemas
    for (i, v) in vs.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema")
            .is_none_or(Value::is_null)
        {
            errs.push(required_with(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
    }
    // versions
    for (i, v) in vs.iter().enumerate() {
        let vname = v["name"].as_str().unwrap_or_default();
        let problems = dns1035_problems(vname);
        if !problems.is_empty() {
            errs.push(FieldError::invalid(
                format!("spec.versions[{i}].name"),
                &json!(vname),
                problems.join(","),
            ));
        }
        validate_deprecation_warning(v, i, errs);
    }
    let mut seen = std::collections::HashSet::new();
    if vs
        .iter()
        .any(|v| !seen.insert(v["name"].as_str().unwrap_or_default()))
    {
        errs.push(FieldError::invalid(
            "spec.versions",
            &spec["versions"],
            "must contain unique version names",
        ));
    }
    if vs.iter().filter(|v| v["storage"] == true).count() != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            &spec["versions"],
            "must have exactly one version marked as storage version",
        ));
    }
    if let Some(first) = vs.first() {
        let vname = first["name"].as_str().unwrap_or_default();
        let problems = dns1035_problems(vname);
        if !problems.is_empty() {
            errs.push(FieldError::invalid(
                "spec.version",
                &json!(vname),
                problems.join(","),
            ));
        }
    }
    // names
    for key in ["plural", "singular", "kind", "listKind"] {
        if str_at(crd, &format!("/spec/names/{key}")).is_empty() {
            errs.push(FieldError::required(format!("spec.names.{key}")));
        }
    }
    validate_names(&spec["names"], "spec.names", errs);
    // schemas: structural, and nothing upstream does not support
    for (path, schema) in per_version_paths(crd, "schema", "spec.validation") {
        if let Some(s) = schema.get("openAPIV3Schema").filter(|s| !s.is_null()) {
            let structural =
                crate::api::schema::structural_problems(s, &format!("{path}.openAPIV3Schema"));
            // Defaults are checked against a structural schema only.
            if structural.is_empty() {
                errs.extend(crate::api::schema::default_problems(
                    s,
                    &format!("{path}.openAPIV3Schema"),
                ));
            }
            errs.extend(structural);
            if rules {
                errs.extend(crate::api::rules::definition_problems(
                    s,
                    &format!("{path}.openAPIV3Schema"),
                ));
            }
        }
    }
    // subresources, printer columns
    for (path, sub) in per_version_paths(crd, "subresources", "spec.subresources") {
        validate_subresources(&sub, &path, errs);
    }
    for (path, columns) in per_version_paths(
        crd,
        "additionalPrinterColumns",
        "spec.additionalPrinterColumns",
    ) {
        for (j, c) in columns.as_array().into_iter().flatten().enumerate() {
            validate_column(c, &format!("{path}[{j}]"), errs);
        }
    }
    for (i, v) in spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_selectable_fields(v, &format!("spec.versions[{i}].selectableFields"), errs);
    }
    validate_conversion(crd, errs);
    validate_stored_versions(crd, errs);
    if spec["preserveUnknownFields"] == true {
        errs.push(FieldError::invalid(
            "spec.preserveUnknownFields",
            &json!(true),
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead",
        ));
    }
}

/// Upstream's limit on a version's selectable fields.
const MAX_SELECTABLE_FIELDS: usize = 8;

/// `selectableFields`: simple paths to string, integer or boolean fields
/// of the version's schema, each once, at most eight.
fn validate_selectable_fields(version: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(fields) = version["selectableFields"].as_array() else {
        return;
    };
    if fields.len() > MAX_SELECTABLE_FIELDS {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            field: path.to_owned(),
            message: format!(
                "Too many: {}: must have at most {MAX_SELECTABLE_FIELDS} items",
                fields.len()
            ),
        });
    }
    let schema = version.pointer("/schema/openAPIV3Schema");
    let mut seen = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let at = format!("{path}[{i}].jsonPath");
        let json_path = f["jsonPath"].as_str().unwrap_or_default();
        if json_path.is_empty() {
            errs.push(FieldError::required(at));
            continue;
        }
        let Some(rest) = json_path.strip_prefix('.') else {
            errs.push(FieldError::invalid(
                at,
                &json!(json_path),
                "must be a simple json path starting with .",
            ));
            continue;
        };
        if seen.contains(&json_path) {
            errs.push(FieldError::duplicate(at, &json!(json_path)));
            continue;
        }
        seen.push(json_path);
        let mut node = schema;
        for part in rest.split('.') {
            node = node
                .and_then(|n| n.get("properties"))
                .and_then(|p| p.get(part));
        }
        match node.and_then(|n| n["type"].as_str()) {
            Some("string" | "integer" | "boolean") => {}
            Some(_) => errs.push(FieldError::invalid(
                at,
                &json!(json_path),
                "selectable field type must be one of: string, integer, boolean",
            )),
            None => errs.push(FieldError::invalid(
                at,
                &json!(json_path),
                "is an invalid path: no such field in the schema",
            )),
        }
    }
}

fn validate_deprecation_warning(v: &Value, i: usize, errs: &mut Vec<FieldError>) {
    let Some(warning) = v["deprecationWarning"].as_str() else {
        return;
    };
    let field = format!("spec.versions[{i}].deprecationWarning");
    let detail = if v["deprecated"] != true {
        Some("can only be set for deprecated versions".to_owned())
    } else if warning.len() > 256 {
        Some("must be <= 256 characters long".to_owned())
    } else if warning.is_empty() {
        Some("must not be an empty string".to_owned())
    } else {
        warning
            .chars()
            .scan(0usize, |at, c| {
                let here = *at;
                *at += c.len_utf8();
                Some((here, c))
            })
            .find(|(_, c)| c.is_control())
            .map(|(at, _)| {
                format!("must only contain printable UTF-8 characters; control character found at index {at}")
            })
    };
    if let Some(detail) = detail {
        errs.push(FieldError::invalid(field, &json!(warning), detail));
    }
}

/// `spec.names` (or `status.acceptedNames`) as upstream's
/// `ValidateCustomResourceDefinitionNames`: only what is set is checked.
fn validate_names(names: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let get = |key: &str| names[key].as_str().unwrap_or_default();
    for key in ["plural", "singular"] {
        let value = get(key);
        let problems = dns1035_problems(value);
        if !value.is_empty() && !problems.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(value),
                problems.join(","),
            ));
        }
    }
    for key in ["kind", "listKind"] {
        let value = get(key);
        let problems = dns1035_problems(&value.to_lowercase());
        if !value.is_empty() && !problems.is_empty() {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(value),
                format!(
                    "may have mixed case, but should otherwise match: {}",
                    problems.join(",")
                ),
            ));
        }
    }
    for key in ["shortNames", "categories"] {
        for (j, item) in names[key].as_array().into_iter().flatten().enumerate() {
            let value = item.as_str().unwrap_or_default();
            let problems = dns1035_problems(value);
            if !problems.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.{key}[{j}]"),
                    item,
                    problems.join(","),
                ));
            }
        }
    }
    if !get("kind").is_empty() && get("kind") == get("listKind") {
        errs.push(FieldError::invalid(
            format!("{path}.listKind"),
            &names["listKind"],
            "kind and listKind may not be the same",
        ));
    }
}

/// Upstream's `validateSimpleJSONPath`: `.a.b`, nothing fancier.
fn simple_json_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("must not be empty")
    } else if !path.starts_with('.') {
        Some("must be a simple json path starting with .")
    } else {
        None
    }
}

fn validate_subresources(sub: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(scale) = sub.get("scale").filter(|s| s.is_object()) else {
        return;
    };
    for (key, under, message) in [
        (
            "specReplicasPath",
            ".spec.",
            "should be a json path under .spec",
        ),
        (
            "statusReplicasPath",
            ".status.",
            "should be a json path under .status",
        ),
    ] {
        let field = format!("{path}.scale.{key}");
        let value = scale[key].as_str().unwrap_or_default();
        if value.is_empty() {
            errs.push(FieldError::required(field));
        } else if let Some(problem) = simple_json_path_problem(value) {
            errs.push(FieldError::invalid(field, &json!(value), problem));
        } else if !value.starts_with(under) {
            errs.push(FieldError::invalid(field, &json!(value), message));
        }
    }
    let selector = scale["labelSelectorPath"].as_str().unwrap_or_default();
    if !selector.is_empty() {
        let field = format!("{path}.scale.labelSelectorPath");
        if let Some(problem) = simple_json_path_problem(selector) {
            errs.push(FieldError::invalid(field, &json!(selector), problem));
        } else if !selector.starts_with(".spec.") && !selector.starts_with(".status.") {
            errs.push(FieldError::invalid(
                field,
                &json!(selector),
                "should be a json path under either .spec or .status",
            ));
        }
    }
}

fn validate_column(c: &Value, path: &str, errs: &mut Vec<FieldError>) {
    const TYPES: &str = "must be one of boolean,date,integer,number,string";
    if c["name"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required(format!("{path}.name")));
    }
    match c["type"].as_str().unwrap_or_default() {
        "" => errs.push(required_with(format!("{path}.type"), TYPES)),
        "boolean" | "date" | "integer" | "number" | "string" => {}
        other => errs.push(FieldError::invalid(
            format!("{path}.type"),
            &json!(other),
            TYPES,
        )),
    }
    let format = c["format"].as_str().unwrap_or_default();
    let formats = [
        "byte",
        "date",
        "date-time",
        "double",
        "float",
        "int32",
        "int64",
        "password",
    ];
    if !format.is_empty() && !formats.contains(&format) {
        errs.push(FieldError::invalid(
            format!("{path}.format"),
            &json!(format),
            "must be one of byte,date,date-time,double,float,int32,int64,password",
        ));
    }
    let json_path = c["jsonPath"].as_str().unwrap_or_default();
    if json_path.is_empty() {
        errs.push(FieldError::required(format!("{path}.JSONPath")));
    } else if let Some(problem) = simple_json_path_problem(json_path) {
        errs.push(FieldError::invalid(
            format!("{path}.JSONPath"),
            &json!(json_path),
            problem,
        ));
    }
}

fn validate_conversion(crd: &Value, errs: &mut Vec<FieldError>) {
    let Some(conversion) = crd.pointer("/spec/conversion").filter(|c| !c.is_null()) else {
        return;
    };
    let webhook = conversion.get("webhook").filter(|w| !w.is_null());
    match conversion["strategy"].as_str().unwrap_or_default() {
        "" => errs.push(FieldError::required("spec.conversion.strategy")),
        "None" => {
            if let Some(w) = webhook {
                if w.get("clientConfig").is_some_and(|c| !c.is_null()) {
                    errs.push(FieldError::forbidden(
                        "spec.conversion.webhookClientConfig",
                        "should not be set when strategy is not set to Webhook",
                    ));
                }
                if w.get("conversionReviewVersions")
                    .is_some_and(|c| !c.is_null())
                {
                    errs.push(FieldError::forbidden(
                        "spec.conversion.conversionReviewVersions",
                        "should not be set when strategy is not set to Webhook",
                    ));
                }
            }
        }
        "Webhook" => {
            let config = webhook
                .and_then(|w| w.get("clientConfig"))
                .filter(|c| !c.is_null());
            match config {
                None => errs.push(required_with(
                    "spec.conversion.webhookClientConfig",
                    "required when strategy is set to Webhook",
                )),
                Some(c) => {
                    let url = c.get("url").is_some_and(|u| !u.is_null());
                    let service = c.get("service").is_some_and(|s| !s.is_null());
                    if url == service {
                        errs.push(required_with(
                            "spec.conversion.webhookClientConfig",
                            "exactly one of url or service is required",
                        ));
                    }
                }
            }
            let versions = webhook
                .and_then(|w| w["conversionReviewVersions"].as_array())
                .cloned()
                .unwrap_or_default();
            if versions.is_empty() {
                errs.push(FieldError::required(
                    "spec.conversion.conversionReviewVersions",
                ));
            } else if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
                errs.push(FieldError::invalid(
                    "spec.conversion.conversionReviewVersions",
                    &json!(versions),
                    "must include at least one of v1, v1beta1",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            &json!(other),
            &["None", "Webhook"],
        )),
    }
}

/// `status.storedVersions`: at least one, the storage version among them,
/// and each still a version of the spec.
fn validate_stored_versions(crd: &Value, errs: &mut Vec<FieldError>) {
    let stored: Vec<&str> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if stored.is_empty() {
        // Set by the server at create; empty only when the spec has no
        // storage version, which the spec's errors already say.
        if storage_version(crd).is_none() {
            errs.push(FieldError::invalid(
                "status.storedVersions",
                &json!([]),
                "must have at least one stored version",
            ));
        }
        return;
    }
    let names: Vec<&str> = versions(crd)
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    if let Some(storage) = storage_version(crd)
        && !stored.contains(&storage)
    {
        errs.push(FieldError::invalid(
            "status.storedVersions",
            &json!(stored),
            format!("must have the storage version {storage}"),
        ));
    }
    for (i, v) in stored.iter().enumerate() {
        if !names.contains(v) {
            errs.push(FieldError::invalid(
                format!("status.storedVersions[{i}]"),
                &json!(v),
                format!(
                    "missing from spec.versions; {v} was previously a storage version, and must remain in spec.versions until a storage migration ensures no data remains persisted in {v} and removes {v} from status.storedVersions"
                ),
            ));
        }
    }
}

/// `conditions` with `ty` set as upstream's `SetCRDCondition` sets it:
/// appended if new, else changed in place, its transition time moved
/// only when its status changes.
pub fn set_condition(status: &mut Value, ty: &str, state: &str, reason: &str, message: &str) {
    let now = jiff::Timestamp::now().to_string();
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let conditions = status["conditions"].as_array_mut().expect("an array");
    match conditions.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != state {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(state);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conditions.push(
            json!({"type": ty, "status": state, "lastTransitionTime": now,
                                       "reason": reason, "message": message}),
        ),
    }
}

/// Established: the names are being served.
pub fn is_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let mut immutable = vec![
        ("/spec/group", "spec.group"),
        ("/spec/names/plural", "spec.names.plural"),
    ];
    if is_established(old) {
        immutable.push(("/spec/scope", "spec.scope"));
        immutable.push(("/spec/names/kind", "spec.names.kind"));
    }
    for (pointer, field) in immutable {
        let (was, is) = (str_at(old, pointer), str_at(new, pointer));
        if was != is {
            errs.push(FieldError::invalid(field, &json!(is), "field is immutable"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crontab() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "crontabs.stable.example.com"},
            "spec": {
                "group": "stable.example.com",
                "scope": "Namespaced",
                "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }],
            },
        })
    }

    fn errors(crd: &Value) -> Vec<(String, String)> {
        let mut crd = crd.clone();
        CustomResourceDefinition.defaults(&mut crd);
        let mut errs = Vec::new();
        validate(&crd, true, &mut errs);
        errs.into_iter().map(|e| (e.field, e.message)).collect()
    }

    #[test]
    fn the_documentation_s_crontab_is_valid_and_defaulted() {
        let mut crd = crontab();
        crd["spec"]["names"]
            .as_object_mut()
            .unwrap()
            .remove("singular");
        CustomResourceDefinition.defaults(&mut crd);
        assert_eq!(crd["spec"]["names"]["singular"], "crontab");
        assert_eq!(crd["spec"]["names"]["listKind"], "CronTabList");
        assert_eq!(crd["spec"]["conversion"], json!({"strategy": "None"}));
        let mut errs = Vec::new();
        validate(&crd, true, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let round = CustomResourceDefinition.round_trip(&crd).unwrap().unwrap();
        assert_eq!(
            round["spec"]["versions"][0]["schema"],
            crd["spec"]["versions"][0]["schema"]
        );
    }

    #[test]
    fn bad_definitions_get_upstream_s_paths_and_words() {
        let mut crd = crontab();
        crd["metadata"]["name"] = json!("crontabs.example.com");
        crd["spec"]["group"] = json!("example");
        crd["spec"]["scope"] = json!("Global");
        crd["spec"]["names"]["kind"] = json!("Cron_Tab");
        crd["spec"]["names"]["listKind"] = json!("Cron_Tab");
        crd["spec"]["versions"][0]["name"] = json!("V1");
        crd["spec"]["versions"][0]["storage"] = json!(false);
        crd["spec"]["versions"][0]["subresources"] = json!({"scale": {"specReplicasPath": "spec.replicas", "statusReplicasPath": ".spec.x"}});
        crd["spec"]["versions"][0]["additionalPrinterColumns"] =
            json!([{"name": "Spec", "type": "text", "jsonPath": ""}]);
        let got = errors(&crd);
        let dns1035 = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
        let want = [
            ("metadata.name", "Invalid value: \"crontabs.example.com\": must be spec.names.plural+\".\"+spec.group".to_owned()),
            ("spec.group", "Invalid value: \"example\": should be a domain with at least one dot".to_owned()),
            ("spec.scope", "Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"".to_owned()),
            ("spec.versions[0].name", format!("Invalid value: \"V1\": {dns1035}")),
            ("spec.versions", "must have exactly one version marked as storage version".to_owned()),
            ("spec.version", format!("Invalid value: \"V1\": {dns1035}")),
            ("spec.names.kind", format!("Invalid value: \"Cron_Tab\": may have mixed case, but should otherwise match: {dns1035}")),
            ("spec.names.listKind", format!("Invalid value: \"Cron_Tab\": may have mixed case, but should otherwise match: {dns1035}")),
            ("spec.names.listKind", "Invalid value: \"Cron_Tab\": kind and listKind may not be the same".to_owned()),
            ("spec.subresources.scale.specReplicasPath", "Invalid value: \"spec.replicas\": must be a simple json path starting with .".to_owned()),
            ("spec.subresources.scale.statusReplicasPath", "Invalid value: \".spec.x\": should be a json path under .status".to_owned()),
            ("spec.additionalPrinterColumns[0].type", "Invalid value: \"text\": must be one of boolean,date,integer,number,string".to_owned()),
            ("spec.additionalPrinterColumns[0].JSONPath", "Required value".to_owned()),
            ("status.storedVersions", "Invalid value: []: must have at least one stored version".to_owned()),
        ];
        for (field, message) in &want {
            assert!(
                got.iter()
                    .any(|(f, m)| f == field && m.ends_with(message.as_str())),
                "missing {field}: {message}\ngot {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn fields_that_differ_between_versions_are_reported_per_version() {
        let mut crd = crontab();
        let mut v2 = crd["spec"]["versions"][0].clone();
        v2["name"] = json!("v2");
        v2["storage"] = json!(false);
        v2["additionalPrinterColumns"] = json!([{"name": "x", "type": "string", "jsonPath": "x"}]);
        crd["spec"]["versions"].as_array_mut().unwrap().push(v2);
        let got = errors(&crd);
        assert_eq!(
            got,
            [(
                "spec.versions[1].additionalPrinterColumns[0].JSONPath".to_owned(),
                "Invalid value: \"x\": must be a simple json path starting with .".to_owned()
            )]
        );
        let mut dup = crontab();
        let again = dup["spec"]["versions"][0].clone();
        dup["spec"]["versions"].as_array_mut().unwrap().push(again);
        let got = errors(&dup);
        assert!(
            got.iter()
                .any(|(f, m)| f == "spec.versions"
                    && m.ends_with("must contain unique version names")),
            "{got:?}"
        );
    }

    #[test]
    fn group_and_plural_never_change_scope_and_kind_once_established() {
        let old = crontab();
        let mut new = old.clone();
        new["spec"]["scope"] = json!("Cluster");
        new["spec"]["names"]["kind"] = json!("Tab");
        let mut errs = Vec::new();
        validate_update(&old, &new, &mut errs);
        assert!(errs.is_empty(), "not established yet: {errs:?}");
        let mut established = old.clone();
        established["status"]["conditions"] = json!([{"type": "Established", "status": "True"}]);
        new["spec"]["group"] = json!("other.example.com");
        validate_update(&established, &new, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.group", "spec.scope", "spec.names.kind"]);
        assert!(errs[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn a_new_storage_version_is_stored_and_old_ones_kept() {
        let mut crd = crontab();
        initial_status(&mut crd);
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        crd["spec"]["versions"][0]["storage"] = json!(false);
        crd["spec"]["versions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "v2", "served": true, "storage": true}));
        store_storage_version(&mut crd);
        assert_eq!(crd["status"]["storedVersions"], json!(["v1", "v2"]));
    }
}
