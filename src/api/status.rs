//! API errors as Kubernetes `metav1.Status` objects.
//!
//! Every failure the API returns goes through [`ApiError`]: one place maps a
//! problem to its HTTP code and `reason`, so clients (kubectl, client-go,
//! the Python client) recognise it (`IsNotFound`, `IsConflict`, …).

use serde::Serialize;
use serde_json::Value;

/// One invalid field, as listed in a 422 `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`,
    /// `FieldValueDuplicate`, `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field,
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            Value::Null => "null".into(),
            other => other.to_string(),
        };
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    /// `invalid` for a `map[string]string` value (labels, selectors), shown
    /// as Go's `%#v` shows one, which is what upstream's message carries:
    /// `map[string]string{"a":"1", "b":"2"}`, keys sorted; a missing map is
    /// `map[string]string(nil)`.
    pub fn invalid_string_map(
        field: impl Into<String>,
        map: Option<&Value>,
        detail: impl AsRef<str>,
    ) -> Self {
        let shown = match map.and_then(Value::as_object) {
            None => "map[string]string(nil)".to_owned(),
            Some(m) => {
                let mut pairs: Vec<(&String, &Value)> = m.iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(b.0));
                let inner: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
                    .collect();
                format!("map[string]string{{{}}}", inner.join(", "))
            }
        };
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                quoted.join(", ")
            ),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.into()),
        }
    }

    /// Upstream's `field.TooLong` for a size in bytes, worded as
    /// apimachinery 1.32 and later word it (1.31 and before said "must
    /// have at most N bytes"); the value itself is never shown.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        Self {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max_bytes} bytes"),
        }
    }

    /// The text upstream puts in the Status message for this error.
    pub fn display(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// A failed API request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: errors travel in `Result`s everywhere, and details are rare.
    pub details: Option<Box<Details>>,
}

/// `metav1.StatusDetails`. Its fields are declared in the order upstream's
/// Go struct declares them, and empty ones are left out as Go's `omitempty`
/// leaves them out: some clients compare error bodies byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The resource plural (`pods`) for most errors, the object's kind for
    /// `Invalid`: what upstream puts there.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    #[serde(skip_serializing_if = "is_zero")]
    pub retry_after_seconds: u32,
}

/// `metav1.StatusCause`, fields in upstream's order (its `Type` is
/// serialised as `reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `metav1.Status` as kube-apiserver writes it: `kind, apiVersion,
/// metadata, status, message, reason, details, code`, empty fields left
/// out (`omitempty`) except `metadata`, which Go always writes (`{}`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody<'a> {
    /// Empty (and left out) only on a remote command's error channel.
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    api_version: &'static str,
    metadata: EmptyMeta,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Details>,
    #[serde(skip_serializing_if = "is_zero_u16")]
    code: u16,
}

#[derive(Serialize)]
struct EmptyMeta {}

/// The bytes of a remote command's closing `Status`, as the kubelet writes
/// it on the error channel: Go's `json.Marshal` of a `metav1.Status`
/// without type meta (so no kind or apiVersion) and no trailing newline.
/// `Success` when `failure` is `None`, else `Failure` with its message,
/// reason, details and code.
pub fn stream_status(failure: Option<(&str, &str, &Details, u16)>) -> Vec<u8> {
    let (status, (message, reason, details, code)) = match failure {
        None => ("Success", ("", "", None, 0)),
        Some((m, r, d, c)) => ("Failure", (m, r, Some(d), c)),
    };
    let body = StatusBody {
        kind: "",
        api_version: "",
        metadata: EmptyMeta {},
        status,
        message,
        reason,
        details,
        code,
    };
    serde_json::to_vec(&body).expect("a Status always serialises")
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

impl StatusBody<'_> {
    /// The bytes of the body, ending in a newline as Go's `json.Encoder`
    /// ends them.
    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a Status always serialises");
        bytes.push(b'\n');
        bytes
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// What a Status names: `group`, `kind` (the resource plural, as upstream
/// does) and `name`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
}

impl Target<'_> {
    /// `deployments.apps "web"` or `pods "p"`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            format!("{} {:?}", self.resource, self.name)
        } else {
            format!("{}.{} {:?}", self.resource, self.group, self.name)
        }
    }

    fn details(&self) -> Details {
        Details {
            name: self.name.to_owned(),
            group: self.group.to_owned(),
            kind: self.resource.to_owned(),
            ..Details::default()
        }
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 for a path that names no resource. Its details are empty, not
    /// absent, as upstream's: kubectl reads `details.name` to tell a
    /// missing subresource (`kubectl debug` and `/ephemeralcontainers`)
    /// from a missing object, and crashes on a Status without details.
    pub fn not_found_path() -> Self {
        Self {
            details: Some(Box::default()),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    pub fn not_found(target: Target<'_>) -> Self {
        Self {
            details: Some(Box::new(target.details())),
            ..Self::new(404, "NotFound", format!("{} not found", target.qualified()))
        }
    }

    pub fn already_exists(target: Target<'_>) -> Self {
        Self {
            details: Some(Box::new(target.details())),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} already exists", target.qualified()),
            )
        }
    }

    pub fn conflict(target: Target<'_>, why: &str) -> Self {
        Self {
            details: Some(Box::new(target.details())),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}: {why}",
                    target.qualified()
                ),
            )
        }
    }

    /// The message upstream gives for a stale resourceVersion.
    pub fn modified(target: Target<'_>) -> Self {
        Self::conflict(
            target,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 listing every invalid field; `kind` is the object's kind.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let list: Vec<String> = errors.iter().map(FieldError::display).collect();
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes = errors
            .iter()
            .map(|e| Cause {
                reason: e.reason.to_owned(),
                message: e.message.clone(),
                field: e.field.clone(),
            })
            .collect();
        let details = Details {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes,
            ..Details::default()
        };
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        Self {
            details: Some(Box::new(details)),
            ..Self::new(
                422,
                "Invalid",
                format!("{qualified} {name:?} is invalid: {summary}"),
            )
        }
    }

    pub fn method_not_allowed(verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({verb})"),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Gone", message)
    }

    /// The watch ERROR event for a compacted resourceVersion.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
            ),
        )
    }

    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml (got {accept:?})"
            ),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// What kube-apiserver answers when etcd refuses a write over its
    /// request limit (`--max-request-bytes`): the etcd client's error
    /// passes through k8s.io/apiserver's storage layer unconverted, so the
    /// handlers' `ErrorToAPIStatus` makes it a 500 with no reason and
    /// etcd's text (still so in 1.36; kubernetes#112152 asks for better).
    pub fn storage_request_too_large() -> Self {
        Self::new(500, "", "etcdserver: request is too large")
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// A read asked for a resourceVersion the store has not reached (after
    /// waiting for it): upstream's `NewTooLargeResourceVersionError`, a
    /// Timeout that tells the client to retry in a second.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut err = Self::timeout(format!(
            "Timeout: Too large resource version: {requested}, current: {current}"
        ));
        err.details = Some(Box::new(Details {
            causes: vec![Cause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            }],
            retry_after_seconds: 1,
            ..Details::default()
        }));
        err
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// Upstream's `NewInternalError`: "Internal error occurred: …", the
    /// cause repeated in details.
    pub fn internal_occurred(cause: &str) -> Self {
        let mut err = Self::internal(format!("Internal error occurred: {cause}"));
        err.details = Some(Box::new(Details {
            causes: vec![Cause {
                reason: String::new(),
                message: cause.to_owned(),
                field: String::new(),
            }],
            ..Details::default()
        }));
        err
    }

    fn body(&self) -> StatusBody<'_> {
        StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: EmptyMeta {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: self.details.as_deref(),
            code: self.code,
        }
    }

    /// The `metav1.Status` object (as a value, to embed in a watch event).
    pub fn to_status(&self) -> Value {
        serde_json::to_value(self.body()).expect("a Status always serialises")
    }

    /// The HTTP body: the Status, byte for byte as kube-apiserver writes it
    /// (field order, omitted empty fields, trailing newline).
    pub fn to_body(&self) -> Vec<u8> {
        self.body().to_bytes()
    }
}

/// The HTTP body of a `Status` with `status: Success`, as a create that
/// stores no object (binding, eviction) returns: upstream sets its code to
/// the response's.
pub fn success_body(code: u16) -> Vec<u8> {
    StatusBody {
        kind: "Status",
        api_version: "v1",
        metadata: EmptyMeta {},
        status: "Success",
        message: "",
        reason: "",
        details: None,
        code,
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn string_maps_show_as_go_prints_them() {
        let labels = json!({"tier": "db", "app": "x"});
        let err = FieldError::invalid_string_map("f", Some(&labels), "why");
        assert_eq!(
            err.message,
            r#"Invalid value: map[string]string{"app":"x", "tier":"db"}: why"#
        );
        let err = FieldError::invalid_string_map("f", None, "why");
        assert_eq!(err.message, "Invalid value: map[string]string(nil): why");
    }

    #[test]
    fn not_found_names_group_resource_and_name() {
        let e = ApiError::not_found(Target {
            group: "apps",
            resource: "deployments",
            name: "web",
        });
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_every_field() {
        let e = ApiError::invalid(
            "",
            "Pod",
            "p",
            vec![
                FieldError::required("spec.containers[0].image"),
                FieldError::invalid("metadata.name", &json!("Bad_Name"), "must be lowercase"),
            ],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: [spec.containers[0].image: Required value, metadata.name: Invalid value: \"Bad_Name\": must be lowercase]"
        );
        assert_eq!(
            e.to_status()["details"]["causes"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn not_found_body_is_byte_for_byte_upstreams() {
        let e = ApiError::not_found(Target {
            group: "",
            resource: "pods",
            name: "x",
        });
        assert_eq!(
            String::from_utf8(e.to_body()).unwrap(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"pods \\\"x\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"x\",\"kind\":\"pods\"},\"code\":404}\n"
        );
        let e = ApiError::not_found(Target {
            group: "apps",
            resource: "deployments",
            name: "web",
        });
        assert_eq!(
            String::from_utf8(e.to_body()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"deployments.apps \"web\" not found","reason":"NotFound","details":{"name":"web","group":"apps","kind":"deployments"},"code":404}
"#
        );
    }

    #[test]
    fn invalid_body_is_byte_for_byte_upstreams() {
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "web",
            vec![FieldError::required("spec.selector")],
        );
        assert_eq!(
            String::from_utf8(e.to_body()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Deployment.apps \"web\" is invalid: spec.selector: Required value","reason":"Invalid","details":{"name":"web","group":"apps","kind":"Deployment","causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec.selector"}]},"code":422}
"#
        );
    }

    #[test]
    fn a_write_too_large_for_etcd_is_upstreams_500_without_a_reason() {
        assert_eq!(
            String::from_utf8(ApiError::storage_request_too_large().to_body()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request is too large","code":500}
"#
        );
    }

    #[test]
    fn empty_details_and_success_bodies_match_upstream() {
        assert_eq!(
            String::from_utf8(ApiError::not_found_path().to_body()).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}
"#
        );
        assert_eq!(
            String::from_utf8(success_body(201)).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}
"#
        );
    }
}
