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

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS` inside `netns`, its output.
fn ip_in(netns: &Netns, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(&netns.0)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Machines on one L2 segment: a switch namespace holding a bridge, and
/// each machine a namespace joined to it by a veth pair (`eth0` inside,
/// 192.168.77.<n>/24).
struct Lan {
    switch: Netns,
}

impl Lan {
    fn new() -> Self {
        let switch = Netns::new("sw");
        ip(&["-n", &switch.0, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch.0, "link", "set", "br0", "up"]);
        Lan { switch }
    }

    /// A machine with address 192.168.77.`host`.
    fn machine(&self, tag: &str, host: u8) -> Netns {
        let ns = Netns::new(tag);
        let port = format!("p{host}");
        ip(&[
            "-n",
            &self.switch.0,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.0,
        ]);
        ip(&[
            "-n",
            &self.switch.0,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("192.168.77.{host}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ns
    }
}

const WEB: &str = "
apiVersion: v1
kind: Pod
metadata: {name: NAME, labels: {app: web}}
spec:
  nodeName: NODE
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
";

const CLIENT: &str = "
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
";

/// `wget -qO- URL` from the client pod: the page, or the error.
fn fetch(server: &support::TestServer, url: &str) -> Result<String, String> {
    let out = server.kubectl(
        "1.33",
        // Not wget -T: this busybox's wget crashes with it.
        &[
            "exec", "client", "--", "busybox", "timeout", "5", "wget", "-qO-", url,
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn pod_ip(server: &support::TestServer, name: &str) -> String {
    server.ok(
        "1.33",
        &["get", "pod", name, "-o", "jsonpath={.status.podIP}"],
    )
}

#[test]
fn pods_services_and_names_work_across_nodes() {
    let lan = Lan::new();
    let srv = lan.machine("srv", 1);
    let (n1, n2) = (lan.machine("n1", 11), lan.machine("n2", 12));
    let _client_host = lan.machine("cl", 100);
    let server = support::TestServer::start_in_netns(&srv.0, &["--bind-address", "192.168.77.1"]);
    let token = server.dir.path().join("server/token");
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (name, ns, ip) in [("n1", &n1, "192.168.77.11"), ("n2", &n2, "192.168.77.12")] {
        let (data, run, logs) = support::agents::agent_dirs(&dir.path().join(name));
        agents.push(support::agents::Agent::start_as(
            &server,
            ns,
            &data,
            &run,
            &logs,
            &format!("net-{name}"),
            name,
            &token,
            &["--node-ip", ip],
        ));
    }
    server.wait_json(&["get", "nodes"], 60, "both nodes Ready", |v| {
        v["items"]
            .as_array()
            .is_some_and(|items| items.len() == 2 && items.iter().all(support::agents::is_ready))
    });
    let web = |name: &str, node: &str| WEB.replace("NAME", name).replace("NODE", node);
    let manifest = server.write(
        "pods.yaml",
        &format!(
            "{}\n---\n{}\n---\n{}",
            web("web-1", "n1"),
            web("web-2", "n2"),
            CLIENT
        ),
    );
    server.ok("1.33", &["apply", "-f", manifest.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/web-1",
            "pod/web-2",
            "pod/client",
            "--timeout=90s",
        ],
    );
    let (ip1, ip2, ipc) = (
        pod_ip(&server, "web-1"),
        pod_ip(&server, "web-2"),
        pod_ip(&server, "client"),
    );
    assert!(ip1.starts_with("10.42.") && ip2.starts_with("10.42.") && ipc.starts_with("10.42."));
    assert_ne!(
        ip1.rsplit_once('.').unwrap().0,
        ip2.rsplit_once('.').unwrap().0,
        "the nodes have different podCIDRs"
    );

    // Pod to pod: on one node, and across nodes over VXLAN.
    assert_eq!(
        fetch(&server, &format!("http://{ip1}:8080/")).unwrap(),
        "web-1"
    );
    assert_eq!(
        fetch(&server, &format!("http://{ip2}:8080/")).unwrap(),
        "web-2"
    );
    assert!(ip_in(&n1, &["-d", "link", "show", "orch-vxlan"]).contains("vxlan id 1"));
    drop(agents);
}
