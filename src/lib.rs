//! orch: a single-binary, k3s-style Kubernetes distribution.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that
//! integration tests, benchmarks and examples use the same code. Module rooms
//! follow `ARCHITECTURE.md`: arrows point down only — `store`, `runtime` and
//! `net` never import `server` or `agent`, and `api` does no IO.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod memory;
pub mod net;
pub mod runtime;
pub mod server;
pub mod store;
