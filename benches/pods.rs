//! Pod start latency and footprint with real containers (needs root):
//! `orch server` and `orch agent` in a network namespace the bench creates,
//! a busybox image (umoci + skopeo) imported into the agent, pods created
//! through the API and timed until a watch sees them Running — 100 one
//! after another, then 100 at once. Also: idle RSS of the agent, of one
//! shim, of the server with its embedded agent, and the binary size.

#[path = "pods/floor.rs"]
mod floor;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use support::{Netns, Proc, ms, pct, proc_kib, rss_kib};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");
const N: usize = 100;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A one-layer busybox image archive (`docker.io/library/busybox:bench`).
fn busybox(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let image = format!("{}:latest", layout.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    let archive = dir.join("busybox.tar");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci:{image}"),
        &format!(
            "oci-archive:{}:docker.io/library/busybox:bench",
            archive.display()
        ),
    ]));
    archive
}

/// Start `orch server` (with `extra` flags) in the namespace; its pid and
/// kubeconfig path once it serves.
fn server(ns: &str, dir: &Path, extra: &[&str]) -> (Proc, PathBuf) {
    let kubeconfig = dir.join("kubeconfig.yaml");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(ORCH)
        .args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--log-level",
            "warn,orch::server=info",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("orch server");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    loop {
        let line = lines.next().expect("server exited").unwrap();
        if line.contains("orch server ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), kubeconfig)
}

async fn connect(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "busybox:bench",
                 "imagePullPolicy": "Never", "command": ["/bin/sleep", "3600"]}]},
    }))
    .unwrap()
}

/// Create `names` (all at once) and return each one's create → Running.
async fn start_pods(api: &Api<Pod>, names: &[String]) -> Vec<Duration> {
    let rv = api
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let t0 = Instant::now();
    let mut created = std::collections::HashMap::new();
    let creates: Vec<_> = names
        .iter()
        .map(|n| {
            let api = api.clone();
            let p = pod(n);
            async move {
                let at = Instant::now();
                api.create(&PostParams::default(), &p).await.unwrap();
                at
            }
        })
        .collect();
    for (n, at) in names.iter().zip(futures::future::join_all(creates).await) {
        created.insert(n.clone(), at);
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < names.len() {
        let ev = tokio::time::timeout(Duration::from_secs(120), watch.next())
            .await
            .expect("pods did not start")
            .unwrap()
            .unwrap();
        if let WatchEvent::Modified(p) | WatchEvent::Added(p) = ev {
            let name = p.metadata.name.clone().unwrap();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && created.contains_key(&name) && seen.insert(name.clone()) {
                out.push(created[&name].elapsed().min(t0.elapsed()));
            }
        }
    }
    out
}

async fn clean(api: &Api<Pod>) {
    let _ = api
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &Default::default(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while api
        .list(&Default::default())
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "pods were not cleaned up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the agent with data dir `data` has torn down every pod.
async fn wait_torn_down(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(data.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        if Instant::now() > deadline {
            println!("warning: the agent had not torn down every pod after 120 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Unmount whatever is still mounted under `dir` (deepest first).
fn unmount_all_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = orch::runtime::rootfs::unmount(Path::new(p));
    }
}

fn report(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    println!(
        "pod start latency, {what}: p50 {} / p99 {} (max {})   targets p50 < 150 ms, p99 < 400 ms",
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap())
    );
    pct(&v, 0.5)
}

/// How many containers the peers start, one after another and at once.
const PEER_N: usize = N;

/// Start the same busybox container with containerd + runc (`ctr run
/// -d`, to the task running) and podman (`podman run -d`, runc, no
/// network), each from its own state under `dir`, and print their start
/// times next to orch's pod start as ratios. Skipped (said so) when
/// they are not installed: `apt-get install containerd runc podman`.
fn peers(dir: &Path, archive: &Path, orch_seq: Duration, orch_par: Duration) {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let image = "docker.io/library/busybox:bench";
    // Both need the same rlimit fix orch makes (raising them fails here).
    type Start = Box<dyn Fn(&str) -> Command + Sync>;
    let time_many = |start: &Start, prefix: &str| -> (Vec<Duration>, Vec<Duration>) {
        let one = |name: String| {
            let t = Instant::now();
            let out = start(&name).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed()
        };
        let seq: Vec<Duration> = (0..PEER_N).map(|i| one(format!("{prefix}s{i}"))).collect();
        let par: Vec<Duration> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..PEER_N)
                .map(|i| {
                    let one = &one;
                    s.spawn(move || one(format!("{prefix}p{i}")))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        (seq, par)
    };
    let show = |who: &str, (mut seq, mut par): (Vec<Duration>, Vec<Duration>)| {
        seq.sort();
        par.sort();
        let (s50, p50) = (pct(&seq, 0.5), pct(&par, 0.5));
        println!(
            "{who}: {PEER_N} sequential p50 {} / p99 {}, {PEER_N} at once p50 {} / p99 {}; orch pod start / {who} = {:.2} sequential, {:.2} at once (below 1: orch is faster)",
            ms(s50),
            ms(pct(&seq, 0.99)),
            ms(p50),
            ms(pct(&par, 0.99)),
            orch_seq.as_secs_f64() / s50.as_secs_f64(),
            orch_par.as_secs_f64() / p50.as_secs_f64(),
        );
    };

    if have("containerd") && have("ctr") && have("runc") {
        let root = dir.join("containerd");
        std::fs::create_dir_all(&root).unwrap();
        let sock = root.join("containerd.sock");
        std::fs::write(
            root.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n",
                root.display(),
                sock.display()
            ),
        )
        .unwrap();
        let daemon = Proc(
            Command::new("containerd")
                .arg("--config")
                .arg(root.join("config.toml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let ctr = {
            let sock = sock.clone();
            move || {
                let mut c = Command::new("ctr");
                c.arg("-a").arg(&sock);
                c
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Named by the archive's org.opencontainers.image.ref.name (the
        // full name): `--index-name` makes containerd 1.6 record an index
        // it never stored, and the unpack fails ("content digest … not
        // found").
        run(ctr().args(["image", "import"]).arg(archive));
        let start: Start = Box::new({
            let ctr = ctr.clone();
            move |name: &str| {
                let mut c = ctr();
                c.args(["run", "-d", image, name, "sleep", "3600"]);
                c
            }
        });
        let timings = time_many(&start, "c");
        for name in (0..PEER_N).flat_map(|i| [format!("cs{i}"), format!("cp{i}")]) {
            let _ = ctr().args(["task", "kill", "-s", "KILL", &name]).output();
        }
        std::thread::sleep(Duration::from_millis(500));
        for name in (0..PEER_N).flat_map(|i| [format!("cs{i}"), format!("cp{i}")]) {
            let _ = ctr().args(["task", "delete", &name]).output();
            let _ = ctr().args(["container", "delete", &name]).output();
        }
        show("containerd+runc (ctr run)", timings);
        drop(daemon);
        // The (now empty) cgroup parent ctr's namespace left.
        orch::runtime::cgroup::remove("/default");
    } else {
        println!("containerd+runc: not installed (apt-get install containerd runc), not compared");
    }

    if have("podman") {
        let root = dir.join("podman");
        let podman = {
            let root = root.clone();
            move || {
                let mut c = Command::new("podman");
                c.arg("--root")
                    .arg(root.join("root"))
                    .arg("--runroot")
                    .arg(root.join("run"))
                    .args([
                        "--cgroup-manager",
                        "cgroupfs",
                        "--events-backend",
                        "file",
                        "--storage-driver",
                        "overlay",
                    ]);
                c
            }
        };
        run(podman().arg("load").arg("-i").arg(archive));
        let start: Start = Box::new({
            let podman = podman.clone();
            move |name: &str| {
                let mut c = podman();
                c.args([
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--ulimit",
                    "nofile=1024:1024",
                    "--ulimit",
                    "nproc=1024:1024",
                    "--name",
                    name,
                    image,
                    "sleep",
                    "3600",
                ]);
                c
            }
        });
        let timings = time_many(&start, "p");
        let _ = podman().args(["rm", "-f", "-a", "-t", "0"]).output();
        show("podman (runc)", timings);
        // conmon leaves the cgroup parent a moment after `rm`.
        std::thread::sleep(Duration::from_secs(1));
        orch::runtime::cgroup::remove("/libpod_parent");
    } else {
        println!("podman: not installed (apt-get install podman), not compared");
    }
}

/// Proportional set size: private pages plus each shared page divided by
/// the number of processes mapping it.
fn pss_kib(pid: u32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// Anonymous resident memory (not file-backed pages shared with others).
fn rss_anon_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "RssAnon:")
}

/// When node `name` was first seen Ready (polled every 10 ms, 60 s at most).
async fn wait_ready(nodes: &Api<k8s_openapi::api::core::v1::Node>, name: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get(name).await.ok().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "node {name} did not get Ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Busy and total jiffies of all CPUs so far (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// User plus system CPU of process `pid` (all its threads) so far, in
/// USER_HZ ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it may not.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

fn pid_of_shims(run_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(run_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("shim.pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn main() {
    if let Some(work) = std::env::var_os(floor::WORKER) {
        // This process is one of the floor's workers (single-threaded).
        floor::worker(Path::new(&work));
        return;
    }
    if !rustix::process::geteuid().is_root() {
        println!("pods bench: skipped (needs root: containers, cgroups, namespaces)");
        return;
    }
    println!("machine: {}", support::machine());
    let ns = Netns::new("pods");
    // This thread (and the runtime's threads, created from it) talk to the
    // server inside the namespace.
    let handle = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&handle),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("enter the bench's network namespace");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(&ns));
}

async fn bench(ns: &Netns) {
    let base = tempfile::tempdir().unwrap();
    // Dropped before `base` (and after the agents and servers below).
    let _leftovers = Leftovers(base.path().to_owned());
    let archive = busybox(base.path());
    // What libcontainer and the kernel alone cost per container, before
    // orch runs anything.
    tokio::task::block_in_place(|| {
        let lower = base.path().join("bundle/rootfs");
        for variant in [floor::Variant::Default, floor::Variant::Bare] {
            floor::measure(base.path(), &lower, N, variant);
        }
    });
    if std::env::var_os("ORCH_BENCH_FLOOR_ONLY").is_some() {
        return;
    }

    // Server without agent + a separate agent: their RSS apart.
    let sdir = base.path().join("server");
    std::fs::create_dir_all(&sdir).unwrap();
    let (server_proc, kubeconfig) = server(&ns.0, &sdir, &["--disable-agent"]);
    let adir = base.path().join("agent");
    std::fs::create_dir_all(adir.join("agent/images")).unwrap();
    std::fs::copy(&archive, adir.join("agent/images/busybox.tar")).unwrap();
    let url = std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .unwrap();
    // Runtime state on a tmpfs, as /run/orch is on a real node (a
    // non-default --data-dir would otherwise put it on this disk).
    let run_dir = base.path().join("run-tmpfs");
    std::fs::create_dir_all(&run_dir).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &run_dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=512m",
    )
    .expect("mount a tmpfs for the agent's --run-dir");
    let agent_started = Instant::now();
    let agent = Proc(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.0))
            .arg(ORCH)
            .args([
                "agent",
                "--log-level",
                "warn",
                "--server",
                &url,
                "--node-name",
                "bench",
                "--token-file",
            ])
            .arg(sdir.join("server/token"))
            .arg("--data-dir")
            .arg(&adir)
            .arg("--run-dir")
            .arg(&run_dir)
            .spawn()
            .unwrap(),
    );
    let client = connect(&kubeconfig).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let agent_ready = wait_ready(&nodes, "bench").await - agent_started;
    println!(
        "orch agent start -> node Ready: {} (target < 2 s)",
        ms(agent_ready)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_idle = rss_kib(agent.0.id());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Warm up once (page cache, first cgroup).
    start_pods(&pods, &["warm".to_owned()]).await;
    let shim_rss: Vec<(u64, u64)> = pid_of_shims(&run_dir)
        .into_iter()
        .map(|pid| (rss_kib(pid), rss_anon_kib(pid)))
        .collect();
    clean(&pods).await;

    let mut seq = Vec::new();
    let seq_n = if std::env::var_os("ORCH_BENCH_PARALLEL_ONLY").is_some() {
        1
    } else {
        N
    };
    for i in 0..seq_n {
        seq.extend(start_pods(&pods, &[format!("seq-{i}")]).await);
    }
    let orch_seq = report(&format!("{N} sequential"), seq);
    clean(&pods).await;
    wait_torn_down(&adir).await;
    let names: Vec<String> = (0..N).map(|i| format!("par-{i}")).collect();
    let (busy0, total0) = cpu_jiffies();
    let (agent_cpu0, server_cpu0) = (cpu_ticks(agent.0.id()), cpu_ticks(server_proc.0.id()));
    if let Some(marker) = std::env::var_os("ORCH_BENCH_MARK") {
        // For profiling the parallel phase alone: touch a file at its start.
        let _ = std::fs::write(marker, b"");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    let par = start_pods(&pods, &names).await;
    let wall = t0.elapsed();
    let (busy1, total1) = cpu_jiffies();
    let (agent_cpu1, server_cpu1) = (cpu_ticks(agent.0.id()), cpu_ticks(server_proc.0.id()));
    let orch_par = report(&format!("{N} in parallel"), par);
    // All CPUs' busy time over the phase (the machine runs nothing else):
    // what one pod start costs, the floor of the at-once latencies.
    // /proc/stat counts in USER_HZ, 100 per second on Linux.
    let tick = 10.0;
    println!(
        "{N} in parallel: all done in {}, CPUs {:.0} % busy, {:.1} ms of CPU per pod start",
        ms(wall),
        100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        (busy1 - busy0) as f64 * tick / N as f64
    );
    // The long-lived processes' share (whole ticks over the phase: exact
    // enough for them; the shims and libcontainer's processes are too
    // short-lived for tick counts, see BENCHMARKS.md for perf's split).
    let (agent_cpu, server_cpu) = (agent_cpu1 - agent_cpu0, server_cpu1 - server_cpu0);
    println!(
        "{N} in parallel, CPU per pod start: orch agent {:.1} ms, orch server {:.1} ms, the rest {:.1} ms (shims, libcontainer's processes, kernel threads, this bench's client)",
        agent_cpu as f64 * tick / N as f64,
        server_cpu as f64 * tick / N as f64,
        (busy1 - busy0).saturating_sub(agent_cpu + server_cpu) as f64 * tick / N as f64
    );
    // With the hundred pods running and nothing changing, what the agent
    // and the shims cost (their CPU over 10 s, as a share of one core).
    let shims = pid_of_shims(&run_dir);
    let busy = |pids: &[u32]| -> u64 { pids.iter().map(|p| cpu_ticks(*p)).sum() };
    let (agent0, shims0) = (cpu_ticks(agent.0.id()), busy(&shims));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (agent1, shims1) = (cpu_ticks(agent.0.id()), busy(&shims));
    println!(
        "{N} pods running, nothing changing: orch agent {:.1} % of a core, the {} shims {:.1} % together",
        (agent1 - agent0) as f64 * tick / 10_000.0 * 100.0,
        shims.len(),
        (shims1 - shims0) as f64 * tick / 10_000.0 * 100.0,
    );
    if std::env::var_os("ORCH_BENCH_PARALLEL_ONLY").is_some() {
        clean(&pods).await;
        wait_torn_down(&adir).await;
        return;
    }
    // With 100 pods running, what one shim costs: its proportional share
    // of the pages it maps (PSS: shared pages divided among the processes
    // mapping them — the binary's text is shared by every shim).
    let shims = pid_of_shims(&run_dir);
    let pss: Vec<u64> = shims
        .iter()
        .map(|p| pss_kib(*p))
        .filter(|k| *k > 0)
        .collect();
    if !pss.is_empty() {
        println!(
            "orch shim with {} pods running: PSS {:.2} MiB each on average (target < 3 MiB)",
            pss.len(),
            pss.iter().sum::<u64>() as f64 / pss.len() as f64 / 1024.0
        );
    }
    clean(&pods).await;
    wait_torn_down(&adir).await;
    let (shim_total, shim_anon) = shim_rss.first().copied().unwrap_or((0, 0));
    println!(
        "idle RSS: orch agent {:.1} MiB (target < 25 MiB), orch shim {:.1} MiB of which {:.1} MiB its own (anonymous; the rest is the binary's pages, shared by all shims) (target < 3 MiB), orch server alone {:.1} MiB",
        agent_idle as f64 / 1024.0,
        shim_total as f64 / 1024.0,
        shim_anon as f64 / 1024.0,
        rss_kib(server_proc.0.id()) as f64 / 1024.0
    );
    drop(agent);
    drop(server_proc);

    // The server with its embedded agent, idle.
    let edir = base.path().join("embedded");
    std::fs::create_dir_all(edir.join("agent/images")).unwrap();
    std::fs::copy(&archive, edir.join("agent/images/busybox.tar")).unwrap();
    let server_started = Instant::now();
    let (embedded, ekube) = server(&ns.0, &edir, &["--node-name", "embedded"]);
    let eclient = connect(&ekube).await;
    let enodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(eclient);
    let server_ready = wait_ready(&enodes, "embedded").await - server_started;
    println!(
        "orch server start -> its node Ready: {} (target < 2 s; k3s takes tens of seconds)",
        ms(server_ready)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "idle RSS: orch server + embedded agent {:.1} MiB (target < 80 MiB; k3s ~1.4 GB)",
        rss_kib(embedded.0.id()) as f64 / 1024.0
    );
    drop(embedded);
    // The bench profile keeps symbols; the installed binary is stripped.
    let stripped = base.path().join("orch.stripped");
    let size = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(ORCH)
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map(|m| m.len());
    match size {
        Some(b) => println!("binary size: {:.1} MB stripped", b as f64 / 1e6),
        None => println!(
            "binary size: {:.1} MB with symbols (strip not found)",
            std::fs::metadata(ORCH).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
        ),
    }
    peers(base.path(), &archive, orch_seq, orch_par);
}

/// What the bench's agents leave under the bench's directory (the
/// directory itself): undone when the bench ends, also when it fails —
/// shims killed, mounts unmounted, the agents' cgroups removed.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for dir in [self.0.join("run-tmpfs"), self.0.join("embedded/run")] {
            for pid in pid_of_shims(&dir) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
        unmount_all_under(&self.0);
        for cgroup in ["/orch/bench", "/orch/embedded", "/orch", floor::CGROUP] {
            orch::runtime::cgroup::remove(cgroup);
        }
    }
}
