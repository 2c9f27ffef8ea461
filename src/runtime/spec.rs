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

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::cgroup::V1View;

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

/// The container's cgroup limits (defined with the cgroups they limit).
pub use super::cgroup::Resources;

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
    /// The pod's shared PID namespace (`shareProcessNamespace`; None: a
    /// new one, or the host's with `host_pid`).
    pub pidns: Option<PathBuf>,
    /// Share the host's IPC, PID and UTS namespaces.
    pub host_ipc: bool,
    pub host_pid: bool,
    pub host_uts: bool,
    /// The cgroup path, e.g. `/orch/pod<uid>/<container>`.
    pub cgroup: String,
    /// On a cgroup v1 node, how `/sys/fs/cgroup` is built
    /// ([`super::cgroup::v1_view`]); `None` on v2, where the container
    /// gets the unified hierarchy in a cgroup namespace of its own, so its
    /// cgroup is the root it sees (as containerd does on v2).
    pub cgroup_v1: Option<std::sync::Arc<V1View>>,
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
    /// The pod's sysctls (dotted names), set in its namespaces.
    pub sysctls: Vec<(String, String)>,
    /// A terminal for the process (`tty: true`).
    pub tty: bool,
    /// Keep stdin open for attaching (`stdin: true`); close it after the
    /// first attach ends (`stdinOnce: true`).
    pub stdin: bool,
    pub stdin_once: bool,
}

/// Annotations telling the shim to keep a container's stdin open.
pub const ANNOTATION_STDIN: &str = "io.orch.stdin";
pub const ANNOTATION_STDIN_ONCE: &str = "io.orch.stdin-once";
/// The pod's sysctls (a JSON object, dotted names), which the shim sets
/// in the pod's network and IPC namespaces before the container starts.
pub const ANNOTATION_SYSCTLS: &str = "io.orch.sysctls";

/// RuntimeDefault, in the shape of containerd's default profile: every
/// syscall not listed fails with EPERM. The base list is what any
/// container may do; [`SECCOMP_BY_CAPABILITY`] adds what a capability the
/// container holds needs; `clone` may not make namespaces without
/// CAP_SYS_ADMIN, `clone3` says ENOSYS (so libcs fall back to `clone`),
/// `personality` takes only the harmless values, and `socket` refuses
/// AF_VSOCK. Names this kernel or architecture does not know are skipped.
pub const SECCOMP_ALLOWED: &[&str] = &[
    "_llseek",
    "_newselect",
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls a capability unlocks (containerd's conditional rules).
pub const SECCOMP_BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "name_to_handle_at",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Namespace flags of clone(2): without CAP_SYS_ADMIN, clone with any of
/// them is refused.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The RuntimeDefault profile for a container holding `caps`.
fn seccomp_profile(caps: &[String]) -> Value {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut names: Vec<&str> = SECCOMP_ALLOWED.to_vec();
    for (cap, extra) in SECCOMP_BY_CAPABILITY {
        if has(cap) {
            names.extend(extra.iter().copied());
        }
    }
    names.sort_unstable();
    names.dedup();
    let mut rules = vec![
        json!({"names": names, "action": "SCMP_ACT_ALLOW"}),
        // personality: Linux, 32-bit Linux, UNAME26 variants, query.
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 131_072, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 131_080, "op": "SCMP_CMP_EQ"}]}),
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 4_294_967_295_u64, "op": "SCMP_CMP_EQ"}]}),
        // Every socket family but AF_VSOCK (40).
        json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}),
    ];
    if !has("CAP_SYS_ADMIN") {
        rules.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": match std::env::consts::ARCH {
            "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            _ => vec![],
        },
        "syscalls": rules,
    })
}

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
/// Every capability this process may hand on (its bounding set), as
/// containerd gives privileged containers: asking for one the node itself
/// lacks (a node that is a container, a VM that dropped
/// CAP_SYS_RESOURCE) would fail every start.
fn all_current_caps() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    // ALL_CAPS is in the kernel's numbering: CAP_CHOWN is 0.
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

fn capabilities(c: &ContainerConfig) -> Vec<String> {
    if c.privileged {
        return all_current_caps();
    }
    let mut caps: Vec<String> = if c.add_caps.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
        all_current_caps()
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
    ];
    match &c.cgroup_v1 {
        // Read-only: the skeleton, then the container's cgroup of each
        // hierarchy on it (see `V1View`).
        Some(v1) if !c.privileged => {
            let ro = ["bind", "nosuid", "noexec", "nodev", "ro"];
            mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "bind", "source": v1.skeleton, "options": ro}));
            for h in &v1.hierarchies {
                let path = if h.managed { &c.cgroup } else { &h.own };
                let source = Path::new("/sys/fs/cgroup")
                    .join(&h.name)
                    .join(path.trim_start_matches('/'));
                mounts.push(json!({"destination": format!("/sys/fs/cgroup/{}", h.name), "type": "bind", "source": source, "options": ro}));
            }
        }
        _ => mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if c.privileged { "rw" } else { "ro" }]})),
    }
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
    if c.cgroup_v1.is_none() {
        namespaces.push(json!({"type": "cgroup"}));
    }
    if !c.host_uts {
        namespaces.push(ns("uts", &c.utsns));
    }
    if !c.host_pid {
        namespaces.push(ns("pid", &c.pidns));
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
    if c.privileged {
        // The host's devices, as containerd gives privileged containers.
        linux["devices"] = json!(host_devices(Path::new("/dev")));
    } else {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if c.seccomp_default {
            linux["seccomp"] = seccomp_profile(&caps);
        }
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty,
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
        "annotations": {
            ANNOTATION_STDIN: c.stdin.to_string(),
            ANNOTATION_STDIN_ONCE: c.stdin_once.to_string(),
        },
    });
    // Only when set: libcontainer decides when to load seccomp by whether
    // the field is present, not by its value (absent: before dropping
    // capabilities, as loading a filter without no_new_privs needs
    // CAP_SYS_ADMIN).
    if c.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    // Not linux.sysctl: libcontainer refuses net.* ones when the network
    // namespace it joins is its caller's, and the shim lives in the pod's.
    // The shim sets them there itself (see ANNOTATION_SYSCTLS).
    if !c.sysctls.is_empty() {
        let map: serde_json::Map<String, Value> = c
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        spec["annotations"][ANNOTATION_SYSCTLS] = json!(Value::Object(map).to_string());
    }
    // A host name needs a UTS namespace of the container's own.
    if c.host_uts {
        spec.as_object_mut()
            .expect("literal object")
            .remove("hostname");
    }
    spec
}

/// The device nodes under `dir` as OCI `linux.devices` entries, as
/// containerd lists them for privileged containers: every character and
/// block device, not the console and not what is under `pts`, `shm`,
/// `fd` and `mqueue` (the container has its own of those).
fn host_devices(dir: &Path) -> Vec<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                out.extend(host_devices(&path));
            }
            continue;
        }
        // The console is the container's own; the standard devices and
        // ptmx libcontainer makes itself (again would fail: EEXIST).
        if path.parent() == Some(Path::new("/dev"))
            && matches!(
                name.to_str(),
                Some("console" | "null" | "zero" | "full" | "random" | "urandom" | "tty" | "ptmx")
            )
        {
            continue;
        }
        let t = if kind.is_char_device() {
            "c"
        } else if kind.is_block_device() {
            "b"
        } else {
            continue;
        };
        let rdev = meta.rdev();
        out.push(json!({
            "path": path, "type": t,
            "major": rustix::fs::major(rdev), "minor": rustix::fs::minor(rdev),
            "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid(),
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn privileged_containers_get_the_hosts_devices() {
        let devices = super::host_devices(std::path::Path::new("/dev"));
        let kmsg = devices
            .iter()
            .find(|d| d["path"] == "/dev/kmsg")
            .expect("/dev/kmsg is a host device");
        assert_eq!(
            (
                kmsg["type"].as_str(),
                kmsg["major"].as_u64(),
                kmsg["minor"].as_u64()
            ),
            (Some("c"), Some(1), Some(11))
        );
        for own in ["/dev/console", "/dev/null", "/dev/ptmx"] {
            assert!(devices.iter().all(|d| d["path"] != own), "{own}");
        }
        assert!(
            devices
                .iter()
                .all(|d| !d["path"].as_str().unwrap().starts_with("/dev/pts/")),
            "the container has its own pts"
        );
    }

    #[test]
    fn runtime_default_allows_a_list_and_capabilities_add_to_it() {
        let plain = super::seccomp_profile(&["CAP_CHOWN".to_owned()]);
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = plain["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for needed in ["read", "execve", "openat"] {
            assert!(allowed.contains(&needed), "{needed}");
        }
        for refused in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "ptrace",
            "reboot",
            "chroot",
            "kexec_load",
        ] {
            assert!(!allowed.contains(&refused), "{refused}");
        }
        // clone only without namespace flags; clone3 is ENOSYS.
        let text = plain.to_string();
        assert!(text.contains("SCMP_CMP_MASKED_EQ") && text.contains(r#""errnoRet":38"#));
        let admin =
            super::seccomp_profile(&["CAP_SYS_ADMIN".to_owned(), "CAP_SYS_CHROOT".to_owned()]);
        let names = admin["syscalls"][0]["names"].to_string();
        assert!(
            names.contains(r#""mount""#)
                && names.contains(r#""chroot""#)
                && names.contains(r#""clone3""#)
        );
        assert!(!admin.to_string().contains("SCMP_CMP_MASKED_EQ"));
    }

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
    fn cgroupfs_is_the_containers_own_cgroup_and_read_only_unless_privileged() {
        use crate::runtime::cgroup::{V1Hierarchy, V1View};
        let mounts = |c: &ContainerConfig| -> Vec<Value> {
            build(c)["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| {
                    m["destination"]
                        .as_str()
                        .unwrap()
                        .starts_with("/sys/fs/cgroup")
                })
                .cloned()
                .collect()
        };
        let cgroupns = |c: &ContainerConfig| {
            build(c)["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "cgroup")
        };
        // v2: libcontainer's cgroup2 mount, read-only, in a cgroup namespace.
        let v2 = base();
        assert!(cgroupns(&v2));
        assert_eq!(mounts(&v2).len(), 1);
        assert_eq!(mounts(&v2)[0]["type"], "cgroup");
        assert!(
            mounts(&v2)[0]["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        );
        // v1: the skeleton and each hierarchy's cgroup, all read-only.
        let mut v1 = base();
        v1.cgroup_v1 = Some(std::sync::Arc::new(V1View {
            skeleton: "/run/orch/cgroup-v1".into(),
            hierarchies: vec![
                V1Hierarchy {
                    name: "cpu,cpuacct".into(),
                    managed: true,
                    own: "/agent".into(),
                },
                V1Hierarchy {
                    name: "systemd".into(),
                    managed: false,
                    own: "/system.slice/orch.service".into(),
                },
            ],
        }));
        assert!(!cgroupns(&v1));
        let m = mounts(&v1);
        let pairs: Vec<(&str, &str)> = m
            .iter()
            .map(|m| {
                (
                    m["destination"].as_str().unwrap(),
                    m["source"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("/sys/fs/cgroup", "/run/orch/cgroup-v1"),
                (
                    "/sys/fs/cgroup/cpu,cpuacct",
                    "/sys/fs/cgroup/cpu,cpuacct/orch/pod1/web"
                ),
                (
                    "/sys/fs/cgroup/systemd",
                    "/sys/fs/cgroup/systemd/system.slice/orch.service"
                ),
            ]
        );
        for m in &m {
            assert!(
                m["options"].as_array().unwrap().contains(&json!("ro")),
                "{m}"
            );
        }
        // Privileged on v1: libcontainer's read-write cgroup mount.
        v1.privileged = true;
        assert_eq!(mounts(&v1).len(), 1);
        assert!(
            mounts(&v1)[0]["options"]
                .as_array()
                .unwrap()
                .contains(&json!("rw"))
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
        // Every capability this process has (this VM's root lacks
        // CAP_SYS_RESOURCE, for one).
        let bounding = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(
            capabilities(&c).len(),
            bounding.count_ones().min(ALL_CAPS.len() as u32) as usize
        );
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
