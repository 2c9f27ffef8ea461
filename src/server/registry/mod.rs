//! The registry: what happens to an object between the HTTP layer and the
//! store. The generic part lives here: system metadata (uid, timestamps,
//! generation, resourceVersion), spec/status separation, optimistic
//! concurrency, finalizers, graceful deletion, orphaning and lists. What
//! differs per kind (typed decoding, defaulting, validation, initial
//! status, allocations, graceful deletion, table rows) is the kind's
//! [`strategy::Strategy`], found by the catalog entry ([`strategy::of`]);
//! this file names no kind. Every write passes the admission chain
//! ([`crate::server::admission`]): mutating plugins after defaulting,
//! validating ones after validation. Controllers and the scheduler write
//! through here too, so every writer gets the same rules.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; reads put
//! the store revision there. No object is stored larger than etcd's
//! default request limit ([`MAX_STORED_BYTES`]), whatever the backend.

#![forbid(unsafe_code)]

pub mod kinds;
mod services;
pub mod strategy;
mod typed;

use std::sync::{Arc, LazyLock, Mutex, RwLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::api::catalog::{Catalog, Resource};
use crate::api::managed;
use crate::api::patch::{self, PatchType};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::{ApiError, FieldError, Target};
use crate::api::validation;
use crate::server::admission::{self, Attributes, Operation};
use crate::server::auth::User;
use crate::store::{self, KeyValue, ListOptions, Revision, Store};

pub use services::{Allocator, Held, ServiceRanges};
use strategy::Strategy;

/// How unknown fields in a request body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who writes, for admission; `None` for the server's own writers.
    pub user: Option<User>,
    /// The manager the write's fields are tracked under (`fieldManager`,
    /// or the client's user agent); `None` for the server's own writers.
    pub field_manager: Option<String>,
    /// `force` of an apply patch: take fields other managers own.
    pub force: bool,
}

impl WriteOptions {
    /// Who admission sees writing: the client, or [`LOOPBACK`].
    pub fn user(&self) -> &User {
        self.user.as_ref().unwrap_or(&LOOPBACK)
    }

    /// Who the write's fields are tracked under. The server's own writers
    /// are its controllers, upstream's `kube-controller-manager`.
    pub fn manager(&self) -> &str {
        self.field_manager
            .as_deref()
            .unwrap_or("kube-controller-manager")
    }
}

/// How a write's managed fields are kept.
enum Track {
    /// An update by `WriteOptions::manager`: computed from the change.
    Update,
    /// Already computed (an apply): stored as they are.
    Applied,
}

/// Who the server's own writes (controllers, the scheduler, bootstrap)
/// are admitted as: upstream's loopback client.
pub static LOOPBACK: LazyLock<User> =
    LazyLock::new(|| User::new("system:apiserver", &["system:masters"]));

/// A write's result: the object as stored, and warnings for the client.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// The write created the object (an apply to a missing object).
    pub created: bool,
}

/// `DeleteOptions` fields the registry honours.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
    /// Who deletes, for admission; `None` for the server's own writers.
    pub user: Option<User>,
    /// Admitted already as another write (an eviction's create), so the
    /// delete itself is not admitted again, as upstream's eviction
    /// deletes with `rest.ValidateAllObjectFunc`.
    pub admitted: bool,
}

impl DeleteOptions {
    /// Who admission sees deleting: the client, or [`LOOPBACK`].
    pub fn user(&self) -> &User {
        self.user.as_ref().unwrap_or(&LOOPBACK)
    }
}

/// An object as stored: JSON without `metadata.resourceVersion`, and the
/// revision that goes there. Lists keep objects in this form so that large
/// lists are written out without building a JSON tree per object.
#[derive(Debug, Clone)]
pub struct RawObject {
    pub json: Vec<u8>,
    pub revision: Revision,
}

impl RawObject {
    /// The object as clients see it.
    ///
    /// # Errors
    /// A stored value that is not JSON (500).
    pub fn decode(&self) -> Result<Value, ApiError> {
        let mut obj: Value = serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("corrupt stored object: {e}")))?;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.revision.0.to_string()));
        Ok(obj)
    }

    /// Append the object's JSON, with its resourceVersion, to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let rv = format!("\"resourceVersion\":\"{}\"", self.revision.0);
        match metadata_open_brace(&self.json) {
            Some(i) => {
                out.extend_from_slice(&self.json[..=i]);
                out.extend_from_slice(rv.as_bytes());
                if self.json.get(i + 1) != Some(&b'}') {
                    out.push(b',');
                }
                out.extend_from_slice(&self.json[i + 1..]);
            }
            None => out.extend_from_slice(&self.json),
        }
    }
}

/// The index of the `{` that opens the top-level `"metadata"` object, found
/// by a scan that skips strings and nested values.
fn metadata_open_brace(json: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && &json[start..i.min(json.len())] == b"metadata" {
                    let mut j = i + 1;
                    while j < json.len() && (json[j] == b':' || json[j].is_ascii_whitespace()) {
                        j += 1;
                    }
                    if json.get(j) == Some(&b'{') {
                        return Some(j);
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// What a list returns.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<RawObject>,
    pub revision: Revision,
    pub continue_token: Option<String>,
}

impl ListResult {
    /// Every item decoded (for callers that work on a few objects).
    ///
    /// # Errors
    /// A stored value that is not JSON.
    pub fn decoded(&self) -> Result<Vec<Value>, ApiError> {
        self.items.iter().map(RawObject::decode).collect()
    }
}

/// List parameters after parsing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// Read at exactly this revision (`resourceVersionMatch=Exact`).
    pub exact_revision: Option<Revision>,
}

pub struct Registry {
    pub store: Store,
    /// What is served: the built-in kinds and the custom resources
    /// installed so far ([`Registry::install_custom`]), swapped whole.
    served: RwLock<Arc<Catalog>>,
    allocator: Mutex<Allocator>,
    /// The admission plugins every write passes.
    admission: admission::Chain,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// How the field manager reads objects of `res`, written through
/// `subresource`.
fn typer<'a>(res: &'a Resource, subresource: Option<&str>) -> managed::Typer<'a> {
    let components = crate::api::components::structure();
    let shape = match &res.custom {
        Some(custom) => managed::Shape::new(&custom.merge_schema, Some(components)),
        None => match crate::api::components::of_kind(&res.group, &res.version, &res.kind) {
            Some(name) => managed::Shape::component(name, components),
            None => managed::Shape::deduced(),
        },
    };
    let scope = match subresource {
        Some("status") => managed::Scope::Status,
        _ if res.has_status() => managed::Scope::NotStatus,
        _ => managed::Scope::Whole,
    };
    managed::Typer { shape, scope }
}

fn writer<'a>(
    api_version: &'a str,
    subresource: Option<&'a str>,
    opts: &'a WriteOptions,
    now: &'a str,
) -> managed::Writer<'a> {
    managed::Writer {
        manager: opts.manager(),
        api_version,
        subresource: subresource.unwrap_or_default(),
        now,
    }
}

/// `apps/v1` as Go prints a GroupVersion (`/v1` for the core group).
fn gv_string(res: &Resource) -> String {
    format!("{}/{}", res.group, res.version)
}

/// What upstream checks of an apply configuration before merging it.
fn check_apply_config(
    res: &Resource,
    api_version: &str,
    name: &str,
    config: &Value,
) -> Result<(), ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    let sent_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sent_kind = config
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if sent_version != api_version || sent_kind != res.kind {
        let (group, version) = match sent_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", sent_version),
        };
        return Err(ApiError::bad_request(format!(
            "invalid object type: {group}/{version}, Kind={sent_kind}"
        )));
    }
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let sent_name = config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !sent_name.is_empty() && sent_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({sent_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// An apply's failure as the API answers it: a 409 listing each
/// conflicting field and its manager, or upstream's 500 for a
/// configuration that does not fit the schema.
fn apply_error(e: managed::ApplyError, typed: &dyn Fn(String) -> ApiError) -> ApiError {
    match e {
        managed::ApplyError::Conflicts(conflicts) => {
            let mut err = ApiError::new(409, "Conflict", managed::conflict_message(&conflicts));
            err.details = Some(Box::new(crate::api::status::Details {
                causes: conflicts
                    .iter()
                    .map(|c| crate::api::status::Cause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with {}", c.manager),
                        field: managed::path::display(&c.path),
                    })
                    .collect(),
                ..Default::default()
            }));
            err
        }
        managed::ApplyError::Typed(msg) => typed(msg),
    }
}

/// Store `tracked` as the object's `metadata.managedFields`.
fn set_managed(obj: &mut Value, tracked: &managed::Managed) {
    match tracked.encode() {
        Some(list) => {
            meta_mut(obj).insert("managedFields".into(), list);
        }
        None => {
            meta_mut(obj).remove("managedFields");
        }
    }
}

fn target<'a>(res: &'a Resource, name: &'a str) -> Target<'a> {
    Target {
        group: &res.group,
        resource: &res.plural,
        name,
    }
}

fn meta(obj: &Value) -> &Value {
    obj.get("metadata").unwrap_or(&Value::Null)
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    meta(obj)
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `obj` (whose resourceVersion was removed) is `old` but for
/// old's resourceVersion: a no-op write. Compared in place, as objects can
/// be megabytes.
fn same_but_resource_version(obj: &Value, old: &Value) -> bool {
    let (Some(new), Some(old)) = (obj.as_object(), old.as_object()) else {
        return obj == old;
    };
    new.len() == old.len()
        && new.iter().all(|(key, value)| match (value, old.get(key)) {
            (Value::Object(new_meta), Some(Value::Object(old_meta))) if key == "metadata" => {
                let old_rv = usize::from(old_meta.contains_key("resourceVersion"));
                !new_meta.contains_key("resourceVersion")
                    && new_meta.len() + old_rv == old_meta.len()
                    && new_meta.iter().all(|(k, v)| old_meta.get(k) == Some(v))
            }
            (value, old) => old == Some(value),
        })
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// Everything but metadata and status: what a generation counts.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Random suffix for `generateName`, from upstream's alphabet (no vowels, no
/// look-alike characters).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn store_error(res: &Resource, name: &str, err: store::Error) -> ApiError {
    match err {
        store::Error::AlreadyExists { .. } => ApiError::already_exists(target(res, name)),
        store::Error::NotFound { .. } => ApiError::not_found(target(res, name)),
        store::Error::Conflict { .. } => ApiError::modified(target(res, name)),
        store::Error::Compacted {
            requested,
            compacted,
        } => ApiError::gone(format!(
            "The resourceVersion for the provided list is too old ({requested}, oldest is {compacted}). You can start a new list without the continue parameter or resourceVersion."
        )),
        store::Error::FutureRevision { requested, current } => {
            ApiError::too_large_resource_version(requested.0, current.0)
        }
        store::Error::InvalidContinue { reason, .. } => {
            ApiError::bad_request(format!("invalid continue token: {reason}"))
        }
        other => {
            // The full error (with the database path) is for the log only.
            tracing::error!(err = %other, "store failure");
            ApiError::internal_occurred(&other.public_message())
        }
    }
}

/// The object as clients see it: stored JSON plus resourceVersion.
/// A custom object as the version it is served at: conversion `None`
/// rewrites the apiVersion and nothing else; and the version's schema
/// defaults are filled in as it is read, as upstream fills them when it
/// decodes from storage (so a default added to the schema shows on old
/// objects).
pub fn served_version(res: &Resource, obj: &mut Value) {
    let Some(custom) = &res.custom else {
        return;
    };
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(res.api_version()));
    }
    if custom.has_defaults {
        crate::api::schema::default(&custom.schema, obj);
    }
}

/// A custom object as its definition's storage version.
fn stored_version(res: &Resource, obj: &mut Value) {
    if let Some(custom) = &res.custom
        && let Some(o) = obj.as_object_mut()
    {
        o.insert(
            "apiVersion".into(),
            Value::String(format!("{}/{}", res.group, custom.storage_version)),
        );
    }
}

/// [`served_version`] for stored bytes: those of another version are
/// decoded, rewritten and encoded again; the rest pass untouched.
fn served_version_raw(res: &Resource, json: Vec<u8>) -> Vec<u8> {
    let Some(custom) = &res.custom else {
        return json;
    };
    // Stored objects are written with sorted keys, so the top-level
    // apiVersion leads (one nested in managedFields must not be mistaken
    // for it); anything else is decoded to be sure.
    let wanted = format!("{{\"apiVersion\":{}", Value::String(res.api_version()));
    if json.starts_with(wanted.as_bytes()) && !custom.has_defaults {
        return json;
    }
    match serde_json::from_slice::<Value>(&json) {
        Ok(mut obj) => {
            served_version(res, &mut obj);
            serde_json::to_vec(&obj).unwrap_or(json)
        }
        Err(_) => json,
    }
}

fn decode_kv(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    meta_mut(&mut obj).insert(
        "resourceVersion".into(),
        json!(kv.mod_revision.0.to_string()),
    );
    Ok(obj)
}

/// The most bytes one write may store, key and value together: etcd's
/// default `--max-request-bytes` (1.5 MiB). Upstream's limit comes from
/// etcd refusing the request; ours is checked before any backend, so an
/// object that would not fit in a default etcd is refused on SQLite too and
/// a store moved to etcd holds nothing etcd could not. Upstream counts the
/// protobuf encoding (JSON for custom resources) plus a few bytes of
/// request framing; we count the stored JSON, which for built-in kinds is
/// somewhat larger, so an object near the limit that upstream stores may be
/// refused here. Request bodies have their own limit, 3 MiB
/// (`server::api::MAX_BODY`); ConfigMap and Secret data their 1 MiB.
pub const MAX_STORED_BYTES: usize = 1536 * 1024;

/// The bytes to store for `obj` at `key`, at most [`MAX_STORED_BYTES`].
/// Like upstream's create, update and patch handlers, an object too large
/// loses its `managedFields` (which can be large) and is tried once more;
/// `obj` is then what gets stored.
///
/// # Errors
/// Upstream's answer to etcd's refusal, 500 "etcdserver: request is too
/// large", when the object does not fit.
fn fit_for_store(key: &str, obj: &mut Value) -> Result<Vec<u8>, ApiError> {
    let fits = |bytes: &[u8]| key.len() + bytes.len() <= MAX_STORED_BYTES;
    let bytes = encode(obj);
    if fits(&bytes) {
        return Ok(bytes);
    }
    if meta_mut(obj).remove("managedFields").is_some() {
        let bytes = encode(obj);
        if fits(&bytes) {
            return Ok(bytes);
        }
    }
    tracing::debug!(key, bytes = bytes.len(), "object too large to store");
    Err(ApiError::storage_request_too_large())
}

/// The bytes stored for `obj`: its JSON without `metadata.resourceVersion`
/// (the store's revision is the truth), written straight from `obj`
/// rather than from a copy, as objects can be megabytes.
fn encode(obj: &Value) -> Vec<u8> {
    use serde::ser::{Serialize, SerializeMap, Serializer};
    struct Stored<'a>(&'a Value);
    struct Meta<'a>(&'a Map<String, Value>);
    impl Serialize for Stored<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Value::Object(fields) = self.0 else {
                return self.0.serialize(s);
            };
            let mut map = s.serialize_map(Some(fields.len()))?;
            for (key, value) in fields {
                match value {
                    Value::Object(meta) if key == "metadata" => {
                        map.serialize_entry(key, &Meta(meta))?
                    }
                    value => map.serialize_entry(key, value)?,
                }
            }
            map.end()
        }
    }
    impl Serialize for Meta<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            for (key, value) in self.0.iter().filter(|(k, _)| *k != "resourceVersion") {
                map.serialize_entry(key, value)?;
            }
            map.end()
        }
    }
    serde_json::to_vec(&Stored(obj)).expect("a JSON value always serialises")
}

fn parse_rv(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<u64>().map(Revision).map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: {rv:?}: must be a non-negative integer"
        ))
    })
}

/// A body that does not decode, in upstream's transformDecodeError's
/// words (the version alone, not the group).
fn cannot_handle(res: &Resource, cause: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {cause}",
        res.kind, res.version, res.kind
    ))
}

/// The names of fields in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

impl Registry {
    /// A registry over `store` whose writes pass `admission`, with
    /// allocations rebuilt from stored Services.
    ///
    /// # Errors
    /// When the stored Services cannot be read.
    pub async fn new(
        store: Store,
        ranges: ServiceRanges,
        admission: admission::Chain,
    ) -> Result<Arc<Self>, ApiError> {
        let registry = Self {
            store,
            served: RwLock::new(Arc::new(Catalog::builtin())),
            allocator: Mutex::new(Allocator::new(ranges)),
            admission,
        };
        for res in registry.catalog().resources() {
            let strategy = strategy::of(res);
            if !strategy.holds_allocations() {
                continue;
            }
            let page = registry
                .store
                .list(&res.key_prefix(), ListOptions::default())
                .await
                .map_err(|e| store_error(res, "", e))?;
            for kv in &page.items {
                strategy.restore(&registry.ctx(), &decode_kv(kv)?);
            }
        }
        Ok(Arc::new(registry))
    }

    /// What strategies may use: the allocator.
    fn ctx(&self) -> strategy::Context<'_> {
        strategy::Context {
            allocator: &self.allocator,
        }
    }

    /// The strategy of a resource: its kind's, a custom resource's
    /// (built from its definition), or the generic one.
    pub fn strategy(&self, res: &Resource) -> Arc<dyn Strategy> {
        strategy::of(res)
    }

    /// What is served now: the catalog of built-in kinds and installed
    /// custom resources.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.served.read().expect("served lock").clone()
    }

    /// Serve these custom resources instead of those served before (the
    /// built-in kinds stay).
    pub fn install_custom(&self, custom: Vec<Resource>) {
        let catalog = Catalog::builtin().with_custom(custom);
        *self.served.write().expect("served lock") = Arc::new(catalog);
    }

    pub fn service_ranges(&self) -> ServiceRanges {
        self.allocator.lock().expect("allocator lock").ranges
    }

    /// The admission chain, to hand its plugins what they read (see
    /// [`admission::Chain::use_namespace_cache`]).
    pub fn admission(&self) -> &admission::Chain {
        &self.admission
    }

    pub fn resource(&self, group: &str, plural: &str) -> Option<Resource> {
        self.catalog().find(group, "v1", plural).cloned()
    }

    /// Read one object.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub async fn get(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        Ok(self.get_kv(res, namespace, name).await?.1)
    }

    async fn get_kv(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(KeyValue, Value), ApiError> {
        let key = res.key(namespace, name);
        let kv = self
            .store
            .get(&key, None)
            .await
            .map_err(|e| store_error(res, name, e))?
            .ok_or_else(|| ApiError::not_found(target(res, name)))?;
        let mut obj = decode_kv(&kv)?;
        served_version(res, &mut obj);
        Ok((kv, obj))
    }

    /// List objects, filtered by selectors, paged by `limit`/`continue`.
    ///
    /// # Errors
    /// 410 for a continue token or revision that has been compacted.
    pub async fn list(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        query: &ListQuery,
    ) -> Result<ListResult, ApiError> {
        let mut prefix = res.list_prefix(namespace);
        // A selector on the namespace narrows the scan to that namespace.
        if res.namespaced
            && namespace.is_none()
            && let Some(ns) = query.fields.required("metadata.namespace")
        {
            prefix = res.list_prefix(Some(ns));
        }
        let filtered = !query.labels.is_empty() || !query.fields.is_empty();
        let mut items = Vec::new();
        let mut token = query.continue_token.clone();
        let mut revision = query.exact_revision;
        loop {
            // Unfiltered lists page exactly; filtered ones read big pages
            // and stop at the limit themselves.
            let page_size = match (query.limit, filtered) {
                (Some(l), false) => Some(l - items.len()),
                (Some(l), true) => Some((l - items.len()).max(500)),
                (None, _) => None,
            };
            let page = self
                .store
                .list(
                    &prefix,
                    ListOptions {
                        revision: if token.is_some() { None } else { revision },
                        limit: page_size,
                        continue_token: token.clone(),
                    },
                )
                .await
                .map_err(|e| match e {
                    store::Error::Compacted { .. } if token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => store_error(res, "", other),
                })?;
            revision = Some(page.revision);
            token = page.continue_token;
            let count = page.items.len();
            for (n, kv) in page.items.into_iter().enumerate() {
                let raw = RawObject {
                    json: served_version_raw(res, kv.value),
                    revision: kv.mod_revision,
                };
                if filtered {
                    let obj = raw.decode()?;
                    if !(query.labels.matches_object(&obj) && query.fields.matches(&obj)) {
                        continue;
                    }
                }
                items.push(raw);
                if query.limit.is_some_and(|l| items.len() >= l) {
                    // Stop here; the next page starts after this key (unless
                    // it was the last one there is).
                    if n + 1 < count {
                        token = Some(
                            store::ContinueToken {
                                revision: page.revision,
                                last_key: kv.key,
                            }
                            .encode(),
                        );
                    }
                    break;
                }
            }
            let full = query.limit.is_some_and(|l| items.len() >= l);
            if token.is_none() || full {
                break;
            }
        }
        Ok(ListResult {
            items,
            revision: revision.unwrap_or_default(),
            continue_token: token,
        })
    }

    /// The 400 a Strict write gets for `duplicates` (fields a JSON body
    /// repeats) and the unknown fields of `obj`, as upstream's strict
    /// decoding words it: a custom resource's duplicates first, as its
    /// decoder finds them before pruning; a built-in kind's unknown fields
    /// first.
    pub fn strict_decoding_error(
        &self,
        res: &Resource,
        obj: &Value,
        duplicates: &[String],
    ) -> ApiError {
        let mut unknown = Vec::new();
        if let Some(Ok(typed)) = self.strategy(res).round_trip(obj) {
            unknown_fields(obj, &typed, "", &mut unknown);
        }
        let unknown = unknown.iter().map(|f| format!("unknown field {f:?}"));
        let duplicates = duplicates.iter().map(|f| format!("duplicate field {f:?}"));
        let all: Vec<String> = if res.custom.is_some() {
            duplicates.chain(unknown).collect()
        } else {
            unknown.chain(duplicates).collect()
        };
        cannot_handle(res, &format!("strict decoding error: {}", all.join(", ")))
    }

    /// Check the typed schema: wrong types are a 400, unknown fields a 400
    /// (Strict) or a warning (Warn). Returns the object pruned to known fields.
    fn decode(
        &self,
        res: &Resource,
        obj: Value,
        validation: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value, ApiError> {
        let Some(typed) = self.strategy(res).round_trip(&obj) else {
            return Ok(obj);
        };
        let cannot_handle = |cause: String| cannot_handle(res, &cause);
        let typed = typed.map_err(|e| cannot_handle(e.to_string()))?;
        if validation != FieldValidation::Ignore {
            let mut unknown = Vec::new();
            unknown_fields(&obj, &typed, "", &mut unknown);
            if !unknown.is_empty() {
                let msgs: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                if validation == FieldValidation::Strict {
                    return Err(cannot_handle(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )));
                }
                warnings.extend(msgs);
            }
        }
        Ok(typed)
    }

    /// Check apiVersion/kind against the URL's resource and fill them in.
    fn check_type(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        let api_version = res.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(res.kind),
            Some(k) if k == res.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({}); send it to the {} endpoint",
                    res.kind,
                    k.to_lowercase()
                )));
            }
        }
        Ok(())
    }

    fn validate(&self, res: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let strategy = self.strategy(res);
        let mut errs = Vec::new();
        validation::validate_meta(obj, strategy.name_rule(), res.namespaced, &mut errs);
        strategy.validate_object(obj, old, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                &res.group,
                &res.kind,
                meta_str(obj, "name"),
                errs,
            ))
        }
    }

    /// Create an object from a client's body.
    ///
    /// # Errors
    /// 400 for a malformed body, 409 when the name is taken, 422 when
    /// invalid, and what admission refuses (404/403 for a missing or
    /// terminating namespace).
    pub async fn create(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        self.create_with(res, namespace, obj, opts, Track::Update)
            .await
    }

    async fn create_with(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
        track: Track,
    ) -> Result<Written, ApiError> {
        Self::check_type(res, &mut obj)?;
        let mut warnings = Vec::new();
        let sent_managed = meta(&obj).get("managedFields").cloned();
        {
            let m = meta_mut(&mut obj);
            if res.namespaced {
                let body_ns = m
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match namespace {
                    Some(ns) if body_ns.is_empty() => {
                        m.insert("namespace".into(), json!(ns));
                    }
                    Some(ns) if body_ns != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    _ => {}
                }
            } else {
                m.remove("namespace");
            }
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty()
                && let Some(prefix) = m.get("generateName").and_then(Value::as_str)
                && !prefix.is_empty()
            {
                let generated = format!("{prefix}{}", name_suffix());
                m.insert("name".into(), json!(generated));
            }
            // Fields only the system sets.
            for key in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
                "managedFields",
            ] {
                m.remove(key);
            }
        }
        let strategy = self.strategy(res);
        let mut obj = self.decode(res, obj, opts.field_validation, &mut warnings)?;
        strategy.defaults(&mut obj);
        let ns = meta_str(&obj, "namespace").to_owned();
        let name = meta_str(&obj, "name").to_owned();
        let attrs = Attributes {
            user: opts.user(),
            operation: Operation::Create,
            resource: res,
            subresource: None,
            namespace: (!ns.is_empty()).then_some(ns.as_str()),
            name: &name,
            old_object: None,
            dry_run: opts.dry_run,
        };
        self.admission.admit(&attrs, &mut obj, self).await?;
        let uid = uuid::Uuid::new_v4().to_string();
        {
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(uid));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if strategy.tracks_generation() {
                m.insert("generation".into(), json!(1));
            }
        }
        strategy.prepare_create(&self.ctx(), res, &mut obj);
        self.validate(res, &obj, None)?;
        self.admission.validate(&attrs, &obj, self).await?;
        match (track, sent_managed) {
            (Track::Update, sent) => {
                let typer = typer(res, None);
                let mut sent_obj = json!({"metadata": {}});
                if let Some(sent) = sent {
                    sent_obj["metadata"]["managedFields"] = sent;
                }
                let start = managed::incoming(&Value::Null, &sent_obj, false);
                let (now, api_version) = (now_rfc3339(), res.api_version());
                let w = writer(&api_version, None, opts, &now);
                let tracked = typer.update(&typer.zero(), &obj, start, &w);
                set_managed(&mut obj, &tracked);
            }
            (Track::Applied, Some(sent)) => {
                meta_mut(&mut obj).insert("managedFields".into(), sent);
            }
            (Track::Applied, None) => {}
        }
        let undo = strategy
            .allocate(&self.ctx(), &mut obj, None)
            .map_err(|errs| ApiError::invalid(&res.group, &res.kind, &name, errs))?;
        let release = |undo: Option<strategy::Undo>| {
            if let Some(u) = undo {
                u.run(&self.ctx());
            }
        };
        if opts.dry_run {
            release(undo);
            return Ok(Written {
                object: obj,
                warnings,
                created: false,
            });
        }
        let key = res.key(Some(&ns), &name);
        stored_version(res, &mut obj);
        let fitted = fit_for_store(&key, &mut obj);
        served_version(res, &mut obj);
        let bytes = match fitted {
            Ok(bytes) => bytes,
            Err(e) => {
                release(undo);
                return Err(e);
            }
        };
        match self.store.create(&key, bytes).await {
            Ok(kv) => {
                meta_mut(&mut obj).insert(
                    "resourceVersion".into(),
                    json!(kv.mod_revision.0.to_string()),
                );
                Ok(Written {
                    object: obj,
                    warnings,
                    created: false,
                })
            }
            Err(e) => {
                release(undo);
                Err(store_error(res, &name, e))
            }
        }
    }

    /// Replace an object (PUT), or its status (`subresource = "status"`).
    ///
    /// # Errors
    /// 404 when missing, 409 on a stale resourceVersion, 400/422 for a bad
    /// body.
    pub async fn update(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let (kv, old) = self.get_kv(res, namespace, name).await?;
        self.update_from(res, &kv, old, obj, subresource, opts, Track::Update)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_from(
        &self,
        res: &Resource,
        kv: &KeyValue,
        old: Value,
        mut obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
        track: Track,
    ) -> Result<Written, ApiError> {
        let name = meta_str(&old, "name").to_owned();
        Self::check_type(res, &mut obj)?;
        let sent_managed = json!({"metadata": {"managedFields": meta(&obj).get("managedFields").cloned().unwrap_or(Value::Null)}});
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&obj, "namespace");
        let ns = meta_str(&old, "namespace").to_owned();
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let precondition = match meta_str(&obj, "resourceVersion") {
            "" => None,
            rv => Some(parse_rv(rv)?),
        };
        if let Some(rv) = precondition
            && rv != kv.mod_revision
        {
            return Err(ApiError::modified(target(res, &name)));
        }
        let strategy = self.strategy(res);
        let mut warnings = Vec::new();
        let mut obj = self.decode(res, obj, opts.field_validation, &mut warnings)?;
        strategy.defaults(&mut obj);
        // System metadata is the server's.
        {
            let old_meta = meta(&old).clone();
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            if res.namespaced {
                m.insert("namespace".into(), json!(ns));
            }
            for key in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(key) {
                    Some(v) => m.insert(key.into(), v.clone()),
                    None => m.remove(key),
                };
            }
            m.remove("resourceVersion");
        }
        let attrs = Attributes {
            user: opts.user(),
            operation: Operation::Update,
            resource: res,
            subresource,
            namespace: (res.namespaced && !ns.is_empty()).then_some(ns.as_str()),
            name: &name,
            old_object: Some(&old),
            dry_run: opts.dry_run,
        };
        self.admission.admit(&attrs, &mut obj, self).await?;
        match subresource {
            // /status changes status only.
            Some("status") => obj = strategy.status_update(&old, obj),
            // A CertificateSigningRequest's /approval: its conditions only.
            Some("approval") => obj = kinds::certificates::approval_update(&old, &obj),
            _ => strategy.reset_status(res, &old, &mut obj),
        }
        if strategy.tracks_generation() && spec_part(&old) != spec_part(&obj) {
            let generation = meta(&old)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut obj).insert("generation".into(), json!(generation));
        }
        strategy.prepare_update(&self.ctx(), &old, &mut obj);
        meta_mut(&mut obj).remove("resourceVersion");
        self.validate(res, &obj, Some(&old))?;
        self.admission.validate(&attrs, &obj, self).await?;
        match track {
            Track::Update => {
                let typer = typer(res, subresource);
                let start = managed::incoming(&old, &sent_managed, subresource.is_some());
                let (now, api_version) = (now_rfc3339(), res.api_version());
                let w = writer(&api_version, subresource, opts, &now);
                let tracked = typer.update(&old, &obj, start, &w);
                set_managed(&mut obj, &tracked);
            }
            // A status write keeps the managed fields the apply computed.
            Track::Applied => match sent_managed.pointer("/metadata/managedFields") {
                Some(m) if !m.is_null() => {
                    meta_mut(&mut obj).insert("managedFields".into(), m.clone());
                }
                _ => {
                    meta_mut(&mut obj).remove("managedFields");
                }
            },
        }
        if same_but_resource_version(&obj, &old) {
            // A no-op write changes nothing, not even the resourceVersion.
            return Ok(Written {
                object: old,
                warnings,
                created: false,
            });
        }
        let undo = strategy
            .allocate(&self.ctx(), &mut obj, Some(&old))
            .map_err(|errs| ApiError::invalid(&res.group, &res.kind, &name, errs))?;
        if opts.dry_run {
            return Ok(Written {
                object: obj,
                warnings,
                created: false,
            });
        }
        // The last finalizer gone from an object being deleted: remove it.
        let finalizers_left = meta(&obj)
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
            || strategy.deletion_pending(&obj);
        if meta(&obj).get("deletionTimestamp").is_some() && !finalizers_left {
            let object = self
                .store_remove(res, &name, &kv.key, &old, obj, kv.mod_revision)
                .await?;
            return Ok(Written {
                object,
                warnings,
                created: false,
            });
        }
        match self
            .store_replace(res, &name, &kv.key, obj, kv.mod_revision)
            .await
        {
            Ok(object) => Ok(Written {
                object,
                warnings,
                created: false,
            }),
            Err(e) => {
                if let Some(undo) = undo {
                    undo.run(&self.ctx());
                }
                Err(e)
            }
        }
    }

    /// Patch an object (or its status), retrying on concurrent changes.
    ///
    /// # Errors
    /// 400 for a malformed patch, 422 when the patch cannot apply or the
    /// result is invalid, 409 when the patch names a stale resourceVersion.
    pub async fn patch(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        (patch_type, patch_body): (PatchType, &Value),
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if patch_type == PatchType::Apply {
            return self
                .apply(res, namespace, name, patch_body, subresource, opts)
                .await;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (kv, old) = self.get_kv(res, namespace, name).await?;
            let patched = match patch_type {
                PatchType::Json => patch::json_patch(&old, patch_body),
                PatchType::Merge => patch::merge_patch(&old, patch_body),
                PatchType::Strategic => self.strategy(res).strategic_merge(res, &old, patch_body),
                PatchType::Apply => unreachable!("applied above"),
            }
            .map_err(|e| match e {
                patch::Error::BadRequest(m) => ApiError::bad_request(m),
                patch::Error::Invalid(m) => ApiError::new(422, "Invalid", m),
            })?;
            // A patch that names a resourceVersion is a precondition; one that
            // does not applies to whatever is current.
            let patched_rv = meta_str(&patched, "resourceVersion").to_owned();
            let explicit = patched_rv != kv.mod_revision.0.to_string();
            let mut patched = patched;
            if !explicit {
                meta_mut(&mut patched).remove("resourceVersion");
            }
            match self
                .update_from(res, &kv, old, patched, subresource, opts, Track::Update)
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !explicit && attempts < 5 => {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Server-side apply: merge `config` into the object as
    /// `opts.manager()` owns it, creating the object if it is missing.
    ///
    /// # Errors
    /// 400 for a configuration of another kind or with managedFields, 409
    /// when it changes fields other managers own (without `force`), and
    /// what a create or update of the result gets.
    pub async fn apply(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        config: &Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let api_version = res.api_version();
        check_apply_config(res, &api_version, name, config)?;
        let typer = typer(res, subresource);
        let now = now_rfc3339();
        let w = writer(&api_version, subresource, opts, &now);
        let typed_error = |msg: String| {
            let ns = namespace.unwrap_or_default();
            let gvk = format!("{}, Kind={}", gv_string(res), res.kind);
            // A plain error upstream, so its ErrorToAPIStatus answers a
            // 500 with no reason.
            ApiError::new(
                500,
                "",
                format!("failed to create typed patch object ({ns}/{name}; {gvk}): {msg}"),
            )
        };
        let explicit = config.pointer("/metadata/resourceVersion").is_some();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (kv, old) = match self.get_kv(res, namespace, name).await {
                Ok(found) => found,
                Err(e) if e.code == 404 && subresource.is_none() => {
                    let (mut obj, tracked) = typer
                        .apply(
                            &json!({}),
                            config,
                            managed::Managed::default(),
                            &w,
                            opts.force,
                        )
                        .map_err(|e| apply_error(e, &typed_error))?;
                    if meta_str(&obj, "name").is_empty() {
                        meta_mut(&mut obj).insert("name".into(), json!(name));
                    }
                    set_managed(&mut obj, &tracked);
                    match self
                        .create_with(res, namespace, obj, opts, Track::Applied)
                        .await
                    {
                        Ok(mut written) => {
                            written.created = true;
                            return Ok(written);
                        }
                        // Created meanwhile by someone else: apply to it.
                        Err(e) if e.reason == "AlreadyExists" && attempts < 5 => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let live_managed =
                managed::Managed::decode(meta(&old).get("managedFields").unwrap_or(&Value::Null))
                    .unwrap_or_default();
            let (mut obj, tracked) = typer
                .apply(&old, config, live_managed, &w, opts.force)
                .map_err(|e| apply_error(e, &typed_error))?;
            set_managed(&mut obj, &tracked);
            if !explicit {
                meta_mut(&mut obj).remove("resourceVersion");
            }
            match self
                .update_from(res, &kv, old, obj, subresource, opts, Track::Applied)
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !explicit && attempts < 5 => {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Delete an object: at once, or by marking it (finalizers, graceful pod
    /// termination) for its owner to finish.
    ///
    /// # Errors
    /// 404 when missing, 409 when a precondition fails.
    pub async fn delete(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        // Controllers may change the object between our read and our write;
        // without a client precondition that is no reason to fail.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.delete_once(res, namespace, name, opts).await {
                Err(e)
                    if e.reason == "Conflict"
                        && opts.precondition_resource_version.is_none()
                        && opts.precondition_uid.is_none()
                        && attempts < 5 =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    async fn delete_once(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (kv, old) = self.get_kv(res, namespace, name).await?;
        if let Some(uid) = &opts.precondition_uid
            && uid != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                target(res, name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_resource_version
            && *rv != kv.mod_revision.0.to_string()
        {
            return Err(ApiError::conflict(
                target(res, name),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                ),
            ));
        }
        let ns = meta_str(&old, "namespace");
        let attrs = Attributes {
            user: opts.user(),
            operation: Operation::Delete,
            resource: res,
            subresource: None,
            namespace: (!ns.is_empty()).then_some(ns),
            name,
            old_object: Some(&old),
            dry_run: opts.dry_run,
        };
        if !opts.admitted {
            self.admission.admit(&attrs, &mut Value::Null, self).await?;
            self.admission.validate(&attrs, &Value::Null, self).await?;
        }
        let mut obj = old.clone();
        let mut finalizers: Vec<Value> = meta(&obj)
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match opts.propagation_policy.as_deref() {
            // Orphaning: mark the owner as deleting (with the `orphan`
            // finalizer, so no controller adopts anything on its behalf
            // meanwhile), release its dependents, then let it go.
            Some("Orphan") if !opts.dry_run && !finalizers.contains(&json!("orphan")) => {
                let mut marked = old.clone();
                let m = meta_mut(&mut marked);
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                let mut with_orphan = finalizers.clone();
                with_orphan.push(json!("orphan"));
                m.insert("finalizers".into(), Value::Array(with_orphan));
                m.remove("resourceVersion");
                let marked = self
                    .store_replace(res, name, &kv.key, marked, kv.mod_revision)
                    .await?;
                let marked_rev =
                    Revision(meta_str(&marked, "resourceVersion").parse().unwrap_or(0));
                self.orphan_dependents(&old).await?;
                // Drop the finalizer; with none left the object goes.
                let mut done = marked;
                meta_mut(&mut done).insert("finalizers".into(), Value::Array(finalizers.clone()));
                meta_mut(&mut done).remove("resourceVersion");
                return if finalizers.is_empty() {
                    self.store_remove(res, name, &kv.key, &old, done, marked_rev)
                        .await
                } else {
                    self.store_replace(res, name, &kv.key, done, marked_rev)
                        .await
                };
            }
            Some("Orphan") => {}
            Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                finalizers.push(json!("foregroundDeletion"));
            }
            Some("Foreground" | "Background") | None => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "",
                    "DeleteOptions",
                    "",
                    vec![FieldError::not_supported(
                        "propagationPolicy",
                        &json!(other),
                        &["Foreground", "Background", "Orphan"],
                    )],
                ));
            }
        }
        let strategy = self.strategy(res);
        let graceful = strategy.grace_period(&obj, opts.grace_period_seconds);
        let grace = graceful.unwrap_or(0);
        let already_deleting = meta(&obj).get("deletionTimestamp").is_some();
        let ns_pending = strategy.deletion_pending(&obj);
        if grace > 0 || !finalizers.is_empty() || ns_pending {
            if already_deleting
                && grace == 0
                && finalizers.len()
                    == meta(&obj)
                        .get("finalizers")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                && graceful.is_none()
            {
                return Ok(old);
            }
            let m = meta_mut(&mut obj);
            if !already_deleting || grace == 0 {
                let when = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                m.insert(
                    "deletionTimestamp".into(),
                    json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), Value::Array(finalizers.clone()));
            }
            strategy.mark_deleting(&mut obj);
            let pending = grace > 0 || !finalizers.is_empty() || ns_pending;
            if pending {
                if opts.dry_run {
                    return Ok(obj);
                }
                meta_mut(&mut obj).remove("resourceVersion");
                return self
                    .store_replace(res, name, &kv.key, obj, kv.mod_revision)
                    .await;
            }
        }
        if opts.dry_run {
            return Ok(old);
        }
        self.store_remove(res, name, &kv.key, &old, old.clone(), kv.mod_revision)
            .await
    }

    /// Finish an orphaning delete a crash interrupted: release the
    /// dependents, then drop the `orphan` finalizer (the object goes when
    /// no finalizer is left).
    ///
    /// # Errors
    /// A dependent or the object could not be written.
    pub async fn finish_orphaning(&self, res: &Resource, obj: &Value) -> Result<(), ApiError> {
        self.orphan_dependents(obj).await?;
        let finalizers: Vec<Value> = meta(obj)
            .get("finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|f| *f != "orphan")
            .cloned()
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": meta(obj).get("resourceVersion")}});
        let ns = meta_str(obj, "namespace");
        match self
            .patch(
                res,
                (!ns.is_empty()).then_some(ns),
                meta_str(obj, "name"),
                (PatchType::Merge, &patch),
                None,
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove ownerReferences to `owner` from every object in its namespace
    /// (or every object, for a cluster-scoped owner).
    async fn orphan_dependents(&self, owner: &Value) -> Result<(), ApiError> {
        let uid = meta_str(owner, "uid").to_owned();
        let ns = meta_str(owner, "namespace").to_owned();
        let resources: Vec<Resource> = self
            .catalog()
            .resources()
            .iter()
            .filter(|r| r.allows("list"))
            .cloned()
            .collect();
        for res in resources {
            let scope = (res.namespaced && !ns.is_empty()).then_some(ns.as_str());
            let list = self.list(&res, scope, &ListQuery::default()).await?;
            for item in list.decoded()? {
                let refs = meta(&item)
                    .get("ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if !refs
                    .iter()
                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                {
                    continue;
                }
                let kept: Vec<Value> = refs
                    .into_iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": if kept.is_empty() { Value::Null } else { Value::Array(kept) }}});
                let item_ns = meta_str(&item, "namespace").to_owned();
                let name = meta_str(&item, "name").to_owned();
                let scope = (!item_ns.is_empty()).then_some(item_ns.as_str());
                match self
                    .patch(
                        &res,
                        scope,
                        &name,
                        (PatchType::Merge, &patch),
                        None,
                        &WriteOptions::default(),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Store `obj` over the version at `expected` and return it with its new
    /// resourceVersion.
    async fn store_replace(
        &self,
        res: &Resource,
        name: &str,
        key: &str,
        mut obj: Value,
        expected: Revision,
    ) -> Result<Value, ApiError> {
        stored_version(res, &mut obj);
        let bytes = fit_for_store(key, &mut obj)?;
        served_version(res, &mut obj);
        let kv = self
            .store
            .update(key, bytes, Some(expected))
            .await
            .map_err(|e| store_error(res, name, e))?;
        meta_mut(&mut obj).insert(
            "resourceVersion".into(),
            json!(kv.mod_revision.0.to_string()),
        );
        Ok(obj)
    }

    /// Remove the version at `expected`, release what `old` held (Service
    /// IPs), and return `obj` with the delete's resourceVersion.
    async fn store_remove(
        &self,
        res: &Resource,
        name: &str,
        key: &str,
        old: &Value,
        mut obj: Value,
        expected: Revision,
    ) -> Result<Value, ApiError> {
        let deleted = self
            .store
            .delete(key, Some(expected))
            .await
            .map_err(|e| store_error(res, name, e))?;
        self.after_delete(res, old);
        meta_mut(&mut obj).insert(
            "resourceVersion".into(),
            json!(deleted.revision.0.to_string()),
        );
        Ok(obj)
    }

    fn after_delete(&self, res: &Resource, old: &Value) {
        self.strategy(res).release(&self.ctx(), old);
    }

    /// Delete every object a list query selects.
    ///
    /// # Errors
    /// As [`Registry::list`] and [`Registry::delete`].
    pub async fn delete_collection(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        query: &ListQuery,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let list = self.list(res, namespace, query).await?;
        let mut out = Vec::new();
        for item in list.decoded()? {
            let ns = meta_str(&item, "namespace").to_owned();
            let name = meta_str(&item, "name").to_owned();
            let ns = (!ns.is_empty()).then_some(ns);
            match self.delete(res, ns.as_deref(), &name, opts).await {
                Ok(v) => out.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// What admission plugins read: stored objects.
impl admission::Objects for Registry {
    fn get<'a>(
        &'a self,
        group: &'a str,
        plural: &'a str,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        async move {
            let res = self
                .catalog()
                .resources()
                .iter()
                .find(|r| r.group == group && r.plural == plural)
                .cloned()
                .ok_or_else(ApiError::not_found_path)?;
            Registry::get(self, &res, namespace, name).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
