//! The in-process OCI runtime: images, overlay root filesystems, OCI specs,
//! and the per-pod `orch shim`, the only caller of libcontainer.
//!
//! Empty until the agent lands (issue #5).
