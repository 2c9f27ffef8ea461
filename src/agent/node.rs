//! The Node object: registration with what this machine has, a Lease
//! renewed every 10 s in `kube-node-lease`, and the status (conditions,
//! heartbeat) posted at start, within 10 s of a condition changing, and
//! every minute. Memory and disk pressure are measured against the
//! kubelet's default hard eviction thresholds, which allocatable also
//! leaves out.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Error;

const LEASE_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// What the node is called and how it is reached.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub ip: IpAddr,
    pub data_dir: std::path::PathBuf,
    pub labels: Vec<(String, String)>,
    /// Taints to register with (`{"key", "value", "effect"}` objects).
    pub taints: Vec<serde_json::Value>,
}

/// This machine's host name, lower case.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_default()
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A `/proc/meminfo` field in KiB (`MemTotal`, `MemAvailable`).
fn meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// Memory in KiB from /proc/meminfo.
fn memory_kib() -> u64 {
    meminfo_kib("MemTotal").unwrap_or(0)
}

/// Bytes of the file system holding `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_blocks * s.f_frsize)
        .unwrap_or(0)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

/// This machine's CPUs (millicores) and memory (bytes).
pub fn capacity() -> (i64, i64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    (cpus * 1000, memory_kib() as i64 * 1024)
}

/// The kubelet's default `evictionHard`: memory.available<100Mi.
const EVICTION_MEMORY: u64 = 100 << 20;
/// ... nodefs.available<10% and nodefs.inodesFree<5%.
const EVICTION_DISK_PERCENT: u64 = 10;
const EVICTION_INODES_PERCENT: u64 = 5;

/// What the node is short of, measured now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
}

impl Pressure {
    /// Memory available below 100Mi; the data dir's file system with less
    /// than 10 % of its space or 5 % of its inodes free.
    pub fn measure(data_dir: &Path) -> Pressure {
        let available = meminfo_kib("MemAvailable").map(|kib| kib * 1024);
        let disk = rustix::fs::statvfs(data_dir).ok().is_some_and(|s| {
            (s.f_blocks > 0 && s.f_bavail * 100 < s.f_blocks * EVICTION_DISK_PERCENT)
                || (s.f_files > 0 && s.f_favail * 100 < s.f_files * EVICTION_INODES_PERCENT)
        });
        Pressure {
            memory: available.is_some_and(|a| a < EVICTION_MEMORY),
            disk,
        }
    }
}

/// When each condition last changed: (type, status) → the time.
pub type Transitions = std::collections::HashMap<String, (String, String)>;

/// The node's conditions: `ts` is this heartbeat; a condition keeps its
/// `lastTransitionTime` while its status stays what it was.
fn conditions(pressure: Pressure, ts: &str, transitions: &mut Transitions) -> Vec<Value> {
    let mut out = Vec::new();
    let mut condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let since = match transitions.get(kind) {
            Some((was, since)) if was == status => since.clone(),
            _ => ts.to_owned(),
        };
        transitions.insert(kind.to_owned(), (status.to_owned(), since.clone()));
        out.push(
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                        "lastHeartbeatTime": ts, "lastTransitionTime": since}),
        );
    };
    if pressure.memory {
        condition(
            "MemoryPressure",
            "True",
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        );
    } else {
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        );
    }
    if pressure.disk {
        condition(
            "DiskPressure",
            "True",
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        );
    } else {
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        );
    }
    condition(
        "PIDPressure",
        "False",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    );
    condition(
        "Ready",
        "True",
        "KubeletReady",
        "kubelet is posting ready status",
    );
    out
}

/// The status this node reports.
pub fn status(cfg: &NodeConfig) -> Value {
    status_with(
        cfg,
        Pressure::measure(&cfg.data_dir),
        &mut Transitions::new(),
    )
}

fn status_with(cfg: &NodeConfig, pressure: Pressure, transitions: &mut Transitions) -> Value {
    let ts = now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = memory_kib();
    let mem = format!("{mem_kib}Ki");
    let disk_total = disk_bytes(&cfg.data_dir);
    let disk = disk_total.to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let capacity =
        json!({"cpu": cpus.to_string(), "memory": mem, "pods": "110", "ephemeral-storage": disk});
    // What pods may use: capacity less what eviction keeps free (no
    // kube-reserved or system-reserved by default, as the kubelet).
    let allocatable = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", mem_kib.saturating_sub(EVICTION_MEMORY / 1024)),
        "pods": "110",
        "ephemeral-storage": (disk_total / 100 * (100 - EVICTION_DISK_PERCENT)).to_string(),
    });
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(pressure, &ts, transitions),
        "addresses": [
            {"type": "InternalIP", "address": cfg.ip.to_string()},
            {"type": "Hostname", "address": hostname()},
        ],
        "nodeInfo": {
            "machineID": machine_id, "systemUUID": machine_id, "bootID": boot_id,
            "kernelVersion": kernel, "osImage": os_image(),
            "containerRuntimeVersion": concat!("orch://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": concat!("v1.33.0+orch", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": crate::runtime::image::Platform::current().architecture,
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    })
}

/// Create the Node (or take over the existing one of this name) and post
/// its status.
///
/// # Errors
/// The API refused.
pub async fn register(client: &Client, cfg: &NodeConfig) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux",
        "kubernetes.io/arch": crate::runtime::image::Platform::current().architecture,
    });
    for (k, v) in &cfg.labels {
        labels[k] = json!(v);
    }
    let mut node = json!({
        "metadata": {"name": cfg.name, "labels": labels},
        "status": status(cfg),
    });
    if !cfg.taints.is_empty() {
        node["spec"] = json!({"taints": cfg.taints});
    }
    let node: Node = serde_json::from_value(node).expect("node literal");
    let api_err = |what: &str| {
        let what = format!("{what} node {}", cfg.name);
        move |source| Error::Api { what, source }
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // The labels asked for are added. Taints are a node's only when
            // it registers (NodeRestriction refuses a node changing its
            // own, as upstream's kubelet never does): say so when they
            // differ from what was asked.
            let existing = nodes.get(&cfg.name).await.map_err(api_err("reading"))?;
            let have = existing.spec.and_then(|s| s.taints).unwrap_or_default();
            let missing: Vec<String> = cfg
                .taints
                .iter()
                .filter(|t| {
                    !have.iter().any(|h| {
                        t["key"] == h.key.as_str()
                            && t["effect"] == h.effect.as_str()
                            && t["value"].as_str().unwrap_or_default()
                                == h.value.as_deref().unwrap_or_default()
                    })
                })
                .map(|t| {
                    format!(
                        "{}={}:{}",
                        t["key"].as_str().unwrap_or_default(),
                        t["value"].as_str().unwrap_or_default(),
                        t["effect"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    node = %cfg.name,
                    taints = %missing.join(","),
                    "--node-taint applies only when a node registers; this node exists, \
                     so add them with `kubectl taint nodes {} ...`",
                    cfg.name
                );
            }
            nodes
                .patch(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await
                .map_err(api_err("labelling"))?;
        }
        Err(e) => return Err(api_err("registering")(e)),
    }
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status(cfg)})),
        )
        .await
        .map_err(api_err("posting the status of"))?;
    Ok(())
}

/// Renew the Lease every 10 s and the status every minute, forever.
pub async fn heartbeat(client: Client, cfg: NodeConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(LEASE_EVERY);
    let mut last_status = tokio::time::Instant::now();
    let mut transitions = Transitions::new();
    let mut posted = Pressure::measure(&cfg.data_dir);
    loop {
        tick.tick().await;
        let renew = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": 40, "renewTime": renew},
        });
        match leases
            .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&lease))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease: Lease = serde_json::from_value(lease).expect("lease literal");
                if let Err(e) = leases.create(&PostParams::default(), &lease).await {
                    tracing::warn!(%e, "cannot create the node lease");
                }
            }
            Err(e) => tracing::warn!(%e, "cannot renew the node lease; retrying"),
        }
        let pressure = Pressure::measure(&cfg.data_dir);
        if pressure != posted || last_status.elapsed() >= STATUS_EVERY {
            last_status = tokio::time::Instant::now();
            if pressure != posted {
                tracing::warn!(
                    memory = pressure.memory,
                    disk = pressure.disk,
                    "node pressure changed"
                );
            }
            let status = status_with(&cfg, pressure, &mut transitions);
            match nodes
                .patch_status(
                    &cfg.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => posted = pressure,
                Err(e) => tracing::warn!(%e, "cannot post the node status; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_type<'a>(conditions: &'a [Value], kind: &str) -> &'a Value {
        conditions
            .iter()
            .find(|c| c["type"] == kind)
            .expect("condition present")
    }

    #[test]
    fn pressure_shows_in_conditions_and_transitions_keep_their_time() {
        let mut t = Transitions::new();
        let calm = conditions(Pressure::default(), "t1", &mut t);
        assert_eq!(by_type(&calm, "MemoryPressure")["status"], "False");
        assert_eq!(by_type(&calm, "Ready")["status"], "True");
        assert_eq!(calm.len(), 4);

        let short = Pressure {
            memory: true,
            disk: false,
        };
        let c = conditions(short, "t2", &mut t);
        let mem = by_type(&c, "MemoryPressure");
        assert_eq!(mem["status"], "True");
        assert_eq!(mem["reason"], "KubeletHasInsufficientMemory");
        assert_eq!(mem["lastTransitionTime"], "t2");
        assert_eq!(mem["lastHeartbeatTime"], "t2");
        // Unchanged conditions keep the time they last changed.
        assert_eq!(by_type(&c, "DiskPressure")["lastTransitionTime"], "t1");
        assert_eq!(by_type(&c, "Ready")["lastTransitionTime"], "t1");

        let c = conditions(short, "t3", &mut t);
        assert_eq!(by_type(&c, "MemoryPressure")["lastTransitionTime"], "t2");
        assert_eq!(by_type(&c, "MemoryPressure")["lastHeartbeatTime"], "t3");
    }

    #[test]
    fn allocatable_leaves_out_the_eviction_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig {
            name: "n".into(),
            ip: "127.0.0.1".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            labels: vec![],
            taints: vec![],
        };
        let s = status_with(&cfg, Pressure::default(), &mut Transitions::new());
        let kib = |v: &Value| -> u64 {
            v.as_str()
                .and_then(|m| m.strip_suffix("Ki"))
                .and_then(|m| m.parse().ok())
                .expect("a Ki quantity")
        };
        assert_eq!(
            kib(&s["capacity"]["memory"]) - kib(&s["allocatable"]["memory"]),
            100 * 1024
        );
        let disk = |v: &Value| v.as_str().unwrap().parse::<u64>().unwrap();
        let (cap, alloc) = (
            disk(&s["capacity"]["ephemeral-storage"]),
            disk(&s["allocatable"]["ephemeral-storage"]),
        );
        assert!(alloc < cap && alloc >= cap / 100 * 90 - 1, "{cap} {alloc}");
    }
}
