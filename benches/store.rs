//! Store benchmark: prints the figures issue #2 names.
//!
//! - durable writes/s with 1 writer and with 64 concurrent writers (1 KiB values)
//! - watch latency, write call → event received, p50/p99, with 100 watchers
//! - time to list 10,000 objects of ~2 KiB
//!
//! Run with `cargo bench --bench store`. The store lives under cargo's
//! target tmp dir (a real disk, unlike a tmpfs /tmp) with synchronous=FULL,
//! exactly as `orch server` opens it. Set ORCH_BENCH_DIR to measure another
//! disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch::store::{ListOptions, Revision, SqliteConfig, Store};
use tokio::sync::Mutex;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("ORCH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create bench dir");
    tempfile::tempdir_in(base).expect("bench temp dir")
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open_sqlite(SqliteConfig::new(dir.path().join("state.db"))).expect("open store")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn writes_per_second(writers: usize, per_writer: usize) -> (f64, Duration) {
    let dir = bench_dir();
    let store = open(&dir);
    let value = vec![b'x'; 1024];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                store
                    .create(&format!("/registry/bench/w{w}/{i}"), value.clone())
                    .await
                    .expect("write");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    (
        (writers * per_writer) as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
    )
}

async fn watch_latency(watchers: usize, writes: usize) -> (Duration, Duration, Duration) {
    let dir = bench_dir();
    let store = open(&dir);
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut w = store
            .watch("/registry/pods/", store.current_revision())
            .await
            .expect("watch");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(writes);
            while seen.len() < writes {
                let event = w.next().await.expect("watch open").expect("event");
                seen.push((event.revision(), Instant::now()));
            }
            seen
        }));
    }
    let started: Arc<Mutex<HashMap<Revision, Instant>>> = Arc::default();
    let value = vec![b'p'; 1024];
    for i in 0..writes {
        let t0 = Instant::now();
        let kv = store
            .create(&format!("/registry/pods/default/p{i}"), value.clone())
            .await
            .expect("write");
        started.lock().await.insert(kv.mod_revision, t0);
        // A steady stream, not a burst: this measures latency, not throughput.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let started = started.lock().await;
    let mut lat = Vec::with_capacity(watchers * writes);
    for t in tasks {
        for (rev, at) in t.await.expect("watcher") {
            lat.push(at.duration_since(started[&rev]));
        }
    }
    lat.sort_unstable();
    (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    )
}

async fn list_10k() -> (Duration, Duration, Duration) {
    let dir = bench_dir();
    let store = open(&dir);
    let value = vec![b'o'; 2048];
    let mut tasks = Vec::new();
    for w in 0..50 {
        let store = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                store
                    .create(&format!("/registry/configmaps/ns{w}/cm{i}"), value.clone())
                    .await
                    .expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
    let mut full = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let page = store
            .list("/registry/configmaps/", ListOptions::default())
            .await
            .expect("list");
        full.push(t.elapsed());
        assert_eq!(page.items.len(), 10_000);
    }
    full.sort_unstable();
    // The same list as kubectl pages it: 500 at a time.
    let t = Instant::now();
    let mut token = None;
    let mut n = 0;
    loop {
        let page = store
            .list(
                "/registry/configmaps/",
                ListOptions {
                    limit: Some(500),
                    continue_token: token,
                    ..Default::default()
                },
            )
            .await
            .expect("paged list");
        n += page.items.len();
        token = page.continue_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(n, 10_000);
    (full[full.len() / 2], full[0], t.elapsed())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then
    // only check that the bench builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store bench: run with `cargo bench --bench store`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("orch store benchmark — {}", machine());
    rt.block_on(async {
        let (one, one_p50) = writes_per_second(1, 2000).await;
        println!(
            "durable writes/s, 1 writer, 1 KiB:    {one:>9.0}  (write latency p50 {})",
            ms(one_p50)
        );
        let (many, many_p50) = writes_per_second(64, 300).await;
        println!(
            "durable writes/s, 64 writers, 1 KiB:  {many:>9.0}  (write latency p50 {})",
            ms(many_p50)
        );
        let (p50, p99, max) = watch_latency(100, 2000).await;
        println!(
            "watch latency, 100 watchers, write call → event: p50 {}  p99 {}  max {}",
            ms(p50),
            ms(p99),
            ms(max)
        );
        let (median, best, paged) = list_10k().await;
        println!(
            "list 10,000 objects of 2 KiB: median {}  best {}  (paged by 500: {})",
            ms(median),
            ms(best),
            ms(paged)
        );
    });
}
