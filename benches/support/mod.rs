//! Shared by the benches: a real `orch server` on a free port with its
//! store on disk, a kube-rs client for it, and reporting helpers.

#![allow(dead_code)] // each bench uses part of this module

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub kubeconfig: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server() -> Server {
    let base = std::env::var_os("ORCH_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args([
            "server",
            "--disable-agent",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--log-level",
            "warn,orch::server=info",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orch server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("server exited before it was ready")
            .expect("read log");
        if line.contains("orch server ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        dir,
        kubeconfig,
    }
}

pub async fn client(server: &Server) -> Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

/// The kB figure of line `field` (e.g. `RssAnon:`) in `/proc/<pid>/<file>`;
/// 0 when the process or the line is gone.
pub fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The CPU model and core count, printed with every figure.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!(
        "{cpu}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// A network namespace the bench made (`orch-bench-<tag>-<pid>`, loopback
/// up), removed when dropped.
pub struct Netns(pub String);

impl Netns {
    /// # Panics
    /// `ip netns add` failed (not root, or no iproute2).
    pub fn new(tag: &str) -> Self {
        let name = format!("orch-bench-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (needs root and iproute2)");
        let _ = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        Netns(name)
    }

    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
