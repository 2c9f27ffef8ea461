//! The OCI runtime spec (`config.json`) for one container, from a plain
//! description of what it should be. Pure: values in, a spec out; the
//! agent fills [`ContainerConfig`] from the pod, the container and the
//! image config.
//!
//! Defaults follow containerd's CRI plugin, so containers behave as they
//! do under k3s: its default capability set, masked and read-only `/proc`
//! paths, `/dev` as tmpfs with devpts and mqueue, read-only `/sys` and
//! cgroup, and devices denied except the standard ones. Resource limits
//! (`RLIMIT_NOFILE`, …) are inherited from the shim, as containerd's CRI
//! containers inherit containerd's (raising them can fail with EPERM where
//! `fs.nr_open` is lower).

use std::path::PathBuf;

use serde_json::{Value, json};

/// containerd's default capabilities (`pkg/oci` defaultUnixCaps).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's masked paths (`pkg/oci` defaultMaskedPaths).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A bind mount into the container (volumes, /etc/hosts, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Resource limits, already in kernel units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.shares (v1) — converted by libcgroups for v2. From the CPU request.
    pub cpu_shares: Option<u64>,
    /// CFS quota per 100 ms period, from the CPU limit.
    pub cpu_quota: Option<i64>,
    /// Bytes, from the memory limit.
    pub memory_limit: Option<i64>,
}

/// What the container should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The command and its arguments (entrypoint/cmd already resolved).
    pub args: Vec<String>,
    /// `NAME=value`, image env first, then the container's.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// The pod's network namespace (None: the host's).
    pub netns: Option<PathBuf>,
    /// The pod's IPC and UTS namespaces to join (None: a new one each).
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// Share the host's IPC, PID and UTS namespaces.
    pub host_ipc: bool,
    pub host_pid: bool,
    pub host_uts: bool,
    /// The cgroup path, e.g. `/orch/pod<uid>/<container>`.
    pub cgroup: String,
    pub resources: Resources,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    /// allowPrivilegeEscalation=false (or non-root with none set).
    pub no_new_privileges: bool,
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    pub mounts: Vec<BindMount>,
    /// Bind-mounted to `/dev/shm` (the pod's shared memory).
    pub shm: Option<PathBuf>,
    /// seccompProfile RuntimeDefault.
    pub seccomp_default: bool,
}

/// What RuntimeDefault refuses (EPERM): the syscalls containerd's default
/// profile keeps from containers without extra capabilities — kernel
/// modules, kexec, reboot, mounts and namespaces, keyrings, BPF, perf,
/// userfaultfd, clocks, swap, accounting, quotas, handle-based opens,
/// cross-process memory. (A deny list; the allow-list form of the same
/// profile comes later.) Names this kernel does not know are skipped.
pub const SECCOMP_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability set after the container's add/drop lists
/// (`ALL` in either list as upstream means it).
fn capabilities(c: &ContainerConfig) -> Vec<String> {
    if c.privileged {
        return ALL_CAPS.iter().map(|s| (*s).to_owned()).collect();
    }
    let mut caps: Vec<String> = if c.add_caps.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
        ALL_CAPS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        let mut v: Vec<String> = DEFAULT_CAPS.iter().map(|s| (*s).to_owned()).collect();
        for add in &c.add_caps {
            let add = cap_name(add);
            if !v.contains(&add) {
                v.push(add);
            }
        }
        v
    };
    if c.drop_caps.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        caps.clear();
        // Added ones survive a drop of ALL (upstream's order: drop, then add).
        for add in &c.add_caps {
            if !add.eq_ignore_ascii_case("ALL") {
                caps.push(cap_name(add));
            }
        }
    } else {
        let drops: Vec<String> = c.drop_caps.iter().map(|d| cap_name(d)).collect();
        caps.retain(|c| !drops.contains(c));
    }
    caps
}

/// The spec, as the JSON `config.json` holds.
pub fn build(c: &ContainerConfig) -> Value {
    let caps = capabilities(c);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if c.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if c.privileged { "rw" } else { "ro" }]}),
    ];
    match &c.shm {
        Some(shm) => mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]})),
        None => mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})),
    }
    for m in &c.mounts {
        mounts.push(json!({
            "destination": m.destination, "type": "bind", "source": m.source,
            "options": ["rbind", "rprivate", if m.readonly { "ro" } else { "rw" }],
        }));
    }
    let ns = |kind: &str, path: &Option<PathBuf>| match path {
        Some(p) => json!({"type": kind, "path": p}),
        None => json!({"type": kind}),
    };
    let mut namespaces = vec![json!({"type": "mount"})];
    if !c.host_uts {
        namespaces.push(ns("uts", &c.utsns));
    }
    if !c.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if !c.host_ipc {
        namespaces.push(ns("ipc", &c.ipcns));
    }
    if let Some(netns) = &c.netns {
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if c.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
    } else {
        // The standard devices (runc's AllowedDevices).
        let dev = |kind: &str, major: i64, minor: i64| json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": "rwm"});
        let list = resources["devices"].as_array_mut().expect("literal array");
        list.extend([
            dev("c", 1, 3),    // null
            dev("c", 1, 5),    // zero
            dev("c", 1, 7),    // full
            dev("c", 5, 0),    // tty
            dev("c", 1, 8),    // random
            dev("c", 1, 9),    // urandom
            dev("c", 5, 1),    // console
            dev("c", 136, -1), // pts
            dev("c", 5, 2),    // ptmx
        ]);
        for d in list.iter_mut() {
            if d["minor"] == -1 {
                d.as_object_mut().expect("literal object").remove("minor");
            }
        }
    }
    if let Some(shares) = c.resources.cpu_shares {
        resources["cpu"]["shares"] = json!(shares);
    }
    if let Some(quota) = c.resources.cpu_quota {
        resources["cpu"]["quota"] = json!(quota);
        resources["cpu"]["period"] = json!(100_000);
    }
    if let Some(limit) = c.resources.memory_limit {
        resources["memory"]["limit"] = json!(limit);
        // No swap beyond the limit, as the kubelet sets it.
        resources["memory"]["swap"] = json!(limit);
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": c.cgroup,
        "resources": resources,
    });
    if !c.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if c.seccomp_default {
            linux["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": SECCOMP_DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            });
        }
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.additional_gids},
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        "root": {"path": "rootfs", "readonly": c.readonly_rootfs},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    // Only when set: libcontainer decides when to load seccomp by whether
    // the field is present, not by its value (absent: before dropping
    // capabilities, as loading a filter without no_new_privs needs
    // CAP_SYS_ADMIN).
    if c.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    // A host name needs a UTS namespace of the container's own.
    if c.host_uts {
        spec.as_object_mut()
            .expect("literal object")
            .remove("hostname");
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerConfig {
        ContainerConfig {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            hostname: "web-0".into(),
            netns: Some("/run/orch/netns/pod-1".into()),
            cgroup: "/orch/pod1/web".into(),
            ..ContainerConfig::default()
        }
    }

    #[test]
    fn the_spec_parses_as_an_oci_runtime_spec() {
        let spec = build(&base());
        let parsed: oci_spec::runtime::Spec =
            serde_json::from_value(spec.clone()).expect("a valid runtime spec");
        assert_eq!(parsed.hostname().as_deref(), Some("web-0"));
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/orch/netns/pod-1")
        );
        assert!(ns.iter().any(|n| n["type"] == "pid"));
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(spec["root"]["path"], "rootfs");
        assert!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
    }

    #[test]
    fn capabilities_follow_add_and_drop_like_containerd() {
        let mut c = base();
        assert_eq!(capabilities(&c).len(), DEFAULT_CAPS.len());
        c.add_caps = vec!["NET_ADMIN".into()];
        c.drop_caps = vec!["CAP_MKNOD".into(), "net_raw".into()];
        let caps = capabilities(&c);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_owned()));
        assert!(!caps.contains(&"CAP_MKNOD".to_owned()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_owned()));
        c.drop_caps = vec!["ALL".into()];
        assert_eq!(capabilities(&c), ["CAP_NET_ADMIN"]);
        c.privileged = true;
        assert_eq!(capabilities(&c).len(), ALL_CAPS.len());
        let spec = build(&c);
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], true);
    }

    #[test]
    fn limits_and_mounts_reach_the_spec() {
        let mut c = base();
        c.resources = Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            memory_limit: Some(64 << 20),
        };
        c.mounts = vec![BindMount {
            source: "/var/lib/orch/pods/u/volumes/cfg".into(),
            destination: "/etc/app".into(),
            readonly: true,
        }];
        c.host_pid = true;
        c.netns = None;
        let spec = build(&c);
        let r = &spec["linux"]["resources"];
        assert_eq!(r["cpu"]["shares"], 512);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 64 << 20);
        let m = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/app")
            .unwrap();
        assert!(m["options"].as_array().unwrap().contains(&json!("ro")));
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(
            !ns.iter()
                .any(|n| n["type"] == "pid" || n["type"] == "network")
        );
    }
}
