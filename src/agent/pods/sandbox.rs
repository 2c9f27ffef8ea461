//! The pod's sandbox: its files (`/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`), in-memory volumes, and its shim (network, IPC, UTS
//! and PID namespaces, and the mount namespace its containers' roots live
//! in).

use std::path::Path;

use serde_json::Value;

use super::Kubelet;
use super::runtime::PodRuntime;
use crate::agent::container::PodFiles;

/// Volumes in memory, as the kubelet keeps them: emptyDir with `medium:
/// Memory` (sized by sizeLimit), and secret, projected and downwardAPI
/// volumes (secrets and tokens never reach the disk).
pub(super) async fn mount_memory_volumes(
    rt: &dyn PodRuntime,
    pod: &Value,
    files: &PodFiles,
) -> Result<(), String> {
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let (size, mode) = if v.pointer("/emptyDir/medium") == Some(&Value::from("Memory")) {
            let size = v
                .pointer("/emptyDir/sizeLimit")
                .and_then(Value::as_str)
                .and_then(|q| crate::api::quantity::parse_quantity(q, 1.0))
                .map(|b| b.max(4096) as u64);
            (size, 0o1777)
        } else if ["secret", "projected", "downwardAPI"]
            .iter()
            .any(|kind| v.get(kind).is_some())
        {
            (None, 0o755)
        } else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let dir = files.volumes.join(&name);
        rt.mount_tmpfs(dir, size, mode)
            .await
            .map_err(|e| format!("volume {name}: {e}"))?;
    }
    Ok(())
}

/// The `hostPort` mappings of a pod's containers to its address.
pub(super) fn host_ports(pod: &Value, ip: std::net::Ipv4Addr) -> Vec<crate::net::proxy::HostPort> {
    let mut out = Vec::new();
    for c in ["initContainers", "containers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().into_iter().flatten())
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            let (Some(host_port), Some(container_port)) = (
                p["hostPort"].as_u64().and_then(|v| u16::try_from(v).ok()),
                p["containerPort"]
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok()),
            ) else {
                continue;
            };
            if host_port == 0 {
                continue;
            }
            use crate::net::proxy::Protocol;
            let protocol = match p["protocol"].as_str() {
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            out.push(crate::net::proxy::HostPort {
                protocol,
                host_ip: p["hostIP"].as_str().and_then(|s| s.parse().ok()),
                host_port,
                pod_ip: std::net::IpAddr::V4(ip),
                container_port,
            });
        }
    }
    out
}

pub(super) fn write_pod_files(
    k: &Kubelet,
    pod: &Value,
    files: &PodFiles,
    pod_ip: Option<std::net::Ipv4Addr>,
) -> std::io::Result<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    std::fs::create_dir_all(&files.volumes)?;
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if v.get("emptyDir").is_some()
            && let Some(n) = v["name"].as_str()
        {
            std::fs::create_dir_all(files.volumes.join(n))?;
        }
    }
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let hostname = if host_network {
        crate::agent::node::hostname()
    } else {
        pod.pointer("/spec/hostname")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_owned()
    };
    write_if_changed(&files.hostname, format!("{hostname}\n").as_bytes())?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let ip = if host_network {
        Some(k.node_ip.clone())
    } else {
        pod_ip.map(|ip| ip.to_string())
    };
    // With a subdomain, the pod's full name first, as the kubelet
    // writes it (`db-0.db.default.svc.cluster.local db-0`).
    let subdomain = pod["spec"]["subdomain"]
        .as_str()
        .filter(|s| !s.is_empty() && !host_network);
    match (ip, subdomain) {
        (Some(ip), Some(sub)) => hosts.push_str(&format!(
            "{ip}\t{hostname}.{sub}.{}.svc.{}\t{hostname}\n",
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            k.cluster_domain
        )),
        (Some(ip), None) => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        (None, _) => {}
    }
    for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
        let names: Vec<&str> = alias["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        hosts.push_str(&format!(
            "{}\t{}\n",
            alias["ip"].as_str().unwrap_or_default(),
            names.join("\t")
        ));
    }
    write_if_changed(&files.hosts, hosts.as_bytes())?;
    let host = std::fs::read_to_string(&k.resolv_conf).unwrap_or_default();
    let resolv = resolv_conf(pod, host_network, &k.cluster_dns, &k.cluster_domain, &host);
    write_if_changed(&files.resolv_conf, resolv.as_bytes())
}

/// Write `contents` to `path` in place, unless it holds them already.
/// A running container has the file bind-mounted, so it stays the same
/// inode (a rename would leave the container with the old one), and a
/// pod's every sync rewriting it would empty it for a moment each time:
/// a lookup reading resolv.conf then would find no name server.
pub(super) fn write_if_changed(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents)
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it: by `dnsPolicy`
/// (ClusterFirst — the cluster DNS and search path, `ndots:5`; hostNetwork
/// pods take the node's unless ClusterFirstWithHostNet; Default — the
/// node's `host` file; None — `dnsConfig` alone), with `dnsConfig`'s
/// nameservers, searches and options merged in (at most 3 nameservers and
/// 32 search domains; an option of the same name replaces the earlier).
pub(super) fn resolv_conf(
    pod: &Value,
    host_network: bool,
    dns: &str,
    domain: &str,
    host: &str,
) -> String {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let policy = pod["spec"]["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let field = |line: &str, key: &str| -> Vec<String> {
        line.strip_prefix(key)
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let from_host = || {
        let (mut servers, mut search, mut options) = (Vec::new(), Vec::new(), Vec::new());
        for line in host.lines().map(str::trim) {
            servers.extend(field(line, "nameserver"));
            let s = field(line, "search");
            if !s.is_empty() {
                search = s; // the last search line wins
            }
            options.extend(field(line, "options"));
        }
        (servers, search, options)
    };
    let cluster = || {
        (
            vec![dns.to_owned()],
            vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_owned(),
            ],
            vec!["ndots:5".to_owned()],
        )
    };
    let (mut servers, mut search, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "Default" => from_host(),
        "ClusterFirstWithHostNet" => cluster(),
        _ if host_network => from_host(),
        _ => cluster(),
    };
    let cfg = &pod["spec"]["dnsConfig"];
    let list = |f: &str| -> Vec<String> {
        cfg[f]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    for s in list("nameservers") {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    for s in list("searches") {
        if !search.contains(&s) {
            search.push(s);
        }
    }
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else {
            continue;
        };
        let option = match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_owned(),
        };
        options.retain(|have| have.split(':').next() != Some(name));
        options.push(option);
    }
    servers.truncate(3);
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn pod_files_are_rewritten_in_place_and_only_when_they_change() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        write_if_changed(&path, b"10.42.0.7\tweb\n").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        write_if_changed(&path, b"10.42.0.7\tweb\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), old);
        write_if_changed(&path, b"10.42.0.8\tweb\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_ne!(meta.modified().unwrap(), old);
        assert_eq!(meta.ino(), ino, "the same inode: containers bind-mount it");
        assert_eq!(std::fs::read(&path).unwrap(), b"10.42.0.8\tweb\n");
    }

    #[test]
    fn resolv_conf_follows_dns_policy_and_merges_dns_config() {
        let host = "# generated\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n";
        let pod = |spec: Value| json!({"metadata": {"namespace": "shop"}, "spec": spec});
        let r = |spec: Value, host_net: bool| {
            resolv_conf(&pod(spec), host_net, "10.43.0.10", "cluster.local", host)
        };
        assert_eq!(
            r(json!({}), false),
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        // hostNetwork pods take the node's unless ClusterFirstWithHostNet.
        assert_eq!(
            r(json!({}), true),
            "search lan\nnameserver 192.168.1.1\noptions edns0\n"
        );
        assert!(r(json!({"dnsPolicy": "ClusterFirstWithHostNet"}), true).contains("10.43.0.10"));
        assert_eq!(
            r(json!({"dnsPolicy": "Default"}), false),
            r(json!({}), true)
        );
        // dnsConfig merges into any policy; an option replaces one of its name.
        let merged = r(
            json!({"dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["corp"],
                   "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}),
            false,
        );
        assert_eq!(
            merged,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp\nnameserver 10.43.0.10\nnameserver 1.1.1.1\noptions ndots:2 rotate\n"
        );
        assert_eq!(
            r(
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["9.9.9.9"], "options": [{"name": "ndots", "value": "1"}]}}),
                false
            ),
            "nameserver 9.9.9.9\noptions ndots:1\n"
        );
    }
}
