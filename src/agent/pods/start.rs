//! Starting a container instance: its image and configuration, the OCI
//! bundle, create and start through the shim, and its postStart hook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::images::ensure_image;
use super::probes::probe_once;
use super::teardown::{pod_grace, remove_old_logs, stop_instance};
use super::{Kubelet, WorkerState, blocking, event};
use crate::agent::container::{PodFiles, config as container_config};
use crate::runtime::shim::{self, Request};
use crate::runtime::{rootfs, spec};

/// Prepare and start instance `restart` of `container`.
pub(super) async fn start_container(
    k: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    restart: u32,
    socket: &Path,
    state: &mut WorkerState,
) -> Result<(), String> {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let Some(stored) = ensure_image(k, pod, container, restart, state).await else {
        return Ok(());
    };
    if let Some(e) = &state.config_error {
        state.waiting.insert(
            name.clone(),
            ("CreateContainerConfigError".into(), e.clone()),
        );
        return Ok(());
    }
    state.waiting.remove(&name);
    let image_config: Value = serde_json::from_slice(
        &k.images
            .read_blob(&stored.config_digest)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("image config: {e}"))?;
    let pod_dir = k.pod_dir(&uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    let id = format!("{name}.{restart}");
    let mut image_config = image_config;
    let user = image_config["config"]["User"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Err(e) = crate::agent::container::verify_run_as_non_root(pod, container, &user)
        .and_then(|()| crate::agent::container::sysctls(pod).map(|_| ()))
    {
        if state.waiting.get(&name).map(|(_, m)| m) != Some(&e) {
            event(k, pod, "Warning", "Failed", format!("Error: {e}"));
        }
        state
            .waiting
            .insert(name.clone(), ("CreateContainerConfigError".into(), e));
        return Ok(());
    }
    if !user.is_empty() && user.split(':').any(|p| p.parse::<u32>().is_err()) {
        // A user name: look it up in the image's /etc/passwd and /etc/group
        // (the topmost layer that has them).
        let read = |file: &str| {
            stored
                .layers
                .iter()
                .rev()
                .filter_map(|l| k.images.layer_dir(&l.diff_id).ok())
                .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        match crate::agent::container::resolve_user(&user, &read("etc/passwd"), &read("etc/group"))
        {
            Some(numeric) => image_config["config"]["User"] = json!(numeric),
            None => {
                state.waiting.insert(
                    name.clone(),
                    (
                        "CreateContainerConfigError".into(),
                        format!("unable to find user {user}: no matching entries in passwd file"),
                    ),
                );
                return Ok(());
            }
        }
    }
    let mut sandbox = k.sandbox(&uid);
    sandbox.pod_ip = pod_ip(k, pod, state.pod_ip);
    sandbox.service_env = service_env(k, pod).await;
    let mut cfg = container_config(
        pod,
        container,
        &image_config,
        &state.sources,
        &files,
        &sandbox,
        format!("{}/pod{uid}/{id}", k.cgroup_root),
    );
    // terminationMessagePath: a file of ours, bound into the container.
    let termination_log = pod_dir
        .join("containers")
        .join(format!("{id}.termination-log"));
    cfg.mounts.push(spec::BindMount {
        source: termination_log.clone(),
        destination: container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_owned(),
        readonly: false,
    });
    let layers: Vec<PathBuf> = stored
        .layers
        .iter()
        .map(|l| k.images.layer_dir(&l.diff_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let bundle = pod_dir.join("containers").join(&id);
    let log = k
        .log_dir
        .join(format!(
            "{}_{}_{uid}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        ))
        .join(&name)
        .join(format!("{restart}.log"));
    let socket = socket.to_owned();
    let spec = spec::build(&cfg);
    // Keep the newest instance and the one before (its last state); older
    // ones go with their root filesystems.
    let stale = restart.checked_sub(2).map(|n| {
        (
            format!("{name}.{n}"),
            pod_dir.join("containers").join(format!("{name}.{n}")),
        )
    });
    let log_dir = log.parent().map(Path::to_path_buf);
    let created = blocking(move || -> Result<(), String> {
        if let Some((old_id, old_bundle)) = stale {
            let _ = shim::call(&socket, &Request::Delete { id: old_id });
            let _ = rootfs::unmount(&old_bundle.join("rootfs"));
            let _ = std::fs::remove_dir_all(&old_bundle);
            // Its logs too, as the kubelet's container GC removes them:
            // `kubectl logs` and `--previous` read the last two.
            if let Some(dir) = &log_dir {
                remove_old_logs(dir, restart);
            }
        }
        // The shim mounts the root; an agent before 0.1 mounted it here.
        let _ = rootfs::unmount(&bundle.join("rootfs"));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        std::fs::write(&termination_log, b"").map_err(|e| e.to_string())?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).expect("spec serialises"),
        )
        .map_err(|e| e.to_string())?;
        shim::call(
            &socket,
            &Request::Create {
                id: id.clone(),
                bundle: bundle.clone(),
                log,
                layers,
            },
        )
        .map_err(|e| e.to_string())?;
        shim::call(&socket, &Request::Start { id }).map_err(|e| e.to_string())?;
        Ok(())
    })
    .await;
    if let Err(e) = created {
        // The kubelet's CreateContainerError: shown on the container,
        // told once as an event, tried again on the next syncs.
        let message = format!("Error: {e}");
        if state
            .waiting
            .get(&name)
            .is_none_or(|(r, m)| r != "CreateContainerError" || *m != message)
        {
            event(k, pod, "Warning", "Failed", message.clone());
        }
        state
            .waiting
            .insert(name.clone(), ("CreateContainerError".into(), message));
        return Ok(());
    }
    if state
        .waiting
        .get(&name)
        .is_some_and(|(r, _)| r == "CreateContainerError")
    {
        state.waiting.remove(&name);
    }
    state.started = true;
    state.start_permit = None;
    event(
        k,
        pod,
        "Normal",
        "Started",
        format!("Started container {name}"),
    );
    // postStart: the container counts as started once it has run.
    if let Some(hook) = container.pointer("/lifecycle/postStart") {
        let id = format!("{name}.{restart}");
        let pod_ip = pod_address(k, pod, state.pod_ip);
        if let Err(message) = run_hook(
            &k.shim_dir(&uid).join("shim.sock"),
            &id,
            hook,
            container,
            pod_ip.as_deref(),
            POST_START_TIMEOUT,
        )
        .await
        {
            event(
                k,
                pod,
                "Warning",
                "FailedPostStartHook",
                format!("PostStartHook failed: {message}"),
            );
            stop_instance(
                &k.shim_dir(&uid).join("shim.sock"),
                &id,
                container,
                pod_ip,
                pod_grace(pod),
            )
            .await;
        }
    }
    Ok(())
}

/// Run a lifecycle hook (exec, httpGet or sleep) against instance `id`.
/// How long a postStart hook may run.
pub(super) const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a lifecycle hook of container instance `id`, for at most `timeout`.
pub(super) async fn run_hook(
    socket: &Path,
    id: &str,
    hook: &Value,
    container: &Value,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(secs) = hook.pointer("/sleep/seconds").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    }
    let probe = json!({"exec": hook.get("exec"), "httpGet": hook.get("httpGet"),
                       "timeoutSeconds": timeout.as_secs_f64().ceil().max(1.0) as u64});
    let probe = match probe.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => probe,
    };
    probe_once(socket, id, &probe, container, pod_ip)
        .await
        .map_err(|e| format!("hook of {id} failed: {e}"))
}

/// The address the agent dials for the pod's httpGet and tcpSocket probes
/// and hooks that name no host: the node's for a hostNetwork pod, else the
/// pod's own (`known`, or the one in its status).
pub(super) fn pod_address(
    k: &Kubelet,
    pod: &Value,
    known: Option<std::net::Ipv4Addr>,
) -> Option<String> {
    pod_ip(k, pod, known).or_else(|| {
        pod.pointer("/status/podIP")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// The services' variables for `pod`'s containers. Like the kubelet, it
/// waits for the first list of services (a few seconds at most), so a
/// pod started right after the agent still gets them.
pub(super) async fn service_env(k: &Kubelet, pod: &Value) -> Vec<(String, String)> {
    let mut services = k.services.clone();
    if !services.has_changed().unwrap_or(true) {
        let _ = tokio::time::timeout(Duration::from_secs(5), services.changed()).await;
    }
    let services = services.borrow().clone();
    crate::agent::container::service_env(
        pod["metadata"]["namespace"].as_str().unwrap_or("default"),
        pod.pointer("/spec/enableServiceLinks") != Some(&Value::Bool(false)),
        services.values().map(|s| &**s),
    )
}

/// The pod's IP: the node's for a hostNetwork pod, else `known` (the one
/// its network was given).
pub(super) fn pod_ip(
    k: &Kubelet,
    pod: &Value,
    known: Option<std::net::Ipv4Addr>,
) -> Option<String> {
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Some(k.node_ip.clone());
    }
    known.map(|ip| ip.to_string())
}
