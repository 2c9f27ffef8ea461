//! What a pod refers to: the ConfigMaps, Secrets and service account
//! token sources of its volumes and env. The agent fetches them; the
//! server's node authorizer lets a node read only what its pods refer to.

use serde_json::Value;

/// The source kind of a projected service account token, keyed by
/// [`token_key`].
pub const TOKEN: &str = "ServiceAccountToken";

/// What tells one token source from another: `<audience>|<seconds>`.
pub fn token_key(source: &Value) -> String {
    format!(
        "{}|{}",
        source["audience"].as_str().unwrap_or_default(),
        source["expirationSeconds"].as_i64().unwrap_or(3600)
    )
}

/// The ConfigMaps and Secrets a pod's volumes and env refer to.
pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut add = |kind: &'static str, name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty())
            && !out.iter().any(|(k, m)| *k == kind && m == n)
        {
            out.push((kind, n.to_owned()));
        }
    };
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        add(
            "ConfigMap",
            v.pointer("/configMap/name").and_then(Value::as_str),
        );
        add(
            "Secret",
            v.pointer("/secret/secretName").and_then(Value::as_str),
        );
        for src in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add(
                "ConfigMap",
                src.pointer("/configMap/name").and_then(Value::as_str),
            );
            add(
                "Secret",
                src.pointer("/secret/name").and_then(Value::as_str),
            );
            if let Some(t) = src.get("serviceAccountToken") {
                add(TOKEN, Some(&token_key(t)));
            }
        }
    }
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(
                    "ConfigMap",
                    e.pointer("/valueFrom/configMapKeyRef/name")
                        .and_then(Value::as_str),
                );
                add(
                    "Secret",
                    e.pointer("/valueFrom/secretKeyRef/name")
                        .and_then(Value::as_str),
                );
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(
                    "ConfigMap",
                    e.pointer("/configMapRef/name").and_then(Value::as_str),
                );
                add(
                    "Secret",
                    e.pointer("/secretRef/name").and_then(Value::as_str),
                );
            }
        }
    }
    out
}

/// The Secrets a pod pulls its images with.
pub fn pull_secrets(pod: &Value) -> Vec<String> {
    pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .map(str::to_owned)
        .collect()
}
