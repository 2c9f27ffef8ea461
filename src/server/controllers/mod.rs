//! Controllers: each one module that watches (through shared informers),
//! queues the keys of objects to reconcile, and drives them towards their
//! spec by writing through the registry — the same defaulting, validation
//! and admission as the HTTP API, in-process.
//!
//! A reconcile function is idempotent: it reads the current state from the
//! informer caches and acts on the difference, whatever triggered it.

#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod revisions;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::catalog::Resource;
pub use crate::api::meta::controller_of;
use crate::api::status::ApiError;
use crate::server::informer::{Change, Informer, Queue, object_key};
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
    pub daemonsets: Arc<Informer>,
    pub statefulsets: Arc<Informer>,
    pub controllerrevisions: Arc<Informer>,
    pub jobs: Arc<Informer>,
    pub cronjobs: Arc<Informer>,
    pub leases: Arc<Informer>,
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
            daemonsets: Informer::start(registry.clone(), res("apps", "daemonsets")),
            statefulsets: Informer::start(registry.clone(), res("apps", "statefulsets")),
            controllerrevisions: Informer::start(
                registry.clone(),
                res("apps", "controllerrevisions"),
            ),
            jobs: Informer::start(registry.clone(), res("batch", "jobs")),
            cronjobs: Informer::start(registry.clone(), res("batch", "cronjobs")),
            leases: Informer::start(registry.clone(), res("coordination.k8s.io", "leases")),
        }
    }

    fn all(&self) -> [&Arc<Informer>; 13] {
        [
            &self.pods,
            &self.nodes,
            &self.namespaces,
            &self.replicasets,
            &self.deployments,
            &self.serviceaccounts,
            &self.services,
            &self.daemonsets,
            &self.statefulsets,
            &self.controllerrevisions,
            &self.jobs,
            &self.cronjobs,
            &self.leases,
        ]
    }

    pub async fn synced(&self) {
        for i in self.all() {
            i.synced().await;
        }
    }

    /// The informer for objects of `kind` (in the groups the control plane
    /// watches), if there is one.
    pub fn of_kind(&self, kind: &str) -> Option<&Arc<Informer>> {
        self.all().into_iter().find(|i| i.res.kind == kind)
    }
}

/// Timings and thresholds of the controllers (flags of `orch server`).
#[derive(Debug, Clone)]
pub struct Config {
    /// A node whose Lease is not renewed for this long is unreachable.
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
    /// Terminated pods kept before the oldest are deleted.
    pub terminated_pod_gc_threshold: usize,
    /// Events not repeated for this long are deleted.
    pub event_ttl: Duration,
    /// The cluster CA (PEM) published in every namespace as ConfigMap
    /// `kube-root-ca.crt` (empty: not published).
    pub root_ca: String,
    /// Pods' addresses: each node gets a /24 of it (`None`: no node IPAM).
    pub cluster_cidr: Option<(std::net::Ipv4Addr, u8)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            terminated_pod_gc_threshold: 12_500,
            event_ttl: Duration::from_secs(3600),
            root_ca: String::new(),
            cluster_cidr: Some((std::net::Ipv4Addr::new(10, 42, 0, 0), 16)),
        }
    }
}

/// What reconcilers share.
pub struct Context {
    pub registry: Arc<Registry>,
    pub informers: Informers,
    pub config: Config,
    events: Arc<Mutex<HashMap<EventKey, (String, u64)>>>,
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
pub async fn start(registry: Arc<Registry>, config: Config) -> (Arc<Context>, JoinSet<()>) {
    let informers = Informers::start(&registry);
    informers.synced().await;
    let ctx = Arc::new(Context {
        registry,
        informers,
        config,
        events: Arc::default(),
    });
    let mut tasks = JoinSet::new();
    replicaset::start(ctx.clone(), &mut tasks);
    deployment::start(ctx.clone(), &mut tasks);
    daemonset::start(ctx.clone(), &mut tasks);
    statefulset::start(ctx.clone(), &mut tasks);
    job::start(ctx.clone(), &mut tasks);
    cronjob::start(ctx.clone(), &mut tasks);
    nodelifecycle::start(ctx.clone(), &mut tasks);
    nodeipam::start(ctx.clone(), &mut tasks);
    servicelb::start(ctx.clone(), &mut tasks);
    podgc::start(ctx.clone(), &mut tasks);
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

/// Feed `queue` from `informer`: the keys `keys` derives from each change,
/// and `resync()` at start and whenever changes were missed.
pub fn feed<K, R>(
    tasks: &mut JoinSet<()>,
    informer: &Arc<Informer>,
    queue: &Arc<Queue>,
    keys: K,
    resync: R,
) where
    K: Fn(&Change) -> Vec<String> + Send + 'static,
    R: Fn() -> Vec<String> + Send + 'static,
{
    let mut rx = informer.subscribe();
    let queue = queue.clone();
    tasks.spawn(async move {
        for key in resync() {
            queue.add(key);
        }
        loop {
            match rx.recv().await {
                Ok(change) => {
                    for key in keys(&change) {
                        queue.add(key);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for key in resync() {
                        queue.add(key);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// The keys of every object `informer` holds.
pub fn all_keys(informer: &Arc<Informer>) -> impl Fn() -> Vec<String> + Send + 'static {
    let informer = informer.clone();
    move || informer.list(None).iter().map(|o| object_key(o)).collect()
}

/// The key of the controlling owner of the changed object, if it is of
/// `kind`.
pub fn owner_keys(kind: &'static str) -> impl Fn(&Change) -> Vec<String> + Send + 'static {
    move |change| {
        let mut keys: Vec<String> = [change.old.as_deref(), change.new.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|obj| {
                let owner = controller_of(obj)?;
                (owner.get("kind").and_then(Value::as_str) == Some(kind)).then(|| {
                    let name = owner
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    match meta_str(obj, "namespace") {
                        "" => name.to_owned(),
                        ns => format!("{ns}/{name}"),
                    }
                })
            })
            .collect();
        keys.dedup();
        keys
    }
}

pub fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
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

/// Delete this incarnation of `pod` (uid precondition, default grace);
/// the revision written, or 0 when it was gone or replaced already.
///
/// # Errors
/// The registry failed otherwise.
pub async fn delete_pod(ctx: &Context, pod: &Value) -> Result<crate::store::Revision, ApiError> {
    let opts = crate::server::registry::DeleteOptions {
        precondition_uid: Some(meta_str(pod, "uid").to_owned()),
        ..Default::default()
    };
    match ctx
        .registry
        .delete(
            &ctx.res("", "pods"),
            Some(meta_str(pod, "namespace")),
            meta_str(pod, "name"),
            &opts,
        )
        .await
    {
        Ok(obj) => Ok(replicaset::rv_of(&obj)),
        Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(crate::store::Revision(0)),
        Err(e) => Err(e),
    }
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// What makes two events the same occurrence (upstream's EventCorrelator
/// aggregates on the same fields).
type EventKey = (String, &'static str, String, String, &'static str);

/// Most distinct events remembered for aggregation.
const EVENT_CACHE: usize = 4096;

/// Record an Event about `obj` (what `kubectl describe` shows). A repeat of
/// an event already recorded (same object, type, reason, message and
/// component) bumps its `count` and `lastTimestamp` instead of adding a new
/// object. Failures are logged, never returned: events are best effort.
pub fn record_event(
    ctx: &Context,
    obj: &Value,
    kind: &'static str,
    reason: &str,
    message: String,
    component: &'static str,
) {
    let registry = ctx.registry.clone();
    let ns = match meta_str(obj, "namespace") {
        "" => "default".to_owned(),
        ns => ns.to_owned(),
    };
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let key: EventKey = (
        meta_str(obj, "uid").to_owned(),
        kind,
        reason.to_owned(),
        message.clone(),
        component,
    );
    let (name, count) = {
        let mut cache = ctx.events.lock().expect("event cache lock");
        if cache.len() >= EVENT_CACHE && !cache.contains_key(&key) {
            cache.clear();
        }
        let entry = cache.entry(key.clone()).or_insert_with(|| {
            (
                format!("{}.{:x}", meta_str(obj, "name"), now.as_nanosecond()),
                0,
            )
        });
        entry.1 += 1;
        entry.clone()
    };
    let cache = ctx.events.clone();
    let event = json!({
        "metadata": {"name": name, "namespace": ns},
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
        if count > 1 {
            // Repeats race each other: write the newest count, and again
            // if it grew meanwhile, so the stored count never goes back.
            let mut written = 0;
            loop {
                let latest = cache
                    .lock()
                    .expect("event cache lock")
                    .get(&key)
                    .map_or(count, |e| e.1);
                if latest <= written {
                    return;
                }
                let patch = json!({"count": latest, "lastTimestamp": ts});
                match registry
                    .patch(
                        &res,
                        Some(&ns),
                        &name,
                        (crate::api::patch::PatchType::Merge, &patch),
                        None,
                        &WriteOptions::default(),
                    )
                    .await
                {
                    Ok(_) => written = latest,
                    // Expired (or its create is still in flight): record anew.
                    Err(err) if err.code == 404 => break,
                    Err(err) => {
                        tracing::debug!(%err, "could not update an event");
                        return;
                    }
                }
            }
        }
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

#[cfg(test)]
mod tests;
