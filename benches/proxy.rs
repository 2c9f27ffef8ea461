//! Service proxy figures: a full nftables sync of 1,000 Services × 10
//! endpoints, and the incremental sync after one endpoint changes.
//!
//! Runs inside a network namespace it creates and removes (needs root and
//! `nft`); nothing touches the machine's root namespace.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use orch::net::proxy::{Proxy, ProxyConfig, netlink_batch_len, plan_full, render_ruleset};
use orch::net::testns::{NetNs, have_nft};
use serde_json::json;

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;

fn service(i: usize) -> Service {
    let ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}"),
                     "uid": format!("svc-uid-{i}"), "resourceVersion": "1"},
        "spec": {"clusterIP": ip, "type": "NodePort",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}]},
    }))
    .expect("valid Service")
}

fn slice(i: usize, bump: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            // `bump` moves only the first endpoint to a new address.
            let n = i * ENDPOINTS + e + if e == 0 { bump } else { 0 };
            json!({"addresses": [format!("10.42.{}.{}", n / 250, n % 250 + 1)],
                   "conditions": {"ready": true}, "nodeName": format!("node-{}", e % 3)})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}-x"),
                     "uid": format!("slice-uid-{i}"), "resourceVersion": format!("{}", 2 + bump),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
    .expect("valid EndpointSlice")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !have_nft() {
        println!("proxy: skipped, nft is not installed");
        return;
    }
    let cfg = ProxyConfig {
        node_name: "node-0".into(),
        node_ips: vec!["192.168.1.10".parse().expect("ip")],
        cluster_cidr: (Ipv4Addr::new(10, 42, 0, 0), 16),
        dns: Some((
            "10.43.0.10".parse().expect("ip"),
            "10.42.0.1:53".parse().expect("addr"),
        )),
    };
    let services: Vec<Service> = (0..SERVICES).map(service).collect();
    let mut slices: Vec<EndpointSlice> = (0..SERVICES).map(|i| slice(i, 0)).collect();

    // Where the time of a full sync goes, outside the kernel.
    let t = Instant::now();
    let rs = render_ruleset(&cfg, &services, &slices, &[]);
    let render = t.elapsed();
    let t = Instant::now();
    let cmds = plan_full(&rs);
    let plan = t.elapsed();
    let t = Instant::now();
    let batch = netlink_batch_len(&cmds).expect("the whole table goes over netlink");
    let enc = t.elapsed();

    let ns = NetNs::create("bench").expect("create bench netns (needs root)");
    let mut proxy = Proxy::new(cfg);
    let full = ns
        .run(|| proxy.sync(&services, &slices, &[]))
        .expect("full sync");
    assert!(full.netlink, "the full sync went over netlink");
    println!(
        "proxy: full sync {SERVICES} services x {ENDPOINTS} endpoints: {} (target < 1 s), {} commands, {:.1} MB netlink batch",
        ms(full.elapsed),
        full.commands,
        batch as f64 / 1e6
    );
    println!(
        "proxy:   of which render {}, plan {}, netlink encode {}, kernel ~{}",
        ms(render),
        ms(plan),
        ms(enc),
        ms(full.elapsed.saturating_sub(render + plan + enc))
    );
    // The same table through `nft -j -f -` (what the proxy used before
    // netlink, and still uses for what it does not encode), for comparison.
    let json = orch::net::proxy::encode(&cmds).expect("JSON");
    let other = NetNs::create("bench-nft").expect("create a second bench netns");
    let t = Instant::now();
    other.run(|| {
        let mut child = std::process::Command::new("nft")
            .args(["-j", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &json)
            .expect("feed nft");
        assert!(child.wait().expect("nft").success(), "nft loads the table");
    });
    println!(
        "proxy:   the same table through nft -j -f: {} ({:.1} MB JSON; without render and plan) -> netlink / nft {:.2}",
        ms(t.elapsed()),
        json.len() as f64 / 1e6,
        full.elapsed.as_secs_f64() / t.elapsed().as_secs_f64()
    );
    drop(other);

    let mut updates = Vec::new();
    for round in 1..=5 {
        slices[round] = slice(round, 20_000);
        let s = ns
            .run(|| proxy.sync(&services, &slices, &[]))
            .expect("update");
        assert!(!s.full);
        updates.push((s.elapsed, s.commands, s.rendered, s.netlink));
    }
    updates.sort();
    let (median, commands, rendered, netlink) = updates[updates.len() / 2];
    println!(
        "proxy: update after one endpoint changes: {} median of 5 (target < 50 ms), {commands} commands, {rendered} service(s) rendered, {}",
        ms(median),
        if netlink {
            "over netlink"
        } else {
            "through nft"
        }
    );
    let t = Instant::now();
    let _ = render_ruleset(proxy.config(), &services, &slices, &[]);
    println!(
        "proxy:   (rendering the whole desired state without the cache: {})",
        ms(t.elapsed())
    );
    let noop = ns
        .run(|| proxy.sync(&services, &slices, &[]))
        .expect("no-op");
    println!(
        "proxy: no-change sync: {}, {} commands, {} services rendered",
        ms(noop.elapsed),
        noop.commands,
        noop.rendered
    );
}
