//! Test fixtures: a real `orch server` in a temp dir on a free port, and
//! the real kubectl binaries pointed at it.

#![allow(dead_code)] // each test file uses part of this module

pub mod agents;
pub mod pods;
pub mod wait;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// kubectl versions the API must serve unchanged ("" is the dispatcher).
pub const KUBECTL_VERSIONS: &[&str] = &["1.31", "1.32", "1.33", ""];

/// A running `orch server --disable-agent`, stopped when dropped.
pub struct TestServer {
    child: Child,
    /// The network namespace the server (and kubectl) run in, if any.
    pub netns: Option<String>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// Lines the server logged (collected in the background).
    pub log: mpsc::Receiver<String>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the server said last.
        if std::thread::panicking() {
            let lines: Vec<String> = self.log.try_iter().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!("--- last {} lines of the orch server log ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra `orch server` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra)
    }

    /// Stop this server (SIGKILL) and start a new one on the same data dir.
    pub fn restart(self, extra: &[&str]) -> Self {
        self.restart_with(extra, |_| ()).0
    }

    /// Stop the server, run `between` while it is down (it gets the
    /// stopped server, for its paths), start it again on the same data dir.
    pub fn restart_with<T>(
        mut self,
        extra: &[&str],
        between: impl FnOnce(&Self) -> T,
    ) -> (Self, T) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let got = between(&self);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        (Self::start_ns(dir, extra, self.netns.clone()), got)
    }

    /// Start a server inside the network namespace `/run/netns/<netns>`.
    pub fn start_in_netns(netns: &str, extra: &[&str]) -> Self {
        Self::start_ns(
            tempfile::tempdir().expect("temp dir"),
            extra,
            Some(netns.to_owned()),
        )
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_ns(dir, extra, None)
    }

    /// Start a server with its embedded agent in `/run/netns/<netns>`,
    /// after `prepare` has filled its data dir (e.g. images to import).
    pub fn start_with_agent(netns: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        Self::spawn(dir, extra, Some(netns.to_owned()), false)
    }

    fn start_ns(dir: tempfile::TempDir, extra: &[&str], netns: Option<String>) -> Self {
        Self::spawn(dir, extra, netns, true)
    }

    fn spawn(
        dir: tempfile::TempDir,
        extra: &[&str],
        netns: Option<String>,
        disable_agent: bool,
    ) -> Self {
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut child = in_netns(netns.as_deref(), ORCH)
            .arg("server")
            .args(disable_agent.then_some("--disable-agent"))
            .args(if extra.contains(&"--bind-address") {
                &[][..]
            } else {
                &["--bind-address", "127.0.0.1"][..]
            })
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            // A free port unless the test picked one.
            .args(if extra.contains(&"--https-listen-port") {
                &[][..]
            } else {
                &["--https-listen-port", "0"][..]
            })
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orch server");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let ready = line.contains("orch server ready");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => panic!("orch server did not become ready within 30 s: {seen:#?}"),
            }
        }
        Self {
            child,
            netns,
            dir,
            kubeconfig,
            log: rx,
        }
    }

    /// Run `kubectl` of `version` ("" for the dispatcher) against the server.
    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_env(version, args, &[])
    }

    /// `kubectl` of `version` against the server, to spawn (follows,
    /// watches).
    pub fn kubectl_command(&self, version: &str, args: &[&str]) -> std::process::Command {
        let mut cmd = in_netns(self.netns.as_deref(), kubectl_path(version));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd.arg("--cache-dir")
            .arg(self.dir.path().join(format!("kube-cache-{version}")));
        cmd.args(args);
        cmd.env_remove("KUBECONFIG");
        cmd
    }

    pub fn kubectl_env(&self, version: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.kubectl_command(version, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kubectl")
    }

    /// Run kubectl and return stdout, failing the test with stderr on error.
    pub fn ok(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            out.status.success(),
            "kubectl {version} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Run kubectl expecting failure; return stderr.
    pub fn fails(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            !out.status.success(),
            "kubectl {version} {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The API's URL, as the admin kubeconfig names it.
    pub fn url(&self) -> String {
        std::fs::read_to_string(&self.kubeconfig)
            .expect("admin kubeconfig")
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
            .expect("a server: line in the kubeconfig")
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

/// `orch agent --simulate` joined to a test server; stopped when dropped.
pub struct SimulatedNodes(Child);

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestServer {
    /// Join `count` simulated nodes named `<prefix>-sim-<i>`, and wait until
    /// they are Ready.
    pub fn simulate(&self, prefix: &str, count: usize, extra: &[&str]) -> SimulatedNodes {
        let kubeconfig = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let url = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server URL")
            .to_owned();
        let child = Command::new(ORCH)
            .args(["agent", "--server", &url, "--token-file"])
            .arg(self.dir.path().join("server/token"))
            .args(["--node-name", prefix, "--simulate", &count.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orch agent --simulate");
        let nodes = SimulatedNodes(child);
        wait::until_true(
            Duration::from_secs(30),
            "simulated nodes registered",
            || {
                let out = self.kubectl("1.33", &["get", "nodes", "-o", "name"]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(&format!("{prefix}-sim-")))
                    .count()
                    >= count
            },
        );
        nodes
    }

    /// Poll `kubectl get … -o json` until `check` holds (up to `secs`).
    pub fn wait_json(
        &self,
        args: &[&str],
        secs: u64,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        wait::until_ok(Duration::from_secs(secs), what, || {
            let out = self.kubectl("1.33", &full);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if out.status.success() && check(&v) => Ok(v),
                _ => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
            }
        })
    }

    /// Poll `kubectl args` until `check` accepts its output (30 s).
    pub fn eventually(&self, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
        wait::until_ok(Duration::from_secs(30), what, || {
            let out = self.kubectl("1.33", args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && check(&text) {
                Ok(text)
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        })
    }
}

/// `program`, run inside `/run/netns/<netns>` when given (with nsenter,
/// not `ip netns exec`, which remounts /sys and hides the cgroups).
pub fn in_netns(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A network namespace for a test (loopback up), removed when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("orch-test-{tag}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "lo up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The versioned kubectl binary next to the `kubectl` on PATH.
pub fn kubectl_path(version: &str) -> PathBuf {
    let which = Command::new("sh")
        .args(["-c", "command -v kubectl"])
        .output()
        .expect("sh");
    let found = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    assert!(
        !found.is_empty(),
        "kubectl is not on PATH; these tests drive the real kubectl binaries (kubectl and kubectl.1.31…1.33 beside it)"
    );
    let real = std::fs::canonicalize(&found).expect("resolve kubectl");
    if version.is_empty() {
        return real;
    }
    let path = real
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("kubectl.{version}"));
    assert!(
        path.exists(),
        "{} is missing; install kubectl {version} beside {}",
        path.display(),
        real.display()
    );
    path
}

/// The header (first line) of a table, split into column names.
pub fn header(table: &str) -> Vec<String> {
    let first = table.lines().next().unwrap_or_default();
    first
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A one-layer busybox image (tagged `latest`) in an OCI layout at
/// `dir/oci`
/// (built with umoci from busybox-static; scripts/test.sh installs them).
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (scripts/test.sh installs umoci, skopeo, busybox-static)")
        });
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox =
        String::from_utf8(run(Command::new("sh").args(["-c", "command -v busybox"])).stdout)
            .unwrap();
    std::fs::copy(busybox.trim(), bin.join("busybox")).unwrap();
    for applet in [
        "sh", "sleep", "echo", "cat", "ip", "hostname", "grep", "ls", "true", "false", "wget",
        "nc", "httpd", "mkdir", "touch", "rm", "test", "dd", "unshare", "tty", "stty", "mknod",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]));
    layout
}

/// `orch image pull [EXTRA] IMAGE` in `netns`, into the image store under
/// `store`, with `registries` as its registries.yaml.
pub fn image_pull(
    netns: &Netns,
    store: &Path,
    registries: &Path,
    extra: &[&str],
    image: &str,
) -> Output {
    in_netns(Some(&netns.0), ORCH)
        .args(["image", "--data-dir"])
        .arg(store)
        .args(["pull", "--private-registry"])
        .arg(registries)
        .args(extra)
        .arg(image)
        .output()
        .unwrap()
}

/// `docker-registry serve CONFIG` in `netns`, once it listens on
/// 127.0.0.1:`port` (kill the child to stop it).
pub fn docker_registry(netns: &Netns, config: &Path, port: u16) -> Child {
    let child = in_netns(Some(&netns.0), "docker-registry")
        .arg("serve")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/test.sh installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !in_netns(Some(&netns.0), "bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "docker-registry did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// A one-layer busybox image, `docker.io/library/busybox:test`, written by
/// skopeo as an OCI archive in `dir` (built with umoci from
/// busybox-static; scripts/test.sh installs them).
pub fn busybox_archive(dir: &Path) -> PathBuf {
    let image = format!("{}:latest", busybox_layout(dir).display());
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (scripts/test.sh installs umoci, skopeo, busybox-static)")
        });
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let archive = dir.join("busybox.tar");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{image}"),
        &format!(
            "oci-archive:{}:docker.io/library/busybox:test",
            archive.display()
        ),
    ]));
    archive
}
