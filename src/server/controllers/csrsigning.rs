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
use crate::server::registry::WriteOptions;

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
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

fn has(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] != "False"))
}

/// Why `signer` may not sign a request with these `usages` for this
/// subject (upstream's checks), or `None`.
fn refusal(signer: &str, usages: &[&str], cn: &str, groups: &[String]) -> Option<String> {
    const ALLOWED: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
    if let Some(bad) = usages.iter().find(|u| !ALLOWED.contains(u)) {
        return Some(format!("invalid usage for client certificate: {bad}"));
    }
    if !usages.contains(&"client auth") {
        return Some("missing required usages: [client auth]".into());
    }
    if signer == KUBELET_CLIENT
        && (!cn.starts_with("system:node:") || groups != ["system:nodes".to_owned()])
    {
        return Some(format!(
            "subject {cn:?} (organization {groups:?}) is not a node's: CN must be system:node:<name> and O system:nodes"
        ));
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
    let pem = csr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|r| b64.decode(r).ok())
        .and_then(|p| String::from_utf8(p).ok())
        .unwrap_or_default();
    let usages: Vec<&str> = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let subject = subject_of(&pem);
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
    let outcome = match &subject {
        None => Err("the request is not a PEM CERTIFICATE REQUEST".to_owned()),
        Some((cn, groups)) => match refusal(signer, &usages, cn, groups) {
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
    match ctx
        .registry
        .update(
            &res,
            None,
            &name,
            updated,
            Some("status"),
            &WriteOptions::default(),
        )
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.code == 404 => Ok(Action::AwaitChange),
        Err(e) => Err(e),
    }
}

/// The CN and Os of a PEM certificate request.
fn subject_of(pem: &str) -> Option<(String, Vec<String>)> {
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())?;
    use x509_parser::prelude::FromDer;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).ok()?;
    let subject = &req.certification_request_info.subject;
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signers_check_usages_and_node_subjects() {
        let client = ["digital signature", "key encipherment", "client auth"];
        assert_eq!(refusal(CLIENT, &client, "jane", &[]), None);
        assert_eq!(
            refusal(CLIENT, &["client auth", "server auth"], "jane", &[]).as_deref(),
            Some("invalid usage for client certificate: server auth")
        );
        assert_eq!(
            refusal(CLIENT, &["digital signature"], "jane", &[]).as_deref(),
            Some("missing required usages: [client auth]")
        );
        let nodes = vec!["system:nodes".to_owned()];
        assert_eq!(
            refusal(KUBELET_CLIENT, &client, "system:node:a", &nodes),
            None
        );
        assert!(refusal(KUBELET_CLIENT, &client, "jane", &nodes).is_some());
    }
}
