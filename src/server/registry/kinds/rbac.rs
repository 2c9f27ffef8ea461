//! rbac.authorization.k8s.io/v1: Role, ClusterRole, RoleBinding and
//! ClusterRoleBinding. Names are path segments (`system:foo` is fine);
//! the rules, subjects and roleRef are checked by [`crate::api::rbac`].
//! A Role and a ClusterRole differ only in scope, as do the bindings.

use std::marker::PhantomData;

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
    through::<T>(&rbac::fill_required(obj))
}

/// Role (`namespaced`) or ClusterRole.
pub struct Rules<T> {
    namespaced: bool,
    kind: PhantomData<fn() -> T>,
}

pub fn role() -> Rules<rbacv1::Role> {
    Rules {
        namespaced: true,
        kind: PhantomData,
    }
}

pub fn cluster_role() -> Rules<rbacv1::ClusterRole> {
    Rules {
        namespaced: false,
        kind: PhantomData,
    }
}

impl<T: DeserializeOwned + Serialize> Strategy for Rules<T> {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<T>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_rules(obj, self.namespaced, errs);
        if !self.namespaced {
            rbac::validate_aggregation(obj, errs);
        }
    }

    fn printer(&self) -> Printer {
        Printer::Default
    }
}

/// RoleBinding (`namespaced`) or ClusterRoleBinding.
pub struct Binding<T> {
    namespaced: bool,
    kind: PhantomData<fn() -> T>,
}

pub fn role_binding() -> Binding<rbacv1::RoleBinding> {
    Binding {
        namespaced: true,
        kind: PhantomData,
    }
}

pub fn cluster_role_binding() -> Binding<rbacv1::ClusterRoleBinding> {
    Binding {
        namespaced: false,
        kind: PhantomData,
    }
}

impl<T: DeserializeOwned + Serialize> Strategy for Binding<T> {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(round_trip::<T>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn defaults(&self, obj: &mut Value) {
        rbac::binding_defaults(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding(obj, self.namespaced, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding_update(old, new, errs);
    }

    fn printer(&self) -> Printer {
        if self.namespaced {
            Printer::RoleBinding
        } else {
            Printer::ClusterRoleBinding
        }
    }
}
