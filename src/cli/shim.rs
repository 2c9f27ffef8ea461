//! `orch shim` (internal): the per-pod process that runs containers.
//! Started by the agent; not meant to be run by hand.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod's runtime directory (socket, container state, exit records).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Create (or join) the pod's network namespace, pinned at this path.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// ... its IPC namespace.
    #[arg(long, value_name = "PATH")]
    pub ipcns: Option<PathBuf>,
    /// ... its UTS namespace (with --hostname).
    #[arg(long, value_name = "PATH", requires = "hostname")]
    pub utsns: Option<PathBuf>,
    /// Start the PID 1 of the pod's shared PID namespace and pin the
    /// namespace here (in the shim's own mount namespace).
    #[arg(long, value_name = "PATH")]
    pub pidns: Option<PathBuf>,
    /// The pod's host name, set in its UTS namespace.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Run in a mount namespace of its own without the mounts under DIR
    /// (other pods'); repeatable.
    #[arg(long, value_name = "DIR")]
    pub hide_mounts_under: Vec<PathBuf>,
    /// ... but with those under DIR (its own pod's); repeatable.
    #[arg(long, value_name = "DIR")]
    pub keep_mounts_under: Vec<PathBuf>,
    /// Serve the listening socket on stdin (bound by the agent at
    /// DIR/shim.sock) instead of binding it.
    #[arg(long)]
    pub listener_on_stdin: bool,
    /// Containers' logs rotate at this size (bytes) ...
    #[arg(long, value_name = "BYTES", default_value_t = crate::runtime::logs::LogLimits::default().max_size)]
    pub log_max_size: u64,
    /// ... keeping this many files.
    #[arg(long, value_name = "N", default_value_t = crate::runtime::logs::LogLimits::default().max_files)]
    pub log_max_files: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Single-threaded on purpose: libcontainer clones (see runtime::shim).
    let namespaces = crate::runtime::netns::PodNamespaces {
        net: args.netns.as_deref(),
        ipc: args.ipcns.as_deref(),
        uts: args.utsns.as_deref().zip(args.hostname.as_deref()),
    };
    crate::runtime::shim::run(
        &args.dir,
        &namespaces,
        &args.hide_mounts_under,
        &args.keep_mounts_under,
        args.listener_on_stdin,
        args.pidns.as_deref(),
        crate::runtime::logs::LogLimits {
            max_size: args.log_max_size,
            max_files: args.log_max_files,
        },
    )
    .with_context(|| format!("orch shim in {}", args.dir.display()))
}
