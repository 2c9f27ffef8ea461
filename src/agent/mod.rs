//! The node agent (kubelet): node registration and heartbeat, pod workers,
//! probes, volumes, status, and the kubelet API for logs and exec.
//!
//! Empty until the agent lands (issue #5); `orch agent` says so.

#![forbid(unsafe_code)]
