//! Starting a container instance: its image and configuration, the OCI
//! bundle, create and start through the shim, and its postStart hook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::images::ensure_image;
use super::probes::probe_once;
use super::runtime::{CreateContainer, PodRuntime};
use super::teardown::{pod_grace, remove_old_logs, stop_instance};
use super::{Kubelet, WorkerState, blocking, event};
use crate::agent::container::{PodFiles, config as container_config};
use crate::runtime::image::Image;
use crate::runtime::spec;

/// Prepare and start instance `restart` of `container`. A container that
/// cannot start yet (its image, its configuration) waits: the reason goes
/// in `state.waiting` and the next sync tries again.
pub(super) async fn start_container(
    k: &Arc<Kubelet>,
    pod: &Value,
    container: &Value,
    restart: u32,
    state: &mut WorkerState,
) -> Result<(), String> {
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
    let Some(image_config) = image_config(k, pod, container, &stored, state)? else {
        return Ok(());
    };
    let instance = bundle(k, pod, container, restart, &stored, &image_config, state).await?;
    let created = create(k, pod, &name, restart, instance).await;
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
    post_start(k, pod, container, restart, state).await;
    Ok(())
}

/// The image's configuration, with a user name resolved to numbers, once
/// the pod's security settings allow the container to run. `None` (and
/// the reason in `state.waiting`) when they do not.
fn image_config(
    k: &Kubelet,
    pod: &Value,
    container: &Value,
    stored: &Image,
    state: &mut WorkerState,
) -> Result<Option<Value>, String> {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let mut image_config: Value = serde_json::from_slice(
        &k.images
            .read_blob(&stored.config_digest)
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("image config: {e}"))?;
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
            .insert(name, ("CreateContainerConfigError".into(), e));
        return Ok(None);
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
                    name,
                    (
                        "CreateContainerConfigError".into(),
                        format!("unable to find user {user}: no matching entries in passwd file"),
                    ),
                );
                return Ok(None);
            }
        }
    }
    Ok(Some(image_config))
}

/// The instance's OCI spec and where it goes: what [`create`] needs.
struct Bundle {
    create: CreateContainer,
    spec: Value,
    termination_log: PathBuf,
}

/// The instance's OCI spec, bundle directory, log and layers.
async fn bundle(
    k: &Kubelet,
    pod: &Value,
    container: &Value,
    restart: u32,
    stored: &Image,
    image_config: &Value,
    state: &WorkerState,
) -> Result<Bundle, String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let name = container["name"].as_str().unwrap_or_default();
    let pod_dir = k.pod_dir(uid);
    let files = PodFiles {
        hosts: pod_dir.join("etc/hosts"),
        hostname: pod_dir.join("etc/hostname"),
        resolv_conf: pod_dir.join("etc/resolv.conf"),
        volumes: pod_dir.join("volumes"),
    };
    let id = format!("{name}.{restart}");
    let mut sandbox = k.sandbox(uid);
    sandbox.pod_ip = pod_ip(k, pod, state.pod_ip);
    sandbox.service_env = service_env(k, pod).await;
    let mut cfg = container_config(
        pod,
        container,
        image_config,
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
    let log = k
        .log_dir
        .join(format!(
            "{}_{}_{uid}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        ))
        .join(name)
        .join(format!("{restart}.log"));
    Ok(Bundle {
        create: CreateContainer {
            bundle: pod_dir.join("containers").join(&id),
            id,
            log,
            layers,
        },
        spec: spec::build(&cfg),
        termination_log,
    })
}

/// Remove the instance before the last two (its root filesystem and
/// logs), write the new one's bundle, then create and start it.
async fn create(
    k: &Kubelet,
    pod: &Value,
    name: &str,
    restart: u32,
    instance: Bundle,
) -> Result<(), String> {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let containers_dir = k.pod_dir(uid).join("containers");
    // Keep the newest instance and the one before (its last state); older
    // ones go with their root filesystems.
    if let Some(n) = restart.checked_sub(2) {
        let old_id = format!("{name}.{n}");
        let _ = k.runtime.remove(uid, &old_id).await;
        k.runtime.remove_bundle(containers_dir.join(&old_id)).await;
        // Its logs too, as the kubelet's container GC removes them:
        // `kubectl logs` and `--previous` read the last two.
        if let Some(dir) = instance.create.log.parent().map(Path::to_path_buf) {
            blocking(move || remove_old_logs(&dir, restart)).await;
        }
    }
    let (bundle, termination_log, spec) = (
        instance.create.bundle.clone(),
        instance.termination_log,
        instance.spec,
    );
    k.runtime.remove_bundle(bundle.clone()).await;
    blocking(move || -> Result<(), String> {
        std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
        std::fs::write(&termination_log, b"").map_err(|e| e.to_string())?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).expect("spec serialises"),
        )
        .map_err(|e| e.to_string())
    })
    .await?;
    k.runtime
        .create_container(uid, instance.create)
        .await
        .map_err(|e| e.to_string())
}

/// postStart: the container counts as started once it has run; a hook
/// that fails stops the container (it restarts by policy).
async fn post_start(
    k: &Kubelet,
    pod: &Value,
    container: &Value,
    restart: u32,
    state: &WorkerState,
) {
    let Some(hook) = container.pointer("/lifecycle/postStart") else {
        return;
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let name = container["name"].as_str().unwrap_or_default();
    let id = format!("{name}.{restart}");
    let pod_ip = pod_address(k, pod, state.pod_ip);
    let hook = Hook {
        uid,
        id: &id,
        hook,
        container,
        pod_ip: pod_ip.as_deref(),
    };
    if let Err(message) = run_hook(&*k.runtime, &hook, POST_START_TIMEOUT).await {
        event(
            k,
            pod,
            "Warning",
            "FailedPostStartHook",
            format!("PostStartHook failed: {message}"),
        );
        stop_instance(k, uid, &id, container, pod_ip, pod_grace(pod)).await;
    }
}

/// How long a postStart hook may run.
pub(super) const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A lifecycle hook of a container instance.
#[derive(Clone, Copy)]
pub(super) struct Hook<'a> {
    pub uid: &'a str,
    pub id: &'a str,
    /// The hook: exec, httpGet or sleep.
    pub hook: &'a Value,
    pub container: &'a Value,
    pub pod_ip: Option<&'a str>,
}

/// Run a lifecycle hook for at most `timeout`.
pub(super) async fn run_hook(
    rt: &dyn PodRuntime,
    hook: &Hook<'_>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(secs) = hook.hook.pointer("/sleep/seconds").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    }
    let probe = json!({"exec": hook.hook.get("exec"), "httpGet": hook.hook.get("httpGet"),
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
    let target = super::probes::Target {
        uid: hook.uid,
        id: hook.id,
        container: hook.container,
        pod_ip: hook.pod_ip,
    };
    probe_once(rt, &target, &probe)
        .await
        .map_err(|e| format!("hook of {} failed: {e}", hook.id))
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
