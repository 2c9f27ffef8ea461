//! Controllers: each one module that watches (through shared informers),
//! queues the keys of objects to reconcile, and drives them towards their
//! spec by writing through the registry — the same defaulting, validation
//! and admission as the HTTP API, in-process.
//!
//! A reconcile function is idempotent: it reads the current state from the
//! informer caches and acts on the difference, whatever triggered it.

#![forbid(unsafe_code)]

pub mod clusterroleaggregation;
pub mod crdnaming;
pub mod cronjob;
pub mod csrapproving;
pub mod csrcleaner;
pub mod csrsigning;
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
pub mod replicationcontroller;
pub mod revisions;
pub mod serviceaccount;
pub mod serviceaccounttoken;
pub mod servicelb;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::api::catalog::Resource;
pub use crate::api::meta::{controller_of, is_deleting, meta_str};
use crate::api::rbac::GROUP as RBAC;
use crate::api::status::ApiError;
use crate::server::events::Recorder;
use crate::server::informer::{Change, Informer, Queue, object_key};
pub use crate::server::reconcile::{Action, run_workers};
use crate::server::registry::{Registry, WriteOptions};

/// Informers for the kinds the control plane watches.
pub struct Informers {
    pub pods: Arc<Informer>,
    pub nodes: Arc<Informer>,
    pub namespaces: Arc<Informer>,
    pub replicasets: Arc<Informer>,
    pub replicationcontrollers: Arc<Informer>,
    pub deployments: Arc<Informer>,
    pub serviceaccounts: Arc<Informer>,
    pub services: Arc<Informer>,
    pub daemonsets: Arc<Informer>,
    pub statefulsets: Arc<Informer>,
    pub controllerrevisions: Arc<Informer>,
    pub jobs: Arc<Informer>,
    pub cronjobs: Arc<Informer>,
    pub leases: Arc<Informer>,
    pub roles: Arc<Informer>,
    pub clusterroles: Arc<Informer>,
    pub rolebindings: Arc<Informer>,
    pub clusterrolebindings: Arc<Informer>,
    pub certificatesigningrequests: Arc<Informer>,
    pub customresourcedefinitions: Arc<Informer>,
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
            replicationcontrollers: Informer::start(
                registry.clone(),
                res("", "replicationcontrollers"),
            ),
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
            roles: Informer::start(registry.clone(), res(RBAC, "roles")),
            clusterroles: Informer::start(registry.clone(), res(RBAC, "clusterroles")),
            rolebindings: Informer::start(registry.clone(), res(RBAC, "rolebindings")),
            clusterrolebindings: Informer::start(
                registry.clone(),
                res(RBAC, "clusterrolebindings"),
            ),
            certificatesigningrequests: Informer::start(
                registry.clone(),
                res("certificates.k8s.io", "certificatesigningrequests"),
            ),
            customresourcedefinitions: Informer::start(
                registry.clone(),
                res("apiextensions.k8s.io", "customresourcedefinitions"),
            ),
        }
    }

    fn all(&self) -> [&Arc<Informer>; 20] {
        [
            &self.pods,
            &self.nodes,
            &self.namespaces,
            &self.replicasets,
            &self.replicationcontrollers,
            &self.deployments,
            &self.serviceaccounts,
            &self.services,
            &self.daemonsets,
            &self.statefulsets,
            &self.controllerrevisions,
            &self.jobs,
            &self.cronjobs,
            &self.leases,
            &self.roles,
            &self.clusterroles,
            &self.rolebindings,
            &self.clusterrolebindings,
            &self.certificatesigningrequests,
            &self.customresourcedefinitions,
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
    /// Signs the legacy tokens of `kubernetes.io/service-account-token`
    /// Secrets (`None`: they are left unfilled).
    pub service_accounts: Option<Arc<crate::server::auth::serviceaccount::Signer>>,
    /// The cluster CA, which signs approved CertificateSigningRequests
    /// (`None`: they are left unsigned).
    pub pki: Option<Arc<crate::server::auth::Pki>>,
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
            service_accounts: None,
            pki: None,
        }
    }
}

/// What reconcilers share.
pub struct Context {
    pub registry: Arc<Registry>,
    pub informers: Informers,
    pub config: Config,
    /// Where Events are recorded (shared with the scheduler).
    pub events: Arc<Recorder>,
}

impl Context {
    /// Write `obj` as the new `name` (its `sub`resource, if given). An
    /// object gone meanwhile, or changed since it was read (a conflict),
    /// is no error: that change comes back through the informer, and the
    /// object is looked at again then.
    pub async fn write(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: serde_json::Value,
        sub: Option<&str>,
    ) -> Result<Action, ApiError> {
        match self
            .registry
            .update(res, ns, name, obj, sub, &WriteOptions::default())
            .await
        {
            Ok(_) => Ok(Action::AwaitChange),
            Err(e) if e.code == 404 || e.code == 409 => Ok(Action::AwaitChange),
            Err(e) => Err(e),
        }
    }

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
        events: Arc::new(Recorder::new(registry.clone())),
        registry,
        informers,
        config,
    });
    let mut tasks = JoinSet::new();
    replicaset::start(ctx.clone(), &mut tasks);
    replicationcontroller::start(ctx.clone(), &mut tasks);
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
    clusterroleaggregation::start(ctx.clone(), &mut tasks);
    serviceaccounttoken::start(ctx.clone(), &mut tasks);
    csrsigning::start(ctx.clone(), &mut tasks);
    csrcleaner::start(ctx.clone(), &mut tasks);
    crdnaming::start(ctx.clone(), &mut tasks);
    (ctx, tasks)
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

/// Record an Event about `obj` (what `kubectl describe` shows); see
/// [`Recorder::record`].
pub fn record_event(
    ctx: &Context,
    obj: &Value,
    kind: &'static str,
    reason: &str,
    message: String,
    component: &'static str,
) {
    ctx.events.record(obj, kind, reason, message, component);
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
