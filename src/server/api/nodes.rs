//! Nodes' identities: the certificate an agent gets for the key it made
//! (`POST /v1-orch/node-certificate`, presenting the join token), and the
//! node password that keeps a second machine from taking a node's name.
//! What a node may do once it has its certificate is the Node
//! authorizer's ([`crate::server::auth::authz::node`]) and NodeRestriction's
//! ([`crate::server::admission::node_restriction`]) business.

use http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::RequestBody;
use super::{ApiServer, Body};
use crate::api::status::ApiError;
use crate::server::registry::WriteOptions;

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
    /// Issue a node certificate: the caller holds the join token (checked
    /// before this runs), names the node and proves with its password that
    /// it is the machine that first took that name.
    pub(super) async fn node_certificate(
        &self,
        req: Request<RequestBody>,
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
        let (_, body) = super::request::read_bytes(req).await?;
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
}
