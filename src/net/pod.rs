//! A pod's network: the bridge `orch0` holding the gateway (the first
//! address of the node's podCIDR), and per pod a veth pair — `eth0` in the
//! pod's namespace with an address from [`Ipam`], the host end a port of
//! the bridge — and a default route through the gateway. All over netlink
//! from the agent's process; the pod's side is set up from a short-lived
//! thread inside the pod's namespace ([`in_netns`]).
//!
//! The cluster is IPv4: neither end of a pod's veth gets an IPv6 link-local
//! address (`addr_gen_mode` none; IPv6 stays enabled, `::1` included).
//! Otherwise every new port's duplicate-address probes and multicast
//! reports flood the bridge to every pod, a cost that grows with the pods.

#![forbid(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_route::link::{InfoBridgePort, InfoData, InfoPortData, InfoPortKind, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::ipam::Ipam;
use super::netlink::{Netlink, in_netns, is_errno};

/// The bridge every pod of the node is a port of.
pub const BRIDGE: &str = "orch0";

/// The pod network of this node.
pub struct PodNetwork {
    pub ipam: Ipam,
    pub mtu: u32,
    bridge: u32,
}

/// No IPv6 link-local address for device `dev` (or, for `default`, for
/// the devices that arrive in the calling thread's namespace from now on).
/// Nothing to do on a kernel without IPv6.
fn no_link_local(dev: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/addr_gen_mode");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}"))),
    }
}

/// The host end of a pod's veth pair: `veth` and 11 hex digits of a hash
/// of its UID (link names have at most 15 characters).
pub fn host_veth(uid: &str) -> String {
    // FNV-1a: stable across versions and machines.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// A fixed, locally administered MAC for the bridge, from the gateway
/// address: a bridge without one takes its lowest port's, which changes
/// as pods come and go and leaves stale ARP entries in the pods.
fn bridge_mac(gateway: Ipv4Addr) -> Vec<u8> {
    let o = gateway.octets();
    vec![0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

impl PodNetwork {
    /// Make (or adopt) the bridge with the gateway address, turn on IPv4
    /// forwarding, and remove an old gateway address of another podCIDR.
    ///
    /// # Errors
    /// The kernel refused; the message names the step.
    pub fn setup(ipam: Ipam, mtu: u32) -> io::Result<Self> {
        let step = |what: &'static str| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let mut nl = Netlink::open()?;
        let gateway = ipam.gateway();
        if nl.link(BRIDGE)?.is_none() {
            let bridge = LinkBridge::new(BRIDGE)
                .mtu(mtu)
                .address(bridge_mac(gateway))
                .nf_call_iptables(true)
                .build();
            match nl.add_link(bridge) {
                Err(e) if !is_errno(&e, rustix::io::Errno::EXIST) => {
                    return Err(step("creating the bridge orch0")(e));
                }
                _ => {}
            }
        }
        let link = nl
            .link(BRIDGE)?
            .ok_or_else(|| io::Error::other("the bridge orch0 vanished"))?;
        nl.set_link(LinkUnspec::new_with_index(link.index).mtu(mtu).up().build())
            .map_err(step("bringing orch0 up"))?;
        for a in nl.addresses()? {
            if a.index == link.index
                && a.ip.is_ipv4()
                && (a.ip != IpAddr::V4(gateway) || a.prefix != ipam.prefix())
            {
                nl.del_address(a)
                    .map_err(step("removing an old orch0 address"))?;
            }
        }
        nl.add_address(link.index, IpAddr::V4(gateway), ipam.prefix())
            .map_err(step("giving orch0 its gateway address"))?;
        // Bridged traffic must pass the service proxy's rules (a pod's
        // answer to a pod on the same bridge that reached it through a
        // ClusterIP): that is br_netfilter, which k3s loads too.
        let br_netfilter = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
        if !br_netfilter.exists() {
            let _ = std::process::Command::new("modprobe")
                .arg("br_netfilter")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if !br_netfilter.exists() {
                tracing::warn!(
                    "br_netfilter is not loaded: pods cannot reach Services whose endpoints are on their own node; run modprobe br_netfilter (and add it to /etc/modules-load.d)"
                );
            }
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(step(
            "turning on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)",
        ))?;
        Ok(PodNetwork {
            ipam,
            mtu,
            bridge: link.index,
        })
    }

    /// Give the pod whose namespace is pinned at `netns` its address and
    /// link; nothing changes when it has them already (the agent
    /// restarted). Runs in the node's namespace (a blocking thread of the
    /// agent).
    ///
    /// # Errors
    /// No address is left, or the kernel refused; the message names the step.
    pub fn attach(&self, netns: &Path, uid: &str) -> io::Result<Ipv4Addr> {
        let ip = self.ipam.allocate(uid)?;
        let want = IpAddr::V4(ip);
        let has_it = in_netns(netns, || {
            // Before eth0 arrives: a device takes its namespace's defaults.
            no_link_local("default")?;
            let mut nl = Netlink::open()?;
            let Some(eth0) = nl.link("eth0")? else {
                return Ok(false);
            };
            Ok(eth0.up
                && nl
                    .addresses()?
                    .iter()
                    .any(|a| a.index == eth0.index && a.ip == want))
        })?;
        let host = host_veth(uid);
        let mut nl = Netlink::open()?;
        if has_it && nl.link(&host)?.is_some() {
            return Ok(ip);
        }
        if let Some(old) = nl.link(&host)? {
            nl.del_link(old.index)?;
        }
        let ns = std::fs::File::open(netns)?;
        let peer = LinkUnspec::new_with_name("eth0")
            .mtu(self.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(&host, "eth0")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(self.mtu)
            .controller(self.bridge)
            .build();
        nl.add_link(veth)
            .map_err(|e| io::Error::new(e.kind(), format!("creating the veth pair {host}: {e}")))?;
        no_link_local(&host)?;
        // Hairpin: a pod's connection to a Service that picks the pod
        // itself leaves and re-enters the bridge through the same port.
        let port = nl
            .link(&host)?
            .ok_or_else(|| io::Error::other(format!("the veth {host} vanished")))?;
        nl.set_link(LinkUnspec::new_with_index(port.index).up().build())
            .map_err(|e| io::Error::new(e.kind(), format!("setting {host} up: {e}")))?;
        nl.change_link(
            LinkUnspec::new_with_index(port.index)
                .set_port_kind(InfoPortKind::Bridge)
                .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )]))
                .build(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("hairpin mode on {host}: {e}")))?;
        let (gateway, prefix) = (self.ipam.gateway(), self.ipam.prefix());
        in_netns(netns, || {
            let mut nl = Netlink::open()?;
            let eth0 = nl
                .link("eth0")?
                .ok_or_else(|| io::Error::other("eth0 did not arrive in the pod's namespace"))?;
            nl.add_address(eth0.index, want, prefix)?;
            nl.set_link(LinkUnspec::new_with_index(eth0.index).up().build())?;
            nl.replace_route(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(eth0.index)
                    .build(),
            )?;
            // The carrier comes a moment after both ends are up; until
            // then the pod's first connection fails with "network is
            // unreachable". Containers start right after this.
            for _ in 0..200 {
                if nl.link("eth0")?.is_some_and(|l| l.lower_up) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(())
        })
        .map_err(|e| io::Error::new(e.kind(), format!("configuring eth0 of the pod: {e}")))?;
        Ok(ip)
    }

    /// After a crash or pods deleted while the agent was away: free the
    /// addresses and remove the veths of pods not in `live`. How many
    /// addresses and links went.
    ///
    /// # Errors
    /// The kernel or the disk refused.
    pub fn reconcile(&self, live: &std::collections::HashSet<String>) -> io::Result<usize> {
        let freed = self.ipam.reconcile(live)?;
        let wanted: std::collections::HashSet<String> = live.iter().map(|u| host_veth(u)).collect();
        let mut nl = Netlink::open()?;
        let mut removed = 0;
        for l in nl.links()? {
            if l.master == Some(self.bridge)
                && l.name.starts_with("veth")
                && !wanted.contains(&l.name)
            {
                nl.del_link(l.index)?;
                removed += 1;
            }
        }
        Ok(freed.len() + removed)
    }

    /// Remove the pod's veth pair and free its address (either gone
    /// already is fine).
    ///
    /// # Errors
    /// The kernel or the disk refused.
    pub fn detach(&self, uid: &str) -> io::Result<()> {
        // The address is freed even when the link cannot be removed (it
        // goes with the pod's namespace anyway).
        let link = Netlink::open().and_then(|mut nl| match nl.link(&host_veth(uid))? {
            Some(link) => nl.del_link(link.index),
            None => Ok(()),
        });
        self.ipam.release(uid)?;
        link
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_differ() {
        let a = host_veth("0b5e2c3a-1111-4e4e-9f9f-000000000001");
        let b = host_veth("0b5e2c3a-1111-4e4e-9f9f-000000000002");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth("0b5e2c3a-1111-4e4e-9f9f-000000000001"));
    }
}
