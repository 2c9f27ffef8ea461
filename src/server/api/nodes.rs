//! Nodes' names: an agent asks for its client certificate with a
//! CertificateSigningRequest to `kubernetes.io/kube-apiserver-client-kubelet`
//! (created with the join token, or a bootstrap token, auto-approved by
//! [`crate::server::controllers::csrapproving`] and signed by
//! [`crate::server::controllers::csrsigning`]), and proves with the node
//! password it sends beside it that it is the machine that first took the
//! name (k3s's node passwords). What a node may do once it has its
//! certificate is the Node authorizer's
//! ([`crate::server::auth::authz::node`]) and NodeRestriction's
//! ([`crate::server::admission::node_restriction`]) business.

use http::HeaderMap;
use serde_json::Value;

use crate::api::join;
use crate::api::status::ApiError;
use crate::server::auth::User;
use crate::server::registry::kinds::certificates::{self, KUBELET_CLIENT_SIGNER};
use crate::server::registry::{Registry, WriteOptions};

/// The header carrying the node's password with its certificate request.
pub const PASSWORD_HEADER: &str = "orch-node-password";

/// The node password a request carries.
pub fn password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(PASSWORD_HEADER)?.to_str().ok()?.trim();
    Some(value.to_owned())
}

/// Check a CertificateSigningRequest `csr` that `user` is creating: a
/// request for node N's client certificate made by anyone but N itself
/// must carry N's password (header `orch-node-password`) when it comes
/// from a bootstrap token, and is checked against it whenever it does. The
/// first password seen for a name is kept; another is refused with what
/// to do.
///
/// # Errors
/// 403 for a missing or wrong password; 400 for one too short.
pub async fn check_node_request(
    registry: &Registry,
    user: &User,
    password: Option<String>,
    csr: &Value,
) -> Result<(), ApiError> {
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(KUBELET_CLIENT_SIGNER) {
        return Ok(());
    }
    let Some(req) = certificates::request_pem(csr).and_then(|pem| certificates::requested(&pem))
    else {
        return Ok(()); // validation names what is wrong with it
    };
    let Some(node) = req.common_name.strip_prefix("system:node:") else {
        return Ok(());
    };
    if user.name == req.common_name {
        return Ok(()); // a node renewing its own certificate
    }
    let password = password.unwrap_or_default();
    if password.is_empty() {
        return if user.is_bootstrapper() {
            Err(ApiError::forbidden(format!(
                "a bootstrap token may ask for node {node:?}'s certificate only with that node's password in header {PASSWORD_HEADER} (orch agent sends it)"
            )))
        } else {
            Ok(())
        };
    }
    if !crate::api::validation::is_dns1123_subdomain(node) {
        return Err(ApiError::bad_request(format!(
            "the node name {node:?} is not a valid DNS subdomain: lowercase letters, digits, '-' and '.'"
        )));
    }
    if password.len() < 16 {
        return Err(ApiError::bad_request(format!(
            "header {PASSWORD_HEADER} must carry the node's password (at least 16 characters)"
        )));
    }
    check_node_password(registry, node, &password).await
}

/// The first machine to take a node name stores its password's hash;
/// another password for that name is refused. Two machines racing for
/// a new name: the second create fails, and its password is checked
/// against the winner's (k3s's `nodepassword.Ensure`).
async fn check_node_password(
    registry: &Registry,
    node: &str,
    password: &str,
) -> Result<(), ApiError> {
    let res = registry
        .catalog()
        .find("", "v1", "secrets")
        .cloned()
        .ok_or_else(|| ApiError::internal("no secrets resource"))?;
    let name = join::node_password_secret(node);
    let stored = match registry.get(&res, Some("kube-system"), &name).await {
        Err(e) if e.code == 404 => {
            let secret = join::node_password_object(node, password);
            match registry
                .create(&res, Some("kube-system"), secret, &WriteOptions::default())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => registry.get(&res, Some("kube-system"), &name).await?,
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
