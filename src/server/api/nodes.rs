//! Nodes' identities: the certificate an agent gets for the key it made
//! (`POST /v1-orch/node-certificate`, presenting the join token), the node
//! password that keeps a second machine from taking a node's name, and the
//! node authorizer that confines a node to what its pods need (upstream's
//! Node authorizer and NodeRestriction, in one place).

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::request::{self, ResourcePath, Target};
use super::{ApiServer, Body};
use crate::api::status::ApiError;
use crate::server::registry::{ListQuery, WriteOptions};

/// Where agents ask for their node certificate.
pub const CERTIFICATE_PATH: &str = "/v1-orch/node-certificate";
/// The headers naming the node and carrying its password.
pub const NAME_HEADER: &str = "orch-node-name";
pub const PASSWORD_HEADER: &str = "orch-node-password";

/// The Secret in kube-system holding the hash of node `name`'s password
/// (k3s keeps `<node>.node-password.k3s` the same way).
pub fn password_secret(name: &str) -> String {
    format!("{name}.node-password.orch")
}

fn sha256_hex(s: &str) -> String {
    crate::api::join::ca_hash(s)
}

impl ApiServer {
    /// The user of a bootstrap token (`orch token create`) in a bearer
    /// header: `system:bootstrap:<id>` in `system:bootstrappers`, while its
    /// Secret exists, matches and has not expired. Such a user may only
    /// ask for a node certificate.
    pub(super) async fn bootstrap_user(&self, header: &str) -> Option<crate::server::auth::User> {
        use base64::Engine;
        let token = header.strip_prefix("Bearer ")?;
        let (id, secret) = crate::api::join::parse_bootstrap(token)?;
        let res = self.registry.catalog.find("", "v1", "secrets")?.clone();
        let stored = self
            .registry
            .get(
                &res,
                Some("kube-system"),
                &crate::api::join::bootstrap_secret_name(id),
            )
            .await
            .ok()?;
        if stored["type"] != crate::api::join::BOOTSTRAP_TYPE {
            return None;
        }
        let field = |key: &str| {
            stored["data"][key]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
        };
        if field("token-secret")?.as_bytes() != secret.as_bytes()
            || field("usage-bootstrap-authentication").as_deref() != Some("true")
        {
            return None;
        }
        if let Some(expiry) = field("expiration") {
            let expiry: jiff::Timestamp = expiry.parse().ok()?;
            if expiry <= jiff::Timestamp::now() {
                return None;
            }
        }
        Some(crate::server::auth::User::bootstrap(id))
    }

    /// Issue a node certificate: the caller holds the join token (checked
    /// before this runs), names the node and proves with its password that
    /// it is the machine that first took that name.
    pub(super) async fn node_certificate(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let (node, password) = (header(NAME_HEADER), header(PASSWORD_HEADER));
        if !crate::api::validation::is_dns1123_subdomain(&node) {
            return Err(ApiError::bad_request(format!(
                "the node name {node:?} (header {NAME_HEADER}) is not a valid DNS subdomain: lowercase letters, digits, '-' and '.'"
            )));
        }
        if password.len() < 16 {
            return Err(ApiError::bad_request(format!(
                "header {PASSWORD_HEADER} must carry the node's password (at least 16 characters)"
            )));
        }
        let (_, body) = super::read_bytes(req).await?;
        let csr = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the certificate request is not PEM text"))?;
        self.check_node_password(&node, &password).await?;
        let pki = self.pki.clone();
        let cert = tokio::task::spawn_blocking(move || pki.sign_node_certificate(&csr, &node))
            .await
            .map_err(|_| ApiError::internal("the signing task failed"))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-pem-file")
            .body(Body::full(cert))
            .expect("static response parts are valid"))
    }

    /// The first machine to take a node name stores its password's hash;
    /// another password for that name is refused.
    async fn check_node_password(&self, node: &str, password: &str) -> Result<(), ApiError> {
        let res = self
            .registry
            .catalog
            .find("", "v1", "secrets")
            .cloned()
            .ok_or_else(|| ApiError::internal("no secrets resource"))?;
        let name = password_secret(node);
        let hash = sha256_hex(password);
        match self.registry.get(&res, Some("kube-system"), &name).await {
            Ok(secret) => {
                use base64::Engine;
                let stored = secret
                    .pointer("/data/hash")
                    .and_then(Value::as_str)
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                if stored == hash {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(format!(
                        "node {node:?} is already taken by another machine (its node password differs); pick another --node-name, or to move the name to this machine delete the old one's password first: kubectl -n kube-system delete secret {name}"
                    )))
                }
            }
            Err(e) if e.code == 404 => {
                use base64::Engine;
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": "kube-system",
                                 "labels": {"orch.io/node-password": node}},
                    "type": "Opaque",
                    "data": {"hash": base64::engine::general_purpose::STANDARD.encode(&hash)},
                });
                self.registry
                    .create(&res, Some("kube-system"), secret, &WriteOptions::default())
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// May node `node` make this request? `Ok` or a 403 naming the verb and
    /// resource denied.
    pub(super) async fn authorize_node(
        &self,
        node: &str,
        user: &str,
        req: &Request<Incoming>,
        path: &str,
    ) -> Result<(), ApiError> {
        let method = req.method();
        let read = method == Method::GET || method == Method::HEAD;
        if path == super::TUNNEL_PATH {
            // Its own kubelet API only.
            let asked = request::parse_query(req.uri().query())
                .get("node")
                .and_then(|v| v.first().cloned())
                .unwrap_or_default();
            return if asked == node {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "User {user:?} cannot open the kubelet tunnel of node {asked:?}"
                )))
            };
        }
        if read && (path.starts_with("/openapi/") || path == "/api" || path == "/apis") {
            return Ok(());
        }
        let catalog = &self.registry.catalog;
        let rp = match request::parse_path(path, |g, v, p| {
            catalog.find(g, v, p).is_some_and(|r| r.namespaced)
        }) {
            Some(Target::Discovery { .. }) if read => return Ok(()),
            Some(Target::Resource(rp)) => rp,
            _ => {
                return Err(ApiError::forbidden(format!(
                    "User {user:?} cannot {} path {path:?}",
                    method.as_str().to_lowercase()
                )));
            }
        };
        let query = request::parse_query(req.uri().query());
        let watch =
            crate::api::query::first(&query, "watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (method.as_str(), rp.name.is_some()) {
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) if watch => "watch",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "unknown",
        };
        match self.node_may(node, &rp, verb).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(denied(user, &rp, verb, None)),
            Err(why) => Err(denied(user, &rp, verb, Some(&why))),
        }
    }

    /// The rules: `Ok(false)` for what no node may do, `Err(why)` for an
    /// object its pods do not use.
    async fn node_may(&self, node: &str, rp: &ResourcePath, verb: &str) -> Result<bool, String> {
        let ns = rp.namespace.as_deref();
        let name = rp.name.as_deref();
        let sub = rp.subresource.as_deref();
        let own = name == Some(node);
        let reads = matches!(verb, "get" | "list" | "watch");
        Ok(match (rp.group.as_str(), rp.plural.as_str(), sub) {
            // Who am I, and what may I do: every authenticated user.
            ("authentication.k8s.io", "selfsubjectreviews", None)
            | (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews",
                None,
            ) => verb == "create",
            ("", "nodes", None) if reads || verb == "create" => true,
            ("", "nodes", Some("status")) if verb == "get" => true,
            ("", "nodes", None | Some("status")) if matches!(verb, "update" | "patch") => own,
            ("coordination.k8s.io", "leases", None) => {
                ns == Some("kube-node-lease")
                    && match verb {
                        "create" => name.is_none(),
                        "get" | "update" | "patch" => own,
                        _ => false,
                    }
            }
            ("", "pods", None) if reads => true,
            ("", "pods", Some("status")) if matches!(verb, "get" | "update" | "patch") => {
                self.pod_on_node(ns, name, node).await?
            }
            ("", "pods", None) if verb == "delete" => self.pod_on_node(ns, name, node).await?,
            ("", "events", None) | ("events.k8s.io", "events", None) => {
                matches!(verb, "create" | "update" | "patch")
            }
            ("", "services" | "endpoints", None) | ("discovery.k8s.io", "endpointslices", None) => {
                reads
            }
            ("", kind @ ("configmaps" | "secrets"), None) if verb == "get" => {
                self.used_on_node(ns, kind, name, node).await?
            }
            ("", "serviceaccounts", Some("token")) if verb == "create" => {
                self.used_on_node(ns, "serviceaccounts", name, node).await?
            }
            _ => false,
        })
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
    ) -> Result<(&'a str, &'a str, crate::api::catalog::Resource), String> {
        let pods = self.registry.catalog.find("", "v1", "pods").cloned();
        match (ns, name, pods) {
            (Some(ns), Some(name), Some(pods)) => Ok((ns, name, pods)),
            _ => Err(no_relationship(node)),
        }
    }
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

fn no_relationship(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

/// Upstream's wording: `secrets "x" is forbidden: User "system:node:n"
/// cannot get resource "secrets" in API group "" in the namespace "ns"`.
fn denied(user: &str, rp: &ResourcePath, verb: &str, why: Option<&str>) -> ApiError {
    let resource = match &rp.subresource {
        Some(s) => format!("{}/{s}", rp.plural),
        None => rp.plural.clone(),
    };
    let scope = match &rp.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_owned(),
    };
    let what = match &rp.name {
        Some(n) => format!("{} {n:?}", rp.plural),
        None => rp.plural.clone(),
    };
    let mut message = format!(
        "{what} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
        rp.group
    );
    if let Some(why) = why {
        message.push_str(": ");
        message.push_str(why);
    }
    ApiError::forbidden(message)
}
