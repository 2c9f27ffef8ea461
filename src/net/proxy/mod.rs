//! The nftables service proxy every node agent runs (orch's kube-proxy).
//!
//! It owns one table, `ip orch`, laid out like kube-proxy's nftables mode:
//! base chains hook nat prerouting/output (→ `services`, the NodePort map,
//! `hostports`), nat postrouting (→ `masquerading`, pod egress) and filter
//! input/forward/output (→ `service-endpoints-check`, which rejects services
//! without endpoints — `reject` is not allowed in nat chains). ClusterIPs,
//! external IPs and NodePorts are looked up in verdict maps that `goto` one
//! chain per service port; that chain picks an endpoint chain with a
//! `numgen random` cascade, and the endpoint chain DNATs.
//!
//! [`render_ruleset`] turns Services, EndpointSlices and hostPorts into the
//! desired [`Ruleset`] (pure); [`plan_full`] and [`plan_update`] turn it
//! into nft commands (pure). [`Proxy::sync`] keeps each Service's rendering
//! (its chains, sets and claims on map keys) with a digest of its inputs,
//! re-renders only the Services whose object or EndpointSlices changed (by
//! uid and resourceVersion) and plans from just those, so a sync costs what
//! changed plus a digest per Service. It sends each transaction to the
//! kernel as one nf_tables netlink batch (`nfnl`: `nft` reads the whole
//! table before changing anything, which costs more than an update may
//! take at 10,000 endpoints); what that encoder does not cover goes through
//! `nft -j -f -` with the JSON the `nftables` crate writes, and `nft` stays
//! the tool to look at the table with.
//!
//! Not done here: IPv6 (addresses are skipped, table `ip6 orch` is only
//! removed by [`cleanup`]), LoadBalancer source ranges, topology hints and
//! terminating-endpoint fallback.
//!
//! The files follow that flow: `render` (Services to a [`Ruleset`]),
//! `plan` (a ruleset to nft commands), `apply` (commands to the kernel,
//! and the [`Proxy`] that runs the three), with `nfnl` the netlink
//! encoder.

#![forbid(unsafe_code)]

mod apply;
mod nfnl;
mod plan;
mod render;
#[cfg(test)]
mod tests;

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use apply::{Proxy, cleanup, encode, netlink_batch_len};
pub use plan::{Cmd, Stale, plan_full, plan_update};
pub use render::{BaseHook, ChainDef, MapDef, MapKey, Ruleset, render_ruleset};

/// orch's table name, in every family.
pub const TABLE: &str = "orch";

/// The packet-mark bit that asks `masquerading` to SNAT a connection
/// (kube-proxy's default bit, so the two never disagree on a node that once
/// ran kube-proxy).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// What went wrong while programming nftables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` could not be started or fed.
    #[error(
        "cannot run nft (the service proxy programs nftables with it; apt-get install nftables): {0}"
    )]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the transaction; nothing of it was applied.
    #[error("nft rejected the {kind} transaction of {commands} commands: {stderr}")]
    Rejected {
        /// `full resync`, `update` or `cleanup`.
        kind: &'static str,
        /// How many commands the transaction had.
        commands: usize,
        /// nft's error lines, plus the failing command when nft names its index.
        stderr: String,
    },
    /// The kernel refused a batch sent over netlink; nothing of it was
    /// applied.
    #[error("nf_tables refused the {kind} of {commands} commands {at}: {source}")]
    Refused {
        /// `full resync` or `update`.
        kind: &'static str,
        /// How many commands the batch had.
        commands: usize,
        /// Which command it refused (`at command N (…)`) or `at commit`.
        at: String,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// The batch could not be turned into JSON (a bug).
    #[error("cannot encode the nftables batch as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Node-level settings of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// The node's addresses (`--node-ip`): NodePorts are served on these,
    /// as kube-proxy's nftables mode serves them on the node's primary
    /// addresses. With none but loopback, on every local address.
    pub node_ips: Vec<IpAddr>,
    /// The pods' CIDR of the whole cluster, e.g. 10.42.0.0/16 (as (network, prefix)).
    pub cluster_cidr: (Ipv4Addr, u8),
    /// Cluster DNS: (the cluster DNS IP, e.g. 10.43.0.10; the node-local
    /// listener it is DNATed to, e.g. 10.42.0.1:53), UDP and TCP port 53.
    pub dns: Option<(IpAddr, SocketAddr)>,
}

/// A transport protocol a Service port or hostPort uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name nft uses (`inet_proto`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// The API's spelling (`TCP`, `UDP`, `SCTP`; absent means TCP).
    fn from_api(p: Option<&str>) -> Option<Self> {
        match p {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }
}

/// A container port published on the node (`hostPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Its protocol.
    pub protocol: Protocol,
    /// Only this node address; `None` (or 0.0.0.0) means every local address.
    pub host_ip: Option<IpAddr>,
    /// The port on the node.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: IpAddr,
    /// The port in the pod.
    pub container_port: u16,
}

/// What one [`Proxy::sync`] did.
#[derive(Clone, Copy, Debug)]
pub struct SyncStats {
    /// It deleted and recreated the whole table.
    pub full: bool,
    /// How many nft commands the transaction had (0: nft was not called).
    pub commands: usize,
    /// How many Services were rendered anew (the others' renderings were
    /// reused because neither they nor their EndpointSlices changed).
    pub rendered: usize,
    /// The transaction went to the kernel over netlink, not through `nft`.
    pub netlink: bool,
    /// Rendering, planning and running nft.
    pub elapsed: Duration,
}

// ---------------------------------------------------------------------------
// The desired state
// ---------------------------------------------------------------------------
