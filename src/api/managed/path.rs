//! Field paths and sets of them, as structured-merge-diff writes them in
//! `managedFields` (`FieldsV1`): `f:<field>`, `k:{<key fields>}` for an item
//! of a list keyed by fields, `v:<value>` for an item of a set, `i:<index>`,
//! and `.` for a node that is owned itself as well as through its children.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq)]
pub enum Element {
    /// A field of a map or struct.
    Field(String),
    /// An item of a list keyed by fields: the key fields, sorted by name.
    Key(Vec<(String, Value)>),
    /// An item of a set, by its value.
    Value(Value),
    /// An item of a list by position (only in sets written by others).
    Index(usize),
}

impl Eq for Element {}

impl Ord for Element {
    /// Fields, then keys, then values, then indexes; as upstream orders them.
    fn cmp(&self, other: &Self) -> Ordering {
        fn rank(e: &Element) -> u8 {
            match e {
                Element::Field(_) => 0,
                Element::Key(_) => 1,
                Element::Value(_) => 2,
                Element::Index(_) => 3,
            }
        }
        match (self, other) {
            (Element::Field(a), Element::Field(b)) => a.cmp(b),
            (Element::Key(a), Element::Key(b)) => compare_keys(a, b),
            (Element::Value(a), Element::Value(b)) => compare_values(a, b),
            (Element::Index(a), Element::Index(b)) => a.cmp(b),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

impl PartialOrd for Element {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn compare_keys(a: &[(String, Value)], b: &[(String, Value)]) -> Ordering {
    for ((an, av), (bn, bv)) in a.iter().zip(b) {
        let c = an.cmp(bn).then_with(|| compare_values(av, bv));
        if c != Ordering::Equal {
            return c;
        }
    }
    a.len().cmp(&b.len())
}

/// A total order of JSON values: numbers, strings, booleans, lists, maps,
/// then null (structured-merge-diff's `value.Compare`).
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                x.partial_cmp(&y).unwrap_or(Ordering::Equal)
            }
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = compare_values(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<_> = x.iter().collect();
            let mut ys: Vec<_> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for ((pk, pv), (qk, qv)) in xs.iter().zip(&ys) {
                let c = pk.cmp(qk).then_with(|| compare_values(pv, qv));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// A value as upstream prints it in a path: strings quoted.
fn display_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(display_value)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", display_value(v)))
            .collect::<String>(),
        other => other.to_string(),
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Field(name) => write!(f, ".{name}"),
            Element::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", display_value(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            Element::Value(v) => write!(f, "[={}]", display_value(v)),
            Element::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path as upstream prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn display(path: &[Element]) -> String {
    path.iter().map(ToString::to_string).collect()
}

impl Element {
    /// The `FieldsV1` key of this element.
    fn serialize(&self) -> String {
        match self {
            Element::Field(name) => format!("f:{name}"),
            Element::Key(fields) => {
                let object: Map<String, Value> = fields.iter().cloned().collect();
                format!("k:{}", Value::Object(object))
            }
            Element::Value(v) => format!("v:{v}"),
            Element::Index(i) => format!("i:{i}"),
        }
    }

    fn deserialize(s: &str) -> Result<Element, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("missing colon: {s}"))?;
        match kind {
            "f" => Ok(Element::Field(rest.to_owned())),
            "v" => serde_json::from_str(rest)
                .map(Element::Value)
                .map_err(|e| e.to_string()),
            "k" => {
                let object: Map<String, Value> =
                    serde_json::from_str(rest).map_err(|e| e.to_string())?;
                let mut fields: Vec<(String, Value)> = object.into_iter().collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(Element::Key(fields))
            }
            "i" => rest
                .parse()
                .map(Element::Index)
                .map_err(|e: std::num::ParseIntError| e.to_string()),
            _ => Err("unknown path element type".into()),
        }
    }
}

/// A set of paths, as a tree: `members` are owned leaves (or nodes owned
/// themselves), `children` lead to deeper paths. Children are never empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Set {
    members: BTreeSet<Element>,
    children: BTreeMap<Element, Set>,
}

impl Set {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Add `path` (the empty path, the object itself, is never a member).
    pub fn insert(&mut self, path: &[Element]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn has(&self, path: &[Element]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// The paths below `element`, relative to it.
    pub fn child(&self, element: &Element) -> Option<&Set> {
        self.children.get(element)
    }

    /// Whether `element` leads anywhere in this set (as a member or a parent).
    pub fn touches(&self, element: &Element) -> bool {
        self.members.contains(element) || self.children.contains_key(element)
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (e, c) in &other.children {
            let merged = match out.children.get(e) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(e.clone(), merged);
        }
        out
    }

    /// The paths of this set that `other` lacks (members one by one; a
    /// member of `other` does not take away the paths below it).
    pub fn difference(&self, other: &Set) -> Set {
        let members = self
            .members
            .iter()
            .filter(|m| !other.members.contains(m))
            .cloned()
            .collect();
        let mut children = BTreeMap::new();
        for (e, c) in &self.children {
            let rest = match other.children.get(e) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !rest.is_empty() {
                children.insert(e.clone(), rest);
            }
        }
        Set { members, children }
    }

    /// The paths of this set that are not `other`'s or below one of them.
    pub fn recursive_difference(&self, other: &Set) -> Set {
        let members = self
            .members
            .iter()
            .filter(|m| !other.members.contains(m))
            .cloned()
            .collect();
        let mut children = BTreeMap::new();
        for (e, c) in &self.children {
            if other.members.contains(e) {
                continue;
            }
            let rest = match other.children.get(e) {
                Some(o) => c.recursive_difference(o),
                None => c.clone(),
            };
            if !rest.is_empty() {
                children.insert(e.clone(), rest);
            }
        }
        Set { members, children }
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let both = c.intersection(o);
                if !both.is_empty() {
                    children.insert(e.clone(), both);
                }
            }
        }
        Set { members, children }
    }

    /// Keep only the paths under `element` (the rest of the object is
    /// another writer's, e.g. a status subresource's spec).
    pub fn only_under(&self, element: &Element) -> Set {
        let mut out = Set::new();
        if self.members.contains(element) {
            out.members.insert(element.clone());
        }
        if let Some(c) = self.children.get(element) {
            out.children.insert(element.clone(), c.clone());
        }
        out
    }

    /// Drop the paths under (and at) `element`.
    pub fn without(&self, element: &Element) -> Set {
        let mut out = self.clone();
        out.members.remove(element);
        out.children.remove(element);
        out
    }

    /// Every path, members of a node before the paths below its children,
    /// in upstream's order.
    pub fn paths(&self) -> Vec<Vec<Element>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<Element>, out: &mut Vec<Vec<Element>>) {
        for m in &self.members {
            let mut p = prefix.clone();
            p.push(m.clone());
            out.push(p);
        }
        for (e, c) in &self.children {
            prefix.push(e.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    pub(super) fn members(&self) -> impl Iterator<Item = &Element> {
        self.members.iter()
    }

    pub(super) fn children(&self) -> impl Iterator<Item = (&Element, &Set)> {
        self.children.iter()
    }

    pub(super) fn add_member(&mut self, element: Element) {
        self.members.insert(element);
    }

    pub(super) fn set_child(&mut self, element: Element, set: Set) {
        if set.is_empty() {
            self.children.remove(&element);
        } else {
            self.children.insert(element, set);
        }
    }

    /// The `FieldsV1` form: `{"f:spec": {"f:replicas": {}}}`.
    pub fn to_fields_v1(&self) -> Value {
        self.emit(false)
    }

    fn emit(&self, include_self: bool) -> Value {
        let mut out = Map::new();
        if include_self {
            out.insert(".".into(), Value::Object(Map::new()));
        }
        let mut keys: BTreeSet<&Element> = self.members.iter().collect();
        keys.extend(self.children.keys());
        for e in keys {
            let value = match self.children.get(e) {
                Some(c) => c.emit(self.members.contains(e)),
                None => Value::Object(Map::new()),
            };
            out.insert(e.serialize(), value);
        }
        Value::Object(out)
    }

    /// Read a `FieldsV1` value.
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn from_fields_v1(fields: &Value) -> Result<Set, String> {
        let object = fields
            .as_object()
            .ok_or_else(|| "expected an object of fields".to_owned())?;
        let mut set = Set::new();
        for (key, value) in object {
            if key == "." {
                continue;
            }
            let element = Element::deserialize(key)?;
            let inner = value
                .as_object()
                .ok_or_else(|| format!("expected an object under {key}"))?;
            if inner.is_empty() || inner.contains_key(".") {
                set.members.insert(element.clone());
            }
            let child = Set::from_fields_v1(value)?;
            if !child.is_empty() {
                set.children.insert(element, child);
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str) -> Element {
        Element::Field(name.into())
    }

    #[test]
    fn fields_v1_round_trips_with_self_marks() {
        let fields = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}},
                        "f:finalizers": {"v:\"a\"": {}}, "f:replicas": {}},
        });
        let set = Set::from_fields_v1(&fields).unwrap();
        assert!(set.has(&[field("metadata"), field("labels")]));
        assert!(!set.has(&[field("metadata")]));
        assert!(set.has(&[
            field("spec"),
            field("containers"),
            Element::Key(vec![("name".into(), json!("web"))]),
            field("image"),
        ]));
        assert_eq!(set.to_fields_v1(), fields);
    }

    #[test]
    fn paths_print_as_upstream_does() {
        let path = vec![
            field("spec"),
            field("ports"),
            Element::Key(vec![
                ("port".into(), json!(80)),
                ("protocol".into(), json!("TCP")),
            ]),
            field("targetPort"),
        ];
        assert_eq!(
            display(&path),
            r#".spec.ports[port=80,protocol="TCP"].targetPort"#
        );
        assert_eq!(
            display(&[field("a"), Element::Value(json!("x"))]),
            r#".a[="x"]"#
        );
    }

    #[test]
    fn difference_is_member_by_member() {
        let mut a = Set::new();
        a.insert(&[field("spec"), field("a")]);
        a.insert(&[field("spec"), field("b")]);
        let mut b = Set::new();
        b.insert(&[field("spec"), field("a")]);
        b.insert(&[field("spec")]);
        let d = a.difference(&b);
        assert_eq!(d.paths(), vec![vec![field("spec"), field("b")]]);
        assert!(a.recursive_difference(&b).is_empty());
        assert_eq!(
            a.intersection(&b).paths(),
            vec![vec![field("spec"), field("a")]]
        );
    }
}
