//! A small synchronous rtnetlink client: one socket in the network
//! namespace of the thread that opened it, requests built with
//! rtnetlink's message builders and netlink-packet-route's types,
//! acknowledged one at a time. Pod set-up runs on a short-lived thread
//! that has entered the pod's namespace ([`in_netns`]), so the agent never
//! forks and never moves its own threads between namespaces for long.

#![forbid(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rustix::io::Errno;

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Vec<u8>,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    pub up: bool,
    /// Carrier: the other end of a veth is up too, packets flow.
    pub lower_up: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mtu: 0,
            mac: Vec::new(),
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            lower_up: m.header.flags.contains(LinkFlags::LowerUp),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(mac) => link.mac.clone_from(mac),
                LinkAttribute::Controller(i) => link.master = Some(*i),
                _ => {}
            }
        }
        link
    }
}

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// The kernel refused the socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Send one request and collect the replies up to its acknowledgement
    /// (or the end of a dump).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut replies = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink reply of length 0",
                    ));
                }
                at += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(errno(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, NLM_F_ACK | flags).map(drop)
    }

    /// The link called `name`, if there is one.
    ///
    /// # Errors
    /// The kernel did not answer.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(m), NLM_F_ACK) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if is_errno(&e, Errno::NODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    ///
    /// # Errors
    /// The kernel did not answer.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Create a link; it must not exist.
    ///
    /// # Errors
    /// It exists (EEXIST) or the kernel refused it.
    pub fn add_link(&mut self, message: LinkMessage) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Change a link (up, MTU, master, name).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn set_link(&mut self, message: LinkMessage) -> io::Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Change a link through RTM_NEWLINK, as `ip link set … type …`
    /// does: the only way to set a bridge port's options (link info's
    /// port data), which RTM_SETLINK ignores.
    ///
    /// # Errors
    /// The kernel refused.
    pub fn change_link(&mut self, message: LinkMessage) -> io::Result<()> {
        self.ack(RouteNetlinkMessage::NewLink(message), 0)
    }

    /// Delete a link (a veth takes its peer with it).
    ///
    /// # Errors
    /// The kernel refused; a link that is gone already is not an error.
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.ack(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if is_errno(&e, Errno::NODEV) => Ok(()),
            other => other,
        }
    }

    /// Every address of the given family (`None`: all).
    ///
    /// # Errors
    /// The kernel did not answer.
    pub fn addresses(&mut self) -> io::Result<Vec<Address>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Some(Address {
                        index: a.header.index,
                        ip,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Give link `index` the address `ip/prefix` (no error if it has it).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(ip);
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip
            && prefix < 31
        {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            m.attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                    u32::from(v4) | host_bits,
                )));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Remove an address from a link (gone already is fine).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn del_address(&mut self, a: Address) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(a.ip);
        m.header.prefix_len = a.prefix;
        m.header.index = a.index;
        m.attributes.push(AddressAttribute::Local(a.ip));
        match self.ack(RouteNetlinkMessage::DelAddress(m), 0) {
            Err(e) if is_errno(&e, Errno::ADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }

    /// Add or replace a route.
    ///
    /// # Errors
    /// The kernel refused (e.g. the gateway is unreachable).
    pub fn replace_route(&mut self, route: RouteMessage) -> io::Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Delete a route (gone already is fine).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn del_route(&mut self, route: RouteMessage) -> io::Result<()> {
        match self.ack(RouteNetlinkMessage::DelRoute(route), 0) {
            Err(e) if is_errno(&e, Errno::SRCH) => Ok(()),
            other => other,
        }
    }

    /// The IPv4 routes of the main table through link `index`.
    ///
    /// # Errors
    /// The kernel did not answer.
    pub fn routes_via(&mut self, index: u32) -> io::Result<Vec<RouteMessage>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.table == 254
                        && r.attributes.contains(&RouteAttribute::Oif(index)) =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    /// A permanent neighbour (ARP) entry `ip → mac` on link `index`.
    ///
    /// # Errors
    /// The kernel refused.
    pub fn replace_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: &[u8]) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Remove a neighbour entry (gone already is fine).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn del_neighbour(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.ack(RouteNetlinkMessage::DelNeighbour(m), 0) {
            Err(e) if is_errno(&e, Errno::NOENT) => Ok(()),
            other => other,
        }
    }

    /// A forwarding entry of a VXLAN device: frames for `mac` go to `dst`.
    ///
    /// # Errors
    /// The kernel refused.
    pub fn replace_fdb(&mut self, index: u32, mac: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let m = fdb_message(index, mac, dst);
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .or_else(|e| {
            // Some kernels want APPEND for a second destination; one
            // destination per MAC is all we keep, so retry plainly.
            if is_errno(&e, Errno::EXIST) {
                let m = fdb_message(index, mac, dst);
                self.ack(RouteNetlinkMessage::NewNeighbour(m), NLM_F_APPEND)
            } else {
                Err(e)
            }
        })
    }

    /// Remove a VXLAN forwarding entry (gone already is fine).
    ///
    /// # Errors
    /// The kernel refused.
    pub fn del_fdb(&mut self, index: u32, mac: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        match self.ack(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
            0,
        ) {
            Err(e) if is_errno(&e, Errno::NOENT) => Ok(()),
            other => other,
        }
    }
}

fn fdb_message(index: u32, mac: &[u8], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Is `e` the kernel's `errno`?
pub fn is_errno(e: &io::Error, errno: rustix::io::Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// The destination of an IPv4 route, if it has one.
pub fn route_destination(r: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Some((*ip, r.header.destination_prefix_length))
        }
        _ => None,
    })
}

/// Run `f` on a thread of its own inside the network namespace pinned at
/// `netns` (the thread ends with `f`, so no thread of the caller ever
/// changes namespace).
///
/// # Errors
/// The namespace cannot be opened or entered, or `f` failed.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns".into())
            .stack_size(256 * 1024)
            .spawn_scoped(s, move || {
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("a network set-up thread panicked"))?
    })
}
