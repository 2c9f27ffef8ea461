//! One sync of a pod: deletion, its sandbox, init then app containers by
//! restart policy, sidecars at the end, probes, and the status posted when
//! it changed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};

use super::backoff::{regular_done, restart_later, restart_policy, should_restart};
use super::probes::run_probes;
use super::sandbox::{
    ensure_shim, host_ports, mount_memory_volumes, mount_tmpfs, shim_call, watch_shim,
    write_pod_files,
};
use super::sources::refresh_volumes;
use super::start::{pod_address, start_container};
use super::status::{latest, lost_instances, pod_status, previous, with_lost};
use super::teardown::{pod_grace, stop_instance, teardown, terminate};
use super::{AbortOnDrop, Kubelet, WorkerState, blocking, event};
use crate::agent::container::PodFiles;
use crate::runtime::shim::Request;

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
        terminate(k, pod).await;
        teardown(k, &uid).await;
        let api: Api<Pod> = Api::namespaced(
            k.client.clone(),
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        );
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(format!("deleting the pod: {e}")),
        }
        state.torn_down = true;
        return Ok(());
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
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let pod_dir = k.pod_dir(&uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    std::fs::create_dir_all(pod_dir.join("etc")).map_err(|e| e.to_string())?;
    // hostPath volumes by their type, before anything else of the pod's is
    // made; the pod waits (FailedMount) until the path is right.
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
        return Ok(());
    }
    state.mount_error = None;
    // The pod's address first: /etc/hosts names it (read from disk only
    // until the pod has one, not on every sync).
    let pod_ip = match (&k.network, host_network) {
        _ if state.pod_ip.is_some() => state.pod_ip,
        (Some(net), false) => {
            let (net, id) = (net.clone(), uid.clone());
            Some(
                blocking(move || net.ipam.allocate(&id))
                    .await
                    .map_err(|e| format!("the pod's address: {e}"))?,
            )
        }
        _ => None,
    };
    write_pod_files(k, pod, &files, pod_ip).map_err(|e| format!("pod files: {e}"))?;
    mount_memory_volumes(pod, &files).await?;
    refresh_volumes(k, pod, &files, state).await;
    let host_ipc = pod.pointer("/spec/hostIPC") == Some(&Value::Bool(true));
    let hostname = pod
        .pointer("/spec/hostname")
        .and_then(Value::as_str)
        .or_else(|| pod["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_owned();
    if !host_ipc {
        let shm = k.pod_dir(&uid).join("shm");
        blocking(move || mount_tmpfs(&shm, Some(64 << 20), 0o1777))
            .await
            .map_err(|e| format!("the pod's /dev/shm: {e}"))?;
    }
    // fsGroup: emptyDirs belong to that group, setgid so new files do too.
    if let Some(gid) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        use std::os::unix::fs::PermissionsExt;
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if v.get("emptyDir").is_none() {
                continue;
            }
            let dir = files.volumes.join(v["name"].as_str().unwrap_or_default());
            std::os::unix::fs::chown(&dir, None, Some(gid as u32))
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777))
                })
                .map_err(|e| format!("fsGroup on {}: {e}", dir.display()))?;
        }
    }
    if !state.pod_cgroup {
        let path = format!("{}/pod{uid}", k.cgroup_root);
        let limits = crate::agent::container::pod_resources(pod);
        blocking(move || crate::runtime::cgroup::set_limits(&path, &limits))
            .await
            .map_err(|e| format!("the pod's cgroup: {e}"))?;
        state.pod_cgroup = true;
    }
    let share_pid = crate::agent::container::shares_pid(pod);
    let (socket, mut shim_state) =
        ensure_shim(k, &uid, host_network, host_ipc, share_pid, &hostname).await?;
    for lost in lost_instances(pod, &shim_state.containers) {
        if !state.lost.iter().any(|l| l.id == lost.id) {
            tracing::warn!(pod = %pod["metadata"]["name"], container = %lost.id, "the container's shim is gone (it died, or the node restarted): counting it as ended");
            state.lost.push(lost);
        }
    }
    with_lost(&mut shim_state.containers, &state.lost);
    if state.watching.as_ref().is_none_or(|w| w.0.is_finished()) {
        let task = tokio::spawn(watch_shim(socket.clone(), state.shim_events.clone()));
        state.watching = Some(AbortOnDrop(task));
    }
    if let (Some(net), false, None) = (&k.network, host_network, state.pod_ip) {
        let (net, id, netns) = (net.clone(), uid.clone(), k.netns(&uid));
        let started = std::time::Instant::now();
        let ip = blocking(move || net.attach(&netns, &id))
            .await
            .map_err(|e| format!("the pod's network: {e}"))?;
        tracing::debug!(pod_uid = %uid, %ip, elapsed = ?started.elapsed(), "pod network ready");
        state.pod_ip = Some(ip);
        let ports = host_ports(pod, ip);
        if !ports.is_empty() {
            k.host_ports.send_modify(|all| {
                Arc::make_mut(all).insert(uid.clone(), ports);
            });
        }
    }
    let instances = latest(&shim_state.containers);
    let policy = restart_policy(pod);
    let mut failed_init = false;

    // Init containers, one at a time.
    let mut inits_done = true;
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = c["name"].as_str().unwrap_or_default();
        // A sidecar (restartable init container) only has to be running
        // for the next one to start, and restarts whenever it exits.
        let sidecar = c["restartPolicy"] == "Always";
        match instances.get(name) {
            None => {
                start_container(k, pod, c, 0, &socket, state).await?;
                inits_done = false;
                break;
            }
            Some((_, s)) if sidecar && s.status == "running" => {}
            Some((n, s)) if sidecar && s.status == "exited" => {
                if !regular_done(pod, &instances, policy) {
                    restart_later(k, pod, c, *n, &socket, state).await?;
                }
            }
            Some((_, s)) if s.status != "exited" => {
                inits_done = false;
                break;
            }
            Some((_, s)) if s.exit_code == Some(0) => {}
            Some((n, _)) => {
                inits_done = false;
                if policy == "Never" {
                    failed_init = true;
                } else {
                    restart_later(k, pod, c, *n, &socket, state).await?;
                }
                break;
            }
        }
    }
    if inits_done {
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            match instances.get(name) {
                None => start_container(k, pod, c, 0, &socket, state).await?,
                Some((n, s)) if s.status == "exited" => {
                    if should_restart(policy, s.exit_code.unwrap_or(1)) {
                        restart_later(k, pod, c, *n, &socket, state).await?;
                    }
                }
                Some(_) => {}
            }
        }
    }
    let mut shim_state = shim_call(socket.clone(), Request::State)
        .await
        .map_err(|e| e.to_string())?;
    with_lost(&mut shim_state.containers, &state.lost);
    let instances = latest(&shim_state.containers);
    // Once the regular containers are done for good, sidecars stop too.
    if regular_done(pod, &instances, policy) {
        for c in pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["restartPolicy"] != "Always" {
                continue;
            }
            if let Some((_, s)) = instances.get(c["name"].as_str().unwrap_or_default())
                && s.status == "running"
                && state.stopping.insert(s.id.clone())
            {
                let pod_ip = pod_address(k, pod, state.pod_ip);
                stop_instance(&socket, &s.id, c, pod_ip, pod_grace(pod)).await;
            }
        }
    }
    run_probes(k, pod, &instances, &socket, state).await;
    let prev = previous(&shim_state.containers, &instances);
    let status = pod_status(k, pod, &instances, &prev, state, failed_init);
    if state.last_status.as_ref() != Some(&status) {
        let api: Api<Pod> = Api::namespaced(
            k.client.clone(),
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        );
        api.patch_status(
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await
        .map_err(|e| format!("posting the pod status: {e}"))?;
        state.last_status = Some(status);
    }
    Ok(())
}
