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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions, WatchEvent, WatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::container::{PodFiles, config as container_config};
use crate::runtime::image::pull::PullError;
use crate::runtime::image::{Image, ImageRef, ImageStore, PullSecrets, Puller};
use crate::runtime::shim::{self, ContainerState, Request};
use crate::runtime::{rootfs, spec};

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
    /// The pods' bridge, addresses and veths (`None`: pods get loopback
    /// only).
    pub network: Option<Arc<crate::net::pod::PodNetwork>>,
    /// Tells the service proxy that pods' host ports changed.
    pub host_ports: tokio::sync::watch::Sender<HostPorts>,
    /// This machine's CPUs (millicores) and memory (bytes), read once:
    /// what containers without limits may use.
    pub capacity: (i64, i64),
    /// How containers see `/sys/fs/cgroup` on a v1 node (`None`: v2).
    pub cgroup_v1: Option<Arc<crate::runtime::cgroup::V1View>>,
    /// The cluster's services (kept by the service proxy's watch), for
    /// the variables containers get.
    pub services:
        tokio::sync::watch::Receiver<super::network::Cache<k8s_openapi::api::core::v1::Service>>,
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
    fn sandbox(&self, uid: &str) -> super::container::Sandbox {
        let status = self.capacity;
        super::container::Sandbox {
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

/// The image's size, or the waiting reason and message.
type PullOutcome = Result<u64, (String, String)>;

/// One pull, shared by the pods that want the same image with the same
/// pull secrets.
pub struct PullJob {
    started: tokio::time::Instant,
    /// When it ended and how: `Err((reason, message))`.
    finished: Option<(tokio::time::Instant, PullOutcome)>,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Watch this node's pods and keep one worker per pod.
pub async fn run(k: Arc<Kubelet>) {
    let pods: Api<Pod> = Api::all(k.client.clone());
    let workers: Arc<Mutex<HashMap<String, watch::Sender<Option<Value>>>>> = Arc::default();
    let selector = format!("spec.nodeName={}", k.node);
    // First a list: workers for the pods that exist, and clean-up of what
    // is left on this node from pods deleted while the agent was away.
    // The watch then starts from the list's version.
    let mut rv = loop {
        match pods.list(&ListParams::default().fields(&selector)).await {
            Ok(list) => {
                let live: std::collections::HashSet<String> =
                    list.items.iter().filter_map(ResourceExt::uid).collect();
                for uid in leftovers(&k, &live) {
                    tracing::info!(pod_uid = %uid, "cleaning up a pod deleted while the agent was away");
                    teardown(&k, &uid).await;
                }
                if let Some(net) = k.network.clone() {
                    let live = live.clone();
                    match blocking(move || net.reconcile(&live)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            count = n,
                            "freed pod addresses and links of pods that are gone"
                        ),
                        Err(e) => tracing::warn!(error = %e, "reconciling pod addresses"),
                    }
                }
                let mut w = workers.lock().expect("workers lock");
                for pod in list.items {
                    let Some(uid) = pod.uid() else { continue };
                    let value = serde_json::to_value(&pod).expect("pods serialise");
                    let (tx, rx) = watch::channel(Some(value));
                    w.insert(uid.clone(), tx);
                    let (k, workers) = (k.clone(), workers.clone());
                    tokio::spawn(async move {
                        worker(k, uid.clone(), rx).await;
                        workers.lock().expect("workers lock").remove(&uid);
                    });
                }
                break list.metadata.resource_version.unwrap_or_else(|| "0".into());
            }
            Err(err) => {
                tracing::warn!(%err, "cannot list this node's pods, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
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
                None if !gone => {
                    let (tx, rx) = watch::channel(Some(value));
                    w.insert(uid.clone(), tx);
                    let (k, workers) = (k.clone(), workers.clone());
                    tokio::spawn(async move {
                        worker(k, uid.clone(), rx).await;
                        workers.lock().expect("workers lock").remove(&uid);
                    });
                }
                None => {}
            }
        }
    }
}

/// Mount a tmpfs at `dir` (of `size` bytes, root directory `mode`) unless
/// one is there.
fn mount_tmpfs(dir: &Path, size: Option<u64>, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let parent_dev = dir
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev()
        });
    let dev = std::fs::metadata(dir).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    })?;
    if parent_dev.is_some_and(|p| p != dev) {
        return Ok(()); // mounted already
    }
    let options = match size {
        Some(bytes) => format!("mode={mode:o},size={bytes}"),
        None => format!("mode={mode:o}"),
    };
    let options = std::ffi::CString::new(options).expect("no NUL");
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(options.as_c_str()),
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))
}

/// Volumes in memory, as the kubelet keeps them: emptyDir with `medium:
/// Memory` (sized by sizeLimit), and secret, projected and downwardAPI
/// volumes (secrets and tokens never reach the disk).
async fn mount_memory_volumes(pod: &Value, files: &PodFiles) -> Result<(), String> {
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let (size, mode) = if v.pointer("/emptyDir/medium") == Some(&Value::from("Memory")) {
            let size = v
                .pointer("/emptyDir/sizeLimit")
                .and_then(Value::as_str)
                .and_then(|q| crate::api::quantity::parse_quantity(q, 1.0))
                .map(|b| b.max(4096) as u64);
            (size, 0o1777)
        } else if ["secret", "projected", "downwardAPI"]
            .iter()
            .any(|kind| v.get(kind).is_some())
        {
            (None, 0o755)
        } else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let dir = files.volumes.join(&name);
        blocking(move || mount_tmpfs(&dir, size, mode))
            .await
            .map_err(|e| format!("volume {name}: {e}"))?;
    }
    Ok(())
}

/// A token for the pod's service account (`key` is `<audience>|<seconds>`),
/// bound to the pod; a new one once 80 % of the last one's life is gone,
/// as the kubelet does.
async fn service_account_token(
    k: &Kubelet,
    pod: &Value,
    key: &str,
    state: &mut WorkerState,
) -> Result<Vec<u8>, String> {
    if let Some((token, got, ttl)) = state.tokens.get(key)
        && got.elapsed() < ttl.mul_f64(0.8)
    {
        return Ok(token.clone());
    }
    let (audience, seconds) = key.split_once('|').unwrap_or(("", "3600"));
    let seconds: i64 = seconds.parse().unwrap_or(3600);
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let mut spec = json!({
        "expirationSeconds": seconds,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
    });
    if !audience.is_empty() {
        spec["audiences"] = json!([audience]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).expect("serialises"))
    .map_err(|e| e.to_string())?;
    let answer: Value = k
        .client
        .request(req)
        .await
        .map_err(|e| format!("requesting a token for service account {ns}/{sa}: {e}"))?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or("the TokenRequest answer has no token")?
        .as_bytes()
        .to_vec();
    state.tokens.insert(
        key.to_owned(),
        (
            token.clone(),
            tokio::time::Instant::now(),
            Duration::from_secs(seconds.max(600) as u64),
        ),
    );
    Ok(token)
}

/// How often a pod's ConfigMaps, Secrets and tokens are read again (the
/// kubelet's sync period is a minute; updates reach pods within that).
const VOLUME_REFRESH: Duration = Duration::from_secs(30);

/// Read the pod's ConfigMaps and Secrets (at most every 30 s) and write
/// its API-backed volumes; a missing source blocks container creation.
async fn refresh_volumes(k: &Kubelet, pod: &Value, files: &PodFiles, state: &mut WorkerState) {
    // Waiting for a missing source: look again soon.
    let every = if state.config_error.is_some() {
        Duration::from_secs(2)
    } else {
        VOLUME_REFRESH
    };
    let due = state.sources_read.is_none_or(|t| t.elapsed() >= every);
    if !due {
        return;
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut sources = super::volumes::Sources::new();
    for (kind, name) in super::volumes::references(pod) {
        if kind == super::volumes::TOKEN {
            match service_account_token(k, pod, &name, state).await {
                Ok(token) => {
                    sources.insert((kind, name), [("token".to_owned(), token)].into());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a service account token");
                    state.config_error = Some(e);
                    state.sources_read = Some(tokio::time::Instant::now());
                    return;
                }
            }
            continue;
        }
        match super::volumes::fetch(&k.client, ns, kind, &name).await {
            Ok(Some(data)) => {
                sources.insert((kind, name), data);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a pod's volume source; keeping the last copy");
                return;
            }
        }
    }
    state.sources = sources;
    state.sources_read = Some(tokio::time::Instant::now());
    match super::volumes::render(pod, &state.sources) {
        Ok(volumes) => {
            state.config_error = None;
            let dir = files.volumes.clone();
            let fs_group = pod
                .pointer("/spec/securityContext/fsGroup")
                .and_then(Value::as_u64)
                .and_then(|g| u32::try_from(g).ok());
            let result = blocking(move || -> std::io::Result<()> {
                for (name, content) in &volumes {
                    super::volumes::write_atomic(&dir.join(name), content, fs_group)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = result {
                state.config_error = Some(format!("writing volumes: {e}"));
            }
        }
        Err(e) => state.config_error = Some(e),
    }
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
    sources: super::volumes::Sources,
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
            && !super::volumes::references(pod).is_empty()
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

/// Read the shim's exit reports ([`shim::Request::Watch`]) and ring
/// `events` for each, and once more when the shim goes away.
async fn watch_shim(socket: PathBuf, events: Arc<tokio::sync::Notify>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    if let Ok(mut conn) = tokio::net::UnixStream::connect(&socket).await {
        let mut request = serde_json::to_vec(&Request::Watch).expect("requests serialise");
        request.push(b'\n');
        if conn.write_all(&request).await.is_ok() {
            let mut lines = tokio::io::BufReader::new(conn).lines();
            // The first line answers the request (a sync then catches an
            // exit from before the watch began); each later one is an exit.
            while let Ok(Some(_)) = lines.next_line().await {
                events.notify_one();
            }
        }
    }
    events.notify_one();
}

/// One container instance's probes.
#[derive(Default)]
struct Probes {
    /// When the worker first saw it running.
    since: Option<tokio::time::Instant>,
    /// The startup probe passed (or there is none).
    started: bool,
    /// The readiness probe's verdict (true without one, once started).
    ready: bool,
    next: HashMap<&'static str, tokio::time::Instant>,
    successes: HashMap<&'static str, u32>,
    failures: HashMap<&'static str, u32>,
    /// A liveness or startup failure asked for a restart.
    killed: bool,
    /// The probes running now, by kind.
    running: HashMap<&'static str, AbortOnDrop>,
}

/// A probe's result, handed from its task to the pod's worker.
struct ProbeDone {
    id: String,
    kind: &'static str,
    result: Result<(), String>,
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

async fn shim_call(socket: PathBuf, request: Request) -> Result<shim::Response, shim::Error> {
    blocking(move || shim::call(&socket, &request)).await
}

/// Start the pod's shim unless it runs already; its socket and the state
/// it answered with.
async fn ensure_shim(
    k: &Kubelet,
    uid: &str,
    host_network: bool,
    host_ipc: bool,
    share_pid: bool,
    hostname: &str,
) -> Result<(PathBuf, shim::Response), String> {
    let dir = k.shim_dir(uid);
    let socket = dir.join("shim.sock");
    if let Ok(state) = shim_call(socket.clone(), Request::State).await {
        return Ok((socket, state));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join("shim.log")).map_err(|e| format!("shim.log: {e}"))?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(["shim", "--dir"]).arg(&dir);
    let sandbox = k.sandbox(uid);
    if !host_network {
        cmd.arg("--netns").arg(&sandbox.net);
        cmd.arg("--utsns").arg(&sandbox.uts);
        cmd.arg("--hostname").arg(hostname);
    }
    if !host_ipc {
        cmd.arg("--ipcns").arg(&sandbox.ipc);
    }
    if share_pid {
        cmd.arg("--pidns").arg(&sandbox.pid);
    }
    for d in k.mount_dirs() {
        cmd.arg("--hide-mounts-under").arg(d);
    }
    cmd.arg("--log-max-size")
        .arg(k.log_limits.max_size.to_string())
        .arg("--log-max-files")
        .arg(k.log_limits.max_files.to_string());
    for d in [k.pod_dir(uid), dir.clone(), sandbox.net.clone()] {
        cmd.arg("--keep-mounts-under").arg(d);
    }
    // Its own process group: signals to the agent's group (Ctrl-C, a
    // service manager stopping the agent) do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    // Its socket, bound here and handed over as stdin: calls queue until
    // the shim accepts, so nobody polls for it to come up.
    let listener = shim::listen(&dir).map_err(|e| format!("{}: {e}", socket.display()))?;
    cmd.arg("--listener-on-stdin")
        .stdin(std::os::fd::OwnedFd::from(listener))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .env("RUST_LOG", "warn");
    let mut child = cmd.spawn().map_err(|e| format!("starting the shim: {e}"))?;
    // Reap it if it exits while we run (it is ours until we exit): a
    // small thread of its own, not one of the runtime's blocking threads,
    // which it would hold for the pod's whole life.
    std::thread::Builder::new()
        .name("shim-reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(|e| format!("starting the shim's reaper: {e}"))?;
    // Dropping `cmd` closed our copy: if the shim dies before it
    // accepts, this call fails at once.
    drop(cmd);
    match shim_call(socket.clone(), Request::State).await {
        Ok(state) => Ok((socket, state)),
        Err(e) => Err(format!(
            "the shim did not come up ({e}); see {}",
            dir.join("shim.log").display()
        )),
    }
}

/// The `hostPort` mappings of a pod's containers to its address.
fn host_ports(pod: &Value, ip: std::net::Ipv4Addr) -> Vec<crate::net::proxy::HostPort> {
    let mut out = Vec::new();
    for c in ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            let (Some(host_port), Some(container_port)) = (
                p["hostPort"].as_u64().and_then(|v| u16::try_from(v).ok()),
                p["containerPort"]
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok()),
            ) else {
                continue;
            };
            if host_port == 0 {
                continue;
            }
            use crate::net::proxy::Protocol;
            let protocol = match p["protocol"].as_str() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            out.push(crate::net::proxy::HostPort {
                protocol,
                host_ip: p["hostIP"].as_str().and_then(|s| s.parse().ok()),
                host_port,
                pod_ip: std::net::IpAddr::V4(ip),
                container_port,
            });
        }
    }
    out
}

fn write_pod_files(
    k: &Kubelet,
    pod: &Value,
    files: &PodFiles,
    pod_ip: Option<std::net::Ipv4Addr>,
) -> std::io::Result<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    std::fs::create_dir_all(&files.volumes)?;
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if v.get("emptyDir").is_some()
            && let Some(n) = v["name"].as_str()
        {
            std::fs::create_dir_all(files.volumes.join(n))?;
        }
    }
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let hostname = if host_network {
        super::node::hostname()
    } else {
        pod.pointer("/spec/hostname")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned()
    };
    write_if_changed(&files.hostname, format!("{hostname}\n").as_bytes())?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let ip = if host_network {
        Some(k.node_ip.clone())
    } else {
        pod_ip.map(|ip| ip.to_string())
    };
    // With a subdomain, the pod's full name first, as the kubelet
    // writes it (`db-0.db.default.svc.cluster.local db-0`).
    let subdomain = pod["spec"]["subdomain"]
        .as_str()
        .filter(|s| !s.is_empty() && !host_network);
    match (ip, subdomain) {
        (Some(ip), Some(sub)) => hosts.push_str(&format!(
            "{ip}\t{hostname}.{sub}.{}.svc.{}\t{hostname}\n",
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            k.cluster_domain
        )),
        (Some(ip), None) => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        (None, _) => {}
    }
    for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
        let names: Vec<&str> = alias["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias["ip"].as_str().unwrap_or_default(),
            names.join("\t")
        ));
    }
    write_if_changed(&files.hosts, hosts.as_bytes())?;
    let host = std::fs::read_to_string(&k.resolv_conf).unwrap_or_default();
    let resolv = resolv_conf(pod, host_network, &k.cluster_dns, &k.cluster_domain, &host);
    write_if_changed(&files.resolv_conf, resolv.as_bytes())
}

/// Write `contents` to `path` in place, unless it holds them already.
/// A running container has the file bind-mounted, so it stays the same
/// inode (a rename would leave the container with the old one), and a
/// pod's every sync rewriting it would empty it for a moment each time:
/// a lookup reading resolv.conf then would find no name server.
fn write_if_changed(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents)
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it: by `dnsPolicy`
/// (ClusterFirst — the cluster DNS and search path, `ndots:5`; hostNetwork
/// pods take the node's unless ClusterFirstWithHostNet; Default — the
/// node's `host` file; None — `dnsConfig` alone), with `dnsConfig`'s
/// nameservers, searches and options merged in (at most 3 nameservers and
/// 32 search domains; an option of the same name replaces the earlier).
fn resolv_conf(pod: &Value, host_network: bool, dns: &str, domain: &str, host: &str) -> String {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let field = |line: &str, key: &str| -> Vec<String> {
        line.strip_prefix(key)
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let from_host = || {
        let (mut servers, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
        for line in host.lines().map(str::trim) {
            servers.extend(field(line, "nameserver"));
            let s = field(line, "search");
            if !s.is_empty() {
                search = s; // the last search line wins
            }
            options.extend(field(line, "options"));
        }
        (servers, search, options)
    };
    let cluster = || {
        (
            vec![dns.to_owned()],
            vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_owned(),
            ],
            vec!["ndots:5".to_owned()],
        )
    };
    let (mut servers, mut search, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "Default" => from_host(),
        "ClusterFirstWithHostNet" => cluster(),
        _ if host_network => from_host(),
        _ => cluster(),
    };
    let cfg = &pod["spec"]["dnsConfig"];
    let list = |f: &str| -> Vec<String> {
        cfg[f]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    for s in list("nameservers") {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    for s in list("searches") {
        if !search.contains(&s) {
            search.push(s);
        }
    }
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else {
            continue;
        };
        let option = match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        };
        options.retain(|have| have.split(':').next() != Some(name));
        options.push(option);
    }
    servers.truncate(3);
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The newest instance of each container the shim has, by container name.
pub(super) fn latest(states: &[ContainerState]) -> HashMap<String, (u32, ContainerState)> {
    let mut out: HashMap<String, (u32, ContainerState)> = HashMap::new();
    for s in states {
        let Some((name, n)) = s.id.rsplit_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        if out.get(name).is_none_or(|(have, _)| n > *have) {
            out.insert(name.to_owned(), (n, s.clone()));
        }
    }
    out
}

/// Containers the pod's status says ran (a `containerID`) of which the
/// shim knows no instance at all: their shim died, or the node restarted
/// and took the runtime's state with it. As the kubelet does when the
/// runtime lost a container, each counts as an ended instance: with the
/// exit the status recorded, or else exit code 255, reason `Unknown`.
/// So restart counts go on, and a container that must not run twice
/// (`restartPolicy: Never`, a finished init container) does not.
fn lost_instances(pod: &Value, known: &[ContainerState]) -> Vec<ContainerState> {
    let mut out = Vec::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for s in pod["status"][list].as_array().into_iter().flatten() {
            let (Some(name), Some(cid)) = (s["name"].as_str(), s["containerID"].as_str()) else {
                continue;
            };
            let Some(id) = cid.rsplit_once('/').map(|(_, id)| id.to_owned()) else {
                continue;
            };
            if id.rsplit_once('.').map(|(n, _)| n) != Some(name)
                || known
                    .iter()
                    .any(|c| c.id.rsplit_once('.').is_some_and(|(n, _)| n == name))
            {
                continue;
            }
            let terminated = [
                s.pointer("/state/terminated"),
                s.pointer("/lastState/terminated"),
            ]
            .into_iter()
            .flatten()
            .find(|t| t["containerID"] == cid);
            let text = |v: &Value| v.as_str().map(str::to_owned);
            out.push(match terminated {
                Some(t) => ContainerState {
                    id,
                    status: "exited".into(),
                    exit_code: t["exitCode"].as_i64().map(|c| c as i32),
                    started_at: text(&t["startedAt"]),
                    finished_at: text(&t["finishedAt"]),
                    reason: text(&t["reason"]),
                    ..ContainerState::default()
                },
                None => ContainerState {
                    id,
                    status: "exited".into(),
                    exit_code: Some(255),
                    started_at: text(&s["state"]["running"]["startedAt"]),
                    finished_at: Some(now()),
                    reason: Some("Unknown".into()),
                    ..ContainerState::default()
                },
            });
        }
    }
    out
}

/// Add the lost instances the shim does not report.
fn with_lost(containers: &mut Vec<ContainerState>, lost: &[ContainerState]) {
    for l in lost {
        if !containers.iter().any(|c| c.id == l.id) {
            containers.push(l.clone());
        }
    }
}

/// The instance before the newest one of each container (its last state).
fn previous(
    states: &[ContainerState],
    newest: &HashMap<String, (u32, ContainerState)>,
) -> HashMap<String, ContainerState> {
    let mut out = HashMap::new();
    for (name, (n, _)) in newest {
        if *n == 0 {
            continue;
        }
        let id = format!("{name}.{}", n - 1);
        if let Some(s) = states.iter().find(|s| s.id == id && s.status == "exited") {
            out.insert(name.clone(), s.clone());
        }
    }
    out
}

/// Prepare and start instance `restart` of `container`.
async fn start_container(
    k: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    restart: u32,
    socket: &Path,
    state: &mut WorkerState,
) -> Result<(), String> {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let Some(stored) = ensure_image(k, pod, container, restart, state).await else {
        return Ok(());
    };
    if let Some(e) = &state.config_error {
        state.waiting.insert(
            name.clone(),
            ("CreateContainerConfigError".into(), e.clone()),
        );
        return Ok(());
    }
    state.waiting.remove(&name);
    let image_config: Value = serde_json::from_slice(
        &k.images
            .read_blob(&stored.config_digest)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("image config: {e}"))?;
    let pod_dir = k.pod_dir(&uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    let id = format!("{name}.{restart}");
    let mut image_config = image_config;
    let user = image_config["config"]["User"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Err(e) = super::container::verify_run_as_non_root(pod, container, &user)
        .and_then(|()| super::container::sysctls(pod).map(|_| ()))
    {
        if state.waiting.get(&name).map(|(_, m)| m) != Some(&e) {
            event(k, pod, "Warning", "Failed", format!("Error: {e}"));
        }
        state
            .waiting
            .insert(name.clone(), ("CreateContainerConfigError".into(), e));
        return Ok(());
    }
    if !user.is_empty() && user.split(':').any(|p| p.parse::<u32>().is_err()) {
        // A user name: look it up in the image's /etc/passwd and /etc/group
        // (the topmost layer that has them).
        let read = |file: &str| {
            stored
                .layers
                .iter()
                .rev()
                .filter_map(|l| k.images.layer_dir(&l.diff_id).ok())
                .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        match super::container::resolve_user(&user, &read("etc/passwd"), &read("etc/group")) {
            Some(numeric) => image_config["config"]["User"] = json!(numeric),
            None => {
                state.waiting.insert(
                    name.clone(),
                    (
                        "CreateContainerConfigError".into(),
                        format!("unable to find user {user}: no matching entries in passwd file"),
                    ),
                );
                return Ok(());
            }
        }
    }
    let mut sandbox = k.sandbox(&uid);
    sandbox.pod_ip = pod_ip(k, pod, state.pod_ip);
    sandbox.service_env = service_env(k, pod).await;
    let mut cfg = container_config(
        pod,
        container,
        &image_config,
        &state.sources,
        &files,
        &sandbox,
        format!("{}/pod{uid}/{id}", k.cgroup_root),
    );
    // terminationMessagePath: a file of ours, bound into the container.
    let termination_log = pod_dir
        .join("containers")
        .join(format!("{id}.termination-log"));
    cfg.mounts.push(spec::BindMount {
        source: termination_log.clone(),
        destination: container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_owned(),
        readonly: false,
    });
    let layers: Vec<PathBuf> = stored
        .layers
        .iter()
        .map(|l| k.images.layer_dir(&l.diff_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let bundle = pod_dir.join("containers").join(&id);
    let log = k
        .log_dir
        .join(format!(
            "{}_{}_{uid}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        ))
        .join(&name)
        .join(format!("{restart}.log"));
    let socket = socket.to_owned();
    let spec = spec::build(&cfg);
    // Keep the newest instance and the one before (its last state); older
    // ones go with their root filesystems.
    let stale = restart.checked_sub(2).map(|n| {
        (
            format!("{name}.{n}"),
            pod_dir.join("containers").join(format!("{name}.{n}")),
        )
    });
    let log_dir = log.parent().map(Path::to_path_buf);
    let created = blocking(move || -> Result<(), String> {
        if let Some((old_id, old_bundle)) = stale {
            let _ = shim::call(&socket, &Request::Delete { id: old_id });
            let _ = rootfs::unmount(&old_bundle.join("rootfs"));
            let _ = std::fs::remove_dir_all(&old_bundle);
            // Its logs too, as the kubelet's container GC removes them:
            // `kubectl logs` and `--previous` read the last two.
            if let Some(dir) = &log_dir {
                remove_old_logs(dir, restart);
            }
        }
        // The shim mounts the root; an agent before 0.1 mounted it here.
        let _ = rootfs::unmount(&bundle.join("rootfs"));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        std::fs::write(&termination_log, b"").map_err(|e| e.to_string())?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).expect("spec serialises"),
        )
        .map_err(|e| e.to_string())?;
        shim::call(
            &socket,
            &Request::Create {
                id: id.clone(),
                bundle: bundle.clone(),
                log,
                layers,
            },
        )
        .map_err(|e| e.to_string())?;
        shim::call(&socket, &Request::Start { id }).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await;
    if let Err(e) = created {
        // The kubelet's CreateContainerError: shown on the container,
        // told once as an event, tried again on the next syncs.
        let message = format!("Error: {e}");
        if state
            .waiting
            .get(&name)
            .is_none_or(|(r, m)| r != "CreateContainerError" || *m != message)
        {
            event(k, pod, "Warning", "Failed", message.clone());
        }
        state
            .waiting
            .insert(name.clone(), ("CreateContainerError".into(), message));
        return Ok(());
    }
    if state
        .waiting
        .get(&name)
        .is_some_and(|(r, _)| r == "CreateContainerError")
    {
        state.waiting.remove(&name);
    }
    state.started = true;
    state.start_permit = None;
    event(
        k,
        pod,
        "Normal",
        "Started",
        format!("Started container {name}"),
    );
    // postStart: the container counts as started once it has run.
    if let Some(hook) = container.pointer("/lifecycle/postStart") {
        let id = format!("{name}.{restart}");
        let pod_ip = pod_address(k, pod, state.pod_ip);
        if let Err(message) = run_hook(
            &k.shim_dir(&uid).join("shim.sock"),
            &id,
            hook,
            container,
            pod_ip.as_deref(),
            POST_START_TIMEOUT,
        )
        .await
        {
            event(
                k,
                pod,
                "Warning",
                "FailedPostStartHook",
                format!("PostStartHook failed: {message}"),
            );
            stop_instance(
                &k.shim_dir(&uid).join("shim.sock"),
                &id,
                container,
                pod_ip,
                pod_grace(pod),
            )
            .await;
        }
    }
    Ok(())
}

/// The container's image, pulled as its `imagePullPolicy` says. `None`
/// while a pull runs or backs off; `state.waiting` then says why.
async fn ensure_image(
    k: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    restart: u32,
    state: &mut WorkerState,
) -> Option<Image> {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    let reference = match ImageRef::parse(&image) {
        Ok(r) => r,
        Err(e) => {
            state
                .waiting
                .insert(name, ("InvalidImageName".into(), e.clone()));
            return None;
        }
    };
    let present = k.images.get(&reference.to_string()).ok();
    let policy = container["imagePullPolicy"].as_str().unwrap_or(
        if reference.digest.is_none() && reference.tag.as_deref() == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        },
    );
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let secret_names: Vec<String> = pod["spec"]["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    let key = format!("{reference}|{ns}/{}", secret_names.join(","));
    let instance = format!("{name}.{restart}");
    let must_pull = match policy {
        "Never" => {
            if present.is_none() {
                state.waiting.insert(
                    name,
                    (
                        "ErrImageNeverPull".into(),
                        format!(
                            "Container image \"{image}\" is not present with pull policy of Never; import it with `orch image import`"
                        ),
                    ),
                );
            }
            return present;
        }
        "Always" => !state.pulled_for.contains(&instance),
        _ => present.is_none(),
    };
    // A pull this pod asked for reports its outcome (events) first.
    if !must_pull && !state.pulls.contains_key(&key) {
        return present;
    }
    let now = tokio::time::Instant::now();
    if let Some((until, _, why)) = state.pull_backoff.get(&key)
        && *until > now
    {
        if state
            .waiting
            .get(&name)
            .is_none_or(|(r, _)| r != "ImagePullBackOff")
        {
            event(
                k,
                pod,
                "Normal",
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
        }
        state.waiting.insert(
            name,
            (
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\": ErrImagePull: {why}"),
            ),
        );
        return None;
    }
    let Some(asked) = state.pulls.get(&key).copied() else {
        // Start a pull, or join the one running.
        state.pulls.insert(key.clone(), now);
        let mut jobs = k.pulls.lock().expect("pulls lock");
        jobs.retain(|_, j| {
            j.finished
                .as_ref()
                .is_none_or(|(t, _)| t.elapsed() < Duration::from_secs(600))
        });
        if jobs.get(&key).is_none_or(|j| j.finished.is_some()) {
            jobs.insert(
                key.clone(),
                PullJob {
                    started: now,
                    finished: None,
                },
            );
            event(
                k,
                pod,
                "Normal",
                "Pulling",
                format!("Pulling image \"{image}\""),
            );
            let (k, key) = (k.clone(), key.clone());
            tokio::spawn(async move {
                let result = pull(&k, &reference, &ns, &secret_names).await;
                if let Some(job) = k.pulls.lock().expect("pulls lock").get_mut(&key) {
                    job.finished = Some((tokio::time::Instant::now(), result));
                }
            });
        }
        state
            .waiting
            .entry(name)
            .or_insert_with(|| ("ContainerCreating".into(), String::new()));
        return None;
    };
    let (started, finished) = {
        let jobs = k.pulls.lock().expect("pulls lock");
        match jobs.get(&key) {
            Some(j) => (j.started, j.finished.clone()),
            None => (
                asked,
                Some((
                    asked,
                    Err(("ErrImagePull".into(), "the pull was lost; retrying".into())),
                )),
            ),
        }
    };
    let (ended, result) = finished.filter(|(t, _)| *t >= asked)?;
    state.pulls.remove(&key);
    match result {
        Ok(size) => {
            state.pull_backoff.remove(&key);
            state.pulled_for.insert(instance);
            let took = ended.duration_since(started).as_secs_f64();
            let waited = ended.duration_since(asked.min(started)).as_secs_f64();
            event(
                k,
                pod,
                "Normal",
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {took:.3}s ({waited:.3}s including waiting). Image size: {size} bytes."
                ),
            );
            state.waiting.remove(&name);
            k.images.get(&reference.to_string()).ok()
        }
        Err((reason, message)) => {
            let delay = state
                .pull_backoff
                .get(&key)
                .map_or(Duration::from_secs(10), |(_, d, _)| {
                    (*d * 2).min(MAX_BACKOFF)
                });
            state
                .pull_backoff
                .insert(key, (now + delay, delay, message.clone()));
            event(
                k,
                pod,
                "Warning",
                "Failed",
                format!("Failed to pull image \"{image}\": {message}"),
            );
            state.waiting.insert(name, (reason, message));
            None
        }
    }
}

/// Pull `reference` with the pod's pull secrets; the image's size, or
/// the waiting reason and message.
async fn pull(
    k: &Kubelet,
    reference: &ImageRef,
    ns: &str,
    secret_names: &[String],
) -> Result<u64, (String, String)> {
    let mut secrets = PullSecrets::default();
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(k.client.clone(), ns);
    for s in secret_names {
        match api.get(s).await {
            Ok(secret) => {
                for key in [".dockerconfigjson", ".dockercfg"] {
                    if let Some(data) = secret.data.as_ref().and_then(|d| d.get(key)) {
                        secrets.add(&data.0);
                    }
                }
            }
            // Like the kubelet: pull without it and say so.
            Err(e) => tracing::warn!(secret = %s, %ns, %e, "cannot read an image pull secret"),
        }
    }
    tracing::info!(image = %reference, "pulling");
    match k.puller.pull(reference, &secrets, &|_| {}).await {
        Ok(image) => Ok(image.size),
        Err(e) => {
            let reason = "ErrImagePull".to_owned();
            let message = match &e {
                PullError::NotFound(m) => format!("{m} (not found: check the name and tag)"),
                PullError::Unauthorized(m) => format!(
                    "{m} (check the pod's imagePullSecrets or the credentials in registries.yaml)"
                ),
                PullError::Failed(m) => m.clone(),
            };
            tracing::warn!(image = %reference, error = %message, "pull failed");
            Err((reason, message))
        }
    }
}

/// Run a lifecycle hook (exec, httpGet or sleep) against instance `id`.
/// How long a postStart hook may run.
const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a lifecycle hook of container instance `id`, for at most `timeout`.
async fn run_hook(
    socket: &Path,
    id: &str,
    hook: &Value,
    container: &Value,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(secs) = hook.pointer("/sleep/seconds").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    }
    let probe = json!({"exec": hook.get("exec"), "httpGet": hook.get("httpGet"),
                       "timeoutSeconds": timeout.as_secs_f64().ceil().max(1.0) as u64});
    let probe = match probe.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => probe,
    };
    probe_once(socket, id, &probe, container, pod_ip)
        .await
        .map_err(|e| format!("hook of {id} failed: {e}"))
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
    let client = k.client.clone();
    tokio::spawn(async move {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, &ns);
        let Ok(ev) = serde_json::from_value(ev) else {
            return;
        };
        if let Err(e) = api.create(&kube::api::PostParams::default(), &ev).await {
            tracing::debug!(%e, "cannot record an event");
        }
    });
}

fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

/// Should an exited container start again?
fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Always" => true,
        "OnFailure" => exit_code != 0,
        _ => false,
    }
}

/// A container's crash-loop back-off, kept as the kubelet keeps it
/// (`flowcontrol.Backoff`): the first exit restarts at once, the next ones
/// wait 10 s, 20 s, 40 s … up to 5 minutes; an exit more than 10 minutes
/// after the last restart counts as a first one again. In memory only, as
/// the kubelet's: a restarted agent starts the count afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CrashBackoff {
    /// What the next exit waits.
    delay: Duration,
    /// When it was last restarted.
    restarted: tokio::time::Instant,
}

impl CrashBackoff {
    const INITIAL: Duration = Duration::from_secs(10);
    /// Twice the longest delay, as upstream.
    const RESET: Duration = Duration::from_secs(600);

    /// How long a container that exited at `exited` waits before it
    /// restarts (zero: at once).
    fn wait(prev: Option<Self>, exited: tokio::time::Instant) -> Duration {
        match prev {
            Some(b) if exited.saturating_duration_since(b.restarted) <= Self::RESET => b.delay,
            _ => Duration::ZERO,
        }
    }

    /// The back-off after a restart at `now` of a container that exited
    /// at `exited`.
    fn restart(
        prev: Option<Self>,
        exited: tokio::time::Instant,
        now: tokio::time::Instant,
    ) -> Self {
        let delay = match prev {
            Some(b) if exited.saturating_duration_since(b.restarted) <= Self::RESET => {
                (b.delay * 2).min(MAX_BACKOFF)
            }
            _ => Self::INITIAL,
        };
        CrashBackoff {
            delay,
            restarted: now,
        }
    }
}

async fn sync(k: &Arc<Kubelet>, pod: &Value, state: &mut WorkerState) -> Result<(), String> {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        terminate(k, pod).await;
        teardown(k, &uid).await;
        let api: Api<Pod> = Api::namespaced(
            k.client.clone(),
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        );
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(format!("deleting the pod: {e}")),
        }
        state.torn_down = true;
        return Ok(());
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Ok(());
    }
    if !state.started && state.start_permit.is_none() {
        // A pod's first start (its files, mounts, shim, first container)
        // waits its turn: on a small machine a hundred pods starting at
        // once each get all of theirs done sooner one after another than
        // all together.
        state.start_permit = k.starts.clone().acquire_owned().await.ok();
    }
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let pod_dir = k.pod_dir(&uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    std::fs::create_dir_all(pod_dir.join("etc")).map_err(|e| e.to_string())?;
    // hostPath volumes by their type, before anything else of the pod's is
    // made; the pod waits (FailedMount) until the path is right.
    let mount_error = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|_| !state.started)
        .find_map(|v| {
            let e = super::volumes::host_path_ready(v.get("hostPath")?).err()?;
            Some(format!(
                "MountVolume.SetUp failed for volume {:?} : {e}",
                v["name"].as_str().unwrap_or_default()
            ))
        });
    if let Some(message) = mount_error {
        if state.mount_error.as_ref() != Some(&message) {
            event(k, pod, "Warning", "FailedMount", message.clone());
            state.mount_error = Some(message);
        }
        state.wake_at(tokio::time::Instant::now() + Duration::from_secs(2));
        return Ok(());
    }
    state.mount_error = None;
    // The pod's address first: /etc/hosts names it (read from disk only
    // until the pod has one, not on every sync).
    let pod_ip = match (&k.network, host_network) {
        _ if state.pod_ip.is_some() => state.pod_ip,
        (Some(net), false) => {
            let (net, id) = (net.clone(), uid.clone());
            Some(
                blocking(move || net.ipam.allocate(&id))
                    .await
                    .map_err(|e| format!("the pod's address: {e}"))?,
            )
        }
        _ => None,
    };
    write_pod_files(k, pod, &files, pod_ip).map_err(|e| format!("pod files: {e}"))?;
    mount_memory_volumes(pod, &files).await?;
    refresh_volumes(k, pod, &files, state).await;
    let host_ipc = pod.pointer("/spec/hostIPC") == Some(&Value::Bool(true));
    let hostname = pod
        .pointer("/spec/hostname")
        .and_then(Value::as_str)
        .or_else(|| pod["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    if !host_ipc {
        let shm = k.pod_dir(&uid).join("shm");
        blocking(move || mount_tmpfs(&shm, Some(64 << 20), 0o1777))
            .await
            .map_err(|e| format!("the pod's /dev/shm: {e}"))?;
    }
    // fsGroup: emptyDirs belong to that group, setgid so new files do too.
    if let Some(gid) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        use std::os::unix::fs::PermissionsExt;
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if v.get("emptyDir").is_none() {
                continue;
            }
            let dir = files.volumes.join(v["name"].as_str().unwrap_or_default());
            std::os::unix::fs::chown(&dir, None, Some(gid as u32))
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777))
                })
                .map_err(|e| format!("fsGroup on {}: {e}", dir.display()))?;
        }
    }
    if !state.pod_cgroup {
        let path = format!("{}/pod{uid}", k.cgroup_root);
        let limits = super::container::pod_resources(pod);
        blocking(move || crate::runtime::cgroup::set_limits(&path, &limits))
            .await
            .map_err(|e| format!("the pod's cgroup: {e}"))?;
        state.pod_cgroup = true;
    }
    let share_pid = super::container::shares_pid(pod);
    let (socket, mut shim_state) =
        ensure_shim(k, &uid, host_network, host_ipc, share_pid, &hostname).await?;
    for lost in lost_instances(pod, &shim_state.containers) {
        if !state.lost.iter().any(|l| l.id == lost.id) {
            tracing::warn!(pod = %pod["metadata"]["name"], container = %lost.id, "the container's shim is gone (it died, or the node restarted): counting it as ended");
            state.lost.push(lost);
        }
    }
    with_lost(&mut shim_state.containers, &state.lost);
    if state.watching.as_ref().is_none_or(|w| w.0.is_finished()) {
        let task = tokio::spawn(watch_shim(socket.clone(), state.shim_events.clone()));
        state.watching = Some(AbortOnDrop(task));
    }
    if let (Some(net), false, None) = (&k.network, host_network, state.pod_ip) {
        let (net, id, netns) = (net.clone(), uid.clone(), k.netns(&uid));
        let started = std::time::Instant::now();
        let ip = blocking(move || net.attach(&netns, &id))
            .await
            .map_err(|e| format!("the pod's network: {e}"))?;
        tracing::debug!(pod_uid = %uid, %ip, elapsed = ?started.elapsed(), "pod network ready");
        state.pod_ip = Some(ip);
        let ports = host_ports(pod, ip);
        if !ports.is_empty() {
            k.host_ports.send_modify(|all| {
                Arc::make_mut(all).insert(uid.clone(), ports);
            });
        }
    }
    let instances = latest(&shim_state.containers);
    let policy = restart_policy(pod);
    let mut failed_init = false;

    // Init containers, one at a time.
    let mut inits_done = true;
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = c["name"].as_str().unwrap_or_default();
        // A sidecar (restartable init container) only has to be running
        // for the next one to start, and restarts whenever it exits.
        let sidecar = c["restartPolicy"] == "Always";
        match instances.get(name) {
            None => {
                start_container(k, pod, c, 0, &socket, state).await?;
                inits_done = false;
                break;
            }
            Some((_, s)) if sidecar && s.status == "running" => {}
            Some((n, s)) if sidecar && s.status == "exited" => {
                if !regular_done(pod, &instances, policy) {
                    restart_later(k, pod, c, *n, &socket, state).await?;
                }
            }
            Some((_, s)) if s.status != "exited" => {
                inits_done = false;
                break;
            }
            Some((_, s)) if s.exit_code == Some(0) => {}
            Some((n, _)) => {
                inits_done = false;
                if policy == "Never" {
                    failed_init = true;
                } else {
                    restart_later(k, pod, c, *n, &socket, state).await?;
                }
                break;
            }
        }
    }
    if inits_done {
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            match instances.get(name) {
                None => start_container(k, pod, c, 0, &socket, state).await?,
                Some((n, s)) if s.status == "exited" => {
                    if should_restart(policy, s.exit_code.unwrap_or(1)) {
                        restart_later(k, pod, c, *n, &socket, state).await?;
                    }
                }
                Some(_) => {}
            }
        }
    }
    let mut shim_state = shim_call(socket.clone(), Request::State)
        .await
        .map_err(|e| e.to_string())?;
    with_lost(&mut shim_state.containers, &state.lost);
    let instances = latest(&shim_state.containers);
    // Once the regular containers are done for good, sidecars stop too.
    if regular_done(pod, &instances, policy) {
        for c in pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["restartPolicy"] != "Always" {
                continue;
            }
            if let Some((_, s)) = instances.get(c["name"].as_str().unwrap_or_default())
                && s.status == "running"
                && state.stopping.insert(s.id.clone())
            {
                let pod_ip = pod_address(k, pod, state.pod_ip);
                stop_instance(&socket, &s.id, c, pod_ip, pod_grace(pod)).await;
            }
        }
    }
    run_probes(k, pod, &instances, &socket, state).await;
    let prev = previous(&shim_state.containers, &instances);
    let status = pod_status(k, pod, &instances, &prev, state, failed_init);
    if state.last_status.as_ref() != Some(&status) {
        let api: Api<Pod> = Api::namespaced(
            k.client.clone(),
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        );
        api.patch_status(
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await
        .map_err(|e| format!("posting the pod status: {e}"))?;
        state.last_status = Some(status);
    }
    Ok(())
}

/// Have all regular (app) containers exited for good?
fn regular_done(
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    policy: &str,
) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| {
            instances
                .get(c["name"].as_str().unwrap_or_default())
                .is_some_and(|(_, s)| {
                    s.status == "exited" && !should_restart(policy, s.exit_code.unwrap_or(1))
                })
        })
}

/// Restart an exited container once its back-off has passed.
async fn restart_later(
    k: &Arc<Kubelet>,
    pod: &Value,
    c: &Value,
    n: u32,
    socket: &Path,
    state: &mut WorkerState,
) -> Result<(), String> {
    let name = c["name"].as_str().unwrap_or_default().to_owned();
    let now = tokio::time::Instant::now();
    let (until, wait, exited) = match state.backoff.get(&name).copied() {
        Some(pending) => pending,
        None => {
            // It has just exited.
            let wait = CrashBackoff::wait(state.crash_backoff.get(&name).copied(), now);
            state.backoff.insert(name.clone(), (now + wait, wait, now));
            if !wait.is_zero() {
                event(
                    k,
                    pod,
                    "Warning",
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        pod["metadata"]["name"].as_str().unwrap_or_default(),
                        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                        pod["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                );
            }
            (now + wait, wait, now)
        }
    };
    if until > now {
        state.waiting.insert(
            name.clone(),
            (
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {}s restarting failed container={name} pod={}",
                    wait.as_secs(),
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                ),
            ),
        );
        return Ok(());
    }
    state.backoff.remove(&name);
    state.waiting.remove(&name);
    let next = CrashBackoff::restart(state.crash_backoff.get(&name).copied(), exited, now);
    state.crash_backoff.insert(name, next);
    // The previous instance stays in the shim for its last state.
    start_container(k, pod, c, n + 1, socket, state).await
}

/// Start the probes that are due for the running app containers
/// (startup first; then liveness and readiness), each in a task of its own
/// so a slow probe holds up neither the pod's status nor its restarts, and
/// act on the verdicts that came back: readiness, and stopping a container
/// whose liveness or startup probe failed (it restarts by policy).
async fn run_probes(
    k: &Kubelet,
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    socket: &Path,
    state: &mut WorkerState,
) {
    let now = tokio::time::Instant::now();
    // The earliest probe that falls due after this sync.
    let mut wake: Option<tokio::time::Instant> = None;
    let live: std::collections::HashSet<String> =
        instances.values().map(|(_, s)| s.id.clone()).collect();
    // A gone instance's running probes are aborted with it.
    state.probes.retain(|id, _| live.contains(id));
    let pod_ip = pod_address(k, pod, state.pod_ip);
    let mut done: HashMap<(String, &'static str), Result<(), String>> = HashMap::new();
    for d in std::mem::take(&mut *state.probe_results.lock().expect("not poisoned")) {
        done.insert((d.id, d.kind), d.result);
    }
    let sidecars = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always");
    for c in pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(sidecars)
    {
        let name = c["name"].as_str().unwrap_or_default();
        let Some((_, cs)) = instances.get(name) else {
            continue;
        };
        if cs.status != "running" {
            continue;
        }
        let p = state.probes.entry(cs.id.clone()).or_default();
        let since = *p.since.get_or_insert(now);
        if c.get("startupProbe").is_none() {
            p.started = true;
        }
        for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let (Some(result), Some(probe)) = (
                done.remove(&(cs.id.clone(), kind)),
                c.get(kind).filter(|v| v.is_object()),
            ) else {
                continue;
            };
            p.running.remove(kind);
            let verdict = verdict(p, kind, probe, result);
            let what = match kind {
                "livenessProbe" => "Liveness",
                "readinessProbe" => "Readiness",
                _ => "Startup",
            };
            if let Some(why) = verdict.report {
                event(
                    k,
                    pod,
                    "Warning",
                    "Unhealthy",
                    format!("{what} probe failed: {}", why.trim()),
                );
            }
            if verdict.kill {
                tracing::info!(pod = %pod["metadata"]["name"], container = name, probe = kind, "probe failed, restarting the container");
                let what = what.to_lowercase();
                event(
                    k,
                    pod,
                    "Normal",
                    "Killing",
                    format!("Container {name} failed {what} probe, will be restarted"),
                );
                // The probe's own grace period, if it has one.
                let grace = probe["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or_else(|| pod_grace(pod));
                stop_instance(socket, &cs.id, c, pod_ip.clone(), grace).await;
            }
        }
        if c.get("readinessProbe").is_none() && p.started {
            p.ready = true;
        }
        if p.killed {
            continue;
        }
        // Liveness and readiness take over as soon as startup passes.
        let kinds: &[&'static str] = if p.started {
            &["livenessProbe", "readinessProbe"]
        } else {
            &["startupProbe"]
        };
        for &kind in kinds {
            let Some(probe) = c.get(kind).filter(|v| v.is_object()) else {
                continue;
            };
            if p.running.contains_key(kind) {
                // Its verdict wakes the worker.
                continue;
            }
            let secs = |f: &str, d: u64| probe[f].as_u64().unwrap_or(d);
            let first = since + Duration::from_secs(secs("initialDelaySeconds", 0));
            let due = p.next.get(kind).copied().unwrap_or(first).max(first);
            if now < due {
                wake = Some(wake.map_or(due, |w: tokio::time::Instant| w.min(due)));
                continue;
            }
            let next = now + Duration::from_secs(secs("periodSeconds", 10).max(1));
            p.next.insert(kind, next);
            let (socket, id, probe, c, pod_ip) = (
                socket.to_owned(),
                cs.id.clone(),
                probe.clone(),
                c.clone(),
                pod_ip.clone(),
            );
            let (results, events) = (state.probe_results.clone(), state.shim_events.clone());
            let task = tokio::spawn(async move {
                let result = probe_once(&socket, &id, &probe, &c, pod_ip.as_deref()).await;
                results
                    .lock()
                    .expect("not poisoned")
                    .push(ProbeDone { id, kind, result });
                events.notify_one();
            });
            p.running.insert(kind, AbortOnDrop(task));
        }
    }
    if let Some(w) = wake {
        state.wake_at(w);
    }
}

/// What one probe result means for its container.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    /// Report this failure (once per run of failures: the kubelet's
    /// recorder folds repeats into one event with a count).
    report: Option<String>,
    /// The failure threshold of a liveness or startup probe was reached:
    /// stop the container.
    kill: bool,
}

/// Count one result of probe `kind` against its thresholds.
fn verdict(
    p: &mut Probes,
    kind: &'static str,
    probe: &Value,
    result: Result<(), String>,
) -> Verdict {
    let secs = |f: &str, d: u64| probe[f].as_u64().unwrap_or(d);
    let (success_threshold, failure_threshold) = (
        secs("successThreshold", 1).max(1) as u32,
        secs("failureThreshold", 3).max(1) as u32,
    );
    let mut v = Verdict::default();
    match result {
        Ok(()) => {
            p.failures.insert(kind, 0);
            let n = p.successes.entry(kind).or_default();
            *n += 1;
            if *n >= success_threshold {
                match kind {
                    "startupProbe" => p.started = true,
                    "readinessProbe" => p.ready = true,
                    _ => {}
                }
            }
        }
        Err(why) => {
            p.successes.insert(kind, 0);
            let n = p.failures.entry(kind).or_default();
            if *n == 0 {
                v.report = Some(why);
            }
            *n += 1;
            if *n >= failure_threshold {
                match kind {
                    "readinessProbe" => p.ready = false,
                    _ if !p.killed => {
                        p.killed = true;
                        p.ready = false;
                        v.kill = true;
                    }
                    _ => {}
                }
            }
        }
    }
    v
}

/// The pod's `terminationGracePeriodSeconds` (30 s when not set).
fn pod_grace(pod: &Value) -> u64 {
    pod.pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30)
}

/// Stop a container instance so it restarts (or a sidecar at the pod's
/// end), in the background, with `grace` seconds ([`kill_container`]).
async fn stop_instance(
    socket: &Path,
    id: &str,
    container: &Value,
    pod_ip: Option<String>,
    grace: u64,
) {
    let (socket, id, container) = (socket.to_owned(), id.to_owned(), container.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    tokio::spawn(async move {
        kill_container(&socket, &id, &container, pod_ip.as_deref(), deadline).await
    });
}

/// The kubelet's killContainer for instance `id`: its preStop hook
/// within `deadline`, SIGTERM, then SIGKILL at `deadline` — or 2 s after
/// the hook, when the hook took the time up. Why the hook failed, if it
/// did.
async fn kill_container(
    socket: &Path,
    id: &str,
    container: &Value,
    pod_ip: Option<&str>,
    deadline: tokio::time::Instant,
) -> Option<String> {
    let mut kill_at = deadline;
    let mut hook_failed = None;
    if let Some(hook) = container.pointer("/lifecycle/preStop") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        hook_failed =
            match tokio::time::timeout(left, run_hook(socket, id, hook, container, pod_ip, left))
                .await
            {
                Ok(r) => r.err(),
                Err(_) => Some(format!(
                    "hook of {id} did not finish within the grace period"
                )),
            };
        kill_at = kill_at.max(tokio::time::Instant::now() + MIN_STOP_GRACE);
    }
    let signal = |signal: i32| {
        shim_call(
            socket.to_owned(),
            Request::Kill {
                id: id.to_owned(),
                signal,
            },
        )
    };
    let _ = signal(15).await;
    while tokio::time::Instant::now() < kill_at {
        match shim_call(socket.to_owned(), Request::State).await {
            Ok(s)
                if s.containers
                    .iter()
                    .any(|x| x.id == id && x.status == "running") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return hook_failed,
        }
    }
    let _ = signal(9).await;
    hook_failed
}

/// A named or numbered container port.
fn probe_port(port: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = port.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// The address the agent dials for the pod's httpGet and tcpSocket probes
/// and hooks that name no host: the node's for a hostNetwork pod, else the
/// pod's own (`known`, or the one in its status).
fn pod_address(k: &Kubelet, pod: &Value, known: Option<std::net::Ipv4Addr>) -> Option<String> {
    pod_ip(k, pod, known).or_else(|| {
        pod.pointer("/status/podIP")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// The services' variables for `pod`'s containers. Like the kubelet, it
/// waits for the first list of services (a few seconds at most), so a
/// pod started right after the agent still gets them.
async fn service_env(k: &Kubelet, pod: &Value) -> Vec<(String, String)> {
    let mut services = k.services.clone();
    if !services.has_changed().unwrap_or(true) {
        let _ = tokio::time::timeout(Duration::from_secs(5), services.changed()).await;
    }
    let services = services.borrow().clone();
    super::container::service_env(
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod.pointer("/spec/enableServiceLinks") != Some(&Value::Bool(false)),
        services.values().map(|s| &**s),
    )
}

/// The pod's IP: the node's for a hostNetwork pod, else `known` (the one
/// its network was given).
fn pod_ip(k: &Kubelet, pod: &Value, known: Option<std::net::Ipv4Addr>) -> Option<String> {
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Some(k.node_ip.clone());
    }
    known.map(|ip| ip.to_string())
}

/// Run one probe (or hook): an exec through the shim, an httpGet or
/// tcpSocket from the node to the probe's `host` or else `pod_ip`, as the
/// kubelet does.
async fn probe_once(
    socket: &Path,
    id: &str,
    probe: &Value,
    container: &Value,
    pod_ip: Option<&str>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let host = |spec: &Value| -> Result<String, String> {
        match spec["host"].as_str().filter(|h| !h.is_empty()) {
            Some(h) => Ok(h.to_owned()),
            None => pod_ip
                .map(str::to_owned)
                .ok_or_else(|| "the pod has no IP address yet".to_owned()),
        }
    };
    let result = if let Some(cmd) = probe.pointer("/exec/command").and_then(Value::as_array) {
        let args = cmd
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        exec_probe(socket, id, args, timeout).await
    } else if let Some(tcp) = probe.get("tcpSocket") {
        let Some(port) = probe_port(&tcp["port"], container) else {
            return Err(format!("no container port {}", tcp["port"]));
        };
        super::probe::tcp(&host(tcp)?, port, timeout).await
    } else if let Some(http) = probe.get("httpGet") {
        let Some(port) = probe_port(&http["port"], container) else {
            return Err(format!("no container port {}", http["port"]));
        };
        let get = super::probe::HttpGet {
            https: http["scheme"] == "HTTPS",
            host: host(http)?,
            port,
            path: http["path"].as_str().unwrap_or("/").to_owned(),
            headers: http["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| {
                    Some((
                        h["name"].as_str()?.to_owned(),
                        h["value"].as_str()?.to_owned(),
                    ))
                })
                .collect(),
        };
        super::probe::http(&get, timeout).await
    } else if let Some(g) = probe.get("grpc") {
        let Some(port) = g["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            return Err(format!("no port {}", g["port"]));
        };
        // gRPC probes have no host field: always the pod's address.
        let host = pod_ip.ok_or("the pod has no IP address yet")?;
        super::probe::grpc(host, port, g["service"].as_str().unwrap_or(""), timeout).await
    } else {
        return Err("the probe names no handler (exec, httpGet, tcpSocket or grpc)".into());
    };
    if let Err(e) = &result {
        tracing::debug!(container = id, message = %e, "probe failed");
    }
    result
}

/// An exec probe or hook: the command runs as a streaming exec, so the
/// shim goes on serving the pod while it runs; here it is waited for up
/// to `timeout`, and killed (the shim sees us hang up) when it overruns.
/// Its output (the first 10 KiB) is the failure message.
async fn exec_probe(
    socket: &Path,
    id: &str,
    args: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    const KEEP: u64 = 10 * 1024;
    let (socket, id) = (socket.to_owned(), id.to_owned());
    blocking(move || {
        let mut session = shim::exec_stream(&socket, &id, args, false, false, None, true)
            .map_err(|e| e.to_string())?;
        let readers: Vec<_> = std::mem::take(&mut session.fds)
            .into_iter()
            .map(|fd| {
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut out = Vec::new();
                    let mut f = std::fs::File::from(fd);
                    let _ = (&mut f).take(KEEP).read_to_end(&mut out);
                    // Drain the rest so the command never blocks on a full pipe.
                    let _ = std::io::copy(&mut f, &mut std::io::sink());
                    out
                })
            })
            .collect();
        match session.wait_for(timeout).map_err(|e| e.to_string())? {
            Some(code) => {
                let output: Vec<u8> = readers
                    .into_iter()
                    .filter_map(|r| r.join().ok())
                    .flatten()
                    .collect();
                if code == 0 {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&output).trim_end().to_owned();
                    Err(if text.is_empty() {
                        format!("command exited with {code}")
                    } else {
                        text
                    })
                }
            }
            // Dropping the session hangs up: the shim kills the command.
            None => Err(format!(
                "command timed out after {}s",
                timeout.as_secs_f32()
            )),
        }
    })
    .await
}

/// The pod's status from what the shim reports.
fn pod_status(
    k: &Kubelet,
    pod: &Value,
    instances: &HashMap<String, (u32, ContainerState)>,
    previous: &HashMap<String, ContainerState>,
    state: &WorkerState,
    failed_init: bool,
) -> Value {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let status_of = |c: &Value| -> Value {
        let name = c["name"].as_str().unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let image_name = ImageRef::parse(image)
            .map(|r| r.to_string())
            .unwrap_or_default();
        let image_id = k
            .images
            .get(&image_name)
            .map(|i| {
                format!(
                    "{}@{}",
                    ImageRef::parse(image).map(|r| r.name()).unwrap_or_default(),
                    i.manifest_digest
                )
            })
            .unwrap_or_default();
        let mut s = json!({"name": name, "image": image_name, "imageID": image_id, "ready": false, "started": false, "restartCount": 0});
        // An instance that ended: its code, reason (`OOMKilled` from the
        // shim, else by the code) and termination message.
        let terminated = |cs: &ContainerState| -> Value {
            let code = cs.exit_code.unwrap_or(0);
            let reason = cs
                .reason
                .clone()
                .unwrap_or_else(|| if code == 0 { "Completed" } else { "Error" }.to_owned());
            let mut t = json!({"exitCode": code, "reason": reason,
                "startedAt": cs.started_at, "finishedAt": cs.finished_at,
                "containerID": format!("orch://{uid}/{}", cs.id)});
            if let Some(message) = termination_message(k, pod, c, &cs.id, code) {
                t["message"] = json!(message);
            }
            t
        };
        match instances.get(name) {
            Some((n, cs)) => {
                let cid = format!("orch://{uid}/{}", cs.id);
                s["containerID"] = json!(cid);
                s["restartCount"] = json!(n);
                match cs.status.as_str() {
                    "running" => {
                        s["state"] = json!({"running": {"startedAt": cs.started_at}});
                        if let Some(prev) = previous.get(name) {
                            s["lastState"] = json!({"terminated": terminated(prev)});
                        }
                        let p = state.probes.get(&cs.id);
                        s["ready"] = json!(p.is_some_and(|p| p.ready));
                        s["started"] = json!(p.is_some_and(|p| p.started));
                    }
                    "exited" => {
                        let terminated = terminated(cs);
                        match state.waiting.get(name) {
                            Some((reason, message)) => {
                                s["state"] =
                                    json!({"waiting": {"reason": reason, "message": message}});
                                s["lastState"] = json!({"terminated": terminated});
                            }
                            None => s["state"] = json!({"terminated": terminated}),
                        }
                    }
                    _ => s["state"] = json!({"waiting": {"reason": "ContainerCreating"}}),
                }
            }
            None => {
                let (reason, message) = state
                    .waiting
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                s["state"] = json!({"waiting": {"reason": reason, "message": message}});
            }
        }
        s
    };
    let inits: Vec<Value> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(status_of)
        .collect();
    let apps: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(status_of)
        .collect();
    let code = |s: &Value| {
        s.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let policy = restart_policy(pod);
    let sidecars: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str())
        .collect();
    let inits_done = inits.iter().all(|s| {
        if sidecars.contains(&s["name"].as_str().unwrap_or_default()) {
            // Started once: restarting or stopped with the pod, it no
            // longer holds the pod back.
            s["started"] == true
                || s.get("lastState").is_some()
                || s.pointer("/state/terminated").is_some()
        } else {
            s.pointer("/state/terminated").is_some() && code(s) == 0
        }
    });
    // Upstream's getPhase: a container waiting to restart counts as stopped.
    let running = apps
        .iter()
        .filter(|s| s.pointer("/state/running").is_some())
        .count();
    let waiting = apps
        .iter()
        .filter(|s| s.pointer("/state/waiting").is_some() && s.get("lastState").is_none())
        .count();
    let stopped = apps.len() - running - waiting;
    let succeeded = apps
        .iter()
        .filter(|s| s.pointer("/state/terminated").is_some() && code(s) == 0)
        .count();
    // Sidecars still stopping keep a finished pod Running until they end.
    let sidecars_running = inits.iter().any(|s| {
        sidecars.contains(&s["name"].as_str().unwrap_or_default())
            && s.pointer("/state/running").is_some()
    });
    let phase = if failed_init {
        "Failed"
    } else if running == 0 && stopped == apps.len() && sidecars_running {
        "Running"
    } else if !inits_done || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    };
    // Ready: every app container and every sidecar (upstream's
    // GenerateContainersReadyCondition).
    let unready: Vec<&str> = apps
        .iter()
        .chain(
            inits
                .iter()
                .filter(|s| sidecars.contains(&s["name"].as_str().unwrap_or_default())),
        )
        .filter(|s| s["ready"] != true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let all_ready = !apps.is_empty() && unready.is_empty();
    let started_at = pod
        .pointer("/status/startTime")
        .cloned()
        .unwrap_or_else(|| json!(now()));
    // A condition keeps the time it last changed (from our last status,
    // else the pod's); reasons and messages as the kubelet words them.
    let since = |kind: &str, value: &str| -> Value {
        [state.last_status.as_ref(), pod.get("status")]
            .into_iter()
            .flatten()
            .filter_map(|s| s["conditions"].as_array())
            .flatten()
            .find(|c| c["type"] == kind)
            .filter(|c| c["status"] == value)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .filter(|t| !t.is_null())
            .unwrap_or_else(|| json!(now()))
    };
    let cond = |kind: &str, ok: bool, why: Option<(&str, String)>| {
        let value = if ok { "True" } else { "False" };
        // Explicit nulls: the status goes as a strategic merge patch, which
        // merges conditions by type and would keep an old reason.
        let (reason, message) = why.unzip();
        json!({"type": kind, "status": value, "lastProbeTime": null,
            "lastTransitionTime": since(kind, value),
            "reason": reason, "message": message.filter(|m| !m.is_empty())})
    };
    let not_ready = (!all_ready).then(|| {
        if phase == "Succeeded" {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        }
    });
    let uninitialized: Vec<&str> = inits
        .iter()
        .filter(|s| {
            if sidecars.contains(&s["name"].as_str().unwrap_or_default()) {
                s["started"] != true
            } else {
                s.pointer("/state/terminated").is_none() || code(s) != 0
            }
        })
        .filter_map(|s| s["name"].as_str())
        .collect();
    let not_initialized = (!inits_done).then(|| {
        (
            "ContainersNotInitialized",
            format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            ),
        )
    });
    // The sandbox is up once the pod has its address or a container.
    let sandbox_ready = pod_ip(k, pod, state.pod_ip).is_some() || !instances.is_empty();
    let scheduled = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_else(|| cond("PodScheduled", true, None));
    let mut status = json!({
        "phase": phase,
        "hostIP": k.node_ip,
        "hostIPs": [{"ip": k.node_ip}],
        "startTime": started_at,
        "conditions": [
            cond("PodReadyToStartContainers", sandbox_ready, None),
            cond("Initialized", inits_done, not_initialized),
            cond("ContainersReady", all_ready, not_ready.clone()),
            cond("Ready", all_ready, not_ready),
            scheduled,
        ],
        "containerStatuses": apps,
        "qosClass": pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    if let Some(ip) = pod_ip(k, pod, state.pod_ip) {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    status
}

/// What a container left in its terminationMessagePath (4 KiB at most),
/// or, with FallbackToLogsOnError and a failure, the end of its log.
fn termination_message(k: &Kubelet, pod: &Value, c: &Value, id: &str, code: i32) -> Option<String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let file = k
        .pod_dir(uid)
        .join("containers")
        .join(format!("{id}.termination-log"));
    let mut text = std::fs::read(&file).unwrap_or_default();
    text.truncate(4096);
    if text.is_empty() && code != 0 && c["terminationMessagePolicy"] == "FallbackToLogsOnError" {
        let (name, restart) = id.rsplit_once('.').unwrap_or((id, "0"));
        let log = k
            .log_dir
            .join(format!(
                "{}_{}_{uid}",
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ))
            .join(name)
            .join(format!("{restart}.log"));
        let content = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = content
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        text = tail.as_bytes()[start..].to_vec();
    }
    (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned())
}

/// Stop the pod's containers: SIGTERM, the grace period, SIGKILL.
async fn terminate(k: &Kubelet, pod: &Value) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let socket = k.shim_dir(uid).join("shim.sock");
    let Ok(state) = shim_call(socket.clone(), Request::State).await else {
        return;
    };
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(30);
    // One budget for the whole pod: preStop hooks and SIGTERM share it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    let running: Vec<&str> = state
        .containers
        .iter()
        .filter(|c| c.status == "running")
        .map(|c| c.id.as_str())
        .collect();
    let of = |list: &str| -> Vec<(String, Value)> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                running
                    .iter()
                    .filter(|id| id.rsplit_once('.').is_some_and(|(n, _)| c["name"] == n))
                    .map(|id| ((*id).to_owned(), c.clone()))
            })
            .collect()
    };
    // The app containers together, then the sidecars in the reverse of
    // their order, each when the ones before it have stopped.
    stop_containers(k, pod, &socket, of("containers"), deadline).await;
    let mut sidecars = of("initContainers");
    sidecars.reverse();
    for sidecar in sidecars {
        stop_containers(k, pod, &socket, vec![sidecar], deadline).await;
    }
}

/// Stop the container instances `containers` (id, spec) at once, each by
/// [`kill_container`], with their events.
async fn stop_containers(
    k: &Kubelet,
    pod: &Value,
    socket: &Path,
    containers: Vec<(String, Value)>,
    deadline: tokio::time::Instant,
) {
    let pod_ip = pod_address(k, pod, None);
    let pod_ip = pod_ip.as_deref();
    let stops = containers.into_iter().map(|(id, c)| async move {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        event(
            k,
            pod,
            "Normal",
            "Killing",
            format!("Stopping container {name}"),
        );
        if let Some(message) = kill_container(socket, &id, &c, pod_ip, deadline).await {
            event(
                k,
                pod,
                "Warning",
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
    });
    futures::future::join_all(stops).await;
}

/// What a container gets between SIGTERM and SIGKILL at least, when its
/// preStop hook used the grace period up (the kubelet's
/// `minimumGracePeriodInSeconds`).
const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// Remove everything of the pod on this node: containers, shim, root
/// filesystems, network namespace, directories (logs stay until the log
/// directory is cleaned).
/// Remove the logs (`<n>.log` and its rotated `<n>.log.<time>`) of the
/// instances before the last two, `restart` being the newest.
fn remove_old_logs(dir: &Path, restart: u32) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let instance = name
            .to_str()
            .and_then(|n| n.split_once(".log"))
            .filter(|(_, rest)| rest.is_empty() || rest.starts_with('.'))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        if instance.is_some_and(|n| n + 2 <= restart) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The pod's log directory (`<ns>_<name>_<uid>`: names have no `_`).
fn pod_log_dirs(log_dir: &Path, uid: &str) -> Vec<PathBuf> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path())
        .collect()
}

async fn teardown(k: &Kubelet, uid: &str) {
    let socket = k.shim_dir(uid).join("shim.sock");
    if let Ok(state) = shim_call(socket.clone(), Request::State).await {
        for c in state.containers {
            let _ = shim_call(socket.clone(), Request::Delete { id: c.id }).await;
        }
        let _ = shim_call(socket.clone(), Request::Shutdown).await;
    }
    let (pod_dir, shim_dir, netns) = (k.pod_dir(uid), k.shim_dir(uid), k.netns(uid));
    let log_dir = k.log_dir.clone();
    let uid = uid.to_owned();
    let cgroup_root = k.cgroup_root.clone();
    let network = k.network.clone();
    k.host_ports
        .send_if_modified(|all| Arc::make_mut(all).remove(&uid).is_some());
    blocking(move || {
        if let Some(net) = network
            && let Err(e) = net.detach(&uid)
        {
            tracing::warn!(pod_uid = %uid, error = %e, "removing the pod's network");
        }
        if let Ok(entries) = std::fs::read_dir(pod_dir.join("containers")) {
            for e in entries.flatten() {
                let _ = rootfs::unmount(&e.path().join("rootfs"));
            }
        }
        let _ = crate::runtime::netns::remove(&netns);
        for pin in ["ipc", "uts"] {
            let _ = crate::runtime::netns::remove(&shim_dir.join(pin));
        }
        let _ = rootfs::unmount(&pod_dir.join("shm"));
        for e in std::fs::read_dir(pod_dir.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = rootfs::unmount(&e.path());
        }
        crate::runtime::cgroup::remove(&format!("{cgroup_root}/pod{uid}"));
        let _ = std::fs::remove_dir_all(&pod_dir);
        let _ = std::fs::remove_dir_all(&shim_dir);
        // Its logs go with it, as the kubelet removes a deleted pod's.
        for dir in pod_log_dirs(&log_dir, &uid) {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_whose_shim_is_gone_count_as_ended() {
        let pod = json!({"status": {
        "initContainerStatuses": [
            {"name": "init", "containerID": "orch://u/init.0",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "containerID": "orch://u/init.0",
                 "startedAt": "2026-12-06T10:00:00Z", "finishedAt": "2026-12-06T10:00:01Z"}}}],
        "containerStatuses": [
            {"name": "app", "containerID": "orch://u/app.3",
             "state": {"running": {"startedAt": "2026-12-06T10:00:02Z"}}},
            {"name": "crashy", "containerID": "orch://u/crashy.1",
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "containerID": "orch://u/crashy.1"}}},
            {"name": "known", "containerID": "orch://u/known.0", "state": {"running": {}}},
            {"name": "new", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}});
        let known = [ContainerState {
            id: "known.0".into(),
            status: "running".into(),
            ..ContainerState::default()
        }];
        let lost = lost_instances(&pod, &known);
        let summary: Vec<(&str, Option<i32>, Option<&str>)> = lost
            .iter()
            .map(|l| (l.id.as_str(), l.exit_code, l.reason.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                // A finished init container stays finished.
                ("init.0", Some(0), Some("Completed")),
                // A running one ended without a word: 255, Unknown.
                ("app.3", Some(255), Some("Unknown")),
                // One that had ended keeps how.
                ("crashy.1", Some(2), Some("Error")),
            ]
        );
        assert!(lost.iter().all(|l| l.status == "exited"));
        assert_eq!(lost[1].started_at.as_deref(), Some("2026-12-06T10:00:02Z"));
        // The newest instance is the lost one: the next is app.4.
        let mut all = known.to_vec();
        with_lost(&mut all, &lost);
        assert_eq!(latest(&all)["app"].0, 3);
    }

    #[test]
    fn only_the_last_two_instances_keep_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0.log",
            "1.log",
            "1.log.20261206-120000.5",
            "2.log",
            "3.log",
            "3.log.20261206-120001.5",
            "10.log",
            "notes",
            "x.log",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        remove_old_logs(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "10.log",
                "2.log",
                "3.log",
                "3.log.20261206-120001.5",
                "notes",
                "x.log"
            ]
        );
        let logs = tempfile::tempdir().unwrap();
        for d in ["shop_web_u-1", "shop_web_u-12", "default_api_u-1"] {
            std::fs::create_dir(logs.path().join(d)).unwrap();
        }
        let mut found = pod_log_dirs(logs.path(), "u-1");
        found.sort();
        assert_eq!(
            found,
            [
                logs.path().join("default_api_u-1"),
                logs.path().join("shop_web_u-1")
            ]
        );
    }

    #[test]
    fn pod_files_are_rewritten_in_place_and_only_when_they_change() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write_if_changed(&path, b"10.42.0.7\tweb\n").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        write_if_changed(&path, b"10.42.0.7\tweb\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), old);
        write_if_changed(&path, b"10.42.0.8\tweb\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_ne!(meta.modified().unwrap(), old);
        assert_eq!(meta.ino(), ino, "the same inode: containers bind-mount it");
        assert_eq!(std::fs::read(&path).unwrap(), b"10.42.0.8\tweb\n");
    }

    #[test]
    fn resolv_conf_follows_dns_policy_and_merges_dns_config() {
        let host = "# generated\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n";
        let pod = |spec: Value| json!({"metadata": {"namespace": "shop"}, "spec": spec});
        let r = |spec: Value, host_net: bool| {
            resolv_conf(&pod(spec), host_net, "10.43.0.10", "cluster.local", host)
        };
        assert_eq!(
            r(json!({}), false),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        // hostNetwork pods take the node's unless ClusterFirstWithHostNet.
        assert_eq!(
            r(json!({}), true),
            "search lan\nnameserver 192.168.1.1\noptions edns0\n"
        );
        assert!(r(json!({"dnsPolicy": "ClusterFirstWithHostNet"}), true).contains("10.43.0.10"));
        assert_eq!(
            r(json!({"dnsPolicy": "Default"}), false),
            r(json!({}), true)
        );
        // dnsConfig merges into any policy; an option replaces one of its name.
        let merged = r(
            json!({"dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["corp"],
                   "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}),
            false,
        );
        assert_eq!(
            merged,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp\nnameserver 10.43.0.10\nnameserver 1.1.1.1\noptions ndots:2 rotate\n"
        );
        assert_eq!(
            r(
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["9.9.9.9"], "options": [{"name": "ndots", "value": "1"}]}}),
                false
            ),
            "nameserver 9.9.9.9\noptions ndots:1\n"
        );
    }

    #[test]
    fn restarts_follow_the_policy_and_back_off() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn crashes_restart_at_once_then_back_off_doubling_and_reset_after_a_long_run() {
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        // Exits one second after each restart: 0, 10, 20, 40, … 300, 300.
        let (mut b, mut now, mut waits) = (None, t0, Vec::new());
        for _ in 0..9 {
            let exited = now + s(1);
            let wait = CrashBackoff::wait(b, exited);
            waits.push(wait.as_secs());
            now = exited + wait;
            b = Some(CrashBackoff::restart(b, exited, now));
        }
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        // Ten minutes of running since the last restart: a first exit again.
        let exited = now + s(601);
        assert_eq!(CrashBackoff::wait(b, exited), Duration::ZERO);
        let b = CrashBackoff::restart(b, exited, exited);
        assert_eq!(b.delay, s(10));
        assert_eq!(CrashBackoff::wait(Some(b), exited + s(1)), s(10));
    }

    #[test]
    fn probe_results_count_against_their_thresholds() {
        let mut p = Probes::default();
        let probe = json!({"failureThreshold": 2, "successThreshold": 2});
        let fail = || Err::<(), _>("down".to_owned());
        // Readiness: two successes make it ready, two failures unready;
        // only the first failure of a run is reported.
        assert_eq!(
            verdict(&mut p, "readinessProbe", &probe, Ok(())),
            Verdict::default()
        );
        assert!(!p.ready);
        verdict(&mut p, "readinessProbe", &probe, Ok(()));
        assert!(p.ready);
        let first = verdict(&mut p, "readinessProbe", &probe, fail());
        assert_eq!(first.report.as_deref(), Some("down"));
        assert!(p.ready && !first.kill);
        let second = verdict(&mut p, "readinessProbe", &probe, fail());
        assert_eq!(second, Verdict::default());
        assert!(!p.ready);
        // Liveness: the threshold kills once, however many failures follow.
        verdict(&mut p, "livenessProbe", &probe, fail());
        assert!(verdict(&mut p, "livenessProbe", &probe, fail()).kill);
        assert!(!verdict(&mut p, "livenessProbe", &probe, fail()).kill);
        // Startup: one success (the default threshold) marks it started.
        let mut p = Probes::default();
        verdict(&mut p, "startupProbe", &json!({}), Ok(()));
        assert!(p.started);
    }

    #[test]
    fn the_newest_instance_of_each_container_wins() {
        let s = |id: &str, status: &str| ContainerState {
            id: id.into(),
            pid: 1,
            status: status.into(),
            exit_code: None,
            started_at: None,
            finished_at: None,
            reason: None,
        };
        let l = latest(&[
            s("web.0", "exited"),
            s("web.2", "running"),
            s("web.1", "exited"),
            s("db.0", "running"),
        ]);
        assert_eq!(l["web"].0, 2);
        assert_eq!(l["web"].1.status, "running");
        assert_eq!(l["db"].0, 0);
    }
}
