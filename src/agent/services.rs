//! Services on this node: one cache of Services and EndpointSlices (list +
//! watch) feeds the nftables service proxy and the cluster DNS, so a
//! query or a connection never waits for the API. Every change is applied
//! as soon as it is seen (one nft transaction per batch of changes).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};

use super::network::{Cache, watch_all};
use super::pods::HostPorts;
use crate::net::dns::Dns;
use crate::net::proxy::{Proxy, ProxyConfig};

/// Where the cluster DNS listens on this node: the pods' gateway, port 53.
pub fn dns_listener(gateway: std::net::Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(gateway), 53)
}

/// Serve the cluster DNS on `listen` from the cache, forwarding other
/// names to the node's resolvers.
///
/// # Errors
/// The address cannot be bound (something else serves DNS there).
pub async fn start_dns(
    listen: SocketAddr,
    domain: &str,
    cluster_dns: IpAddr,
    resolv_conf: &std::path::Path,
) -> Result<Arc<Dns>, super::Error> {
    let resolv = std::fs::read_to_string(resolv_conf).unwrap_or_default();
    // Never forward to ourselves (a node whose resolv.conf names the
    // cluster DNS would loop).
    let upstreams: Vec<SocketAddr> = Dns::upstreams_from_resolv_conf(&resolv)
        .into_iter()
        .filter(|u| u.ip() != cluster_dns && u.ip() != listen.ip())
        .collect();
    if upstreams.is_empty() {
        tracing::warn!(
            "no upstream resolvers in {}: pods can resolve only cluster names (give one with --resolv-conf)",
            resolv_conf.display()
        );
    }
    let dns = Dns::new(domain, upstreams);
    let udp = tokio::net::UdpSocket::bind(listen).await.map_err(|e| {
        super::Error::Runtime(format!("cluster DNS: cannot listen on udp {listen}: {e}"))
    })?;
    let tcp = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        super::Error::Runtime(format!("cluster DNS: cannot listen on tcp {listen}: {e}"))
    })?;
    tokio::spawn(dns.clone().serve(udp, tcp));
    tracing::info!(%listen, "cluster DNS serving");
    Ok(dns)
}

/// Keep the proxy's rules and the DNS records in step with the API until
/// aborted.
/// The services this node knows, kept by [`run`]: its sender and a
/// receiver (the pods' workers clone another for their service variables).
pub type ServiceCache = (
    tokio::sync::watch::Sender<Cache<Service>>,
    tokio::sync::watch::Receiver<Cache<Service>>,
);

pub async fn run(
    client: Client,
    cfg: ProxyConfig,
    dns: Option<Arc<Dns>>,
    mut host_ports: tokio::sync::watch::Receiver<HostPorts>,
    (svc_tx, mut svc_rx): ServiceCache,
) {
    let (eps_tx, mut eps_rx) = tokio::sync::watch::channel(Cache::<EndpointSlice>::default());
    let watchers = [
        tokio::spawn(watch_all(Api::<Service>::all(client.clone()), svc_tx)),
        tokio::spawn(watch_all(Api::<EndpointSlice>::all(client), eps_tx)),
    ];
    let mut proxy = Some(Proxy::new(cfg));
    // Both caches listed once before the first (full) sync, so it does not
    // reject every Service for lack of endpoints it has not read yet.
    let _ = svc_rx.changed().await;
    let _ = eps_rx.changed().await;
    let mut again: Option<tokio::time::Instant>;
    loop {
        // The caches are shared, not copied: a sync reads what changed.
        let (services, slices) = (
            svc_rx.borrow_and_update().clone(),
            eps_rx.borrow_and_update().clone(),
        );
        let ports: Vec<crate::net::proxy::HostPort> = host_ports
            .borrow_and_update()
            .values()
            .flatten()
            .cloned()
            .collect();
        if let Some(dns) = &dns {
            dns.update(
                services.values().map(|s| &**s),
                slices.values().map(|s| &**s),
            );
        }
        let mut p = proxy.take().expect("the proxy is back after every sync");
        let (result, p) = tokio::task::spawn_blocking(move || {
            let r = p.sync(
                services.values().map(|s| &**s),
                slices.values().map(|s| &**s),
                &ports,
            );
            (r, p)
        })
        .await
        .expect("proxy sync panicked");
        proxy = Some(p);
        match result {
            Ok(stats) if stats.commands > 0 => {
                tracing::debug!(full = stats.full, commands = stats.commands, elapsed = ?stats.elapsed, "service rules synced");
                // Chains emptied now are deleted by a later sync.
                again = Some(tokio::time::Instant::now() + Duration::from_millis(1500));
            }
            Ok(_) => again = None,
            Err(e) => {
                tracing::warn!(error = %e, "service proxy sync failed; retrying in 1 s with a full resync");
                again = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
        let later = async {
            match again {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = svc_rx.changed() => if r.is_err() { break },
            r = eps_rx.changed() => if r.is_err() { break },
            r = host_ports.changed() => if r.is_err() { break },
            () = later => {}
        }
    }
    for w in watchers {
        w.abort();
    }
}
