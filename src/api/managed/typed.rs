//! The four walks server-side apply makes over objects, each guided by the
//! object's [`Shape`]: the set of fields an object sets, the comparison of
//! two objects, the merge of an applied configuration into a live object,
//! and the removal of a set of fields. Their rules are structured-merge-
//! diff's (`typed/tofieldset.go`, `compare.go`, `merge.go`, `remove.go`).

use serde_json::{Map, Value};

use super::path::{Element, Set};
use super::shape::{Kind, ListType, Shape};

/// What changed between two objects.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    /// Apply `f` to each of the three sets.
    pub fn map(self, f: impl Fn(&Set) -> Set) -> Self {
        Self {
            added: f(&self.added),
            modified: f(&self.modified),
            removed: f(&self.removed),
        }
    }
}

/// The path element of a list item, or why it has none.
pub fn item_element(list: &Shape, keys: &ListType, item: &Value) -> Result<Element, String> {
    match keys {
        ListType::Map(keys) => {
            let object = match item {
                Value::Null => {
                    return Err("associative list with keys may not have a null element".into());
                }
                Value::Object(o) => o,
                _ => {
                    return Err("associative list with keys may not have non-map elements".into());
                }
            };
            let mut fields = Vec::with_capacity(keys.len());
            for key in keys {
                match object.get(key).or_else(|| list.key_default(key)) {
                    Some(v) => fields.push((key.clone(), v.clone())),
                    None => {
                        return Err(format!(
                            "associative list with keys has an element that omits key field {key:?} (and doesn't have default value)"
                        ));
                    }
                }
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Element::Key(fields))
        }
        ListType::Set => match item {
            Value::Object(_) => {
                Err("associative list without keys has an element that's a map type".into())
            }
            Value::Array(_) => Err("not supported: associative list with lists as elements".into()),
            Value::Null => {
                Err("associative list without keys has an element that's an explicit null".into())
            }
            scalar => Ok(Element::Value(scalar.clone())),
        },
        ListType::Atomic => Err("invalid indexing of non-associative list".into()),
    }
}

fn empty_or_null(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

fn same_container(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Object(_), Value::Object(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Null, _)
            | (_, Value::Null)
    ) || (!a.is_object() && !a.is_array() && !b.is_object() && !b.is_array())
}

/// The items of a list with their path elements; `None` if an item has no
/// element (then the list is treated as a whole).
fn index<'v>(
    list: &Shape,
    keys: &ListType,
    items: &'v [Value],
) -> Option<Vec<(Element, &'v Value)>> {
    items
        .iter()
        .map(|item| item_element(list, keys, item).ok().map(|e| (e, item)))
        .collect()
}

// ---------------------------------------------------------------------------
// What an applied configuration may not hold.

/// What structured-merge-diff refuses in an applied configuration, in
/// its words: fields the schema does not declare (`.spec.x: field not
/// declared in schema`) and list items that share a key (`.spec.ports:
/// duplicate entries for key [containerPort=80,protocol="TCP"]`). A live
/// object may hold duplicates; an applied configuration may not.
/// `resource` for a resource's root, whose `apiVersion`, `kind` and
/// `metadata` need no declaration.
pub fn config_problems(value: &Value, shape: &Shape, resource: bool) -> Vec<String> {
    let mut problems = Vec::new();
    check_config(value, shape, resource, &mut Vec::new(), &mut problems);
    problems
}

/// structured-merge-diff's words for a field at `path` the schema lacks.
fn undeclared(path: &[Element]) -> String {
    format!(
        "{}: field not declared in schema",
        super::path::display(path)
    )
}

fn check_config(
    value: &Value,
    shape: &Shape,
    resource: bool,
    path: &mut Vec<Element>,
    problems: &mut Vec<String>,
) {
    let resource = resource || shape.embedded_resource();
    match (shape.kind(value), value) {
        (Kind::Map { .. }, Value::Object(map)) => {
            for (key, child) in map {
                path.push(Element::Field(key.clone()));
                // A custom resource's apiVersion, kind and metadata need no
                // declaration, and its metadata is ObjectMeta whatever its
                // schema says (which may only narrow name and generateName).
                let implicit = resource
                    && match key.as_str() {
                        "apiVersion" | "kind" => !shape.names(key),
                        "metadata" => shape.field(key).0.type_name().is_none(),
                        _ => false,
                    };
                if implicit {
                    let meta = child.as_object().filter(|_| key == "metadata");
                    for field in meta.into_iter().flat_map(Map::keys) {
                        if !crate::api::schema::OBJECT_META_FIELDS.contains(&field.as_str()) {
                            path.push(Element::Field(field.clone()));
                            problems.push(undeclared(path));
                            path.pop();
                        }
                    }
                } else if !shape.declares(key) {
                    problems.push(undeclared(path));
                } else {
                    check_config(child, &shape.field(key).0, false, path, problems);
                }
                path.pop();
            }
        }
        (Kind::List(keys @ (ListType::Map(_) | ListType::Set)), Value::Array(items)) => {
            let items_shape = shape.items();
            let mut seen: Vec<Element> = Vec::new();
            for item in items {
                // A missing key is field_set's error to report.
                let Ok(e) = item_element(shape, &keys, item) else {
                    continue;
                };
                if seen.contains(&e) {
                    problems.push(format!(
                        "{}: duplicate entries for key {e}",
                        super::path::display(path)
                    ));
                    continue;
                }
                seen.push(e.clone());
                path.push(e);
                check_config(item, &items_shape, false, path, problems);
                path.pop();
            }
        }
        (Kind::List(ListType::Atomic), Value::Array(items)) => {
            let items_shape = shape.items();
            for (i, item) in items.iter().enumerate() {
                path.push(Element::Index(i));
                check_config(item, &items_shape, false, path, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The set of fields a value sets.

/// Every field `value` sets: scalars, atomic lists and maps, list items,
/// map entries that are not struct fields, and empty or null fields.
///
/// # Errors
/// A list item without its key, with the path to the list.
pub fn field_set(value: &Value, shape: &Shape) -> Result<Set, String> {
    let mut set = Set::new();
    walk_set(value, shape, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn walk_set(
    value: &Value,
    shape: &Shape,
    path: &mut Vec<Element>,
    set: &mut Set,
) -> Result<(), String> {
    match shape.kind(value) {
        Kind::Scalar | Kind::Map { atomic: true } | Kind::List(ListType::Atomic) => {
            set.insert(path);
        }
        Kind::List(keys) => {
            let Value::Array(items) = value else {
                if !value.is_null() {
                    set.insert(path);
                }
                return Ok(());
            };
            let items_shape = shape.items();
            let mut seen: Vec<Element> = Vec::new();
            let mut duplicates: Vec<Element> = Vec::new();
            let mut elements = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let e = item_element(shape, &keys, item)
                    .map_err(|m| format!("{}: element {i}: {m}", super::path::display(path)))?;
                if seen.contains(&e) {
                    if !duplicates.contains(&e) {
                        duplicates.push(e.clone());
                    }
                } else {
                    seen.push(e.clone());
                }
                elements.push(e);
            }
            for (e, item) in elements.into_iter().zip(items) {
                path.push(e);
                if !duplicates.contains(path.last().expect("pushed")) {
                    walk_set(item, &items_shape, path, set)?;
                }
                set.insert(path);
                path.pop();
            }
        }
        Kind::Map { atomic: false } => {
            let Value::Object(map) = value else {
                if !value.is_null() {
                    set.insert(path);
                }
                return Ok(());
            };
            for (key, child) in map {
                let (child_shape, named) = shape.field(key);
                path.push(Element::Field(key.clone()));
                walk_set(child, &child_shape, path, set)?;
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || !named {
                    set.insert(path);
                }
                path.pop();
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Comparison.

/// What `rhs` adds, modifies and removes relative to `lhs`.
pub fn compare(lhs: &Value, rhs: &Value, shape: &Shape) -> Comparison {
    let mut out = Comparison::default();
    walk_compare(Some(lhs), Some(rhs), shape, &mut Vec::new(), &mut out);
    out
}

fn compare_leaf(lhs: Option<&Value>, rhs: Option<&Value>, path: &[Element], out: &mut Comparison) {
    match (lhs, rhs) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(l), Some(r)) if l != r => out.modified.insert(path),
        _ => {}
    }
}

fn walk_compare(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    shape: &Shape,
    path: &mut Vec<Element>,
    out: &mut Comparison,
) {
    let Some(probe) = rhs.or(lhs) else {
        return;
    };
    if let (Some(l), Some(r)) = (lhs, rhs)
        && !same_container(l, r)
    {
        return compare_leaf(lhs, rhs, path, out);
    }
    let kind = shape.kind(probe);
    let leaf = match &kind {
        Kind::Scalar | Kind::Map { atomic: true } | Kind::List(ListType::Atomic) => true,
        _ => empty_or_null(lhs) && empty_or_null(rhs),
    };
    if leaf {
        return compare_leaf(lhs, rhs, path, out);
    }
    match kind {
        Kind::Map { .. } => {
            let l = lhs.and_then(Value::as_object);
            let r = rhs.and_then(Value::as_object);
            let mut keys: Vec<&String> = l.into_iter().flat_map(Map::keys).collect();
            for k in r.into_iter().flat_map(Map::keys) {
                if !l.is_some_and(|l| l.contains_key(k)) {
                    keys.push(k);
                }
            }
            for key in keys {
                let (child, _) = shape.field(key);
                path.push(Element::Field(key.clone()));
                walk_compare(
                    l.and_then(|m| m.get(key)),
                    r.and_then(|m| m.get(key)),
                    &child,
                    path,
                    out,
                );
                path.pop();
            }
        }
        Kind::List(keys) => {
            let empty = Vec::new();
            let l = lhs.and_then(Value::as_array).unwrap_or(&empty);
            let r = rhs.and_then(Value::as_array).unwrap_or(&empty);
            match (index(shape, &keys, l), index(shape, &keys, r)) {
                (Some(li), Some(ri)) => compare_items(&li, &ri, shape, path, out),
                // Items without keys: the list is compared whole.
                _ => return compare_leaf(lhs, rhs, path, out),
            }
        }
        Kind::Scalar => unreachable!("scalars are leaves"),
    }
    if lhs.is_none() {
        out.added.insert(path);
    } else if rhs.is_none() {
        out.removed.insert(path);
    }
}

fn group<'v>(items: &[(Element, &'v Value)]) -> Vec<(Element, Vec<&'v Value>)> {
    let mut out: Vec<(Element, Vec<&Value>)> = Vec::new();
    for (e, v) in items {
        match out.iter_mut().find(|(k, _)| k == e) {
            Some((_, vs)) => vs.push(v),
            None => out.push((e.clone(), vec![v])),
        }
    }
    out
}

fn compare_items(
    l: &[(Element, &Value)],
    r: &[(Element, &Value)],
    shape: &Shape,
    path: &mut Vec<Element>,
    out: &mut Comparison,
) {
    let lg = group(l);
    let rg = group(r);
    let mut all: Vec<&Element> = lg.iter().map(|(e, _)| e).collect();
    for (e, _) in &rg {
        if !lg.iter().any(|(k, _)| k == e) {
            all.push(e);
        }
    }
    let items = shape.items();
    for e in all {
        let ls = lg
            .iter()
            .find(|(k, _)| k == e)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        let rs = rg
            .iter()
            .find(|(k, _)| k == e)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[]);
        path.push(e.clone());
        match (ls.len(), rs.len()) {
            (0..=1, 0..=1) => {
                walk_compare(ls.first().copied(), rs.first().copied(), &items, path, out);
            }
            (a, b) if a >= 2 && b >= 2 => {
                if ls != rs {
                    out.modified.insert(path);
                }
            }
            (a, _) if a >= 2 => {
                if let Some(r0) = rs.first() {
                    walk_compare(None, Some(r0), &items, path, out);
                }
                out.removed.insert(path);
            }
            _ => {
                if let Some(l0) = ls.first() {
                    walk_compare(Some(l0), None, &items, path, out);
                }
                out.added.insert(path);
            }
        }
        path.pop();
    }
}

// ---------------------------------------------------------------------------
// Merge.

/// `config` merged into `live`: the config's values win; lists merge by
/// their list type.
pub fn merge(live: &Value, config: &Value, shape: &Shape) -> Value {
    walk_merge(Some(live), Some(config), shape).unwrap_or(Value::Object(Map::new()))
}

fn walk_merge(lhs: Option<&Value>, rhs: Option<&Value>, shape: &Shape) -> Option<Value> {
    let probe = rhs.or(lhs)?;
    if let (Some(l), Some(r)) = (lhs, rhs)
        && !same_container(l, r)
    {
        return Some(r.clone());
    }
    let kind = shape.kind(probe);
    let leaf = match &kind {
        Kind::Scalar | Kind::Map { atomic: true } | Kind::List(ListType::Atomic) => true,
        _ => empty_or_null(lhs) && empty_or_null(rhs),
    };
    if leaf {
        return rhs.or(lhs).cloned();
    }
    match kind {
        Kind::Map { .. } => {
            let l = lhs.and_then(Value::as_object);
            let r = rhs.and_then(Value::as_object);
            let mut out = Map::new();
            for (k, lv) in l.into_iter().flatten() {
                let (child, _) = shape.field(k);
                if let Some(v) = walk_merge(Some(lv), r.and_then(|r| r.get(k)), &child) {
                    out.insert(k.clone(), v);
                }
            }
            for (k, rv) in r.into_iter().flatten() {
                if l.is_some_and(|l| l.contains_key(k)) {
                    continue;
                }
                let (child, _) = shape.field(k);
                if let Some(v) = walk_merge(None, Some(rv), &child) {
                    out.insert(k.clone(), v);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Kind::List(keys) => {
            let empty = Vec::new();
            let l = lhs.and_then(Value::as_array).unwrap_or(&empty);
            let r = rhs.and_then(Value::as_array).unwrap_or(&empty);
            match (index(shape, &keys, l), index(shape, &keys, r)) {
                (Some(li), Some(ri)) => {
                    let out = merge_items(&li, &ri, &shape.items());
                    (!out.is_empty()).then_some(Value::Array(out))
                }
                _ => rhs.or(lhs).cloned(),
            }
        }
        Kind::Scalar => unreachable!("scalars are leaves"),
    }
}

/// Upstream's order: the config's items in its order, with the live items
/// it does not name kept where they were relative to the shared ones.
fn find<'v>(list: &[(Element, &'v Value)], e: &Element) -> Option<&'v Value> {
    list.iter().find(|(k, _)| k == e).map(|(_, v)| *v)
}

fn merge_items(lhs: &[(Element, &Value)], rhs: &[(Element, &Value)], items: &Shape) -> Vec<Value> {
    let mut shared: std::collections::VecDeque<&Element> = rhs
        .iter()
        .map(|(e, _)| e)
        .filter(|e| find(lhs, e).is_some())
        .collect();
    let mut next_shared = shared.pop_front();
    let mut merged_rhs: Vec<&Element> = Vec::new();
    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            let pe = &lhs[li].0;
            if *pe == rhs[ri].0 {
                merged_rhs.push(pe);
                if let Some(v) = walk_merge(find(lhs, pe), find(rhs, pe), items) {
                    out.push(v);
                }
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if find(rhs, pe).is_some() && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            let pe = &lhs[li].0;
            if find(rhs, pe).is_none() {
                if let Some(v) = walk_merge(Some(lhs[li].1), None, items) {
                    out.push(v);
                }
                li += 1;
                continue;
            } else if merged_rhs.contains(&pe) {
                li += 1;
            }
        }
        if ri < rhs.len() {
            let pe = &rhs[ri].0;
            merged_rhs.push(pe);
            if let Some(v) = walk_merge(find(lhs, pe), find(rhs, pe), items) {
                out.push(v);
            }
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Removal.

/// `value` without the fields of `set` (a member takes its whole subtree).
/// Maps and lists left empty by the removal are dropped.
pub fn remove(value: &Value, set: &Set, shape: &Shape) -> Option<Value> {
    match (shape.kind(value), value) {
        (Kind::Map { atomic: false }, Value::Object(map)) => {
            if map.is_empty() {
                return None;
            }
            let mut out = Map::new();
            for (k, v) in map {
                let e = Element::Field(k.clone());
                if set.has(std::slice::from_ref(&e)) {
                    continue;
                }
                match set.child(&e) {
                    Some(sub) => {
                        let (child, _) = shape.field(k);
                        if let Some(v) = remove(v, sub, &child) {
                            out.insert(k.clone(), v);
                        }
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (Kind::List(keys @ (ListType::Set | ListType::Map(_))), Value::Array(items)) => {
            if items.is_empty() {
                return None;
            }
            let item_shape = shape.items();
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let Ok(e) = item_element(shape, &keys, item) else {
                    out.push(item.clone());
                    continue;
                };
                if set.has(std::slice::from_ref(&e)) {
                    continue;
                }
                match set.child(&e) {
                    Some(sub) => {
                        if let Some(v) = remove(item, sub, &item_shape) {
                            out.push(v);
                        }
                    }
                    None => out.push(item.clone()),
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        _ => Some(value.clone()),
    }
}

/// `set` with every struct field that leads to a member made a member too,
/// so removing the set removes a struct field left with nothing set
/// (upstream's `EnsureNamedFieldsAreMembers`).
pub fn with_named_fields(set: &Set, shape: &Shape) -> Set {
    let mut out = Set::new();
    for m in set.members() {
        out.add_member(m.clone());
    }
    for (e, child) in set.children() {
        let child_shape = match e {
            Element::Field(name) => {
                if shape.names(name) {
                    out.add_member(e.clone());
                }
                shape.field(name).0
            }
            _ => shape.items(),
        };
        out.set_child(e.clone(), with_named_fields(child, &child_shape));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn components() -> &'static Map<String, Value> {
        crate::api::components::structure()
    }

    fn deployment() -> Shape<'static> {
        Shape::component("io.k8s.api.apps.v1.Deployment", components())
    }

    #[test]
    fn field_sets_mark_list_items_and_map_entries() {
        let obj = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
        });
        let set = field_set(&obj, &deployment()).unwrap();
        assert_eq!(
            set.to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                           "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                               ".": {}, "f:image": {}, "f:name": {}}}}}},
            })
        );
    }

    #[test]
    fn a_missing_key_is_named_with_its_list() {
        let obj = json!({"spec": {"template": {"spec": {"containers": [{"image": "nginx"}]}}}});
        let err = field_set(&obj, &deployment()).unwrap_err();
        assert_eq!(
            err,
            ".spec.template.spec.containers: element 0: associative list with keys has an element that omits key field \"name\" (and doesn't have default value)"
        );
    }

    #[test]
    fn comparison_marks_new_parents() {
        let old = json!({"metadata": {"name": "a"}, "spec": {"replicas": 1}});
        let new = json!({"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"replicas": 2}});
        let cmp = compare(&old, &new, &deployment());
        assert_eq!(
            cmp.added.to_fields_v1(),
            json!({"f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
        );
        assert_eq!(
            cmp.modified.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert!(cmp.removed.is_empty());
    }

    #[test]
    fn merge_keeps_live_items_in_place() {
        let shape = deployment();
        let (spec, _) = shape.field("spec");
        let (template, _) = spec.field("template");
        let (pod, _) = template.field("spec");
        let (containers, _) = pod.field("containers");
        let live = json!([{"name": "a", "image": "1"}, {"name": "side", "image": "s"}, {"name": "b", "image": "2"}]);
        let config = json!([{"name": "b", "image": "3"}, {"name": "a"}]);
        let merged = walk_merge(Some(&live), Some(&config), &containers).unwrap();
        let names: Vec<&str> = merged
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["side", "b", "a"]);
        assert_eq!(merged[1]["image"], "3");
        assert_eq!(merged[2]["image"], "1");
    }

    #[test]
    fn removal_drops_emptied_parents() {
        let obj = json!({"metadata": {"labels": {"a": "1"}, "name": "x"}});
        let mut set = Set::new();
        set.insert(&[
            Element::Field("metadata".into()),
            Element::Field("labels".into()),
            Element::Field("a".into()),
        ]);
        let out = remove(&obj, &set, &deployment()).unwrap();
        assert_eq!(out, json!({"metadata": {"name": "x"}}));
    }
}
