//! The agent's side of networking: waits for the node's podCIDR (the
//! server's node IPAM gives it), sets up the bridge and the overlay,
//! publishes how other nodes reach this one's pods (Node annotations), and
//! keeps routes to every other node's pods as Node objects come and go.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Error;
use crate::net::ipam::{Ipam, parse_cidr};
use crate::net::overlay::{
    ANNOTATION_BACKEND, ANNOTATION_NODE_IP, ANNOTATION_VTEP_MAC, Backend, Overlay, Peer,
    format_mac, parse_mac,
};
use crate::net::pod::PodNetwork;

/// How this node's pods are networked.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// All pods' addresses (each node has a /24 of it).
    pub cluster_cidr: (Ipv4Addr, u8),
    pub backend: Backend,
}

/// A cache of every object of a kind, by `namespace/name`.
pub type Cache<K> = Arc<BTreeMap<String, Arc<K>>>;

fn key<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

/// Keep `tx` holding every object `api` lists, by list and watch (a
/// relist after errors or an expired version); forever.
pub async fn watch_all<K>(api: Api<K>, tx: tokio::sync::watch::Sender<Cache<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    loop {
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "list failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut rv = list.metadata.resource_version.clone().unwrap_or_default();
        let mut map: BTreeMap<String, Arc<K>> = list
            .items
            .into_iter()
            .map(|o| (key(&o), Arc::new(o)))
            .collect();
        tx.send_replace(Arc::new(map.clone()));
        'watch: loop {
            let stream = match api.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s,
                Err(_) => break 'watch,
            };
            let mut stream = stream.boxed();
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => break, // the watch timed out: watch on
                    Err(_) => break 'watch,
                };
                let mut changed = true;
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        rv = o.resource_version().unwrap_or_default();
                        map.insert(key(&o), Arc::new(o));
                    }
                    WatchEvent::Deleted(o) => {
                        rv = o.resource_version().unwrap_or_default();
                        map.remove(&key(&o));
                    }
                    WatchEvent::Bookmark(b) => {
                        rv = b.metadata.resource_version;
                        changed = false;
                    }
                    WatchEvent::Error(_) => break 'watch, // 410 Gone: relist
                }
                if changed {
                    tx.send_replace(Arc::new(map.clone()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait for the node's podCIDR, then set up the overlay and the bridge
/// and publish this node's VTEP. Returns the pod network and the overlay
/// (for [`run_overlay`]).
///
/// # Errors
/// The node IP is not IPv4 or not on this machine, or the kernel refused.
pub async fn start(
    client: &Client,
    node: &super::node::NodeConfig,
    cfg: &NetConfig,
) -> Result<(Arc<PodNetwork>, Overlay), Error> {
    let IpAddr::V4(node_ip) = node.ip else {
        return Err(Error::Runtime(format!(
            "the node IP {} is IPv6; pod networking needs an IPv4 --node-ip for now",
            node.ip
        )));
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let waiting_since = tokio::time::Instant::now();
    let mut said = false;
    let pod_cidr = loop {
        if let Ok(n) = nodes.get(&node.name).await
            && let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone())
        {
            break parse_cidr(&cidr)
                .map_err(|e| Error::Runtime(format!("the node's podCIDR: {e}")))?;
        }
        if !said && waiting_since.elapsed() > Duration::from_secs(10) {
            tracing::warn!(
                "still waiting for the server to give this node a podCIDR (spec.podCIDR); is the server's --cluster-cidr full?"
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (backend, cluster_cidr, data_dir) = (cfg.backend, cfg.cluster_cidr, node.data_dir.clone());
    let (network, overlay) = tokio::task::spawn_blocking(move || {
        let overlay = Overlay::setup(backend, node_ip, pod_cidr, cluster_cidr)?;
        let ipam = Ipam::open(&data_dir.join("net").join("ipam"), pod_cidr)?;
        let network = PodNetwork::setup(ipam, overlay.pod_mtu)?;
        std::io::Result::Ok((network, overlay))
    })
    .await
    .map_err(|e| Error::Runtime(e.to_string()))?
    .map_err(|e| Error::Runtime(format!("pod network: {e}")))?;
    let mut annotations = json!({
        ANNOTATION_BACKEND: backend.name(),
        ANNOTATION_NODE_IP: node_ip.to_string(),
    });
    if let Some(mac) = overlay.vtep_mac {
        annotations[ANNOTATION_VTEP_MAC] = json!(format_mac(&mac));
    }
    nodes
        .patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map_err(|source| Error::Api {
            what: "publishing the node's overlay address".into(),
            source,
        })?;
    tracing::info!(pod_cidr = %format!("{}/{}", pod_cidr.0, pod_cidr.1), backend = backend.name(), mtu = overlay.pod_mtu, "pod network ready");
    Ok((Arc::new(network), overlay))
}

/// The other nodes this one routes pods' traffic to.
fn peers(nodes: &Cache<Node>, own: &str, own_ip: Option<Ipv4Addr>, backend: Backend) -> Vec<Peer> {
    let mut out = Vec::new();
    for n in nodes.values() {
        let name = n.name_any();
        if name == own {
            continue;
        }
        let Some(cidr) = n
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| parse_cidr(c).ok())
        else {
            continue;
        };
        let a = n.annotations();
        let Some(node_ip) = a
            .get(ANNOTATION_NODE_IP)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if Some(node_ip) == own_ip {
            // Another agent on this machine's address (tests run several
            // in one namespace): nothing to route through.
            continue;
        }
        let vtep_mac = a.get(ANNOTATION_VTEP_MAC).and_then(|m| parse_mac(m));
        if backend == Backend::Vxlan && vtep_mac.is_none() {
            continue;
        }
        out.push(Peer {
            name,
            pod_cidr: cidr,
            node_ip,
            vtep_mac,
        });
    }
    out
}

/// Keep the routes to the other nodes' pods in step with the Node objects.
pub async fn run_overlay(
    client: Client,
    own: String,
    own_ip: Option<Ipv4Addr>,
    mut overlay: Overlay,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(Cache::<Node>::default());
    let watcher = tokio::spawn(watch_all(Api::<Node>::all(client), tx));
    let mut last: Option<Vec<Peer>> = None;
    loop {
        if rx.changed().await.is_err() {
            break;
        }
        let want = peers(&rx.borrow_and_update(), &own, own_ip, overlay.backend());
        if last.as_ref() == Some(&want) {
            continue;
        }
        let (result, back) = tokio::task::spawn_blocking({
            let want = want.clone();
            move || {
                let r = overlay.sync(&want);
                (r, overlay)
            }
        })
        .await
        .expect("overlay sync panicked");
        overlay = back;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                changes = n,
                peers = want.len(),
                "routes to other nodes' pods updated"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "updating routes to other nodes' pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                rx.mark_changed();
                continue;
            }
        }
        last = Some(want);
    }
    watcher.abort();
}

/// `orch agent --cleanup`: remove the service proxy's tables, the bridge
/// and the VXLAN device from this network namespace.
///
/// # Errors
/// nft or the kernel refused; the message says which.
pub fn cleanup() -> Result<(), String> {
    crate::net::proxy::cleanup().map_err(|e| format!("removing the nftables tables: {e}"))?;
    let mut nl = crate::net::netlink::Netlink::open().map_err(|e| format!("netlink: {e}"))?;
    for name in [crate::net::pod::BRIDGE, crate::net::overlay::VXLAN] {
        if let Some(link) = nl.link(name).map_err(|e| format!("{name}: {e}"))? {
            nl.del_link(link.index)
                .map_err(|e| format!("removing {name}: {e}"))?;
        }
    }
    Ok(())
}
