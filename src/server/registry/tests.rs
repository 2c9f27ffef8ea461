//! Registry behaviour that needs no server: raw object splicing.

use serde_json::{Value, json};

use super::*;

fn splice(stored: &Value, rv: u64) -> Value {
    let raw = RawObject {
        json: serde_json::to_vec(stored).unwrap(),
        revision: Revision(rv),
    };
    let mut out = Vec::new();
    raw.write_json(&mut out);
    let spliced: Value = serde_json::from_slice(&out).expect("spliced JSON parses");
    assert_eq!(
        spliced,
        raw.decode().unwrap(),
        "splicing and decoding agree"
    );
    spliced
}

#[test]
fn resource_version_is_spliced_into_top_level_metadata() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"metadata": "{\"a\":1}", "x": "\"metadata\":{"}, "metadata": {"name": "c"}});
    let out = splice(&cm, 42);
    assert_eq!(
        out["metadata"],
        json!({"name": "c", "resourceVersion": "42"})
    );
    assert_eq!(
        out["data"], cm["data"],
        "look-alike text inside values is untouched"
    );
    let empty = splice(&json!({"kind": "X", "metadata": {}}), 7);
    assert_eq!(empty["metadata"], json!({"resourceVersion": "7"}));
    let nested = splice(
        &json!({"a": {"metadata": {"x": 1}}, "metadata": {"name": "n"}}),
        3,
    );
    assert_eq!(nested["a"]["metadata"], json!({"x": 1}));
    assert_eq!(nested["metadata"]["resourceVersion"], "3");
}

/// An object whose stored JSON has exactly `len` bytes.
fn object_of_len(len: usize) -> Value {
    let empty = encode(&json!({"metadata": {"name": "n"}, "data": {"a": ""}})).len();
    json!({"metadata": {"name": "n"}, "data": {"a": "x".repeat(len - empty)}})
}

#[test]
fn objects_up_to_etcds_request_limit_are_stored() {
    let key = "/registry/configmaps/default/n";
    let limit = MAX_STORED_BYTES - key.len();
    let mut fits = object_of_len(limit);
    assert_eq!(fit_for_store(key, &mut fits).unwrap().len(), limit);
    let mut over = object_of_len(limit + 1);
    let err = fit_for_store(key, &mut over).unwrap_err();
    assert_eq!(
        (err.code, err.reason, err.message.as_str()),
        (500, "", "etcdserver: request is too large")
    );
}

#[test]
fn managed_fields_are_dropped_from_an_object_too_large_to_store() {
    let key = "/registry/configmaps/default/n";
    let mut obj = object_of_len(1024);
    obj["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Update", "fieldsV1": {"f:x": "y".repeat(MAX_STORED_BYTES)}}]);
    let stored = fit_for_store(key, &mut obj).expect("fits without managedFields");
    assert!(obj["metadata"].get("managedFields").is_none());
    assert_eq!(serde_json::from_slice::<Value>(&stored).unwrap(), obj);
    // Small managedFields stay.
    let mut small = object_of_len(1024);
    small["metadata"]["managedFields"] = json!([{"manager": "m"}]);
    fit_for_store(key, &mut small).unwrap();
    assert!(small["metadata"].get("managedFields").is_some());
}

#[test]
fn a_write_equal_but_for_the_resource_version_is_a_no_op() {
    let old = json!({"metadata": {"name": "a", "resourceVersion": "7"}, "spec": {"x": 1}});
    let same = json!({"metadata": {"name": "a"}, "spec": {"x": 1}});
    assert!(same_but_resource_version(&same, &old));
    for changed in [
        json!({"metadata": {"name": "a"}, "spec": {"x": 2}}),
        json!({"metadata": {"name": "a", "labels": {"l": "v"}}, "spec": {"x": 1}}),
        json!({"metadata": {"name": "a"}}),
        json!({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {}}),
        json!({"metadata": {"name": "b"}, "spec": {"x": 1}}),
        json!({"metadata": {"name": "a", "uid": "u"}, "spec": {"x": 1}}),
    ] {
        assert!(!same_but_resource_version(&changed, &old), "{changed}");
    }
    let unversioned = json!({"metadata": {"name": "a"}, "spec": {"x": 1}});
    assert!(same_but_resource_version(&same, &unversioned));
}

#[test]
fn stored_bytes_leave_out_only_the_resource_version() {
    let obj = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a", "resourceVersion": "9", "labels": {"resourceVersion": "kept"}},
        "data": {"resourceVersion": "kept too"},
    });
    let mut expected = obj.clone();
    expected["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    assert_eq!(encode(&obj), serde_json::to_vec(&expected).unwrap());
    assert_eq!(encode(&json!("scalar")), br#""scalar""#);
}
