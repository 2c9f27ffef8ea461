//! Pod networking, the service proxy and cluster DNS — root, and only in
//! network namespaces the tests create.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use orch::net::ipam::{Ipam, parse_cidr};
use orch::net::netlink::{Netlink, in_netns};
use orch::net::pod::{BRIDGE, PodNetwork, host_veth};
use support::Netns;

/// Echo one line back on `ip:port` inside `netns`, on a thread of its own.
fn echo_server(netns: &Path, ip: Ipv4Addr) -> std::thread::JoinHandle<String> {
    let netns = netns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        in_netns(&netns, || {
            let listener = TcpListener::bind(SocketAddr::from((ip, 7000)))?;
            tx.send(()).unwrap();
            let (mut s, peer) = listener.accept()?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            s.write_all(&buf[..n])?;
            Ok(peer.ip().to_string())
        })
        .unwrap()
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    handle
}

fn call(netns: &Path, ip: Ipv4Addr) -> std::io::Result<String> {
    in_netns(netns, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((ip, 7000)), Duration::from_secs(3))?;
        s.write_all(b"hello")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })
}

#[test]
fn pods_get_addresses_on_the_bridge_reach_each_other_and_leave_nothing_behind() {
    let node = Netns::new("pn-node");
    let (pod_a, pod_b) = (Netns::new("pn-a"), Netns::new("pn-b"));
    let dir = tempfile::tempdir().unwrap();
    let cidr = parse_cidr("10.42.5.0/24").unwrap();
    let started = std::time::Instant::now();
    let (a, b) = in_netns(&node.path(), || {
        let net = PodNetwork::setup(Ipam::open(dir.path(), cidr)?, 1450)?;
        let a = net.attach(&pod_a.path(), "uid-a")?;
        let b = net.attach(&pod_b.path(), "uid-b")?;
        // Again (an agent that restarted): same addresses, nothing redone.
        assert_eq!(net.attach(&pod_a.path(), "uid-a")?, a);
        Ok((a, b))
    })
    .unwrap();
    eprintln!("bridge + 2 pods set up in {:?}", started.elapsed());
    assert_eq!(a, Ipv4Addr::new(10, 42, 5, 2));
    assert_eq!(b, Ipv4Addr::new(10, 42, 5, 3));

    // Pod to pod over the bridge, pod to gateway; no masquerade in between.
    let server = echo_server(&pod_b.path(), b);
    assert_eq!(call(&pod_a.path(), b).unwrap(), "hello");
    assert_eq!(server.join().unwrap(), a.to_string());
    let server = echo_server(&node.path(), Ipv4Addr::new(10, 42, 5, 1));
    assert_eq!(
        call(&pod_a.path(), Ipv4Addr::new(10, 42, 5, 1)).unwrap(),
        "hello"
    );
    server.join().unwrap();

    // The pod side: eth0 with the MTU, the address and a default route.
    let eth0 = in_netns(&pod_a.path(), || Netlink::open()?.link("eth0"))
        .unwrap()
        .unwrap();
    assert_eq!(eth0.mtu, 1450);

    // Detach: the veth pair is gone, the address free.
    in_netns(&node.path(), || {
        let net = PodNetwork::setup(Ipam::open(dir.path(), cidr)?, 1450)?;
        net.detach("uid-a")?;
        let mut nl = Netlink::open()?;
        assert!(nl.link(&host_veth("uid-a"))?.is_none());
        assert!(nl.link(&host_veth("uid-b"))?.is_some());
        assert!(nl.link(BRIDGE)?.is_some());
        let owners: Vec<String> = net.ipam.assigned()?.into_iter().map(|x| x.1).collect();
        assert_eq!(owners, ["uid-b"]);
        Ok(())
    })
    .unwrap();
    assert!(
        in_netns(&pod_a.path(), || Netlink::open()?.link("eth0"))
            .unwrap()
            .is_none(),
        "the pod's end went with the host's"
    );
}
