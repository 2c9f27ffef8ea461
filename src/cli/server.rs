//! `orch server`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;

use crate::server;

use super::DataDirArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataDirArgs,

    /// (listener) Address the API server listens on.
    #[arg(
        long,
        env = "ORCH_BIND_ADDRESS",
        value_name = "IP",
        default_value = "0.0.0.0"
    )]
    pub bind_address: IpAddr,

    /// (listener) HTTPS port of the API server.
    #[arg(
        long,
        env = "ORCH_HTTPS_LISTEN_PORT",
        value_name = "PORT",
        default_value_t = 6443
    )]
    pub https_listen_port: u16,

    /// (listener) Address agents and the `kubernetes` Service use to reach
    /// this server [default: --node-ip, else the address of the default
    /// route, else 127.0.0.1].
    #[arg(long, env = "ORCH_ADVERTISE_ADDRESS", value_name = "IP")]
    pub advertise_address: Option<IpAddr>,

    /// (listener) Extra host name or IP for the serving certificate (repeatable).
    #[arg(
        long = "tls-san",
        env = "ORCH_TLS_SAN",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub tls_san: Vec<String>,

    /// (cluster) The join token's secret, set on first start (later it must
    /// match); agents join with K10<CA hash>::server:SECRET, written to
    /// <data-dir>/server/token [default: random].
    #[arg(
        long,
        env = "ORCH_TOKEN",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// (cluster) The API's audiences (comma-separated): a service account
    /// token authenticates only if its audience is one of them, and a
    /// TokenRequest naming none gets them all (kube-apiserver's
    /// --api-audiences) [default: https://kubernetes.default.svc.cluster.local,
    /// the token issuer].
    #[arg(
        long,
        env = "ORCH_API_AUDIENCES",
        value_name = "AUDIENCE",
        value_delimiter = ',',
        value_parser = parse_audience
    )]
    pub api_audiences: Vec<String>,

    /// (cluster) Let requests without credentials in as user
    /// `system:anonymous` in group `system:unauthenticated`, with what RBAC
    /// gives them (by default /healthz, /livez, /readyz and /version);
    /// `false` answers them 401 (kube-apiserver's --anonymous-auth).
    #[arg(
        long,
        env = "ORCH_ANONYMOUS_AUTH",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub anonymous_auth: bool,

    /// (client) Write the admin kubeconfig here too (mode 0600).
    #[arg(
        long,
        env = "ORCH_KUBECONFIG_OUTPUT",
        value_name = "PATH",
        default_value = "/etc/orch/orch.yaml"
    )]
    pub write_kubeconfig: PathBuf,

    /// (networking) Service IP range.
    #[arg(long, env = "ORCH_SERVICE_CIDR", value_name = "CIDR", default_value = "10.43.0.0/16", value_parser = parse_cidr)]
    pub service_cidr: (Ipv4Addr, u8),

    /// (networking) NodePort range.
    #[arg(long, env = "ORCH_SERVICE_NODE_PORT_RANGE", value_name = "LOW-HIGH", default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: (u16, u16),

    /// (datastore) Seconds between automatic compactions of the store's history.
    #[arg(
        long,
        env = "ORCH_COMPACTION_INTERVAL",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    pub compaction_interval: u64,

    /// (datastore) Seconds of history kept for watches to resume from.
    #[arg(
        long,
        env = "ORCH_COMPACTION_RETENTION",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub compaction_retention: u64,

    /// (datastore) Revisions of history always kept.
    #[arg(
        long,
        env = "ORCH_COMPACTION_MIN_REVISIONS",
        value_name = "N",
        default_value_t = 1000
    )]
    pub compaction_min_revisions: u64,

    /// (controllers) Seconds without a Lease renewal before a node is
    /// marked unreachable (Ready=Unknown).
    #[arg(
        long,
        env = "ORCH_NODE_MONITOR_GRACE_PERIOD",
        value_name = "SECONDS",
        default_value_t = 40
    )]
    pub node_monitor_grace_period: u64,

    /// (controllers) tolerationSeconds of the not-ready NoExecute toleration
    /// every pod gets: how long its pods stay on a node that is not ready.
    #[arg(
        long,
        env = "ORCH_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub default_not_ready_toleration_seconds: u32,

    /// (controllers) tolerationSeconds of the unreachable NoExecute
    /// toleration every pod gets: how long its pods stay on a lost node.
    #[arg(
        long,
        env = "ORCH_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    pub default_unreachable_toleration_seconds: u32,

    /// (controllers) Terminated pods kept before the oldest are deleted.
    #[arg(
        long,
        env = "ORCH_TERMINATED_POD_GC_THRESHOLD",
        value_name = "N",
        default_value_t = 12500
    )]
    pub terminated_pod_gc_threshold: usize,

    /// (controllers) Seconds an event is kept after it last happened.
    #[arg(
        long,
        env = "ORCH_EVENT_TTL",
        value_name = "SECONDS",
        default_value_t = 3600
    )]
    pub event_ttl: u64,

    /// (listener) Seconds a client has for its TLS handshake. Hidden, as
    /// the three below: for tests, which need short limits; the defaults
    /// are upstream's fixed values (issue #21).
    #[arg(
        long,
        env = "ORCH_API_TLS_HANDSHAKE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10,
        hide = true
    )]
    pub api_tls_handshake_timeout: u64,

    /// (listener) Seconds a client has to send a request's headers.
    #[arg(
        long,
        env = "ORCH_API_READ_HEADER_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 32,
        hide = true
    )]
    pub api_read_header_timeout: u64,

    /// (listener) Seconds a connection with no request in flight stays open.
    #[arg(
        long,
        env = "ORCH_API_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 90,
        hide = true
    )]
    pub api_idle_timeout: u64,

    /// (listener) Connections that may wait unauthenticated at once; one
    /// more closes the oldest of them.
    #[arg(
        long,
        env = "ORCH_API_MAX_UNAUTHENTICATED_CONNECTIONS",
        value_name = "N",
        default_value_t = 1024,
        hide = true
    )]
    pub api_max_unauthenticated_connections: usize,

    /// (agent) Run the control plane alone, without the embedded agent.
    #[arg(long, env = "ORCH_DISABLE_AGENT")]
    pub disable_agent: bool,

    #[command(flatten)]
    pub node: super::NodeArgs,
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, bits) = s
        .split_once('/')
        .ok_or("expected an IPv4 CIDR such as 10.43.0.0/16")?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let bits: u8 = bits
        .parse()
        .map_err(|_| format!("{bits:?} is not a prefix length"))?;
    if !(8..=28).contains(&bits) {
        return Err("the prefix length must be between 8 and 28".into());
    }
    Ok((ip, bits))
}

pub(super) fn parse_cluster_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, bits) = parse_cidr(s)?;
    if bits > 24 {
        return Err("the prefix length must be 24 or less (each node gets a /24)".into());
    }
    Ok((ip, bits))
}

fn parse_audience(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an audience may not be empty (e.g. --api-audiences https://kubernetes.default.svc.cluster.local,vault)".into());
    }
    Ok(s.to_owned())
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or("expected LOW-HIGH, e.g. 30000-32767")?;
    let lo: u16 = lo.parse().map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi.parse().map_err(|_| format!("{hi:?} is not a port"))?;
    if lo == 0 || lo > hi {
        return Err("LOW must be at least 1 and not above HIGH".into());
    }
    Ok((lo, hi))
}

/// The address agents and the `kubernetes` Service use, as k3s picks it:
/// `--advertise-address`, else `--node-ip`, else a specific
/// `--bind-address`, else the default route's address, else 127.0.0.1.
fn advertise_address(
    advertise: Option<IpAddr>,
    node_ip: Option<IpAddr>,
    bind: IpAddr,
    default_route: impl FnOnce() -> Option<IpAddr>,
) -> IpAddr {
    advertise
        .or(node_ip)
        .or_else(|| (!bind.is_unspecified()).then_some(bind))
        .or_else(default_route)
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = server::Config::new(args.data.data_dir);
    config.listen = SocketAddr::new(args.bind_address, args.https_listen_port);
    config.advertise_address = advertise_address(
        args.advertise_address,
        args.node.node_ip,
        args.bind_address,
        super::default_route_address,
    );
    config.tls_sans = args.tls_san;
    // Agents join by the node IP as often as by the advertised address
    // (k3s puts both in the certificate).
    if let Some(ip) = args.node.node_ip {
        config.tls_sans.push(ip.to_string());
    }
    if args.compaction_interval == 0 {
        anyhow::bail!("--compaction-interval must be at least 1 second");
    }
    config.compaction = crate::store::CompactionPolicy {
        retention: std::time::Duration::from_secs(args.compaction_retention),
        min_revisions: args.compaction_min_revisions,
        interval: std::time::Duration::from_secs(args.compaction_interval),
    };
    for (flag, secs) in [
        (
            "--api-tls-handshake-timeout",
            args.api_tls_handshake_timeout,
        ),
        ("--api-read-header-timeout", args.api_read_header_timeout),
        ("--api-idle-timeout", args.api_idle_timeout),
    ] {
        if secs == 0 {
            anyhow::bail!("{flag} must be at least 1 second");
        }
    }
    if args.api_max_unauthenticated_connections == 0 {
        anyhow::bail!("--api-max-unauthenticated-connections must be at least 1");
    }
    config.connection_limits = server::api::Limits {
        tls_handshake: std::time::Duration::from_secs(args.api_tls_handshake_timeout),
        read_header: std::time::Duration::from_secs(args.api_read_header_timeout),
        idle: std::time::Duration::from_secs(args.api_idle_timeout),
        max_unauthenticated: args.api_max_unauthenticated_connections,
    };
    if !args.api_audiences.is_empty() {
        config.api_audiences =
            crate::server::auth::serviceaccount::Audiences::new(&args.api_audiences)
                .map_err(|e| anyhow::anyhow!("--api-audiences: {e}"))?;
    }
    config.anonymous_auth = args.anonymous_auth;
    config.write_kubeconfig = Some(args.write_kubeconfig);
    config.token = args.token;
    config.service_ranges = server::registry::ServiceRanges {
        cidr: args.service_cidr,
        node_ports: args.service_node_port_range,
    };
    if args.node_monitor_grace_period == 0 {
        anyhow::bail!("--node-monitor-grace-period must be at least 1 second");
    }
    if args.terminated_pod_gc_threshold == 0 {
        anyhow::bail!("--terminated-pod-gc-threshold must be at least 1");
    }
    config.admission = server::admission::Settings {
        not_ready_toleration_seconds: args.default_not_ready_toleration_seconds.into(),
        unreachable_toleration_seconds: args.default_unreachable_toleration_seconds.into(),
    };
    let grace = std::time::Duration::from_secs(args.node_monitor_grace_period);
    config.controllers = server::controllers::Config {
        node_monitor_grace_period: grace,
        // Check often enough to notice a lost node within the grace period.
        node_monitor_period: (grace / 8).clamp(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(5),
        ),
        terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
        event_ttl: std::time::Duration::from_secs(args.event_ttl.max(60)),
        root_ca: String::new(),
        cluster_cidr: Some(args.node.cluster_cidr),
        service_accounts: None,
        pki: None,
    };
    // Store reads run on the blocking pool, each on its own SQLite read
    // connection (with its own page cache): bounding the pool bounds both
    // the threads and the memory a burst of reads can take.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_name("orch-server")
        .build()
        .context("cannot start the async runtime")?;
    let agent_config = if args.disable_agent {
        None
    } else {
        // The embedded agent runs pods: check what it needs before starting
        // (`--disable-agent` runs the control plane without it).
        crate::agent::preflight().map_err(|e| {
            anyhow::anyhow!("{e} (or run the control plane alone with --disable-agent)")
        })?;
        Some(
            args.node
                .to_config(&config.data_dir, Some(config.advertise_address))?,
        )
    };
    let token_path = config.data_dir.join("server").join("token");
    runtime.block_on(async {
        let shutdown = super::shutdown_signal()?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        // Once serving: tell the service manager, then start the agent.
        let (agent_tx, agent_rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            if let Ok(url) = ready_rx.await {
                super::notify_ready();
                let _ = agent_tx.send(url);
            }
        });
        // The embedded agent joins the way a remote one does: the join
        // token, the CA it pins, the public API (the k3s way). It runs on
        // a runtime of its own: its blocking work (shim calls, exec
        // sessions) must never take the store's bounded blocking pool.
        if let Some(cfg) = agent_config {
            std::thread::Builder::new()
                .name("orch-agent".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .thread_name("orch-agent")
                        .build()
                    {
                        Ok(r) => r,
                        Err(err) => {
                            tracing::error!("the embedded agent cannot start: {err}");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let Ok(url) = agent_rx.await else { return };
                        let result = async {
                            let token = std::fs::read_to_string(&token_path)
                                .with_context(|| format!("cannot read {}", token_path.display()))?;
                            let (client, creds) = crate::agent::join::join_node(
                                &url,
                                token.trim(),
                                &cfg.node.data_dir,
                                &cfg.node.name,
                            )
                            .await?;
                            crate::agent::run(client, creds, cfg).await?;
                            anyhow::Ok(())
                        }
                        .await;
                        if let Err(err) = result {
                            tracing::error!("the embedded agent stopped: {err:#}");
                        }
                    });
                })
                .context("cannot start the embedded agent's thread")?;
        }
        // The agent's thread ends with the process.
        server::run_with(config, shutdown, Some(ready_tx)).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_the_node_ip_unless_one_is_given() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let any = ip("0.0.0.0");
        let route = || Some(ip("192.168.1.5"));
        let none = || None;
        // k3s: --advertise-address, else --node-ip.
        assert_eq!(
            advertise_address(Some(ip("10.0.0.9")), Some(ip("10.0.0.2")), any, route),
            ip("10.0.0.9")
        );
        assert_eq!(
            advertise_address(None, Some(ip("10.0.0.2")), any, route),
            ip("10.0.0.2")
        );
        // A LAN with no default route: the node IP, not 127.0.0.1.
        assert_eq!(
            advertise_address(None, Some(ip("10.0.0.2")), any, none),
            ip("10.0.0.2")
        );
        assert_eq!(
            advertise_address(None, None, ip("10.0.0.3"), route),
            ip("10.0.0.3")
        );
        assert_eq!(advertise_address(None, None, any, route), ip("192.168.1.5"));
        assert_eq!(advertise_address(None, None, any, none), ip("127.0.0.1"));
    }
}
