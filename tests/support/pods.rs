//! Pods for the `agent_*` tests: the manifests they share, the waits on
//! what a pod says about itself, and `orch server` with its embedded
//! agent. Each test starts its own server and agent (its own network
//! namespace and cgroup root, see [`super::agents::cgroup_root`]), so the
//! tests of one file run in parallel and the files one after another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::agents::cgroup_root;
use super::{Cluster, Netns, in_netns, wait};

/// A one-container busybox pod running `command` in `sh -c`, with the
/// pod's name in `$WHO`.
pub fn pod(name: &str, command: &str, policy: &str, grace: u32) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"{command}\"]
    env: [{{name: WHO, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
"
    )
}

/// A pod that runs `script` once (restartPolicy Never, a 2 s grace), with
/// `extra` (indented YAML) added to its container; ends with `---`.
pub fn one_shot(name: &str, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"{script}\"]
{extra}---
"
    )
}

/// `kubectl logs …`, retried while the node's tunnel comes back.
pub fn wait_logs(server: &Cluster, args: &[&str]) -> String {
    wait::until_ok(
        Duration::from_secs(30),
        &format!("kubectl {args:?} answers"),
        || {
            let out = server.kubectl("1.33", args);
            if out.status.success() {
                Ok(String::from_utf8(out.stdout).unwrap())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    )
}

/// Wait until `dir` (an agent's `pods` dir) holds at most `left` entries.
pub fn until_pods_left(dir: &Path, left: usize, within: Duration, what: &str) {
    wait::until_ok(within, what, || {
        let names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if names.len() <= left {
            Ok(())
        } else {
            Err(format!("{} in {}: {names:?}", names.len(), dir.display()))
        }
    });
}

/// The first container's waiting reason and message.
pub fn waiting(p: &Value) -> (String, String) {
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_owned(),
        w["message"].as_str().unwrap_or_default().to_owned(),
    )
}

pub fn waiting_reason(p: &Value) -> String {
    waiting(p).0
}

/// Apply `manifest` (one pod, `name`), wait until its first container
/// waits for `reason`, check the message has `words`; the pod.
pub fn waits_with(
    server: &Cluster,
    name: &str,
    manifest: &str,
    reason: &str,
    words: &str,
) -> Value {
    let file = server.write(&format!("{name}.yaml"), manifest);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let pod = server.wait_json(&["get", "pod", name], 30, reason, |p| {
        waiting_reason(p) == reason
    });
    assert!(waiting(&pod).1.contains(words), "{pod}");
    pod
}

/// kubectl 1.33 as whoever `kubeconfig` names, in the server's namespace.
pub fn kubectl_as(netns: &Netns, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    in_netns(Some(&netns.0), super::kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// `orch server` with its embedded agent (node `tag`) in `netns`, its
/// run and log dirs in `dir/run` and `dir/logs`, and the busybox image
/// waiting in `<data-dir>/agent/images` (an air-gapped install); the
/// guard cleans up after it.
pub fn embedded(dir: &Path, netns: &Netns, tag: &str) -> Embedded {
    let archive = super::busybox_archive(dir);
    let run_dir = dir.join("run");
    let server = Cluster::start_with_agent(
        &netns.0,
        &[
            "--node-name",
            tag,
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--pod-log-dir",
            dir.join("logs").to_str().unwrap(),
            "--cgroup-root",
            &cgroup_root(tag),
        ],
        |data| {
            std::fs::create_dir_all(data.join("agent/images")).unwrap();
            std::fs::copy(&archive, data.join("agent/images/busybox.tar")).unwrap();
        },
    );
    Embedded::new(server, run_dir, tag)
}

/// A server with its embedded agent. Dropped, the server (and so its
/// agent) stops first — an agent still running would start again what the
/// clean-up removes — and then what it left is cleaned up.
pub struct Embedded {
    server: Cluster,
    _guard: Cleanup,
}

impl Embedded {
    /// Guard `server`, whose embedded agent runs pods from `run_dir`
    /// under the cgroup root of `tag`.
    pub fn new(server: Cluster, run_dir: PathBuf, tag: &str) -> Self {
        let data = server.dir.path().to_owned();
        Self {
            server,
            _guard: Cleanup {
                run_dir,
                data,
                tag: tag.to_owned(),
            },
        }
    }
}

impl std::ops::Deref for Embedded {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.server
    }
}

/// Tears down what an agent left in `run_dir` and `data` (for agents whose
/// process the test does not hold).
struct Cleanup {
    run_dir: PathBuf,
    data: PathBuf,
    tag: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        super::agents::cleanup(&self.run_dir, &self.data, &[&self.tag]);
    }
}
