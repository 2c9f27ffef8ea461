//! The field manager: who owns which fields of an object
//! (`metadata.managedFields`), and server-side apply.
//!
//! Every write is tracked. A create, an update or a patch other than apply
//! is an `Update` by its manager (the `fieldManager` parameter, or the
//! client's user agent up to its first `/`): the fields it adds or changes
//! become its own and leave their previous owners. An apply is an `Apply`:
//! the applier owns exactly the fields of its configuration, which is merged
//! into the live object by the schema's list and map types; fields it owned
//! before and no longer applies are removed unless someone else owns them;
//! and changing a field another manager owns is a conflict unless forced.
//!
//! This follows upstream's field manager (k8s.io/apimachinery
//! `pkg/util/managedfields/internal`) and structured-merge-diff, layer by
//! layer: version check, last-applied upgrade for `kubectl`, the
//! `before-first-apply` owner of objects that had no managed fields, the
//! cap of ten `Update` entries (older ones merge into `ancient-changes`),
//! times, and stripping of the metadata the server owns.

pub mod path;
pub mod shape;
pub mod typed;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

pub use path::{Element, Set};
pub use shape::Shape;

/// The annotation `kubectl apply` (client-side) keeps its last configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Update entries kept before the oldest merge into [`ANCIENT`].
const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT: &str = "ancient-changes";
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// The longest `fieldManager` upstream accepts.
pub const MAX_MANAGER_LENGTH: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One entry of `managedFields`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub fields: Set,
}

/// Upstream's manager identifier: the entry without fields and time (and
/// without apiVersion for appliers), as JSON. Entries with the same
/// identifier are one entry.
fn identifier(manager: &str, operation: Operation, api_version: &str, subresource: &str) -> String {
    let mut out = format!(
        "{{\"manager\":{},\"operation\":\"{}\"",
        Value::from(manager),
        operation.as_str()
    );
    if operation == Operation::Update && !api_version.is_empty() {
        out.push_str(&format!(",\"apiVersion\":{}", Value::from(api_version)));
    }
    if !subresource.is_empty() {
        out.push_str(&format!(",\"subresource\":{}", Value::from(subresource)));
    }
    out.push('}');
    out
}

impl Entry {
    fn identifier(&self) -> String {
        identifier(
            &self.manager,
            self.operation,
            &self.api_version,
            &self.subresource,
        )
    }

    /// How upstream names this manager in conflicts.
    fn describe(&self) -> String {
        let mut out = Value::from(self.manager.as_str()).to_string();
        if !self.subresource.is_empty() {
            out.push_str(&format!(
                " with subresource {}",
                Value::from(self.subresource.as_str())
            ));
        }
        if self.operation == Operation::Update {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }
}

/// The managed fields of an object, by manager identifier.
#[derive(Clone, Debug, Default)]
pub struct Managed {
    entries: BTreeMap<String, Entry>,
}

impl Managed {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Read `metadata.managedFields`.
    ///
    /// # Errors
    /// What is wrong with an entry, as upstream says it.
    pub fn decode(list: &Value) -> Result<Managed, String> {
        let mut out = Managed::default();
        let Some(items) = list.as_array() else {
            return if list.is_null() {
                Ok(out)
            } else {
                Err("managedFields must be a list".into())
            };
        };
        for (i, item) in items.iter().enumerate() {
            let s = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
            let operation = match s("operation") {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => return Err("operation must be `Apply` or `Update`".into()),
            };
            if s("apiVersion").is_empty() {
                return Err("apiVersion must not be empty".into());
            }
            match s("fieldsType") {
                "FieldsV1" => {}
                "" => return Err(format!("missing fieldsType in managed fields entry {i}")),
                other => {
                    return Err(format!(
                        "invalid fieldsType {other:?} in managed fields entry {i}"
                    ));
                }
            }
            let fields = match item.get("fieldsV1") {
                None | Some(Value::Null) => Set::new(),
                Some(f) => {
                    Set::from_fields_v1(f).map_err(|e| format!("error decoding set: {e}"))?
                }
            };
            let entry = Entry {
                manager: s("manager").to_owned(),
                operation,
                api_version: s("apiVersion").to_owned(),
                subresource: s("subresource").to_owned(),
                time: item.get("time").and_then(Value::as_str).map(str::to_owned),
                fields,
            };
            out.entries.insert(entry.identifier(), entry);
        }
        Ok(out)
    }

    /// `metadata.managedFields`, in upstream's order (Apply before Update,
    /// then by time, manager, apiVersion and subresource); `None` if empty.
    pub fn encode(&self) -> Option<Value> {
        if self.entries.is_empty() {
            return None;
        }
        let mut entries: Vec<&Entry> = self.entries.values().collect();
        entries.sort_by(|p, q| {
            p.operation
                .as_str()
                .cmp(q.operation.as_str())
                .then_with(|| seconds(p.time.as_deref()).cmp(&seconds(q.time.as_deref())))
                .then_with(|| p.manager.cmp(&q.manager))
                .then_with(|| p.api_version.cmp(&q.api_version))
                .then_with(|| p.subresource.cmp(&q.subresource))
        });
        let list = entries
            .into_iter()
            .map(|e| {
                let mut m = Map::new();
                if !e.manager.is_empty() {
                    m.insert("manager".into(), json!(e.manager));
                }
                m.insert("operation".into(), json!(e.operation.as_str()));
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.fields.to_fields_v1());
                if !e.subresource.is_empty() {
                    m.insert("subresource".into(), json!(e.subresource));
                }
                Value::Object(m)
            })
            .collect();
        Some(Value::Array(list))
    }
}

/// An RFC 3339 time's seconds, for ordering (0 when absent).
fn seconds(time: Option<&str>) -> i64 {
    time.and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .unwrap_or(0)
}

/// The managed fields a write starts from (upstream's `decodeLiveOrNew`):
/// the request's own, when it sends valid non-empty ones to the main
/// resource; none at all when it sends `[]` or `[{}]` (a reset); otherwise
/// the live object's.
pub fn incoming(live: &Value, new: &Value, subresource: bool) -> Managed {
    let live_managed = || Managed::decode(managed_fields(live)).unwrap_or_default();
    if subresource {
        return live_managed();
    }
    let sent = managed_fields(new);
    match sent {
        Value::Array(items) if items.is_empty() => return Managed::default(),
        Value::Array(items)
            if items.len() == 1 && items[0].as_object().is_some_and(Map::is_empty) =>
        {
            return Managed::default();
        }
        _ => {}
    }
    match Managed::decode(sent) {
        Ok(m) if !m.is_empty() => m,
        _ => live_managed(),
    }
}

fn managed_fields(obj: &Value) -> &Value {
    obj.pointer("/metadata/managedFields")
        .unwrap_or(&Value::Null)
}

/// Which part of the object a write may change (the rest is reset by the
/// resource's strategy, and is not owned by the writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Whole,
    /// Everything but `status` (a resource with a status subresource).
    NotStatus,
    /// `status` only (the status subresource).
    Status,
}

/// What the field manager knows of a kind.
#[derive(Clone, Copy, Debug)]
pub struct Typer<'a> {
    pub shape: Shape<'a>,
    pub scope: Scope,
}

/// Who writes, and when.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `""` for the resource itself.
    pub subresource: &'a str,
    /// RFC 3339, seconds precision.
    pub now: &'a str,
}

impl Typer<'_> {
    fn filter(&self, set: &Set) -> Set {
        let status = Element::Field("status".into());
        match self.scope {
            Scope::Whole => set.clone(),
            Scope::NotStatus => set.without(&status),
            Scope::Status => set.only_under(&status),
        }
    }

    fn compare(&self, old: &Value, new: &Value) -> typed::Comparison {
        typed::compare(old, new, &self.shape).map(|s| self.filter(s))
    }

    /// The object an empty value of this kind serialises to: what a create
    /// is compared against. Built-in kinds start from their Go zero value
    /// (struct fields are `{}`), custom resources from nothing.
    pub fn zero(&self) -> Value {
        zero_of(&self.shape, 0)
    }

    /// Track a write that is not an apply: `live` (the zero object on
    /// create) became `new`. The fields `new` adds or changes become the
    /// writer's (an `Update` entry) and leave their other owners; removed
    /// fields leave everyone.
    pub fn update(&self, live: &Value, new: &Value, mut managed: Managed, w: &Writer) -> Managed {
        // Objects that existed before any tracking stay untracked until
        // someone applies (upstream's skipNonApplied).
        if managed.is_empty() && live.pointer("/metadata/uid").is_some() {
            return managed;
        }
        self.update_tracked(live, new, &mut managed, w);
        managed
    }

    fn update_tracked(&self, live: &Value, new: &Value, managed: &mut Managed, w: &Writer) {
        let id = identifier(w.manager, Operation::Update, w.api_version, w.subresource);
        let cmp = self.compare(live, new);
        let changed = cmp.modified.union(&cmp.added);
        for (key, entry) in managed.entries.iter_mut() {
            if *key != id {
                entry.fields = entry.fields.difference(&changed).difference(&cmp.removed);
            }
        }
        let mine = strip_meta(&self.filter(&changed));
        if mine.is_empty() {
            // Nothing new is the writer's; what it removed is no longer.
            if let Some(entry) = managed.entries.get_mut(&id) {
                entry.fields = entry.fields.difference(&cmp.removed);
            }
        } else {
            let previous = managed
                .entries
                .remove(&id)
                .map(|e| e.fields)
                .unwrap_or_default();
            managed.entries.insert(
                id,
                Entry {
                    manager: w.manager.to_owned(),
                    operation: Operation::Update,
                    api_version: w.api_version.to_owned(),
                    subresource: w.subresource.to_owned(),
                    time: Some(w.now.to_owned()),
                    fields: mine.union(&previous.difference(&cmp.removed)),
                },
            );
        }
        managed.entries.retain(|_, e| !e.fields.is_empty());
        cap_updates(managed);
    }

    /// Server-side apply of `config` to `live` by `w.manager`.
    ///
    /// Returns the merged object (the live one when nothing changes) and
    /// the new managed fields.
    ///
    /// # Errors
    /// [`ApplyError::Conflicts`] when the configuration changes fields
    /// other managers own and `force` is off; [`ApplyError::Typed`] when
    /// the configuration does not fit the schema's list types.
    pub fn apply(
        &self,
        live: &Value,
        config: &Value,
        managed: Managed,
        w: &Writer,
        force: bool,
    ) -> Result<(Value, Managed), ApplyError> {
        let first = self.apply_once(live, config, managed.clone(), w, force);
        let result = match first {
            // kubectl's upgrade from client-side apply: conflicts on the
            // fields of its last-applied configuration are its own.
            Err(ApplyError::Conflicts(conflicts)) if w.manager == "kubectl" => {
                let allowed = self.last_applied_fields(live, w);
                let remaining: Vec<Conflict> = conflicts
                    .iter()
                    .filter(|c| !allowed.as_ref().is_some_and(|a| a.has(&c.path)))
                    .cloned()
                    .collect();
                if allowed.is_none() {
                    Err(ApplyError::Conflicts(conflicts))
                } else if remaining.is_empty() {
                    self.apply_once(live, config, managed, w, true)
                } else {
                    Err(ApplyError::Conflicts(remaining))
                }
            }
            other => other,
        };
        let (mut object, managed) = result?;
        // kubectl keeps its last-applied annotation current, if it has one.
        if w.manager == "kubectl" && has_last_applied(live) {
            let mut applied = config.clone();
            if let Some(a) = applied
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                a.remove(LAST_APPLIED);
            }
            if let Some(a) = object
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                a.insert(LAST_APPLIED.into(), Value::String(applied.to_string()));
            }
        }
        Ok((object, managed))
    }

    fn apply_once(
        &self,
        live: &Value,
        config: &Value,
        mut managed: Managed,
        w: &Writer,
        force: bool,
    ) -> Result<(Value, Managed), ApplyError> {
        if managed.is_empty() {
            // The fields of an object nobody tracked are its first owner's.
            let before = Writer {
                manager: BEFORE_FIRST_APPLY,
                ..*w
            };
            self.update_tracked(&self.zero(), live, &mut managed, &before);
        }
        let problems = typed::config_problems(config, &self.shape, true);
        match problems.as_slice() {
            [] => {}
            [one] => return Err(ApplyError::Typed(one.clone())),
            many => {
                return Err(ApplyError::Typed(format!(
                    "errors:\n  {}",
                    many.join("\n  ")
                )));
            }
        }
        let id = identifier(w.manager, Operation::Apply, "", w.subresource);
        let merged = typed::merge(live, config, &self.shape);
        let last = managed.entries.get(&id).map(|e| e.fields.clone());
        let applied = typed::field_set(config, &self.shape).map_err(ApplyError::Typed)?;
        let time = managed.entries.get(&id).and_then(|e| e.time.clone());
        managed.entries.insert(
            id.clone(),
            Entry {
                manager: w.manager.to_owned(),
                operation: Operation::Apply,
                api_version: w.api_version.to_owned(),
                subresource: w.subresource.to_owned(),
                time,
                fields: self.filter(&applied),
            },
        );
        let object = match last {
            Some(last) if !last.is_empty() => self.prune(merged, &managed, &last),
            _ => merged,
        };
        // Conflicts: what the apply changes that others own.
        let cmp = self.compare(live, &object);
        let changed = cmp.modified.union(&cmp.added);
        let mut conflicts = Vec::new();
        for (key, entry) in &managed.entries {
            if *key == id {
                continue;
            }
            for path in entry.fields.intersection(&changed).paths() {
                conflicts.push(Conflict {
                    manager: entry.describe(),
                    identifier: key.clone(),
                    path,
                });
            }
        }
        if !force && !conflicts.is_empty() {
            return Err(ApplyError::Conflicts(conflicts));
        }
        for (key, entry) in managed.entries.iter_mut() {
            if *key != id {
                entry.fields = entry.fields.difference(&changed).difference(&cmp.removed);
            }
        }
        let changes = object != *live;
        if let Some(entry) = managed.entries.get_mut(&id) {
            entry.fields = strip_meta(&entry.fields);
            if changes {
                entry.time = Some(w.now.to_owned());
            }
        }
        managed.entries.retain(|_, e| !e.fields.is_empty());
        cap_updates(&mut managed);
        Ok((if changes { object } else { live.clone() }, managed))
    }

    /// Remove the fields the applier owned before and applies no more,
    /// unless another manager owns them (upstream's `prune`).
    fn prune(&self, merged: Value, managed: &Managed, last: &Set) -> Value {
        let shape = &self.shape;
        let named = |s: &Set| typed::with_named_fields(s, shape);
        let set_of = |v: &Value| typed::field_set(v, shape).map(|s| named(&s));
        let Ok(merged_set) = set_of(&merged) else {
            return merged;
        };
        let or_empty = |v: Option<Value>| v.unwrap_or_else(|| Value::Object(Map::new()));
        let last = named(last);
        let owned = named(
            &managed
                .entries
                .values()
                .fold(Set::new(), |acc, e| acc.union(&e.fields)),
        );
        let pruned = or_empty(typed::remove(&merged, &last, shape));
        let Ok(pruned_set) = set_of(&pruned) else {
            return merged;
        };
        let pruned = or_empty(typed::remove(
            &merged,
            &merged_set.difference(&pruned_set.union(&owned)),
            shape,
        ));
        let Ok(pruned_set) = set_of(&pruned) else {
            return merged;
        };
        or_empty(typed::remove(
            &merged,
            &merged_set.difference(&pruned_set).intersection(&last),
            shape,
        ))
    }

    /// The fields of kubectl's last-applied configuration that still have
    /// the values it applied: those kubectl may take over without conflict.
    fn last_applied_fields(&self, live: &Value, w: &Writer) -> Option<Set> {
        let text = live
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_APPLIED))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())?;
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(Value::as_str) != Some(w.api_version) {
            return None;
        }
        let set = typed::field_set(&last, &self.shape).ok()?;
        let cmp = typed::compare(&last, live, &self.shape);
        Some(
            set.difference(&cmp.modified)
                .difference(&cmp.added)
                .difference(&cmp.removed),
        )
    }
}

fn has_last_applied(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

/// The metadata the server owns is nobody's (upstream's stripMeta).
fn strip_meta(set: &Set) -> Set {
    static STRIP: OnceLock<Set> = OnceLock::new();
    let strip = STRIP.get_or_init(|| {
        let mut s = Set::new();
        for top in ["apiVersion", "kind", "metadata"] {
            s.insert(&[Element::Field(top.into())]);
        }
        for field in [
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            s.insert(&[
                Element::Field("metadata".into()),
                Element::Field(field.into()),
            ]);
        }
        s
    });
    set.difference(strip)
}

/// Upstream's cap on `Update` entries: beyond ten, the oldest merge into
/// one `ancient-changes` entry per apiVersion.
fn cap_updates(managed: &mut Managed) {
    let mut updaters: Vec<String> = managed
        .entries
        .iter()
        .filter(|(_, e)| e.operation == Operation::Update)
        .map(|(k, _)| k.clone())
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|a, b| {
        let t = |k: &String| seconds(managed.entries[k].time.as_deref());
        t(a).cmp(&t(b)).then_with(|| a.cmp(b))
    });
    let mut first_of_version: HashMap<String, String> = HashMap::new();
    let mut length = updaters.len();
    for key in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(entry) = managed.entries.get(&key).cloned() else {
            continue;
        };
        let bucket = identifier(ANCIENT, Operation::Update, &entry.api_version, "");
        match first_of_version.get(&entry.api_version) {
            Some(first) => {
                if !managed.entries.contains_key(&bucket)
                    && let Some(mut f) = managed.entries.remove(first)
                {
                    f.manager = ANCIENT.into();
                    f.subresource.clear();
                    managed.entries.insert(bucket.clone(), f);
                }
                if let Some(b) = managed.entries.get_mut(&bucket) {
                    b.fields = entry.fields.union(&b.fields);
                    b.time = entry.time.clone();
                }
                managed.entries.remove(&key);
                length -= 1;
            }
            None => {
                first_of_version.insert(entry.api_version.clone(), key);
            }
        }
    }
}

/// One conflict: a field another manager owns.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// The manager as upstream prints it: `"m"`, `"m" using v1`.
    pub manager: String,
    identifier: String,
    pub path: Vec<Element>,
}

/// Why an apply failed.
#[derive(Debug)]
pub enum ApplyError {
    Conflicts(Vec<Conflict>),
    /// The configuration does not fit the schema (e.g. a list item without
    /// its key).
    Typed(String),
}

/// Upstream's conflict message: one conflict on one line, several grouped
/// by manager.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager,
            path::display(&one.path)
        );
    }
    let mut managers: Vec<(&str, &str)> = conflicts
        .iter()
        .map(|c| (c.identifier.as_str(), c.manager.as_str()))
        .collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for (id, printed) in managers {
        lines.push(format!("conflicts with {printed}:"));
        for c in conflicts.iter().filter(|c| c.identifier == id) {
            lines.push(format!("- {}", path::display(&c.path)));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// `zero` facts: struct fields Go serialises even when empty (`{}`).
fn zero_fields(type_name: &str) -> &'static [String] {
    static FACTS: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    let facts = FACTS.get_or_init(|| {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for line in include_str!("../merge-facts.txt").lines() {
            let mut words = line.split(' ');
            if words.next() == Some("zero")
                && let (Some(t), Some(f)) = (words.next(), words.next())
            {
                out.entry(t.to_owned()).or_default().push(f.to_owned());
            }
        }
        out
    });
    facts.get(type_name).map(Vec::as_slice).unwrap_or(&[])
}

fn zero_of(shape: &Shape, depth: usize) -> Value {
    let mut out = Map::new();
    if depth < 8
        && let Some(name) = shape.type_name()
    {
        for field in zero_fields(name) {
            let (child, _) = shape.field(field);
            out.insert(field.clone(), zero_of(&child, depth + 1));
        }
        // Required fields have no `omitempty`: an empty list, map or
        // pointer serialises as null.
        for field in shape.required() {
            out.entry(field.to_owned()).or_insert(Value::Null);
        }
    }
    Value::Object(out)
}

/// The manager of a write that names none: the client's user agent up to
/// its first `/`, printable characters only, at most 128 bytes.
pub fn manager_from_user_agent(user_agent: &str) -> String {
    let prefix = user_agent.split('/').next().unwrap_or_default();
    let mut out = String::new();
    for c in prefix.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_MANAGER_LENGTH {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
