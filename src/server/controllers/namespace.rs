//! Namespace lifecycle: a namespace being deleted (phase Terminating) has
//! everything in it deleted; when nothing is left its `kubernetes`
//! finalizer is removed and the namespace goes. (Creating objects in a
//! terminating namespace is refused by the NamespaceLifecycle admission
//! plugin, [`crate::server::admission::namespace_lifecycle`].)

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, is_deleting, meta_str, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Queue, object_key};
use crate::server::registry::{DeleteOptions, ListQuery};

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    {
        let (queue, informer) = (queue.clone(), ctx.informers.namespaces.clone());
        let mut rx = informer.subscribe();
        tasks.spawn(async move {
            for ns in informer.list(None) {
                if is_deleting(&ns) {
                    queue.add(object_key(&ns));
                }
            }
            loop {
                match rx.recv().await {
                    Ok(change) => {
                        if change.new.as_deref().is_some_and(is_deleting) {
                            queue.add(change.key);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Err(_) => {}
                }
            }
        });
    }
    run_workers(tasks, "namespace", queue, 1, move |key| {
        reconcile(ctx.clone(), key)
    });
}

async fn reconcile(ctx: Arc<Context>, name: String) -> Result<Action, ApiError> {
    let Some(ns) = ctx.informers.namespaces.get(&name) else {
        return Ok(Action::AwaitChange);
    };
    if !is_deleting(&ns) {
        return Ok(Action::AwaitChange);
    }
    let mut remaining = 0;
    let resources: Vec<_> = ctx
        .registry
        .catalog()
        .resources()
        .iter()
        .filter(|r| r.namespaced && r.allows("list") && r.allows("delete"))
        .cloned()
        .collect();
    for res in resources {
        let list = ctx
            .registry
            .list(&res, Some(&name), &ListQuery::default())
            .await?;
        for item in list.decoded()? {
            remaining += 1;
            if is_deleting(&item) {
                continue;
            }
            let opts = DeleteOptions {
                propagation_policy: Some("Background".into()),
                ..DeleteOptions::default()
            };
            match ctx
                .registry
                .delete(&res, Some(&name), meta_str(&item, "name"), &opts)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Pods in their grace period, or objects with finalizers: look again.
        return Ok(Action::RequeueAfter(Duration::from_secs(1)));
    }
    // Empty: finalize (the registry removes a deleting object with no
    // finalizers left).
    let mut done: Value = (*ns).clone();
    done["spec"]["finalizers"] = json!([]);
    let res = ctx.res("", "namespaces");
    ctx.write(&res, None, &name, done, None).await
}
