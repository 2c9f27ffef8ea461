//! `/openapi/v2`: the Swagger 2.0 document of the served API, served as
//! kube-apiserver serves it (kube-openapi `pkg/handler`).
//!
//! kubectl 1.27 and 1.28 read it before every `apply` and `create` (their
//! validator loads it eagerly), `kubectl explain --output=plaintext-openapiv2`
//! reads it, and Helm 3 validates manifests against it. The document has a
//! path per served resource with its operations, each marked with
//! `x-kubernetes-action` and `x-kubernetes-group-version-kind` (kubectl
//! finds the PATCH operation of a kind there and checks it takes
//! `fieldValidation`), and `definitions`: the embedded v3 component schemas
//! converted ([`super::schema`]) plus a `<Kind>List` per resource.
//!
//! Negotiation as upstream: JSON by default, the gnostic protobuf
//! ([`super::gnostic`]) for `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`
//! (and the dotted form), 406 otherwise. Both forms carry one ETag, the
//! SHA-512 of the JSON, and a matching `If-None-Match` gets 304. The
//! document is built once per catalog (on the first request, off the
//! async threads) and kept only gzip-compressed: gzip-accepting clients
//! (every Go client) get those bytes as they are, others get them
//! decompressed.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{gv_path, parse_schemas, schema};
use crate::api::catalog::{Catalog, Resource};
use crate::api::status::ApiError;
use crate::server::api::Body;

/// What kubectl asks for (the deprecated name, still what client-go sends).
const PROTOBUF_DEPRECATED: &str = "com.github.proto-openapi.spec.v2@v1.0+protobuf";
const PROTOBUF: &str = "com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// What the protobuf form is labelled, whichever name was asked for.
const PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const GVK: &str = "x-kubernetes-group-version-kind";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// The two encodings of the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Protobuf,
}

/// The document, built and compressed.
struct Served {
    /// Which catalog it describes ([`fingerprint`]).
    fingerprint: u64,
    /// `"<SHA-512 of the JSON, upper-case hex>"`, as kube-openapi computes it.
    etag: String,
    json_gz: Bytes,
    protobuf_gz: Bytes,
}

/// The response to `GET /openapi/v2`.
///
/// # Errors
/// 406 when the client accepts neither form; 500 if building the document
/// failed (a bug).
pub async fn respond(catalog: &Catalog, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let accept = header_str(headers, header::ACCEPT);
    let format = negotiate(accept).ok_or_else(|| ApiError::not_acceptable(accept))?;
    let served = served(catalog).await?;
    let response = Response::builder()
        .header(header::VARY, "Accept")
        .header(header::VARY, "Accept-Encoding")
        .header(header::ETAG, served.etag.as_str());
    if none_match(header_str(headers, header::IF_NONE_MATCH), &served.etag) {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("static response parts are valid"));
    }
    let (content_type, gz) = match format {
        Format::Json => ("application/json", &served.json_gz),
        Format::Protobuf => (PROTOBUF_CONTENT_TYPE, &served.protobuf_gz),
    };
    let response = response.header(header::CONTENT_TYPE, content_type);
    if accepts_gzip(header_str(headers, header::ACCEPT_ENCODING)) {
        return Ok(response
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::full(gz.clone()))
            .expect("static response parts are valid"));
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut plain)
        .map_err(|e| {
            ApiError::internal(format!("cannot decompress the OpenAPI v2 document: {e}"))
        })?;
    Ok(response
        .body(Body::full(plain))
        .expect("static response parts are valid"))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The built document for `catalog`, building it if the catalog changed.
async fn served(catalog: &Catalog) -> Result<Arc<Served>, ApiError> {
    // One builder at a time; the others wait for its result.
    static CACHE: tokio::sync::Mutex<Option<Arc<Served>>> = tokio::sync::Mutex::const_new(None);
    let fingerprint = fingerprint(catalog);
    let mut cache = CACHE.lock().await;
    if let Some(s) = cache.as_ref().filter(|s| s.fingerprint == fingerprint) {
        return Ok(s.clone());
    }
    let catalog = catalog.clone();
    let built = tokio::task::spawn_blocking(move || build(&catalog, fingerprint))
        .await
        .map_err(|e| ApiError::internal(format!("building the OpenAPI v2 document failed: {e}")))?;
    let built = Arc::new(built);
    tracing::debug!(
        json_gz = built.json_gz.len(),
        protobuf_gz = built.protobuf_gz.len(),
        "built the OpenAPI v2 document"
    );
    *cache = Some(built.clone());
    Ok(built)
}

/// What the document depends on in the catalog.
fn fingerprint(catalog: &Catalog) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in catalog.resources() {
        (
            &r.group,
            &r.version,
            &r.kind,
            &r.plural,
            r.namespaced,
            &r.verbs,
        )
            .hash(&mut h);
        for s in &r.subresources {
            (&s.name, &s.group, &s.version, &s.kind, &s.verbs).hash(&mut h);
        }
        if let Some(c) = &r.custom {
            c.schema.to_string().hash(&mut h);
        }
    }
    h.finish()
}

fn build(catalog: &Catalog, fingerprint: u64) -> Served {
    let doc = document(catalog);
    let json = serde_json::to_vec(&doc).expect("a JSON value always serialises");
    let protobuf = super::gnostic::document(&doc);
    drop(doc);
    let digest = ring::digest::digest(&ring::digest::SHA512, &json);
    let etag = format!(
        "\"{}\"",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    );
    Served {
        fingerprint,
        etag,
        json_gz: gzip(&json),
        protobuf_gz: gzip(&protobuf),
    }
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    gz.write_all(bytes).expect("gzip into memory");
    Bytes::from(gz.finish().expect("gzip into memory"))
}

/// The form the `Accept` header asks for, as kube-openapi's handler picks
/// it: clauses by preference (`q`, then specificity), the first that
/// matches JSON or protobuf wins; no header means JSON.
fn negotiate(accept: &str) -> Option<Format> {
    let accept = if accept.trim().is_empty() {
        "*/*"
    } else {
        accept
    };
    let mut clauses: Vec<(f32, u8, &str, &str)> = Vec::new();
    for clause in accept.split(',') {
        let mut parts = clause.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let (ty, sub) = media.split_once('/').unwrap_or((media, "*"));
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let specific = u8::from(ty != "*") + u8::from(sub != "*");
        clauses.push((q, specific, ty, sub));
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    const OFFERED: [(&str, Format); 3] = [
        ("json", Format::Json),
        (PROTOBUF_DEPRECATED, Format::Protobuf),
        (PROTOBUF, Format::Protobuf),
    ];
    clauses.iter().find_map(|(_, _, ty, sub)| {
        if *ty != "application" && *ty != "*" {
            return None;
        }
        OFFERED
            .iter()
            .find(|(offered, _)| sub == offered || *sub == "*")
            .map(|(_, f)| *f)
    })
}

/// Whether `If-None-Match` names our ETag (or is `*`), compared weakly as
/// Go's `http.ServeContent` does.
fn none_match(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (name.eq_ignore_ascii_case("gzip") || name == "*") && q > 0.0
    })
}

/// The Swagger 2.0 document of `catalog`.
pub fn document(catalog: &Catalog) -> Value {
    let mut v3 = parse_schemas();
    for r in catalog.resources() {
        v3.extend(crate::api::custom::openapi_schemas(r));
    }
    let mut definitions = schema::definitions(&v3);
    add_lists(catalog, &mut definitions);
    mark_per_group_version(catalog, &mut definitions);
    let mut paths = Map::new();
    for r in catalog.resources() {
        resource_paths(r, &definitions, &mut paths);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::server::KUBERNETES_VERSION},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {
            "description": "Bearer Token authentication",
            "in": "header",
            "name": "authorization",
            "type": "apiKey",
        }},
        "security": [{"BearerToken": []}],
    })
}

/// The name of the definition marked with this group/version/kind.
fn definition_of(
    definitions: &Map<String, Value>,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<String> {
    let wanted = json!({"group": group, "kind": kind, "version": version});
    definitions
        .iter()
        .find(|(_, d)| {
            d.get(GVK)
                .and_then(Value::as_array)
                .is_some_and(|marks| marks.contains(&wanted))
        })
        .map(|(name, _)| name.clone())
}

/// `<Kind>List` for every resource whose kind has a definition, marked as
/// upstream marks its list kinds.
fn add_lists(catalog: &Catalog, definitions: &mut Map<String, Value>) {
    for r in catalog.resources() {
        if !r.allows("list") {
            continue;
        }
        let Some(item) = definition_of(definitions, &r.group, &r.version, &r.kind) else {
            continue;
        };
        let list = format!("{item}List");
        let kind = format!("{}List", r.kind);
        definitions.entry(list).or_insert_with(|| json!({
            "description": format!("{kind} is a list of {} objects.", r.kind),
            "properties": {
                "apiVersion": {
                    "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                    "type": "string",
                },
                "items": {
                    "description": format!("Items is the list of {}.", r.kind),
                    "items": {"$ref": format!("#/definitions/{item}")},
                    "type": "array",
                },
                "kind": {
                    "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                    "type": "string",
                },
                "metadata": {
                    "$ref": format!("#/definitions/{META}.ListMeta"),
                    "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
                },
            },
            "required": ["items"],
            "type": "object",
            GVK: [{"group": r.group, "kind": kind, "version": r.version}],
        }));
    }
}

/// DeleteOptions and WatchEvent belong to every group version (upstream
/// marks them with each one its scheme knows; here, each one served).
fn mark_per_group_version(catalog: &Catalog, definitions: &mut Map<String, Value>) {
    let mut gvs = BTreeSet::new();
    for r in catalog.resources() {
        gvs.insert((r.group.as_str(), r.version.as_str()));
        for s in &r.subresources {
            gvs.insert((s.group.as_str(), s.version.as_str()));
        }
    }
    for kind in ["DeleteOptions", "WatchEvent"] {
        if let Some(Value::Object(d)) = definitions.get_mut(&format!("{META}.{kind}")) {
            let marks: Vec<Value> = gvs
                .iter()
                .map(|(g, v)| json!({"group": g, "kind": kind, "version": v}))
                .collect();
            d.insert(GVK.into(), Value::Array(marks));
        }
    }
}

/// A schema referring to a definition, if there is one.
fn reference(name: Option<&str>) -> Value {
    match name {
        Some(n) => json!({"$ref": format!("#/definitions/{n}")}),
        None => json!({"type": "object"}),
    }
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"description": description, "in": "query", "name": name, "type": ty, "uniqueItems": true})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"description": description, "in": "path", "name": name, "required": true, "type": "string", "uniqueItems": true})
}

fn body(schema: Value, required: bool) -> Value {
    let mut p = json!({"in": "body", "name": "body", "schema": schema});
    if required {
        p["required"] = Value::Bool(true);
    }
    p
}

fn dry_run() -> Value {
    query(
        "dryRun",
        "string",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
    )
}

fn field_manager() -> Value {
    query(
        "fieldManager",
        "string",
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
    )
}

/// Inline in every operation that takes a body: kubectl's check reads it
/// from the PATCH operation itself, not from a `$ref`.
fn field_validation() -> Value {
    query(
        "fieldValidation",
        "string",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
    )
}

fn list_params() -> Vec<Value> {
    vec![
        query(
            "allowWatchBookmarks",
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion.",
        ),
        query(
            "continue",
            "string",
            "The continue option should be set when retrieving more results from the server.",
        ),
        query(
            "fieldSelector",
            "string",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
        ),
        query(
            "labelSelector",
            "string",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
        ),
        query(
            "limit",
            "integer",
            "limit is a maximum number of responses to return for a list call.",
        ),
        query(
            "resourceVersion",
            "string",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
        ),
        query(
            "sendInitialEvents",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
        ),
        query(
            "timeoutSeconds",
            "integer",
            "Timeout for the list/watch call.",
        ),
        query(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ]
}

fn delete_params() -> Vec<Value> {
    vec![
        body(reference(Some(&format!("{META}.DeleteOptions"))), false),
        dry_run(),
        query(
            "gracePeriodSeconds",
            "integer",
            "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately.",
        ),
        query(
            "orphanDependents",
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7.",
        ),
        query(
            "propagationPolicy",
            "string",
            "Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'.",
        ),
    ]
}

/// Upstream's operation id parts: `apps` → `Apps`, `` → `Core`,
/// `coordination.k8s.io` → `Coordination`, `v1` → `V1`.
fn camel(s: &str) -> String {
    s.trim_end_matches(".k8s.io")
        .split(['.', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// One operation. `gvk` is what it takes or returns, `action` the
/// `x-kubernetes-action` (upstream's verbs: get, list, post, put, patch,
/// delete, deletecollection, connect).
struct Op<'a> {
    id: String,
    description: String,
    action: &'a str,
    gvk: (&'a str, &'a str, &'a str),
    tag: &'a str,
    consumes: &'a [&'a str],
    parameters: Vec<Value>,
    responses: Value,
}

impl Op<'_> {
    fn json(self) -> Value {
        let (group, version, kind) = self.gvk;
        json!({
            "consumes": self.consumes,
            "description": self.description,
            "operationId": self.id,
            "parameters": self.parameters,
            "produces": ["application/json"],
            "responses": self.responses,
            "schemes": ["https"],
            "tags": [self.tag],
            "x-kubernetes-action": self.action,
            GVK: {"group": group, "kind": kind, "version": version},
        })
    }
}

fn ok(schema: &Value, also: &[(&str, &str)]) -> Value {
    let mut r = json!({"200": {"description": "OK", "schema": schema}, "401": {"description": "Unauthorized"}});
    for (code, description) in also {
        r[*code] = json!({"description": description, "schema": schema});
    }
    r
}

const ANY: &[&str] = &["*/*"];
const PATCHES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// The subresources that stream (exec and the like): upstream's
/// `connect` action, marked with their options kinds.
fn connect_kind(subresource: &str) -> Option<&'static str> {
    match subresource {
        "exec" => Some("PodExecOptions"),
        "attach" => Some("PodAttachOptions"),
        "portforward" => Some("PodPortForwardOptions"),
        "proxy" => Some("PodProxyOptions"),
        _ => None,
    }
}

/// The paths of one resource: its collection, the same across namespaces,
/// one object, and its subresources.
fn resource_paths(r: &Resource, definitions: &Map<String, Value>, paths: &mut Map<String, Value>) {
    let base = format!("/{}", gv_path(&r.group, &r.version));
    let scope = if r.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{base}{scope}/{}", r.plural);
    let item = format!("{collection}/{{name}}");
    let namespaced = if r.namespaced { "Namespaced" } else { "" };
    let gv = format!(
        "{}{}",
        camel(if r.group.is_empty() { "core" } else { &r.group }),
        camel(&r.version)
    );
    let tag = format!(
        "{}_{}",
        if r.group.is_empty() {
            "core"
        } else {
            r.group.split('.').next().unwrap_or_default()
        },
        r.version
    );
    let gvk = (r.group.as_str(), r.version.as_str(), r.kind.as_str());
    let own = definition_of(definitions, &r.group, &r.version, &r.kind);
    let object = reference(own.as_deref());
    let list = reference(
        own.as_ref()
            .map(|n| format!("{n}List"))
            .filter(|n| definitions.contains_key(n))
            .as_deref(),
    );
    let status = reference(Some(&format!("{META}.Status")));
    let patch_body = body(reference(Some(&format!("{META}.Patch"))), true);
    let namespace = path_param(
        "namespace",
        "object name and auth scope, such as for teams and projects",
    );
    let pretty = query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed.",
    );
    let kind = &r.kind;
    let op = |id: String, description: String, action, consumes, parameters, responses| Op {
        id,
        description,
        action,
        gvk,
        tag: &tag,
        consumes,
        parameters,
        responses,
    };

    let mut coll = Map::new();
    if r.allows("list") {
        coll.insert(
            "get".into(),
            op(
                format!("list{gv}{namespaced}{kind}"),
                format!("list or watch objects of kind {kind}"),
                "list",
                ANY,
                list_params(),
                ok(&list, &[]),
            )
            .json(),
        );
    }
    if r.allows("create") {
        let params = vec![
            body(object.clone(), true),
            dry_run(),
            field_manager(),
            field_validation(),
        ];
        coll.insert(
            "post".into(),
            op(
                format!("create{gv}{namespaced}{kind}"),
                format!("create a {kind}"),
                "post",
                ANY,
                params,
                ok(&object, &[("201", "Created"), ("202", "Accepted")]),
            )
            .json(),
        );
    }
    if r.allows("deletecollection") {
        let mut params = delete_params();
        params.extend(list_params());
        coll.insert(
            "delete".into(),
            op(
                format!("delete{gv}Collection{namespaced}{kind}"),
                format!("delete collection of {kind}"),
                "deletecollection",
                ANY,
                params,
                ok(&status, &[]),
            )
            .json(),
        );
    }
    if !coll.is_empty() {
        let mut shared = vec![pretty.clone()];
        if r.namespaced {
            shared.insert(0, namespace.clone());
        }
        coll.insert("parameters".into(), shared.into());
        paths.insert(collection, Value::Object(coll));
    }
    if r.namespaced && r.allows("list") {
        let all = op(
            format!("list{gv}{kind}ForAllNamespaces"),
            format!("list or watch objects of kind {kind}"),
            "list",
            ANY,
            list_params(),
            ok(&list, &[]),
        )
        .json();
        paths.insert(
            format!("{base}/{}", r.plural),
            json!({"get": all, "parameters": [pretty.clone()]}),
        );
    }

    let mut one = Map::new();
    if r.allows("get") {
        one.insert(
            "get".into(),
            op(
                format!("read{gv}{namespaced}{kind}"),
                format!("read the specified {kind}"),
                "get",
                ANY,
                Vec::new(),
                ok(&object, &[]),
            )
            .json(),
        );
    }
    if r.allows("update") {
        let params = vec![
            body(object.clone(), true),
            dry_run(),
            field_manager(),
            field_validation(),
        ];
        one.insert(
            "put".into(),
            op(
                format!("replace{gv}{namespaced}{kind}"),
                format!("replace the specified {kind}"),
                "put",
                ANY,
                params,
                ok(&object, &[("201", "Created")]),
            )
            .json(),
        );
    }
    if r.allows("patch") {
        let params = vec![
            patch_body.clone(),
            dry_run(),
            field_manager(),
            field_validation(),
            query(
                "force",
                "boolean",
                "Force is going to \"force\" Apply requests.",
            ),
        ];
        one.insert(
            "patch".into(),
            op(
                format!("patch{gv}{namespaced}{kind}"),
                format!("partially update the specified {kind}"),
                "patch",
                PATCHES,
                params,
                ok(&object, &[("201", "Created")]),
            )
            .json(),
        );
    }
    if r.allows("delete") {
        one.insert(
            "delete".into(),
            op(
                format!("delete{gv}{namespaced}{kind}"),
                format!("delete a {kind}"),
                "delete",
                ANY,
                delete_params(),
                ok(&status, &[("202", "Accepted")]),
            )
            .json(),
        );
    }
    let item_params = |extra: Vec<Value>| {
        let mut p = vec![path_param("name", &format!("name of the {kind}"))];
        if r.namespaced {
            p.push(namespace.clone());
        }
        p.extend(extra);
        Value::Array(p)
    };
    if !one.is_empty() {
        one.insert("parameters".into(), item_params(vec![pretty.clone()]));
        paths.insert(item.clone(), Value::Object(one));
    }

    for sub in &r.subresources {
        let sub_name = camel(&sub.name);
        let sub_path = format!("{item}/{}", sub.name);
        let allows = |verb: &str| sub.verbs.iter().any(|v| v == verb);
        let mut ops = Map::new();
        if let Some(options) = connect_kind(&sub.name) {
            // A stream, not an object: upstream's `connect` operations.
            let stream = json!({"type": "string"});
            let connect_gvk = ("", "v1", options);
            for (method, verb) in [("get", "get"), ("post", "create")] {
                if allows(verb) {
                    let mut o = op(
                        format!("connect{gv}{}{namespaced}{kind}{sub_name}", camel(method)),
                        format!("connect {method} requests to {} of {kind}", sub.name),
                        "connect",
                        ANY,
                        Vec::new(),
                        ok(&stream, &[]),
                    );
                    o.gvk = connect_gvk;
                    ops.insert(method.into(), o.json());
                }
            }
        } else {
            let sub_gvk = (sub.group.as_str(), sub.version.as_str(), sub.kind.as_str());
            let sub_object = if sub_gvk == gvk {
                object.clone()
            } else {
                reference(definition_of(definitions, sub_gvk.0, sub_gvk.1, sub_gvk.2).as_deref())
            };
            // `log` is text, not its kind.
            let read = if sub.name == "log" {
                json!({"type": "string"})
            } else {
                sub_object.clone()
            };
            let with = |o: Op<'_>| Op { gvk: sub_gvk, ..o }.json();
            if allows("get") {
                ops.insert(
                    "get".into(),
                    with(op(
                        format!("read{gv}{namespaced}{kind}{sub_name}"),
                        format!("read {} of the specified {kind}", sub.name),
                        "get",
                        ANY,
                        Vec::new(),
                        ok(&read, &[]),
                    )),
                );
            }
            if allows("create") {
                let params = vec![
                    body(sub_object.clone(), true),
                    dry_run(),
                    field_manager(),
                    field_validation(),
                ];
                ops.insert(
                    "post".into(),
                    with(op(
                        format!("create{gv}{namespaced}{kind}{sub_name}"),
                        format!("create {} of a {kind}", sub.name),
                        "post",
                        ANY,
                        params,
                        ok(&sub_object, &[("201", "Created"), ("202", "Accepted")]),
                    )),
                );
            }
            if allows("update") {
                let params = vec![
                    body(sub_object.clone(), true),
                    dry_run(),
                    field_manager(),
                    field_validation(),
                ];
                ops.insert(
                    "put".into(),
                    with(op(
                        format!("replace{gv}{namespaced}{kind}{sub_name}"),
                        format!("replace {} of the specified {kind}", sub.name),
                        "put",
                        ANY,
                        params,
                        ok(&sub_object, &[("201", "Created")]),
                    )),
                );
            }
            if allows("patch") {
                let params = vec![
                    patch_body.clone(),
                    dry_run(),
                    field_manager(),
                    field_validation(),
                    query(
                        "force",
                        "boolean",
                        "Force is going to \"force\" Apply requests.",
                    ),
                ];
                ops.insert(
                    "patch".into(),
                    with(op(
                        format!("patch{gv}{namespaced}{kind}{sub_name}"),
                        format!("partially update {} of the specified {kind}", sub.name),
                        "patch",
                        PATCHES,
                        params,
                        ok(&sub_object, &[("201", "Created")]),
                    )),
                );
            }
        }
        if !ops.is_empty() {
            ops.insert("parameters".into(), item_params(Vec::new()));
            paths.insert(sub_path, Value::Object(ops));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_form_as_upstream() {
        let cases = [
            ("", Some(Format::Json)),
            ("*/*", Some(Format::Json)),
            ("application/json", Some(Format::Json)),
            (
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
                Some(Format::Protobuf),
            ),
            (
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                Some(Format::Protobuf),
            ),
            (
                "application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
                Some(Format::Protobuf),
            ),
            ("application/*", Some(Format::Json)),
            ("text/html, */*;q=0.1", Some(Format::Json)),
            ("application/json;q=0", None),
            ("text/plain", None),
            ("application/yaml", None),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn etags_match_as_go_compares_them() {
        let etag = "\"ABC\"";
        assert!(none_match("\"ABC\"", etag));
        assert!(none_match("W/\"ABC\"", etag));
        assert!(none_match("\"X\", \"ABC\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("", etag));
        assert!(!none_match("\"ABD\"", etag));
        assert!(!none_match("ABC", etag));
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
    }

    #[test]
    fn operation_ids_follow_upstream() {
        assert_eq!(camel("apps"), "Apps");
        assert_eq!(camel("coordination.k8s.io"), "Coordination");
        assert_eq!(camel("v1"), "V1");
        assert_eq!(camel("portforward"), "Portforward");
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn document_describes_every_resource_and_its_refs_resolve() {
        let catalog = Catalog::builtin();
        let doc = document(&catalog);
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100);
        for r in &all {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("{r} is not a definitions reference"));
            assert!(defs.contains_key(name), "{r} does not resolve");
        }
        for r in catalog.resources() {
            let name = definition_of(defs, &r.group, &r.version, &r.kind)
                .unwrap_or_else(|| panic!("no definition marked {}/{}", r.api_version(), r.kind));
            let base = format!("/{}", gv_path(&r.group, &r.version));
            let scope = if r.namespaced {
                "/namespaces/{namespace}"
            } else {
                ""
            };
            let collection = format!("{base}{scope}/{}", r.plural);
            if r.allows("create") {
                let post = &doc["paths"][&collection]["post"];
                assert_eq!(post["x-kubernetes-action"], "post", "{collection}");
                assert_eq!(post[GVK]["kind"], r.kind.as_str());
            }
            if r.allows("patch") {
                // What kubectl's field validation check reads.
                let patch = &doc["paths"][format!("{collection}/{{name}}")]["patch"];
                assert_eq!(
                    patch[GVK],
                    json!({"group": r.group, "kind": r.kind, "version": r.version})
                );
                let names: Vec<&str> = patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert!(
                    names.contains(&"fieldValidation"),
                    "{collection}: {names:?}"
                );
            }
            if r.allows("list") {
                let list = &defs[&format!("{name}List")];
                assert_eq!(list[GVK][0]["kind"], format!("{}List", r.kind));
            }
        }
        let scale = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(scale["put"][GVK]["kind"], "Scale");
        assert_eq!(
            scale["get"]["responses"]["200"]["schema"]["$ref"],
            "#/definitions/io.k8s.api.autoscaling.v1.Scale"
        );
        let exec = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/exec"];
        assert_eq!(exec["post"]["x-kubernetes-action"], "connect");
        assert_eq!(exec["post"][GVK]["kind"], "PodExecOptions");
        let marks = defs[&format!("{META}.DeleteOptions")][GVK]
            .as_array()
            .unwrap();
        assert!(
            marks.contains(&json!({"group": "apps", "kind": "DeleteOptions", "version": "v1"}))
        );
        assert_eq!(
            defs[&format!("{META}.Status")][GVK],
            json!([{"group": "", "kind": "Status", "version": "v1"}])
        );
    }
}
