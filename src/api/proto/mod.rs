//! Kubernetes protobuf request bodies, turned into JSON.
//!
//! Typed Kubernetes clients (kubectl's `create`, `auth whoami`, `drain`;
//! client-go's clientsets) send bodies as `application/vnd.kubernetes.protobuf`:
//! the magic `k8s\0`, then a `runtime.Unknown` envelope naming the
//! apiVersion/kind and carrying the object's protobuf encoding. The wire
//! layout of every type comes from `schema.txt` (generated from the
//! upstream `.proto` files by `scripts/gen-proto-schema.py`); the decoder
//! walks it generically and maps the few special types (Time, Quantity,
//! IntOrString, RawExtension) to their JSON forms.
//!
//! Go's protobuf encoder writes every non-pointer field, set or not, so an
//! empty string, a zero or `false` on the wire usually means "unset" and is
//! dropped (as Go's JSON `omitempty` would). Pointer fields are written
//! only when set, so there a zero matters (`replicas: 0`,
//! `automountServiceAccountToken: false`): [`POINTER_FIELDS`] lists those
//! names, whose zeros are kept. Responses are always JSON.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Value, json};

const SCHEMA: &str = include_str!("schema.txt");

/// Fields that are pointers in the Go types (`*int32`, `*bool`, …): a zero or
/// `false` sent for them is a value, not "unset".
const POINTER_FIELDS: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "shareProcessNamespace",
    "hostUsers",
    "setHostnameAsFQDN",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "fsGroup",
    "supplementalGroupsPolicy",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "completions",
    "parallelism",
    "suspend",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "manualSelector",
    "deletionGracePeriodSeconds",
    "defaultMode",
    "mode",
    "optional",
    "partition",
    "priority",
    "expirationSeconds",
    "leaseDurationSeconds",
    "leaseTransitions",
    "immutable",
    "allocateLoadBalancerNodePorts",
    "ready",
    "serving",
    "terminating",
    "tolerationSeconds",
    "gracePeriodSeconds",
    "orphanDependents",
    "controller",
    "blockOwnerDeletion",
    "maxSurge",
    "maxUnavailable",
    "sizeLimit",
    "healthCheckNodePort",
    "count",
    "limit",
    "sinceSeconds",
    "tailLines",
    "limitBytes",
    "podReplacementPolicy",
    "ordinals",
    "start",
];
const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug)]
enum Label {
    One,
    Rep,
    Map,
}

#[derive(Debug)]
struct Field {
    name: String,
    label: Label,
    /// A scalar type name or a fully-qualified message name.
    ty: String,
}

type Schema = HashMap<String, HashMap<u64, Field>>;

fn schema() -> &'static Schema {
    static SCHEMA_MAP: OnceLock<Schema> = OnceLock::new();
    SCHEMA_MAP.get_or_init(|| {
        let mut out: Schema = HashMap::new();
        let mut current: Option<String> = None;
        for line in SCHEMA.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix("message ") {
                current = Some(name.to_owned());
                out.entry(name.to_owned()).or_default();
                continue;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            let (Some(msg), [num, name, label, rest @ ..]) = (&current, parts.as_slice()) else {
                continue;
            };
            let Ok(num) = num.parse::<u64>() else {
                continue;
            };
            let (label, ty) = match (*label, rest) {
                ("map", [k, v]) => {
                    debug_assert_eq!(*k, "string", "Kubernetes maps have string keys");
                    (Label::Map, (*v).to_owned())
                }
                ("rep", [t]) => (Label::Rep, (*t).to_owned()),
                (_, [t]) => (Label::One, (*t).to_owned()),
                _ => continue,
            };
            out.get_mut(msg).expect("message inserted above").insert(
                num,
                Field {
                    name: (*name).to_owned(),
                    label,
                    ty,
                },
            );
        }
        out
    })
}

/// The protobuf package of an API group.
fn package(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if matches!(
        kind,
        "DeleteOptions"
            | "CreateOptions"
            | "UpdateOptions"
            | "PatchOptions"
            | "Status"
            | "ListOptions"
            | "GetOptions"
    ) {
        return "k8s.io.apimachinery.pkg.apis.meta.v1".into();
    }
    let short = group.split('.').next().unwrap_or_default();
    let short = if short.is_empty() { "core" } else { short };
    format!("k8s.io.api.{short}.{version}")
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated field")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn read_field<'a>(r: &mut Reader<'a>) -> Result<(u64, Wire<'a>), String> {
    let key = r.varint()?;
    let (num, wt) = (key >> 3, key & 7);
    let wire = match wt {
        0 => Wire::Varint(r.varint()?),
        1 => Wire::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"))),
        2 => {
            let n = usize::try_from(r.varint()?).map_err(|_| "length too large")?;
            Wire::Bytes(r.take(n)?)
        }
        5 => Wire::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"))),
        other => return Err(format!("unsupported wire type {other}")),
    };
    Ok((num, wire))
}

fn rfc3339(seconds: i64, nanos: i64, micro: bool) -> Value {
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let Ok(ts) = jiff::Timestamp::new(seconds, i32::try_from(nanos).unwrap_or(0)) else {
        return Value::Null;
    };
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S.%6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    json!(ts.strftime(fmt).to_string())
}

fn scalar(ty: &str, wire: &Wire<'_>) -> Result<Value, String> {
    Ok(match (ty, wire) {
        ("string", Wire::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        ("bytes", Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        ("bool", Wire::Varint(v)) => json!(*v != 0),
        ("int32", Wire::Varint(v)) => json!(*v as i64 as i32),
        ("int64", Wire::Varint(v)) => json!(*v as i64),
        ("uint32" | "uint64", Wire::Varint(v)) => json!(*v),
        ("double", Wire::Fixed64(v)) => json!(f64::from_bits(*v)),
        ("float", Wire::Fixed32(v)) => json!(f32::from_bits(*v)),
        _ => return Err(format!("field of type {ty} has an unexpected wire type")),
    })
}

fn is_scalar(ty: &str) -> bool {
    !ty.contains('.')
}

/// Decode one value of type `ty` from its wire form.
fn value(ty: &str, wire: &Wire<'_>, depth: usize) -> Result<Value, String> {
    if is_scalar(ty) {
        return scalar(ty, wire);
    }
    let Wire::Bytes(bytes) = wire else {
        return Err(format!("message {ty} is not length-delimited"));
    };
    let short = ty.rsplit('.').next().unwrap_or(ty);
    match (short, ty.contains("apimachinery")) {
        ("Time" | "MicroTime", true) => {
            let m = message(ty, bytes, depth + 1)?;
            let secs = m.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            let nanos = m.get("nanos").and_then(Value::as_i64).unwrap_or(0);
            Ok(rfc3339(secs, nanos, short == "MicroTime"))
        }
        ("Quantity", true) => Ok(message(ty, bytes, depth + 1)?
            .get("string")
            .cloned()
            .unwrap_or(json!("0"))),
        ("IntOrString", true) => {
            let m = message(ty, bytes, depth + 1)?;
            Ok(if m.get("type").and_then(Value::as_i64) == Some(1) {
                m.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                m.get("intVal").cloned().unwrap_or(json!(0))
            })
        }
        ("RawExtension" | "FieldsV1", true) => {
            let mut r = Reader::new(bytes);
            while !r.done() {
                if let (1, Wire::Bytes(raw)) = read_field(&mut r)? {
                    return serde_json::from_slice(raw)
                        .map_err(|e| format!("embedded object is not JSON: {e}"));
                }
            }
            Ok(Value::Null)
        }
        ("Duration", true) => {
            let m = message(ty, bytes, depth + 1)?;
            let ns = m.get("duration").and_then(Value::as_i64).unwrap_or(0);
            Ok(json!(format!("{}s", ns as f64 / 1e9)))
        }
        _ => Ok(Value::Object(message(ty, bytes, depth + 1)?)),
    }
}

/// Decode a message of type `ty`; empty strings and nulls are left out.
fn message(ty: &str, bytes: &[u8], depth: usize) -> Result<Map<String, Value>, String> {
    if depth > 64 {
        return Err("message nesting too deep".into());
    }
    let fields = schema()
        .get(ty)
        .ok_or_else(|| format!("unknown protobuf message {ty}"))?;
    let mut out = Map::new();
    let mut r = Reader::new(bytes);
    while !r.done() {
        let (num, wire) = read_field(&mut r)?;
        let Some(field) = fields.get(&num) else {
            continue;
        };
        match &field.label {
            Label::One => {
                let v = value(&field.ty, &wire, depth)?;
                let zero = match &v {
                    Value::Null => true,
                    Value::String(s) => s.is_empty() && field.name != "storageClassName",
                    Value::Bool(false) => !POINTER_FIELDS.contains(&field.name.as_str()),
                    Value::Number(n) => {
                        n.as_f64() == Some(0.0) && !POINTER_FIELDS.contains(&field.name.as_str())
                    }
                    _ => false,
                };
                if zero {
                    continue;
                }
                out.insert(field.name.clone(), v);
            }
            Label::Rep => {
                let list = out.entry(field.name.clone()).or_insert_with(|| json!([]));
                let list = list.as_array_mut().ok_or("repeated field is not a list")?;
                match (
                    &wire,
                    is_scalar(&field.ty) && field.ty != "string" && field.ty != "bytes",
                ) {
                    // Packed repeated numbers.
                    (Wire::Bytes(packed), true) => {
                        let mut pr = Reader::new(packed);
                        while !pr.done() {
                            let w = match field.ty.as_str() {
                                "double" | "fixed64" => Wire::Fixed64(u64::from_le_bytes(
                                    pr.take(8)?.try_into().expect("8 bytes"),
                                )),
                                "float" | "fixed32" => Wire::Fixed32(u32::from_le_bytes(
                                    pr.take(4)?.try_into().expect("4 bytes"),
                                )),
                                _ => Wire::Varint(pr.varint()?),
                            };
                            list.push(scalar(&field.ty, &w)?);
                        }
                    }
                    _ => list.push(value(&field.ty, &wire, depth)?),
                }
            }
            Label::Map => {
                let Wire::Bytes(entry) = wire else {
                    return Err(format!(
                        "map entry of {} is not length-delimited",
                        field.name
                    ));
                };
                let mut er = Reader::new(entry);
                let (mut key, mut val) = (String::new(), Value::Null);
                while !er.done() {
                    match read_field(&mut er)? {
                        (1, Wire::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, w) => val = value(&field.ty, &w, depth)?,
                        _ => {}
                    }
                }
                if val.is_null() {
                    val = if is_scalar(&field.ty) {
                        scalar(&field.ty, &Wire::Bytes(&[]))?
                    } else {
                        json!({})
                    };
                }
                let map = out.entry(field.name.clone()).or_insert_with(|| json!({}));
                map.as_object_mut()
                    .ok_or("map field is not an object")?
                    .insert(key, val);
            }
        }
    }
    Ok(out)
}

/// Is this the Kubernetes protobuf media type?
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().map(str::trim) == Some("application/vnd.kubernetes.protobuf")
}

/// Decode a `k8s\0`-framed protobuf body to the object's JSON.
///
/// # Errors
/// A message saying what is malformed or which type is not known.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf magic bytes")?;
    let unknown = message("k8s.io.apimachinery.pkg.runtime.Unknown", envelope, 0)?;
    let api_version = unknown.pointer_str("typeMeta", "apiVersion");
    let kind = unknown.pointer_str("typeMeta", "kind");
    if kind.is_empty() {
        return Err("the protobuf envelope names no kind".into());
    }
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let ty = format!("{}.{kind}", package(&api_version, &kind));
    let mut obj = message(&ty, &raw, 0)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

trait PointerStr {
    fn pointer_str(&self, a: &str, b: &str) -> String;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, a: &str, b: &str) -> String {
        self.get(a)
            .and_then(|v| v.get(b))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

#[cfg(test)]
mod tests;
