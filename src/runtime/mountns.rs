//! Keeping pods' mounts out of each other's sight.
//!
//! Every pod leaves mounts on the host: its namespace pins, its
//! `/dev/shm`, memory-backed volumes. A shim that ran in the host's mount
//! namespace would see all of them, and so would each container it
//! creates (its mount namespace starts as a copy) — and libcontainer reads
//! `/proc/self/mountinfo` a dozen times per container (once per cgroup v1
//! controller it looks for, and again in the container's init). With a
//! hundred pods that was half of the CPU a pod start cost.
//!
//! So the agent makes each directory that holds pods' mounts a private
//! mount point of its own ([`private_subtree`]), and each shim starts with
//! [`isolate`]: a mount namespace of its own in which those subtrees are
//! detached at once (one `umount2`, however many pods there are) and only
//! its own pod's mounts bound back. The shim then mounts its containers'
//! root filesystems there, so the host never carries them and they go
//! with the shim.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// One line of a `mountinfo` file, the fields orch reads (escapes left
/// as the kernel wrote them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountEntry<'a> {
    /// The mounted directory within its file system (`/docker/abc`).
    pub root: &'a str,
    pub mount_point: &'a str,
    pub fstype: &'a str,
    /// The file system's own options (`rw,cpu,cpuacct`, `lowerdir=…`).
    pub super_options: &'a str,
}

/// The entries of a `mountinfo` text; malformed lines are skipped.
pub fn mount_entries(mountinfo: &str) -> impl Iterator<Item = MountEntry<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut pre = pre.split(' ').skip(3);
        let mut post = post.split(' ');
        Some(MountEntry {
            root: pre.next()?,
            mount_point: pre.next()?,
            fstype: post.next()?,
            super_options: post.nth(1)?,
        })
    })
}

/// The mount points of this process's mount namespace, in mount order
/// (parents before what is mounted on them).
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(parse_mount_points(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The mount point field (the fifth) of each mountinfo line, with the
/// kernel's octal escapes (`\040` for a space, …) undone.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|field| {
            let b = field.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let octal = b
                    .get(i + 1..i + 4)
                    .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
                match octal {
                    Some(d) => {
                        out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                        i += 4;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
        })
        .collect()
}

/// Make `dir` (created if missing) a mount point of its own with private
/// propagation, so mounts made under it stay out of other mount namespaces
/// and a shim can detach all of them at once. Idempotent (an agent that
/// restarts finds it done); what is mounted under `dir` already stays
/// visible (the bind is recursive).
///
/// # Errors
/// The directory cannot be created or the kernel refuses (needs root).
pub fn private_subtree(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let dir = fs::canonicalize(dir)?;
    if !mount_points()?.contains(&dir) {
        rustix::mount::mount_bind_recursive(&dir, &dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding {} onto itself: {}", dir.display(), errno(e)),
            )
        })?;
    }
    rustix::mount::mount_change(&dir, MountPropagationFlags::PRIVATE).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("making {} a private mount: {}", dir.display(), errno(e)),
        )
    })
}

/// Undo [`private_subtree`] (for tests and tools that remove the
/// directory): detach `dir` and whatever is mounted under it. Not a mount
/// point is fine.
///
/// # Errors
/// The unmount failed for another reason.
pub fn remove_private_subtree(dir: &Path) -> io::Result<()> {
    match rustix::mount::unmount(dir, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Move the calling process into a mount namespace of its own, a copy of
/// the current one that follows the host's later mounts (slave) but sends
/// nothing back, in which every mount under the `hide` directories is
/// detached except those under `keep` (which are bound back in place).
///
/// When every `hide` directory is a mount point of its own (the agent makes
/// them so, [`private_subtree`]), this never reads mountinfo: each `keep`
/// path under them is cloned with what is mounted below it, the subtrees
/// are detached in one call each, and the clones go back in place. Reading
/// mountinfo costs as much as the mounts it lists, and the copy holds every
/// other pod's mounts, so that would make each start cost O(pods).
///
/// Call only from a single-threaded process: `unshare` moves the calling
/// thread alone.
///
/// # Errors
/// The kernel refuses (needs root) or mountinfo cannot be read.
pub fn isolate(hide: &[PathBuf], keep: &[PathBuf]) -> io::Result<()> {
    // SAFETY: NEWNS (which implies an unshared fs struct) only changes the
    // calling thread's view; the shim is single-threaded, so no other
    // thread shares that struct or sees the change.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(errno)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(errno)?;
    let canonical = |dirs: &[PathBuf]| -> Vec<PathBuf> {
        dirs.iter()
            .map(|d| fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
            .collect()
    };
    let (hide, keep) = (canonical(hide), canonical(keep));
    let under = |p: &Path, dirs: &[PathBuf]| dirs.iter().any(|d| p.starts_with(d));
    // Clone what to keep before it is detached: the path with everything
    // mounted on and below it (a namespace pin, a tmpfs, a pod directory).
    let mut kept: Vec<(PathBuf, OwnedFd)> = Vec::new();
    for p in keep.iter().filter(|p| under(p, &hide)) {
        let flags = OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE;
        match rustix::mount::open_tree(rustix::fs::CWD, p, flags) {
            Ok(fd) => kept.push((p.clone(), fd)),
            // Not there yet (a first start): nothing to keep.
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cloning {}: {}", p.display(), errno(e)),
                ));
            }
        }
    }
    let mut not_mount_points = Vec::new();
    for dir in &hide {
        match rustix::mount::unmount(dir, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::INVAL) => not_mount_points.push(dir),
            Err(e) => return Err(errno(e)),
        }
    }
    if !not_mount_points.is_empty() {
        // Not mount points of their own: what is mounted under them goes
        // one by one, deepest first (this needs mountinfo).
        let points = mount_points()?;
        for dir in &not_mount_points {
            let mut inner: Vec<&PathBuf> = points
                .iter()
                .filter(|p| p.starts_with(dir) && !under(p, &keep))
                .collect();
            inner.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in inner {
                remove_private_subtree(p)?;
            }
        }
    }
    for (path, fd) in &kept {
        // Under a directory that was not a mount point, the kept mounts
        // were never detached: the clone would only shadow them.
        if not_mount_points.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        rustix::mount::move_mount(
            fd,
            "",
            rustix::fs::CWD,
            path,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding {} back: {}", path.display(), errno(e)),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_in_order() {
        let info = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
                    40 22 0:5 / /var/lib/my\\040pods rw - tmpfs tmpfs rw\n\
                    41 40 0:6 / /var/lib/my\\040pods/a\\134b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mount_points(info),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/lib/my pods"),
                PathBuf::from("/var/lib/my pods/a\\b"),
            ]
        );
    }
}
