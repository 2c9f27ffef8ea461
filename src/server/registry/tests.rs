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
