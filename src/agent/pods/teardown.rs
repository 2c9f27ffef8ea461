//! Stopping containers and removing a pod: preStop hooks within the grace
//! period, SIGTERM then SIGKILL, app containers before sidecars, and the
//! clean-up of everything the pod left on the node.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::sandbox::shim_call;
use super::start::{pod_address, run_hook};
use super::{Kubelet, blocking, event};
use crate::runtime::rootfs;
use crate::runtime::shim::Request;

/// The pod's `terminationGracePeriodSeconds` (30 s when not set).
pub(super) fn pod_grace(pod: &Value) -> u64 {
    pod.pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30)
}

/// Stop a container instance so it restarts (or a sidecar at the pod's
/// end), in the background, with `grace` seconds ([`kill_container`]).
pub(super) async fn stop_instance(
    socket: &Path,
    id: &str,
    container: &Value,
    pod_ip: Option<String>,
    grace: u64,
) {
    let (socket, id, container) = (socket.to_owned(), id.to_owned(), container.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    tokio::spawn(async move {
        kill_container(&socket, &id, &container, pod_ip.as_deref(), deadline).await
    });
}

/// The kubelet's killContainer for instance `id`: its preStop hook
/// within `deadline`, SIGTERM, then SIGKILL at `deadline` — or 2 s after
/// the hook, when the hook took the time up. Why the hook failed, if it
/// did.
pub(super) async fn kill_container(
    socket: &Path,
    id: &str,
    container: &Value,
    pod_ip: Option<&str>,
    deadline: tokio::time::Instant,
) -> Option<String> {
    let mut kill_at = deadline;
    let mut hook_failed = None;
    if let Some(hook) = container.pointer("/lifecycle/preStop") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        hook_failed =
            match tokio::time::timeout(left, run_hook(socket, id, hook, container, pod_ip, left))
                .await
            {
                Ok(r) => r.err(),
                Err(_) => Some(format!(
                    "hook of {id} did not finish within the grace period"
                )),
            };
        kill_at = kill_at.max(tokio::time::Instant::now() + MIN_STOP_GRACE);
    }
    let signal = |signal: i32| {
        shim_call(
            socket.to_owned(),
            Request::Kill {
                id: id.to_owned(),
                signal,
            },
        )
    };
    let _ = signal(15).await;
    while tokio::time::Instant::now() < kill_at {
        match shim_call(socket.to_owned(), Request::State).await {
            Ok(s)
                if s.containers
                    .iter()
                    .any(|x| x.id == id && x.status == "running") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return hook_failed,
        }
    }
    let _ = signal(9).await;
    hook_failed
}

/// Stop the pod's containers: SIGTERM, the grace period, SIGKILL.
pub(super) async fn terminate(k: &Kubelet, pod: &Value) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let socket = k.shim_dir(uid).join("shim.sock");
    let Ok(state) = shim_call(socket.clone(), Request::State).await else {
        return;
    };
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .unwrap_or(30);
    // One budget for the whole pod: preStop hooks and SIGTERM share it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    let running: Vec<&str> = state
        .containers
        .iter()
        .filter(|c| c.status == "running")
        .map(|c| c.id.as_str())
        .collect();
    let of = |list: &str| -> Vec<(String, Value)> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                running
                    .iter()
                    .filter(|id| id.rsplit_once('.').is_some_and(|(n, _)| c["name"] == n))
                    .map(|id| ((*id).to_owned(), c.clone()))
            })
            .collect()
    };
    // The app containers together, then the sidecars in the reverse of
    // their order, each when the ones before it have stopped.
    stop_containers(k, pod, &socket, of("containers"), deadline).await;
    let mut sidecars = of("initContainers");
    sidecars.reverse();
    for sidecar in sidecars {
        stop_containers(k, pod, &socket, vec![sidecar], deadline).await;
    }
}

/// Stop the container instances `containers` (id, spec) at once, each by
/// [`kill_container`], with their events.
pub(super) async fn stop_containers(
    k: &Kubelet,
    pod: &Value,
    socket: &Path,
    containers: Vec<(String, Value)>,
    deadline: tokio::time::Instant,
) {
    let pod_ip = pod_address(k, pod, None);
    let pod_ip = pod_ip.as_deref();
    let stops = containers.into_iter().map(|(id, c)| async move {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        event(
            k,
            pod,
            "Normal",
            "Killing",
            format!("Stopping container {name}"),
        );
        if let Some(message) = kill_container(socket, &id, &c, pod_ip, deadline).await {
            event(
                k,
                pod,
                "Warning",
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
    });
    futures::future::join_all(stops).await;
}

/// What a container gets between SIGTERM and SIGKILL at least, when its
/// preStop hook used the grace period up (the kubelet's
/// `minimumGracePeriodInSeconds`).
pub(super) const MIN_STOP_GRACE: Duration = Duration::from_secs(2);

/// Remove everything of the pod on this node: containers, shim, root
/// filesystems, network namespace, directories (logs stay until the log
/// directory is cleaned).
/// Remove the logs (`<n>.log` and its rotated `<n>.log.<time>`) of the
/// instances before the last two, `restart` being the newest.
pub(super) fn remove_old_logs(dir: &Path, restart: u32) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let instance = name
            .to_str()
            .and_then(|n| n.split_once(".log"))
            .filter(|(_, rest)| rest.is_empty() || rest.starts_with('.'))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        if instance.is_some_and(|n| n + 2 <= restart) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The pod's log directory (`<ns>_<name>_<uid>`: names have no `_`).
pub(super) fn pod_log_dirs(log_dir: &Path, uid: &str) -> Vec<PathBuf> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
        .map(|e| e.path())
        .collect()
}

pub(super) async fn teardown(k: &Kubelet, uid: &str) {
    let socket = k.shim_dir(uid).join("shim.sock");
    if let Ok(state) = shim_call(socket.clone(), Request::State).await {
        for c in state.containers {
            let _ = shim_call(socket.clone(), Request::Delete { id: c.id }).await;
        }
        let _ = shim_call(socket.clone(), Request::Shutdown).await;
    }
    let (pod_dir, shim_dir, netns) = (k.pod_dir(uid), k.shim_dir(uid), k.netns(uid));
    let log_dir = k.log_dir.clone();
    let uid = uid.to_owned();
    let cgroup_root = k.cgroup_root.clone();
    let network = k.network.clone();
    k.host_ports
        .send_if_modified(|all| Arc::make_mut(all).remove(&uid).is_some());
    blocking(move || {
        if let Some(net) = network
            && let Err(e) = net.detach(&uid)
        {
            tracing::warn!(pod_uid = %uid, error = %e, "removing the pod's network");
        }
        if let Ok(entries) = std::fs::read_dir(pod_dir.join("containers")) {
            for e in entries.flatten() {
                let _ = rootfs::unmount(&e.path().join("rootfs"));
            }
        }
        let _ = crate::runtime::netns::remove(&netns);
        for pin in ["ipc", "uts"] {
            let _ = crate::runtime::netns::remove(&shim_dir.join(pin));
        }
        let _ = rootfs::unmount(&pod_dir.join("shm"));
        for e in std::fs::read_dir(pod_dir.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = rootfs::unmount(&e.path());
        }
        crate::runtime::cgroup::remove(&format!("{cgroup_root}/pod{uid}"));
        let _ = std::fs::remove_dir_all(&pod_dir);
        let _ = std::fs::remove_dir_all(&shim_dir);
        // Its logs go with it, as the kubelet removes a deleted pod's.
        for dir in pod_log_dirs(&log_dir, &uid) {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_two_instances_keep_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "0.log",
            "1.log",
            "1.log.20261206-120000.5",
            "2.log",
            "3.log",
            "3.log.20261206-120001.5",
            "10.log",
            "notes",
            "x.log",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        remove_old_logs(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "10.log",
                "2.log",
                "3.log",
                "3.log.20261206-120001.5",
                "notes",
                "x.log"
            ]
        );
        let logs = tempfile::tempdir().unwrap();
        for d in ["shop_web_u-1", "shop_web_u-12", "default_api_u-1"] {
            std::fs::create_dir(logs.path().join(d)).unwrap();
        }
        let mut found = pod_log_dirs(logs.path(), "u-1");
        found.sort();
        assert_eq!(
            found,
            [
                logs.path().join("default_api_u-1"),
                logs.path().join("shop_web_u-1")
            ]
        );
    }
}
