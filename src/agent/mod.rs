//! The node agent (kubelet): joining a server, node registration and
//! heartbeat, pod status. Today it runs simulated nodes (no containers), the
//! way the control plane is tested without root and benchmarked at scale;
//! the real pod workers, runtime and probes land with issue #5.
//!
//! The agent talks to the server only through the public API, like any
//! client, over a connection it opens (so agents behind NAT work).

#![forbid(unsafe_code)]

pub mod join;
pub mod simulate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Token(String),
    #[error(
        "cannot reach the server at {url}: {source}; check --server and that the server is running"
    )]
    Connect {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the server at {url} has a CA whose hash ({actual}) does not match the join token ({expected}); check --server and --token"
    )]
    CaMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("the API refused {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid --server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}
