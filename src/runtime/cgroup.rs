//! Cgroup directories the runtime leaves behind: libcontainer removes a
//! container's own cgroup when it deletes the container, but not the pod's
//! parent (`/orch/pod<uid>`), which the agent removes when the pod goes.
//! Works on v1 (one directory per controller hierarchy) and v2 (one
//! unified hierarchy).

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
