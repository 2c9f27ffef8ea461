//! Reading an object's metadata: a string field, whether the object is
//! being deleted, and which owner reference is its controller (upstream's
//! `metav1.GetControllerOf`). Writing metadata is the registry's and the
//! controllers' business, not this module's.

use serde_json::{Value, json};

/// The owner reference with `controller: true`, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller") == Some(&json!(true)))
        })
}

/// `metadata.<key>` as a string, empty when unset.
pub fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether the object has a deletion timestamp (it is being deleted).
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}
