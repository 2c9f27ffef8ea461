//! Test fixtures: the one cluster fixture ([`Cluster`]: a real `orch
//! server`, optional agents, network namespaces), the one way to wait
//! ([`wait`]), and the real kubectl binaries pointed at the cluster.

#![allow(dead_code)] // each test file uses part of this module

pub mod agents;
pub mod cluster;
pub mod pods;
pub mod wait;

#[allow(unused_imports)] // each test file uses part of them
pub use cluster::{Cluster, Lan, SimulatedNodes};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// kubectl versions the API must serve unchanged ("" is the dispatcher).
pub const KUBECTL_VERSIONS: &[&str] = &["1.31", "1.32", "1.33", ""];

/// Fail the test at once, saying what needs root, when not run as root
/// (tests that need it never pass by skipping).
///
/// # Panics
/// When the effective user is not root.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root for {what}; run it as root (sudo ./scripts/test.sh)"
    );
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

/// Run `orch server args…` that the test expects to refuse to start, with
/// the flags that keep a server which starts anyway harmless: no embedded
/// agent (it would make its bridge and nftables rules in this machine's
/// network namespace), loopback only, a free port, its kubeconfig in a
/// temp dir (not /etc/orch). Killed after 30 s, failing the test.
///
/// # Panics
/// When the server is still running after 30 s.
pub fn refused_server(args: &[&str]) -> Output {
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(ORCH)
        .arg("server")
        .args(args)
        .args(["--disable-agent", "--bind-address", "127.0.0.1"])
        .args(["--https-listen-port", "0", "--write-kubeconfig"])
        .arg(scratch.path().join("kubeconfig.yaml"))
        .env_remove("ORCH_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run orch server");
    if wait::poll(std::time::Duration::from_secs(30), || {
        child.try_wait().ok().flatten()
    })
    .is_none()
    {
        let _ = child.kill();
        let out = child.wait_with_output().expect("orch server output");
        panic!(
            "orch server {args:?} started instead of refusing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("orch server output")
}

/// A network namespace for a test (loopback up), removed when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root("network namespaces");
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
    wait::until_true(
        wait::secs(20),
        &format!("docker-registry listens on 127.0.0.1:{port}"),
        || {
            in_netns(Some(&netns.0), "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
    );
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
