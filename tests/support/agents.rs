//! `orch agent` processes for tests, each in a network namespace the
//! test made, and the clean-up of everything their pods leave.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{Netns, ORCH, TestServer, in_netns};

/// `orch agent` for a test; its pods are torn down when dropped.
pub struct Agent {
    tag: String,
    pub child: Child,
    pub args: Vec<String>,
    pub netns: String,
    pub run_dir: PathBuf,
    pub data: PathBuf,
}

impl Agent {
    pub fn start(
        server: &TestServer,
        netns: &Netns,
        data: &Path,
        run_dir: &Path,
        logs: &Path,
        tag: &str,
    ) -> Self {
        let token = server.dir.path().join("server/token");
        Self::start_as(
            server,
            netns,
            data,
            run_dir,
            logs,
            tag,
            "node-a",
            &token,
            &[],
        )
    }

    /// An agent for node `node` joining with the token in `token_file`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_as(
        server: &TestServer,
        netns: &Netns,
        data: &Path,
        run_dir: &Path,
        logs: &Path,
        tag: &str,
        node: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> Self {
        let url = server.url();
        let args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            url,
            "--token-file".into(),
            token_file.display().to_string(),
            "--node-name".into(),
            node.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--pod-log-dir".into(),
            logs.display().to_string(),
            "--cgroup-root".into(),
            cgroup_root(tag),
        ];
        let default_ip = ["--node-ip", "127.0.0.1"];
        let args: Vec<String> = args
            .into_iter()
            .chain(
                default_ip
                    .iter()
                    .filter(|_| !extra.contains(&"--node-ip"))
                    .map(|a| (*a).to_owned()),
            )
            .chain(extra.iter().map(|e| (*e).to_owned()))
            .collect();
        let child = Self::spawn(&netns.0, &args);
        Self {
            tag: tag.to_owned(),
            child,
            args,
            netns: netns.0.clone(),
            run_dir: run_dir.to_owned(),
            data: data.to_owned(),
        }
    }

    pub fn spawn(netns: &str, args: &[String]) -> Child {
        in_netns(Some(netns), ORCH)
            .args(args)
            .env("RUST_LOG", "info,orch::agent::pods=debug")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// SIGKILL the agent and start a new one (pods must survive).
    pub fn kill_and_restart(&mut self) {
        self.kill_and_restart_after(|| {});
    }

    /// Kill it (SIGKILL), do `while_down`, start it again.
    pub fn kill_and_restart_after(&mut self, while_down: impl FnOnce()) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while_down();
        self.child = Self::spawn(&self.netns, &self.args);
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
