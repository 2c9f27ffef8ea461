//! Reading a request: the query parameters (list, write and delete
//! options), the body (JSON, YAML or protobuf; patches), and the
//! representation the client accepts.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::body::RequestBody;
use super::{Query, q};
use crate::api::catalog::Resource;
use crate::api::patch::PatchType;
use crate::api::selector::{FieldSelector, LabelSelector, selectable_fields};
use crate::api::status::ApiError;
use crate::server::registry::{DeleteOptions, FieldValidation, ListQuery, Registry, WriteOptions};
use crate::store::Revision;

/// Request bodies above this are refused with 413 (upstream's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub use crate::api::query::parse_query;

/// How the response body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Json,
    Table,
    PartialObjectMetadata,
    Yaml,
}

/// Pick the representation from `Accept`, as the apiserver negotiates:
/// the first media type we can produce wins.
pub fn negotiate(accept: Option<&str>) -> Option<Representation> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Representation::Json);
    };
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let mut as_ = None;
        let mut g = None;
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(v.trim().to_owned()),
                    "g" => g = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        match (media, as_.as_deref(), g.as_deref()) {
            ("application/json", Some("Table"), Some("meta.k8s.io")) => {
                return Some(Representation::Table);
            }
            (
                "application/json",
                Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                Some("meta.k8s.io"),
            ) => {
                return Some(Representation::PartialObjectMetadata);
            }
            ("application/json" | "*/*" | "application/*", None, _) => {
                return Some(Representation::Json);
            }
            ("application/yaml", None, _) => return Some(Representation::Yaml),
            _ => {}
        }
    }
    None
}

pub(super) fn write_options(query: &Query) -> Result<WriteOptions, ApiError> {
    let dry_run = match q(query, "dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dry run value {other:?}; the only supported value is All"
            )));
        }
    };
    let field_validation = match q(query, "fieldValidation") {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            )));
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
        user: None,
        field_manager: q(query, "fieldManager")
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
        force: false,
    })
}

/// `fieldManager` and `force`, checked as upstream checks its
/// Create/Update/PatchOptions: apply patches need a manager and may force;
/// other writes may not force, and default the manager to the client's
/// user agent up to its first `/`.
pub(super) fn field_manager_options(
    req: &Request<RequestBody>,
    query: &Query,
    mut write: WriteOptions,
) -> Result<WriteOptions, ApiError> {
    use crate::api::managed;
    use crate::api::status::FieldError;
    let options_kind = match *req.method() {
        http::Method::POST => "CreateOptions",
        http::Method::PUT => "UpdateOptions",
        http::Method::PATCH => "PatchOptions",
        _ => return Ok(write),
    };
    let apply = options_kind == "PatchOptions"
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(PatchType::from_content_type)
            == Some(PatchType::Apply);
    let mut errors = Vec::new();
    match q(query, "force") {
        None => {}
        Some(_) if !apply => errors.push(FieldError::forbidden(
            "force",
            "may not be specified for non-apply patch",
        )),
        Some("true") => write.force = true,
        Some("false" | "") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force must be true or false, not {other:?}"
            )));
        }
    }
    let manager = write.field_manager.clone().unwrap_or_default();
    if manager.is_empty() && apply {
        errors.push(FieldError {
            reason: "FieldValueRequired",
            field: "fieldManager".into(),
            message: "Required value: is required for apply patch".into(),
        });
    }
    if manager.len() > managed::MAX_MANAGER_LENGTH {
        errors.push(FieldError::too_long(
            "fieldManager",
            managed::MAX_MANAGER_LENGTH,
        ));
    }
    for (i, c) in manager.chars().enumerate() {
        if c.is_control() {
            errors.push(FieldError::invalid(
                "fieldManager",
                &json!(manager),
                format!("invalid character U+{:04X} (at position {i})", u32::from(c)),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("meta.k8s.io", options_kind, "", errors));
    }
    if manager.is_empty() {
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let from_agent = managed::manager_from_user_agent(agent);
        write.field_manager = Some(if from_agent.is_empty() {
            "unknown".into()
        } else {
            from_agent
        });
    }
    Ok(write)
}

pub(super) fn list_query(res: &Resource, query: &Query) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(q(query, "labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(q(query, "fieldSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let allowed = selectable_fields(&res.group, &res.plural);
    let custom: &[String] = res
        .custom
        .as_ref()
        .map_or(&[], |c| c.selectable_fields.as_slice());
    for t in &fields.terms {
        if t.field != "metadata.name"
            && t.field != "metadata.namespace"
            && !allowed.contains(&t.field.as_str())
            && !custom.contains(&t.field)
        {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {}",
                t.field
            )));
        }
    }
    let limit = match q(query, "limit") {
        None | Some("") => None,
        Some(l) => Some(
            l.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("limit: invalid value {l:?}")))?
                .max(0) as usize,
        ),
    }
    .filter(|l| *l > 0);
    let rv = q(query, "resourceVersion").filter(|s| !s.is_empty());
    let exact = match (rv, q(query, "resourceVersionMatch")) {
        (Some(rv), Some("Exact")) => Some(parse_revision(rv)?),
        (Some(rv), None) if limit.is_some() && rv != "0" => Some(parse_revision(rv)?),
        // A watch with sendInitialEvents names NotOlderThan without a version.
        (None, Some("NotOlderThan")) if q(query, "sendInitialEvents") == Some("true") => None,
        (None, Some(m)) if !m.is_empty() => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (_, Some("Exact" | "NotOlderThan") | None) => None,
        (_, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: unsupported value {other:?}; use Exact or NotOlderThan"
            )));
        }
    };
    Ok(ListQuery {
        labels,
        fields,
        limit,
        continue_token: q(query, "continue")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        exact_revision: exact,
    })
}

/// A `resourceVersion` as upstream parses it (`strconv.ParseUint`, base
/// 10): digits only, within 64 bits.
///
/// # Errors
/// 400 BadRequest with upstream's field error text. Upstream answers 500
/// for these (kubernetes#139485); a client's typo is not a server fault.
pub(super) fn parse_revision(rv: &str) -> Result<Revision, ApiError> {
    let why = if rv.is_empty() || !rv.bytes().all(|b| b.is_ascii_digit()) {
        "invalid syntax"
    } else {
        match rv.parse::<u64>() {
            Ok(n) => return Ok(Revision(n)),
            Err(_) => "value out of range",
        }
    };
    Err(ApiError::bad_request(format!(
        "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: {why}"
    )))
}

/// The `resourceVersion` of a read (get, list, watch), checked strictly:
/// `None` when unset or empty.
///
/// # Errors
/// As [`parse_revision`].
pub(super) fn read_revision(query: &Query) -> Result<Option<Revision>, ApiError> {
    q(query, "resourceVersion")
        .filter(|s| !s.is_empty())
        .map(parse_revision)
        .transpose()
}

/// The revision a get or list must not be older than, when it asks for
/// one the store may not have reached: a get or a list with a
/// resourceVersion other than 0, where a list's is not Exact (explicitly,
/// or by carrying a limit).
pub(super) fn not_older_than(verb: &str, query: &Query) -> Result<Option<Revision>, ApiError> {
    let Some(rv) = read_revision(query)?.filter(|rv| rv.0 != 0) else {
        return Ok(None);
    };
    let limited = q(query, "limit")
        .and_then(|l| l.parse::<i64>().ok())
        .is_some_and(|l| l > 0);
    Ok(match (verb, q(query, "resourceVersionMatch")) {
        ("get", _) => Some(rv),
        ("list", Some("NotOlderThan")) => Some(rv),
        ("list", None | Some("")) if !limited => Some(rv),
        _ => None,
    })
}

pub(super) fn delete_options(
    query: &Query,
    body: Option<&Value>,
) -> Result<DeleteOptions, ApiError> {
    let from_body = |k: &str| body.and_then(|b| b.get(k)).cloned();
    let grace = match q(query, "gracePeriodSeconds") {
        Some(g) => Some(g.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds: invalid value {g:?}"))
        })?),
        None => from_body("gracePeriodSeconds").and_then(|v| v.as_i64()),
    };
    let policy = q(query, "propagationPolicy")
        .map(str::to_owned)
        .or_else(|| from_body("propagationPolicy").and_then(|v| v.as_str().map(str::to_owned)))
        .or_else(
            || match from_body("orphanDependents").and_then(|v| v.as_bool()) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            },
        );
    let dry_run = q(query, "dryRun") == Some("All")
        || from_body("dryRun")
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|a| a.contains(&json!("All")));
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: policy,
        precondition_uid: body
            .and_then(|b| b.pointer("/preconditions/uid"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_resource_version: body
            .and_then(|b| b.pointer("/preconditions/resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
        ..DeleteOptions::default()
    })
}

pub(super) struct Parsed {
    pub value: Value,
    /// Fields that appear twice in a JSON body (YAML and protobuf bodies
    /// cannot carry duplicates past their parsers).
    duplicates: Vec<String>,
}

impl Parsed {
    /// Apply `fieldValidation` to duplicate fields: an error when Strict,
    /// warnings when Warn.
    /// With Strict, the error lists the body's unknown fields too, as
    /// upstream's one strict decoding error does.
    pub(super) fn check_duplicates(
        &self,
        registry: &Registry,
        res: &Resource,
        write: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        if self.duplicates.is_empty() || write.field_validation == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        if write.field_validation == FieldValidation::Strict {
            return Err(registry.strict_decoding_error(res, &self.value, &self.duplicates));
        }
        Ok(self
            .duplicates
            .iter()
            .map(|f| format!("duplicate field {f:?}"))
            .collect())
    }
}

pub(super) async fn read_bytes(req: Request<RequestBody>) -> Result<(String, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    // Read up to MAX_BODY; the rest of a larger body is left to Unread,
    // so the client sees the 413.
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(ApiError::too_large(MAX_BODY));
            }
            buf.extend_from_slice(&data);
        }
    }
    let bytes = buf.freeze();
    Ok((content_type, bytes))
}

fn parse_document(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if crate::api::proto::is_protobuf(content_type) {
        return crate::api::proto::decode(bytes)
            .map_err(|e| ApiError::bad_request(format!("cannot decode the protobuf body: {e}")));
    }
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/json" | "" | "*/*" => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            serde_yaml_ng::from_slice::<Value>(bytes).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub(super) async fn read_body(req: Request<RequestBody>) -> Result<Parsed, ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send the object as JSON or YAML",
        ));
    }
    let value = parse_document(&ct, &bytes)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let is_json = matches!(
        ct.split(';').next().unwrap_or_default().trim(),
        "application/json" | "" | "*/*"
    );
    let duplicates = if is_json {
        crate::api::duplicates::duplicate_fields(&bytes).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(Parsed { value, duplicates })
}

pub(super) async fn read_optional_body(
    req: Request<RequestBody>,
) -> Result<Option<Value>, ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_document(&ct, &bytes).map(Some)
}

/// A patch body, parsed.
pub(super) struct Patch {
    pub patch_type: PatchType,
    pub value: Value,
    /// For an apply body whose YAML repeats a key in a mapping: where, in
    /// yaml.v2's words (`line 11: key "foo" already set in map`). The
    /// parser keeps the last value.
    repeated_key: Option<String>,
}

impl Patch {
    /// Apply `fieldValidation` to a repeated YAML key, as upstream's apply
    /// handler does: a 400 when Strict, a warning when Warn.
    pub(super) fn check_repeated_keys(
        &self,
        write: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        let Some(at) = &self.repeated_key else {
            return Ok(Vec::new());
        };
        let cause = format!("error converting YAML to JSON: yaml: unmarshal errors:\n  {at}");
        match write.field_validation {
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "error strict decoding YAML: {cause}"
            ))),
            FieldValidation::Warn => Ok(vec![cause]),
            FieldValidation::Ignore => Ok(Vec::new()),
        }
    }
}

/// Where the YAML in `bytes` repeats a key of a mapping, if it does:
/// `line N: key "k" already set in map`, N the line of the repeat.
fn repeated_yaml_key(bytes: &[u8]) -> Option<String> {
    // Parsing into a YAML value (not JSON) refuses duplicate keys, naming
    // the key and where its mapping starts.
    let err = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(bytes).err()?;
    let message = err.to_string();
    let rest = &message[message.find("duplicate entry with key ")? + 25..];
    let key_text = rest.split(" at line ").next().unwrap_or(rest);
    let key: String = serde_json::from_str(key_text).unwrap_or_else(|_| key_text.to_owned());
    let start = err.location()?;
    // The repeat: the second line at the mapping's indentation that
    // starts with the key (block style); the mapping's line otherwise.
    let text = String::from_utf8_lossy(bytes);
    let indent = start.column().saturating_sub(1);
    let starts_with_key = |line: &str| {
        let Some(body) = line.get(indent..) else {
            return false;
        };
        line[..indent].trim().is_empty()
            && [key.clone(), format!("{key:?}"), format!("'{key}'")]
                .iter()
                .any(|k| {
                    body.strip_prefix(k.as_str())
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
    };
    let line = text
        .lines()
        .enumerate()
        .skip(start.line().saturating_sub(1))
        .filter(|(_, l)| starts_with_key(l))
        .nth(1)
        .map_or(start.line(), |(i, _)| i + 1);
    Some(format!("line {line}: key {key:?} already set in map"))
}

/// A CBOR value as the JSON it stands for: tags (the self-describing
/// 55799 upstream writes first) unwrapped, byte strings base64 as in JSON,
/// map keys text.
fn cbor_to_json(v: ciborium::Value) -> Result<Value, String> {
    use ciborium::Value as C;
    Ok(match v {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => {
            let i = i128::from(i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(n), _) => Value::from(n),
                (_, Ok(n)) => Value::from(n),
                _ => return Err(format!("integer {i} is out of range")),
            }
        }
        C::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"))?,
        C::Text(t) => Value::String(t),
        C::Bytes(b) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(cbor_to_json)
                .collect::<Result<_, _>>()?,
        ),
        C::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let C::Text(k) = k else {
                    return Err(format!("map keys must be text strings, not {k:?}"));
                };
                map.insert(k, cbor_to_json(v)?);
            }
            Value::Object(map)
        }
        C::Tag(_, inner) => cbor_to_json(*inner)?,
        other => return Err(format!("unsupported value {other:?}")),
    })
}

pub(super) async fn read_patch(req: Request<RequestBody>) -> Result<Patch, ApiError> {
    let (ct, bytes) = read_bytes(req).await?;
    let patch_type = PatchType::from_content_type(&ct).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
        )
    })?;
    let mut repeated_key = None;
    let cbor = ct.split(';').next().unwrap_or_default().trim() == "application/apply-patch+cbor";
    let value = if cbor {
        // CBOR as upstream's serializer writes it: self-described (tag
        // 55799, skipped like any tag), text keys.
        ciborium::de::from_reader::<ciborium::Value, _>(bytes.as_ref())
            .map_err(|e| e.to_string())
            .and_then(cbor_to_json)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid CBOR: {e}")))?
    } else if patch_type == PatchType::Apply {
        let value = serde_yaml_ng::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid YAML: {e}")))?;
        repeated_key = repeated_yaml_key(&bytes);
        value
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?
    };
    Ok(Patch {
        patch_type,
        value,
        repeated_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_described_cbor_decodes_as_json() {
        use ciborium::Value as C;
        let config = C::Map(vec![
            (C::Text("apiVersion".into()), C::Text("v1".into())),
            (C::Text("kind".into()), C::Text("ConfigMap".into())),
            (
                C::Text("data".into()),
                C::Map(vec![(C::Text("n".into()), C::Integer(3.into()))]),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&C::Tag(55799, Box::new(config)), &mut bytes).unwrap();
        assert_eq!(&bytes[..3], [0xd9, 0xd9, 0xf7]);
        let value = cbor_to_json(ciborium::de::from_reader(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"n": 3}})
        );
    }

    #[test]
    fn repeated_yaml_keys_are_found_where_they_repeat() {
        let yaml = "\napiVersion: v1\nkind: X\nspec:\n  unknown: 1\n  foo: a\n  bar:\n    foo: c\n  foo: b\n";
        assert_eq!(
            repeated_yaml_key(yaml.as_bytes()).as_deref(),
            Some("line 9: key \"foo\" already set in map")
        );
        assert_eq!(
            repeated_yaml_key(b"a: 1\nb: {c: 1, c: 2}\n").as_deref(),
            Some("line 2: key \"c\" already set in map")
        );
        assert_eq!(repeated_yaml_key(b"a: 1\nb: [1, 1]\n"), None);
    }

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&x"));
        assert_eq!(q["labelSelector"], ["app=web,tier in (a)"]);
        assert_eq!(q["watch"], ["1"]);
        assert_eq!(q["x"], [""]);
    }

    #[test]
    fn kubectl_accept_headers_negotiate() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(table)), Some(Representation::Table));
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf,application/json")),
            Some(Representation::Json)
        );
        assert_eq!(negotiate(None), Some(Representation::Json));
        assert_eq!(negotiate(Some("application/vnd.kubernetes.protobuf")), None);
    }
}
