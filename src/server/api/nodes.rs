//! Nodes' identities: the certificate an agent gets for the key it made
//! (`POST /v1-orch/node-certificate`, presenting the join token), and the
//! node password that keeps a second machine from taking a node's name.
//! What a node may do once it has its certificate is the Node
//! authorizer's ([`crate::server::auth::authz::node`]) and NodeRestriction's
//! ([`crate::server::admission::node_restriction`]) business.

use http::{Method, Request, Response, StatusCode, header};

use super::body::RequestBody;
use super::{ApiServer, Body};
use crate::api::join;
use crate::api::status::ApiError;
use crate::server::registry::WriteOptions;

/// Where agents ask for their node certificate.
pub const CERTIFICATE_PATH: &str = "/v1-orch/node-certificate";
/// The headers naming the node and carrying its password.
pub const NAME_HEADER: &str = "orch-node-name";
pub const PASSWORD_HEADER: &str = "orch-node-password";

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
    /// another password for that name is refused. Two machines racing for
    /// a new name: the second create fails, and its password is checked
    /// against the winner's (k3s's `nodepassword.Ensure`).
    async fn check_node_password(&self, node: &str, password: &str) -> Result<(), ApiError> {
        let res = self
            .registry
            .catalog
            .find("", "v1", "secrets")
            .cloned()
            .ok_or_else(|| ApiError::internal("no secrets resource"))?;
        let name = join::node_password_secret(node);
        let stored = match self.registry.get(&res, Some("kube-system"), &name).await {
            Err(e) if e.code == 404 => {
                let secret = join::node_password_object(node, password);
                match self
                    .registry
                    .create(&res, Some("kube-system"), secret, &WriteOptions::default())
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code == 409 => {
                        self.registry.get(&res, Some("kube-system"), &name).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            other => other?,
        };
        if join::node_password_matches(&stored, password) {
            Ok(())
        } else {
            Err(ApiError::forbidden(join::node_taken(node)))
        }
    }
}
