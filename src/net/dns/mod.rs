//! Cluster DNS, served in-process by every node agent (no CoreDNS).
//!
//! The agent feeds its Service and EndpointSlice cache to [`Dns::update`],
//! which builds an immutable [`Records`] index and swaps it in atomically;
//! queries are answered from that index alone, never with an API call.
//! Names follow the Kubernetes DNS specification
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>):
//! service A/AAAA, SRV for named ports, headless endpoints and their
//! hostnames, ExternalName CNAMEs, PTRs and the deprecated pod records.
//! Everything outside the cluster zone (and reverse names we do not know) is
//! relayed to the node's upstream resolvers.
//!
//! Deliberately not here: caching of upstream answers, DNSSEC, zone
//! transfers, dynamic update. The resolution logic ([`Records::build`] and the
//! lookup) is pure; sockets live in [`Dns::answer`]'s forwarding and in
//! [`Dns::serve`].
//!
//! The parts: `zone` (the records built from Services and EndpointSlices,
//! and their lookup), `server` (answering queries, serving them over UDP
//! and TCP) and `forwarder` (relaying other names to the upstream
//! resolvers).

#![forbid(unsafe_code)]

mod forwarder;
mod server;
#[cfg(test)]
mod tests;
mod zone;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use forwarder::{Error, UPSTREAM_TIMEOUT, node_resolv_conf, query_latency};
pub use zone::{Records, TTL};

/// The cluster DNS server of one node: the zone, the upstream resolvers and
/// the current [`Records`].
///
/// ```no_run
/// # async fn example() -> std::io::Result<()> {
/// use orch::net::dns::Dns;
/// let upstreams = Dns::upstreams_from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf")?);
/// let dns = Dns::new("cluster.local", upstreams);
/// let udp = tokio::net::UdpSocket::bind("127.0.0.1:5353").await?;
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:5353").await?;
/// tokio::spawn(dns.clone().serve(udp, tcp));
/// dns.update(&[], &[]);
/// # Ok(()) }
/// ```
pub struct Dns {
    domain: String,
    upstreams: Vec<SocketAddr>,
    records: RwLock<Arc<Records>>,
    /// Addresses we serve on: never forwarded to (no loop through ourselves).
    own_addrs: RwLock<Vec<SocketAddr>>,
}

impl Dns {
    /// A server for zone `domain` with no Services yet, forwarding other
    /// names to `upstreams` in order.
    pub fn new(domain: &str, upstreams: Vec<SocketAddr>) -> Arc<Dns> {
        Arc::new(Dns {
            domain: domain.to_string(),
            upstreams,
            records: RwLock::new(Arc::new(Records::build(domain, &[], &[]))),
            own_addrs: RwLock::new(Vec::new()),
        })
    }

    /// Rebuilds the index from the agent's Service/EndpointSlice cache and
    /// swaps it in; queries in flight keep the index they started with.
    pub fn update<'a>(
        &self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) {
        let records = Arc::new(Records::build(&self.domain, services, slices));
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
    }

    fn records(&self) -> Arc<Records> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
