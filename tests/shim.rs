//! `orch shim` runs real containers through libcontainer: a busybox image
//! (built with umoci, imported with `orch image import`) on an overlay
//! root, joined to a network namespace the test creates, with CRI-format
//! logs and exit codes recorded. Needs root.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orch::runtime::shim::{self, Request};
use orch::runtime::spec::{self, ContainerConfig};
use support::{Netns, wait};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// The directories of cgroup `path` in every hierarchy (v1) or the
/// unified one (v2).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        return vec![Path::new("/sys/fs/cgroup").join(rel)];
    }
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes the test's parent cgroups (deepest first) when dropped.
struct CgroupCleanup(Vec<String>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            for dir in cgroup_dirs(path) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// The shim process; shut down (or killed) when dropped.
struct Shim {
    child: Child,
    socket: PathBuf,
}

impl Shim {
    fn start(dir: &Path, netns: Option<&Path>) -> Self {
        Self::start_with(dir, netns, &[])
    }
    fn start_with(dir: &Path, netns: Option<&Path>, extra: &[&std::ffi::OsStr]) -> Self {
        let mut cmd = Command::new(ORCH);
        cmd.args(["shim", "--dir"]).arg(dir).args(extra);
        if let Some(n) = netns {
            cmd.arg("--netns").arg(n);
        }
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        let socket = dir.join("shim.sock");
        wait::until_true(wait::secs(10), "the shim creates its socket", || {
            socket.exists()
        });
        Self { child, socket }
    }
    fn call(&self, r: Request) -> shim::Response {
        shim::call(&self.socket, &r).unwrap_or_else(|e| panic!("{r:?}: {e}"))
    }

    /// Run `args` in container `b` as probes do (a streaming exec killed
    /// on hang-up), waiting up to `timeout`: its exit code, and output.
    fn exec(&self, args: &[&str], timeout: Duration) -> (Option<i32>, String) {
        use std::io::Read;
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut session = shim::exec_stream(&self.socket, "b", args, false, false, None, true)
            .unwrap_or_else(|e| panic!("exec: {e}"));
        let code = session.wait_for(timeout).unwrap();
        let mut out = String::new();
        if code.is_some() {
            for fd in std::mem::take(&mut session.fds) {
                let _ = std::fs::File::from(fd).read_to_string(&mut out);
            }
        }
        (code, out)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // Also when the test failed: no container outlives the test.
        if let Ok(state) = shim::call(&self.socket, &Request::State) {
            for c in state.containers {
                let _ = shim::call(&self.socket, &Request::Delete { id: c.id });
            }
        }
        let _ = shim::call(&self.socket, &Request::Shutdown);
        let child = &mut self.child;
        if wait::poll(wait::secs(5), || child.try_wait().ok().flatten()).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unpacked layers of the busybox test image, bottom first.
fn busybox_layers(dir: &Path) -> Vec<PathBuf> {
    let data = dir.join("data");
    support::agents::import_busybox(dir, &data);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("images/images.json")).unwrap()).unwrap();
    index["images"]["docker.io/library/busybox:test"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            data.join("images/layers/sha256")
                .join(l["diffId"].as_str().unwrap().trim_start_matches("sha256:"))
        })
        .collect()
}

/// An OCI bundle for `args` at `dir/<name>`, its root an overlay.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn new(dir: &Path, name: &str, layers: &[PathBuf], config: &ContainerConfig) -> Self {
        let bundle = dir.join(name);
        orch::runtime::rootfs::mount(
            layers,
            &bundle.join("upper"),
            &bundle.join("work"),
            &bundle.join("rootfs"),
        )
        .unwrap();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec::build(config)).unwrap(),
        )
        .unwrap();
        Self { dir: bundle }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = orch::runtime::rootfs::unmount(&self.dir.join("rootfs"));
    }
}

fn config(args: &[&str], netns: PathBuf, cgroup: &str) -> ContainerConfig {
    ContainerConfig {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
        hostname: "pod-a".into(),
        netns: Some(netns),
        cgroup: cgroup.into(),
        cgroup_v1: orch::runtime::cgroup::v1_view(Path::new(env!("CARGO_TARGET_TMPDIR")))
            .unwrap()
            .map(std::sync::Arc::new),
        no_new_privileges: true,
        ..ContainerConfig::default()
    }
}

fn wait_exit(shim: &Shim, id: &str) -> shim::ContainerState {
    wait::until_ok(wait::secs(20), &format!("{id} exits"), || {
        let state = shim.call(Request::State);
        let c = state
            .containers
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap();
        if c.status == "exited" {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
}

fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap();
            assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{l}");
            (
                p.next().unwrap().to_owned(),
                p.next().unwrap().to_owned(),
                p.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn containers_run_log_and_report_their_exit() {
    let dir = tempfile::tempdir().unwrap();
    let layers = busybox_layers(dir.path());
    let netns = Netns::new("shim");
    let cg = format!("/orch-test/shim-{}", std::process::id());
    let _cgroups = CgroupCleanup(vec![cg.clone(), "/orch-test".into()]);
    let shim = Shim::start(&dir.path().join("shim"), None);

    // A container that writes to both streams and fails.
    let script = "echo $GREETING from $(hostname); echo oops >&2; ip link 2>/dev/null | grep -c ': ' ; exit 3";
    let bundle = Bundle::new(
        dir.path(),
        "a",
        &layers,
        &config(&["/bin/sh", "-c", script], netns.path(), &format!("{cg}/a")),
    );
    let log = dir.path().join("logs/a/0.log");
    let created = shim.call(Request::Create {
        id: "a".into(),
        bundle: bundle.dir.clone(),
        log: log.clone(),
        layers: Vec::new(),
    });
    assert_eq!(created.containers[0].status, "created");
    assert!(created.containers[0].pid > 0);
    shim.call(Request::Start { id: "a".into() });
    let exited = wait_exit(&shim, "a");
    assert_eq!(exited.exit_code, Some(3), "{exited:?}");
    assert!(exited.finished_at.is_some() && exited.started_at.is_some());
    let lines = log_lines(&log);
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "hello from pod-a".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{lines:?}"
    );
    // Only loopback: the container is in the test's network namespace.
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "1".into())),
        "{lines:?}"
    );
    // The exit is on disk for an agent that was not there to see it.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("shim/exits/a.json")).unwrap())
            .unwrap();
    assert_eq!(record["exitCode"], 3);

    // Long-running ones stop on signals: a TERM handler's exit code, and
    // 128 + 9 for SIGKILL (PID 1 in its namespace ignores unhandled TERM).
    let trap = "trap 'exit 42' TERM; echo ready; while true; do sleep 1; done";
    let bundle_b = Bundle::new(
        dir.path(),
        "b",
        &layers,
        &config(&["/bin/sh", "-c", trap], netns.path(), &format!("{cg}/b")),
    );
    let bundle_c = Bundle::new(
        dir.path(),
        "c",
        &layers,
        &config(&["/bin/sleep", "600"], netns.path(), &format!("{cg}/c")),
    );
    for (id, bundle) in [("b", &bundle_b), ("c", &bundle_c)] {
        shim.call(Request::Create {
            id: id.into(),
            bundle: bundle.dir.clone(),
            log: dir.path().join(format!("logs/{id}/0.log")),
            layers: Vec::new(),
        });
        shim.call(Request::Start { id: id.into() });
    }
    let running = shim.call(Request::State);
    assert_eq!(
        running
            .containers
            .iter()
            .filter(|c| c.status == "running")
            .count(),
        2,
        "{running:?}"
    );
    // Wait until the trap is installed.
    wait::until_true(wait::secs(10), "b says ready", || {
        std::fs::read_to_string(dir.path().join("logs/b/0.log"))
            .unwrap_or_default()
            .contains("ready")
    });
    // Exec (what exec probes use): exit codes and output come back.
    let exec = |args: &[&str], timeout: Duration| shim.exec(args, timeout);
    let second = Duration::from_secs(2);
    assert_eq!(
        exec(&["test", "-f", "/bin/sh"], second),
        (Some(0), String::new())
    );
    assert_eq!(exec(&["touch", "/ready"], second).0, Some(0));
    assert_eq!(exec(&["test", "-f", "/ready"], second).0, Some(0));
    let (code, out) = exec(&["cat", "/nope"], second);
    assert_eq!(code, Some(1));
    assert!(out.contains("/nope"), "{out}");
    // One that overruns its wait is killed when the caller hangs up.
    assert_eq!(exec(&["sleep", "30"], Duration::from_millis(300)).0, None);
    wait::until_true(wait::secs(5), "the abandoned exec is killed", || {
        exec(&["busybox", "pgrep", "-f", "sleep 30"], second).0 != Some(0)
    });
    shim.call(Request::Kill {
        id: "b".into(),
        signal: 15,
    });
    assert_eq!(wait_exit(&shim, "b").exit_code, Some(42));
    shim.call(Request::Kill {
        id: "c".into(),
        signal: 9,
    });
    assert_eq!(wait_exit(&shim, "c").exit_code, Some(137));

    // Bad requests get errors, not crashes.
    let err = shim::call(&shim.socket, &Request::Start { id: "nope".into() }).unwrap_err();
    assert!(err.to_string().contains("no container nope"), "{err}");
    let err = shim::call(
        &shim.socket,
        &Request::Create {
            id: "bad".into(),
            bundle: dir.path().join("missing"),
            log: dir.path().join("logs/bad.log"),
            layers: Vec::new(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("creating container bad"), "{err}");

    for id in ["a", "b", "c"] {
        shim.call(Request::Delete { id: id.into() });
    }
    assert!(shim.call(Request::State).containers.is_empty());
    assert!(!dir.path().join("shim/exits/a.json").exists());
    drop(shim);
    drop((bundle, bundle_b, bundle_c));
    // The containers' cgroups went with them; only the parents are left.
    for c in cgroup_dirs(&cg) {
        assert!(
            std::fs::read_dir(&c)
                .unwrap()
                .flatten()
                .all(|e| !e.path().is_dir()),
            "a container cgroup was left in {}",
            c.display()
        );
    }
}

#[test]
fn the_shim_makes_the_pods_network_namespace_with_loopback_up() {
    let dir = tempfile::tempdir().unwrap();
    let layers = busybox_layers(dir.path());
    let cg = format!("/orch-test/netns-{}", std::process::id());
    let _cgroups = CgroupCleanup(vec![cg.clone(), "/orch-test".into()]);
    let netns_path = dir.path().join("netns/pod");
    let shim = Shim::start(&dir.path().join("shim"), Some(&netns_path));
    let cfg = config(
        &[
            "/bin/sh",
            "-c",
            "ip -o link show lo; ip -o addr show lo | grep -c 127.0.0.1",
        ],
        netns_path.clone(),
        &format!("{cg}/a"),
    );
    let bundle = Bundle::new(dir.path(), "a", &layers, &cfg);
    let log = dir.path().join("logs/a/0.log");
    shim.call(Request::Create {
        id: "a".into(),
        bundle: bundle.dir.clone(),
        log: log.clone(),
        layers: Vec::new(),
    });
    shim.call(Request::Start { id: "a".into() });
    assert_eq!(wait_exit(&shim, "a").exit_code, Some(0));
    let lines = log_lines(&log);
    assert!(
        lines[0].2.contains("lo:") && lines[0].2.contains("UP"),
        "{lines:?}"
    );
    assert_eq!(lines[1].2, "1", "loopback has 127.0.0.1: {lines:?}");
    shim.call(Request::Delete { id: "a".into() });
    drop(shim);
    drop(bundle);
    orch::runtime::netns::remove(&netns_path).unwrap();
    assert!(!netns_path.exists());
}

/// The mount points in process `pid`'s mount namespace.
fn mounts_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap()
}

#[test]
fn a_shim_leaves_other_pods_mounts_out_and_keeps_its_root_filesystems_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let layers = busybox_layers(dir.path());
    let netns = Netns::new("shimmnt");
    let cg = format!("/orch-test/shimmnt-{}", std::process::id());
    let _cgroups = CgroupCleanup(vec![cg.clone(), "/orch-test".into()]);
    // What an agent has: a private mount point holding every pod's mounts.
    let pods = dir.path().join("pods");
    orch::runtime::mountns::private_subtree(&pods).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = orch::runtime::mountns::remove_private_subtree(&self.0);
        }
    }
    let _unmount = Unmount(pods.clone());
    let tmpfs = |d: &Path, file: &str| {
        std::fs::create_dir_all(d).unwrap();
        rustix::mount::mount(
            "tmpfs",
            d,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
        std::fs::write(d.join(file), file).unwrap();
    };
    tmpfs(&pods.join("own/vol"), "mine");
    tmpfs(&pods.join("other/vol"), "theirs");
    let shim = Shim::start_with(
        &pods.join("own/shim"),
        None,
        &[
            "--hide-mounts-under".as_ref(),
            pods.as_os_str(),
            "--keep-mounts-under".as_ref(),
            pods.join("own").as_os_str(),
        ],
    );
    let pid = shim.child.id();
    let seen = mounts_of(pid);
    assert!(seen.contains("/own/vol "), "{seen}");
    assert!(!seen.contains("/other/vol "), "{seen}");
    // Mounts the host makes later stay out too.
    tmpfs(&pods.join("late/vol"), "late");
    assert!(!mounts_of(pid).contains("/late/vol "));

    // The shim mounts the container's root itself; the host never sees it.
    let bundle = pods.join("own/containers/a");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut cfg = config(&["/bin/cat", "/own/mine"], netns.path(), &format!("{cg}/a"));
    cfg.mounts.push(spec::BindMount {
        source: pods.join("own/vol"),
        destination: "/own".into(),
        readonly: true,
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec::build(&cfg)).unwrap(),
    )
    .unwrap();
    let log = dir.path().join("logs/a/0.log");
    shim.call(Request::Create {
        id: "a".into(),
        bundle: bundle.clone(),
        log: log.clone(),
        layers: layers.clone(),
    });
    shim.call(Request::Start { id: "a".into() });
    assert_eq!(wait_exit(&shim, "a").exit_code, Some(0));
    // "mine" has no newline: the shim writes it when the pipe closes,
    // which it may see just after the exit.
    wait::until_ok(wait::secs(5), "the log has \"mine\"", || {
        let lines = log_lines(&log);
        if lines.contains(&("stdout".into(), "F".into(), "mine".into())) {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    let rootfs = format!("{} ", bundle.join("rootfs").display());
    assert!(mounts_of(pid).contains(&rootfs));
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&rootfs), "{host}");
    // Delete unmounts it; what it wrote stays in the upper dir until the
    // bundle goes.
    shim.call(Request::Delete { id: "a".into() });
    assert!(!mounts_of(pid).contains(&rootfs));
}
