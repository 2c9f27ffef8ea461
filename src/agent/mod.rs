//! The node agent (kubelet): joining a server, node registration and
//! heartbeat, pod workers that run containers through the runtime's shims,
//! pod status. Simulated nodes (no containers) test and benchmark the
//! control plane without root.
//!
//! The agent talks to the server only through the public API, like any
//! client, over a connection it opens (so agents behind NAT work).

#![forbid(unsafe_code)]

pub mod container;
pub mod exec;
pub mod imagegc;
pub mod join;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod portforward;
pub mod probe;
mod response;
pub mod services;
pub mod simulate;
pub mod tunnel;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Token(String),
    #[error(
        "cannot reach the server at {url}: {source}; check --server and that the server is running"
    )]
    Connect {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the server at {url} has a CA whose hash ({actual}) does not match the join token ({expected}): a wrong --token or --server, or someone in between (man-in-the-middle); nothing was sent to it"
    )]
    CaMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("the API refused {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid --server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The serving certificate does not hold for the address joined by
    /// (or is not the pinned CA's): retrying cannot fix it.
    #[error("the server's certificate at {url} {reason}")]
    ServerCertificate { url: String, reason: String },
    /// Another machine holds the node name (its node password differs).
    #[error("{0}")]
    NodeTaken(String),
    #[error("{0}")]
    Runtime(String),
}

/// Can this machine run pods? Checks the kernel features and tools the
/// agent needs before it does anything: overlayfs (container roots),
/// cgroups with the cpu and memory controllers (pod limits) and nftables
/// (the service proxy).
///
/// # Errors
/// One line naming what is missing and how to get it.
pub fn preflight() -> Result<(), String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let cgroups_mounted = std::fs::read_dir("/sys/fs/cgroup").is_ok_and(|mut d| d.next().is_some());
    missing_kernel_features(&filesystems, cgroups_mounted)?;
    crate::runtime::cgroup::check_controllers()?;
    crate::net::nftables_works()
}

/// The overlay and cgroup checks of [`preflight`], on `/proc/filesystems`'
/// text and whether `/sys/fs/cgroup` has anything in it.
fn missing_kernel_features(filesystems: &str, cgroups_mounted: bool) -> Result<(), String> {
    let has = |fs: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    if !has("overlay") {
        return Err("the kernel has no overlay file system (containers' roots are overlays): run modprobe overlay, or use a kernel with CONFIG_OVERLAY_FS".into());
    }
    if !(has("cgroup") || has("cgroup2")) || !cgroups_mounted {
        return Err("no cgroups at /sys/fs/cgroup (pods' CPU and memory limits need them): mount them, e.g. mount -t cgroup2 none /sys/fs/cgroup".into());
    }
    Ok(())
}

/// What a real agent needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: node::NodeConfig,
    /// Shims and network namespaces (`/run/orch`).
    pub run_dir: PathBuf,
    /// Container logs (`/var/log/pods`).
    pub log_dir: PathBuf,
    /// Parent of the pods' cgroups (`/orch`).
    pub cgroup_root: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    /// The node's resolvers: what the cluster DNS forwards to and what
    /// `dnsPolicy: Default` pods get (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// When containers' logs rotate.
    pub log_limits: crate::runtime::logs::LogLimits,
    pub network: network::NetConfig,
    /// Registry mirrors and credentials (`registries.yaml`).
    pub registries: crate::runtime::image::Registries,
    pub image_gc: imagegc::Policy,
}

/// Register the node, import the images waiting in
/// `<data-dir>/agent/images/`, then heartbeat, serve the kubelet API
/// through a tunnel to the server, and run this node's pods until the
/// process stops.
///
/// # Errors
/// The node cannot be registered or the image store cannot be opened.
pub async fn run(client: Client, creds: join::Credentials, cfg: Config) -> Result<(), Error> {
    let images_dir = cfg.node.data_dir.join("images");
    let images = crate::runtime::image::ImageStore::open(&images_dir)
        .map_err(|e| Error::Runtime(format!("image store {}: {e}", images_dir.display())))?;
    import_bundled(&images, &cfg.node.data_dir.join("agent").join("images")).await;
    let images = Arc::new(images);
    node::register(&client, &cfg.node).await?;
    tracing::info!(node = %cfg.node.name, ip = %cfg.node.ip, "node registered");
    let (pod_network, overlay) = network::start(&client, &cfg.node, &cfg.network).await?;
    let own_ip = match cfg.node.ip {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    };
    let overlay = tokio::spawn(network::run_overlay(
        client.clone(),
        cfg.node.name.clone(),
        own_ip,
        overlay,
    ));
    let (host_ports, host_ports_rx) = tokio::sync::watch::channel(pods::HostPorts::default());
    let cluster_dns: std::net::IpAddr = cfg.cluster_dns.parse().map_err(|_| {
        Error::Runtime(format!(
            "--cluster-dns {:?} is not an IP address",
            cfg.cluster_dns
        ))
    })?;
    let dns_listen = services::dns_listener(pod_network.ipam.gateway());
    let dns = match services::start_dns(
        dns_listen,
        &cfg.cluster_domain,
        cluster_dns,
        &cfg.resolv_conf,
    )
    .await
    {
        Ok(dns) => Some(dns),
        Err(e) => {
            tracing::warn!("{e}; pods will not resolve cluster names on this node");
            None
        }
    };
    let service_cache = tokio::sync::watch::channel(network::Cache::default());
    let services_seen = service_cache.1.clone();
    let services = tokio::spawn(services::run(
        client.clone(),
        crate::net::proxy::ProxyConfig {
            node_name: cfg.node.name.clone(),
            node_ips: vec![cfg.node.ip],
            cluster_cidr: cfg.network.cluster_cidr,
            dns: Some((cluster_dns, dns_listen)),
        },
        dns,
        host_ports_rx,
        service_cache,
    ));
    let cgroup_v1 = crate::runtime::cgroup::v1_view(&cfg.run_dir)
        .map_err(|e| Error::Runtime(format!("{}: {e}", cfg.run_dir.join("cgroup-v1").display())))?
        .map(Arc::new);
    let runtime = Arc::new(pods::ShimRuntime {
        run_dir: cfg.run_dir.clone(),
        pods_dir: cfg.node.data_dir.join("pods"),
        mount_dirs: vec![
            cfg.node.data_dir.join("pods"),
            cfg.run_dir.join("pods"),
            cfg.run_dir.join("netns"),
        ],
        log_limits: cfg.log_limits,
        network: Some(pod_network),
        cgroup_root: cfg.cgroup_root.clone(),
    });
    let kubelet = Arc::new(pods::Kubelet {
        client: client.clone(),
        node: cfg.node.name.clone(),
        node_ip: cfg.node.ip.to_string(),
        data_dir: cfg.node.data_dir.clone(),
        run_dir: cfg.run_dir,
        log_dir: cfg.log_dir,
        cgroup_root: cfg.cgroup_root,
        puller: crate::runtime::image::Puller::new(images.clone(), cfg.registries),
        pulls: std::sync::Mutex::default(),
        images,
        cluster_dns: cfg.cluster_dns,
        cluster_domain: cfg.cluster_domain,
        resolv_conf: cfg.resolv_conf,
        log_limits: cfg.log_limits,
        starts: Arc::new(tokio::sync::Semaphore::new(pods::start_turns())),
        host_ports,
        capacity: node::capacity(),
        cgroup_v1,
        services: services_seen,
        runtime,
        api: Arc::new(pods::KubeApi(client.clone())),
    });
    for dir in kubelet.mount_dirs() {
        crate::runtime::mountns::private_subtree(&dir)
            .map_err(|e| Error::Runtime(format!("{}: {e}", dir.display())))?;
    }
    let image_gc = tokio::spawn(imagegc::run(
        client.clone(),
        cfg.node.name.clone(),
        kubelet.images.clone(),
        cfg.image_gc,
    ));
    let heartbeat = tokio::spawn(node::heartbeat(client, cfg.node));
    // The kubelet API (logs), through a connection this agent opens.
    let tunnel = tokio::spawn(tunnel::run(creds, kubelet.clone()));
    pods::run(kubelet).await;
    heartbeat.abort();
    tunnel.abort();
    image_gc.abort();
    overlay.abort();
    services.abort();
    Ok(())
}

/// Air-gapped installs: import every archive in `dir` at start.
async fn import_bundled(store: &crate::runtime::image::ImageStore, dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_file() {
            continue;
        }
        match crate::runtime::image::import(
            store,
            &path,
            None,
            &crate::runtime::image::Platform::current(),
        ) {
            Ok(images) => {
                for i in images {
                    tracing::info!(image = %i.reference, file = %path.display(), "imported");
                }
            }
            Err(err) => tracing::warn!(file = %path.display(), %err, "cannot import"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_features_are_named_with_the_fix() {
        let both = "nodev\tsysfs\nnodev\tcgroup\nnodev\tcgroup2\nnodev\toverlay\n";
        assert!(missing_kernel_features(both, true).is_ok());
        let no_overlay = missing_kernel_features("nodev\tcgroup2\n", true).unwrap_err();
        assert!(no_overlay.contains("modprobe overlay"), "{no_overlay}");
        let no_cgroups = missing_kernel_features("nodev\toverlay\n", false).unwrap_err();
        assert!(no_cgroups.contains("/sys/fs/cgroup"), "{no_cgroups}");
        assert!(missing_kernel_features(both, false).is_err());
    }
}
