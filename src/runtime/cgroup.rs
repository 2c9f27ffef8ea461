//! Pod cgroups: the agent makes each pod's parent cgroup
//! (`<root>/pod<uid>`) with the pod's limits before its containers start
//! (libcontainer makes and removes the containers' own cgroups below it),
//! and removes it when the pod goes. Works on v1 (one directory per
//! controller hierarchy) and v2 (one unified hierarchy).

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
pub fn remove(path: &str) {
    for dir in dirs(path) {
        remove_tree(&dir);
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

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Make cgroup `path` (e.g. `/orch/node/pod<uid>`) with these limits:
/// cpu.shares / CFS quota per 100 ms / memory bytes on v1; cpu.weight,
/// cpu.max and memory.max on v2 (enabling the controllers on the way
/// down). Removing a limit writes the "unlimited" value.
///
/// # Errors
/// A directory or control file cannot be written.
pub fn set_limits(path: &str, r: &super::spec::Resources) -> std::io::Result<()> {
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
