//! From a pod, one of its containers and its image config to the runtime's
//! [`ContainerConfig`], as the kubelet and containerd's CRI plugin do it.
//! Pure: values in, a config out.
//!
//! - Command: `command` replaces the image's Entrypoint and then ignores
//!   its Cmd; `args` alone replaces Cmd (the Kubernetes rules).
//! - Environment: the image's, then `envFrom`, then `env` (later wins),
//!   with `valueFrom` configMapKeyRef, secretKeyRef, and fieldRef for the
//!   pod's name, namespace, uid, labels, annotations, node, service
//!   account and IPs.
//! - User: `runAsUser`/`runAsGroup` (container over pod), else the image's
//!   numeric `User`.
//! - Resources: the CPU request becomes cpu.shares (1024 per core, at
//!   least 2), the CPU limit a CFS quota per 100 ms, the memory limit bytes.

use std::path::PathBuf;

use serde_json::Value;

use crate::runtime::spec::{BindMount, ContainerConfig, Resources};

/// Key → value of a ConfigMap or Secret, by `(kind, name)`: what
/// `configMapKeyRef`, `secretKeyRef` and `envFrom` read (the pod worker
/// fetches them; `volumes` renders them into files too).
pub type Sources =
    std::collections::HashMap<(&'static str, String), std::collections::BTreeMap<String, Vec<u8>>>;

/// The pod's shared namespaces and shared memory, by path.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
    /// The shared PID namespace's pin (`shareProcessNamespace`), made by
    /// the shim in its own mount namespace.
    pub pid: PathBuf,
    /// A tmpfs shared as every container's `/dev/shm`.
    pub shm: PathBuf,
    /// The node's allocatable CPU (millicores) and memory (bytes): what
    /// `resourceFieldRef` reports for a limit that is not set.
    pub node_cpu_milli: i64,
    pub node_memory: i64,
    /// How containers see `/sys/fs/cgroup` on a v1 node (`None`: v2).
    pub cgroup_v1: Option<std::sync::Arc<crate::runtime::cgroup::V1View>>,
    /// The pod's address (`status.podIP` for fieldRef, known before the
    /// status says so) and the node's (`status.hostIP`).
    pub pod_ip: Option<String>,
    pub host_ip: String,
    /// The services' variables the pod gets ([`service_env`]).
    pub service_env: Vec<(String, String)>,
}

/// `$(NAME)` references in `input` expanded as the kubelet expands `env`
/// values, `command` and `args`: a name in `vars` gives its value (the
/// last one set), an unknown name stays as written, `$$` is a literal
/// `$`, and anything else is kept as it is.
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    // Bytes before `from` are in `out`.
    let mut from = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&input[from..i]);
        match bytes[i + 1] {
            b'$' => {
                out.push('$');
                i += 2;
            }
            b'(' => match input[i + 2..].find(')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&input[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                // No closing parenthesis: kept as written.
                None => {
                    out.push_str("$(");
                    i += 2;
                }
            },
            _ => {
                out.push('$');
                i += 1;
            }
        }
        from = i;
    }
    out.push_str(&input[from..]);
    out
}

/// The variables the kubelet gives a pod for `services` (those with a
/// cluster IP): `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT>]`
/// and the Docker-link style `<NAME>_PORT…`, for every service of its
/// namespace (with `enableServiceLinks`, the default) and always for
/// `kubernetes` in `default` (what in-cluster clients look for).
pub fn service_env<'a>(
    namespace: &str,
    links: bool,
    services: impl Iterator<Item = &'a k8s_openapi::api::core::v1::Service>,
) -> Vec<(String, String)> {
    let mut chosen: std::collections::BTreeMap<String, &k8s_openapi::api::core::v1::Service> =
        std::collections::BTreeMap::new();
    for s in services {
        let (Some(name), ns) = (s.metadata.name.as_deref(), s.metadata.namespace.as_deref()) else {
            continue;
        };
        if ns == Some("default") && name == "kubernetes" {
            chosen.entry(name.to_owned()).or_insert(s);
        } else if links && ns == Some(namespace) {
            chosen.insert(name.to_owned(), s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let Some(spec) = &s.spec else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let prefix = name.replace('-', "_").to_uppercase();
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        port_name.replace('-', "_").to_uppercase()
                    ),
                    p.port.to_string(),
                ));
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let lower = protocol.to_lowercase();
            let address = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:{}", p.port),
                _ => format!("{ip}:{}", p.port),
            };
            if i == 0 {
                out.push((format!("{prefix}_PORT"), format!("{lower}://{address}")));
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_uppercase());
            out.push((port_prefix.clone(), format!("{lower}://{address}")));
            out.push((format!("{port_prefix}_PROTO"), lower));
            out.push((format!("{port_prefix}_PORT"), p.port.to_string()));
            out.push((format!("{port_prefix}_ADDR"), ip.to_owned()));
        }
    }
    out
}

/// Do the pod's containers share one PID namespace (and not the host's)?
pub fn shares_pid(pod: &Value) -> bool {
    pod.pointer("/spec/shareProcessNamespace") == Some(&Value::Bool(true))
        && pod.pointer("/spec/hostPID") != Some(&Value::Bool(true))
}

/// Where the pod's generated files and volumes are.
#[derive(Debug, Clone)]
pub struct PodFiles {
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv_conf: PathBuf,
    /// `emptyDir` volumes live under here, one directory each.
    pub volumes: PathBuf,
}

fn quantity_milli(q: &str) -> Option<i64> {
    crate::api::quantity::parse_quantity(q, 1000.0)
}

fn quantity_bytes(q: &str) -> Option<i64> {
    crate::api::quantity::parse_quantity(q, 1.0)
}

/// A container's CPU request and limit (millicores) and memory limit
/// (bytes); a limit alone implies the request.
fn amounts(container: &Value) -> (Option<i64>, Option<i64>, Option<i64>) {
    let res = &container["resources"];
    let cpu_limit = res["limits"]["cpu"].as_str().and_then(quantity_milli);
    let cpu_request = res["requests"]["cpu"]
        .as_str()
        .and_then(quantity_milli)
        .or(cpu_limit);
    let memory_limit = res["limits"]["memory"].as_str().and_then(quantity_bytes);
    (cpu_request, cpu_limit, memory_limit)
}

/// The kubelet's cpu.shares: milliCPU * 1024 / 1000, at least 2.
fn shares(milli: i64) -> u64 {
    ((milli * 1024) / 1000).max(2) as u64
}

/// A CFS quota per 100 ms period, at least 1 ms.
fn quota(milli: i64) -> i64 {
    (milli * 100).max(1000)
}

/// The pod's own cgroup limits, as the kubelet sets them: the sum over
/// app containers and sidecars, or the largest init container if that is
/// more; CPU and memory limits only when every container has one.
/// Shares are 2 for a pod without requests (BestEffort).
pub fn pod_resources(pod: &Value) -> Resources {
    let list = |key: &str| pod["spec"][key].as_array().cloned().unwrap_or_default();
    let (inits, apps) = (list("initContainers"), list("containers"));
    let (sidecars, plain_inits): (Vec<Value>, Vec<Value>) = inits
        .into_iter()
        .partition(|c| c["restartPolicy"] == "Always");
    let running: Vec<&Value> = apps.iter().chain(&sidecars).collect();
    // Sum (None once a container lacks the amount) vs. the largest init.
    let effective = |pick: fn(&Value) -> Option<i64>, all_needed: bool| -> Option<i64> {
        let values: Vec<Option<i64>> = running.iter().map(|c| pick(c)).collect();
        let sum = if all_needed {
            values.iter().copied().sum::<Option<i64>>()
        } else {
            Some(values.iter().flatten().sum())
        };
        let init_max = plain_inits.iter().map(pick).try_fold(0i64, |m, v| match v {
            Some(v) => Some(m.max(v)),
            None if all_needed => None,
            None => Some(m),
        });
        match (sum, init_max) {
            (Some(s), Some(i)) => Some(s.max(i)),
            _ => None,
        }
    };
    let cpu_request = effective(|c| amounts(c).0, false);
    Resources {
        cpu_shares: Some(cpu_request.filter(|m| *m > 0).map_or(2, shares)),
        cpu_quota: effective(|c| amounts(c).1, true).map(quota),
        memory_limit: effective(|c| amounts(c).2, true),
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

/// The process arguments, by the Kubernetes rules; `$(NAME)` in the
/// container's `command` and `args` expanded from `vars` (the
/// container's variables, without the image's), as the kubelet does.
pub fn command_line(
    container: &Value,
    image_config: &Value,
    vars: &[(String, String)],
) -> Vec<String> {
    let entrypoint = strings(&image_config["config"]["Entrypoint"]).unwrap_or_default();
    let cmd = strings(&image_config["config"]["Cmd"]).unwrap_or_default();
    let expanded = |v: Vec<String>| -> Vec<String> { v.iter().map(|a| expand(a, vars)).collect() };
    let command = strings(&container["command"])
        .filter(|c| !c.is_empty())
        .map(expanded);
    let args = strings(&container["args"])
        .filter(|a| !a.is_empty())
        .map(expanded);
    match (command, args) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => entrypoint.into_iter().chain(a).collect(),
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// A `fieldRef` value from the pod.
pub(crate) fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let ptr = match path {
        "metadata.name" => "/metadata/name",
        "metadata.namespace" => "/metadata/namespace",
        "metadata.uid" => "/metadata/uid",
        "spec.nodeName" => "/spec/nodeName",
        "spec.serviceAccountName" => "/spec/serviceAccountName",
        "status.hostIP" => "/status/hostIP",
        "status.podIP" => "/status/podIP",
        _ => {
            // metadata.labels['x'] / metadata.annotations['x']
            let (map, key) = path
                .strip_prefix("metadata.labels['")
                .map(|k| ("labels", k))
                .or_else(|| {
                    path.strip_prefix("metadata.annotations['")
                        .map(|k| ("annotations", k))
                })?;
            let key = key.strip_suffix("']")?;
            return pod["metadata"][map][key].as_str().map(str::to_owned);
        }
    };
    pod.pointer(ptr).and_then(Value::as_str).map(str::to_owned)
}

/// The container's own variables, as the kubelet computes them: the
/// services' ([`Sandbox::service_env`]), then `envFrom`, then `env` (a
/// later one replaces an earlier one of the same name), each `env`
/// value's `$(NAME)` expanded from those before it. Not the image's:
/// [`environment`] puts these over them.
pub fn container_env(
    pod: &Value,
    container: &Value,
    sources: &Sources,
    sandbox: &Sandbox,
) -> Vec<(String, String)> {
    let node = (sandbox.node_cpu_milli, sandbox.node_memory);
    let mut env: Vec<(String, String)> = sandbox.service_env.clone();
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let data = if let Some(n) = from.pointer("/configMapRef/name").and_then(Value::as_str) {
            sources.get(&("ConfigMap", n.to_owned()))
        } else if let Some(n) = from.pointer("/secretRef/name").and_then(Value::as_str) {
            sources.get(&("Secret", n.to_owned()))
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            let name = format!("{prefix}{k}");
            env.retain(|(e, _)| *e != name);
            env.push((name, text(v)));
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            match path {
                // Known before the pod's status says so (it is reported
                // after the first container starts).
                "status.podIP" | "status.podIPs" => sandbox.pod_ip.clone().unwrap_or_default(),
                "status.hostIP" | "status.hostIPs" => sandbox.host_ip.clone(),
                _ => field_ref(pod, path).unwrap_or_default(),
            }
        } else if let Some(r) = e.pointer("/valueFrom/resourceFieldRef") {
            resource_field(pod, container, r, node)
        } else if let Some((kind, r)) = e
            .pointer("/valueFrom/configMapKeyRef")
            .map(|r| ("ConfigMap", r))
            .or_else(|| e.pointer("/valueFrom/secretKeyRef").map(|r| ("Secret", r)))
        {
            sources
                .get(&(kind, r["name"].as_str().unwrap_or_default().to_owned()))
                .and_then(|d| d.get(r["key"].as_str().unwrap_or_default()))
                .map(text)
                .unwrap_or_default()
        } else {
            String::new()
        };
        env.retain(|(k, _)| k != name);
        env.push((name.to_owned(), value));
    }
    env
}

/// `NAME=value` entries: the image's, with the container's own
/// ([`container_env`]) over them, and `PATH` and `HOSTNAME` if neither
/// sets them.
pub fn environment(pod: &Value, image_config: &Value, own: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = strings(&image_config["config"]["Env"])
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
        .collect();
    env.extend(own.iter().cloned());
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push((
            "HOSTNAME".into(),
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A `resourceFieldRef` value: the container's request or limit (a limit
/// not set is the node's allocatable), divided by `divisor`, rounded up.
pub(super) fn resource_field(
    pod: &Value,
    container: &Value,
    r: &Value,
    node: (i64, i64),
) -> String {
    let target = match r["containerName"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => ["containers", "initContainers"]
            .iter()
            .flat_map(|l| pod["spec"][*l].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == n)
            .unwrap_or(Value::Null),
        None => container.clone(),
    };
    let resource = r["resource"].as_str().unwrap_or_default();
    let Some((section, name)) = resource.split_once('.') else {
        return String::new();
    };
    let cpu = name == "cpu";
    let scale = if cpu { 1000.0 } else { 1.0 };
    let set = target["resources"][section][name]
        .as_str()
        .and_then(|q| crate::api::quantity::parse_quantity(q, scale));
    let value = set.unwrap_or(match (section, cpu) {
        ("limits", true) => node.0,
        ("limits", false) => node.1,
        _ => 0,
    });
    let divisor = r["divisor"]
        .as_str()
        .and_then(|q| crate::api::quantity::parse_quantity(q, scale))
        .filter(|d| *d > 0)
        .unwrap_or(if cpu { 1000 } else { 1 });
    ((value + divisor - 1) / divisor).to_string()
}

/// `User` by name (`nginx`, `nginx:www`) to numbers, from the image's
/// `/etc/passwd` and `/etc/group`; numbers pass through.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Option<String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |table: &str, name: &str, field: usize| -> Option<(String, String)> {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() > field).then(|| {
                (
                    f[2].to_owned(),
                    f.get(3).copied().unwrap_or_default().to_owned(),
                )
            })
        })
    };
    let (uid, primary_gid) = if u.parse::<u32>().is_ok() {
        (u.to_owned(), None)
    } else {
        let (uid, gid) = lookup(passwd, u, 3)?;
        (uid, Some(gid))
    };
    let gid = match g {
        Some(g) if g.parse::<u32>().is_ok() => Some(g.to_owned()),
        Some(g) => Some(lookup(group, g, 2)?.0),
        None => primary_gid,
    };
    Some(match gid {
        Some(gid) => format!("{uid}:{gid}"),
        None => uid,
    })
}

fn security<'a>(pod: &'a Value, container: &'a Value, field: &str) -> Option<&'a Value> {
    container
        .pointer(&format!("/securityContext/{field}"))
        .or_else(|| pod.pointer(&format!("/spec/securityContext/{field}")))
        .filter(|v| !v.is_null())
}

/// The sysctls a pod may set without the node allowing more: the
/// kubelet's safe list (pkg/kubelet/sysctl/safe_sysctls.go), all of them
/// namespaced (the pod's network or IPC namespace).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The pod's `securityContext.sysctls` with dotted names (a name with
/// `/` separators has its `.` and `/` swapped, as upstream reads it), or
/// why the pod may not have them: one not on the safe list, or one of
/// the network (IPC) namespace's in a pod sharing the host's.
pub fn sysctls(pod: &Value) -> Result<Vec<(String, String)>, String> {
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let host_ipc = pod.pointer("/spec/hostIPC") == Some(&Value::Bool(true));
    let mut out = Vec::new();
    for s in pod
        .pointer("/spec/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let raw = s["name"].as_str().unwrap_or_default();
        let name: String = if raw.contains('/') {
            raw.chars()
                .map(|c| match c {
                    '/' => '.',
                    '.' => '/',
                    c => c,
                })
                .collect()
        } else {
            raw.to_owned()
        };
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(format!(
                "forbidden sysctl: \"{raw}\" not allowlisted (the node allows only the safe ones: {})",
                SAFE_SYSCTLS.join(", ")
            ));
        }
        if host_network && name.starts_with("net.") {
            return Err(format!(
                "forbidden sysctl: \"{raw}\" not allowed with host net enabled"
            ));
        }
        if host_ipc && name.starts_with("kernel.") {
            return Err(format!(
                "forbidden sysctl: \"{raw}\" not allowed with host ipc enabled"
            ));
        }
        out.push((name, s["value"].as_str().unwrap_or_default().to_owned()));
    }
    Ok(out)
}

/// `runAsNonRoot`, checked as the kubelet checks it before a container
/// is created: with it set (container over pod), a `runAsUser` of 0, an
/// image that runs as root (no user, or uid 0) or one whose user is a
/// name (which cannot be verified) is refused with the kubelet's words.
pub fn verify_run_as_non_root(
    pod: &Value,
    container: &Value,
    image_user: &str,
) -> Result<(), String> {
    if security(pod, container, "runAsNonRoot") != Some(&Value::Bool(true)) {
        return Ok(());
    }
    let who = format!(
        "pod: \"{}_{}({})\", container: {}",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["uid"].as_str().unwrap_or_default(),
        container["name"].as_str().unwrap_or_default()
    );
    if let Some(uid) = security(pod, container, "runAsUser").and_then(Value::as_u64) {
        return if uid == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy ({who})"
            ))
        } else {
            Ok(())
        };
    }
    let user = image_user.split(':').next().unwrap_or_default();
    match user.parse::<u32>() {
        _ if user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root ({who})"
        )),
    }
}

/// The container's runtime config. `id` names its cgroup.
pub fn config(
    pod: &Value,
    container: &Value,
    image_config: &Value,
    sources: &Sources,
    files: &PodFiles,
    sandbox: &Sandbox,
    cgroup: String,
) -> ContainerConfig {
    let image_user = image_config["config"]["User"].as_str().unwrap_or_default();
    let (image_uid, image_gid) = match image_user.split_once(':') {
        Some((u, g)) => (u.parse().ok(), g.parse().ok()),
        None => (image_user.parse().ok(), None),
    };
    let uid = security(pod, container, "runAsUser")
        .and_then(Value::as_u64)
        .map(|u| u as u32)
        .or(image_uid)
        .unwrap_or(0);
    let gid = security(pod, container, "runAsGroup")
        .and_then(Value::as_u64)
        .map(|g| g as u32)
        .or(image_gid)
        .unwrap_or(0);
    let mut additional_gids: Vec<u32> = pod
        .pointer("/spec/securityContext/supplementalGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|g| g as u32)
        .collect();
    if let Some(fs_group) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        additional_gids.push(fs_group as u32);
    }
    let privileged = container.pointer("/securityContext/privileged") == Some(&Value::Bool(true));
    let no_new_privileges =
        container.pointer("/securityContext/allowPrivilegeEscalation") == Some(&Value::Bool(false));
    let caps = |which: &str| {
        strings(&container["securityContext"]["capabilities"][which]).unwrap_or_default()
    };
    let (cpu_request, cpu_limit, memory_limit) = amounts(container);
    let resources = Resources {
        cpu_shares: cpu_request.map(shares),
        cpu_quota: cpu_limit.map(quota),
        memory_limit,
    };
    let mut mounts = vec![
        BindMount {
            source: files.hosts.clone(),
            destination: "/etc/hosts".into(),
            readonly: false,
        },
        BindMount {
            source: files.hostname.clone(),
            destination: "/etc/hostname".into(),
            readonly: false,
        },
        BindMount {
            source: files.resolv_conf.clone(),
            destination: "/etc/resolv.conf".into(),
            readonly: false,
        },
    ];
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
            continue;
        };
        let Some(volume) = volumes.iter().find(|v| v["name"] == name) else {
            continue;
        };
        let api_backed = ["configMap", "secret", "downwardAPI", "projected"]
            .iter()
            .any(|k| volume.get(*k).is_some());
        let source = if let Some(host) = volume.pointer("/hostPath/path").and_then(Value::as_str) {
            PathBuf::from(host)
        } else if volume.get("emptyDir").is_some() || api_backed {
            files.volumes.join(name)
        } else {
            // Other volume types (persistent volumes) are not served yet.
            continue;
        };
        let sub = m["subPath"].as_str().unwrap_or_default();
        mounts.push(BindMount {
            source: if sub.is_empty() {
                source
            } else {
                source.join(sub)
            },
            destination: path.to_owned(),
            // API-backed volumes are read-only, as the kubelet mounts them.
            readonly: m["readOnly"] == Value::Bool(true) || api_backed,
        });
    }
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let host_ipc = pod.pointer("/spec/hostIPC") == Some(&Value::Bool(true));
    let own_env = container_env(pod, container, sources, sandbox);
    ContainerConfig {
        args: command_line(container, image_config, &own_env),
        env: environment(pod, image_config, &own_env),
        cwd: container["workingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .or_else(|| image_config["config"]["WorkingDir"].as_str())
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_owned(),
        uid,
        gid,
        additional_gids,
        hostname: if host_network {
            crate::agent::node::hostname()
        } else {
            pod.pointer("/spec/hostname")
                .and_then(Value::as_str)
                .or_else(|| pod["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        },
        netns: (!host_network).then(|| sandbox.net.clone()),
        ipcns: (!host_ipc).then(|| sandbox.ipc.clone()),
        utsns: (!host_network).then(|| sandbox.uts.clone()),
        pidns: shares_pid(pod).then(|| sandbox.pid.clone()),
        host_ipc,
        host_pid: pod.pointer("/spec/hostPID") == Some(&Value::Bool(true)),
        host_uts: host_network,
        cgroup,
        cgroup_v1: sandbox.cgroup_v1.clone(),
        // Checked before the pod starts (see `sysctls`).
        sysctls: sysctls(pod).unwrap_or_default(),
        resources,
        privileged,
        tty: container["tty"] == true,
        stdin: container["stdin"] == true,
        stdin_once: container["stdinOnce"] == true,
        readonly_rootfs: container.pointer("/securityContext/readOnlyRootFilesystem")
            == Some(&Value::Bool(true)),
        no_new_privileges,
        add_caps: caps("add"),
        drop_caps: caps("drop"),
        mounts,
        // RuntimeDefault (Localhost profiles are not read yet: they get
        // RuntimeDefault rather than nothing).
        seccomp_default: matches!(
            security(pod, container, "seccompProfile").and_then(|p| p["type"].as_str()),
            Some("RuntimeDefault" | "Localhost")
        ),
        shm: Some(if host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            sandbox.shm.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn image() -> Value {
        json!({"config": {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "MODE=image"], "WorkingDir": "/app", "User": "1000:1000"}})
    }

    #[test]
    fn resource_fields_and_user_names_resolve() {
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}});
        let c = pod["spec"]["containers"][0].clone();
        let f = |r: Value| resource_field(&pod, &c, &r, (2000, 1 << 30));
        assert_eq!(
            f(json!({"resource": "limits.memory", "divisor": "1Mi"})),
            "64"
        );
        assert_eq!(
            f(json!({"resource": "requests.cpu", "divisor": "1m"})),
            "250"
        );
        assert_eq!(
            f(json!({"resource": "requests.cpu"})),
            "1",
            "rounded up to a core"
        );
        assert_eq!(
            f(json!({"resource": "limits.cpu"})),
            "2",
            "unset: the node's allocatable"
        );
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:102:nginx:/:/sbin/nologin\n";
        let group = "root:x:0:\nwww:x:33:\n";
        assert_eq!(
            resolve_user("nginx", passwd, group).as_deref(),
            Some("101:102")
        );
        assert_eq!(
            resolve_user("nginx:www", passwd, group).as_deref(),
            Some("101:33")
        );
        assert_eq!(
            resolve_user("1000:www", passwd, group).as_deref(),
            Some("1000:33")
        );
        assert_eq!(resolve_user("1000", passwd, group).as_deref(), Some("1000"));
        assert_eq!(resolve_user("ghost", passwd, group), None);
    }

    fn sandbox() -> Sandbox {
        Sandbox {
            net: "/ns/net".into(),
            ipc: "/ns/ipc".into(),
            uts: "/ns/uts".into(),
            pid: "/ns/pid".into(),
            shm: "/p/shm".into(),
            node_cpu_milli: 2000,
            node_memory: 1 << 30,
            cgroup_v1: None,
            pod_ip: Some("10.42.0.7".into()),
            host_ip: "192.168.1.20".into(),
            service_env: Vec::new(),
        }
    }

    #[test]
    fn references_expand_as_the_kubelet_expands_them() {
        let vars = [
            ("A".to_owned(), "one".to_owned()),
            ("B".to_owned(), "$(A)".to_owned()),
            ("A".to_owned(), "two".to_owned()),
        ];
        for (input, want) in [
            ("$(A)", "two"),
            ("x$(A)y$(A)", "xtwoytwo"),
            // Values are not expanded again.
            ("$(B)", "$(A)"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$two"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("$()", "$()"),
            ("ü$(A)ü", "ütwoü"),
            ("", ""),
        ] {
            assert_eq!(expand(input, &vars), want, "{input:?}");
        }
    }

    #[test]
    fn services_give_pods_their_variables_like_the_kubelet() {
        let svc =
            |ns: &str, name: &str, ip: &str, ports: Value| -> k8s_openapi::api::core::v1::Service {
                serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}}))
                .unwrap()
            };
        let services = [
            svc(
                "default",
                "kubernetes",
                "10.43.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "shop",
                "redis-main",
                "10.43.0.9",
                json!([{"port": 6379}, {"name": "metrics", "port": 9121, "protocol": "TCP"}]),
            ),
            svc(
                "shop",
                "dns",
                "10.43.0.10",
                json!([{"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
            ),
            svc("shop", "headless", "None", json!([{"port": 80}])),
            svc("other", "web", "10.43.0.11", json!([{"port": 80}])),
        ];
        let env: std::collections::BTreeMap<String, String> =
            service_env("shop", true, services.iter())
                .into_iter()
                .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
        assert_eq!(get("REDIS_MAIN_SERVICE_HOST"), Some("10.43.0.9"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT_METRICS"), Some("9121"));
        assert_eq!(get("REDIS_MAIN_PORT"), Some("tcp://10.43.0.9:6379"));
        assert_eq!(get("REDIS_MAIN_PORT_9121_TCP_ADDR"), Some("10.43.0.9"));
        assert_eq!(get("DNS_SERVICE_PORT_DNS_UDP"), Some("53"));
        assert_eq!(get("DNS_PORT"), Some("udp://10.43.0.10:53"));
        assert_eq!(get("DNS_PORT_53_UDP_PROTO"), Some("udp"));
        // Headless services and other namespaces' give none.
        assert!(
            !env.keys()
                .any(|k| k.starts_with("HEADLESS_") || k.starts_with("WEB_")),
            "{env:?}"
        );
        // Without service links, only the API server's.
        let env = service_env("shop", false, services.iter());
        assert!(
            env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{env:?}"
        );
        assert_eq!(env.len(), 8);
    }

    #[test]
    fn variables_reach_command_and_args_and_ips_are_known_before_the_status() {
        let pod = json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {}});
        let c = json!({
        "command": ["/app", "--listen=$(POD_IP):8080"],
        "args": ["--api=$(KUBERNETES_SERVICE_HOST)", "--node=$(NODE)", "$(PATH)", "$$(POD_IP)"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
        ]});
        let mut sandbox = sandbox();
        sandbox.service_env = vec![
            ("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
        ];
        let own = container_env(&pod, &c, &Default::default(), &sandbox);
        assert_eq!(
            command_line(&c, &image(), &own),
            [
                "/app",
                "--listen=10.42.0.7:8080",
                "--api=10.43.0.1",
                "--node=192.168.1.20",
                // The image's variables are not the kubelet's to expand.
                "$(PATH)",
                "$(POD_IP)"
            ]
        );
        let env = environment(&pod, &image(), &own);
        for want in [
            "POD_IP=10.42.0.7",
            "NODE=192.168.1.20",
            "API=https://10.43.0.1:443",
            "KUBERNETES_SERVICE_PORT=6443",
            "PATH=/bin",
        ] {
            assert!(env.contains(&want.to_owned()), "{want} in {env:?}");
        }
    }

    #[test]
    fn only_safe_sysctls_are_allowed_and_in_the_pods_namespaces() {
        let pod = |extra: Value| {
            let mut p = json!({"spec": {"securityContext": {"sysctls": [
                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                {"name": "net/ipv4/ping_group_range", "value": "0 2147483647"},
            ]}}});
            if let Value::Object(m) = extra {
                for (k, v) in m {
                    p["spec"][k] = v;
                }
            }
            p
        };
        assert_eq!(
            sysctls(&pod(json!({}))).unwrap(),
            [
                (
                    "net.ipv4.ip_unprivileged_port_start".to_owned(),
                    "0".to_owned()
                ),
                (
                    "net.ipv4.ping_group_range".to_owned(),
                    "0 2147483647".to_owned()
                ),
            ]
        );
        assert!(
            sysctls(&pod(json!({"hostNetwork": true})))
                .unwrap_err()
                .contains("not allowed with host net enabled")
        );
        let unsafe_one = json!({"spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}});
        assert!(
            sysctls(&unsafe_one)
                .unwrap_err()
                .starts_with(r#"forbidden sysctl: "kernel.msgmax" not allowlisted"#)
        );
        assert_eq!(sysctls(&json!({"spec": {}})).unwrap(), []);
    }

    #[test]
    fn run_as_non_root_is_checked_like_the_kubelet() {
        let pod = |sc: Value| json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"securityContext": sc}});
        let c = |sc: Value| json!({"name": "c", "securityContext": sc});
        let check = |p: Value, c: Value, user: &str| verify_run_as_non_root(&p, &c, user);
        // Not asked for: anything goes.
        assert!(check(pod(json!({})), c(json!({})), "").is_ok());
        let on = json!({"runAsNonRoot": true});
        assert_eq!(
            check(pod(on.clone()), c(json!({})), ""),
            Err(r#"container has runAsNonRoot and image will run as root (pod: "p_ns(u)", container: c)"#.to_owned())
        );
        assert!(check(pod(on.clone()), c(json!({})), "0:0").is_err());
        assert!(check(pod(on.clone()), c(json!({})), "1000").is_ok());
        assert!(check(pod(on.clone()), c(json!({})), "1000:1000").is_ok());
        assert!(
            check(pod(on.clone()), c(json!({})), "nginx")
                .unwrap_err()
                .contains("non-numeric user (nginx)")
        );
        // runAsUser decides when set; the container's over the pod's.
        assert!(check(pod(on.clone()), c(json!({"runAsUser": 1000})), "").is_ok());
        assert!(
            check(pod(on.clone()), c(json!({"runAsUser": 0})), "1000")
                .unwrap_err()
                .contains("runAsUser breaks non-root policy")
        );
        assert!(check(pod(json!({})), c(json!({"runAsNonRoot": true})), "").is_err());
        assert!(check(pod(on), c(json!({"runAsNonRoot": false})), "").is_ok());
    }

    #[test]
    fn command_and_args_follow_the_kubernetes_rules() {
        let img = image();
        assert_eq!(command_line(&json!({}), &img, &[]), ["/entry", "--serve"]);
        assert_eq!(
            command_line(&json!({"args": ["-v"]}), &img, &[]),
            ["/entry", "-v"]
        );
        assert_eq!(
            command_line(&json!({"command": ["/bin/sh"]}), &img, &[]),
            ["/bin/sh"]
        );
        assert_eq!(
            command_line(
                &json!({"command": ["/bin/sh"], "args": ["-c", "true"]}),
                &img,
                &[]
            ),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn environment_layers_the_container_over_the_image() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}});
        let c = json!({"env": [
            {"name": "MODE", "value": "pod"},
            {"name": "URL", "value": "http://$(MODE)"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        ]});
        let mut sources = Sources::new();
        sources.insert(
            ("ConfigMap", "cfg".into()),
            [("LEVEL".to_owned(), b"debug".to_vec())]
                .into_iter()
                .collect(),
        );
        sources.insert(
            ("Secret", "db".into()),
            [("password".to_owned(), b"hunter2".to_vec())]
                .into_iter()
                .collect(),
        );
        let c = {
            let mut c = c;
            c["envFrom"] = json!([{"configMapRef": {"name": "cfg"}, "prefix": "APP_"}]);
            c["env"].as_array_mut().unwrap().push(json!({"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}));
            c
        };
        let env = environment(
            &pod,
            &image(),
            &container_env(&pod, &c, &sources, &sandbox()),
        );
        assert!(env.contains(&"APP_LEVEL=debug".to_owned()), "{env:?}");
        assert!(env.contains(&"PW=hunter2".to_owned()), "{env:?}");
        for want in [
            "PATH=/bin",
            "MODE=pod",
            "URL=http://pod",
            "NS=shop",
            "APP=web",
            "HOSTNAME=web-1",
        ] {
            assert!(env.contains(&want.to_owned()), "{want} in {env:?}");
        }
        assert!(!env.contains(&"MODE=image".to_owned()));
    }

    #[test]
    fn user_resources_and_security_reach_the_config() {
        let pod = json!({"metadata": {"name": "p", "uid": "u"}, "spec": {
            "securityContext": {"runAsUser": 2000, "fsGroup": 3000},
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "host", "hostPath": {"path": "/srv"}}]}});
        let c = json!({"name": "c", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"add": ["NET_ADMIN"]}},
            "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/s"}, {"name": "host", "mountPath": "/data", "readOnly": true}]});
        let files = PodFiles {
            hosts: "/p/hosts".into(),
            hostname: "/p/hostname".into(),
            resolv_conf: "/p/resolv.conf".into(),
            volumes: "/p/volumes".into(),
        };
        let cfg = config(
            &pod,
            &c,
            &image(),
            &Default::default(),
            &files,
            &sandbox(),
            "/orch/podu/c".into(),
        );
        assert_eq!(
            (cfg.uid, cfg.gid),
            (2000, 1000),
            "pod runAsUser over the image's user"
        );
        assert_eq!(cfg.additional_gids, [3000]);
        assert_eq!(cfg.cwd, "/app");
        assert_eq!(cfg.resources.cpu_shares, Some(256));
        let two = json!({"spec": {
        "initContainers": [{"name": "i", "resources": {"limits": {"cpu": "1", "memory": "200Mi"}}}],
        "containers": [
            {"name": "a", "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "200m", "memory": "32Mi"}}},
        ]}});
        // The init container is bigger than the two apps together.
        let pod = super::pod_resources(&two);
        assert_eq!(pod.cpu_quota, Some(100_000));
        assert_eq!(pod.memory_limit, Some(200 << 20));
        assert_eq!(pod.cpu_shares, Some(1024));
        let mut apps_only = two.clone();
        apps_only["spec"]["initContainers"] = json!([]);
        let pod = super::pod_resources(&apps_only);
        assert_eq!(
            (pod.cpu_quota, pod.memory_limit, pod.cpu_shares),
            (Some(30_000), Some(64 << 20), Some(358))
        );
        // One container without a memory limit: no pod memory limit.
        apps_only["spec"]["containers"][0]["resources"] = json!({});
        let pod = super::pod_resources(&apps_only);
        assert_eq!(
            (pod.cpu_quota, pod.memory_limit, pod.cpu_shares),
            (None, None, Some(256))
        );
        let best_effort = super::pod_resources(&json!({"spec": {"containers": [{"name": "x"}]}}));
        assert_eq!(best_effort.cpu_shares, Some(2));
        assert_eq!(cfg.resources.cpu_quota, Some(50_000));
        assert_eq!(cfg.resources.memory_limit, Some(64 << 20));
        assert!(cfg.no_new_privileges && cfg.readonly_rootfs);
        assert_eq!(cfg.add_caps, ["NET_ADMIN"]);
        assert_eq!(cfg.hostname, "p");
        assert_eq!(cfg.netns.as_deref(), Some(Path::new("/ns/net")));
        assert_eq!(cfg.utsns.as_deref(), Some(Path::new("/ns/uts")));
        assert_eq!(cfg.shm.as_deref(), Some(Path::new("/p/shm")));
        assert!(
            cfg.mounts
                .iter()
                .any(|m| m.destination == "/tmp/s" && m.source == Path::new("/p/volumes/scratch"))
        );
        assert!(
            cfg.mounts
                .iter()
                .any(|m| m.destination == "/data" && m.readonly)
        );
        assert!(
            cfg.mounts
                .iter()
                .any(|m| m.destination == "/etc/resolv.conf")
        );
    }
}
