//! A container's root filesystem: its image layers as overlayfs lower
//! directories plus its own upper directory (as containerd's overlay
//! snapshotter mounts them).

#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// The overlay mount options for `layers` (bottom first) with `upper` and
/// `work`.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// Mount the overlay of `layers` (bottom first) at `target`, writes going
/// to `upper` (`work` is overlayfs's scratch space on the same file
/// system). All three directories are created.
///
/// # Errors
/// The directories cannot be created or the mount fails (needs root and
/// overlayfs).
pub fn mount(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)?;
    }
    if layers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an image needs at least one layer",
        ));
    }
    let options = std::ffi::CString::new(overlay_options(layers, upper, work))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a layer path has a NUL byte"))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(options.as_c_str()),
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting the overlay at {}: {}", target.display(), errno(e)),
        )
    })
}

/// Unmount a root filesystem (lazily, so a lingering process does not keep
/// it busy); not mounted is fine.
///
/// # Errors
/// The unmount failed for another reason.
pub fn unmount(target: &Path) -> io::Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_layer_comes_first_in_lowerdir() {
        let opts = overlay_options(
            &["/l/base".into(), "/l/top".into()],
            Path::new("/c/upper"),
            Path::new("/c/work"),
        );
        assert_eq!(
            opts,
            "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn overlays_mount_and_write_to_the_upper_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top) = (dir.path().join("base"), dir.path().join("top"));
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(base.join("a"), "base").unwrap();
        std::fs::write(base.join("b"), "base").unwrap();
        std::fs::write(top.join("b"), "top").unwrap();
        let (upper, work, root) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        mount(&[base.clone(), top], &upper, &work, &root).expect("overlay mount (needs root)");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!((read("a").as_str(), read("b").as_str()), ("base", "top"));
        std::fs::write(root.join("c"), "new").unwrap();
        unmount(&root).unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("c")).unwrap(), "new");
        assert!(!base.join("c").exists(), "layers are never written");
        unmount(&root).unwrap();
    }
}
