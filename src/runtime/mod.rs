//! The in-process OCI runtime: images, overlay root filesystems, OCI specs,
//! container logs, and the per-pod `orch shim`, the only caller of
//! libcontainer.

pub mod cgroup;
pub mod image;
pub mod logs;
pub mod mountns;
pub mod netns;
pub mod rootfs;
pub mod shim;
pub mod spawn;
pub mod spec;
