//! The Node authorizer: a node (`system:node:<name>` in `system:nodes`,
//! from the certificate it got at join) may touch only what it needs to
//! run its pods: Nodes, its own Lease (any name on create, which
//! NodeRestriction narrows), the pods bound to it, and the
//! Secrets, ConfigMaps and service accounts those pods use; it may read
//! discovery, the OpenAPI documents, Services and endpoints, write Events,
//! ask for certificates (CertificateSigningRequests) and open its own
//! kubelet tunnel. As upstream, it lets a node write
//! Nodes, and the NodeRestriction admission plugin
//! ([`crate::server::admission::node_restriction`]) narrows that to its
//! own. As upstream's Node authorizer it never denies outright: what it
//! does not allow is left to the next authorizer, with the reason a
//! refusal will carry.
//!
//! Which pods a node runs comes from the controllers' pod cache; a pod
//! bound a moment ago may not be there yet, so a miss asks the store.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Authorizer, Decision, Rules};
use crate::api::catalog::Resource;
use crate::server::informer::Informer;
use crate::server::registry::{ListQuery, Registry};

/// Confines nodes to their own objects and their pods' dependencies.
pub struct Node {
    registry: Arc<Registry>,
    pods: Arc<Informer>,
    /// orch's kubelet tunnel path (`?node=<name>` names whose it is).
    tunnel_path: &'static str,
}

impl Node {
    pub fn new(registry: Arc<Registry>, pods: Arc<Informer>, tunnel_path: &'static str) -> Self {
        Self {
            registry,
            pods,
            tunnel_path,
        }
    }

    /// Non-resource requests: its own tunnel, and reads of discovery and
    /// OpenAPI.
    fn non_resource(&self, node: &str, attrs: &Attributes) -> Decision {
        if attrs.path == self.tunnel_path {
            return if attrs.name == node {
                Decision::allow()
            } else {
                Decision::NoOpinion(format!(
                    "node {node:?} may only open its own kubelet tunnel, not node {:?}'s",
                    attrs.name
                ))
            };
        }
        let read = matches!(attrs.verb.as_str(), "get" | "head");
        if read && (attrs.path.starts_with("/openapi/") || is_discovery(&attrs.path)) {
            Decision::allow()
        } else {
            Decision::NoOpinion(String::new())
        }
    }

    /// The rules for API objects: `Ok(false)` for what no node may do,
    /// `Err(why)` for an object its pods do not use.
    async fn may(&self, node: &str, attrs: &Attributes) -> Result<bool, String> {
        let ns = Some(attrs.namespace.as_str()).filter(|n| !n.is_empty());
        let name = Some(attrs.name.as_str()).filter(|n| !n.is_empty());
        let sub = Some(attrs.subresource.as_str()).filter(|s| !s.is_empty());
        let verb = attrs.verb.as_str();
        let own = name == Some(node);
        let reads = matches!(verb, "get" | "list" | "watch");
        Ok(
            match (attrs.api_group.as_str(), attrs.resource.as_str(), sub) {
                // Who am I, and what may I do: every authenticated user.
                ("authentication.k8s.io", "selfsubjectreviews", None)
                | (
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews" | "selfsubjectrulesreviews",
                    None,
                ) => verb == "create",
                ("", "nodes", None) if reads || verb == "create" => true,
                ("", "nodes", Some("status")) if verb == "get" => true,
                // Which Node: NodeRestriction's business, as upstream.
                ("", "nodes", None | Some("status")) if matches!(verb, "update" | "patch") => true,
                ("coordination.k8s.io", "leases", None) => lease(verb, ns, own)?,
                ("", "pods", None) if reads => true,
                ("", "pods", Some("status")) if matches!(verb, "get" | "update" | "patch") => {
                    self.pod_on_node(ns, name, node).await?
                }
                ("", "pods", None) if verb == "delete" => self.pod_on_node(ns, name, node).await?,
                ("", "events", None) | ("events.k8s.io", "events", None) => {
                    matches!(verb, "create" | "update" | "patch")
                }
                ("", "services" | "endpoints", None)
                | ("discovery.k8s.io", "endpointslices", None) => reads,
                ("", kind @ ("configmaps" | "secrets"), None) if verb == "get" => {
                    self.used_on_node(ns, kind, name, node).await?
                }
                ("", "serviceaccounts", Some("token")) if verb == "create" => {
                    self.used_on_node(ns, "serviceaccounts", name, node).await?
                }
                // Renewing its own certificate (which CN it may get is
                // the approver's business, as upstream).
                ("certificates.k8s.io", "certificatesigningrequests", None) => {
                    reads || verb == "create"
                }
                _ => false,
            },
        )
    }

    /// Is pod `ns/name` bound to `node`?
    async fn pod_on_node(
        &self,
        ns: Option<&str>,
        name: Option<&str>,
        node: &str,
    ) -> Result<bool, String> {
        let (ns, name, res) = self.asked_about(ns, name, node)?;
        let bound =
            |pod: &Value| pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
        if self
            .pods
            .get(&format!("{ns}/{name}"))
            .is_some_and(|p| bound(&p))
        {
            return Ok(true);
        }
        match self.registry.get(&res, Some(ns), name).await {
            Ok(pod) if bound(&pod) => Ok(true),
            _ => Err(no_relationship(node)),
        }
    }

    /// Does a pod bound to `node` in `ns` use this ConfigMap, Secret (its
    /// volumes, env or image pull secrets) or service account?
    async fn used_on_node(
        &self,
        ns: Option<&str>,
        kind: &str,
        name: Option<&str>,
        node: &str,
    ) -> Result<bool, String> {
        let (ns, name, res) = self.asked_about(ns, name, node)?;
        let uses = |pod: &Value| {
            pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                && pod_uses(pod, kind, name)
        };
        // The controllers' cache first (no store read); a pod bound a
        // moment ago may not be there yet, so a miss asks the store.
        if self.pods.list(Some(ns)).iter().any(|p| uses(p)) {
            return Ok(true);
        }
        let query = ListQuery {
            fields: crate::api::selector::FieldSelector::parse(&format!("spec.nodeName={node}"))
                .map_err(|e| e.to_string())?,
            ..ListQuery::default()
        };
        let pods = self
            .registry
            .list(&res, Some(ns), &query)
            .await
            .and_then(|l| l.decoded())
            .map_err(|e| e.message)?;
        if pods.iter().any(uses) {
            Ok(true)
        } else {
            Err(no_relationship(node))
        }
    }

    /// The namespace and name of the object a node asks about, and the
    /// pods resource to relate it through.
    fn asked_about<'a>(
        &self,
        ns: Option<&'a str>,
        name: Option<&'a str>,
        node: &str,
    ) -> Result<(&'a str, &'a str, Resource), String> {
        let pods = self.registry.catalog().find("", "v1", "pods").cloned();
        match (ns, name, pods) {
            (Some(ns), Some(name), Some(pods)) => Ok((ns, name, pods)),
            _ => Err(no_relationship(node)),
        }
    }
}

impl Authorizer for Node {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> BoxFuture<'a, Decision> {
        async move {
            let Some(node) = attrs.user.node() else {
                return Decision::NoOpinion(String::new());
            };
            if !attrs.resource_request {
                return self.non_resource(node, attrs);
            }
            match self.may(node, attrs).await {
                Ok(true) => Decision::allow(),
                Ok(false) => Decision::NoOpinion(String::new()),
                Err(why) => Decision::NoOpinion(why),
            }
        }
        .boxed()
    }

    /// As upstream's Node authorizer: what a node may do depends on its
    /// pods, so it is not listed; the list is marked incomplete.
    fn rules_for(&self, user: &crate::server::auth::User, _namespace: &str) -> Rules {
        if user.node().is_none() {
            return Rules::default();
        }
        Rules {
            incomplete: true,
            errors: vec!["node authorizer does not support user rule resolution".into()],
            ..Rules::default()
        }
    }
}

/// `/api`, `/api/<v>`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`.
fn is_discovery(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(
        segs.as_slice(),
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _]
    )
}

/// Does `pod` use this ConfigMap, Secret (volumes, env, image pull
/// secrets) or service account?
fn pod_uses(pod: &Value, kind: &str, name: &str) -> bool {
    match kind {
        "serviceaccounts" => {
            pod.pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                == name
        }
        "secrets" => {
            crate::api::podrefs::pull_secrets(pod)
                .iter()
                .any(|s| s == name)
                || crate::api::podrefs::references(pod)
                    .iter()
                    .any(|(k, n)| *k == "Secret" && n == name)
        }
        _ => crate::api::podrefs::references(pod)
            .iter()
            .any(|(k, n)| *k == "ConfigMap" && n == name),
    }
}

/// Its own Lease in `kube-node-lease`, with upstream's reasons. A create
/// names no object here (the name is in the body), so any is allowed and
/// NodeRestriction checks the name.
fn lease(verb: &str, ns: Option<&str>, own: bool) -> Result<bool, String> {
    if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
        return Err("can only get, create, update, patch, or delete a node lease".into());
    }
    if ns != Some("kube-node-lease") {
        return Err(format!(
            "can only access leases in the {:?} system namespace",
            "kube-node-lease"
        ));
    }
    if verb != "create" && !own {
        return Err("can only access node lease with the same name as the requesting node".into());
    }
    Ok(true)
}

fn no_relationship(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::User;
    use crate::server::auth::authz::tests::{non_resource, resource};
    use crate::server::registry::WriteOptions;
    use serde_json::json;

    const TUNNEL: &str = "/orch/v1/tunnel";

    async fn node_authorizer() -> (tempfile::TempDir, Node) {
        let (dir, registry) = crate::server::auth::authn::service_account::tests::registry().await;
        let pods = registry.catalog().find("", "v1", "pods").unwrap().clone();
        for (name, node) in [("near", "node-a"), ("far", "node-b")] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"nodeName": node, "serviceAccountName": format!("sa-{name}"),
                         "imagePullSecrets": [{"name": format!("pull-{name}")}],
                         "containers": [{"name": "c", "image": "busybox",
                             "envFrom": [{"configMapRef": {"name": format!("cm-{name}")}}]}],
                         "volumes": [{"name": "s", "secret": {"secretName": format!("secret-{name}")}}]}});
            registry
                .create(&pods, Some("default"), pod, &WriteOptions::default())
                .await
                .unwrap();
        }
        let informer = Informer::start(registry.clone(), pods);
        (dir, Node::new(registry, informer, TUNNEL))
    }

    #[tokio::test]
    async fn nodes_touch_only_their_own_objects_and_their_pods_dependencies() {
        let (_dir, authz) = node_authorizer().await;
        let a = User::new("system:node:node-a", &["system:nodes"]);
        let allow = Decision::allow();
        let no = Decision::NoOpinion(String::new());
        let unrelated = Decision::NoOpinion(no_relationship("node-a"));
        let other_lease = Decision::NoOpinion(
            "can only access node lease with the same name as the requesting node".into(),
        );
        let lease_ns = Decision::NoOpinion(
            "can only access leases in the \"kube-node-lease\" system namespace".into(),
        );
        let lease_verbs = Decision::NoOpinion(
            "can only get, create, update, patch, or delete a node lease".into(),
        );
        let r = |verb: &str, group: &str, res: &str, ns: &str, name: &str| {
            resource(&a, verb, group, res, ns, name)
        };
        #[rustfmt::skip]
        let cases = [
            // Nodes (NodeRestriction keeps it to its own) and its own Lease.
            (r("create", "", "nodes", "", ""), allow.clone()),
            (r("list", "", "nodes", "", ""), allow.clone()),
            (r("patch", "", "nodes", "", "node-a"), allow.clone()),
            (r("patch", "", "nodes", "", "node-b"), allow.clone()),
            (r("update", "", "nodes/status", "", "node-a"), allow.clone()),
            (r("patch", "", "nodes/status", "", "node-b"), allow.clone()),
            (r("delete", "", "nodes", "", "node-a"), no.clone()),
            (r("create", "coordination.k8s.io", "leases", "kube-node-lease", ""), allow.clone()),
            (r("update", "coordination.k8s.io", "leases", "kube-node-lease", "node-a"), allow.clone()),
            (r("delete", "coordination.k8s.io", "leases", "kube-node-lease", "node-a"), allow.clone()),
            (r("update", "coordination.k8s.io", "leases", "kube-node-lease", "node-b"), other_lease.clone()),
            (r("delete", "coordination.k8s.io", "leases", "kube-node-lease", "node-b"), other_lease.clone()),
            (r("get", "coordination.k8s.io", "leases", "default", "node-a"), lease_ns.clone()),
            (r("list", "coordination.k8s.io", "leases", "kube-node-lease", ""), lease_verbs.clone()),
            // Pods: read all, write the status of and delete its own.
            (r("list", "", "pods", "", ""), allow.clone()),
            (r("watch", "", "pods", "default", ""), allow.clone()),
            (r("patch", "", "pods/status", "default", "near"), allow.clone()),
            (r("patch", "", "pods/status", "default", "far"), unrelated.clone()),
            (r("delete", "", "pods", "default", "near"), allow.clone()),
            (r("delete", "", "pods", "default", "far"), unrelated.clone()),
            (r("delete", "", "pods", "default", "gone"), unrelated.clone()),
            (r("create", "", "pods", "default", ""), no.clone()),
            // What its pods use, and nothing else.
            (r("get", "", "secrets", "default", "secret-near"), allow.clone()),
            (r("get", "", "secrets", "default", "pull-near"), allow.clone()),
            (r("get", "", "secrets", "default", "secret-far"), unrelated.clone()),
            (r("list", "", "secrets", "default", ""), no.clone()),
            (r("get", "", "configmaps", "default", "cm-near"), allow.clone()),
            (r("get", "", "configmaps", "default", "cm-far"), unrelated.clone()),
            (r("create", "", "serviceaccounts/token", "default", "sa-near"), allow.clone()),
            (r("create", "", "serviceaccounts/token", "default", "sa-far"), unrelated.clone()),
            // Shared reads and writes.
            (r("list", "", "services", "", ""), allow.clone()),
            (r("watch", "discovery.k8s.io", "endpointslices", "", ""), allow.clone()),
            (r("create", "", "services", "default", ""), no.clone()),
            (r("create", "events.k8s.io", "events", "default", ""), allow.clone()),
            (r("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", ""), allow.clone()),
            (r("delete", "apps", "deployments", "default", "web"), no.clone()),
        ];
        // Once as the cache may still be loading (a miss asks the store),
        // once from the loaded cache: the answers are the same.
        for (attrs, want) in &cases {
            assert_eq!(&authz.authorize(attrs).await, want, "{attrs:?}");
        }
        authz.pods.synced().await;
        for (attrs, want) in &cases {
            assert_eq!(&authz.authorize(attrs).await, want, "{attrs:?} (cached)");
        }
    }

    #[tokio::test]
    async fn nodes_read_discovery_and_openapi_and_open_their_own_tunnel() {
        let (_dir, authz) = node_authorizer().await;
        let a = User::new("system:node:node-a", &["system:nodes"]);
        let app = User::service_account("default", "app");
        let allow = Decision::allow();
        let no = Decision::NoOpinion(String::new());
        let tunnel = |node: &str| Attributes {
            name: node.into(),
            ..non_resource(&a, "get", TUNNEL)
        };
        let cases = [
            // Non-resource paths.
            (non_resource(&a, "get", "/api"), allow.clone()),
            (non_resource(&a, "get", "/apis/apps/v1"), allow.clone()),
            (non_resource(&a, "get", "/openapi/v3"), allow.clone()),
            (non_resource(&a, "post", "/apis"), no.clone()),
            (non_resource(&a, "get", "/api/v1/a/b/c/d"), no.clone()),
            (non_resource(&a, "post", "/v1-orch/anything"), no.clone()),
            (tunnel("node-a"), allow.clone()),
            (
                tunnel("node-b"),
                Decision::NoOpinion(
                    "node \"node-a\" may only open its own kubelet tunnel, not node \"node-b\"'s"
                        .into(),
                ),
            ),
            // Not a node: no opinion at all.
            (resource(&app, "list", "", "pods", "", ""), no.clone()),
            (non_resource(&app, "get", "/api"), no.clone()),
        ];
        for (attrs, want) in &cases {
            assert_eq!(&authz.authorize(attrs).await, want, "{attrs:?}");
        }
        // A node's rules depend on its pods: not listed, said to be incomplete.
        let rules = authz.rules_for(&a, "default");
        assert!(rules.incomplete && rules.resource.is_empty(), "{rules:?}");
        assert_eq!(
            rules.evaluation_error(),
            "node authorizer does not support user rule resolution"
        );
        assert_eq!(authz.rules_for(&app, "default"), Rules::default());
    }
}
