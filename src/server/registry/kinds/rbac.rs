//! rbac.authorization.k8s.io/v1: Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding. Names are path segments (`system:foo` is fine);
//! the rules, subjects and roleRef are checked by [`crate::api::rbac`].

use k8s_openapi::api::rbac::v1 as rbacv1;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::rbac;
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::validation::NameRule;
use crate::server::registry::strategy::Strategy;
use crate::server::registry::typed::through;

/// Through the typed schema, with what it requires filled in empty first
/// (so that a missing field is a 422 naming it, as upstream).
fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    match rbac::fill_required(obj) {
        Some(filled) => through::<T>(&filled),
        None => through::<T>(obj),
    }
}

pub struct Role;

impl Strategy for Role {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<rbacv1::Role>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_rules(obj, true, errs);
    }

    fn printer(&self) -> Printer {
        Printer::Default
    }
}

pub struct ClusterRole;

impl Strategy for ClusterRole {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<rbacv1::ClusterRole>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_rules(obj, false, errs);
        rbac::validate_aggregation(obj, errs);
    }

    fn printer(&self) -> Printer {
        Printer::Default
    }
}

pub struct RoleBinding;

impl Strategy for RoleBinding {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<rbacv1::RoleBinding>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn defaults(&self, obj: &mut Value) {
        rbac::binding_defaults(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding(obj, true, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        Printer::RoleBinding
    }
}

pub struct ClusterRoleBinding;

impl Strategy for ClusterRoleBinding {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<rbacv1::ClusterRoleBinding>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn defaults(&self, obj: &mut Value) {
        rbac::binding_defaults(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding(obj, false, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        Printer::ClusterRoleBinding
    }
}
