//! `orch agent`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::DataDirArgs;
use crate::agent;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// (agent) URL of the server to join, e.g. https://10.0.0.1:6443.
    #[arg(long, env = "ORCH_URL", value_name = "URL")]
    pub server: String,

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

    /// (agent) Node name [default: the host name].
    #[arg(long, env = "ORCH_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// (agent) Address other nodes and the server reach this node at
    /// [default: the address of the default route].
    #[arg(long, env = "ORCH_NODE_IP", value_name = "IP")]
    pub node_ip: Option<std::net::IpAddr>,

    /// (agent) Node label to register with, KEY=VALUE (repeatable).
    #[arg(
        long = "node-label",
        env = "ORCH_NODE_LABEL",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub node_labels: Vec<String>,

    /// (agent) Directory for shims and pod network namespaces.
    #[arg(
        long,
        env = "ORCH_RUN_DIR",
        value_name = "DIR",
        default_value = "/run/orch"
    )]
    pub run_dir: PathBuf,

    /// (agent) Directory for container logs.
    #[arg(
        long,
        env = "ORCH_POD_LOG_DIR",
        value_name = "DIR",
        default_value = "/var/log/pods"
    )]
    pub pod_log_dir: PathBuf,

    /// (networking) Cluster DNS server address pods are given.
    #[arg(
        long,
        env = "ORCH_CLUSTER_DNS",
        value_name = "IP",
        default_value = "10.43.0.10"
    )]
    pub cluster_dns: std::net::IpAddr,

    /// (networking) Cluster domain.
    #[arg(
        long,
        env = "ORCH_CLUSTER_DOMAIN",
        value_name = "DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,

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
        let client = agent::join::client(&args.server, &token).await?;
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            result = agent::simulate::run(client, config) => result?,
            () = shutdown => tracing::info!("orch agent stopping"),
        }
        Ok(())
    })
}

/// The source address of the default route (no packet is sent).
fn default_route_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

fn run_real(args: Args, token: String) -> anyhow::Result<()> {
    let name = args.node_name.clone().unwrap_or_else(agent::node::hostname);
    if name.is_empty() {
        anyhow::bail!("cannot tell this machine's host name; pass --node-name NAME");
    }
    let mut labels = Vec::new();
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-label {l:?}: expected KEY=VALUE"))?;
        labels.push((k.to_owned(), v.to_owned()));
    }
    let ip = args
        .node_ip
        .or_else(default_route_address)
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let config = agent::Config {
        node: agent::node::NodeConfig {
            name,
            ip,
            data_dir: args.data.data_dir.clone(),
            labels,
        },
        run_dir: args.run_dir,
        log_dir: args.pod_log_dir,
        cluster_dns: args.cluster_dns.to_string(),
        cluster_domain: args.cluster_domain,
    };
    std::fs::create_dir_all(&args.data.data_dir)
        .with_context(|| format!("cannot create {}", args.data.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orch-agent")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = agent::join::client(&args.server, &token).await?;
        let shutdown = super::shutdown_signal()?;
        tokio::select! {
            result = agent::run(client, config) => result?,
            () = shutdown => tracing::info!("orch agent stopping (pods and their shims keep running)"),
        }
        Ok(())
    })
}
