//! The in-process OCI runtime: images, overlay root filesystems, OCI specs,
//! and the per-pod `orch shim`, the only caller of libcontainer.

pub mod image;
