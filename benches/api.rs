//! API server benchmark: prints the figures issue #3 names.
//!
//! - create/get/update/list latency p50/p99 at 200 requests/s from 32 clients
//! - peak creates/s
//! - watch delivery p99 to 100 watchers
//! - list of 5,000 pods, as JSON and as a Table
//! - server RSS with 5,000 pods stored
//!
//! Run with `cargo bench --bench api`. It starts the real `orch server`
//! (bench profile) on a free loopback port with a store on disk
//! (synchronous=FULL) and talks to it with kube-rs over HTTPS.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::{client, machine, ms, pct, rss_kib, start_server};
use tokio::sync::Mutex;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web", "pod-template-hash": "5d8f7c9b6"},
                     "annotations": {"bench/note": "a pod of realistic size for the list benchmark"}},
        "spec": {"containers": [{
            "name": "app", "image": "registry.local/team/app:1.2.3",
            "args": ["--listen=:8080", "--log-level=info"],
            "env": [{"name": "MODE", "value": "production"}, {"name": "REGION", "value": "edge-1"}],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
        }],
        "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]}
    }))
    .expect("pod literal")
}

async fn ensure_ns(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    let _ = api.create(&PostParams::default(), &ns).await;
}

/// Peak creates/s: 64 concurrent creators, `total` ConfigMaps.
async fn peak_creates(clients: &[Client], total: usize) -> f64 {
    ensure_ns(&clients[0], "peak").await;
    let start = Instant::now();
    let per = total / 64;
    let mut tasks = Vec::new();
    for w in 0..64 {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), "peak");
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("c-{w}-{i}")}, "data": {"k": "v"}}),
                )
                .expect("cm");
                api.create(&PostParams::default(), &cm)
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    (per * 64) as f64 / start.elapsed().as_secs_f64()
}

/// Mixed create/get/update/list at `rate` requests/s from 32 clients.
async fn paced_latency(
    clients: &[Client],
    rate: f64,
    seconds: u64,
) -> HashMap<&'static str, Vec<Duration>> {
    ensure_ns(&clients[0], "paced").await;
    let results: Arc<Mutex<HashMap<&'static str, Vec<Duration>>>> = Arc::default();
    let per_client = rate / clients.len() as f64;
    let interval = Duration::from_secs_f64(1.0 / per_client);
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "paced");
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut n = 0u64;
            let mut mine: Vec<String> = Vec::new();
            let mut local: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            while Instant::now() < end {
                ticker.tick().await;
                let verb = match n % 4 {
                    0 => "create",
                    1 if !mine.is_empty() => "get",
                    2 if !mine.is_empty() => "update",
                    3 => "list",
                    _ => "create",
                };
                let t = Instant::now();
                match verb {
                    "create" => {
                        let name = format!("p-{c}-{n}");
                        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"client": c.to_string()}}, "data": {"k": "v"}})).expect("cm");
                        api.create(&PostParams::default(), &cm).await.expect("create");
                        mine.push(name);
                    }
                    "get" => {
                        api.get(&mine[n as usize % mine.len()]).await.expect("get");
                    }
                    "update" => {
                        let name = &mine[n as usize % mine.len()];
                        let mut cm = api.get(name).await.expect("get for update");
                        let t2 = Instant::now();
                        cm.data = Some([("k".to_string(), format!("v{n}"))].into());
                        api.replace(name, &PostParams::default(), &cm).await.expect("update");
                        local.entry("update").or_default().push(t2.elapsed());
                        n += 1;
                        continue;
                    }
                    _ => {
                        api.list(&ListParams::default().labels(&format!("client={c}")).limit(50)).await.expect("list");
                    }
                }
                local.entry(verb).or_default().push(t.elapsed());
                n += 1;
            }
            let mut all = results.lock().await;
            for (k, v) in local {
                all.entry(k).or_default().extend(v);
            }
        }));
    }
    for t in tasks {
        t.await.expect("paced client");
    }
    let mut out = results.lock().await.clone();
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}

/// Is `name` one of [`watch_delivery`]'s writes (`w<i>`)?
fn is_write(name: &str) -> bool {
    name.strip_prefix('w')
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// Watch delivery: `watchers` watches; `writes` paced updates; write call →
/// event received at each watcher.
async fn watch_delivery(
    clients: &[Client],
    watchers: usize,
    writes: usize,
) -> (Duration, Duration) {
    ensure_ns(&clients[0], "watched").await;
    let api: Api<ConfigMap> = Api::namespaced(clients[0].clone(), "watched");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), "watched");
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut seen = Vec::with_capacity(writes);
            while seen.len() < writes {
                match stream.next().await {
                    // Only the bench's writes: the namespace's
                    // kube-root-ca.crt may arrive in the same window.
                    Some(Ok(WatchEvent::Added(cm) | WatchEvent::Modified(cm)))
                        if cm.metadata.name.as_deref().is_some_and(is_write) =>
                    {
                        seen.push((cm.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("watch error: {e}"),
                    None => break,
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut started = HashMap::new();
    for i in 0..writes {
        let name = format!("w{i}");
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
                .expect("cm");
        let t = Instant::now();
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create");
        started.insert(name, t);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        for (name, at) in t.await.expect("watcher") {
            lat.push(at.duration_since(started[&name]));
        }
    }
    lat.sort_unstable();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn list_timing(client: &Client, table: bool) -> (Duration, usize) {
    let accept = if table {
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    } else {
        "application/json"
    };
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..5 {
        let req = http::Request::get("/api/v1/namespaces/list/pods")
            .header("Accept", accept)
            .body(Vec::new())
            .expect("request");
        let t = Instant::now();
        let text = client.request_text(req).await.expect("list pods");
        best = best.min(t.elapsed());
        bytes = text.len();
    }
    (best, bytes)
}

fn main() {
    // `cargo test --benches` runs this without --bench: only check it builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("api bench: run with `cargo bench --bench api`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = start_server();
    let pid = server.child.id();
    println!(
        "orch API benchmark — {} (server RSS at start {} MiB)",
        machine(),
        rss_kib(pid) / 1024
    );
    rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(client(&server).await);
        }
        let creates = peak_creates(&clients, 6400).await;
        println!("peak creates/s (64 concurrent, ConfigMaps):      {creates:>8.0}   target >= 2,000");

        let lat = paced_latency(&clients, 200.0, 20).await;
        println!("latency at 200 req/s from 32 clients (20 s, {} requests):", lat.values().map(Vec::len).sum::<usize>());
        for verb in ["create", "get", "update", "list"] {
            let v = &lat[verb];
            println!("  {verb:<7} p50 {:>9}  p99 {:>9}   target p99 < 50 ms", ms(pct(v, 0.5)), ms(pct(v, 0.99)));
        }
        println!("  (reference: k3s with SQLite averaged 1.4 s at 200 req/s)");

        let (p50, p99) = watch_delivery(&clients, 100, 200).await;
        println!("watch delivery to 100 watchers, write call → event: p50 {}  p99 {}", ms(p50), ms(p99));

        ensure_ns(&clients[0], "list").await;
        let mut tasks = Vec::new();
        for w in 0..50 {
            let api: Api<Pod> = Api::namespaced(clients[w % 32].clone(), "list");
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    api.create(&PostParams::default(), &pod(&format!("p-{w}-{i}"))).await.expect("create pod");
                }
            }));
        }
        for t in tasks {
            t.await.expect("pod loader");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let loaded_rss = rss_kib(pid) / 1024;
        let (json_time, json_bytes) = list_timing(&clients[0], false).await;
        let (table_time, table_bytes) = list_timing(&clients[0], true).await;
        println!("list 5,000 pods as JSON:  {} ({} MiB)", ms(json_time), json_bytes / (1 << 20));
        println!("list 5,000 pods as Table: {} ({} KiB)", ms(table_time), table_bytes / 1024);
        println!("server RSS with 5,000 pods (+7,400 configmaps) stored: {loaded_rss} MiB after loading, {} MiB after the lists   target < 60 MiB", rss_kib(pid) / 1024);
    });
}
