//! How an object's fields merge, read from its OpenAPI v3 schema: which
//! nodes are maps (granular or atomic), which are lists (atomic, sets, or
//! maps keyed by fields) and which are scalars. The same reader serves the
//! built-in kinds (component schemas joined by `$ref`) and custom resources
//! (a CRD version's structural schema).
//!
//! Where there is no schema (a `x-kubernetes-preserve-unknown-fields`
//! subtree, an unknown field), the shape is deduced from the value, as
//! structured-merge-diff deduces it: maps merge field by field, lists are
//! atomic.

use serde_json::{Map, Value};

use crate::api::components::REF_PREFIX;

/// How a list merges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole.
    Atomic,
    /// Items are scalars, merged by value.
    Set,
    /// Items are objects, merged by these key fields.
    Map(Vec<String>),
}

/// What a node of an object is, for merging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Scalar,
    /// A map or struct; `atomic` when it is replaced whole.
    Map {
        atomic: bool,
    },
    List(ListType),
}

/// A place in a schema (or nowhere, when the shape is deduced).
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    schema: Option<&'a Value>,
    components: Option<&'a Map<String, Value>>,
    /// The component this node is, when it is one by name (a kind's root).
    name: Option<&'a str>,
}

/// How deep `$ref` chains are followed before giving up.
const MAX_REFS: usize = 8;

impl<'a> Shape<'a> {
    /// The shape of a schema whose references resolve in `components`.
    pub fn new(schema: &'a Value, components: Option<&'a Map<String, Value>>) -> Self {
        Self {
            schema: Some(schema),
            components,
            name: None,
        }
    }

    /// The shape of component `name` (deduced if there is none).
    pub fn component(name: &'a str, components: &'a Map<String, Value>) -> Self {
        Self {
            schema: components.get(name),
            components: Some(components),
            name: Some(name),
        }
    }

    /// No schema: every shape is deduced from the value.
    pub fn deduced() -> Self {
        Self {
            schema: None,
            components: None,
            name: None,
        }
    }

    fn at(&self, schema: Option<&'a Value>) -> Self {
        Self {
            schema,
            components: self.components,
            name: None,
        }
    }

    fn reference(schema: &Value) -> Option<&str> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return Some(r);
        }
        match schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([one]) => one.get("$ref").and_then(Value::as_str),
            _ => None,
        }
    }

    /// The component a reference names.
    pub fn type_name(&self) -> Option<&'a str> {
        self.name.or_else(|| {
            self.schema
                .and_then(Self::reference)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
        })
    }

    /// The schema with its references followed.
    fn resolved(&self) -> Option<&'a Value> {
        let mut schema = self.schema?;
        for _ in 0..MAX_REFS {
            let Some(name) = Self::reference(schema).and_then(|r| r.strip_prefix(REF_PREFIX))
            else {
                return Some(schema);
            };
            schema = self.components?.get(name)?;
        }
        None
    }

    /// An extension, from the node itself or the component it refers to.
    fn extension(&self, key: &str) -> Option<&'a Value> {
        self.schema
            .and_then(|s| s.get(key))
            .or_else(|| self.resolved().and_then(|s| s.get(key)))
    }

    fn extension_is(&self, key: &str, value: &str) -> bool {
        self.extension(key).and_then(Value::as_str) == Some(value)
    }

    /// What this node is, for a value found there.
    pub fn kind(&self, value: &Value) -> Kind {
        let Some(schema) = self.resolved() else {
            return deduce(value);
        };
        if self
            .extension("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Kind::Scalar;
        }
        let declared = schema.get("type").and_then(Value::as_str);
        let is_map = declared == Some("object")
            || (declared.is_none()
                && (schema.get("properties").is_some()
                    || schema.get("additionalProperties").is_some()));
        let is_list =
            declared == Some("array") || (declared.is_none() && schema.get("items").is_some());
        if is_map {
            Kind::Map {
                atomic: self.extension_is("x-kubernetes-map-type", "atomic"),
            }
        } else if is_list {
            Kind::List(self.list_type())
        } else if declared.is_some() {
            Kind::Scalar
        } else {
            // No type: anything goes, shaped by the value (atomic if marked).
            match deduce(value) {
                Kind::Map { .. } => Kind::Map {
                    atomic: self.extension_is("x-kubernetes-map-type", "atomic"),
                },
                other => other,
            }
        }
    }

    fn list_type(&self) -> ListType {
        match self
            .extension("x-kubernetes-list-type")
            .and_then(Value::as_str)
        {
            Some("set") => return ListType::Set,
            Some("map") => {
                let keys = self
                    .extension("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(|k| k.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                return ListType::Map(keys);
            }
            Some(_) => return ListType::Atomic,
            None => {}
        }
        // Lists marked only for strategic merge patch merge as it does.
        let strategy = self
            .extension("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if strategy.split(',').any(|s| s == "merge") {
            return match self
                .extension("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
            {
                Some(key) => ListType::Map(vec![key.to_owned()]),
                None => ListType::Set,
            };
        }
        ListType::Atomic
    }

    /// The shape of field `name`, and whether the schema names the field
    /// (a struct field) rather than taking any key (a map entry).
    pub fn field(&self, name: &str) -> (Shape<'a>, bool) {
        let Some(schema) = self.resolved() else {
            return (Self::deduced(), false);
        };
        if let Some(prop) = schema.get("properties").and_then(|p| p.get(name)) {
            return (self.at(Some(prop)), true);
        }
        match schema.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => (self.at(Some(ap)), false),
            _ => (Self::deduced(), false),
        }
    }

    /// Whether a value here may have field `name`: `false` only where
    /// the schema lists an object's properties and `name` is not one (and
    /// there are no `additionalProperties`, no
    /// `x-kubernetes-preserve-unknown-fields`).
    pub fn declares(&self, name: &str) -> bool {
        let Some(schema) = self.resolved() else {
            return true;
        };
        let flag = |key| self.extension(key) == Some(&Value::Bool(true));
        if flag("x-kubernetes-preserve-unknown-fields")
            || flag("x-kubernetes-int-or-string")
            || schema
                .get("additionalProperties")
                .is_some_and(|a| a != &Value::Bool(false))
        {
            return true;
        }
        // An object schema without properties (RawExtension, say) is
        // taken to hold anything.
        schema
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(|props| props.contains_key(name))
    }

    /// Whether this node is a resource of its own
    /// (`x-kubernetes-embedded-resource`).
    pub fn embedded_resource(&self) -> bool {
        self.extension("x-kubernetes-embedded-resource") == Some(&Value::Bool(true))
    }

    /// Whether the schema names field `name`.
    pub fn names(&self, name: &str) -> bool {
        self.resolved()
            .and_then(|s| s.get("properties"))
            .is_some_and(|p| p.get(name).is_some())
    }

    /// The fields the schema requires.
    pub fn required(&self) -> impl Iterator<Item = &'a str> {
        self.resolved()
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    }

    /// The shape of a list's items.
    pub fn items(&self) -> Shape<'a> {
        match self.resolved().and_then(|s| s.get("items")) {
            Some(items) => self.at(Some(items)),
            None => Self::deduced(),
        }
    }

    /// The default of a list item's key field, used when an item omits it.
    pub fn key_default(&self, key: &str) -> Option<&'a Value> {
        let items = self.items();
        let (field, _) = items.field(key);
        field.resolved().and_then(|s| s.get("default"))
    }
}

fn deduce(value: &Value) -> Kind {
    match value {
        Value::Object(_) => Kind::Map { atomic: false },
        Value::Array(_) => Kind::List(ListType::Atomic),
        _ => Kind::Scalar,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_in_shapes_come_from_the_components() {
        let components = crate::api::components::structure();
        let pod = Shape::component("io.k8s.api.core.v1.Pod", components);
        let (spec, named) = pod.field("spec");
        assert!(named);
        let (containers, _) = spec.field("containers");
        assert_eq!(
            containers.kind(&json!([])),
            Kind::List(ListType::Map(vec!["name".into()]))
        );
        let (ports, _) = containers.items().field("ports");
        assert_eq!(ports.key_default("protocol"), Some(&json!("TCP")));
        let (selector, _) = spec.field("nodeSelector");
        assert_eq!(selector.kind(&json!({})), Kind::Map { atomic: true });
        let (labels, _) = pod.field("metadata").0.field("labels");
        assert_eq!(labels.kind(&json!({})), Kind::Map { atomic: false });
        let (app, named) = labels.field("app");
        assert!(!named);
        assert_eq!(app.kind(&json!("x")), Kind::Scalar);
    }

    #[test]
    fn unknown_shapes_are_deduced() {
        let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let shape = Shape::new(&schema, None);
        let (anything, named) = shape.field("x");
        assert!(!named);
        assert_eq!(anything.kind(&json!([1])), Kind::List(ListType::Atomic));
        assert_eq!(anything.kind(&json!({"a": 1})), Kind::Map { atomic: false });
    }
}
