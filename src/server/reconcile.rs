//! The reconcile loop the controllers and the scheduler run on: workers
//! take keys from a [`Queue`], call the reconcile function, and requeue
//! the key as its [`Action`] (or its error) asks. Feeding the queue is the
//! caller's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::status::ApiError;
use crate::server::informer::Queue;

/// What a reconcile asks for next.
pub enum Action {
    /// Nothing until something changes.
    AwaitChange,
    /// Look again after this long (e.g. minReadySeconds, deadlines).
    RequeueAfter(Duration),
}

/// Run `workers` loops taking keys from `queue` into `reconcile`.
pub fn run_workers<F, Fut>(
    tasks: &mut JoinSet<()>,
    name: &'static str,
    queue: Arc<Queue>,
    workers: usize,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ApiError>> + Send + 'static,
{
    for _ in 0..workers {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.next().await;
                let span = tracing::debug_span!("reconcile", controller = name, object = %key);
                let result = reconcile(key.clone()).instrument(span).await;
                match result {
                    Ok(Action::AwaitChange) => queue.done(&key, false),
                    Ok(Action::RequeueAfter(d)) => {
                        queue.done(&key, false);
                        queue.add_after(key, d);
                    }
                    Err(err) => {
                        // Conflicts are routine (a newer version exists); retry quietly.
                        if err.code == 409 {
                            tracing::debug!(controller = name, object = %key, %err, "conflict, retrying");
                        } else {
                            tracing::warn!(controller = name, object = %key, %err, "reconcile failed, will retry");
                        }
                        queue.done(&key, true);
                    }
                }
            }
        });
    }
}
