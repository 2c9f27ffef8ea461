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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Single-threaded on purpose: libcontainer clones (see runtime::shim).
    crate::runtime::shim::run(&args.dir, args.netns.as_deref())
        .with_context(|| format!("orch shim in {}", args.dir.display()))
}
