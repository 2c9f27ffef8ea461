//! The pod worker's seam over the runtime and the pod network: a pod's
//! sandbox (its shim and namespaces, its address and links), its
//! containers (create, kill, remove, state and exit records), exec and exit
//! reports, and what the pod mounts and limits on the node (tmpfs volumes
//! and `/dev/shm`, its cgroup, the containers' root filesystems).
//! [`ShimRuntime`] runs over the shims (`runtime::shim`, `runtime::spawn`),
//! mounts, cgroups and netlink (`net::pod`); the fake in `fake.rs` keeps it
//! all in memory, so unit tests drive the worker's whole sync without root.
//! What the worker decides (which container starts, when, what the status
//! says) stays out of here, and so do plain files in the pod's directories
//! (`/etc/hosts`, bundles' `config.json`, logs), which a test points at a
//! temporary directory.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::blocking;
use crate::runtime::rootfs;
use crate::runtime::shim::{self, ContainerState, Request};

/// What failed in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the pod's shim failed (it may not be running).
    #[error(transparent)]
    Shim(#[from] shim::Error),
    /// The shim could not be started.
    #[error(transparent)]
    Spawn(#[from] crate::runtime::spawn::Error),
    /// The shim was started but does not answer.
    #[error("the shim did not come up ({source}); see {}", log.display())]
    NotUp {
        log: PathBuf,
        #[source]
        source: shim::Error,
    },
    /// The pod network refused an address or a link.
    #[error("{0}")]
    Network(String),
    /// A tmpfs could not be mounted.
    #[error("mounting a tmpfs at {}: {source}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pod's cgroup could not be made or limited.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The namespaces a pod's sandbox gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxSpec {
    /// The node's network (no namespace, no address of its own).
    pub host_network: bool,
    /// The node's IPC namespace.
    pub host_ipc: bool,
    /// One PID namespace for all containers.
    pub share_pid: bool,
    /// The UTS namespace's hostname.
    pub hostname: String,
}

/// One container instance to create and start: `<name>.<restart>`, its
/// OCI bundle (with `config.json` written), its log and image layers.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateContainer {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub layers: Vec<PathBuf>,
}

/// The pod worker's runtime. Every call names the pod by UID; futures are
/// `'static` so the worker can hand them to tasks of their own.
pub trait PodRuntime: Send + Sync {
    /// Start the pod's sandbox unless it runs; the container instances it
    /// has (with their exit records).
    fn start_sandbox(
        &self,
        uid: &str,
        spec: &SandboxSpec,
    ) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>>;

    /// The container instances of the pod's sandbox; an error when it has
    /// none running.
    fn containers(&self, uid: &str) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>>;

    /// Ring `events` for each container exit of the pod, and once more
    /// when its sandbox goes away.
    fn watch_exits(&self, uid: &str, events: Arc<tokio::sync::Notify>) -> BoxFuture<'static, ()>;

    /// Create and start a container instance.
    fn create_container(
        &self,
        uid: &str,
        container: CreateContainer,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Send `signal` to a container instance.
    fn kill(&self, uid: &str, id: &str, signal: i32) -> BoxFuture<'static, Result<(), Error>>;

    /// Remove a container instance (and its exit record).
    fn remove(&self, uid: &str, id: &str) -> BoxFuture<'static, Result<(), Error>>;

    /// Run `args` in a container instance for at most `timeout`: `Ok` on
    /// exit code 0, else the failure as the probe reports it (the
    /// command's output, or its exit code, or the time-out).
    fn exec(
        &self,
        uid: &str,
        id: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// Give the pod its address (the same one again if it has one).
    fn allocate_address(&self, uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>>;

    /// Link the pod's network namespace to the pod network; its address.
    fn attach_network(&self, uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>>;

    /// Remove the pod's containers, stop its shim, free its address and
    /// links and remove its namespace pins. Best effort: what is gone
    /// already is skipped, failures are logged.
    fn remove_sandbox(&self, uid: &str) -> BoxFuture<'static, ()>;

    /// Does this node give pods addresses of their own (else they get
    /// loopback only)?
    fn has_network(&self) -> bool;

    /// Free the addresses and links of pods not in `live`; how many.
    fn reconcile_network(&self, live: HashSet<String>) -> BoxFuture<'static, Result<usize, Error>>;

    /// Mount a tmpfs at `dir` (of `size` bytes, its root directory `mode`)
    /// unless one is there: `/dev/shm` and in-memory volumes.
    fn mount_tmpfs(
        &self,
        dir: PathBuf,
        size: Option<u64>,
        mode: u32,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Make the pod's cgroup and give it the pod's limits.
    fn set_pod_limits(
        &self,
        uid: &str,
        limits: crate::runtime::spec::Resources,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Remove a container instance's bundle directory, its root
    /// filesystem unmounted first. Best effort.
    fn remove_bundle(&self, bundle: PathBuf) -> BoxFuture<'static, ()>;

    /// Unmount what the pod has mounted under its directory (container
    /// roots, `/dev/shm`, in-memory volumes) and remove its cgroup, so
    /// its directories can go. Best effort.
    fn release_pod(&self, uid: &str) -> BoxFuture<'static, ()>;
}

/// The real runtime: a shim per pod under `<run_dir>/pods/<uid>`, network
/// namespaces under `<run_dir>/netns`, the pod network over netlink.
pub struct ShimRuntime {
    pub run_dir: PathBuf,
    /// `<data-dir>/pods`: the pods' own directories (kept mounted in the
    /// shim's mount namespace).
    pub pods_dir: PathBuf,
    /// Mounts the shims leave out (other pods').
    pub mount_dirs: Vec<PathBuf>,
    pub log_limits: crate::runtime::logs::LogLimits,
    /// The pods' bridge, addresses and veths (`None`: loopback only).
    pub network: Option<Arc<crate::net::pod::PodNetwork>>,
    /// Parent of the pods' cgroups: `<root>/pod<uid>`.
    pub cgroup_root: String,
}

impl ShimRuntime {
    fn shim_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(uid)
    }

    fn socket(&self, uid: &str) -> PathBuf {
        self.shim_dir(uid).join("shim.sock")
    }

    fn netns(&self, uid: &str) -> PathBuf {
        self.run_dir.join("netns").join(uid)
    }

    fn network(&self) -> Result<Arc<crate::net::pod::PodNetwork>, Error> {
        self.network
            .clone()
            .ok_or_else(|| Error::Network("this node has no pod network".into()))
    }

    fn shim_options(&self, uid: &str, spec: &SandboxSpec) -> crate::runtime::spawn::ShimOptions {
        let dir = self.shim_dir(uid);
        let netns = self.netns(uid);
        crate::runtime::spawn::ShimOptions {
            network: (!spec.host_network)
                .then(|| (netns.clone(), dir.join("uts"), spec.hostname.clone())),
            ipc: (!spec.host_ipc).then(|| dir.join("ipc")),
            pid: spec.share_pid.then(|| dir.join("pid")),
            hide_mounts_under: self.mount_dirs.clone(),
            keep_mounts_under: vec![self.pods_dir.join(uid), dir.clone(), netns],
            log_limits: self.log_limits,
            dir,
        }
    }
}

async fn call(socket: PathBuf, request: Request) -> Result<shim::Response, shim::Error> {
    blocking(move || shim::call(&socket, &request)).await
}

impl PodRuntime for ShimRuntime {
    fn start_sandbox(
        &self,
        uid: &str,
        spec: &SandboxSpec,
    ) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>> {
        let socket = self.socket(uid);
        let options = self.shim_options(uid, spec);
        Box::pin(async move {
            if let Ok(state) = call(socket.clone(), Request::State).await {
                return Ok(state.containers);
            }
            crate::runtime::spawn::spawn_shim(&options)?;
            match call(socket, Request::State).await {
                Ok(state) => Ok(state.containers),
                Err(source) => Err(Error::NotUp {
                    log: options.dir.join("shim.log"),
                    source,
                }),
            }
        })
    }

    fn containers(&self, uid: &str) -> BoxFuture<'static, Result<Vec<ContainerState>, Error>> {
        let socket = self.socket(uid);
        Box::pin(async move { Ok(call(socket, Request::State).await?.containers) })
    }

    fn watch_exits(&self, uid: &str, events: Arc<tokio::sync::Notify>) -> BoxFuture<'static, ()> {
        Box::pin(watch_shim(self.socket(uid), events))
    }

    fn create_container(
        &self,
        uid: &str,
        c: CreateContainer,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let socket = self.socket(uid);
        Box::pin(async move {
            blocking(move || {
                let id = c.id.clone();
                shim::call(
                    &socket,
                    &Request::Create {
                        id: c.id,
                        bundle: c.bundle,
                        log: c.log,
                        layers: c.layers,
                    },
                )?;
                shim::call(&socket, &Request::Start { id })?;
                Ok(())
            })
            .await
        })
    }

    fn kill(&self, uid: &str, id: &str, signal: i32) -> BoxFuture<'static, Result<(), Error>> {
        let (socket, id) = (self.socket(uid), id.to_owned());
        Box::pin(async move {
            call(socket, Request::Kill { id, signal }).await?;
            Ok(())
        })
    }

    fn remove(&self, uid: &str, id: &str) -> BoxFuture<'static, Result<(), Error>> {
        let (socket, id) = (self.socket(uid), id.to_owned());
        Box::pin(async move {
            call(socket, Request::Delete { id }).await?;
            Ok(())
        })
    }

    fn exec(
        &self,
        uid: &str,
        id: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), String>> {
        let (socket, id) = (self.socket(uid), id.to_owned());
        Box::pin(async move { blocking(move || exec_probe(&socket, &id, args, timeout)).await })
    }

    fn allocate_address(&self, uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>> {
        let (net, uid) = (self.network(), uid.to_owned());
        Box::pin(async move {
            let net = net?;
            blocking(move || net.ipam.allocate(&uid))
                .await
                .map_err(|e| Error::Network(e.to_string()))
        })
    }

    fn attach_network(&self, uid: &str) -> BoxFuture<'static, Result<Ipv4Addr, Error>> {
        let (net, uid, netns) = (self.network(), uid.to_owned(), self.netns(uid));
        Box::pin(async move {
            let net = net?;
            blocking(move || net.attach(&netns, &uid))
                .await
                .map_err(|e| Error::Network(e.to_string()))
        })
    }

    fn remove_sandbox(&self, uid: &str) -> BoxFuture<'static, ()> {
        let (socket, shim_dir, netns) = (self.socket(uid), self.shim_dir(uid), self.netns(uid));
        let (network, uid) = (self.network.clone(), uid.to_owned());
        Box::pin(async move {
            if let Ok(state) = call(socket.clone(), Request::State).await {
                for c in state.containers {
                    let _ = call(socket.clone(), Request::Delete { id: c.id }).await;
                }
                let _ = call(socket, Request::Shutdown).await;
            }
            blocking(move || {
                if let Some(net) = network
                    && let Err(e) = net.detach(&uid)
                {
                    tracing::warn!(pod_uid = %uid, error = %e, "removing the pod's network");
                }
                let _ = crate::runtime::netns::remove(&netns);
                for pin in ["ipc", "uts"] {
                    let _ = crate::runtime::netns::remove(&shim_dir.join(pin));
                }
            })
            .await;
        })
    }
    fn has_network(&self) -> bool {
        self.network.is_some()
    }

    fn reconcile_network(&self, live: HashSet<String>) -> BoxFuture<'static, Result<usize, Error>> {
        let net = self.network.clone();
        Box::pin(async move {
            let Some(net) = net else { return Ok(0) };
            blocking(move || net.reconcile(&live))
                .await
                .map_err(|e| Error::Network(e.to_string()))
        })
    }

    fn mount_tmpfs(
        &self,
        dir: PathBuf,
        size: Option<u64>,
        mode: u32,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            blocking(move || {
                mount_tmpfs(&dir, size, mode).map_err(|source| Error::Mount { path: dir, source })
            })
            .await
        })
    }

    fn set_pod_limits(
        &self,
        uid: &str,
        limits: crate::runtime::spec::Resources,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let path = format!("{}/pod{uid}", self.cgroup_root);
        Box::pin(async move {
            blocking(move || {
                crate::runtime::cgroup::set_limits(&path, &limits)
                    .map_err(|source| Error::Cgroup { path, source })
            })
            .await
        })
    }

    fn remove_bundle(&self, bundle: PathBuf) -> BoxFuture<'static, ()> {
        Box::pin(blocking(move || {
            // The shim mounts the root; an agent before 0.1 mounted it here.
            let _ = rootfs::unmount(&bundle.join("rootfs"));
            let _ = std::fs::remove_dir_all(&bundle);
        }))
    }

    fn release_pod(&self, uid: &str) -> BoxFuture<'static, ()> {
        let pod_dir = self.pods_dir.join(uid);
        let cgroup = format!("{}/pod{uid}", self.cgroup_root);
        Box::pin(blocking(move || {
            if let Ok(entries) = std::fs::read_dir(pod_dir.join("containers")) {
                for e in entries.flatten() {
                    let _ = rootfs::unmount(&e.path().join("rootfs"));
                }
            }
            let _ = rootfs::unmount(&pod_dir.join("shm"));
            for e in std::fs::read_dir(pod_dir.join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = rootfs::unmount(&e.path());
            }
            crate::runtime::cgroup::remove(&cgroup);
        }))
    }
}

/// Mount a tmpfs at `dir` (of `size` bytes, root directory `mode`) unless
/// one is there. Blocking.
fn mount_tmpfs(dir: &Path, size: Option<u64>, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir)?;
    let parent_dev = dir
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    let dev = std::fs::metadata(dir)?.dev();
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

/// An exec probe or hook: the command runs as a streaming exec, so the
/// shim goes on serving the pod while it runs; here it is waited for up
/// to `timeout`, and killed (the shim sees us hang up) when it overruns.
/// Its output (the first 10 KiB) is the failure message. Blocking.
fn exec_probe(
    socket: &std::path::Path,
    id: &str,
    args: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    const KEEP: u64 = 10 * 1024;
    let mut session =
        shim::exec_stream(socket, id, args, false, false, None, true).map_err(|e| e.to_string())?;
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
}
