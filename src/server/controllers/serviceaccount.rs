//! Every active namespace has a `default` ServiceAccount.

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

async fn reconcile(ctx: Arc<Context>, ns: String) -> Result<Action, ApiError> {
    let Some(namespace) = ctx.informers.namespaces.get(&ns) else {
        return Ok(Action::AwaitChange);
    };
    if is_deleting(&namespace)
        || ctx
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
