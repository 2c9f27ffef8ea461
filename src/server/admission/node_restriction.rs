//! NodeRestriction: a node (`system:node:<name>` in `system:nodes`) may
//! create, update and patch only its own Node object, status included,
//! and only its own Lease in `kube-node-lease`. As upstream, the Node
//! authorizer lets nodes write Nodes at all and create Leases whatever
//! their name (it cannot see a create's name), and this plugin narrows
//! that to their own; what else a node may touch (its pods' status, what
//! its pods use) is the authorizer's business
//! ([`crate::server::auth::authz::node`]).

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Mutating, Objects, Operation, Plugin, forbidden, ready};
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
        _object: &'a mut Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        ready(check(attrs))
    }
}

/// The namespace node Leases live in.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

fn check(attrs: &Attributes<'_>) -> Result<(), ApiError> {
    let Some(node) = attrs.user.node() else {
        return Ok(());
    };
    if attrs.is("coordination.k8s.io", "leases") {
        return admit_lease(node, attrs);
    }
    if !attrs.is("", "nodes") || attrs.name == node {
        return Ok(());
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
}
