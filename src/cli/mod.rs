//! Command-line parsing: one file per subcommand, each a clap args struct and
//! a `run` that turns flags into a typed config and calls into the library.
//! Nothing below `cli` reads flags or environment variables.

#![forbid(unsafe_code)]

mod agent;
mod certificate;
mod image;
mod kubeconfig;
mod server;
mod shim;
mod token;
mod version;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// orch: a single-binary Kubernetes distribution.
#[derive(Debug, Parser)]
#[command(name = "orch", version, about, long_about = None)]
pub struct Cli {
    /// Log level or filter (error, warn, info, debug, trace; or e.g.
    /// "info,orch::store=debug"). Falls back to RUST_LOG, then "info".
    #[arg(long, global = true, env = "ORCH_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (API server, store, scheduler, controllers).
    Server(server::Args),
    /// Run a node agent that joins a server.
    Agent(agent::Args),
    /// Manage the node's images (pull, import, ls, rm).
    Image(image::Args),
    /// (internal) The per-pod container supervisor the agent starts.
    #[command(hide = true)]
    Shim(shim::Args),
    /// Renew the leaf certificates (rotate).
    Certificate(certificate::Args),
    /// Manage extra join tokens for agents (create, list, delete).
    Token(token::Args),
    /// Make kubeconfigs for people (create), on the server machine.
    Kubeconfig(kubeconfig::Args),
    /// Print the version, git commit and target.
    Version(version::Args),
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/orch";

/// Tell the service manager we are ready (systemd's `Type=notify`): send
/// `READY=1` to the datagram socket in `$NOTIFY_SOCKET` (a path, or an
/// abstract name after `@`). Nothing when the variable is unset.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(b"READY=1", &addr)
            }
            None => sock.send_to(b"READY=1", &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot tell the service manager we are ready");
    }
}
/// Registry mirrors and credentials, as k3s's `registries.yaml`.
pub const DEFAULT_REGISTRIES: &str = "/etc/orch/registries.yaml";

/// Flags every long-running role shares.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// (data) Directory for state: the store, certificates, images, pods.
    #[arg(
        long,
        env = "ORCH_DATA_DIR",
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,
}

/// `--data-dir` for commands with subcommands (`orch token`, `orch
/// certificate`): accepted before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalDataDirArgs {
    /// (data) Directory orch keeps its state in.
    #[arg(
        long,
        global = true,
        env = "ORCH_DATA_DIR",
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,
}

/// Flags of the node agent, for `orch agent` and the agent `orch server`
/// embeds.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
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

    /// (agent) Taint to register with, KEY[=VALUE]:EFFECT (EFFECT is
    /// NoSchedule, PreferNoSchedule or NoExecute; repeatable).
    #[arg(
        long = "node-taint",
        env = "ORCH_NODE_TAINT",
        value_name = "KEY=VALUE:EFFECT",
        value_delimiter = ','
    )]
    pub node_taints: Vec<String>,

    /// (agent) Directory for shims and pod network namespaces
    /// [default: /run/orch, or <data-dir>/run with a non-default --data-dir].
    #[arg(long, env = "ORCH_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// (agent) Directory for container logs [default: /var/log/pods, or
    /// <data-dir>/pod-logs with a non-default --data-dir].
    #[arg(long, env = "ORCH_POD_LOG_DIR", value_name = "DIR")]
    pub pod_log_dir: Option<PathBuf>,

    /// (agent) A container's log file rotates at this size (a quantity,
    /// like the kubelet's containerLogMaxSize).
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = parse_log_size)]
    pub container_log_max_size: u64,

    /// (agent) Log files kept per container, the current one included.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(2..))]
    pub container_log_max_files: u16,

    /// (agent) Parent cgroup of the pods' cgroups [default: /orch/<node-name>].
    #[arg(long, env = "ORCH_CGROUP_ROOT", value_name = "PATH")]
    pub cgroup_root: Option<String>,

    /// (agent) Registry configuration: mirrors, credentials, TLS (the
    /// shape of k3s's registries.yaml).
    #[arg(
        long,
        env = "ORCH_PRIVATE_REGISTRY",
        value_name = "FILE",
        default_value = DEFAULT_REGISTRIES
    )]
    pub private_registry: PathBuf,

    /// (agent) Disk usage (percent) of the image store's filesystem above
    /// which unused images are removed.
    #[arg(long, value_name = "PERCENT", default_value_t = 85,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,

    /// (agent) Disk usage (percent) image garbage collection frees down to.
    #[arg(long, value_name = "PERCENT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,

    /// (agent) Images stored more recently than this (seconds) are not
    /// garbage-collected.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub image_minimum_gc_age: u64,

    /// (networking) Cluster DNS server address pods are given.
    #[arg(
        long,
        env = "ORCH_CLUSTER_DNS",
        value_name = "IP",
        default_value = "10.43.0.10"
    )]
    pub cluster_dns: std::net::IpAddr,

    /// (networking) Pod IP range; each node gets a /24 of it as its
    /// podCIDR (give agents the server's value).
    #[arg(long, env = "ORCH_CLUSTER_CIDR", value_name = "CIDR", default_value = "10.42.0.0/16", value_parser = server::parse_cluster_cidr)]
    pub cluster_cidr: (std::net::Ipv4Addr, u8),

    /// (networking) How pods reach pods on other nodes: vxlan, host-gw
    /// (nodes on one L2 segment) or none (give agents the server's value).
    #[arg(long, env = "ORCH_FLANNEL_BACKEND", value_name = "BACKEND", default_value = "vxlan",
          value_parser = crate::net::overlay::Backend::parse)]
    pub flannel_backend: crate::net::overlay::Backend,

    /// (agent) The resolv.conf whose nameservers the cluster DNS forwards
    /// other names to, and that pods with `dnsPolicy: Default` get
    /// [default: /etc/resolv.conf, or systemd-resolved's
    /// /run/systemd/resolve/resolv.conf when /etc/resolv.conf names only
    /// loopback resolvers, which pods cannot reach].
    #[arg(long, env = "ORCH_RESOLV_CONF", value_name = "FILE")]
    pub resolv_conf: Option<PathBuf>,

    /// (networking) Cluster domain.
    #[arg(
        long,
        env = "ORCH_CLUSTER_DOMAIN",
        value_name = "DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
}

impl NodeArgs {
    /// The agent's config for a node keeping its state in `data_dir`;
    /// `default_ip` when --node-ip is not given.
    ///
    /// # Errors
    /// A malformed --node-label, or no host name to name the node after.
    pub fn to_config(
        &self,
        data_dir: &std::path::Path,
        default_ip: Option<std::net::IpAddr>,
    ) -> anyhow::Result<crate::agent::Config> {
        let name = self
            .node_name
            .clone()
            .unwrap_or_else(crate::agent::node::hostname);
        if name.is_empty() {
            anyhow::bail!("cannot tell this machine's host name; pass --node-name NAME");
        }
        let mut labels = Vec::new();
        for l in &self.node_labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--node-label {l:?}: expected KEY=VALUE"))?;
            labels.push((k.to_owned(), v.to_owned()));
        }
        // As the kubelet checks --node-labels: NodeRestriction would
        // refuse the registration anyway, later and less helpfully.
        let mut refused: Vec<&str> = labels
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| crate::api::node_labels::is_forbidden_self_label(k))
            .collect();
        if !refused.is_empty() {
            refused.sort_unstable();
            refused.dedup();
            use crate::api::node_labels::{KUBELET_LABEL_NAMESPACES, KUBELET_LABELS};
            anyhow::bail!(
                "--node-label: a node may not give itself {}: labels in the kubernetes.io and k8s.io namespaces must begin with an allowed prefix ({}) or be one of {}; set others on the node with `kubectl label node {name} KEY=VALUE`",
                refused.join(", "),
                KUBELET_LABEL_NAMESPACES.join(", "),
                KUBELET_LABELS.join(", "),
            );
        }
        let taints = self
            .node_taints
            .iter()
            .map(|t| {
                crate::api::validation::parse_taint(t)
                    .map_err(|e| anyhow::anyhow!("--node-taint {t:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ip = self
            .node_ip
            .or(default_ip)
            .or_else(default_route_address)
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let default_data_dir = data_dir == std::path::Path::new(DEFAULT_DATA_DIR);
        if self.image_gc_low_threshold > self.image_gc_high_threshold {
            anyhow::bail!(
                "--image-gc-low-threshold ({}) is above --image-gc-high-threshold ({}); make it lower",
                self.image_gc_low_threshold,
                self.image_gc_high_threshold
            );
        }
        let registries = crate::runtime::image::Registries::load(&self.private_registry)
            .map_err(|e| anyhow::anyhow!("--private-registry {e}"))?;
        let resolv_conf = match &self.resolv_conf {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "--resolv-conf {}: {e}; give a readable file with nameserver lines",
                        path.display()
                    )
                })?;
                path.clone()
            }
            None => crate::net::dns::node_resolv_conf(),
        };
        Ok(crate::agent::Config {
            registries,
            image_gc: crate::agent::imagegc::Policy {
                high_percent: self.image_gc_high_threshold,
                low_percent: self.image_gc_low_threshold,
                minimum_age: std::time::Duration::from_secs(self.image_minimum_gc_age),
            },
            node: crate::agent::node::NodeConfig {
                name: name.clone(),
                ip,
                data_dir: data_dir.to_owned(),
                labels,
                taints,
            },
            // Several agents on one machine (one per network namespace,
            // each with its own --data-dir) must not share these.
            run_dir: self.run_dir.clone().unwrap_or_else(|| {
                if default_data_dir {
                    PathBuf::from("/run/orch")
                } else {
                    data_dir.join("run")
                }
            }),
            log_dir: self.pod_log_dir.clone().unwrap_or_else(|| {
                if default_data_dir {
                    PathBuf::from("/var/log/pods")
                } else {
                    data_dir.join("pod-logs")
                }
            }),
            network: crate::agent::network::NetConfig {
                cluster_cidr: self.cluster_cidr,
                backend: self.flannel_backend,
            },
            cgroup_root: format!(
                "/{}",
                self.cgroup_root
                    .clone()
                    .unwrap_or_else(|| format!("orch/{name}"))
                    .trim_matches('/')
            ),
            cluster_dns: self.cluster_dns.to_string(),
            cluster_domain: self.cluster_domain.clone(),
            resolv_conf,
            log_limits: crate::runtime::logs::LogLimits {
                max_size: self.container_log_max_size,
                max_files: usize::from(self.container_log_max_files),
            },
        })
    }
}

/// `--container-log-max-size`: a quantity of at least 1Ki.
fn parse_log_size(q: &str) -> Result<u64, String> {
    crate::api::quantity::parse_quantity(q, 1.0)
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b >= 1024)
        .ok_or_else(|| format!("{q:?} is not a size of at least 1Ki (e.g. 10Mi)"))
}

/// The source address of the default route: a UDP `connect` picks it
/// without sending anything.
pub fn default_route_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

/// Run the parsed command.
///
/// # Errors
/// Whatever the command failed with, with context for the user.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Image(args) => image::run(args),
        Command::Shim(args) => shim::run(args),
        Command::Certificate(args) => certificate::run(args),
        Command::Token(args) => token::run(args),
        Command::Kubeconfig(args) => kubeconfig::run(args),
        Command::Version(args) => version::run(args),
    }
}

/// Resolves on SIGINT or SIGTERM. Call inside the runtime.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn agents_with_their_own_data_dir_keep_state_and_cgroups_apart() {
        let args = Wrap::parse_from(["x", "--node-name", "n1"]).node;
        let cfg = args
            .to_config(Path::new(DEFAULT_DATA_DIR), Some([10, 0, 0, 1].into()))
            .unwrap();
        assert_eq!(cfg.run_dir, PathBuf::from("/run/orch"));
        assert_eq!(cfg.log_dir, PathBuf::from("/var/log/pods"));
        assert_eq!(cfg.cgroup_root, "/orch/n1");
        assert_eq!(cfg.node.ip.to_string(), "10.0.0.1");
        let cfg = args.to_config(Path::new("/srv/node2"), None).unwrap();
        assert_eq!(cfg.run_dir, PathBuf::from("/srv/node2/run"));
        assert_eq!(cfg.log_dir, PathBuf::from("/srv/node2/pod-logs"));
        let explicit = Wrap::parse_from([
            "x",
            "--node-name",
            "n1",
            "--run-dir",
            "/r",
            "--cgroup-root",
            "/x/y/",
        ])
        .node;
        let cfg = explicit.to_config(Path::new("/srv/node2"), None).unwrap();
        assert_eq!(
            (cfg.run_dir, cfg.cgroup_root.as_str()),
            (PathBuf::from("/r"), "/x/y")
        );
        let bad = Wrap::parse_from(["x", "--node-label", "nokey"]).node;
        let err = bad
            .to_config(Path::new("/d"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--node-label") && err.contains("KEY=VALUE"),
            "{err}"
        );
        // Labels NodeRestriction keeps from nodes are refused up front.
        let restricted = Wrap::parse_from([
            "x",
            "--node-name",
            "n1",
            "--node-label",
            "node-role.kubernetes.io/worker=,topology.kubernetes.io/zone=z1,node-restriction.kubernetes.io/pool=a,rack=r1",
        ])
        .node;
        let err = restricted
            .to_config(Path::new("/d"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--node-label: a node may not give itself node-restriction.kubernetes.io/pool, node-role.kubernetes.io/worker: ")
                && err.contains("kubectl label node n1 KEY=VALUE"),
            "{err}"
        );
        let fine = Wrap::parse_from([
            "x",
            "--node-name",
            "n1",
            "--node-label",
            "topology.kubernetes.io/zone=z1,node.kubernetes.io/pool=a,rack=r1",
        ])
        .node;
        assert_eq!(
            fine.to_config(Path::new("/d"), None)
                .unwrap()
                .node
                .labels
                .len(),
            3
        );
    }
}
