//! NodeRestriction: a node may create only its own Node object (upstream's
//! plugin of that name; which objects a node may update at all is the
//! Node authorizer's decision).

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{AdmissionPlugin, Operation, Request};
use crate::api::status::ApiError;

/// Confines what nodes write to their own objects.
pub struct NodeRestriction;

impl AdmissionPlugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn admit<'a>(
        &'a self,
        request: &'a Request<'a>,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        let verdict = check(request, object);
        async move { verdict }.boxed()
    }
}

fn check(request: &Request<'_>, object: &Value) -> Result<(), ApiError> {
    let Some(node) = request.user.node() else {
        return Ok(());
    };
    let res = request.resource;
    if request.operation != Operation::Create || !res.group.is_empty() || res.plural != "nodes" {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if name == node {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "nodes {name:?} is forbidden: node {node:?} may only create its own Node object"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::User;
    use serde_json::json;

    #[tokio::test]
    async fn nodes_create_only_their_own_node() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let nodes = catalog.find("", "v1", "nodes").unwrap();
        let pods = catalog.find("", "v1", "pods").unwrap();
        let node_a = User::new("system:node:node-a", &["system:nodes"]);
        let admin = User::new("system:admin", &["system:masters"]);
        let named = |n: &str| json!({"metadata": {"name": n}});
        #[rustfmt::skip]
        let cases = [
            (&node_a, Operation::Create, nodes, named("node-a"), None),
            (&node_a, Operation::Create, nodes, named("impostor"), Some("nodes \"impostor\" is forbidden: node \"node-a\" may only create its own Node object")),
            (&node_a, Operation::Create, nodes, json!({}), Some("nodes \"\" is forbidden: node \"node-a\" may only create its own Node object")),
            (&node_a, Operation::Update, nodes, named("node-a"), None),
            (&node_a, Operation::Create, pods, named("mirror"), None),
            (&admin, Operation::Create, nodes, named("any"), None),
        ];
        for (user, operation, resource, mut object, refused) in cases {
            let request = Request {
                user,
                operation,
                resource,
                namespace: None,
                name: None,
                subresource: None,
            };
            let got = NodeRestriction.admit(&request, &mut object).await;
            assert_eq!(
                got.map_err(|e| (e.code, e.message)),
                refused.map_or(Ok(()), |m| Err((403, m.to_owned()))),
                "{user:?} {operation:?} {object}"
            );
        }
    }
}
