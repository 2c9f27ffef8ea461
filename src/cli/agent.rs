//! `orch agent`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::DataDirArgs;
use crate::agent;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// (agent) URL of the server to join, e.g. https://10.0.0.1:6443.
    #[arg(
        long,
        env = "ORCH_URL",
        value_name = "URL",
        required_unless_present = "cleanup"
    )]
    pub server: Option<String>,

    /// (agent) Remove this node's networking — the service proxy's
    /// nftables tables, the bridge orch0 and the VXLAN device — and exit.
    /// Pods on the node lose their network: stop them first (orch-killall.sh).
    #[arg(long)]
    pub cleanup: bool,

    /// (agent) Join token: the contents of <data-dir>/server/token on the server.
    #[arg(
        long,
        env = "ORCH_TOKEN",
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// (agent) File holding the join token.
    #[arg(long, env = "ORCH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub node: super::NodeArgs,

    /// (simulation) Register this many simulated nodes (no containers run)
    /// named <node-name>-sim-<i>: for testing and benchmarking the control plane.
    #[arg(long, value_name = "N")]
    pub simulate: Option<usize>,

    /// (simulation) CPU of each simulated node.
    #[arg(
        long,
        value_name = "QUANTITY",
        default_value = "8",
        requires = "simulate"
    )]
    pub sim_cpu: String,

    /// (simulation) Memory of each simulated node.
    #[arg(
        long,
        value_name = "QUANTITY",
        default_value = "32Gi",
        requires = "simulate"
    )]
    pub sim_memory: String,

    /// (simulation) Pod capacity of each simulated node.
    #[arg(long, value_name = "N", default_value_t = 110, requires = "simulate")]
    pub sim_pods: u32,

    /// (simulation) Seconds between Lease renewals.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        requires = "simulate"
    )]
    pub sim_heartbeat: u64,

    #[command(flatten)]
    pub data: DataDirArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        crate::agent::network::cleanup().map_err(anyhow::Error::msg)?;
        println!("removed orch's nftables tables, orch0 and orch-vxlan");
        return Ok(());
    }
    let server = args.server.clone().unwrap_or_default();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the token file {}", f.display()))?,
        (None, None) => {
            anyhow::bail!("orch agent needs a join token: pass --token TOKEN or --token-file FILE")
        }
    };
    let Some(count) = args.simulate else {
        return run_real(args, token);
    };
    if count == 0 {
        anyhow::bail!("--simulate needs at least 1 node");
    }
    let prefix = args
        .node
        .node_name
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_lowercase())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "orch".into());
    let config = agent::simulate::Config {
        count,
        prefix,
        cpu: args.sim_cpu,
        memory: args.sim_memory,
        pods: args.sim_pods,
        heartbeat: Duration::from_secs(args.sim_heartbeat.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orch-agent")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = agent::join::client(&server, &token).await?;
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            result = agent::simulate::run(client, config, &token) => result?,
            () = shutdown => tracing::info!("orch agent stopping"),
        }
        Ok(())
    })
}

fn run_real(args: Args, token: String) -> anyhow::Result<()> {
    let server = args.server.clone().unwrap_or_default();
    agent::preflight().map_err(anyhow::Error::msg)?;
    let config = args.node.to_config(&args.data.data_dir, None)?;
    std::fs::create_dir_all(&args.data.data_dir)
        .with_context(|| format!("cannot create {}", args.data.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orch-agent")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (client, creds) = agent::join::join_node(
            &server,
            &token,
            &config.node.data_dir,
            &config.node.name,
        )
        .await?;
        super::notify_ready();
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            result = agent::run(client, creds, config) => result?,
            () = shutdown => tracing::info!("orch agent stopping (pods and their shims keep running)"),
        }
        Ok(())
    })
}
