//! Reading an object's metadata: which owner reference is its controller.
//! (Upstream's `metav1.GetControllerOf`.) Writing owner references is the
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
