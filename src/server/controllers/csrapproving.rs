//! Auto-approval of nodes' client certificates (upstream's csrapproving
//! controller): a pending request to
//! `kubernetes.io/kube-apiserver-client-kubelet` that is a node's client
//! request ([`certificates::kubelet_client_problem`]) is approved when its
//! requester may `create` `certificatesigningrequests/selfnodeclient`
//! (a node renewing its own certificate) or
//! `certificatesigningrequests/nodeclient` (anyone else, such as a
//! bootstrap token), as a SubjectAccessReview would say. Anything else is
//! left for a person (`kubectl certificate approve`).
//!
//! orch binds `nodeclient` to `system:bootstrappers` and `selfnodeclient`
//! to `system:nodes` ([`crate::server::auth::policy`]), as kubeadm does;
//! that a bootstrap token may not take a name another machine holds is
//! checked when the request is created ([`crate::server::api`]'s node
//! password check).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::csrsigning::has;
use super::{Action, Context, all_keys, feed, run_workers};
use crate::api::status::ApiError;
use crate::server::auth::User;
use crate::server::auth::authz::{Attributes, Chain, Decision};
use crate::server::informer::{Change, Queue};
use crate::server::registry::kinds::certificates::{self, KUBELET_CLIENT_SIGNER};

pub fn start(ctx: Arc<Context>, authorizer: Arc<Chain>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let informer = ctx.informers.certificatesigningrequests.clone();
    feed(
        tasks,
        &informer,
        &queue,
        |c: &Change| vec![c.key.clone()],
        all_keys(&informer),
    );
    run_workers(tasks, "csrapproving", queue, 1, move |name| {
        reconcile(ctx.clone(), authorizer.clone(), name)
    });
}

/// The permission that approves `csr` and the approval's message, if it
/// is a node's client request: `selfnodeclient` when the requester is the
/// node it names.
fn recognize(csr: &Value) -> Option<(&'static str, &'static str)> {
    if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(KUBELET_CLIENT_SIGNER) {
        return None;
    }
    let req = certificates::requested(&certificates::request_pem(csr)?)?;
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if certificates::kubelet_client_problem(&req, &usages).is_some() {
        return None;
    }
    let requester = csr.pointer("/spec/username").and_then(Value::as_str);
    Some(if requester == Some(req.common_name.as_str()) {
        (
            "selfnodeclient",
            "Auto approving self kubelet client certificate after SubjectAccessReview.",
        )
    } else {
        (
            "nodeclient",
            "Auto approving kubelet client certificate after SubjectAccessReview.",
        )
    })
}

/// The requester recorded in `csr`.
fn requester(csr: &Value) -> User {
    let spec = &csr["spec"];
    User {
        name: spec["username"].as_str().unwrap_or_default().to_owned(),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    }
}

async fn reconcile(
    ctx: Arc<Context>,
    authorizer: Arc<Chain>,
    name: String,
) -> Result<Action, ApiError> {
    let Some(csr) = ctx.informers.certificatesigningrequests.get(&name) else {
        return Ok(Action::AwaitChange);
    };
    let issued = csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty());
    if issued || has(&csr, "Approved") || has(&csr, "Denied") {
        return Ok(Action::AwaitChange);
    }
    let Some((subresource, message)) = recognize(&csr) else {
        return Ok(Action::AwaitChange);
    };
    let attrs = Attributes {
        user: requester(&csr),
        verb: "create".into(),
        namespace: String::new(),
        api_group: "certificates.k8s.io".into(),
        api_version: "*".into(),
        resource: "certificatesigningrequests".into(),
        subresource: subresource.into(),
        name: String::new(),
        path: String::new(),
        resource_request: true,
    };
    if !matches!(authorizer.authorize(&attrs).await, Decision::Allow(_)) {
        tracing::debug!(
            csr = %name,
            "recognized as {subresource} but the requester may not create it; left for a person to approve"
        );
        return Ok(Action::AwaitChange);
    }
    let mut approved = (*csr).clone();
    let now = jiff::Timestamp::now().to_string();
    if !approved["status"]["conditions"].is_array() {
        approved["status"]["conditions"] = json!([]);
    }
    if let Some(cs) = approved["status"]["conditions"].as_array_mut() {
        cs.push(
            json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                       "message": message, "lastUpdateTime": now, "lastTransitionTime": now}),
        );
    }
    let res = ctx.res("certificates.k8s.io", "certificatesigningrequests");
    ctx.write(&res, None, &name, approved, Some("approval"))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn csr(cn: &str, org: &str, signer: &str, requester: &str) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({"spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer,
            "usages": ["digital signature", "client auth"],
            "username": requester,
        }})
    }

    #[test]
    fn only_node_client_requests_are_recognized() {
        let node = "system:node:edge-1";
        let own = csr(node, "system:nodes", KUBELET_CLIENT_SIGNER, node);
        assert_eq!(recognize(&own).unwrap().0, "selfnodeclient");
        let bootstrap = csr(
            node,
            "system:nodes",
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
        );
        assert_eq!(recognize(&bootstrap).unwrap().0, "nodeclient");
        for other in [
            csr(
                node,
                "system:nodes",
                "kubernetes.io/kube-apiserver-client",
                node,
            ),
            csr("jane", "system:nodes", KUBELET_CLIENT_SIGNER, "jane"),
            csr(node, "system:masters", KUBELET_CLIENT_SIGNER, node),
        ] {
            assert_eq!(recognize(&other), None, "{other}");
        }
        let mut server_usage = own.clone();
        server_usage["spec"]["usages"] = json!(["digital signature", "server auth"]);
        assert_eq!(recognize(&server_usage), None);
    }
}
