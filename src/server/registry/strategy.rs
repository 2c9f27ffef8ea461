//! A kind's strategy: everything the generic registry does differently for
//! one kind, behind one object-safe trait. The registry's read, write,
//! delete and watch paths call the strategy of the resource at hand and
//! name no kind themselves; built-in kinds have typed strategies (see
//! [`super::kinds`]), and a kind registered at run time gets a strategy
//! built from data (as [`GenericStrategy`] is), served by the same paths.
//!
//! What a strategy does not own: the catalog entry's data (scope, short
//! names, categories, verbs, subresources) stays in `api::catalog`, which
//! discovery and routing read without a registry; the strategy table is
//! keyed by that entry's group and kind ([`of`]).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

use super::Allocator;
use crate::api::catalog::Resource;
use crate::api::patch;
use crate::api::selector::LabelSelector;
use crate::api::status::FieldError;
use crate::api::table::{self, Printer};
use crate::api::validation::NameRule;

/// What a strategy may use besides the object: the registry's allocators.
/// Passed in, so strategies hold no server state.
pub struct Context<'a> {
    pub allocator: &'a Mutex<Allocator>,
}

/// How to give back what [`Strategy::allocate`] took, when the write that
/// needed it fails.
pub struct Undo(Box<dyn FnOnce(&Context<'_>) + Send>);

impl Undo {
    pub fn new(f: impl FnOnce(&Context<'_>) + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    pub fn run(self, ctx: &Context<'_>) {
        (self.0)(ctx);
    }
}

/// The per-kind behaviour of the registry. Every method has the behaviour
/// of a kind without special needs as its default, so a strategy states
/// only what is particular to its kind.
pub trait Strategy: Send + Sync {
    /// Decode and re-encode `obj` through the kind's typed schema: `None`
    /// for a kind without one, an error text when the body has wrong types.
    /// Unknown fields are dropped (the caller reports them).
    fn round_trip(&self, _obj: &Value) -> Option<Result<Value, String>> {
        None
    }

    /// How `metadata.name` is checked.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Whether `metadata.generation` counts changes of the spec.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Fill in what a client left out.
    fn defaults(&self, _obj: &mut Value) {}

    /// Kind-specific checks of a new or updated object (not its metadata).
    fn validate(&self, _obj: &Value, _errs: &mut Vec<FieldError>) {}

    /// Checks that compare an update with the stored object.
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// Every check of a new object (`old` is the stored one on an update):
    /// [`Strategy::validate`], then [`Strategy::validate_update`].
    fn validate_object(&self, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
        self.validate(obj, errs);
        if let Some(old) = old {
            self.validate_update(old, obj, errs);
        }
    }

    /// Changes on create before validation (after mutating admission):
    /// initial status and the like. By default a kind with a status
    /// subresource starts without status (only its controller writes it).
    fn prepare_create(&self, _ctx: &Context<'_>, res: &Resource, obj: &mut Value) {
        if res.has_status()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
    }

    /// The object a write to the main resource stores: a kind with a status
    /// subresource keeps its stored status (status is written through
    /// `/status`).
    fn reset_status(&self, res: &Resource, old: &Value, obj: &mut Value) {
        if !res.has_status() {
            return;
        }
        match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }

    /// The object a `/status` write stores: the stored object with the
    /// new status.
    fn status_update(&self, old: &Value, mut obj: Value) -> Value {
        // Moved, not cloned: a node's status can be a megabyte.
        let status = obj.as_object_mut().and_then(|m| m.remove("status"));
        drop(obj);
        let Some(fields) = old.as_object() else {
            return old.clone();
        };
        let mut merged: serde_json::Map<String, Value> = fields
            .iter()
            .filter(|(k, _)| *k != "status")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(status) = status {
            merged.insert("status".into(), status);
        }
        Value::Object(merged)
    }

    /// Changes on update before validation (after mutating admission, the
    /// status split and the generation bump).
    fn prepare_update(&self, _ctx: &Context<'_>, _old: &Value, _obj: &mut Value) {}

    /// Take what the object needs from a shared pool (cluster IPs, node
    /// ports) after validation; `old` is the stored version on update.
    ///
    /// # Errors
    /// What could not be allocated, as field errors (422).
    fn allocate(
        &self,
        _ctx: &Context<'_>,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> Result<Option<Undo>, Vec<FieldError>> {
        Ok(None)
    }

    /// Whether stored objects hold allocations to restore at start.
    fn holds_allocations(&self) -> bool {
        false
    }

    /// Mark what a stored object holds as taken (at start).
    fn restore(&self, _ctx: &Context<'_>, _obj: &Value) {}

    /// Give back what a deleted object held.
    fn release(&self, _ctx: &Context<'_>, _old: &Value) {}

    /// Seconds a deletion of `obj` waits, `requested` being the client's
    /// `gracePeriodSeconds`; `None` for a kind without graceful deletion.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether a deleted object stays for a reason of its kind beyond
    /// `metadata.finalizers` (a Namespace's `spec.finalizers`).
    fn deletion_pending(&self, _obj: &Value) -> bool {
        false
    }

    /// Changes when an object is marked for deletion (a Namespace turns
    /// `Terminating`).
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Apply a strategic merge patch with the kind's list merge keys.
    ///
    /// # Errors
    /// As [`patch::strategic_merge`].
    fn strategic_merge(
        &self,
        res: &Resource,
        doc: &Value,
        patch: &Value,
    ) -> Result<Value, patch::Error> {
        patch::strategic_merge(&res.kind, doc, patch)
    }

    /// Which printer makes the kind's table rows.
    fn printer(&self) -> Printer {
        Printer::Default
    }

    /// `status.selector` of the kind's `scale` subresource, in the label
    /// selector's string form (`app=web`), as autoscalers read it. By
    /// default the spec's `metav1.LabelSelector`.
    fn scale_selector(&self, obj: &Value) -> String {
        obj.pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_label_selector(s).ok())
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// `columnDefinitions` of the kind's Table.
    fn column_definitions(&self) -> Value {
        table::column_definitions(self.printer())
    }

    /// One Table row's cells, in column order.
    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        table::cells(self.printer(), obj, now)
    }
}

/// The strategy of a kind with no typed behaviour: the defaults of every
/// method, and optionally a typed round trip. A kind added at run time
/// starts from this (its schema, later, adds validation and defaults).
#[derive(Default)]
pub struct GenericStrategy {
    printer: Option<Printer>,
}

impl GenericStrategy {
    pub fn with_printer(printer: Printer) -> Self {
        Self {
            printer: Some(printer),
        }
    }
}

impl Strategy for GenericStrategy {
    fn printer(&self) -> Printer {
        self.printer.unwrap_or(Printer::Default)
    }
}

type Table = HashMap<(String, String), Arc<dyn Strategy>>;

static BUILTIN: LazyLock<Table> = LazyLock::new(|| {
    super::kinds::builtin()
        .into_iter()
        .map(|(group, kind, s)| ((group.to_owned(), kind.to_owned()), s))
        .collect()
});

static GENERIC: LazyLock<Arc<dyn Strategy>> =
    LazyLock::new(|| Arc::new(GenericStrategy::default()));

/// A custom resource's strategy, from what its definition says
/// ([`crate::api::custom`]): its schema prunes unknown fields (which
/// `fieldValidation` reports), fills defaults and validates
/// ([`crate::api::schema`]); its printer columns and scale paths.
pub struct CustomStrategy(Arc<crate::api::custom::Custom>);

impl CustomStrategy {
    fn schema(&self) -> Option<&Value> {
        Some(&self.0.schema).filter(|s| s.is_object())
    }
}

impl Strategy for CustomStrategy {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        let schema = self.schema()?;
        let mut pruned = obj.clone();
        crate::api::schema::prune(schema, &mut pruned);
        Some(Ok(pruned))
    }

    fn defaults(&self, obj: &mut Value) {
        if let Some(schema) = self.schema() {
            crate::api::schema::default(schema, obj);
        }
    }

    fn validate_object(&self, obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
        let Some(schema) = self.schema() else {
            return;
        };
        let mut found = crate::api::schema::validate(schema, obj);
        // Ratcheting: a value an update leaves as it was is not refused
        // for failing a schema that changed since it was written.
        if let Some(old) = old {
            found.retain(|e| {
                let now = crate::api::schema::value_at(obj, &e.field);
                now.is_none() || now != crate::api::schema::value_at(old, &e.field)
            });
        }
        errs.extend(found);
        errs.extend(crate::api::rules::validate(schema, obj, old));
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn scale_selector(&self, obj: &Value) -> String {
        self.0.scale_selector(obj)
    }

    fn column_definitions(&self) -> Value {
        self.0.column_definitions()
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        self.0.cells(obj, now)
    }
}

/// The strategy of a catalog entry: a custom resource's, its kind's, or
/// the generic one.
pub fn of(res: &Resource) -> Arc<dyn Strategy> {
    if let Some(custom) = &res.custom {
        return Arc::new(CustomStrategy(custom.clone()));
    }
    BUILTIN
        .get(&(res.group.clone(), res.kind.clone()))
        .cloned()
        .unwrap_or_else(|| GENERIC.clone())
}

/// Whether a kind has a strategy of its own (not the generic fallback).
pub fn has_own(group: &str, kind: &str) -> bool {
    BUILTIN.contains_key(&(group.to_owned(), kind.to_owned()))
}
