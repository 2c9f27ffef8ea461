//! Pod traffic between nodes. VXLAN (the default): a device `orch-vxlan`
//! (VNI 1, UDP 8472, no learning) whose address is the node's podCIDR
//! network address /32, and per other node a route to its podCIDR through
//! its VTEP address, a permanent ARP entry for that address and a
//! forwarding entry sending the VTEP's MAC to the node's IP — all static,
//! from Node objects. host-gw: per other node a route to its podCIDR via
//! its node IP (the nodes must share an L2 segment).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::route::RouteMessage;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::netlink::{Netlink, route_destination};

pub const VXLAN: &str = "orch-vxlan";
pub const VXLAN_PORT: u16 = 8472;
/// Outer IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Node annotations that tell the other nodes how to reach this one's pods.
pub const ANNOTATION_BACKEND: &str = "orch.io/backend";
pub const ANNOTATION_NODE_IP: &str = "orch.io/node-ip";
pub const ANNOTATION_VTEP_MAC: &str = "orch.io/vtep-mac";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
    /// No routes between nodes (a single node, or routes made elsewhere).
    None,
}

impl Backend {
    /// `vxlan`, `host-gw` or `none`.
    ///
    /// # Errors
    /// Anything else, with the accepted names.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "none" => Ok(Backend::None),
            _ => Err(format!("unknown backend {s:?}: use vxlan, host-gw or none")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::None => "none",
        }
    }
}

/// Another node, as its Node object describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: (Ipv4Addr, u8),
    pub node_ip: Ipv4Addr,
    /// Its VXLAN device's MAC (VXLAN only).
    pub vtep_mac: Option<[u8; 6]>,
}

/// `0a:58:0a:2a:00:01` → bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// This node's end of the overlay.
pub struct Overlay {
    backend: Backend,
    cluster_cidr: (Ipv4Addr, u8),
    uplink: u32,
    vxlan: Option<u32>,
    /// The MTU pods get: the uplink's, less the VXLAN headers.
    pub pod_mtu: u32,
    /// The VXLAN device's MAC, to publish.
    pub vtep_mac: Option<[u8; 6]>,
    applied: HashMap<String, Peer>,
    reconciled: bool,
}

fn in_cidr(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

impl Overlay {
    /// Find the link holding `node_ip` and, for VXLAN, make (or adopt) the
    /// VXLAN device with this node's VTEP address.
    ///
    /// # Errors
    /// No link has `node_ip` (the message says to check --node-ip), or the
    /// kernel refused.
    pub fn setup(
        backend: Backend,
        node_ip: Ipv4Addr,
        own_cidr: (Ipv4Addr, u8),
        cluster_cidr: (Ipv4Addr, u8),
    ) -> io::Result<Self> {
        let mut nl = Netlink::open()?;
        let uplink = nl
            .addresses()?
            .into_iter()
            .find(|a| a.ip == IpAddr::V4(node_ip))
            .map(|a| a.index)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "no network interface has the node IP {node_ip}: pass --node-ip with an address of this machine"
                ))
            })?;
        let uplink_mtu = nl
            .links()?
            .into_iter()
            .find(|l| l.index == uplink)
            .map_or(1500, |l| l.mtu);
        let mut overlay = Overlay {
            backend,
            cluster_cidr,
            uplink,
            vxlan: None,
            pod_mtu: uplink_mtu,
            vtep_mac: None,
            applied: HashMap::new(),
            reconciled: false,
        };
        if backend != Backend::Vxlan {
            if let Some(old) = nl.link(VXLAN)? {
                nl.del_link(old.index)?;
            }
            return Ok(overlay);
        }
        overlay.pod_mtu = uplink_mtu - VXLAN_OVERHEAD;
        if nl.link(VXLAN)?.is_none() {
            let dev = LinkVxlan::new(VXLAN, 1)
                .dev(uplink)
                .local(node_ip)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(overlay.pod_mtu)
                .up()
                .build();
            nl.add_link(dev).map_err(|e| {
                io::Error::new(e.kind(), format!("creating the VXLAN device {VXLAN}: {e}"))
            })?;
        }
        let link = nl
            .link(VXLAN)?
            .ok_or_else(|| io::Error::other("the VXLAN device vanished"))?;
        nl.set_link(
            LinkUnspec::new_with_index(link.index)
                .mtu(overlay.pod_mtu)
                .up()
                .build(),
        )?;
        nl.add_address(link.index, IpAddr::V4(own_cidr.0), 32)?;
        overlay.vxlan = Some(link.index);
        overlay.vtep_mac = link.mac.as_slice().try_into().ok();
        Ok(overlay)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn route(&self, peer: &Peer) -> RouteMessage {
        let builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.pod_cidr.0, peer.pod_cidr.1);
        match self.vxlan {
            Some(vxlan) => builder
                .gateway(peer.pod_cidr.0)
                .output_interface(vxlan)
                .onlink()
                .build(),
            None => builder
                .gateway(peer.node_ip)
                .output_interface(self.uplink)
                .build(),
        }
    }

    /// Bring the routes (and VXLAN entries) to exactly `peers`: add the
    /// new and changed, remove the gone. The first call also removes
    /// routes into the cluster CIDR left from before (a node that left
    /// while this agent was down).
    ///
    /// # Errors
    /// The kernel refused; what was applied stays recorded.
    pub fn sync(&mut self, peers: &[Peer]) -> io::Result<usize> {
        if self.backend == Backend::None {
            return Ok(0);
        }
        let mut nl = Netlink::open()?;
        let mut changes = 0;
        if !self.reconciled {
            let dev = self.vxlan.unwrap_or(self.uplink);
            for r in nl.routes_via(dev)? {
                let Some(dst) = route_destination(&r) else {
                    continue;
                };
                let wanted = peers.iter().any(|p| p.pod_cidr == dst);
                if !wanted
                    && dst.1 > 0
                    && in_cidr(dst.0, self.cluster_cidr)
                    && dst.1 >= self.cluster_cidr.1
                {
                    nl.del_route(r)?;
                    changes += 1;
                }
            }
            self.reconciled = true;
        }
        let gone: Vec<Peer> = self
            .applied
            .values()
            .filter(|old| !peers.contains(old))
            .cloned()
            .collect();
        for old in gone {
            nl.del_route(self.route(&old))?;
            if let (Some(vxlan), Some(mac)) = (self.vxlan, old.vtep_mac) {
                nl.del_neighbour(vxlan, old.pod_cidr.0)?;
                nl.del_fdb(vxlan, &mac, old.node_ip)?;
            }
            self.applied.remove(&old.name);
            changes += 1;
        }
        for peer in peers {
            if self.applied.get(&peer.name) == Some(peer) {
                continue;
            }
            if let Some(vxlan) = self.vxlan {
                let Some(mac) = peer.vtep_mac else { continue };
                nl.replace_neighbour(vxlan, peer.pod_cidr.0, &mac)?;
                nl.replace_fdb(vxlan, &mac, peer.node_ip)?;
            }
            nl.replace_route(self.route(peer)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "route to node {}'s pods {}/{}: {e}",
                        peer.name, peer.pod_cidr.0, peer.pod_cidr.1
                    ),
                )
            })?;
            self.applied.insert(peer.name.clone(), peer.clone());
            changes += 1;
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_backends_parse() {
        let mac = parse_mac("0a:58:0A:2a:00:01").unwrap();
        assert_eq!(format_mac(&mac), "0a:58:0a:2a:00:01");
        assert!(parse_mac("0a:58:0a:2a:00").is_none());
        assert!(parse_mac("0a:58:0a:2a:00:01:02").is_none());
        assert_eq!(Backend::parse("host-gw").unwrap(), Backend::HostGw);
        assert!(
            Backend::parse("wireguard")
                .unwrap_err()
                .contains("vxlan, host-gw or none")
        );
        assert!(in_cidr(
            Ipv4Addr::new(10, 42, 3, 0),
            (Ipv4Addr::new(10, 42, 0, 0), 16)
        ));
        assert!(!in_cidr(
            Ipv4Addr::new(10, 43, 0, 0),
            (Ipv4Addr::new(10, 42, 0, 0), 16)
        ));
    }
}
