//! Hardening benchmark (issue #21): what slow and greedy clients cost.
//!
//! - API latency for normal clients, quiet and while 500 slow connections
//!   are open (target: p99 within 1.2× of the quiet figure);
//! - how many of those slow connections the server still holds after its
//!   header timeout (32 s);
//! - server RSS under the slow-watcher probe: an unread watch of nodes,
//!   then 100 status writes of about 1 MB to one node.
//!
//! Run with `cargo bench --bench hardening`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Server, client, machine, ms, pct, rss_kib, start_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a slow connection behaves.
#[derive(Clone, Copy)]
enum Slow {
    /// TCP only, no TLS handshake.
    NoHandshake,
    /// TLS done, then nothing.
    Silent,
    /// A request's headers, one line every 5 s, never finished.
    Dripping,
}

fn api_addr(server: &Server) -> std::net::SocketAddr {
    let kubeconfig = std::fs::read_to_string(&server.kubeconfig).expect("kubeconfig");
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("server URL")
        .parse()
        .expect("an address")
}

fn tls(server: &Server) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_file(server.dir.path().join("server/tls/ca.crt"))
        .expect("CA certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Open a slow connection; `open` counts it while the server keeps it.
async fn slow(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    how: Slow,
    open: Arc<AtomicUsize>,
) {
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    open.fetch_add(1, Ordering::SeqCst);
    let mut buf = [0u8; 256];
    match how {
        Slow::NoHandshake => {
            let _ = tcp.read(&mut buf).await;
        }
        Slow::Silent | Slow::Dripping => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            if let Ok(mut stream) = tls.connect(name, tcp).await {
                if let Slow::Dripping = how {
                    let _ = stream
                        .write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\n")
                        .await;
                }
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
                        () = tokio::time::sleep(Duration::from_secs(5)), if matches!(how, Slow::Dripping) => {
                            if stream.write_all(b"X-Slow: 1\r\n").await.is_err() { break }
                        }
                    }
                }
            }
        }
    }
    open.fetch_sub(1, Ordering::SeqCst);
}

/// GETs of one ConfigMap from 8 clients for `during`: every latency,
/// sorted.
async fn get_latency(client: &Client, during: Duration) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = Instant::now() + during;
            while Instant::now() < end {
                let t = Instant::now();
                api.get("probe").await.expect("get");
                seen.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("getter"));
    }
    all.sort_unstable();
    all
}

async fn slow_connections(server: &Server, client: &Client) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "probe"}, "data": {"a": "b"}}))
            .expect("configmap");
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let quiet = get_latency(client, Duration::from_secs(10)).await;
    let (addr, connector) = (api_addr(server), tls(server));
    let open = Arc::new(AtomicUsize::new(0));
    let opened = Instant::now();
    let mut held = Vec::new();
    for i in 0..500 {
        let how = [Slow::NoHandshake, Slow::Silent, Slow::Dripping][i % 3];
        held.push(tokio::spawn(slow(
            addr,
            connector.clone(),
            how,
            open.clone(),
        )));
    }
    while open.load(Ordering::SeqCst) < 500 && opened.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_start = open.load(Ordering::SeqCst);
    let loaded = get_latency(client, Duration::from_secs(10)).await;
    let rss = rss_kib(server.child.id()) / 1024;
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(opened.elapsed())).await;
    let after = open.load(Ordering::SeqCst);
    let ratio = pct(&loaded, 0.99).as_secs_f64() / pct(&quiet, 0.99).as_secs_f64().max(1e-9);
    println!(
        "GET latency, 8 clients, quiet: p50 {} p99 {} ({} requests)",
        ms(pct(&quiet, 0.5)),
        ms(pct(&quiet, 0.99)),
        quiet.len()
    );
    println!(
        "GET latency with {at_start} slow connections open: p50 {} p99 {} ({} requests); p99 {ratio:.2}x quiet   target <= 1.2x",
        ms(pct(&loaded, 0.5)),
        ms(pct(&loaded, 0.99)),
        loaded.len()
    );
    println!("server RSS with them open: {rss} MiB");
    println!(
        "slow connections the server still held 35 s after they opened: {after} of {at_start}   target 0 (header timeout 32 s)"
    );
    for h in held {
        h.abort();
    }
}

async fn slow_watcher(server: &Server, client: &Client) {
    let pid = server.child.id();
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "probe"}})).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let token = std::fs::read_to_string(server.dir.path().join("server/tls/admin.token"))
        .expect("admin token");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tcp = tokio::net::TcpStream::connect(api_addr(server))
        .await
        .expect("connect");
    let mut unread = tls(server).connect(name, tcp).await.expect("TLS");
    let before = rss_kib(pid) / 1024;
    unread
        .write_all(
            format!(
                "GET /api/v1/nodes?watch=true HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
                token.trim()
            )
            .as_bytes(),
        )
        .await
        .expect("the watch");
    let mut peak = before;
    let mut at = Vec::new();
    for i in 0..120 {
        let images: Vec<_> = (0..4000)
            .map(|j| json!({"names": [format!("registry.example/write-{i}/image-{j}:{j:0>160}")], "sizeBytes": j}))
            .collect();
        nodes
            .patch_status(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"images": images}})),
            )
            .await
            .expect("status write");
        let rss = rss_kib(pid) / 1024;
        peak = peak.max(rss);
        if i == 19 || i == 119 {
            at.push(rss);
        }
    }
    println!(
        "slow-watcher probe (one unread watch of nodes, 120 status writes of 1 MB): server RSS {before} MiB before, {} MiB after 20 writes, {} MiB after 120, peak {peak} MiB   target: within 64 MiB of the baseline",
        at[0], at[1]
    );
    drop(unread);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("hardening bench: run with `cargo bench --bench hardening`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("orch hardening benchmark — {}", machine());
    {
        let server = start_server();
        rt.block_on(async {
            let client = client(&server).await;
            slow_connections(&server, &client).await;
        });
    }
    let server = start_server();
    rt.block_on(async {
        let client = client(&server).await;
        slow_watcher(&server, &client).await;
    });
}
