//! Simulated nodes: `orch agent --simulate N` registers N nodes that
//! heartbeat through Leases and report the pods bound to them as Running and
//! Ready (Succeeded when the only container's command is `true`), without
//! running anything. Deleting pods are finished at once.
//!
//! They act with the join token (no node certificates: there may be a
//! thousand of them), but claim their names as real agents do, with a
//! node password ([`crate::api::join`]), so that nobody else can get a
//! node certificate for one of them, and so that they cannot take over
//! the name of a node another machine holds. Each node's password is
//! derived from the join token and its name: the same simulated nodes
//! rejoin after a restart without keeping anything on disk, and only
//! holders of the join token (who act as `system:masters` anyway) can
//! derive it; a bootstrap token (`orch token create`) cannot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::Error;
use crate::api::join;

/// What the simulated nodes look like.
#[derive(Debug, Clone)]
pub struct Config {
    pub count: usize,
    /// Nodes are `<prefix>-sim-<i>`.
    pub prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// How often each node renews its Lease.
    pub heartbeat: Duration,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

fn node_status(cfg: &Config, i: usize) -> Value {
    let ts = now();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| json!({"type": kind, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": ts, "lastTransitionTime": ts});
    json!({
        "capacity": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string(), "ephemeral-storage": "100Gi"},
        "allocatable": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string(), "ephemeral-storage": "100Gi"},
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated node)"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": format!("10.99.{}.{}", i / 250, i % 250 + 1)},
            {"type": "Hostname", "address": format!("{}-sim-{i}", cfg.prefix)},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "simulated",
            "osImage": "orch simulated node", "containerRuntimeVersion": concat!("orch://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": concat!("v1.33.0+orch", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" },
        },
    })
}

/// The node password of simulated node `node` joined with `token`: an
/// HMAC-SHA256 of its name keyed with the token, in hex.
fn node_password(token: &str, node: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.trim().as_bytes());
    let tag = ring::hmac::sign(&key, format!("orch simulated node\0{node}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Claim `node`'s name with `password`, as the server does for an agent
/// asking for its certificate: store the password's hash when nobody
/// holds the name, otherwise require the same password.
async fn claim_name(secrets: &Api<Secret>, node: &str, password: &str) -> Result<(), Error> {
    let name = join::node_password_secret(node);
    let api = |source| Error::Api {
        what: format!("the node password of {node}"),
        source,
    };
    let stored = match secrets.get_opt(&name).await.map_err(api)? {
        Some(stored) => stored,
        None => {
            let secret: Secret = serde_json::from_value(join::node_password_object(node, password))
                .expect("node password secret literal");
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(()),
                // Another machine claimed it just now.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    secrets.get(&name).await.map_err(api)?
                }
                Err(e) => return Err(api(e)),
            }
        }
    };
    let stored = serde_json::to_value(stored).expect("a Secret serializes");
    if join::node_password_matches(&stored, password) {
        Ok(())
    } else {
        Err(Error::NodeTaken(join::node_taken(node)))
    }
}

/// Register the nodes (each claiming its name with its node password
/// first), then heartbeat and serve their pods until the process is
/// stopped. `token` is the join token `client` authenticates with.
///
/// # Errors
/// When the nodes cannot be registered, or another machine holds one of
/// their names.
pub async fn run(client: Client, cfg: Config, token: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let names: Vec<String> = (0..cfg.count)
        .map(|i| format!("{}-sim-{i}", cfg.prefix))
        .collect();
    let register = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (nodes, secrets, name, cfg, permit) = (
            nodes.clone(),
            secrets.clone(),
            name.clone(),
            cfg.clone(),
            register.clone(),
        );
        let password = node_password(token, &name);
        tasks.push(tokio::spawn(async move {
            let _p = permit.acquire().await;
            claim_name(&secrets, &name, &password).await?;
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" },
                    "node.orch.io/simulated": "true"}},
                "status": node_status(&cfg, i),
            }))
            .expect("node literal");
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": node_status(&cfg, i)})))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
            .map_err(|source| Error::Api { what: format!("registering node {name}"), source })
        }));
    }
    for t in tasks {
        t.await.expect("registration task")?;
    }
    tracing::info!(count = cfg.count, first = %names.first().cloned().unwrap_or_default(), "simulated nodes registered");

    let heartbeat = tokio::spawn(heartbeat(client.clone(), cfg.clone(), names.clone()));
    let pods = tokio::spawn(serve_pods(client, names));
    let _ = tokio::join!(heartbeat, pods);
    Ok(())
}

/// Renew each node's Lease; refresh the Ready condition now and then.
async fn heartbeat(client: Client, cfg: Config, names: Vec<String>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    let mut tick = tokio::time::interval(cfg.heartbeat);
    let mut beat = 0u64;
    loop {
        tick.tick().await;
        for (i, name) in names.iter().enumerate() {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
            });
            let patched = leases
                .patch(name, &PatchParams::default(), &Patch::Merge(&lease))
                .await;
            if let Err(kube::Error::Api(s)) = &patched
                && s.code == 404
            {
                let lease: Lease = serde_json::from_value(lease).expect("lease literal");
                let _ = leases.create(&PostParams::default(), &lease).await;
            }
            if beat.is_multiple_of(6) && beat > 0 {
                let _ = nodes
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": node_status(&cfg, i)})),
                    )
                    .await;
            }
        }
        beat += 1;
    }
}

/// The exit code of a pod that "runs" to completion: a single container
/// with command `["true"]` (0) or `["false"]` (1), to exercise Jobs.
fn pod_exit_code(pod: &Pod) -> Option<i32> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    if containers.len() != 1 {
        return None;
    }
    match containers[0].command.as_deref() {
        Some([c]) if c == "true" => Some(0),
        Some([c]) if c == "false" => Some(1),
        _ => None,
    }
}

/// The status a simulated kubelet reports for a pod it "runs".
fn running_status(pod: &Pod, node: &str, ip: &str) -> Value {
    let ts = now();
    let exit = pod_exit_code(pod);
    let done = exit.is_some();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = if done {
                let code = exit.unwrap_or_default();
                let reason = if code == 0 { "Completed" } else { "Error" };
                json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": ts, "finishedAt": ts}})
            } else {
                json!({"running": {"startedAt": ts}})
            };
            json!({"name": c.name, "image": c.image, "imageID": "", "containerID": format!("sim://{}", c.name),
                   "ready": !done, "started": !done, "restartCount": 0, "state": state})
        })
        .collect();
    let ready = if done { "False" } else { "True" };
    let cond = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": ts});
    json!({"status": {
        "phase": match exit { None => "Running", Some(0) => "Succeeded", Some(_) => "Failed" },
        "hostIP": node, "podIP": ip, "podIPs": [{"ip": ip}], "startTime": ts,
        "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"), cond("Ready", ready), cond("ContainersReady", ready), cond("PodScheduled", "True")],
        "containerStatuses": statuses,
    }})
}

/// Watch every pod; act on those bound to our nodes.
async fn serve_pods(client: Client, names: Vec<String>) {
    let ours: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let pods: Api<Pod> = Api::all(client);
    let inflight = Arc::new(Semaphore::new(32));
    let next_ip = Arc::new(std::sync::Mutex::new(vec![1u32; names.len()]));
    let mut rv = String::from("0");
    loop {
        let stream = match pods.watch(&WatchParams::default().timeout(290), &rv).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "pod watch failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                rv = "0".into();
                continue;
            }
        };
        let mut stream = stream.boxed();
        loop {
            let event = match stream.try_next().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%err, "pod watch ended");
                    rv = "0".into();
                    break;
                }
            };
            let pod = match event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                WatchEvent::Bookmark(b) => {
                    rv = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Deleted(_) => continue,
                WatchEvent::Error(e) => {
                    tracing::debug!(?e, "pod watch error, relisting");
                    rv = "0".into();
                    break;
                }
            };
            if let Some(v) = pod.resource_version() {
                rv = v;
            }
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(&index) = ours.get(&node) else {
                continue;
            };
            let api = pods.clone();
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api = Api::<Pod>::namespaced(api.into_client(), &ns);
            let permit = inflight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            if pod.metadata.deletion_timestamp.is_some() {
                tokio::spawn(async move {
                    let _p = permit;
                    let _ = api
                        .delete(&name, &DeleteParams::default().grace_period(0))
                        .await;
                });
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Running" || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let ip = {
                let mut ips = next_ip.lock().expect("ip lock");
                let n = ips[index];
                ips[index] = if n >= 250 { 1 } else { n + 1 };
                format!("10.42.{}.{}", index % 250, n)
            };
            let status = running_status(&pod, &node, &ip);
            tokio::spawn(async move {
                let _p = permit;
                if let Err(err) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                {
                    tracing::debug!(%err, pod = %name, "could not report pod status");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_node_passwords_are_stable_per_name_and_token() {
        let token = "K10abc::server:secret";
        let a = node_password(token, "edge-sim-0");
        assert_eq!(
            a,
            node_password(&format!("{token}\n"), "edge-sim-0"),
            "a restart rejoins"
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, node_password(token, "edge-sim-1"));
        assert_ne!(a, node_password("K10abc::server:other", "edge-sim-0"));
        assert!(!a.contains("secret"));
    }
}
