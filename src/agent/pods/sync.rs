//! One sync of a pod, step by step: deletion, its sandbox, init then app
//! containers by restart policy ([`super::plan`]), sidecars at the end,
//! probes, and the status posted when it changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::backoff::restart_later;
use super::plan::{Action, plan_containers, sidecars_to_stop};
use super::probes::run_probes;
use super::runtime::SandboxSpec;
use super::sandbox::{host_ports, mount_memory_volumes, write_pod_files};
use super::sources::refresh_volumes;
use super::start::{pod_address, start_container};
use super::status::{latest, lost_instances, pod_status, previous, with_lost};
use super::teardown::{pod_grace, stop_instance, teardown, terminate};
use super::{AbortOnDrop, Kubelet, WorkerState, event};
use crate::agent::container::PodFiles;
use crate::runtime::shim::ContainerState;

/// Bring the pod one step closer to its spec and post its status.
pub(super) async fn sync(
    k: &Arc<Kubelet>,
    pod: &Value,
    state: &mut WorkerState,
) -> Result<(), String> {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return delete(k, pod, &uid, state).await;
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Ok(());
    }
    if !state.started && state.start_permit.is_none() {
        // A pod's first start (its files, mounts, shim, first container)
        // waits its turn: on a small machine a hundred pods starting at
        // once each get all of theirs done sooner one after another than
        // all together.
        state.start_permit = k.starts.clone().acquire_owned().await.ok();
    }
    if !prepare_pod(k, pod, &uid, state).await? {
        return Ok(());
    }
    let containers = start_sandbox(k, pod, &uid, state).await?;
    let plan = plan_containers(pod, &latest(&containers));
    for action in &plan.actions {
        let Some(c) = container_spec(pod, action.container()) else {
            continue;
        };
        match action {
            Action::Start { .. } => start_container(k, pod, c, 0, state).await?,
            Action::Restart { last, .. } => restart_later(k, pod, c, *last, state).await?,
        }
    }
    let mut containers = k
        .runtime
        .containers(&uid)
        .await
        .map_err(|e| e.to_string())?;
    with_lost(&mut containers, &state.lost);
    let instances = latest(&containers);
    // Once the regular containers are done for good, sidecars stop too.
    for (id, c) in sidecars_to_stop(pod, &instances) {
        if state.stopping.insert(id.clone()) {
            let pod_ip = pod_address(k, pod, state.pod_ip);
            stop_instance(k, &uid, &id, c, pod_ip, pod_grace(pod)).await;
        }
    }
    run_probes(k, pod, &instances, state).await;
    post_status(k, pod, &containers, &instances, plan.failed_init, state).await
}

/// The spec of the container or init container `name`.
fn container_spec<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}

/// A pod being deleted: stop its containers, remove what it left on the
/// node, and delete the pod object for good.
async fn delete(
    k: &Arc<Kubelet>,
    pod: &Value,
    uid: &str,
    state: &mut WorkerState,
) -> Result<(), String> {
    terminate(k, pod).await;
    teardown(k, uid).await;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    k.api.delete_pod(ns, name, uid).await?;
    state.torn_down = true;
    Ok(())
}

/// The pod's files, volumes, `/dev/shm`, fsGroup and cgroup. `false`
/// while a hostPath volume is not ready (the pod waits: FailedMount).
async fn prepare_pod(
    k: &Kubelet,
    pod: &Value,
    uid: &str,
    state: &mut WorkerState,
) -> Result<bool, String> {
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let pod_dir = k.pod_dir(uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    std::fs::create_dir_all(pod_dir.join("etc")).map_err(|e| e.to_string())?;
    if !host_paths_ready(k, pod, state) {
        return Ok(false);
    }
    // The pod's address first: /etc/hosts names it (read from disk only
    // until the pod has one, not on every sync).
    let pod_ip = match (k.runtime.has_network(), host_network) {
        _ if state.pod_ip.is_some() => state.pod_ip,
        (true, false) => Some(
            k.runtime
                .allocate_address(uid)
                .await
                .map_err(|e| format!("the pod's address: {e}"))?,
        ),
        _ => None,
    };
    write_pod_files(k, pod, &files, pod_ip).map_err(|e| format!("pod files: {e}"))?;
    mount_memory_volumes(&*k.runtime, pod, &files).await?;
    refresh_volumes(k, pod, &files, state).await;
    if pod.pointer("/spec/hostIPC") != Some(&Value::Bool(true)) {
        k.runtime
            .mount_tmpfs(k.pod_dir(uid).join("shm"), Some(64 << 20), 0o1777)
            .await
            .map_err(|e| format!("the pod's /dev/shm: {e}"))?;
    }
    set_fs_group(pod, &files)?;
    if !state.pod_cgroup {
        let limits = crate::agent::container::pod_resources(pod);
        k.runtime
            .set_pod_limits(uid, limits)
            .await
            .map_err(|e| format!("the pod's cgroup: {e}"))?;
        state.pod_cgroup = true;
    }
    Ok(true)
}

/// hostPath volumes by their type, before anything else of the pod's is
/// made; the pod waits (FailedMount) until the path is right.
fn host_paths_ready(k: &Kubelet, pod: &Value, state: &mut WorkerState) -> bool {
    let mount_error = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|_| !state.started)
        .find_map(|v| {
            let e = crate::agent::volumes::host_path_ready(v.get("hostPath")?).err()?;
            Some(format!(
                "MountVolume.SetUp failed for volume {:?} : {e}",
                v["name"].as_str().unwrap_or_default()
            ))
        });
    if let Some(message) = mount_error {
        if state.mount_error.as_ref() != Some(&message) {
            event(k, pod, "Warning", "FailedMount", message.clone());
            state.mount_error = Some(message);
        }
        state.wake_at(tokio::time::Instant::now() + Duration::from_secs(2));
        return false;
    }
    state.mount_error = None;
    true
}

/// fsGroup: emptyDirs belong to that group, setgid so new files do too.
fn set_fs_group(pod: &Value, files: &PodFiles) -> Result<(), String> {
    let Some(gid) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    else {
        return Ok(());
    };
    use std::os::unix::fs::PermissionsExt;
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if v.get("emptyDir").is_none() {
            continue;
        }
        let dir = files.volumes.join(v["name"].as_str().unwrap_or_default());
        std::os::unix::fs::chown(&dir, None, Some(gid as u32))
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777)))
            .map_err(|e| format!("fsGroup on {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The pod's sandbox (its shim, then its network), the watch on its
/// exits; the container instances it has, with the ones it lost.
async fn start_sandbox(
    k: &Kubelet,
    pod: &Value,
    uid: &str,
    state: &mut WorkerState,
) -> Result<Vec<ContainerState>, String> {
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let spec = SandboxSpec {
        host_network,
        host_ipc: pod.pointer("/spec/hostIPC") == Some(&Value::Bool(true)),
        share_pid: crate::agent::container::shares_pid(pod),
        hostname: pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .or_else(|| pod["metadata"]["name"].as_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let mut containers = k
        .runtime
        .start_sandbox(uid, &spec)
        .await
        .map_err(|e| e.to_string())?;
    for lost in lost_instances(pod, &containers) {
        if !state.lost.iter().any(|l| l.id == lost.id) {
            tracing::warn!(pod = %pod["metadata"]["name"], container = %lost.id, "the container's shim is gone (it died, or the node restarted): counting it as ended");
            state.lost.push(lost);
        }
    }
    with_lost(&mut containers, &state.lost);
    if state.watching.as_ref().is_none_or(|w| w.0.is_finished()) {
        let task = tokio::spawn(k.runtime.watch_exits(uid, state.shim_events.clone()));
        state.watching = Some(AbortOnDrop(task));
    }
    if let (true, false, None) = (k.runtime.has_network(), host_network, state.pod_ip) {
        let started = std::time::Instant::now();
        let ip = k
            .runtime
            .attach_network(uid)
            .await
            .map_err(|e| format!("the pod's network: {e}"))?;
        tracing::debug!(pod_uid = %uid, %ip, elapsed = ?started.elapsed(), "pod network ready");
        state.pod_ip = Some(ip);
        let ports = host_ports(pod, ip);
        if !ports.is_empty() {
            k.host_ports.send_modify(|all| {
                Arc::make_mut(all).insert(uid.to_owned(), ports);
            });
        }
    }
    Ok(containers)
}

/// Post the pod's status if it changed since the last one posted.
async fn post_status(
    k: &Kubelet,
    pod: &Value,
    containers: &[ContainerState],
    instances: &HashMap<String, (u32, ContainerState)>,
    failed_init: bool,
    state: &mut WorkerState,
) -> Result<(), String> {
    let prev = previous(containers, instances);
    let status = pod_status(k, pod, instances, &prev, state, failed_init);
    if state.last_status.as_ref() == Some(&status) {
        return Ok(());
    }
    k.api
        .post_status(
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            status.clone(),
        )
        .await?;
    state.last_status = Some(status);
    Ok(())
}
