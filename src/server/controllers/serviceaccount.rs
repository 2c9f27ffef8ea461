//! Every active namespace has a `default` ServiceAccount and the cluster
//! CA as ConfigMap `kube-root-ca.crt` (what service account token volumes
//! give pods as `ca.crt`).

use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use super::{Action, Context, is_deleting, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key};
use crate::server::registry::WriteOptions;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    {
        let (queue, ctx2) = (queue.clone(), ctx.clone());
        let mut ns_rx = ctx.informers.namespaces.subscribe();
        let mut sa_rx = ctx.informers.serviceaccounts.subscribe();
        tasks.spawn(async move {
            for ns in ctx2.informers.namespaces.list(None) {
                queue.add(object_key(&ns));
            }
            loop {
                tokio::select! {
                    c = ns_rx.recv() => match c {
                        Ok(c) => queue.add(c.key),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Err(_) => {}
                    },
                    c = sa_rx.recv() => match c {
                        // A deleted default ServiceAccount comes back.
                        Ok(c) if c.new.is_none() => {
                            if let Some((ns, "default")) = c.key.split_once('/') {
                                queue.add(ns.to_owned());
                            }
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        Err(_) => {}
                    },
                }
            }
        });
    }
    run_workers(tasks, "serviceaccount", queue, 1, move |ns| {
        reconcile(ctx.clone(), ns)
    });
}

/// `kube-root-ca.crt` in `ns`, holding the cluster CA.
async fn publish_root_ca(ctx: &Context, ns: &str) -> Result<(), ApiError> {
    let ca = &ctx.config.root_ca;
    if ca.is_empty() {
        return Ok(());
    }
    let res = ctx.res("", "configmaps");
    let want = json!({"ca.crt": ca});
    match ctx.registry.get(&res, Some(ns), "kube-root-ca.crt").await {
        Ok(cm) if cm["data"] == want => Ok(()),
        Ok(mut cm) => {
            cm["data"] = want;
            match ctx
                .registry
                .update(
                    &res,
                    Some(ns),
                    "kube-root-ca.crt",
                    cm,
                    None,
                    &WriteOptions::default(),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 || e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) if e.code == 404 => {
            let cm = json!({"metadata": {"name": "kube-root-ca.crt"}, "data": want});
            match ctx
                .registry
                .create(&res, Some(ns), cm, &WriteOptions::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

async fn reconcile(ctx: Arc<Context>, ns: String) -> Result<Action, ApiError> {
    let Some(namespace) = ctx.informers.namespaces.get(&ns) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&namespace) {
        return Ok(Action::AwaitChange);
    }
    publish_root_ca(&ctx, &ns).await?;
    if ctx
        .informers
        .serviceaccounts
        .get(&format!("{ns}/default"))
        .is_some()
    {
        return Ok(Action::AwaitChange);
    }
    let res = ctx.res("", "serviceaccounts");
    match ctx
        .registry
        .create(
            &res,
            Some(&ns),
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(Action::AwaitChange),
        Err(e) => Err(e),
    }
}
