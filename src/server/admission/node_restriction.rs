//! NodeRestriction: a node (`system:node:<name>` in `system:nodes`) may
//! create, update and patch only its own Node object, status included,
//! and only its own Lease in `kube-node-lease`. On its Node it may not
//! add, change or remove labels a node must not give itself
//! ([`crate::api::node_labels`]: `node-restriction.kubernetes.io/` ones,
//! and `kubernetes.io`/`k8s.io` ones other than the kubelet's own), so
//! that it cannot steer workloads meant for other nodes to itself; nor
//! change its own taints (it sets them only when it registers), owner
//! references or config source. As upstream, the Node
//! authorizer lets nodes write Nodes at all and create Leases whatever
//! their name (it cannot see a create's name), and this plugin narrows
//! that to their own; what else a node may touch (its pods' status, what
//! its pods use) is the authorizer's business
//! ([`crate::server::auth::authz::node`]).

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{Attributes, Mutating, Objects, Operation, Plugin, forbidden, ready};
use crate::api::node_labels;
use crate::api::status::ApiError;

/// Confines what nodes write to their own objects.
pub struct NodeRestriction;

impl Plugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn mutating(&self) -> Option<&dyn Mutating> {
        Some(self)
    }
}

impl Mutating for NodeRestriction {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a mut Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        ready(check(attrs, object))
    }
}

/// The namespace node Leases live in.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

fn check(attrs: &Attributes<'_>, object: &Value) -> Result<(), ApiError> {
    let Some(node) = attrs.user.node() else {
        return Ok(());
    };
    if attrs.is("coordination.k8s.io", "leases") {
        return admit_lease(node, attrs);
    }
    if !attrs.is("", "nodes") {
        return Ok(());
    }
    if attrs.name == node {
        return admit_own_node(node, attrs, object);
    }
    let why = match attrs.operation {
        Operation::Create => format!("node {node:?} may only create its own Node object"),
        Operation::Update | Operation::Delete => {
            format!(
                "node {node:?} is not allowed to modify node {:?}",
                attrs.name
            )
        }
    };
    Err(forbidden(attrs, &why))
}

/// The labels a node gives its own Node, on create and on every update
/// (its status too, as upstream: the labels of the object written are
/// compared, whichever part the write is for). Upstream's wording, which
/// differs between create and update.
fn admit_own_node(node: &str, attrs: &Attributes<'_>, object: &Value) -> Result<(), ApiError> {
    let labels = |o: Option<&Value>| {
        o.and_then(|o| o.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let why = match attrs.operation {
        Operation::Create => {
            let refused = node_labels::forbidden_changes(&labels(Some(object)), &Map::new());
            if refused.is_empty() {
                return Ok(());
            }
            format!(
                "node {node:?} is not allowed to set the following labels: {}",
                refused.join(", ")
            )
        }
        Operation::Update => {
            let old = attrs.old_object.unwrap_or(&Value::Null);
            // A /status write cannot change the spec (the status strategy
            // puts the stored one back), so only other writes are checked.
            if attrs.subresource != Some("status") {
                if spec_part(object, "configSource")
                    .is_some_and(|new| Some(new) != spec_part(old, "configSource"))
                {
                    return Err(forbidden(
                        attrs,
                        &format!(
                            "node {node:?} is not allowed to update configSource to a new non-nil configSource"
                        ),
                    ));
                }
                if list_at(object, "/spec/taints") != list_at(old, "/spec/taints") {
                    return Err(forbidden(
                        attrs,
                        &format!("node {node:?} is not allowed to modify taints"),
                    ));
                }
            }
            if list_at(object, "/metadata/ownerReferences")
                != list_at(old, "/metadata/ownerReferences")
            {
                return Err(forbidden(
                    attrs,
                    &format!("node {node:?} is not allowed to modify ownerReferences"),
                ));
            }
            let refused =
                node_labels::forbidden_changes(&labels(Some(object)), &labels(attrs.old_object));
            if refused.is_empty() {
                return Ok(());
            }
            format!("is not allowed to modify labels: {}", refused.join(", "))
        }
        Operation::Delete => return Ok(()),
    };
    Err(forbidden(attrs, &why))
}

/// `spec.<field>` when set (not null).
fn spec_part<'v>(obj: &'v Value, field: &str) -> Option<&'v Value> {
    obj.get("spec")?.get(field).filter(|v| !v.is_null())
}

/// The list at `pointer`, absent, null and empty alike (as upstream's
/// semantic equality treats a nil and an empty slice).
fn list_at<'v>(obj: &'v Value, pointer: &str) -> &'v [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A node's Lease is its heartbeat: it may write only the one named
/// after itself, so that it cannot keep another node looking alive (or
/// make it look gone). Upstream's wording.
fn admit_lease(node: &str, attrs: &Attributes<'_>) -> Result<(), ApiError> {
    if attrs.namespace != Some(NODE_LEASE_NAMESPACE) {
        return Err(forbidden(
            attrs,
            &format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"),
        ));
    }
    // On create too: the name is the object's (the authorizer saw none).
    if attrs.name != node {
        return Err(forbidden(
            attrs,
            "can only access node lease with the same name as the requesting node",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admission::tests::{Stored, attrs};
    use crate::server::auth::User;

    #[tokio::test]
    async fn nodes_write_only_their_own_node() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let node_a = User::new("system:node:node-a", &["system:nodes"]);
        let admin = User::new("system:admin", &["system:masters"]);
        use Operation::{Create, Delete, Update};
        #[rustfmt::skip]
        let cases = [
            (&node_a, Create, "nodes", "node-a", None, None),
            (&node_a, Create, "nodes", "impostor", None, Some("nodes \"impostor\" is forbidden: node \"node-a\" may only create its own Node object")),
            (&node_a, Create, "nodes", "", None, Some("nodes is forbidden: node \"node-a\" may only create its own Node object")),
            (&node_a, Update, "nodes", "node-a", None, None),
            (&node_a, Update, "nodes", "node-a", Some("status"), None),
            (&node_a, Update, "nodes", "node-b", None, Some("nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\"")),
            (&node_a, Update, "nodes", "node-b", Some("status"), Some("nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\"")),
            (&node_a, Delete, "nodes", "node-b", None, Some("nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\"")),
            (&node_a, Create, "pods", "mirror", None, None),
            (&node_a, Update, "pods", "p", Some("status"), None),
            (&admin, Create, "nodes", "any", None, None),
            (&admin, Update, "nodes", "any", None, None),
        ];
        for (user, operation, plural, name, sub, refused) in cases {
            let mut a = attrs(&catalog, user, operation, plural, None, name);
            a.subresource = sub;
            let got = NodeRestriction
                .admit(&a, &mut Value::Null, &Stored::default())
                .await;
            assert_eq!(
                got.map_err(|e| (e.code, e.message)),
                refused.map_or(Ok(()), |m| Err((403, m.to_owned()))),
                "{} {operation:?} {plural}/{name} {sub:?}",
                user.name
            );
        }
    }

    #[tokio::test]
    async fn nodes_write_only_their_own_lease() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let node_a = User::new("system:node:node-a", &["system:nodes"]);
        let admin = User::new("system:admin", &["system:masters"]);
        let leases = "coordination.k8s.io/leases";
        let other = "leases.coordination.k8s.io \"node-b\" is forbidden: can only access node lease with the same name as the requesting node";
        use Operation::{Create, Delete, Update};
        #[rustfmt::skip]
        let cases = [
            (&node_a, Create, "kube-node-lease", "node-a", None),
            (&node_a, Update, "kube-node-lease", "node-a", None),
            (&node_a, Delete, "kube-node-lease", "node-a", None),
            (&node_a, Create, "kube-node-lease", "node-b", Some(other)),
            (&node_a, Update, "kube-node-lease", "node-b", Some(other)),
            (&node_a, Delete, "kube-node-lease", "node-b", Some(other)),
            (&node_a, Create, "default", "node-a", Some("leases.coordination.k8s.io \"node-a\" is forbidden: can only access leases in the \"kube-node-lease\" system namespace")),
            (&admin, Create, "kube-node-lease", "node-b", None),
            (&admin, Update, "default", "anything", None),
        ];
        for (user, operation, ns, name, refused) in cases {
            let a = attrs(&catalog, user, operation, leases, Some(ns), name);
            let got = NodeRestriction
                .admit(&a, &mut Value::Null, &Stored::default())
                .await;
            let got = got.map_err(|e| {
                let details = e.details.expect("a refusal names the lease");
                assert_eq!(
                    (
                        details.group.as_str(),
                        details.kind.as_str(),
                        details.name.as_str()
                    ),
                    ("coordination.k8s.io", "leases", name)
                );
                (e.code, e.message)
            });
            assert_eq!(
                got,
                refused.map_or(Ok(()), |m| Err((403, m.to_owned()))),
                "{} {operation:?} {ns}/{name}",
                user.name
            );
        }
    }

    #[tokio::test]
    async fn nodes_give_themselves_only_labels_a_node_may_set() {
        use serde_json::json;
        let catalog = crate::api::catalog::Catalog::builtin();
        let node_a = User::new("system:node:node-a", &["system:nodes"]);
        let admin = User::new("system:admin", &["system:masters"]);
        let node = |labels: Value| json!({"metadata": {"name": "node-a", "labels": labels}});
        let kubelet = json!({"kubernetes.io/hostname": "node-a", "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "z1",
            "node.kubernetes.io/instance-type": "big", "kubelet.kubernetes.io/x": "1",
            "beta.kubernetes.io/os": "linux", "example.com/rack": "r1", "mine": "yes"});
        let restricted = json!({"node-restriction.kubernetes.io/pool": "gpu", "mine": "yes"});
        let on_create = "nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to set the following labels: ";
        let on_update = "nodes \"node-a\" is forbidden: is not allowed to modify labels: ";
        use Operation::{Create, Update};
        #[rustfmt::skip]
        let cases = [
            // Create: every label counts.
            (&node_a, Create, None, None, kubelet.clone(), None),
            (&node_a, Create, None, None, restricted.clone(), Some(format!("{on_create}node-restriction.kubernetes.io/pool"))),
            (&node_a, Create, None, None, json!({"node-role.kubernetes.io/worker": "", "k8s.io/x": "1", "a": "b"}),
                Some(format!("{on_create}k8s.io/x, node-role.kubernetes.io/worker"))),
            (&admin, Create, None, None, restricted.clone(), None),
            // Update: only what changes counts.
            (&node_a, Update, None, Some(json!({})), kubelet.clone(), None),
            (&node_a, Update, None, Some(restricted.clone()), restricted.clone(), None),
            (&node_a, Update, None, Some(restricted.clone()), json!({"node-restriction.kubernetes.io/pool": "gpu", "mine": "no"}), None),
            (&node_a, Update, None, Some(json!({"mine": "yes"})), restricted.clone(), Some(format!("{on_update}node-restriction.kubernetes.io/pool"))),
            (&node_a, Update, None, Some(restricted.clone()), json!({"node-restriction.kubernetes.io/pool": "cpu"}), Some(format!("{on_update}node-restriction.kubernetes.io/pool"))),
            (&node_a, Update, None, Some(restricted.clone()), json!({"mine": "yes"}), Some(format!("{on_update}node-restriction.kubernetes.io/pool"))),
            (&node_a, Update, None, Some(json!({})), json!({"kubernetes.io/role": "master"}), Some(format!("{on_update}kubernetes.io/role"))),
            (&node_a, Update, Some("status"), Some(json!({})), restricted.clone(), Some(format!("{on_update}node-restriction.kubernetes.io/pool"))),
            (&node_a, Update, Some("status"), Some(restricted.clone()), restricted.clone(), None),
            (&admin, Update, None, Some(json!({})), restricted.clone(), None),
        ];
        for (user, operation, sub, old, labels, refused) in cases {
            let old = old.map(node);
            let mut a = attrs(&catalog, user, operation, "nodes", None, "node-a");
            a.subresource = sub;
            a.old_object = old.as_ref();
            let got = NodeRestriction
                .admit(&a, &mut node(labels.clone()), &Stored::default())
                .await;
            assert_eq!(
                got.map_err(|e| (e.code, e.message)),
                refused.clone().map_or(Ok(()), |m| Err((403, m))),
                "{} {operation:?} {sub:?} {old:?} -> {labels}",
                user.name
            );
        }
    }

    #[tokio::test]
    async fn nodes_keep_the_taints_they_registered_with() {
        use serde_json::json;
        let catalog = crate::api::catalog::Catalog::builtin();
        let node_a = User::new("system:node:node-a", &["system:nodes"]);
        let admin = User::new("system:admin", &["system:masters"]);
        let taint = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        let other = json!([{"key": "dedicated", "value": "cpu", "effect": "NoSchedule"}]);
        let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}]);
        let node = |spec: Value, owners: Value| json!({"metadata": {"name": "node-a", "ownerReferences": owners}, "spec": spec});
        let taints =
            "nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to modify taints";
        use Operation::{Create, Update};
        #[rustfmt::skip]
        let cases = [
            // Registering with taints is how a node gets them.
            (&node_a, Create, None, None, node(json!({"taints": taint}), Value::Null), None),
            (&node_a, Update, None, Some(node(json!({"taints": taint}), Value::Null)), node(json!({"taints": taint}), Value::Null), None),
            // Absent, null and empty are the same list.
            (&node_a, Update, None, Some(node(json!({}), Value::Null)), node(json!({"taints": []}), json!([])), None),
            (&node_a, Update, None, Some(node(json!({}), Value::Null)), node(json!({"taints": taint}), Value::Null), Some(taints.to_owned())),
            (&node_a, Update, None, Some(node(json!({"taints": taint}), Value::Null)), node(json!({}), Value::Null), Some(taints.to_owned())),
            (&node_a, Update, None, Some(node(json!({"taints": taint}), Value::Null)), node(json!({"taints": other}), Value::Null), Some(taints.to_owned())),
            // Through /status the spec is not written at all.
            (&node_a, Update, Some("status"), Some(node(json!({"taints": taint}), Value::Null)), node(json!({}), Value::Null), None),
            (&node_a, Update, None, Some(node(json!({}), Value::Null)), node(json!({}), owner.clone()),
                Some("nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to modify ownerReferences".to_owned())),
            (&node_a, Update, None, Some(node(json!({}), Value::Null)), node(json!({"configSource": {"configMap": {"name": "c"}}}), Value::Null),
                Some("nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to update configSource to a new non-nil configSource".to_owned())),
            (&admin, Update, None, Some(node(json!({}), Value::Null)), node(json!({"taints": taint}), owner.clone()), None),
        ];
        for (user, operation, sub, old, mut new, refused) in cases {
            let mut a = attrs(&catalog, user, operation, "nodes", None, "node-a");
            a.subresource = sub;
            a.old_object = old.as_ref();
            let got = NodeRestriction
                .admit(&a, &mut new, &Stored::default())
                .await;
            assert_eq!(
                got.map_err(|e| (e.code, e.message)),
                refused.clone().map_or(Ok(()), |m| Err((403, m))),
                "{} {operation:?} {sub:?} {old:?} -> {new}",
                user.name
            );
        }
    }
}
