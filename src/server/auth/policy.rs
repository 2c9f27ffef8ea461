//! The bootstrap RBAC policy: upstream's default ClusterRoles,
//! ClusterRoleBindings and the Roles and RoleBindings of `kube-system` and
//! `kube-public` (`policy.yaml`, generated from upstream's by
//! `scripts/gen-bootstrap-policy.py`), reconciled at every start as
//! upstream's `rbac/bootstrap-roles` post-start hook does:
//!
//! - a missing object is created, labelled `kubernetes.io/bootstrapping:
//!   rbac-defaults` and annotated `rbac.authorization.kubernetes.io/autoupdate:
//!   "true"`;
//! - an existing one gets back the rules, aggregation selectors, subjects,
//!   labels and annotations it lacks; what a user added stays;
//! - a binding whose `roleRef` changed is deleted and created anew (a
//!   roleRef cannot be updated);
//! - an object annotated `autoupdate: "false"` is left as it is.

use futures::future::join_all;
use serde_json::{Map, Value, json};

use crate::api::meta::meta_str;
use crate::api::rbac::{GROUP, Rule, rules_of, uncovered};
use crate::api::status::ApiError;
use crate::server::registry::{DeleteOptions, ListQuery, Registry, WriteOptions};

const POLICY: &str = include_str!("policy.yaml");
/// orch's own bindings (for nodes' certificates), kept apart from
/// upstream's generated policy.
const ORCH_POLICY: &str = include_str!("policy-orch.yaml");

/// The annotation that lets an administrator keep a default as they made it.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The policy's objects of each kind, in full.
#[derive(Debug, Default)]
pub struct Policy {
    pub cluster_roles: Vec<Value>,
    pub cluster_role_bindings: Vec<Value>,
    pub roles: Vec<Value>,
    pub role_bindings: Vec<Value>,
}

/// The policy, expanded from its compact form.
///
/// # Panics
/// If `policy.yaml` is malformed (a build-time file; unit tests parse it).
pub fn policy() -> Policy {
    let docs: Vec<Value> = [POLICY, ORCH_POLICY]
        .iter()
        .map(|text| serde_yaml_ng::from_str(text).expect("the policy files parse"))
        .collect();
    let expand = |section: &str, kind: &str| -> Vec<Value> {
        docs.iter()
            .filter_map(|doc| doc[section].as_array())
            .flatten()
            .map(|item| expand(item, kind))
            .collect()
    };
    Policy {
        cluster_roles: expand("clusterRoles", "ClusterRole"),
        cluster_role_bindings: expand("clusterRoleBindings", "ClusterRoleBinding"),
        roles: expand("roles", "Role"),
        role_bindings: expand("roleBindings", "RoleBinding"),
    }
}

/// One object of the compact form as the API has it.
fn expand(item: &Value, kind: &str) -> Value {
    let mut labels =
        Map::from_iter([("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"))]);
    if let Some(extra) = item.get("labels").and_then(Value::as_object) {
        labels.extend(extra.clone());
    }
    let mut annotations = Map::from_iter([(AUTOUPDATE.into(), json!("true"))]);
    if let Some(extra) = item.get("annotations").and_then(Value::as_object) {
        annotations.extend(extra.clone());
    }
    let mut metadata = json!({"name": item["name"], "labels": labels, "annotations": annotations});
    if let Some(ns) = item.get("namespace") {
        metadata["namespace"] = ns.clone();
    }
    let mut obj = json!({"apiVersion": format!("{GROUP}/v1"), "kind": kind, "metadata": metadata});
    if kind.ends_with("Binding") {
        let (ref_kind, ref_name) = item["roleRef"]
            .as_str()
            .and_then(|r| r.split_once(':'))
            .expect("roleRef is Kind:name");
        obj["roleRef"] = json!({"apiGroup": GROUP, "kind": ref_kind, "name": ref_name});
        let subjects: Vec<Value> = item["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| {
                let (kind, name) = s.split_once(':').expect("subject is Kind:name");
                match kind {
                    "ServiceAccount" => {
                        let (ns, name) = name.split_once('/').expect("ServiceAccount:ns/name");
                        json!({"kind": kind, "name": name, "namespace": ns})
                    }
                    _ => json!({"apiGroup": GROUP, "kind": kind, "name": name}),
                }
            })
            .collect();
        obj["subjects"] = json!(subjects);
    } else {
        if let Some(agg) = item.get("aggregationRule") {
            obj["aggregationRule"] = agg.clone();
        }
        obj["rules"] = item.get("rules").cloned().unwrap_or_else(|| json!([]));
    }
    obj
}

/// What reconciling one object needs.
enum Step {
    Create(Value),
    Update(Value),
    /// A binding whose roleRef changed: delete, then create.
    Replace(Value),
}

/// `existing` changed to hold everything `expected` does, or `None` when
/// it already does or must be left alone.
fn reconcile_one(expected: &Value, existing: Option<&Value>) -> Option<Step> {
    let Some(existing) = existing else {
        return Some(Step::Create(expected.clone()));
    };
    if existing.pointer(&format!(
        "/metadata/annotations/{}",
        AUTOUPDATE.replace('/', "~1")
    )) == Some(&json!("false"))
    {
        return None;
    }
    let mut want = existing.clone();
    for field in ["labels", "annotations"] {
        let have = want["metadata"][field]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut merged = expected["metadata"][field]
            .as_object()
            .cloned()
            .unwrap_or_default();
        merged.extend(have);
        want["metadata"][field] = Value::Object(merged);
    }
    let binding = expected.get("roleRef").is_some();
    if binding {
        if existing.get("roleRef") != expected.get("roleRef") {
            let mut fresh = expected.clone();
            let mut subjects = as_vec(existing.get("subjects"));
            union(&mut subjects, as_vec(expected.get("subjects")));
            fresh["subjects"] = json!(subjects);
            return Some(Step::Replace(fresh));
        }
        let mut subjects = as_vec(existing.get("subjects"));
        union(&mut subjects, as_vec(expected.get("subjects")));
        want["subjects"] = json!(subjects);
    } else {
        let missing = uncovered(&rules_of(existing), &rules_of(expected));
        if !missing.is_empty() {
            let mut all = as_vec(existing.get("rules"));
            all.extend(missing.iter().map(Rule::to_value));
            want["rules"] = json!(all);
        }
        if let Some(selectors) = expected.pointer("/aggregationRule/clusterRoleSelectors") {
            let mut have = as_vec(existing.pointer("/aggregationRule/clusterRoleSelectors"));
            union(&mut have, as_vec(Some(selectors)));
            want["aggregationRule"] = json!({"clusterRoleSelectors": have});
        }
    }
    (want != *existing).then_some(Step::Update(want))
}

fn as_vec(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

/// `have` with each of `more` it lacks appended.
fn union(have: &mut Vec<Value>, more: Vec<Value>) {
    for item in more {
        if !have.contains(&item) {
            have.push(item);
        }
    }
}

/// Reconcile the whole policy: one list per kind, then only the writes
/// needed, concurrently (nothing at all on a restart with nothing changed).
/// Returns the revision of the last write to each kind written (plural,
/// revision), for callers that wait for their caches to see it.
///
/// # Errors
/// A store failure, or a write refused (the message names the object).
pub async fn reconcile(registry: &Registry) -> Result<Vec<(&'static str, u64)>, ApiError> {
    let policy = policy();
    let mut written = Vec::new();
    let kinds = [
        ("clusterroles", &policy.cluster_roles),
        ("roles", &policy.roles),
        ("clusterrolebindings", &policy.cluster_role_bindings),
        ("rolebindings", &policy.role_bindings),
    ];
    // Roles before bindings, so a binding never waits for its role.
    for (plural, expected) in kinds {
        let res = registry
            .resource(GROUP, plural)
            .expect("RBAC kinds are in the catalog")
            .clone();
        let existing = registry
            .list(&res, None, &ListQuery::default())
            .await?
            .decoded()?;
        let find = |obj: &Value| {
            existing.iter().find(|e| {
                meta_str(e, "name") == meta_str(obj, "name")
                    && meta_str(e, "namespace") == meta_str(obj, "namespace")
            })
        };
        let writes = expected.iter().filter_map(|obj| {
            let step = reconcile_one(obj, find(obj))?;
            let res = res.clone();
            Some(async move {
                let ns = meta_str(obj, "namespace");
                let ns = (!ns.is_empty()).then_some(ns);
                let name = meta_str(obj, "name");
                let opts = WriteOptions::default();
                let rev = |w: crate::server::registry::Written| {
                    meta_str(&w.object, "resourceVersion")
                        .parse::<u64>()
                        .unwrap_or(0)
                };
                let done = match step {
                    Step::Create(obj) => registry.create(&res, ns, obj, &opts).await.map(rev),
                    Step::Update(obj) => registry
                        .update(&res, ns, name, obj, None, &opts)
                        .await
                        .map(rev),
                    Step::Replace(obj) => {
                        match registry
                            .delete(&res, ns, name, &DeleteOptions::default())
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if e.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                        registry.create(&res, ns, obj, &opts).await.map(rev)
                    }
                };
                match done {
                    // Another server (or a user) got there first.
                    Err(e) if e.code == 409 => Ok(0),
                    Err(e) => Err(ApiError {
                        message: format!(
                            "cannot reconcile the bootstrap {plural} {name:?}: {}",
                            e.message
                        ),
                        ..e
                    }),
                    Ok(rev) => {
                        tracing::debug!(%plural, %name, "bootstrap policy reconciled");
                        Ok(rev)
                    }
                }
            })
        });
        let mut last = 0;
        for done in join_all(writes).await {
            last = last.max(done?);
        }
        if last > 0 {
            written.push((plural, last));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named<'a>(objs: &'a [Value], name: &str) -> &'a Value {
        objs.iter()
            .find(|o| meta_str(o, "name") == name)
            .unwrap_or_else(|| panic!("{name} is in the policy"))
    }

    #[test]
    fn every_binding_names_a_role_of_the_policy_and_orch_s_are_there() {
        let p = policy();
        for b in &p.cluster_role_bindings {
            named(&p.cluster_roles, b["roleRef"]["name"].as_str().unwrap());
        }
        let bootstrap = named(&p.cluster_role_bindings, "orch:node-autoapprove-bootstrap");
        assert_eq!(
            bootstrap["subjects"],
            json!([{"apiGroup": GROUP, "kind": "Group", "name": "system:bootstrappers"}])
        );
        named(&p.cluster_role_bindings, "orch:kubelet-bootstrap");
        named(
            &p.cluster_role_bindings,
            "orch:node-autoapprove-certificate-rotation",
        );
    }

    #[test]
    fn the_policy_has_upstream_s_defaults() {
        let p = policy();
        let admin = named(&p.cluster_roles, "cluster-admin");
        assert_eq!(
            admin["rules"][0],
            json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})
        );
        assert_eq!(admin["metadata"]["annotations"][AUTOUPDATE], "true");
        assert_eq!(
            admin["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        let view = named(&p.cluster_roles, "view");
        assert_eq!(
            view["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]["rbac.authorization.k8s.io/aggregate-to-view"],
            "true"
        );
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
            "true"
        );
        let binding = named(&p.cluster_role_bindings, "cluster-admin");
        assert_eq!(
            binding["subjects"],
            json!([{"apiGroup": GROUP, "kind": "Group", "name": "system:masters"}])
        );
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": GROUP, "kind": "ClusterRole", "name": "cluster-admin"})
        );
        for name in [
            "admin",
            "edit",
            "system:aggregate-to-admin",
            "system:aggregate-to-edit",
            "system:aggregate-to-view",
            "system:basic-user",
            "system:discovery",
            "system:public-info-viewer",
            "system:auth-delegator",
            "system:monitoring",
            "system:node-proxier",
            "system:service-account-issuer-discovery",
            "system:kube-dns",
            "system:persistent-volume-provisioner",
            "system:node",
            "system:controller:deployment-controller",
            "system:controller:clusterrole-aggregation-controller",
        ] {
            named(&p.cluster_roles, name);
        }
        for name in [
            "system:basic-user",
            "system:discovery",
            "system:public-info-viewer",
            "system:monitoring",
        ] {
            named(&p.cluster_role_bindings, name);
        }
        // Every binding names a role of the policy.
        for b in p.cluster_role_bindings.iter().chain(&p.role_bindings) {
            let role = b["roleRef"]["name"].as_str().unwrap_or_default();
            let found = match b["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => p.cluster_roles.iter().any(|r| meta_str(r, "name") == role),
                _ => p.roles.iter().any(|r| {
                    meta_str(r, "name") == role
                        && meta_str(r, "namespace") == meta_str(b, "namespace")
                }),
            };
            assert!(found, "{b}");
        }
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_what_users_added() {
        let p = policy();
        let expected = named(&p.cluster_roles, "system:discovery");
        assert!(matches!(
            reconcile_one(expected, None),
            Some(Step::Create(_))
        ));
        assert!(reconcile_one(expected, Some(expected)).is_none());
        // A user narrowed it and added their own rule and label.
        let mut mine = expected.clone();
        mine["rules"] = json!([{"verbs": ["get"], "nonResourceURLs": ["/api", "/mine"]}]);
        mine["metadata"]["labels"]["team"] = json!("a");
        mine["metadata"]["annotations"] = json!({});
        let Some(Step::Update(fixed)) = reconcile_one(expected, Some(&mine)) else {
            panic!("an update");
        };
        assert_eq!(fixed["rules"][0], mine["rules"][0]);
        assert!(uncovered(&rules_of(&fixed), &rules_of(expected)).is_empty());
        assert_eq!(fixed["metadata"]["labels"]["team"], "a");
        assert_eq!(fixed["metadata"]["annotations"][AUTOUPDATE], "true");
        assert!(reconcile_one(expected, Some(&fixed)).is_none());
        // autoupdate: "false" leaves it alone.
        mine["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert!(reconcile_one(expected, Some(&mine)).is_none());
        // Bindings: subjects added back, a changed roleRef replaced.
        let expected = named(&p.cluster_role_bindings, "system:discovery");
        let mut mine = expected.clone();
        mine["subjects"] = json!([{"kind": "User", "name": "alice", "apiGroup": GROUP}]);
        let Some(Step::Update(fixed)) = reconcile_one(expected, Some(&mine)) else {
            panic!("an update");
        };
        assert_eq!(fixed["subjects"].as_array().map(Vec::len), Some(2));
        mine["roleRef"]["name"] = json!("view");
        assert!(matches!(
            reconcile_one(expected, Some(&mine)),
            Some(Step::Replace(_))
        ));
    }
}
