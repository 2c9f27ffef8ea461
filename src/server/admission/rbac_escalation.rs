//! Privilege-escalation prevention for RBAC (upstream runs it in the RBAC
//! registry's storage; orch runs it as the last validating step, where
//! the full object and the writer are known):
//!
//! - a Role or ClusterRole may be created or changed only by someone who
//!   holds every permission in it, or may `escalate` it;
//! - a ClusterRole with an `aggregationRule` needs every permission
//!   (`cluster-admin`'s), since it can gather anything;
//! - a RoleBinding or ClusterRoleBinding may be created or changed only by
//!   someone who holds the role's permissions (in the binding's namespace),
//!   or may `bind` that role.
//!
//! `system:masters` (and so the server's own writers) skip the check, and
//! so do updates that change only ownerReferences and finalizers (what
//! garbage collection writes), as upstream.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Objects, Operation, Plugin, Validating, forbidden, ready};
use crate::api::rbac::{GROUP, Rule, escalation_message, rules_of, uncovered};
use crate::api::status::{ApiError, Target};
use crate::server::auth::authz::masters::is_master;
use crate::server::auth::authz::rbac::Rbac;
use crate::server::auth::authz::{self, Decision};

/// Where the RBAC authorizer is found once the server has built it.
pub type RbacSlot = Arc<OnceLock<Rbac>>;

pub struct RbacEscalation {
    rbac: RbacSlot,
}

impl RbacEscalation {
    pub fn new(rbac: RbacSlot) -> Self {
        Self { rbac }
    }
}

impl Plugin for RbacEscalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    fn validating(&self) -> Option<&dyn Validating> {
        Some(self)
    }
}

impl Validating for RbacEscalation {
    fn validate<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        ready(self.check(attrs, object))
    }
}

/// What an object grants, without what garbage collection may change.
fn without_gc_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "ownerReferences",
            "finalizers",
            "resourceVersion",
            "generation",
            "managedFields",
        ] {
            meta.remove(key);
        }
    }
    obj
}

/// Every permission there is.
fn full_authority() -> Vec<Rule> {
    let all = || vec!["*".to_owned()];
    vec![
        Rule {
            verbs: all(),
            api_groups: all(),
            resources: all(),
            ..Rule::default()
        },
        Rule {
            verbs: all(),
            non_resource_urls: all(),
            ..Rule::default()
        },
    ]
}

impl RbacEscalation {
    fn check(&self, attrs: &Attributes<'_>, object: &Value) -> Result<(), ApiError> {
        let res = attrs.resource;
        let role = matches!(res.plural.as_str(), "roles" | "clusterroles");
        let binding = matches!(res.plural.as_str(), "rolebindings" | "clusterrolebindings");
        if res.group != GROUP
            || !(role || binding)
            || attrs.subresource.is_some()
            || attrs.operation == Operation::Delete
            || is_master(attrs.user)
        {
            return Ok(());
        }
        if attrs.operation == Operation::Update
            && attrs
                .old_object
                .is_some_and(|old| without_gc_fields(old) == without_gc_fields(object))
        {
            return Ok(());
        }
        let namespace = attrs.namespace.unwrap_or_default();
        let Some(rbac) = self.rbac.get() else {
            return Err(forbidden(attrs, "RBAC is not ready yet; retry in a moment"));
        };
        let index = rbac.read();
        let allowed = |verb: &str, resource: &str, name: &str, group: &str| {
            let asked = authz::Attributes {
                user: attrs.user.clone(),
                verb: verb.into(),
                namespace: namespace.into(),
                api_group: group.into(),
                api_version: String::new(),
                resource: resource.into(),
                subresource: String::new(),
                name: name.into(),
                path: String::new(),
                resource_request: true,
            };
            matches!(index.decide(&asked), Decision::Allow(_))
        };
        let (owner, errors) = index.rules_for(attrs.user, namespace);
        let refuse = |granted: &[Rule]| -> Result<(), ApiError> {
            let missing = uncovered(&owner, granted);
            if missing.is_empty() {
                return Ok(());
            }
            Err(forbidden(
                attrs,
                &escalation_message(&attrs.user.name, &attrs.user.groups, &missing, &errors),
            ))
        };
        if role {
            if allowed("escalate", &res.plural, attrs.name, GROUP) {
                return Ok(());
            }
            refuse(&rules_of(object))?;
            if object.get("aggregationRule").is_some_and(|a| !a.is_null())
                && !uncovered(&owner, &full_authority()).is_empty()
            {
                return Err(forbidden(
                    attrs,
                    "must have cluster-admin privileges to use the aggregationRule",
                ));
            }
            return Ok(());
        }
        let role_ref = object.get("roleRef").unwrap_or(&Value::Null);
        let text = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or_default();
        let (kind, name) = (text("kind"), text("name"));
        let plural = match kind {
            "ClusterRole" => "clusterroles",
            "Role" => "roles",
            _ => return Ok(()), // validation refuses it
        };
        if allowed("bind", plural, name, text("apiGroup")) {
            return Ok(());
        }
        match index.role_ref_rules(kind, name, namespace) {
            Some(rules) => refuse(&rules),
            None => Err(ApiError::not_found(Target {
                group: GROUP,
                resource: &kind.to_lowercase(),
                name,
            })),
        }
    }
}
