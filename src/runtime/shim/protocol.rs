//! The shim's protocol: the requests the agent sends and the answers it
//! reads. Each is one JSON object on a line of its own over the shim's
//! Unix socket; some requests then hand over descriptors or keep the
//! connection for a stream, as their docs say.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Create a container from an OCI bundle (`config.json` + `rootfs`).
    /// With `layers` (bottom first), the shim mounts their overlay at
    /// `<bundle>/rootfs` itself (writes going to `<bundle>/upper`), in its
    /// own mount namespace, and unmounts it when the container is deleted.
    Create {
        id: String,
        bundle: PathBuf,
        log: PathBuf,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        layers: Vec<PathBuf>,
    },
    Start {
        id: String,
    },
    Kill {
        id: String,
        signal: i32,
    },
    /// Remove a container (killing it if it still runs) and its exit record.
    Delete {
        id: String,
    },
    State,
    /// Exit once no container is left.
    Shutdown,
    /// Run a command in a running container with its stdio handed to the
    /// caller (`kubectl exec`): the answer carries file descriptors —
    /// with `tty` the terminal's master, else stdout, stderr and (with
    /// `stdin`) stdin's write end — and the connection stays open until
    /// the command exits, when the shim writes an [`ExecExit`] line.
    ExecStream {
        id: String,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
        /// The terminal's first size, (width, height).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<(u16, u16)>,
        /// Kill the command when the caller hangs up (probes and hooks:
        /// their caller's timeout ends them).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        kill_on_hangup: bool,
    },
    /// Attach to a running container's stdio (`kubectl attach`): after
    /// the answer line, the connection carries its output as
    /// [`crate::api::remotecommand`] frames (stdout 1, stderr 2, and a
    /// success status on 3 when the container ends), and takes stdin (0), resize (4)
    /// and close (255) frames the other way.
    Attach {
        id: String,
        stdin: bool,
    },
    /// Be told when a container exits: after the answer line the shim
    /// keeps the connection and writes an empty line on every exit (the
    /// agent then asks for the [`Request::State`]), so nobody polls.
    Watch,
}

/// How an [`Request::ExecStream`] command ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecExit {
    pub exit_code: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub id: String,
    pub pid: i32,
    /// `created`, `running` or `exited`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `OOMKilled` when the kernel's OOM killer ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_tagged_json() {
        let r: Request = serde_json::from_str(r#"{"op":"kill","id":"web","signal":15}"#).unwrap();
        assert_eq!(
            r,
            Request::Kill {
                id: "web".into(),
                signal: 15
            }
        );
        let s = serde_json::to_string(&Request::State).unwrap();
        assert_eq!(s, r#"{"op":"state"}"#);
    }
}
