//! Pod networking figures (needs root): in network namespaces the bench
//! makes and removes — a node with the bridge, the service proxy and the
//! cluster DNS, and pods joined to it — it prints the time to set up one
//! pod's network, the latency of HTTP requests from a pod to a busybox
//! httpd in another pod by its pod IP and by a ClusterIP (and the ratio),
//! and the latency of cluster DNS queries from a pod.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch::net::dns::{Dns, query_latency};
use orch::net::ipam::Ipam;
use orch::net::netlink::in_netns;
use orch::net::pod::PodNetwork;
use orch::net::proxy::{Proxy, ProxyConfig};
use serde_json::json;
use support::{Netns, Proc, ms, pct};

const PODS: usize = 50;
const REQUESTS: usize = 1000;
const QUERIES: usize = 2000;

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// One HTTP/1.0 GET on a new connection, as a client in a pod does it.
fn get(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if body.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(std::io::Error::other("not an HTTP answer"))
    }
}

/// `n` requests to `to` from inside `netns`, each timed, sorted.
/// `n` requests to each of `to`, taking turns (so drift in the machine's
/// load weighs on every target alike); each target's times, sorted.
fn requests<const T: usize>(netns: &Path, to: [SocketAddr; T], n: usize) -> [Vec<Duration>; T] {
    in_netns(netns, || {
        for target in to {
            for _ in 0..50 {
                get(target)?; // warm up
            }
        }
        let mut times: [Vec<Duration>; T] = std::array::from_fn(|_| Vec::with_capacity(n));
        for _ in 0..n {
            for (target, times) in to.iter().zip(times.iter_mut()) {
                let t = Instant::now();
                get(*target)?;
                times.push(t.elapsed());
            }
        }
        for t in &mut times {
            t.sort();
        }
        Ok(times)
    })
    .unwrap_or_else(|e| panic!("requests to {to:?}: {e}"))
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        println!("network bench: skipped (needs root: namespaces, links, nftables)");
        return;
    }
    println!("machine: {}", support::machine());
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Netns::new("net-node");
    let cidr = (Ipv4Addr::new(10, 42, 0, 0), 24);
    let net = in_netns(&node.path(), || {
        PodNetwork::setup(Ipam::open(dir.path(), cidr)?, 1450)
    })
    .expect("bridge");

    // Pod network set-up, one pod at a time (namespaces made beforehand:
    // the shim makes them in the agent).
    let pods: Vec<Netns> = (0..PODS).map(|i| Netns::new(&format!("p{i}"))).collect();
    let mut setup = Vec::new();
    let mut ips = Vec::new();
    in_netns(&node.path(), || {
        for (i, p) in pods.iter().enumerate() {
            let t = Instant::now();
            ips.push(net.attach(&p.path(), &format!("uid-{i}"))?);
            setup.push(t.elapsed());
        }
        Ok(())
    })
    .expect("attach");
    setup.sort();
    println!(
        "pod network set-up ({PODS} pods: veth, address, route): p50 {} p99 {} (target < 20 ms)",
        ms(pct(&setup, 0.50)),
        ms(pct(&setup, 0.99))
    );

    // A busybox httpd in pod 1, a Service in front of it, the cluster DNS.
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello\n").expect("index");
    let _httpd = Proc(
        Command::new("nsenter")
            .arg(format!("--net={}", pods[1].path().display()))
            .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd (apt-get install busybox-static)"),
    );
    let server_ip = ips[1];
    let cluster_ip: Ipv4Addr = "10.43.0.100".parse().expect("ip");
    let cluster_dns: IpAddr = "10.43.0.10".parse().expect("ip");
    let gateway = net.ipam.gateway();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": "web"},
        "spec": {"clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                 "type": "ClusterIP", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .expect("service");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": "web-1",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [server_ip.to_string()], "conditions": {"ready": true}}],
    }))
    .expect("slice");
    let (services, slices) = (vec![service], vec![slice]);
    in_netns(&node.path(), || {
        let mut proxy = Proxy::new(ProxyConfig {
            node_name: "node".into(),
            node_ips: vec![],
            cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
            dns: Some((cluster_dns, SocketAddr::new(IpAddr::V4(gateway), 53))),
        });
        proxy
            .sync(&services, &slices, &[])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(())
    })
    .expect("proxy");
    // The DNS server lives on a thread in the node's namespace.
    let dns = Dns::new("cluster.local", vec![]);
    dns.update(&services, &slices);
    let node_path = node.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = in_netns(&node_path, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listen = SocketAddr::new(IpAddr::V4(gateway), 53);
                let udp = tokio::net::UdpSocket::bind(listen).await?;
                let tcp = tokio::net::TcpListener::bind(listen).await?;
                let _ = ready_tx.send(());
                dns.serve(udp, tcp).await;
                Ok(())
            })
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the DNS server started");
    // httpd takes a moment to listen.
    let client = pods[0].path();
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_netns(&client, || get(SocketAddr::from((server_ip, 8080)))).is_err() {
        assert!(Instant::now() < deadline, "busybox httpd did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }

    let [direct, via_service] = requests(
        &client,
        [
            SocketAddr::from((server_ip, 8080)),
            SocketAddr::from((cluster_ip, 80)),
        ],
        REQUESTS,
    );
    let (d50, s50) = (pct(&direct, 0.50), pct(&via_service, 0.50));
    println!(
        "HTTP GET pod → pod IP ({REQUESTS}, new connection each, taking turns with the other): p50 {} p99 {}",
        us(d50),
        us(pct(&direct, 0.99))
    );
    println!(
        "HTTP GET pod → ClusterIP ({REQUESTS}, new connection each, taking turns with the other): p50 {} p99 {}",
        us(s50),
        us(pct(&via_service, 0.99))
    );
    println!(
        "ClusterIP / pod IP latency ratio (p50): {:.2} (target ≤ 1.1)",
        s50.as_secs_f64() / d50.as_secs_f64()
    );

    let mut times = in_netns(&client, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(query_latency(
            SocketAddr::new(cluster_dns, 53),
            "web.bench.svc.cluster.local",
            QUERIES,
        )))
    })
    .expect("DNS queries");
    assert_eq!(times.len(), QUERIES, "every DNS query was answered");
    times.sort();
    println!(
        "cluster DNS query from a pod via {cluster_dns} ({QUERIES}, one after another): p50 {} p99 {} (target p99 < 2 ms)",
        us(pct(&times, 0.50)),
        us(pct(&times, 0.99))
    );

    in_netns(&node.path(), || {
        for i in 0..PODS {
            net.detach(&format!("uid-{i}"))?;
        }
        Ok(())
    })
    .expect("detach");
}
