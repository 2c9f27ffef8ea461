//! Validation of objects, as the API server does before storing them: every
//! problem is collected (not just the first) so one 422 lists them all.
//! Messages follow upstream's wording so users can search for them.

use serde_json::Value;

pub use super::names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain};
use super::selector::LabelSelector;
use super::status::FieldError;

pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// How many bytes an object's annotations (keys and values) may hold:
/// upstream's `TotalAnnotationSizeLimitB`.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// How many bytes a ConfigMap's or a Secret's data may hold in total
/// (decoded, for base64 fields): upstream's `core.MaxSecretSize`, 1 MiB.
pub const MAX_CONFIG_DATA_BYTES: usize = 1024 * 1024;

/// A taint from `KEY[=VALUE]:EFFECT` (kubectl taint's and k3s's
/// `--node-taint` form) as a Node's `spec.taints` entry.
///
/// # Errors
/// What is wrong, in a sentence.
pub fn parse_taint(text: &str) -> Result<serde_json::Value, String> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or("expected KEY=VALUE:EFFECT (e.g. dedicated=edge:NoSchedule)")?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err("the taint has no key".into());
    }
    let mut taint = serde_json::json!({"key": key, "effect": effect});
    if !value.is_empty() {
        taint["value"] = serde_json::json!(value);
    }
    Ok(taint)
}

/// How a kind's names are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Path segment names (e.g. events use `name.hash`): no `/`, `%`, `.`/`..`.
    PathSegment,
}

pub fn check_name(rule: NameRule, name: &str) -> Option<String> {
    match rule {
        NameRule::Subdomain if !is_dns1123_subdomain(name) => Some(DNS1123_SUBDOMAIN_MSG.into()),
        NameRule::Label if !is_dns1123_label(name) => Some(DNS1123_LABEL_MSG.into()),
        NameRule::Dns1035 if !is_dns1035_label(name) => Some(DNS1035_LABEL_MSG.into()),
        // Upstream's path.IsValidPathSegmentName (the first of its messages).
        NameRule::PathSegment if name == "." || name == ".." => {
            Some(format!("may not be '{name}'"))
        }
        NameRule::PathSegment if name.contains('/') => Some("may not contain '/'".into()),
        NameRule::PathSegment if name.contains('%') => Some("may not contain '%'".into()),
        _ => None,
    }
}

/// `metadata`: name (or generateName), namespace, labels, annotations.
pub fn validate_meta(obj: &Value, rule: NameRule, namespaced: bool, errs: &mut Vec<FieldError>) {
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if let Some(msg) = check_name(rule, name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            &Value::from(name),
            msg,
        ));
    }
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required("metadata.namespace"));
        } else if !is_dns1123_label(ns) {
            errs.push(FieldError::invalid(
                "metadata.namespace",
                &Value::from(ns),
                DNS1123_LABEL_MSG,
            ));
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    validate_labels(meta.get("labels"), "metadata.labels", errs);
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            for msg in super::names::qualified_name_problems(&k.to_lowercase()) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::from(k.as_str()),
                    msg,
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                MAX_ANNOTATIONS_BYTES,
            ));
        }
    }
}

fn validate_labels(labels: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return;
    };
    // Upstream's ValidateLabels: every problem at the labels' path, in
    // IsQualifiedName's and IsValidLabelValue's words.
    for (k, v) in labels {
        for msg in super::names::qualified_name_problems(k) {
            errs.push(FieldError::invalid(field, &Value::from(k.as_str()), msg));
        }
        for msg in super::names::label_value_problems(v.as_str().unwrap_or_default()) {
            errs.push(FieldError::invalid(field, v, msg));
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn one_of(v: &Value, key: &str, path: &str, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(s) = v.get(key).and_then(Value::as_str)
        && !allowed.contains(&s)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.{key}"),
            &Value::from(s),
            allowed,
        ));
    }
}

fn port_in_range(v: &Value, key: &str, path: &str, required: bool, errs: &mut Vec<FieldError>) {
    match v.get(key).and_then(Value::as_i64) {
        Some(p) if (1..=65535).contains(&p) => {}
        // An unset optional port arrives as 0 from protobuf clients.
        Some(0) if !required => {}
        Some(p) => errs.push(FieldError::invalid(
            format!("{path}.{key}"),
            &Value::from(p),
            "must be between 1 and 65535, inclusive",
        )),
        None if required => errs.push(FieldError::required(format!("{path}.{key}"))),
        None => {}
    }
}

fn validate_containers(
    list: Option<&Value>,
    path: &str,
    required: bool,
    names: &mut Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let containers = list.and_then(Value::as_array).cloned().unwrap_or_default();
    if containers.is_empty() && required {
        errs.push(FieldError::required(path));
    }
    for (i, c) in containers.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = str_at(c, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        } else if !is_dns1123_label(name) {
            errs.push(FieldError::invalid(
                format!("{p}.name"),
                &Value::from(name),
                DNS1123_LABEL_MSG,
            ));
        } else if names.iter().any(|n| n == name) {
            errs.push(FieldError::duplicate(
                format!("{p}.name"),
                &Value::from(name),
            ));
        } else {
            names.push(name.to_owned());
        }
        if str_at(c, "image").trim().is_empty() {
            errs.push(FieldError::required(format!("{p}.image")));
        }
        one_of(
            c,
            "imagePullPolicy",
            &p,
            &["Always", "IfNotPresent", "Never"],
            errs,
        );
        one_of(
            c,
            "terminationMessagePolicy",
            &p,
            &["File", "FallbackToLogsOnError"],
            errs,
        );
        for (j, port) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pp = format!("{p}.ports[{j}]");
            port_in_range(port, "containerPort", &pp, true, errs);
            port_in_range(port, "hostPort", &pp, false, errs);
            one_of(port, "protocol", &pp, &["TCP", "UDP", "SCTP"], errs);
        }
        let mut env_names = Vec::new();
        for (j, env) in c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = str_at(env, "name");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{p}.env[{j}].name")));
            }
            env_names.push(name);
        }
    }
}

/// A pod spec, at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut names = Vec::new();
    validate_containers(
        spec.get("initContainers"),
        &format!("{path}.initContainers"),
        false,
        &mut names,
        errs,
    );
    validate_containers(
        spec.get("containers"),
        &format!("{path}.containers"),
        true,
        &mut names,
        errs,
    );
    one_of(
        spec,
        "restartPolicy",
        path,
        &["Always", "OnFailure", "Never"],
        errs,
    );
    one_of(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        errs,
    );
    let mut volumes = Vec::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = str_at(v, "name");
        let field = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(field));
        } else if volumes.contains(&name) {
            errs.push(FieldError::duplicate(field, &Value::from(name)));
        } else {
            volumes.push(name);
        }
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            &Value::from(g),
            "must be greater than or equal to 0",
        ));
    }
}

/// `spec.selector` and `spec.template` of a workload; `selector_required`
/// is true for apps/v1 kinds.
fn validate_workload(spec: &Value, errs: &mut Vec<FieldError>, selector_required: bool) {
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            &Value::from(r),
            "must be greater than or equal to 0",
        ));
    }
    let selector = spec.get("selector");
    let parsed = match selector {
        None | Some(Value::Null) => {
            if selector_required {
                errs.push(FieldError::required("spec.selector"));
            }
            None
        }
        Some(sel) => match LabelSelector::from_label_selector(sel) {
            Ok(s) if s.is_empty() => {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel,
                    "empty selector is invalid for deployment",
                ));
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                errs.push(FieldError::invalid("spec.selector", sel, e.0));
                None
            }
        },
    };
    match spec.get("template") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.template")),
        Some(template) => {
            validate_labels(
                template.pointer("/metadata/labels"),
                "spec.template.metadata.labels",
                errs,
            );
            if let Some(sel) = parsed
                && !sel.matches_object(template)
            {
                errs.push(FieldError::invalid_string_map(
                    "spec.template.metadata.labels",
                    template.pointer("/metadata/labels"),
                    "`selector` does not match template `labels`",
                ));
            }
            validate_pod_spec(
                template.get("spec").unwrap_or(&Value::Null),
                "spec.template.spec",
                errs,
            );
        }
    }
}

fn spec_of(obj: &Value) -> Value {
    obj.get("spec").cloned().unwrap_or(Value::Null)
}

/// A Pod's spec.
pub fn pod(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_pod_spec(&spec_of(obj), "spec", errs);
}

/// A Deployment: its workload fields and its strategy.
pub fn deployment(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec_of(obj);
    validate_workload(&spec, errs, true);
    if let Some(strategy) = spec.get("strategy") {
        one_of(
            strategy,
            "type",
            "spec.strategy",
            &["Recreate", "RollingUpdate"],
            errs,
        );
        if str_at(strategy, "type") == "Recreate"
            && strategy.get("rollingUpdate").is_some_and(|r| !r.is_null())
        {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
    }
}

/// An apps/v1 workload (ReplicaSet, DaemonSet, StatefulSet): selector
/// (required) and template.
pub fn workload(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_workload(&spec_of(obj), errs, true);
}

/// A Job: its workload fields and a restart policy that ends.
pub fn job(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec_of(obj);
    validate_workload(&spec, errs, false);
    let policy = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str);
    if let Some(p) = policy
        && p != "OnFailure"
        && p != "Never"
    {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &Value::from(p),
            &["OnFailure", "Never"],
        ));
    }
}

/// A CronJob: schedule, time zone, job template, concurrency policy.
pub fn cron_job(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec_of(obj);
    let schedule = str_at(&spec, "schedule");
    if schedule.trim().is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else if let Err(e) = crate::api::cron::Schedule::parse(schedule) {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &Value::from(schedule),
            e,
        ));
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str)
        && let Err(e) = crate::api::cron::time_zone(Some(tz))
    {
        errs.push(FieldError::invalid("spec.timeZone", &Value::from(tz), e));
    }
    if spec.get("jobTemplate").is_none() {
        errs.push(FieldError::required("spec.jobTemplate"));
    }
    one_of(
        &spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        errs,
    );
}

/// A Service's spec.
pub fn service(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_service(&spec_of(obj), errs);
}

/// The keys of a ConfigMap's or Secret's data.
pub fn config_data(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut keys: Vec<&str> = Vec::new();
    for field in ["data", "binaryData", "stringData"] {
        for (k, _) in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let valid = !k.is_empty()
                && k.len() <= 253
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !valid {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &Value::from(k.as_str()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            } else if field == "binaryData" && keys.contains(&k.as_str()) {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    &Value::from(k.as_str()),
                    "duplicate of key present in data",
                ));
            }
            keys.push(k);
        }
    }
}

/// The length of what a base64 text (`[]byte` on the wire) decodes to,
/// as upstream counts a `binaryData` or Secret `data` value (`len(value)`
/// of the decoded bytes). The typed round trip has already refused text
/// that is not base64.
fn decoded_len(text: &str) -> usize {
    text.trim_end_matches('=').len() * 3 / 4
}

/// The total size of a ConfigMap's `data` (bytes of the strings) and
/// `binaryData` (decoded bytes): over 1 MiB is upstream's
/// `field.TooLong(field.NewPath(""), …)` in `ValidateConfigMap`, whose
/// empty path prints as `[]` — the error is about the whole object.
pub fn config_map_size(obj: &Value, errs: &mut Vec<FieldError>) {
    let values = |field: &str| {
        obj.get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_str())
    };
    let total: usize = values("data").map(str::len).sum::<usize>()
        + values("binaryData").map(decoded_len).sum::<usize>();
    if total > MAX_CONFIG_DATA_BYTES {
        errs.push(FieldError::too_long("[]", MAX_CONFIG_DATA_BYTES));
    }
}

/// The total size of a Secret's `data` (decoded bytes): over 1 MiB is
/// upstream's `field.TooLong` on `data` in `ValidateSecret`. `stringData`
/// counts too, as upstream: defaulting has folded it into `data` (its keys
/// replacing those of `data`) before validation.
pub fn secret_size(obj: &Value, errs: &mut Vec<FieldError>) {
    let total: usize = obj
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .map(decoded_len)
        .sum();
    if total > MAX_CONFIG_DATA_BYTES {
        errs.push(FieldError::too_long("data", MAX_CONFIG_DATA_BYTES));
    }
}

/// A ReplicationController, as upstream's ValidateReplicationControllerSpec:
/// a non-empty selector that the template's labels match, a template whose
/// pods restart `Always`, no negative counts.
pub fn replication_controller(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = spec_of(obj);
    let non_negative = |field: &str, errs: &mut Vec<FieldError>| {
        if let Some(n) = spec.get(field).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("spec.{field}"),
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
    };
    non_negative("minReadySeconds", errs);
    let selector = spec
        .get("selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty());
    if selector.is_none() {
        errs.push(FieldError::required("spec.selector"));
    }
    non_negative("replicas", errs);
    let template = match spec.get("template") {
        None | Some(Value::Null) => {
            errs.push(FieldError::required("spec.template"));
            return;
        }
        Some(t) => t,
    };
    let labels = template.pointer("/metadata/labels");
    if let Some(selector) = selector {
        let matches = selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if !matches {
            errs.push(FieldError::invalid_string_map(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            ));
        }
    }
    validate_labels(labels, "spec.template.metadata.labels", errs);
    let pod_spec = template.get("spec").unwrap_or(&Value::Null);
    validate_pod_spec(pod_spec, "spec.template.spec", errs);
    let policy = pod_spec.get("restartPolicy").and_then(Value::as_str);
    if policy != Some("Always") {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            &Value::from(policy.unwrap_or_default()),
            &["Always"],
        ));
    }
    if pod_spec
        .get("activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null())
    {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicationController is not Supported",
        ));
    }
}

fn validate_service(spec: &Value, errs: &mut Vec<FieldError>) {
    one_of(
        spec,
        "type",
        "spec",
        &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        errs,
    );
    one_of(spec, "sessionAffinity", "spec", &["None", "ClientIP"], errs);
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if kind == "ExternalName" {
        if str_at(spec, "externalName").is_empty() {
            errs.push(FieldError::required("spec.externalName"));
        }
    } else if ports.is_empty() && str_at(spec, "clusterIP") != "None" {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut names = Vec::new();
    let mut seen = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        let name = str_at(port, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        } else if !name.is_empty() && names.contains(&name) {
            errs.push(FieldError::duplicate(
                format!("{p}.name"),
                &Value::from(name),
            ));
        }
        names.push(name);
        port_in_range(port, "port", &p, true, errs);
        one_of(port, "protocol", &p, &["TCP", "UDP", "SCTP"], errs);
        let key = (
            port.get("port").and_then(Value::as_i64),
            str_at(port, "protocol").to_owned(),
        );
        if seen.contains(&key) {
            errs.push(FieldError::duplicate(
                p.clone(),
                &serde_json::json!({"port": key.0, "protocol": key.1}),
            ));
        }
        seen.push(key);
        if let Some(np) = port.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && kind == "ClusterIP"
        {
            errs.push(FieldError::forbidden(
                format!("{p}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    validate_labels(spec.get("selector"), "spec.selector", errs);
}

fn immutable(old: &Value, new: &Value, path: &str, field: &str, errs: &mut Vec<FieldError>) {
    if old.pointer(path) != new.pointer(path) {
        errs.push(FieldError::invalid(
            field,
            new.pointer(path).unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

/// A workload's selector cannot change (apps/v1 kinds and Jobs).
pub fn selector_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    immutable(old, new, "/spec/selector", "spec.selector", errs);
}

/// A Job's selector and template cannot change.
pub fn job_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    selector_update(old, new, errs);
    immutable(old, new, "/spec/template", "spec.template", errs);
}

/// A Service's cluster IP cannot change once set.
pub fn service_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let old_ip = old
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let new_ip = new
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !old_ip.is_empty() && old_ip != new_ip && !new_ip.is_empty() {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &Value::from(new_ip),
            "field is immutable",
        ));
    }
}

/// An immutable ConfigMap's or Secret's data cannot change.
pub fn config_data_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old.get("immutable") != Some(&Value::Bool(true)) {
        return;
    }
    for field in ["data", "binaryData"] {
        if old.get(field) != new.get(field) {
            errs.push(FieldError::forbidden(
                field,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

/// A pod's spec may only change in a few places once created.
pub fn pod_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let mut a = old.get("spec").cloned().unwrap_or(Value::Null);
    let mut b = new.get("spec").cloned().unwrap_or(Value::Null);
    for spec in [&mut a, &mut b] {
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("terminationGracePeriodSeconds");
            // Binding sets nodeName once, through the binding subresource.
            m.remove("nodeName");
        }
    }
    if a != b {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_annotation_errors_are_upstream_s() {
        let obj = json!({"metadata": {"name": "a",
            "labels": {"ok": "-x", "bad key/x/y": "v"},
            "annotations": {"Good/Key": "fine", "-nope": "v"}}});
        let mut errs = Vec::new();
        validate_meta(&obj, NameRule::Subdomain, false, &mut errs);
        let shown: Vec<String> = errs.iter().map(FieldError::display).collect();
        assert_eq!(
            shown,
            [
                "metadata.labels: Invalid value: \"bad key/x/y\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                "metadata.labels: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                "metadata.annotations: Invalid value: \"-nope\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ]
        );
    }

    #[test]
    fn taints_parse_as_kubectl_writes_them() {
        assert_eq!(
            parse_taint("dedicated=edge:NoSchedule").unwrap(),
            json!({"key": "dedicated", "value": "edge", "effect": "NoSchedule"})
        );
        assert_eq!(
            parse_taint("gpu:NoExecute").unwrap(),
            json!({"key": "gpu", "effect": "NoExecute"})
        );
        for bad in [
            "dedicated=edge",
            "x=y:Never",
            ":NoSchedule",
            "=v:NoSchedule",
        ] {
            assert!(parse_taint(bad).is_err(), "{bad}");
        }
    }

    fn errors(validate: fn(&Value, &mut Vec<FieldError>), obj: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(&obj, &mut errs);
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn names_follow_rfc1123() {
        for (name, ok) in [
            ("web", true),
            ("web-1.example", true),
            ("Web", false),
            ("-web", false),
            ("a_b", false),
            ("", false),
        ] {
            assert_eq!(is_dns1123_subdomain(name), ok, "{name}");
        }
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
    }

    #[test]
    fn pod_validation_lists_every_problem() {
        let fields = errors(
            pod,
            json!({"spec": {
                "containers": [{"name": "a"}, {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}],
                "restartPolicy": "Sometimes"
            }}),
        );
        assert_eq!(
            fields,
            [
                "spec.containers[0].image",
                "spec.containers[1].name",
                "spec.containers[1].ports[0].containerPort",
                "spec.restartPolicy",
            ]
        );
        assert_eq!(errors(pod, json!({"spec": {}})), ["spec.containers"]);
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        }});
        assert_eq!(errors(deployment, d), ["spec.template.metadata.labels"]);
        assert_eq!(
            errors(deployment, json!({"spec": {}})),
            ["spec.selector", "spec.template"]
        );
    }

    #[test]
    fn deployment_selector_is_immutable() {
        let old = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}});
        let mut errs = Vec::new();
        selector_update(&old, &new, &mut errs);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("field is immutable"));
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let image = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        let env =
            json!({"spec": {"containers": [{"name": "c", "image": "a", "env": [{"name": "X"}]}]}});
        let mut errs = Vec::new();
        pod_update(&old, &image, &mut errs);
        assert!(errs.is_empty(), "changing the image is allowed");
        pod_update(&old, &env, &mut errs);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn annotations_may_hold_256_kib() {
        let meta = |len: usize| json!({"metadata": {"name": "a", "annotations": {"k": "x".repeat(len - 1)}}});
        let too_long = |obj: Value| {
            let mut errs = Vec::new();
            validate_meta(&obj, NameRule::Subdomain, false, &mut errs);
            errs.iter().map(FieldError::display).collect::<Vec<_>>()
        };
        assert!(too_long(meta(MAX_ANNOTATIONS_BYTES)).is_empty());
        assert_eq!(
            too_long(meta(MAX_ANNOTATIONS_BYTES + 1)),
            ["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
    }

    /// `n` bytes as base64, as a `[]byte` field carries them.
    fn b64(n: usize) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
    }

    #[test]
    fn base64_lengths_are_counted_decoded() {
        for n in [0, 1, 2, 3, 4, 5, 1000, 1001, 1002] {
            assert_eq!(decoded_len(&b64(n)), n, "{n} bytes");
        }
    }

    #[test]
    fn config_maps_may_hold_one_mib_of_data() {
        const MIB: usize = 1024 * 1024;
        let fields = |obj: Value| {
            let mut errs = Vec::new();
            config_map_size(&obj, &mut errs);
            errs.iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
        };
        let too_long = ["[]: Too long: may not be more than 1048576 bytes"];
        // (data bytes, binaryData bytes, refused)
        for (data, binary, refused) in [
            (MIB, 0, false),
            (MIB + 1, 0, true),
            (0, MIB, false),
            (0, MIB + 1, true),
            (MIB / 2, MIB / 2, false),
            (MIB / 2, MIB / 2 + 1, true),
        ] {
            let obj = json!({
                "data": {"a": "x".repeat(data)},
                "binaryData": {"b": b64(binary)},
            });
            let want: &[&str] = if refused { &too_long } else { &[] };
            assert_eq!(fields(obj), want, "data {data}, binaryData {binary}");
        }
        // Bytes, not characters: "é" is two.
        let obj = json!({"data": {"a": "é".repeat(MIB / 2), "b": "x"}});
        assert_eq!(fields(obj), too_long);
    }

    #[test]
    fn secrets_may_hold_one_mib_of_decoded_data() {
        const MIB: usize = 1024 * 1024;
        for (sizes, refused) in [
            (vec![MIB], false),
            (vec![MIB + 1], true),
            (vec![MIB - 10, 10], false),
            (vec![MIB - 10, 11], true),
        ] {
            let data: serde_json::Map<String, Value> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("k{i}"), json!(b64(*n))))
                .collect();
            let mut errs = Vec::new();
            secret_size(&json!({ "data": data }), &mut errs);
            let got: Vec<String> = errs
                .iter()
                .map(|e| format!("{} {}: {}", e.reason, e.field, e.message))
                .collect();
            let want: &[&str] = if refused {
                &["FieldValueTooLong data: Too long: may not be more than 1048576 bytes"]
            } else {
                &[]
            };
            assert_eq!(got, want, "{sizes:?}");
        }
    }

    #[test]
    fn services_need_ports_and_unique_names() {
        assert_eq!(errors(service, json!({"spec": {}})), ["spec.ports"]);
        assert_eq!(
            errors(
                service,
                json!({"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81}]}})
            ),
            ["spec.ports[1].name"]
        );
    }
}
