//! Control-plane benchmark: prints the figures issue #4 names.
//!
//! - scheduler throughput: pods bound per second with 1,000 nodes and
//!   10,000 pending pods;
//! - time from applying 30 Deployments x 100 replicas on 100 simulated nodes
//!   to all 3,000 pods Running, the server RSS then, and the p99 of API
//!   writes made during that churn.
//!
//! Run with `cargo bench --bench control_plane`.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{client, machine, ms, pct, rss_kib, start_server};

async fn bound_count(pods: &Api<Pod>) -> usize {
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    list.items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count()
}

async fn scheduler_throughput(client: &Client) -> (f64, Duration) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tasks = Vec::new();
    for w in 0..20 {
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let name = format!("bench-{w}-{i}");
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                    "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .expect("node");
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .expect("create node");
            }
        }));
    }
    for t in tasks {
        t.await.expect("node creator");
    }
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = ns
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "sched"}})).expect("ns"),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sched");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..50 {
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("p-{w}-{i}")},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
                })).expect("pod");
                pods.create(&PostParams::default(), &pod).await.expect("create pod");
            }
        }));
    }
    for t in tasks {
        t.await.expect("pod creator");
    }
    let created = start.elapsed();
    loop {
        if bound_count(&pods).await >= 10_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "pods not bound within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = start.elapsed();
    (10_000.0 / elapsed.as_secs_f64(), created)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("control plane bench: run with `cargo bench --bench control_plane`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("orch control-plane benchmark — {}", machine());
    {
        let server = start_server();
        rt.block_on(async {
            let client = client(&server).await;
            let (rate, created) = scheduler_throughput(&client).await;
            println!("scheduler: 10,000 pods on 1,000 nodes bound at {rate:.0} pods/s end to end (creates took {:.1} s)   target >= 1,000 pods/s", created.as_secs_f64());
        });
    }
    let server = start_server();
    let pid = server.child.id();
    let kubeconfig = std::fs::read_to_string(&server.kubeconfig).expect("kubeconfig");
    let url = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("url")
        .to_owned();
    let token_file = server.dir.path().join("server/token");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(["agent", "--server", &url, "--token-file"])
        .arg(&token_file)
        .args([
            "--node-name",
            "bench",
            "--simulate",
            "100",
            "--log-level",
            "warn",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("start simulated nodes");
    rt.block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client.clone());
        while nodes.list(&ListParams::default()).await.expect("nodes").items.len() < 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Writes during the churn, to measure the API's mutating latency.
        let probe: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let lat = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let probe_lat = lat.clone();
        let probing = tokio::spawn(async move {
            for i in 0..10_000 {
                let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("probe-{i}")}})).expect("cm");
                let t = Instant::now();
                probe.create(&PostParams::default(), &cm).await.expect("probe write");
                probe_lat.lock().expect("lock").push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let start = Instant::now();
        for d in 0..30 {
            let dep: Deployment = serde_json::from_value(json!({
                "metadata": {"name": format!("app-{d}")},
                "spec": {"replicas": 100, "selector": {"matchLabels": {"app": format!("app-{d}")}},
                         "template": {"metadata": {"labels": {"app": format!("app-{d}")}},
                                      "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
            })).expect("deployment");
            deployments.create(&PostParams::default(), &dep).await.expect("create deployment");
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        loop {
            let list = pods.list(&ListParams::default()).await.expect("pods");
            let running = list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
            if running >= 3000 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "only {running} pods running after 600 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let elapsed = start.elapsed();
        probing.abort();
        let rss = rss_kib(pid) / 1024;
        println!("30 Deployments x 100 replicas on 100 simulated nodes: all 3,000 pods Running after {:.1} s   target < 30 s", elapsed.as_secs_f64());
        println!("server RSS then: {rss} MiB   target < 300 MiB");
        let mut lat = lat.lock().expect("lock").clone();
        lat.sort_unstable();
        println!("API create p50 {} / p99 {} during the churn ({} writes, one every 50 ms)   target p99 < 1 s", ms(pct(&lat, 0.5)), ms(pct(&lat, 0.99)), lat.len());
    });
    // The probe ran during the churn; its latencies are what it managed.
    let _ = agent.kill();
    let _ = agent.wait();
}
