//! The pod's API-backed volume sources: ConfigMaps, Secrets and service
//! account tokens, read again every 30 s and written into its volumes.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Kubelet, WorkerState, blocking};
use crate::agent::container::PodFiles;

/// A token for the pod's service account (`key` is `<audience>|<seconds>`),
/// bound to the pod; a new one once 80 % of the last one's life is gone,
/// as the kubelet does.
pub(super) async fn service_account_token(
    k: &Kubelet,
    pod: &Value,
    key: &str,
    state: &mut WorkerState,
) -> Result<Vec<u8>, String> {
    if let Some((token, got, ttl)) = state.tokens.get(key)
        && got.elapsed() < ttl.mul_f64(0.8)
    {
        return Ok(token.clone());
    }
    let (audience, seconds) = key.split_once('|').unwrap_or(("", "3600"));
    let seconds: i64 = seconds.parse().unwrap_or(3600);
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let mut spec = json!({
        "expirationSeconds": seconds,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if !audience.is_empty() {
        spec["audiences"] = json!([audience]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).expect("serialises"))
    .map_err(|e| e.to_string())?;
    let answer: Value = k
        .client
        .request(req)
        .await
        .map_err(|e| format!("requesting a token for service account {ns}/{sa}: {e}"))?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or("the TokenRequest answer has no token")?
        .as_bytes()
        .to_vec();
    state.tokens.insert(
        key.to_owned(),
        (
            token.clone(),
            tokio::time::Instant::now(),
            Duration::from_secs(seconds.max(600) as u64),
        ),
    );
    Ok(token)
}

/// How often a pod's ConfigMaps, Secrets and tokens are read again (the
/// kubelet's sync period is a minute; updates reach pods within that).
pub(super) const VOLUME_REFRESH: Duration = Duration::from_secs(30);

/// Read the pod's ConfigMaps and Secrets (at most every 30 s) and write
/// its API-backed volumes; a missing source blocks container creation.
pub(super) async fn refresh_volumes(
    k: &Kubelet,
    pod: &Value,
    files: &PodFiles,
    state: &mut WorkerState,
) {
    // Waiting for a missing source: look again soon.
    let every = if state.config_error.is_some() {
        Duration::from_secs(2)
    } else {
        VOLUME_REFRESH
    };
    let due = state.sources_read.is_none_or(|t| t.elapsed() >= every);
    if !due {
        return;
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut sources = crate::agent::volumes::Sources::new();
    for (kind, name) in crate::agent::volumes::references(pod) {
        if kind == crate::agent::volumes::TOKEN {
            match service_account_token(k, pod, &name, state).await {
                Ok(token) => {
                    sources.insert((kind, name), [("token".to_owned(), token)].into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a service account token");
                    state.config_error = Some(e);
                    state.sources_read = Some(tokio::time::Instant::now());
                    return;
                }
            }
            continue;
        }
        match crate::agent::volumes::fetch(&k.client, ns, kind, &name).await {
            Ok(Some(data)) => {
                sources.insert((kind, name), data);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a pod's volume source; keeping the last copy");
                return;
            }
        }
    }
    state.sources = sources;
    state.sources_read = Some(tokio::time::Instant::now());
    match crate::agent::volumes::render(pod, &state.sources) {
        Ok(volumes) => {
            state.config_error = None;
            let dir = files.volumes.clone();
            let fs_group = pod
                .pointer("/spec/securityContext/fsGroup")
                .and_then(Value::as_u64)
                .and_then(|g| u32::try_from(g).ok());
            let result = blocking(move || -> std::io::Result<()> {
                for (name, content) in &volumes {
                    crate::agent::volumes::write_atomic(&dir.join(name), content, fs_group)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = result {
                state.config_error = Some(format!("writing volumes: {e}"));
            }
        }
        Err(e) => state.config_error = Some(e),
    }
}
