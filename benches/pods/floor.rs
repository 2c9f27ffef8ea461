//! The floor under orch's pod start: libcontainer and the kernel alone.
//!
//! Single-threaded worker processes (this bench binary, run again), one
//! per CPU, each create and start their share of a hundred containers
//! with libcontainer as fast as they can: every container on an overlay
//! of the bench's busybox rootfs with its own upper dir, in its own mount,
//! PID, network, IPC, UTS and cgroup namespaces, with a cgroup of its own,
//! running `sleep 3600`. No API, no scheduler, no agent, no shim, no pod
//! network.
//! What that costs in CPU per container, and when each one has started, is
//! the least any pod start built on libcontainer can cost on this machine.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{LinuxBuilder, Mount, ProcessBuilder, RootBuilder, Spec};

/// Set (to the work directory) in a worker's environment.
pub const WORKER: &str = "ORCH_BENCH_FLOOR_WORKER";
/// The cgroup every floor container's cgroup is made under.
pub const CGROUP: &str = "/orch-bench-floor";

/// Which spec the containers get.
#[derive(Clone, Copy)]
pub enum Variant {
    /// runc's and oci-spec's default: /proc, /dev (tmpfs), /dev/pts,
    /// /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup, masked and read-only
    /// paths, the default capabilities, no_new_privs.
    Default,
    /// Only /proc and /dev (a tmpfs, with the default devices) mounted,
    /// no masked or read-only paths: less than any pod gets.
    Bare,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Bare => "bare",
        }
    }
}

/// Start `n` containers of `variant` from two workers at once, under
/// `dir`, with `lower` as the image's rootfs; print what they cost.
pub fn measure(dir: &Path, lower: &Path, n: usize, variant: Variant) {
    let work = dir.join(format!("floor-{}", variant.name()));
    std::fs::create_dir_all(&work).unwrap();
    let (busy0, total0) = super::cpu_jiffies();
    let t0 = Instant::now();
    // One worker per CPU: more only add switches (4 on 2 CPUs were no
    // faster).
    let workers_n = std::thread::available_parallelism().map_or(2, usize::from);
    let mut workers = Vec::new();
    for w in 0..workers_n {
        let count = n / workers_n + usize::from(w < n % workers_n);
        let first = w * (n / workers_n) + w.min(n % workers_n);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(WORKER, &work)
            .env("ORCH_BENCH_FLOOR_LOWER", lower)
            .env("ORCH_BENCH_FLOOR_RANGE", format!("{first}:{count}"))
            .env("ORCH_BENCH_FLOOR_VARIANT", variant.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("floor worker");
        let out = BufReader::new(child.stdout.take().unwrap());
        // One line per started container, stamped when it arrives.
        let reader = std::thread::spawn(move || {
            out.lines()
                .take(count)
                .map_while(Result::ok)
                .map(|_| t0.elapsed())
                .collect::<Vec<Duration>>()
        });
        workers.push((child, reader, count));
    }
    let mut started = Vec::new();
    let mut children = Vec::new();
    for (child, reader, count) in workers {
        let times = reader.join().unwrap();
        let complete = times.len() == count;
        started.extend(times);
        children.push((child, complete));
    }
    let wall = t0.elapsed();
    let (busy1, total1) = super::cpu_jiffies();
    // Closing a worker's stdin tells it to stop and delete its containers.
    let mut failed = false;
    for (mut child, complete) in children {
        drop(child.stdin.take());
        let ok = child.wait().is_ok_and(|s| s.success());
        failed |= !ok || !complete;
    }
    orch::runtime::cgroup::remove(CGROUP);
    if failed {
        println!(
            "libcontainer floor ({}): a worker failed (see above), no figure",
            variant.name()
        );
        return;
    }
    started.sort();
    let cpu_ms = (busy1 - busy0) as f64 * 10.0 / n as f64;
    println!(
        "libcontainer floor ({} spec), {n} containers from {workers_n} processes at once: started p50 {} / p99 {}, all in {}, {:.1} ms of CPU per container (CPUs {:.0} % busy)",
        variant.name(),
        super::ms(super::pct(&started, 0.5)),
        super::ms(super::pct(&started, 0.99)),
        super::ms(wall),
        cpu_ms,
        100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
    );
}

/// A worker's life: start its containers, say so one line each, wait for
/// its stdin to close, then kill and delete them. Single-threaded, as
/// libcontainer needs.
pub fn worker(work: &Path) {
    let lower = PathBuf::from(std::env::var_os("ORCH_BENCH_FLOOR_LOWER").unwrap());
    let range = std::env::var("ORCH_BENCH_FLOOR_RANGE").unwrap();
    let (first, count) = range.split_once(':').unwrap();
    let (first, count): (usize, usize) = (first.parse().unwrap(), count.parse().unwrap());
    let bare = std::env::var("ORCH_BENCH_FLOOR_VARIANT").unwrap() == "bare";
    // A mount namespace of its own, as a shim has: the overlays stay out
    // of the host's mount table (libcontainer reads it per container).
    orch::runtime::mountns::isolate(&[], &[]).expect("a mount namespace for the floor worker");
    let state = work.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut containers: Vec<Container> = Vec::new();
    let mut stdout = std::io::stdout();
    let mut failed = false;
    for i in first..first + count {
        // No panics past this point (the bench profile aborts): a
        // failure stops the starts, and what started is still deleted.
        match start(work, &lower, &state, i, bare) {
            Ok(c) => {
                containers.push(c);
                let _ = writeln!(stdout, "started");
                let _ = stdout.flush();
            }
            Err(e) => {
                eprintln!("libcontainer floor: {e}");
                failed = true;
                break;
            }
        }
    }
    if !failed {
        // Until the bench has read the CPU counters.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    }
    for mut c in containers {
        let pid = c.pid();
        let _ = c.kill(libcontainer::signal::Signal::try_from(9).unwrap(), true);
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p.as_raw())) {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
        if let Err(e) = c.delete(true) {
            eprintln!("deleting {}: {e}", c.id());
        }
    }
    if failed {
        std::process::exit(1);
    }
}

fn start(
    work: &Path,
    lower: &Path,
    state: &Path,
    i: usize,
    bare: bool,
) -> Result<Container, String> {
    let id = format!("floor-{i}");
    let bundle = work.join(&id);
    let rootfs = bundle.join("rootfs");
    orch::runtime::rootfs::mount(
        &[lower.to_owned()],
        &bundle.join("upper"),
        &bundle.join("work"),
        &rootfs,
    )
    .map_err(|e| format!("{id}: {e}"))?;
    spec(&rootfs, &id, bare)
        .save(bundle.join("config.json"))
        .map_err(|e| format!("{id}: config.json: {e}"))?;
    let null = |write: bool| {
        std::fs::File::options()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))
    };
    let mut container = ContainerBuilder::new(id.clone(), SyscallType::default())
        .with_root_path(state)
        .map_err(|e| format!("{id}: state dir: {e}"))?
        .with_stdin(null(false)?)
        .with_stdout(null(true)?)
        .with_stderr(null(true)?)
        .validate_id()
        .map_err(|e| format!("{id}: {e}"))?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating {id}: {e}"))?;
    container
        .start()
        .map_err(|e| format!("starting {id}: {e}"))?;
    Ok(container)
}

fn spec(rootfs: &Path, id: &str, bare: bool) -> Spec {
    let mut spec = Spec::default();
    let defaults = spec.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .namespaces(defaults.namespaces().clone().unwrap_or_default())
        .cgroups_path(PathBuf::from(format!("{CGROUP}/{id}")));
    if !bare {
        linux = linux
            .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default());
    }
    spec.set_linux(Some(linux.build().unwrap()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .unwrap(),
    ));
    let process = spec.process().clone().unwrap_or_default();
    spec.set_process(Some(
        ProcessBuilder::default()
            .args(vec!["/bin/sleep".to_owned(), "3600".to_owned()])
            .env(process.env().clone().unwrap_or_default())
            .cwd("/")
            .user(process.user().clone())
            .capabilities(process.capabilities().clone().unwrap_or_default())
            .no_new_privileges(true)
            .build()
            .unwrap(),
    ));
    if bare {
        let proc_and_dev: Vec<Mount> = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                [Path::new("/proc"), Path::new("/dev")].contains(&m.destination().as_path())
            })
            .collect();
        spec.set_mounts(Some(proc_and_dev));
    }
    spec
}
