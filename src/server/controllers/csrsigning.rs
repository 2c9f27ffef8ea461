//! The CertificateSigningRequest signers of the cluster CA (upstream's
//! csrsigning controller): an approved, not denied, not failed request to
//! `kubernetes.io/kube-apiserver-client` gets a client certificate for the
//! subject it asks (CN the user, O the groups), valid for its
//! `expirationSeconds` (at least 10 minutes, at most a year, a year when
//! not asked). `kubernetes.io/kube-apiserver-client-kubelet` does the same
//! for nodes (`system:node:<name>` in `system:nodes`). A request whose
//! usages a client certificate may not have, or whose subject the signer
//! does not sign, gets a Failed condition saying why.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, all_keys, feed, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Change, Queue};
use crate::server::registry::kinds::certificates::{self, Requested};

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub use certificates::KUBELET_CLIENT_SIGNER as KUBELET_CLIENT;
/// Upstream's `--cluster-signing-duration` default.
const MAX_SECONDS: i64 = 365 * 24 * 3600;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let Some(pki) = ctx.config.pki.clone() else {
        return;
    };
    let queue = Queue::new();
    let informer = ctx.informers.certificatesigningrequests.clone();
    feed(
        tasks,
        &informer,
        &queue,
        |c: &Change| vec![c.key.clone()],
        all_keys(&informer),
    );
    run_workers(tasks, "csrsigning", queue, 1, move |name| {
        reconcile(ctx.clone(), pki.clone(), name)
    });
}

/// Does `csr` have a condition of type `ty` (not False)?
pub(super) fn has(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] != "False"))
}

/// Why `signer` may not sign a request with these `usages` for `req`
/// (upstream's checks), or `None`.
fn refusal(signer: &str, usages: &[&str], req: &Requested) -> Option<String> {
    if signer == KUBELET_CLIENT {
        return certificates::kubelet_client_problem(req, usages);
    }
    const ALLOWED: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
    if let Some(bad) = usages.iter().find(|u| !ALLOWED.contains(u)) {
        return Some(format!("invalid usage for client certificate: {bad}"));
    }
    if !usages.contains(&"client auth") {
        return Some("missing required usages: [client auth]".into());
    }
    None
}

async fn reconcile(
    ctx: Arc<Context>,
    pki: Arc<crate::server::auth::Pki>,
    name: String,
) -> Result<Action, ApiError> {
    let Some(csr) = ctx.informers.certificatesigningrequests.get(&name) else {
        return Ok(Action::AwaitChange);
    };
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ![CLIENT, KUBELET_CLIENT].contains(&signer)
        || !has(&csr, "Approved")
        || has(&csr, "Denied")
        || has(&csr, "Failed")
        || csr
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
    {
        return Ok(Action::AwaitChange);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = certificates::request_pem(&csr).unwrap_or_default();
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let requested = certificates::requested(&pem);
    let seconds = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(MAX_SECONDS)
        .clamp(600, MAX_SECONDS);
    let mut updated = (*csr).clone();
    let now = jiff::Timestamp::now().to_string();
    let failed = |message: String| {
        json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
               "message": message, "lastUpdateTime": now, "lastTransitionTime": now})
    };
    let outcome = match &requested {
        None => Err("the request is not a PEM CERTIFICATE REQUEST".to_owned()),
        Some(req) => match refusal(signer, &usages, req) {
            Some(why) => Err(why),
            None => pki
                .sign_client_request(&pem, seconds)
                .map_err(|e| e.to_string()),
        },
    };
    match outcome {
        Ok(cert) => updated["status"]["certificate"] = json!(b64.encode(cert)),
        Err(why) => {
            if !updated["status"]["conditions"].is_array() {
                updated["status"]["conditions"] = json!([]);
            }
            if let Some(cs) = updated["status"]["conditions"].as_array_mut() {
                cs.push(failed(why));
            }
        }
    }
    let res = ctx.res("certificates.k8s.io", "certificatesigningrequests");
    ctx.write(&res, None, &name, updated, Some("status")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signers_check_usages_and_node_subjects() {
        let jane = Requested {
            common_name: "jane".into(),
            ..Requested::default()
        };
        let client = ["digital signature", "key encipherment", "client auth"];
        assert_eq!(refusal(CLIENT, &client, &jane), None);
        assert_eq!(
            refusal(CLIENT, &["client auth", "server auth"], &jane).as_deref(),
            Some("invalid usage for client certificate: server auth")
        );
        assert_eq!(
            refusal(CLIENT, &["digital signature"], &jane).as_deref(),
            Some("missing required usages: [client auth]")
        );
        let node = Requested {
            common_name: "system:node:a".into(),
            organizations: vec!["system:nodes".into()],
            ..Requested::default()
        };
        assert_eq!(refusal(KUBELET_CLIENT, &client, &node), None);
        assert_eq!(
            refusal(KUBELET_CLIENT, &["digital signature", "client auth"], &node),
            None
        );
        let no = |req: &Requested, usages: &[&str]| refusal(KUBELET_CLIENT, usages, req).unwrap();
        assert_eq!(
            no(&jane, &client),
            "subject organization is not system:nodes"
        );
        let named = Requested {
            common_name: "jane".into(),
            ..node.clone()
        };
        assert_eq!(
            no(&named, &client),
            "subject common name does not begin with system:node:"
        );
        let with_ip = Requested {
            ips: 1,
            ..node.clone()
        };
        assert_eq!(no(&with_ip, &client), "IP subjectAltNames are not allowed");
        assert_eq!(
            no(&node, &["client auth"]),
            "usages did not match [client auth digital signature key encipherment]"
        );
    }
}
