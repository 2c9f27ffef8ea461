//! Controllers: each one module that watches (through shared informers),
//! queues the keys of objects to reconcile, and drives them towards their
//! spec by writing through the registry — the same defaulting, validation
//! and admission as the HTTP API, in-process.
//!
//! A reconcile function is idempotent: it reads the current state from the
//! informer caches and acts on the difference, whatever triggered it.

#![forbid(unsafe_code)]

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod namespace;
pub mod replicaset;
pub mod serviceaccount;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::catalog::Resource;
use crate::api::status::ApiError;
use crate::server::informer::{Informer, Queue};
use crate::server::registry::{Registry, WriteOptions};

/// Informers for the kinds the control plane watches.
pub struct Informers {
    pub pods: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub namespaces: Arc<Informer>,
    pub replicasets: Arc<Informer>,
    pub deployments: Arc<Informer>,
    pub serviceaccounts: Arc<Informer>,
    pub services: Arc<Informer>,
}

impl Informers {
    pub fn start(registry: &Arc<Registry>) -> Self {
        let res = |group: &str, plural: &str| {
            registry
                .resource(group, plural)
                .expect("kind is in the catalog")
                .clone()
        };
        Self {
            pods: Informer::start(registry.clone(), res("", "pods")),
            nodes: Informer::start(registry.clone(), res("", "nodes")),
            namespaces: Informer::start(registry.clone(), res("", "namespaces")),
            replicasets: Informer::start(registry.clone(), res("apps", "replicasets")),
            deployments: Informer::start(registry.clone(), res("apps", "deployments")),
            serviceaccounts: Informer::start(registry.clone(), res("", "serviceaccounts")),
            services: Informer::start(registry.clone(), res("", "services")),
        }
    }

    pub async fn synced(&self) {
        for i in [
            &self.pods,
            &self.nodes,
            &self.namespaces,
            &self.replicasets,
            &self.deployments,
            &self.serviceaccounts,
        ] {
            i.synced().await;
        }
    }
}

/// What reconcilers share.
pub struct Context {
    pub registry: Arc<Registry>,
    pub informers: Informers,
}

impl Context {
    pub fn res(&self, group: &str, plural: &str) -> Resource {
        self.registry
            .resource(group, plural)
            .expect("kind is in the catalog")
            .clone()
    }
}

/// Start every controller; they stop when the returned set is dropped.
pub async fn start(registry: Arc<Registry>) -> (Arc<Context>, JoinSet<()>) {
    let informers = Informers::start(&registry);
    informers.synced().await;
    let ctx = Arc::new(Context {
        registry,
        informers,
    });
    let mut tasks = JoinSet::new();
    replicaset::start(ctx.clone(), &mut tasks);
    deployment::start(ctx.clone(), &mut tasks);
    endpoints::start(ctx.clone(), &mut tasks);
    gc::start(ctx.clone(), &mut tasks);
    namespace::start(ctx.clone(), &mut tasks);
    serviceaccount::start(ctx.clone(), &mut tasks);
    (ctx, tasks)
}

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

pub fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller") == Some(&json!(true)))
        })
}

/// An owner reference to `owner`, as a controller.
pub fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Make `owner` the controller of `obj` (adoption); returns `obj` as stored.
///
/// # Errors
/// The patch failed (e.g. `obj` is gone).
pub async fn adopt(
    ctx: &Context,
    res: &Resource,
    obj: &Value,
    owner: &Value,
) -> Result<Value, ApiError> {
    let mut refs = obj["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    refs.push(controller_ref(owner));
    set_owner_references(ctx, res, obj, refs).await
}

/// Remove `obj`'s references to the owner with `owner_uid` (release).
///
/// # Errors
/// The patch failed.
pub async fn release(
    ctx: &Context,
    res: &Resource,
    obj: &Value,
    owner_uid: &str,
) -> Result<Value, ApiError> {
    let refs: Vec<Value> = obj["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid))
        .collect();
    set_owner_references(ctx, res, obj, refs).await
}

async fn set_owner_references(
    ctx: &Context,
    res: &Resource,
    obj: &Value,
    refs: Vec<Value>,
) -> Result<Value, ApiError> {
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        Value::Array(refs)
    };
    let patch = json!({"metadata": {"ownerReferences": refs}});
    let ns = meta_str(obj, "namespace");
    let written = ctx
        .registry
        .patch(
            res,
            (!ns.is_empty()).then_some(ns),
            meta_str(obj, "name"),
            (crate::api::patch::PatchType::Merge, &patch),
            None,
            &WriteOptions::default(),
        )
        .await?;
    Ok(written.object)
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Record an Event about `obj` (what `kubectl describe` shows). Failures are
/// logged, never returned: events are best effort.
pub fn record_event(
    registry: &Arc<Registry>,
    obj: &Value,
    kind: &str,
    reason: &str,
    message: String,
    component: &'static str,
) {
    let registry = registry.clone();
    let ns = match meta_str(obj, "namespace") {
        "" => "default".to_owned(),
        ns => ns.to_owned(),
    };
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let event = json!({
        "metadata": {"name": format!("{}.{:x}", meta_str(obj, "name"), now.as_nanosecond()), "namespace": ns},
        "involvedObject": {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"], "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": "",
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
    });
    tokio::spawn(async move {
        let res = registry
            .resource("", "events")
            .expect("events are in the catalog")
            .clone();
        if let Err(err) = registry
            .create(&res, Some(&ns), event, &WriteOptions::default())
            .await
        {
            tracing::debug!(%err, "could not record an event");
        }
    });
}

/// Is the pod Ready (condition), and since when?
pub fn pod_ready_since(pod: &Value) -> Option<jiff::Timestamp> {
    let cond = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    if cond.get("status").and_then(Value::as_str) != Some("True") {
        return None;
    }
    Some(
        cond.get("lastTransitionTime")
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Pods that count towards a controller: not terminated, not being deleted.
pub fn pod_is_active(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    phase != "Succeeded" && phase != "Failed" && !is_deleting(pod)
}
