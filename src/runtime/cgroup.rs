//! Pod cgroups: the agent makes each pod's parent cgroup
//! (`<root>/pod<uid>`) with the pod's limits before its containers start
//! (libcontainer makes and removes the containers' own cgroups below it),
//! and removes it when the pod goes. Works on v1 (one directory per
//! controller hierarchy) and v2 (one unified hierarchy).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// The directories of cgroup `path` (e.g. `/orch/pod<uid>`) that exist.
pub fn dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)]
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Remove cgroup `path` and the empty cgroups below it, in every
/// hierarchy. Cgroups that still hold processes stay (rmdir refuses).
///
/// The memory charged to it first goes back (v1 `memory.force_empty`, v2
/// `memory.reclaim`; both count the whole subtree, containers' cgroups
/// removed before included). Otherwise the page cache its pods wrote keeps
/// each removed memory cgroup alive in the kernel, dying, until memory
/// runs short: a busy node collects thousands, and they slow the kernel's
/// cgroup work down.
pub fn remove(path: &str) {
    for dir in dirs(path) {
        release_memory(&dir);
        remove_tree(&dir);
    }
}

/// Reclaim what is charged to memory cgroup `dir` (best effort: a
/// hierarchy without the memory controller has neither file).
fn release_memory(dir: &Path) {
    let v1 = dir.join("memory.force_empty");
    if v1.exists() {
        let _ = std::fs::write(v1, "0");
        return;
    }
    let v2 = dir.join("memory.reclaim");
    if v2.exists() {
        let usage = std::fs::read_to_string(dir.join("memory.current"))
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if usage > 0 {
            let _ = std::fs::write(v2, usage.to_string());
        }
    }
}

fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The controllers pods' limits need.
const NEEDED: [&str; 2] = ["cpu", "memory"];

/// Are the controllers pods need there? `v2` is the root's
/// `cgroup.controllers` on a unified hierarchy, `None` on v1, where
/// `/proc/cgroups` must show each enabled and mounted in a hierarchy.
///
/// # Errors
/// One line naming what is missing and the kernel parameters that
/// enable it (kernels such as the Raspberry Pi's leave memory off).
pub fn missing_controllers(v2: Option<&str>, proc_cgroups: &str) -> Result<(), String> {
    let present = |c: &str| match v2 {
        Some(controllers) => controllers.split_whitespace().any(|x| x == c),
        None => proc_cgroups.lines().any(|l| {
            // subsys_name hierarchy num_cgroups enabled
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[0] == c && f[1] != "0" && f[3] == "1"
        }),
    };
    let missing: Vec<&str> = NEEDED.into_iter().filter(|c| !present(c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut params: Vec<String> = missing
        .iter()
        .map(|c| format!("cgroup_enable={c}"))
        .collect();
    if missing.contains(&"memory") {
        params.push("cgroup_memory=1".into());
    }
    Err(format!(
        "the {} cgroup controller{} not enabled (pods' CPU and memory limits need {}): add {} to the kernel command line (on a Raspberry Pi, in /boot/firmware/cmdline.txt) and reboot",
        missing.join(" and "),
        if missing.len() == 1 { " is" } else { "s are" },
        if missing.len() == 1 { "it" } else { "them" },
        params.join(" ")
    ))
}

/// [`missing_controllers`] on this machine.
///
/// # Errors
/// As [`missing_controllers`].
pub fn check_controllers() -> Result<(), String> {
    let v2 = std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).ok();
    let proc_cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    missing_controllers(v2.as_deref(), &proc_cgroups)
}

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The controllers libcontainer's v1 manager moves a container into its
/// own cgroup for (libcgroups' `CONTROLLERS`); in other hierarchies
/// (named ones such as `name=systemd`) the container stays where the
/// agent is.
const V1_MANAGED: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// A cgroup's resource limits, already in kernel units: what
/// [`set_limits`] writes for a pod and the OCI spec asks of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.shares (v1) — converted by libcgroups for v2. From the CPU request.
    pub cpu_shares: Option<u64>,
    /// CFS quota per 100 ms period, from the CPU limit.
    pub cpu_quota: Option<i64>,
    /// Bytes, from the memory limit.
    pub memory_limit: Option<i64>,
}

/// A v1 hierarchy, as a container sees it at `/sys/fs/cgroup/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Its directory under `/sys/fs/cgroup` (`memory`, `cpu,cpuacct`,
    /// `systemd`).
    pub name: String,
    /// The container gets a cgroup of its own here (its `cgroupsPath`);
    /// otherwise it shares `own`, the agent's.
    pub managed: bool,
    /// The agent's cgroup in it, relative to the mount's root.
    pub own: String,
}

/// How a container's `/sys/fs/cgroup` is built on a v1 node: a read-only
/// copy of the host's directory layout (`skeleton`: one empty directory
/// per hierarchy, the host's symlinks such as `cpu -> cpu,cpuacct`) with
/// the container's own cgroup of each hierarchy bound on it, read-only
/// unless privileged, as runc does. (libcontainer's own v1 cgroup mount
/// binds every hierarchy read-write whatever the spec says, so a
/// container could raise its own limits.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1View {
    pub skeleton: PathBuf,
    pub hierarchies: Vec<V1Hierarchy>,
}

/// The v1 hierarchies mounted directly under `/sys/fs/cgroup`, from
/// `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn v1_hierarchies(mountinfo: &str, self_cgroup: &str) -> Vec<V1Hierarchy> {
    // Our cgroup per hierarchy: `ID:controllers:path`.
    let memberships: Vec<(Vec<&str>, &str)> = self_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            (!controllers.is_empty()).then(|| (controllers.split(',').collect(), path))
        })
        .collect();
    let mut out = Vec::new();
    for m in super::mountns::mount_entries(mountinfo).filter(|m| m.fstype == "cgroup") {
        let (root, mount_point) = (m.root, Path::new(m.mount_point));
        if mount_point.parent() != Some(Path::new(ROOT)) {
            continue;
        }
        let Some(name) = mount_point.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let options: Vec<&str> = m.super_options.split(',').collect();
        let Some((controllers, path)) = memberships
            .iter()
            .find(|(c, _)| c.iter().all(|c| options.contains(c)))
        else {
            continue;
        };
        let own = match path.strip_prefix(root) {
            Some(rest) if root != "/" => format!("/{}", rest.trim_start_matches('/')),
            _ => (*path).to_owned(),
        };
        out.push(V1Hierarchy {
            name: name.to_owned(),
            managed: controllers.iter().all(|c| V1_MANAGED.contains(c)),
            own,
        });
    }
    out
}

/// On a v1 node, the view containers get of `/sys/fs/cgroup`, its
/// skeleton made under `run_dir`; `None` on cgroup v2 (there a
/// container gets the unified hierarchy in a cgroup namespace of its
/// own). Entries are only ever added to the skeleton: running
/// containers have their cgroups mounted on its directories.
///
/// # Errors
/// The skeleton cannot be made.
pub fn v1_view(run_dir: &Path) -> std::io::Result<Option<V1View>> {
    if unified() {
        return Ok(None);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    let hierarchies = v1_hierarchies(&mountinfo, &self_cgroup);
    let skeleton = run_dir.join("cgroup-v1");
    std::fs::create_dir_all(&skeleton)?;
    for h in &hierarchies {
        std::fs::create_dir_all(skeleton.join(&h.name))?;
    }
    for e in std::fs::read_dir(ROOT)?.flatten() {
        let link = skeleton.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_symlink()) && link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, link)?;
        }
    }
    Ok(Some(V1View {
        skeleton,
        hierarchies,
    }))
}

/// Make cgroup `path` (e.g. `/orch/node/pod<uid>`) with these limits:
/// cpu.shares / CFS quota per 100 ms / memory bytes on v1; cpu.weight,
/// cpu.max and memory.max on v2 (enabling the controllers on the way
/// down). Removing a limit writes the "unlimited" value.
///
/// # Errors
/// A directory or control file cannot be written.
pub fn set_limits(path: &str, r: &Resources) -> std::io::Result<()> {
    let rel = path.trim_start_matches('/');
    let write = |file: PathBuf, value: String| {
        std::fs::write(&file, &value)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {value}: {e}", file.display())))
    };
    if unified() {
        let mut dir = PathBuf::from(ROOT);
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids");
            dir.push(part);
            std::fs::create_dir_all(&dir)?;
        }
        // shares → weight, as runc converts them.
        let weight = r
            .cpu_shares
            .map_or(100, |s| 1 + ((s.max(2) - 2) * 9999) / 262_142);
        write(dir.join("cpu.weight"), weight.to_string())?;
        write(
            dir.join("cpu.max"),
            r.cpu_quota
                .map_or_else(|| "max 100000".to_owned(), |q| format!("{q} 100000")),
        )?;
        write(
            dir.join("memory.max"),
            r.memory_limit
                .map_or_else(|| "max".to_owned(), |m| m.to_string()),
        )?;
        return Ok(());
    }
    let cpu = Path::new(ROOT).join("cpu").join(rel);
    std::fs::create_dir_all(&cpu)?;
    write(
        cpu.join("cpu.shares"),
        r.cpu_shares.unwrap_or(1024).to_string(),
    )?;
    write(cpu.join("cpu.cfs_period_us"), "100000".into())?;
    write(
        cpu.join("cpu.cfs_quota_us"),
        r.cpu_quota.unwrap_or(-1).to_string(),
    )?;
    let memory = Path::new(ROOT).join("memory").join(rel);
    std::fs::create_dir_all(&memory)?;
    write(
        memory.join("memory.limit_in_bytes"),
        r.memory_limit.unwrap_or(-1).to_string(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory charged to cgroup `path`, hierarchically.
    fn usage(path: &str) -> u64 {
        let rel = path.trim_start_matches('/');
        let file = if unified() {
            Path::new(ROOT).join(rel).join("memory.current")
        } else {
            Path::new(ROOT)
                .join("memory")
                .join(rel)
                .join("memory.usage_in_bytes")
        };
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn v1_hierarchies_are_read_from_mountinfo_with_the_agents_own_cgroup() {
        let mountinfo = "\
25 1 0:22 / /sys rw - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/rdma rw - cgroup cgroup rw,rdma
36 1 0:31 / /mnt/elsewhere rw - cgroup cgroup rw,pids
";
        let self_cgroup = "\
5:rdma:/
4:memory:/docker/abc/agent
3:cpu,cpuacct:/system.slice/orch.service
1:name=systemd:/system.slice/orch.service
0::/system.slice/orch.service
";
        let h = |name: &str, managed: bool, own: &str| V1Hierarchy {
            name: name.into(),
            managed,
            own: own.into(),
        };
        assert_eq!(
            v1_hierarchies(mountinfo, self_cgroup),
            vec![
                h("systemd", false, "/system.slice/orch.service"),
                h("cpu,cpuacct", true, "/system.slice/orch.service"),
                h("memory", true, "/agent"),
                h("rdma", false, "/"),
            ]
        );
    }

    #[test]
    fn missing_controllers_are_named_with_the_kernel_parameters_that_enable_them() {
        assert!(missing_controllers(Some("cpuset cpu io memory pids\n"), "").is_ok());
        let v2 = missing_controllers(Some("cpuset cpu io pids\n"), "").unwrap_err();
        assert!(
            v2.starts_with("the memory cgroup controller is not enabled")
                && v2.contains("cgroup_enable=memory cgroup_memory=1"),
            "{v2}"
        );
        // v1: enabled and mounted (hierarchy 0 is the unified one).
        let v1 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t40\t1\n";
        assert!(missing_controllers(None, v1).is_ok());
        let disabled =
            missing_controllers(None, &v1.replace("memory\t4\t40\t1", "memory\t0\t1\t0"))
                .unwrap_err();
        assert!(disabled.contains("cgroup_enable=memory"), "{disabled}");
        let unmounted = missing_controllers(None, &v1.replace("cpu\t1", "cpu\t0")).unwrap_err();
        assert!(
            unmounted.starts_with("the cpu cgroup controller is"),
            "{unmounted}"
        );
        let both = missing_controllers(Some("pids"), "").unwrap_err();
        assert!(
            both.starts_with("the cpu and memory cgroup controllers are"),
            "{both}"
        );
        // This machine runs the agent's tests: it has them.
        assert!(check_controllers().is_ok(), "{:?}", check_controllers());
    }

    #[test]
    fn removing_a_pod_cgroup_gives_back_the_page_cache_its_containers_wrote() {
        // Needs root and the memory controller, as the agent does.
        let root = format!("/orch-test-cgroup-{}", std::process::id());
        let (pod, container) = (format!("{root}/pod"), format!("{root}/pod/c"));
        let dir = if unified() {
            let _ = std::fs::write(Path::new(ROOT).join("cgroup.subtree_control"), "+memory");
            let d = Path::new(ROOT).join(root.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.subtree_control"), "+memory").unwrap();
            std::fs::create_dir_all(d.join("pod")).unwrap();
            std::fs::write(d.join("pod/cgroup.subtree_control"), "+memory").unwrap();
            std::fs::create_dir_all(d.join("pod/c")).unwrap();
            d.join("pod/c")
        } else {
            let d = Path::new(ROOT)
                .join("memory")
                .join(container.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        // A "container" writes 8 MiB to a file, exits, and its cgroup is
        // removed (as libcontainer does): the page cache stays charged.
        // Written back before the removal (conv=fsync): the kernel cannot
        // reclaim pages still dirty or under writeback on the spot, and on
        // a machine busy writing they may be for seconds.
        let scratch = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && dd if=/dev/zero of={} bs=1M count=8 conv=fsync 2>/dev/null",
                dir.join("cgroup.procs").display(),
                scratch.path().join("data").display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::remove_dir(&dir).unwrap();
        let charged = usage(&root);
        assert!(charged >= 8 << 20, "charged {charged}");
        remove(&pod);
        assert!(dirs(&pod).is_empty());
        let left = usage(&root);
        remove(&root);
        assert!(
            left < 1 << 20,
            "{left} bytes still charged after the pod's cgroup went"
        );
    }
}
