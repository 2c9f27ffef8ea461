//! Starting a pod's shim: the `orch shim` re-exec of this binary, with the
//! namespaces and mounts it is to make, its socket bound here and handed
//! over on stdin. It does not talk to the shim (that is `shim::call`), nor
//! decide what a pod needs (the agent does).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use super::logs::LogLimits;

/// What a pod's shim makes and keeps.
#[derive(Debug, Clone, Default)]
pub struct ShimOptions {
    /// The shim's directory: its socket (`shim.sock`) and log (`shim.log`).
    pub dir: PathBuf,
    /// A network namespace pinned at `.0`, a UTS namespace pinned at `.1`
    /// with hostname `.2` (`None`: the host's network).
    pub network: Option<(PathBuf, PathBuf, String)>,
    /// An IPC namespace pinned here (`None`: the host's IPC).
    pub ipc: Option<PathBuf>,
    /// A PID namespace the containers share, pinned here.
    pub pid: Option<PathBuf>,
    /// Mounts under these stay out of the shim's mount namespace (other
    /// pods' namespace pins and volumes).
    pub hide_mounts_under: Vec<PathBuf>,
    /// …except under these (this pod's own).
    pub keep_mounts_under: Vec<PathBuf>,
    /// When the shim rotates its containers' logs.
    pub log_limits: LogLimits,
}

/// Why a shim could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the shim: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("starting the shim's reaper: {0}")]
    Reaper(#[source] std::io::Error),
}

/// Start the shim `options` describe, in a process group of its own, and
/// reap it when it exits. It returns once the shim's socket is bound:
/// calls to it queue until the shim accepts, so nobody polls for it to
/// come up, and if the shim dies before it accepts they fail at once.
///
/// # Errors
/// The shim's directory, log or socket cannot be made, or the process
/// cannot be started.
pub fn spawn_shim(options: &ShimOptions) -> Result<(), Error> {
    let dir = &options.dir;
    let prepare = |path: PathBuf| move |source| Error::Prepare { path, source };
    std::fs::create_dir_all(dir).map_err(prepare(dir.clone()))?;
    let log_path = dir.join("shim.log");
    let log = std::fs::File::create(&log_path).map_err(prepare(log_path.clone()))?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(["shim", "--dir"]).arg(dir);
    if let Some((net, uts, hostname)) = &options.network {
        cmd.arg("--netns").arg(net);
        cmd.arg("--utsns").arg(uts);
        cmd.arg("--hostname").arg(hostname);
    }
    if let Some(ipc) = &options.ipc {
        cmd.arg("--ipcns").arg(ipc);
    }
    if let Some(pid) = &options.pid {
        cmd.arg("--pidns").arg(pid);
    }
    for d in &options.hide_mounts_under {
        cmd.arg("--hide-mounts-under").arg(d);
    }
    cmd.arg("--log-max-size")
        .arg(options.log_limits.max_size.to_string())
        .arg("--log-max-files")
        .arg(options.log_limits.max_files.to_string());
    for d in &options.keep_mounts_under {
        cmd.arg("--keep-mounts-under").arg(d);
    }
    // Its own process group: signals to the agent's group (Ctrl-C, a
    // service manager stopping the agent) do not reach it.
    cmd.process_group(0);
    // Its socket, bound here and handed over as stdin.
    let socket = dir.join("shim.sock");
    let listener = super::shim::listen(dir).map_err(prepare(socket))?;
    let stdout = log.try_clone().map_err(prepare(log_path))?;
    cmd.arg("--listener-on-stdin")
        .stdin(std::os::fd::OwnedFd::from(listener))
        .stdout(stdout)
        .stderr(log)
        .env("RUST_LOG", "warn");
    let mut child = cmd.spawn().map_err(Error::Spawn)?;
    // Reap it if it exits while we run (it is ours until we exit): a
    // small thread of its own, not one of the runtime's blocking threads,
    // which it would hold for the pod's whole life.
    std::thread::Builder::new()
        .name("shim-reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(Error::Reaper)?;
    // Dropping `cmd` closes our copy of the listener: if the shim dies
    // before it accepts, a call fails at once.
    drop(cmd);
    Ok(())
}
