//! The pod worker's seam over the API server for what a sync writes: the
//! pod's status, the final delete of a pod, and Events. [`KubeApi`] sends
//! them with the agent's client; the fake in `fake.rs` records them, so a
//! unit test sees what the worker posted without an API server. (Reads —
//! ConfigMaps, Secrets, tokens, pull secrets — still use the client.)

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

/// What the pod worker writes to the API server.
pub trait PodApi: Send + Sync {
    /// Post pod `ns/name`'s status (as a strategic merge patch).
    fn post_status(
        &self,
        ns: &str,
        name: &str,
        status: Value,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// Delete pod `ns/name` for good (grace 0) if it is still the one
    /// with `uid`; `Ok` when it is gone already.
    fn delete_pod(&self, ns: &str, name: &str, uid: &str)
    -> BoxFuture<'static, Result<(), String>>;

    /// Record an Event in `ns`. Best effort: failures are logged.
    fn record_event(&self, ns: &str, event: Value) -> BoxFuture<'static, ()>;
}

/// The real API: the agent's client.
pub struct KubeApi(pub Client);

impl PodApi for KubeApi {
    fn post_status(
        &self,
        ns: &str,
        name: &str,
        status: Value,
    ) -> BoxFuture<'static, Result<(), String>> {
        let api: Api<Pod> = Api::namespaced(self.0.clone(), ns);
        let name = name.to_owned();
        Box::pin(async move {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("posting the pod status: {e}"))
        })
    }

    fn delete_pod(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> BoxFuture<'static, Result<(), String>> {
        let api: Api<Pod> = Api::namespaced(self.0.clone(), ns);
        let name = name.to_owned();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        Box::pin(async move {
            match api.delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(format!("deleting the pod: {e}")),
            }
        })
    }

    fn record_event(&self, ns: &str, event: Value) -> BoxFuture<'static, ()> {
        let api: Api<Event> = Api::namespaced(self.0.clone(), ns);
        Box::pin(async move {
            let Ok(ev) = serde_json::from_value::<Event>(event) else {
                return;
            };
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(%e, "cannot record an event");
            }
        })
    }
}
