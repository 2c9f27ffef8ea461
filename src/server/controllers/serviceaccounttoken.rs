//! The token controller (upstream's): Secrets of type
//! `kubernetes.io/service-account-token` that name a service account in
//! annotation `kubernetes.io/service-account.name` get a legacy token for
//! it (`data.token`, no expiry), the cluster CA (`data["ca.crt"]`) and the
//! namespace (`data.namespace`), and the service account's uid in
//! annotation `kubernetes.io/service-account.uid`. Many charts still make
//! these Secrets for tools that predate the TokenRequest API.
//!
//! A Secret naming a service account that does not exist yet is filled
//! when it appears; when a service account is deleted, its token Secrets
//! are deleted too (which revokes their tokens).
//!
//! Secrets are not cached (charts keep large ones, Helm its releases): the
//! controller watches them from the store and decodes only token Secrets.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, meta_str, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::Queue;
use crate::server::registry::{DeleteOptions, ListQuery, WriteOptions};
use crate::store::EventKind;

/// The type of the Secrets this controller fills.
pub const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const NAME: &str = "kubernetes.io/service-account.name";
const UID: &str = "kubernetes.io/service-account.uid";

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let Some(signer) = ctx.config.service_accounts.clone() else {
        return;
    };
    let queue = Queue::new();
    tasks.spawn(watch_secrets(ctx.clone(), queue.clone()));
    {
        // A service account appearing fills the Secrets waiting for it;
        // one going takes its Secrets along.
        let (ctx, queue) = (ctx.clone(), queue.clone());
        let mut rx = ctx.informers.serviceaccounts.subscribe();
        tasks.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(change) => queue.add(format!("sa:{}", change.key)),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Err(_) => {}
                }
            }
        });
    }
    run_workers(tasks, "serviceaccount-token", queue, 1, move |key| {
        reconcile(ctx.clone(), signer.clone(), key)
    });
}

/// Is `obj` a token Secret?
fn is_token_secret(obj: &Value) -> bool {
    obj.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE)
}

/// Queue every token Secret listed, then every one written after.
async fn watch_secrets(ctx: Arc<Context>, queue: Arc<Queue>) {
    let res = ctx.res("", "secrets");
    loop {
        let (items, rev) = match ctx.registry.list(&res, None, &ListQuery::default()).await {
            Ok(list) => (list.items, list.revision),
            Err(e) => {
                tracing::warn!(err = %e.message, "token controller: cannot list secrets, retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        for raw in items {
            if let Ok(obj) = raw.decode()
                && is_token_secret(&obj)
            {
                queue.add(format!(
                    "secret:{}/{}",
                    meta_str(&obj, "namespace"),
                    meta_str(&obj, "name")
                ));
            }
        }
        let Ok(mut watcher) = ctx.registry.store.watch(&res.key_prefix(), rev).await else {
            return;
        };
        while let Some(Ok(event)) = watcher.next().await {
            // Cheap before decoding: only token Secrets name their type.
            if event.kind != EventKind::Put || !contains(&event.kv.value, TOKEN_TYPE.as_bytes()) {
                continue;
            }
            if let Ok(obj) = serde_json::from_slice::<Value>(&event.kv.value)
                && is_token_secret(&obj)
            {
                queue.add(format!(
                    "secret:{}/{}",
                    meta_str(&obj, "namespace"),
                    meta_str(&obj, "name")
                ));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn reconcile(
    ctx: Arc<Context>,
    signer: Arc<crate::server::auth::serviceaccount::Signer>,
    key: String,
) -> Result<Action, ApiError> {
    let res = ctx.res("", "secrets");
    if let Some(sa_key) = key.strip_prefix("sa:") {
        let Some((ns, name)) = sa_key.split_once('/') else {
            return Ok(Action::AwaitChange);
        };
        let gone = ctx.informers.serviceaccounts.get(sa_key).is_none();
        let list = ctx
            .registry
            .list(&res, Some(ns), &ListQuery::default())
            .await?;
        for secret in list.decoded()? {
            let annotation = |k: &str| {
                secret["metadata"]["annotations"][k]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            if !is_token_secret(&secret) || annotation(NAME) != name {
                continue;
            }
            let secret_name = meta_str(&secret, "name");
            if gone {
                match ctx
                    .registry
                    .delete(&res, Some(ns), secret_name, &DeleteOptions::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            } else {
                fill(&ctx, &signer, ns, secret_name).await?;
            }
        }
        return Ok(Action::AwaitChange);
    }
    if let Some((ns, name)) = key.strip_prefix("secret:").and_then(|k| k.split_once('/')) {
        fill(&ctx, &signer, ns, name).await?;
    }
    Ok(Action::AwaitChange)
}

/// Give Secret `ns/name` its token, CA, namespace and service account uid
/// when it lacks them (or holds a token of another service account).
async fn fill(
    ctx: &Context,
    signer: &crate::server::auth::serviceaccount::Signer,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let res = ctx.res("", "secrets");
    let mut secret = match ctx.registry.get(&res, Some(ns), name).await {
        Ok(s) => s,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if !is_token_secret(&secret) || crate::api::meta::is_deleting(&secret) {
        return Ok(());
    }
    let annotations = &secret["metadata"]["annotations"];
    let sa_name = annotations[NAME].as_str().unwrap_or_default().to_owned();
    let wanted_uid = annotations[UID].as_str().unwrap_or_default().to_owned();
    let Some(sa) = ctx
        .informers
        .serviceaccounts
        .get(&format!("{ns}/{sa_name}"))
    else {
        return Ok(()); // filled when it appears
    };
    let sa_uid = meta_str(&sa, "uid").to_owned();
    if !wanted_uid.is_empty() && wanted_uid != sa_uid {
        return Ok(()); // made for another service account of that name
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token_ok = secret
        .pointer("/data/token")
        .and_then(Value::as_str)
        .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
        .and_then(|t| String::from_utf8(t).ok())
        .and_then(|t| signer.verify(&t))
        .is_some_and(|c| {
            c.service_account == sa_name
                && c.namespace == ns
                && c.secret.as_deref() == Some(name)
                && c.service_account_uid == sa_uid
        });
    let want_ca = b64(&ctx.config.root_ca);
    let want_ns = b64(ns);
    let data = &secret["data"];
    if token_ok
        && wanted_uid == sa_uid
        && data["ca.crt"].as_str() == Some(want_ca.as_str())
        && data["namespace"].as_str() == Some(want_ns.as_str())
    {
        return Ok(());
    }
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    if !token_ok {
        let token = signer
            .issue_legacy(ns, &sa_name, &sa_uid, name)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        secret["data"]["token"] = json!(b64(&token));
    }
    secret["data"]["ca.crt"] = json!(want_ca);
    secret["data"]["namespace"] = json!(want_ns);
    secret["metadata"]["annotations"][UID] = json!(sa_uid);
    match ctx
        .registry
        .update(&res, Some(ns), name, secret, None, &WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        // Changed or gone meanwhile: the watch brings it back if need be.
        Err(e) if e.code == 409 => Err(e),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
