//! The three patch types of the API: JSON Patch (RFC 6902) and JSON merge
//! patch (RFC 7386) through the `json-patch` crate, and strategic merge
//! patch, which no maintained crate covers, written here.
//!
//! Strategic merge patch semantics follow upstream apimachinery
//! (`pkg/util/strategicpatch`): lists with a merge key are merged element by
//! element, other lists are replaced, `null` deletes, and the directives
//! `$patch`, `$retainKeys`, `$setElementOrder/<f>` and
//! `$deleteFromPrimitiveList/<f>` are applied and never stored. Which lists
//! merge comes from [`list_strategy`], the merge keys of the built-in types.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The patch is malformed: answered with 400.
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well-formed but cannot apply: answered with 422.
    #[error("{0}")]
    Invalid(String),
}

/// Content types of the patch kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Apply a JSON Patch document.
///
/// # Errors
/// A malformed patch (400) or an operation that fails, e.g. a `test` or a
/// missing path (422, as upstream's "the server rejected our request due to
/// an error in our request").
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, Error> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| Error::BadRequest(format!("invalid JSON Patch: {e}")))?;
    // Upstream's JSON patch (evanphx/json-patch) finds a missing member of
    // an existing object or array equal to null in a `test`; clients rely
    // on it to test that a field is unset before adding it (kube-rs's
    // finalizer helper does). A missing parent still fails the test. The
    // operations run one by one on a copy, so a failure changes nothing.
    let mut out = doc.clone();
    for (i, op) in ops.0.into_iter().enumerate() {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
        {
            let path = t.path.as_str();
            let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
            match out.pointer(path) {
                Some(Value::Null) => continue,
                None if out
                    .pointer(parent)
                    .is_some_and(|p| p.is_object() || p.is_array()) =>
                {
                    continue;
                }
                _ => {}
            }
        }
        json_patch::patch(&mut out, std::slice::from_ref(&op)).map_err(|e| {
            // The crate numbers operations within what it was given.
            Error::Invalid(e.to_string().replacen(
                "operation '/0'",
                &format!("operation '/{i}'"),
                1,
            ))
        })?;
    }
    Ok(out)
}

/// Apply a JSON merge patch.
///
/// # Errors
/// When the patch is not a JSON object.
pub fn merge_patch(doc: &Value, patch: &Value) -> Result<Value, Error> {
    if !patch.is_object() {
        return Err(Error::BadRequest(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Elements are maps matched by this key.
    MergeKey(&'static str),
    /// A set of scalars (finalizers).
    MergePrimitive,
    /// The patch list replaces the original.
    Replace,
}

/// The strategy of list field `field`, whose parent map sits at `path`
/// (map keys from the root; list positions omitted) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[String], field: &str) -> ListStrategy {
    let parent = path.last().map(String::as_str).unwrap_or_default();
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "volumes" if parent == "spec" => ListStrategy::MergeKey("name"),
        "env" if in_container => ListStrategy::MergeKey("name"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if kind == "Service" && path.len() == 1 && parent == "spec" => {
            ListStrategy::MergeKey("port")
        }
        "volumeMounts" if in_container => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeKey("devicePath"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "podIPs" | "hostIPs" if parent == "status" => ListStrategy::MergeKey("ip"),
        "conditions" if parent == "status" => ListStrategy::MergeKey("type"),
        "addresses" if parent == "status" && kind == "Node" => ListStrategy::MergeKey("type"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "ownerReferences" if parent == "metadata" => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::MergePrimitive,
        _ => ListStrategy::Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Apply a strategic merge patch to `doc`, an object of `kind`.
///
/// # Errors
/// A malformed patch or directive (400), or a list that cannot be merged
/// (422).
pub fn strategic_merge(kind: &str, doc: &Value, patch: &Value) -> Result<Value, Error> {
    let Value::Object(patch) = patch else {
        return Err(Error::BadRequest(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let original = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut path = Vec::new();
    merge_map(kind, &mut path, original, patch.clone()).map(Value::Object)
}

fn merge_map(
    kind: &str,
    path: &mut Vec<String>,
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
) -> Result<Map<String, Value>, Error> {
    if let Some(directive) = patch.remove("$patch") {
        return match directive.as_str() {
            Some("replace") => Ok(patch),
            Some("delete") => Ok(Map::new()),
            _ => Err(Error::BadRequest(format!(
                "unknown patch type: {directive} in map"
            ))),
        };
    }
    if let Some(retain) = patch.remove("$retainKeys") {
        let Value::Array(keep) = retain else {
            return Err(Error::BadRequest(
                "invalid patch format of retainKeys".into(),
            ));
        };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        for (k, v) in &patch {
            if !v.is_null()
                && !k.starts_with(SET_ORDER)
                && !k.starts_with(DELETE_PRIMITIVE)
                && !keep.contains(&k.as_str())
            {
                return Err(Error::BadRequest(
                    "invalid patch format of retainKeys".into(),
                ));
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
    }

    // $setElementOrder directives, each handled with its list.
    let orders: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER))
        .cloned()
        .collect();
    for order_key in orders {
        let field = order_key[SET_ORDER.len()..].to_owned();
        if field.is_empty() {
            return Err(Error::BadRequest(
                "invalid patch format of setElementOrder list".into(),
            ));
        }
        let Some(Value::Array(order)) = patch.remove(&order_key) else {
            return Err(Error::BadRequest(format!(
                "invalid patch format of setElementOrder list: {order_key} is not a list"
            )));
        };
        let strategy = list_strategy(kind, path, &field);
        let patch_list = patch.remove(&field);
        let original_list = original.get(&field).and_then(Value::as_array).cloned();
        let merged = match (original_list.clone(), patch_list) {
            (None, None) => continue,
            (Some(orig), None) => orig,
            (None, Some(Value::Array(p))) => strip_directive_elements(p),
            (_, Some(Value::Null)) => {
                original.remove(&field);
                continue;
            }
            (Some(orig), Some(Value::Array(p))) => {
                check_order_matches(&p, &order, strategy)?;
                path.push(field.clone());
                let m = merge_list(kind, path, orig, p, strategy, false);
                path.pop();
                m?
            }
            (_, Some(other)) => {
                original.insert(field, clean_new_value(other));
                continue;
            }
        };
        let live = original_list.unwrap_or_default();
        let ordered = apply_element_order(merged, &order, &live, strategy)?;
        original.insert(field, Value::Array(ordered));
    }

    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let field = field.to_owned();
            if field.is_empty() {
                return Err(Error::BadRequest(
                    "invalid patch format of primitive list".into(),
                ));
            }
            match value {
                Value::Null => {
                    original.remove(&field);
                }
                Value::Array(remove) => {
                    if let Some(Value::Array(list)) = original.get_mut(&field) {
                        list.retain(|v| !remove.contains(v));
                    }
                }
                _ => {
                    return Err(Error::BadRequest(
                        "invalid patch format of primitive list".into(),
                    ));
                }
            }
            continue;
        }
        if value.is_null() {
            original.remove(&key);
            continue;
        }
        let Some(current) = original.remove(&key) else {
            if value.get("$patch").is_none() {
                original.insert(key, clean_new_value(value));
            }
            continue;
        };
        let merged = match (current, value) {
            (Value::Object(o), Value::Object(p)) => {
                path.push(key.clone());
                let m = merge_map(kind, path, o, p);
                path.pop();
                Value::Object(m?)
            }
            (Value::Array(o), Value::Array(p)) => {
                let strategy = list_strategy(kind, path, &key);
                if strategy == ListStrategy::Replace {
                    Value::Array(p)
                } else {
                    path.push(key.clone());
                    let m = merge_list(kind, path, o, p, strategy, true);
                    path.pop();
                    Value::Array(m?)
                }
            }
            (_, p) => clean_new_value(p),
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// A value added where nothing was: nulls and `$patch` maps removed at every
/// depth, as upstream does.
fn clean_new_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with('$'))
                .filter(|(_, v)| v.get("$patch").is_none())
                .map(|(k, v)| (k, clean_new_value(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|v| v.get("$patch").is_none())
                .map(clean_new_value)
                .collect(),
        ),
        other => other,
    }
}

fn strip_directive_elements(list: Vec<Value>) -> Vec<Value> {
    list.into_iter()
        .filter(|v| v.get("$patch").is_none())
        .map(clean_new_value)
        .collect()
}

fn key_of(v: &Value, key: &str) -> Option<Value> {
    v.get(key).cloned()
}

/// Merge two lists under `strategy`; `reorder` puts the result through the
/// same ordering upstream applies without a `$setElementOrder` directive.
fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    original: Vec<Value>,
    patch: Vec<Value>,
    strategy: ListStrategy,
    reorder: bool,
) -> Result<Vec<Value>, Error> {
    match strategy {
        ListStrategy::Replace => Ok(strip_directive_elements(patch)),
        ListStrategy::MergePrimitive => {
            if patch.iter().any(|v| v.is_object() || v.is_array()) {
                return Err(Error::Invalid(
                    "list element types are not identical".into(),
                ));
            }
            let mut out = original;
            for v in patch {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(key) => {
            let mut out = original;
            let mut plain = Vec::new();
            let mut replace = false;
            for item in patch {
                match item.get("$patch").and_then(Value::as_str) {
                    Some("delete") => {
                        let k = key_of(&item, key).ok_or_else(|| {
                            Error::BadRequest(format!(
                                "map: {item} does not contain declared merge key: {key}"
                            ))
                        })?;
                        out.retain(|o| key_of(o, key).as_ref() != Some(&k));
                    }
                    Some("replace") => replace = true,
                    Some("merge") => {
                        return Err(Error::BadRequest(
                            "merging lists cannot yet be specified in the patch".into(),
                        ));
                    }
                    Some(other) => {
                        return Err(Error::BadRequest(format!("unknown patch type: {other}")));
                    }
                    None if item.is_object() => plain.push(item),
                    None => {
                        return Err(Error::Invalid(format!(
                            "cannot merge lists without merge key: element {item} is not an object"
                        )));
                    }
                }
            }
            if replace {
                return Ok(strip_directive_elements(plain));
            }
            let live = out.clone();
            let mut patch_keys = Vec::new();
            for item in plain {
                let k = key_of(&item, key).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    ))
                })?;
                patch_keys.push(k.clone());
                let Value::Object(item) = item else {
                    unreachable!("checked above")
                };
                match out.iter().position(|o| key_of(o, key).as_ref() == Some(&k)) {
                    Some(i) => {
                        let Value::Object(current) = std::mem::take(&mut out[i]) else {
                            return Err(Error::Invalid(format!(
                                "list element with {key}={k} is not an object"
                            )));
                        };
                        out[i] = Value::Object(merge_map(kind, path, current, item)?);
                    }
                    None => out.push(Value::Object(item)),
                }
            }
            if !reorder {
                return Ok(out);
            }
            let order: Vec<Value> = patch_keys
                .into_iter()
                .map(|k| {
                    let mut m = Map::new();
                    m.insert(key.to_owned(), k);
                    Value::Object(m)
                })
                .collect();
            apply_element_order(out, &order, &live, strategy)
        }
    }
}

/// The identity of a list element for ordering: its merge key value, or
/// itself for scalars.
fn identity(v: &Value, strategy: ListStrategy) -> Option<Value> {
    match strategy {
        ListStrategy::MergeKey(key) => key_of(v, key),
        _ => Some(v.clone()),
    }
}

/// The patch's own elements must appear in the directive's order.
fn check_order_matches(
    patch: &[Value],
    order: &[Value],
    strategy: ListStrategy,
) -> Result<(), Error> {
    let ids: Vec<Option<Value>> = order.iter().map(|o| identity(o, strategy)).collect();
    let mut last = None;
    for item in patch.iter().filter(|v| v.get("$patch").is_none()) {
        let id = identity(item, strategy);
        let pos = ids.iter().position(|o| *o == id);
        if let Some(p) = pos {
            if last.is_some_and(|l| p < l) {
                return Err(Error::BadRequest(
                    "the order in patch list doesn't match $setElementOrder list".into(),
                ));
            }
            last = Some(p);
        }
    }
    Ok(())
}

/// Order `merged` as upstream does: elements named in `order` sorted by it,
/// the rest ("server-only") kept in live order, then interleaved so that a
/// server-only element comes first only when it preceded the next ordered
/// element in the live list.
fn apply_element_order(
    merged: Vec<Value>,
    order: &[Value],
    live: &[Value],
    strategy: ListStrategy,
) -> Result<Vec<Value>, Error> {
    let order_ids: Vec<Option<Value>> = order.iter().map(|o| identity(o, strategy)).collect();
    let live_ids: Vec<Option<Value>> = live.iter().map(|o| identity(o, strategy)).collect();
    let live_pos = |v: &Value| {
        let id = identity(v, strategy);
        live_ids.iter().position(|l| *l == id)
    };
    let (mut ordered, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| order_ids.contains(&identity(v, strategy)));
    ordered.sort_by_key(|v| {
        let id = identity(v, strategy);
        order_ids.iter().position(|o| *o == id)
    });
    server_only.sort_by_key(|v| live_pos(v));
    let mut out = Vec::with_capacity(ordered.len() + server_only.len());
    let (mut left, mut right) = (
        server_only.into_iter().peekable(),
        ordered.into_iter().peekable(),
    );
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                matches!((live_pos(l), live_pos(r)), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn smp(kind: &str, doc: Value, patch: Value) -> Value {
        strategic_merge(kind, &doc, &patch).unwrap()
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn kubectl_apply_patch_changes_image_and_removes_env() {
        // The body kubectl 1.32 sends for "changed image, removed env B".
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "imagePullPolicy": "IfNotPresent"}
        ]}}}});
        let patch = json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"c"}],"containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"$patch":"delete","name":"B"}],"image":"nginx:2","name":"c"}]}}}});
        let out = smp("Deployment", live, patch);
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "nginx:2", "env": [{"name": "A", "value": "1"}], "imagePullPolicy": "IfNotPresent"}
            ]}}}})
        );
    }

    #[test]
    fn set_element_order_matches_upstream_worked_example() {
        let live = json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
        let patch = json!({"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}], "containers": [{"name": "d"}]});
        assert_eq!(
            names(&smp("Pod", live, patch)["containers"]),
            ["b", "c", "a", "d"]
        );
        let live = json!({"containers": [{"name": "a"}, {"name": "c"}, {"name": "b"}]});
        let patch = json!({"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}], "containers": [{"name": "d"}]});
        assert_eq!(
            names(&smp("Pod", live, patch)["containers"]),
            ["c", "a", "d", "b"]
        );
    }

    #[test]
    fn reordering_containers_follows_the_directive() {
        let live =
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]});
        let patch = json!({"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]});
        let out = smp("Pod", live, patch);
        assert_eq!(
            out,
            json!({"containers": [{"name": "b", "image": "y"}, {"name": "a", "image": "x"}]})
        );
    }

    #[test]
    fn new_element_without_directive_goes_before_server_only_ones() {
        let live = json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
        let out = smp("Pod", live, json!({"containers": [{"name": "d"}]}));
        assert_eq!(names(&out["containers"]), ["d", "a", "b", "c"]);
    }

    #[test]
    fn lists_without_merge_key_are_replaced_and_null_deletes() {
        let live = json!({"spec": {"containers": [{"name": "c", "args": ["a", "b"], "tty": true}]}, "metadata": {"labels": {"a": "1", "b": "2"}}});
        let patch = json!({"spec": {"containers": [{"name": "c", "args": ["z"], "tty": null}]}, "metadata": {"labels": {"a": null, "c": "3"}}});
        assert_eq!(
            smp("Pod", live, patch),
            json!({"spec": {"containers": [{"name": "c", "args": ["z"]}]}, "metadata": {"labels": {"b": "2", "c": "3"}}})
        );
    }

    #[test]
    fn service_ports_merge_on_port_and_container_ports_on_container_port() {
        let live = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = smp(
            "Service",
            live,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        );
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 8080);
    }

    #[test]
    fn directives_replace_delete_retain_and_primitive_lists() {
        let live = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}
        });
        assert_eq!(
            smp("Deployment", live, patch),
            json!({"metadata": {"finalizers": ["b", "c"]}, "spec": {"strategy": {"type": "Recreate"}}})
        );
        let replaced = smp(
            "Pod",
            json!({"a": {"x": 1, "y": 2}}),
            json!({"a": {"$patch": "replace", "z": 3}}),
        );
        assert_eq!(replaced, json!({"a": {"z": 3}}));
        let list_replaced = smp(
            "Pod",
            json!({"containers": [{"name": "a"}, {"name": "b"}]}),
            json!({"containers": [{"$patch": "replace"}, {"name": "c"}]}),
        );
        assert_eq!(list_replaced, json!({"containers": [{"name": "c"}]}));
    }

    #[test]
    fn malformed_directives_are_bad_requests() {
        for patch in [
            json!({"a": {"$patch": "bogus"}}),
            json!({"$retainKeys": "x"}),
            json!({"$retainKeys": ["a"], "b": 1}),
            json!({"containers": [{"$patch": "delete"}]}),
            json!({"$setElementOrder/containers": 3}),
        ] {
            let doc = json!({"a": {"x": 1}, "containers": [{"name": "a"}]});
            let err = strategic_merge("Pod", &doc, &patch).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{patch}: {err}");
        }
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let doc = json!({"spec": {"replicas": 1}, "metadata": {"labels": {"a": "1"}}});
        let out = json_patch(
            &doc,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert!(matches!(
            json_patch(
                &doc,
                &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
            ),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            json_patch(&doc, &json!({"op": "x"})),
            Err(Error::BadRequest(_))
        ));
        // `test` for null: a missing member of an existing object passes
        // (as upstream's evanphx/json-patch), a missing parent fails.
        let unset = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        assert_eq!(
            json_patch(&doc, &unset).unwrap()["metadata"]["finalizers"],
            json!(["f"])
        );
        assert!(matches!(
            json_patch(
                &doc,
                &json!([{"op": "test", "path": "/status/ready", "value": null}])
            ),
            Err(Error::Invalid(_))
        ));
        let out = merge_patch(
            &doc,
            &json!({"metadata": {"labels": {"a": null, "b": "2"}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..5).prop_map(Value::from),
            "[a-c]{1,2}".prop_map(Value::from)
        ]
    }

    fn json_doc() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn containers() -> impl Strategy<Value = Value> {
        prop::collection::vec(("[a-e]", "[x-z]"), 0..6).prop_map(|v| {
            Value::Array(
                v.into_iter()
                    .map(|(n, i)| json!({"name": n, "image": i}))
                    .collect(),
            )
        })
    }

    proptest! {
        #[test]
        fn merge_patch_with_empty_object_is_identity(doc in json_doc()) {
            prop_assume!(doc.is_object());
            prop_assert_eq!(merge_patch(&doc, &json!({})).unwrap(), doc.clone());
        }

        #[test]
        fn merge_patch_is_idempotent(doc in json_doc(), patch in json_doc()) {
            prop_assume!(patch.is_object());
            let once = merge_patch(&doc, &patch).unwrap();
            prop_assert_eq!(merge_patch(&once, &patch).unwrap(), once);
        }

        #[test]
        fn strategic_merge_never_duplicates_merge_keys(live in containers(), patch in containers()) {
            // Live lists have unique names, as the API guarantees.
            let mut seen = std::collections::HashSet::new();
            let live: Vec<Value> = live.as_array().unwrap().iter().filter(|c| seen.insert(c["name"].clone())).cloned().collect();
            let out = strategic_merge("Pod", &json!({"containers": live}), &json!({"containers": patch})).unwrap();
            let names: Vec<&Value> = out["containers"].as_array().unwrap().iter().map(|c| &c["name"]).collect();
            let unique: std::collections::HashSet<_> = names.iter().collect();
            prop_assert_eq!(unique.len(), names.len(), "{:?}", names);
        }

        #[test]
        fn strategic_merge_is_idempotent(doc in json_doc(), patch in json_doc()) {
            prop_assume!(patch.is_object());
            let once = strategic_merge("Pod", &doc, &patch).unwrap();
            prop_assert_eq!(strategic_merge("Pod", &once, &patch).unwrap(), once);
        }
    }
}
