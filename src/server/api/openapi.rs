//! OpenAPI v3 documents, generated from the catalog. They declare, for each
//! kind, the PATCH operation with the `fieldValidation` parameter, which is
//! how kubectl learns that the server validates fields itself (so
//! `kubectl apply` works with its default `--validate=strict`).
//!
//! The component schemas (what `kubectl explain` reads) are
//! [`crate::api::components`].

mod gnostic;
mod schema;
pub mod v2;

use serde_json::{Map, Value, json};

use crate::api::catalog::{Catalog, Resource};
use crate::api::components::{all as schemas, parse as parse_schemas};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A digest of the custom kinds of a group version, if it has any.
fn custom_hash(catalog: &Catalog, group: &str, version: &str) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut any = false;
    for r in catalog.group_version(group, version) {
        if let Some(c) = &r.custom {
            any = true;
            (&r.kind, &r.plural, c.schema.to_string()).hash(&mut h);
        }
    }
    any.then(|| h.finish())
}

/// `/openapi/v3`: one entry per group version.
pub fn index(catalog: &Catalog, hash: &str) -> Value {
    let mut paths = Map::new();
    for (group, versions) in catalog.groups() {
        for v in versions {
            let p = gv_path(&group, &v);
            // Clients cache a document by its hash: one with custom kinds
            // changes whenever their definitions do.
            let hash = match custom_hash(catalog, &group, &v) {
                Some(custom) => format!("{hash}-{custom:016X}"),
                None => hash.to_owned(),
            };
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operations(r: &Resource) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let object = json!({"schema": {"type": "object"}});
    let patch_content = json!({
        "application/json-patch+json": object,
        "application/merge-patch+json": object,
        "application/strategic-merge-patch+json": object,
        "application/apply-patch+yaml": object,
    });
    let common = vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
        ),
        query_param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
        ),
    ];
    let response = json!({"200": {"description": "OK", "content": {"application/json": object}}});
    json!({
        "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get", "responses": response},
        "put": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "put", "parameters": common, "requestBody": {"content": {"application/json": object}}, "responses": response},
        "patch": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": common, "requestBody": {"content": patch_content}, "responses": response},
        "delete": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "delete", "responses": response},
    })
}

/// The document of one group version, or `None` if it is not served.
pub fn group_version(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in catalog.group_version(group, version) {
        let base = format!("/{}", gv_path(group, version));
        let item = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        paths.insert(item, operations(r));
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        paths.insert(collection, json!({
            "post": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "post", "parameters": [query_param("fieldValidation", "Ignore, Warn or Strict")], "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}, "responses": {"201": {"description": "Created"}}},
            "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "list", "responses": {"200": {"description": "OK"}}},
        }));
    }
    if paths.is_empty() {
        return None;
    }
    let custom: Vec<(String, Value)> = catalog
        .group_version(group, version)
        .flat_map(crate::api::custom::openapi_schemas)
        .collect();
    let components = if custom.is_empty() {
        schemas().clone()
    } else {
        let mut all = schemas().as_object().cloned().unwrap_or_default();
        all.extend(custom);
        Value::Object(all)
    };
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::server::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": components},
    }))
}
