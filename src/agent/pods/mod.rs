//! Pod workers: the kubelet's core loop. Every pod bound to this node gets
//! a worker task that drives it towards its spec through the pod's shim:
//!
//! 1. sandbox — the pod's directories, `/etc/hosts`, `/etc/hostname`,
//!    `/etc/resolv.conf`, and its shim (which makes the network
//!    namespace unless `hostNetwork`, and mounts the containers' root
//!    filesystems in a mount namespace of its own — `runtime::mountns`);
//!    a pod's first start waits for a turn ([`Kubelet::starts`]);
//! 2. init containers one at a time, each to a successful exit;
//! 3. app containers, restarted by `restartPolicy` with upstream's
//!    back-off (10 s doubling to 5 min);
//! 4. status — phase, conditions and container states, posted when they
//!    change;
//! 5. deletion — SIGTERM, the grace period, SIGKILL, clean-up, and the
//!    final delete of the pod object.
//!
//! A container instance is `<name>.<restart>` in the shim, so an agent that
//! restarts reads the restart counts back from the shims, which kept
//! running with their containers.
//!
//! A worker syncs when the pod changes, when its shim says a container
//! exited ([`shim::Request::Watch`]), and when something it is waiting for
//! falls due (a probe, a restart back-off, a pull, a volume refresh) — no
//! polling, so a node of idle pods costs next to nothing. A slow timer
//! ([`IDLE_RESYNC`]) is the safety net.

mod api;
mod backoff;
#[cfg(test)]
mod fake;
mod images;
mod plan;
mod probes;
mod runtime;
mod sandbox;
mod sources;
mod start;
mod status;
mod sync;
#[cfg(test)]
mod sync_tests;
mod teardown;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::backoff::CrashBackoff;
use self::probes::{ProbeDone, Probes};
use self::sources::VOLUME_REFRESH;
use self::sync::sync;
use self::teardown::teardown;
use crate::runtime::image::{ImageStore, Puller};
use crate::runtime::shim::ContainerState;
pub use api::{KubeApi, PodApi};
pub use images::PullJob;
pub use runtime::{PodRuntime, ShimRuntime};
pub(super) use status::latest;

const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest a worker waits with nothing due: it syncs anyway then.
const IDLE_RESYNC: Duration = Duration::from_secs(30);

/// Where the agent keeps things, and who it is.
pub struct Kubelet {
    pub client: Client,
    pub node: String,
    pub node_ip: String,
    /// `<data-dir>`: images, pod volumes and container root filesystems.
    pub data_dir: PathBuf,
    /// `/run/orch`: shims, network namespaces.
    pub run_dir: PathBuf,
    /// `/var/log/pods`.
    pub log_dir: PathBuf,
    /// Parent of the pods' cgroups: `<root>/pod<uid>/<container>.<restart>`.
    pub cgroup_root: String,
    pub images: Arc<ImageStore>,
    pub puller: Puller,
    /// Pulls running or just finished, by image and pull secrets.
    pub pulls: Mutex<HashMap<String, PullJob>>,
    /// The cluster DNS server and domain pods get in resolv.conf.
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// The node's resolv.conf, for `dnsPolicy: Default` pods.
    pub resolv_conf: PathBuf,
    /// When containers' logs rotate (the shims rotate them).
    pub log_limits: crate::runtime::logs::LogLimits,
    /// Turns for pods' first starts, FIFO ([`start_turns`] of them).
    pub starts: Arc<tokio::sync::Semaphore>,
    /// Tells the service proxy that pods' host ports changed.
    pub host_ports: tokio::sync::watch::Sender<HostPorts>,
    /// This machine's CPUs (millicores) and memory (bytes), read once:
    /// what containers without limits may use.
    pub capacity: (i64, i64),
    /// How containers see `/sys/fs/cgroup` on a v1 node (`None`: v2).
    pub cgroup_v1: Option<Arc<crate::runtime::cgroup::V1View>>,
    /// The cluster's services (kept by the service proxy's watch), for
    /// the variables containers get.
    pub services: tokio::sync::watch::Receiver<
        crate::agent::network::Cache<k8s_openapi::api::core::v1::Service>,
    >,
    /// Sandboxes and containers: the shims and the pod network.
    pub runtime: Arc<dyn PodRuntime>,
    /// Where pod statuses, deletes and events go.
    pub api: Arc<dyn PodApi>,
}

/// The host ports of this node's pods, by pod UID.
pub type HostPorts = Arc<std::collections::BTreeMap<String, Vec<crate::net::proxy::HostPort>>>;

/// How many pods set up and start their first container at once: two per
/// CPU (the work is mostly CPU: namespaces, mounts, clones).
pub fn start_turns() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

impl Kubelet {
    pub(super) fn shim_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(uid)
    }
    pub(super) fn netns(&self, uid: &str) -> PathBuf {
        self.run_dir.join("netns").join(uid)
    }
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }
    /// The directories that hold pods' mounts (namespace pins, `/dev/shm`,
    /// memory volumes), each a private mount point of its own so a shim
    /// can leave the other pods' out of its mount namespace.
    pub fn mount_dirs(&self) -> [PathBuf; 3] {
        [
            self.data_dir.join("pods"),
            self.run_dir.join("pods"),
            self.run_dir.join("netns"),
        ]
    }
    fn sandbox(&self, uid: &str) -> crate::agent::container::Sandbox {
        let status = self.capacity;
        crate::agent::container::Sandbox {
            net: self.netns(uid),
            ipc: self.shim_dir(uid).join("ipc"),
            uts: self.shim_dir(uid).join("uts"),
            pid: self.shim_dir(uid).join("pid"),
            shm: self.pod_dir(uid).join("shm"),
            node_cpu_milli: status.0,
            node_memory: status.1,
            cgroup_v1: self.cgroup_v1.clone(),
            pod_ip: None,
            host_ip: self.node_ip.clone(),
            service_env: Vec::new(),
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The pod workers, by pod UID: each gets the pod's changes, and `None`
/// when it is deleted.
type Workers = Arc<Mutex<HashMap<String, watch::Sender<Option<Value>>>>>;

/// Watch this node's pods and keep one worker per pod.
pub async fn run(k: Arc<Kubelet>) {
    let pods: Api<Pod> = Api::all(k.client.clone());
    let workers: Workers = Arc::default();
    let selector = format!("spec.nodeName={}", k.node);
    let mut rv = list(&k, &pods, &selector, &workers).await;
    loop {
        let params = WatchParams::default().fields(&selector).timeout(290);
        let mut stream = match pods.watch(&params, &rv).await {
            Ok(s) => s.boxed(),
            Err(err) => {
                tracing::warn!(%err, "pod watch failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                rv = "0".into();
                continue;
            }
        };
        loop {
            let event = match stream.try_next().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%err, "pod watch ended");
                    rv = "0".into();
                    break;
                }
            };
            let (pod, gone) = match event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => (p, false),
                WatchEvent::Deleted(p) => (p, true),
                WatchEvent::Bookmark(b) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(e) => {
                    tracing::debug!(?e, "pod watch error, relisting");
                    rv = "0".into();
                    break;
                }
            };
            if let Some(v) = pod.resource_version() {
                rv = v;
            }
            let Some(uid) = pod.uid() else { continue };
            let value = serde_json::to_value(&pod).expect("pods serialise");
            let mut w = workers.lock().expect("workers lock");
            match w.get(&uid) {
                Some(tx) => {
                    let _ = tx.send(if gone { None } else { Some(value) });
                }
                None if !gone => spawn_worker(&k, &workers, &mut w, uid, value),
                None => {}
            }
        }
    }
}

/// First a list: workers for the pods that exist, and clean-up of what
/// is left on this node from pods deleted while the agent was away. The
/// watch then starts from the list's version, which this returns.
async fn list(k: &Arc<Kubelet>, pods: &Api<Pod>, selector: &str, workers: &Workers) -> String {
    loop {
        match pods.list(&ListParams::default().fields(selector)).await {
            Ok(list) => {
                let live: std::collections::HashSet<String> =
                    list.items.iter().filter_map(ResourceExt::uid).collect();
                for uid in leftovers(k, &live) {
                    tracing::info!(pod_uid = %uid, "cleaning up a pod deleted while the agent was away");
                    teardown(k, &uid).await;
                }
                match k.runtime.reconcile_network(live.clone()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        count = n,
                        "freed pod addresses and links of pods that are gone"
                    ),
                    Err(e) => tracing::warn!(error = %e, "reconciling pod addresses"),
                }
                let mut w = workers.lock().expect("workers lock");
                for pod in list.items {
                    let Some(uid) = pod.uid() else { continue };
                    let value = serde_json::to_value(&pod).expect("pods serialise");
                    spawn_worker(k, workers, &mut w, uid, value);
                }
                return list.metadata.resource_version.unwrap_or_else(|| "0".into());
            }
            Err(err) => {
                tracing::warn!(%err, "cannot list this node's pods, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Start the worker of pod `uid` and note it in `w` (the locked
/// `workers`); it removes itself when it ends.
fn spawn_worker(
    k: &Arc<Kubelet>,
    workers: &Workers,
    w: &mut HashMap<String, watch::Sender<Option<Value>>>,
    uid: String,
    pod: Value,
) {
    let (tx, rx) = watch::channel(Some(pod));
    w.insert(uid.clone(), tx);
    let (k, workers) = (k.clone(), workers.clone());
    tokio::spawn(async move {
        worker(k, uid.clone(), rx).await;
        workers.lock().expect("workers lock").remove(&uid);
    });
}

/// Pods with state on this node (shim or pod directory) that are not in
/// `live`.
fn leftovers(k: &Kubelet, live: &std::collections::HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [k.run_dir.join("pods"), k.data_dir.join("pods")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&uid) && !out.contains(&uid) {
                out.push(uid);
            }
        }
    }
    out
}

/// What the worker remembers between syncs.
#[derive(Default)]
struct WorkerState {
    /// Per container waiting out its back-off: restart it then; the delay,
    /// and when it exited.
    backoff: HashMap<String, (tokio::time::Instant, Duration, tokio::time::Instant)>,
    /// Per container: its crash-loop back-off (kept across restarts).
    crash_backoff: HashMap<String, CrashBackoff>,
    /// Why a container is waiting (image missing, …).
    waiting: HashMap<String, (String, String)>,
    last_status: Option<Value>,
    torn_down: bool,
    /// Probe state per container instance (`<name>.<restart>`).
    probes: HashMap<String, Probes>,
    /// The ConfigMaps and Secrets the pod uses, and when they were read.
    sources: crate::agent::volumes::Sources,
    sources_read: Option<tokio::time::Instant>,
    /// Why containers cannot start (a missing ConfigMap, …).
    config_error: Option<String>,
    /// Why the pod's volumes cannot be set up (a hostPath of the wrong
    /// type), as last reported in a FailedMount event.
    mount_error: Option<String>,
    /// Pulls this pod asked for (by pull key) and when.
    pulls: HashMap<String, tokio::time::Instant>,
    /// Per image: no pull before this (ImagePullBackOff), the delay, and
    /// why the last pull failed.
    pull_backoff: HashMap<String, (tokio::time::Instant, Duration, String)>,
    /// The pod's cgroup has its limits.
    pod_cgroup: bool,
    /// Service account tokens by source key: token, when got, lifetime.
    tokens: HashMap<String, (Vec<u8>, tokio::time::Instant, Duration)>,
    /// Container instances whose image was pulled for them (policy Always).
    pulled_for: std::collections::HashSet<String>,
    /// A container of the pod has been started.
    started: bool,
    /// A turn for the pod's first start ([`Kubelet::starts`]), held until
    /// its first container runs or the sync ends.
    start_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Container instances being stopped (sidecars at the pod's end).
    stopping: std::collections::HashSet<String>,
    /// The pod's address, once its network is set up.
    pod_ip: Option<std::net::Ipv4Addr>,
    /// Instances the pod's status shows but its shim does not know (the
    /// shim died, or the node rebooted): ended, as far as the agent can
    /// tell ([`lost_instances`]).
    lost: Vec<ContainerState>,
    /// The earliest moment something the last sync put off falls due.
    wake: Option<tokio::time::Instant>,
    /// Rung when the pod's shim reports an exit (or goes away), or a
    /// probe comes back.
    shim_events: Arc<tokio::sync::Notify>,
    /// Probe results not yet counted.
    probe_results: Arc<std::sync::Mutex<Vec<ProbeDone>>>,
    /// The task reading those reports.
    watching: Option<AbortOnDrop>,
}

impl WorkerState {
    /// Sync again no later than `at`.
    fn wake_at(&mut self, at: tokio::time::Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// When the worker must sync next if nothing happens before.
    fn next_sync(&self, pod: &Value) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut at = now + IDLE_RESYNC;
        let mut due = |t: tokio::time::Instant| at = at.min(t);
        if let Some(w) = self.wake {
            due(w);
        }
        for (until, _, _) in self.backoff.values() {
            due(*until);
        }
        for (until, _, _) in self.pull_backoff.values() {
            due(*until);
        }
        if !self.pulls.is_empty() {
            // A pull runs: see how it went soon.
            due(now + Duration::from_millis(250));
        }
        if self.config_error.is_some() || !self.waiting.is_empty() {
            due(now + Duration::from_secs(2));
        }
        if let Some(read) = self.sources_read
            && !crate::agent::volumes::references(pod).is_empty()
        {
            due(read + VOLUME_REFRESH);
        }
        at
    }
}

/// A task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn worker(k: Arc<Kubelet>, uid: String, mut rx: watch::Receiver<Option<Value>>) {
    let mut state = WorkerState::default();
    loop {
        let pod = rx.borrow_and_update().clone();
        match pod {
            None => {
                teardown(&k, &uid).await;
                return;
            }
            Some(pod) => {
                state.wake = None;
                if let Err(e) = sync(&k, &pod, &mut state).await {
                    tracing::warn!(pod = %pod["metadata"]["name"], error = %e, "pod sync failed; retrying");
                    state.wake_at(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                state.start_permit = None;
                if state.torn_down {
                    return;
                }
            }
        }
        let next = match rx.borrow().as_ref() {
            Some(pod) if !state.torn_down => state.next_sync(pod),
            _ => tokio::time::Instant::now(),
        };
        let events = state.shim_events.clone();
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = events.notified() => {}
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Record an Event about the pod (what `kubectl describe pod` shows).
/// Best effort: failures are logged.
fn event(k: &Kubelet, pod: &Value, kind: &str, reason: &str, message: String) {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let now = jiff::Timestamp::now();
    let ts = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let ev = json!({
        "metadata": {"name": format!("{}.{:x}", pod["metadata"]["name"].as_str().unwrap_or_default(), now.as_nanosecond()), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                           "namespace": ns, "uid": pod["metadata"]["uid"]},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "kubelet", "host": k.node},
        "reportingComponent": "kubelet", "reportingInstance": k.node,
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    tokio::spawn(k.api.record_event(&ns, ev));
}
