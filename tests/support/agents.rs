//! `orch agent` processes for tests, each in a test network namespace
//! (the test's or its [`Cluster`]'s), and the clean-up of everything
//! their pods leave.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{Cluster, Netns, ORCH, in_netns, wait};

/// `orch agent` for a test; its pods are torn down when dropped.
pub struct Agent {
    tag: String,
    /// The node it registers.
    pub node: String,
    pub child: Child,
    pub args: Vec<String>,
    pub netns: String,
    pub run_dir: PathBuf,
    pub data: PathBuf,
}

/// How to start an agent: [`Agent::join`].
pub struct Join {
    /// The server's URL as the agent dials it.
    pub url: String,
    pub token_file: PathBuf,
    /// The network namespace (`/run/netns/<netns>`) it runs in.
    pub netns: String,
    pub data: PathBuf,
    pub run_dir: PathBuf,
    pub logs: PathBuf,
    /// Names its cgroup parent ([`cgroup_root`]); unique per test.
    pub tag: String,
    pub node: String,
    /// More flags (`--node-ip 127.0.0.1` unless they name one).
    pub extra: Vec<String>,
    /// Where its log goes (piped, for tests that read it).
    pub stderr: Stdio,
}

impl Agent {
    /// An agent for node `node` joining with the token in `token_file`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_as(
        server: &Cluster,
        netns: &Netns,
        data: &Path,
        run_dir: &Path,
        logs: &Path,
        tag: &str,
        node: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> Self {
        Self::join(Join {
            url: server.url(),
            token_file: token_file.to_owned(),
            netns: netns.0.clone(),
            data: data.to_owned(),
            run_dir: run_dir.to_owned(),
            logs: logs.to_owned(),
            tag: tag.to_owned(),
            node: node.to_owned(),
            extra: extra.iter().map(|e| (*e).to_owned()).collect(),
            stderr: Stdio::inherit(),
        })
    }

    /// Start an agent as `join` says.
    pub fn join(join: Join) -> Self {
        let mut args: Vec<String> = [
            "agent",
            "--server",
            &join.url,
            "--token-file",
            &join.token_file.display().to_string(),
            "--node-name",
            &join.node,
            "--data-dir",
            &join.data.display().to_string(),
            "--run-dir",
            &join.run_dir.display().to_string(),
            "--pod-log-dir",
            &join.logs.display().to_string(),
            "--cgroup-root",
            &cgroup_root(&join.tag),
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        if !join.extra.iter().any(|e| e == "--node-ip") {
            args.extend(["--node-ip".to_owned(), "127.0.0.1".to_owned()]);
        }
        args.extend(join.extra);
        let child = Self::spawn_with(&join.netns, &args, join.stderr);
        Self {
            tag: join.tag,
            node: join.node,
            child,
            args,
            netns: join.netns,
            run_dir: join.run_dir,
            data: join.data,
        }
    }

    pub fn spawn(netns: &str, args: &[String]) -> Child {
        Self::spawn_with(netns, args, Stdio::inherit())
    }

    fn spawn_with(netns: &str, args: &[String], stderr: Stdio) -> Child {
        super::require_root("orch agent (containers, cgroups, nftables)");
        in_netns(Some(netns), ORCH)
            .args(args)
            .env("RUST_LOG", "info,orch::agent::pods=debug")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start orch agent")
    }

    /// SIGKILL the agent and start a new one (pods must survive).
    pub fn kill_and_restart(&mut self) {
        self.kill_and_restart_after(|| {});
    }

    /// Kill it (SIGKILL), do `while_down`, start it again.
    pub fn kill_and_restart_after(&mut self, while_down: impl FnOnce()) {
        self.kill();
        while_down();
        self.start_again();
    }

    /// SIGKILL the agent (its pods stay); [`Agent::start_again`] brings
    /// it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the agent again with the same flags (after [`Agent::kill`]).
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.netns, &self.args);
    }

    /// Its cgroup parent ([`cgroup_root`] of its tag), where its pods'
    /// cgroups are.
    pub fn cgroup_root(&self) -> String {
        cgroup_root(&self.tag)
    }

    /// Wait (up to `within`) for the agent to exit on its own.
    pub fn exit_status(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait::until(within, "the orch agent exits", || {
            child.try_wait().expect("wait for orch agent")
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        cleanup(&self.run_dir, &self.data, &[&self.tag]);
    }
}

/// Whatever a test left: every container, shim, mount, netns and cgroup.
pub fn cleanup(run_dir: &Path, data: &Path, tags: &[&str]) {
    let uids: Vec<String> = [run_dir.join("pods"), data.join("pods")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    use orch::runtime::shim::{Request, call};
    for pod in std::fs::read_dir(run_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let socket = pod.path().join("shim.sock");
        if let Ok(state) = call(&socket, &Request::State) {
            for c in state.containers {
                let _ = call(&socket, &Request::Delete { id: c.id });
            }
            let _ = call(&socket, &Request::Shutdown);
        }
        // The pod's IPC and UTS namespace pins.
        for pin in ["ipc", "uts"] {
            let _ = orch::runtime::netns::remove(&pod.path().join(pin));
        }
    }
    for ns in std::fs::read_dir(run_dir.join("netns"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = orch::runtime::netns::remove(&ns.path());
    }
    for pod in std::fs::read_dir(data.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for c in std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = orch::runtime::rootfs::unmount(&c.path().join("rootfs"));
        }
        let _ = orch::runtime::rootfs::unmount(&pod.path().join("shm"));
        for v in std::fs::read_dir(pod.path().join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = orch::runtime::rootfs::unmount(&v.path());
        }
    }
    // The test's cgroup parents (each test has its own).
    for tag in tags {
        // Processes of this agent's pods a failed test left (a container
        // whose shim died with the test) go first — only these pods': the
        // tests of one process share the cgroup roots.
        for uid in &uids {
            for dir in orch::runtime::cgroup::dirs(&format!("{}/pod{uid}", cgroup_root(tag))) {
                kill_cgroup_tree(&dir);
            }
        }
        // Only this agent's pod cgroups, then the root if nothing else is
        // in it (another test of this process may be using it).
        for uid in &uids {
            orch::runtime::cgroup::remove(&format!("{}/pod{uid}", cgroup_root(tag)));
        }
        for dir in orch::runtime::cgroup::dirs(&cgroup_root(tag)) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    // The agent's private mount points for pods' mounts, and what is left
    // under them.
    for dir in [
        data.join("pods"),
        run_dir.join("pods"),
        run_dir.join("netns"),
    ] {
        let _ = orch::runtime::mountns::remove_private_subtree(&dir);
    }
}

/// SIGKILL every process in cgroup directory `dir` and below.
pub fn kill_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            kill_cgroup_tree(&e.path());
        }
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
    {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// This test process's cgroup parent for agent `tag`.
pub fn cgroup_root(tag: &str) -> String {
    format!("/orch-test-agent-{}-{tag}", std::process::id())
}

/// Has this pod or node the condition Ready=True?
pub fn is_ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// An agent's data, run and log dirs under `dir`, the busybox test image
/// imported into its data dir.
pub fn agent_dirs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("agent");
    import_busybox(dir, &data);
    (data, dir.join("run"), dir.join("logs"))
}

pub fn import_busybox(dir: &Path, data: &Path) {
    let archive = super::busybox_archive(dir);
    let out = Command::new(ORCH)
        .args(["image", "--data-dir"])
        .arg(data)
        .args(["import", "--name", "busybox:test"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
