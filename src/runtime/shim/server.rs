//! The shim process: it creates, starts, signals and deletes its pod's
//! containers through libcontainer, reads their output into log files,
//! records their exits, and answers the agent — one `poll(2)` loop over
//! the socket, the log pipes and the pidfds, single-threaded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, WaitOptions};

use super::protocol::{ContainerState, ExecExit, Request, Response};
use super::{Error, errno, io_err, set_terminal_size};
use crate::runtime::logs::{CriLog, LogLimits, Stream};

/// The listening socket on stdin, moved to a descriptor of its own that
/// containers do not inherit; stdin becomes `/dev/null`.
fn take_stdin_listener() -> io::Result<UnixListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let stdin = std::io::stdin();
    let accepting = rustix::net::sockopt::socket_acceptconn(&stdin).map_err(errno)?;
    if !accepting {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "stdin is not a listening socket",
        ));
    }
    let fd = rustix::io::fcntl_dupfd_cloexec(&stdin, 3).map_err(errno)?;
    let null = File::open("/dev/null")?;
    // SAFETY: fd 0 is open (a socket, checked above); it is only borrowed
    // as an OwnedFd for dup2 to replace it, and given back unclosed.
    let mut zero = unsafe { OwnedFd::from_raw_fd(0) };
    let replaced = rustix::io::dup2(&null, &mut zero).map_err(errno);
    let _ = zero.into_raw_fd();
    replaced?;
    Ok(UnixListener::from(fd))
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// One container as the shim tracks it.
struct Tracked {
    container: libcontainer::container::Container,
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// Output: pipes, or the terminal's master as `stdout` with a tty.
    stdout: Option<File>,
    stderr: Option<File>,
    /// Where attached clients' input goes (`stdin: true`): a pipe, or the
    /// terminal's master.
    stdin: Option<File>,
    /// The terminal's master (for resizes), with `tty: true`.
    terminal: Option<File>,
    /// Close stdin once the first attached client is done with it.
    stdin_once: bool,
    log: CriLog,
    record: ContainerState,
    /// Its cgroup path (to tell an OOM kill).
    cgroup: String,
    /// The root filesystem the shim mounted for it.
    rootfs: Option<PathBuf>,
}

/// A client attached to a container.
struct Attachment {
    id: String,
    conn: UnixStream,
    stdin: bool,
    deframer: crate::api::remotecommand::Deframer,
}

/// Gives a terminal exec's terminal the client's size before the command
/// runs (in the container's process, on its side of the terminal), so
/// programs that read the size at start see it rather than 0×0.
#[derive(Clone)]
struct SizedTerminal {
    width: u16,
    height: u16,
}

impl libcontainer::workload::Executor for SizedTerminal {
    fn exec(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorError> {
        set_terminal_size(std::io::stdin(), self.width, self.height);
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::DefaultExecutor {}.validate(spec)
    }
}

/// A process's stdio as pipes: the child's ends, and ours (stdin only
/// when asked for; /dev/null otherwise).
struct Stdio {
    child_in: OwnedFd,
    child_out: OwnedFd,
    child_err: OwnedFd,
    stdin: Option<OwnedFd>,
    out: OwnedFd,
    err: OwnedFd,
}

impl Stdio {
    fn new(keep_stdin: bool) -> Result<Self, String> {
        let pipe = || {
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| format!("pipe: {e}"))
        };
        let (out, child_out) = pipe()?;
        let (err, child_err) = pipe()?;
        let (child_in, stdin) = if keep_stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let devnull = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
            (OwnedFd::from(devnull), None)
        };
        Ok(Self {
            child_in,
            child_out,
            child_err,
            stdin,
            out,
            err,
        })
    }
}

/// A streaming exec the shim waits for.
struct Session {
    pid: Pid,
    pidfd: OwnedFd,
    /// The caller's connection: the exit line goes there.
    conn: UnixStream,
    /// The caller hanging up kills the command.
    kill_on_hangup: bool,
}

/// The shim's state and its directory layout.
struct Shim {
    dir: PathBuf,
    containers: BTreeMap<String, Tracked>,
    sessions: Vec<Session>,
    attachments: Vec<Attachment>,
    /// Connections told of every exit ([`Request::Watch`]).
    watchers: Vec<UnixStream>,
    /// Numbers exec process files and console sockets.
    next_exec: u64,
    shutting_down: bool,
    /// When the containers' logs rotate.
    log_limits: LogLimits,
}

impl Shim {
    fn state_root(&self) -> PathBuf {
        self.dir.join("containers")
    }

    fn exit_path(&self, id: &str) -> PathBuf {
        self.dir.join("exits").join(format!("{id}.json"))
    }

    fn create(&mut self, id: &str, bundle: &Path, log: &Path) -> Result<ContainerState, String> {
        if self.containers.contains_key(id) {
            return Err(format!("container {id} exists"));
        }
        let spec: serde_json::Value = fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let cgroup = spec
            .pointer("/linux/cgroupsPath")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let tty = spec.pointer("/process/terminal") == Some(&serde_json::Value::Bool(true));
        let annotation = |key: &str| spec["annotations"][key] == "true";
        let keep_stdin = annotation(crate::runtime::spec::ANNOTATION_STDIN);
        let stdin_once = annotation(crate::runtime::spec::ANNOTATION_STDIN_ONCE);
        set_sysctls(&spec)?;
        let log = CriLog::open(log, self.log_limits.max_size, self.log_limits.max_files)
            .map_err(|e| format!("log {}: {e}", log.display()))?;
        let builder = libcontainer::container::builder::ContainerBuilder::new(
            id.to_owned(),
            libcontainer::syscall::syscall::SyscallType::default(),
        )
        .with_root_path(self.state_root())
        .map_err(|e| format!("state dir: {e}"))?;
        let (container, stdout, stderr, stdin, terminal) = if tty {
            // libcontainer opens the terminal in the container and sends
            // its master over this socket.
            let console = self.dir.join(format!("console-{id}.sock"));
            let _ = fs::remove_file(&console);
            let listener =
                UnixListener::bind(&console).map_err(|e| format!("console socket: {e}"))?;
            let built = builder
                .with_console_socket(Some(&console))
                .validate_id()
                .map_err(|e| format!("container id {id:?}: {e}"))?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build();
            let _ = fs::remove_file(&console);
            let container = built.map_err(|e| format!("creating container {id}: {e}"))?;
            let master = receive_terminal(&listener)?;
            let out = master.try_clone().map_err(|e| e.to_string())?;
            let input = master.try_clone().map_err(|e| e.to_string())?;
            (container, Some(out), None, Some(input), Some(master))
        } else {
            let io = Stdio::new(keep_stdin)?;
            let container = builder
                .with_stdin(io.child_in)
                .with_stdout(io.child_out)
                .with_stderr(io.child_err)
                .validate_id()
                .map_err(|e| format!("container id {id:?}: {e}"))?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating container {id}: {e}"))?;
            (
                container,
                Some(File::from(io.out)),
                Some(File::from(io.err)),
                io.stdin.map(File::from),
                None,
            )
        };
        let pid = container.pid().map_or(0, |p| p.as_raw());
        let pidfd = Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
        let record = ContainerState {
            id: id.to_owned(),
            pid,
            status: "created".into(),
            exit_code: None,
            started_at: None,
            finished_at: None,
            reason: None,
        };
        self.containers.insert(
            id.to_owned(),
            Tracked {
                container,
                pid,
                pidfd,
                stdout,
                stderr,
                stdin,
                terminal,
                stdin_once,
                log,
                record: record.clone(),
                cgroup,
                rootfs: None,
            },
        );
        Ok(record)
    }

    fn tracked(&mut self, id: &str) -> Result<&mut Tracked, String> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| format!("no container {id} in this shim"))
    }

    fn handle(&mut self, request: Request) -> Response {
        let result: Result<Vec<ContainerState>, String> = match request {
            Request::Create {
                id,
                bundle,
                log,
                layers,
            } => {
                let rootfs = bundle.join("rootfs");
                let mounted = !layers.is_empty();
                let created = if self.containers.contains_key(&id) {
                    Err(format!("container {id} exists"))
                } else if mounted {
                    crate::runtime::rootfs::mount(
                        &layers,
                        &bundle.join("upper"),
                        &bundle.join("work"),
                        &rootfs,
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.create(&id, &bundle, &log))
                } else {
                    self.create(&id, &bundle, &log)
                };
                match created {
                    Ok(record) => {
                        if mounted && let Some(t) = self.containers.get_mut(&id) {
                            t.rootfs = Some(rootfs);
                        }
                        Ok(vec![record])
                    }
                    Err(e) => {
                        if mounted && !self.containers.contains_key(&id) {
                            // Ours (an existing container's was not touched).
                            let _ = crate::runtime::rootfs::unmount(&rootfs);
                        }
                        Err(e)
                    }
                }
            }
            Request::Start { id } => self.tracked(&id).and_then(|t| {
                t.container
                    .start()
                    .map_err(|e| format!("starting {id}: {e}"))?;
                t.record.status = "running".into();
                t.record.started_at = Some(now());
                Ok(vec![t.record.clone()])
            }),
            Request::Kill { id, signal } => self.tracked(&id).and_then(|t| {
                if t.record.status == "exited" {
                    return Ok(vec![t.record.clone()]);
                }
                let sig = libcontainer::signal::Signal::try_from(signal)
                    .map_err(|e| format!("signal {signal}: {e}"))?;
                t.container
                    .kill(sig, true)
                    .map_err(|e| format!("signalling {id}: {e}"))?;
                Ok(vec![t.record.clone()])
            }),
            Request::Delete { id } => match self.containers.remove(&id) {
                Some(mut t) => {
                    let result = t
                        .container
                        .delete(true)
                        .map_err(|e| format!("deleting {id}: {e}"));
                    if t.record.status != "exited" {
                        // Reap it (delete killed it).
                        if let Some(pid) = Pid::from_raw(t.pid) {
                            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                        }
                    }
                    let _ = fs::remove_file(self.exit_path(&id));
                    if let Some(rootfs) = &t.rootfs {
                        let _ = crate::runtime::rootfs::unmount(rootfs);
                    }
                    result.map(|()| Vec::new())
                }
                None => Err(format!("no container {id} in this shim")),
            },
            Request::State => Ok(self.containers.values().map(|t| t.record.clone()).collect()),
            Request::Shutdown => {
                self.shutting_down = true;
                Ok(Vec::new())
            }
            Request::ExecStream { .. } | Request::Attach { .. } | Request::Watch => {
                Err("a stream needs its own connection".into())
            }
        };
        match result {
            Ok(containers) => Response {
                ok: true,
                containers,
                ..Response::default()
            },
            Err(e) => Response {
                ok: false,
                error: Some(e),
                ..Response::default()
            },
        }
    }

    /// Start `args` in running container `id` with stdio for the caller:
    /// the process and the descriptors to hand over.
    fn exec_stream(
        &mut self,
        id: &str,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
        size: Option<(u16, u16)>,
    ) -> Result<(Pid, Vec<OwnedFd>), String> {
        let state_root = self.state_root();
        let n = self.next_exec;
        self.next_exec += 1;
        let dir = self.dir.clone();
        let t = self.tracked(id)?;
        if t.record.status != "running" {
            return Err(format!("container {id} is not running"));
        }
        if args.is_empty() {
            return Err("no command given".into());
        }
        let builder = libcontainer::container::builder::ContainerBuilder::new(
            id.to_owned(),
            libcontainer::syscall::syscall::SyscallType::default(),
        )
        .with_root_path(&state_root)
        .map_err(|e| format!("state dir: {e}"))?;
        if tty {
            // The container's process, with a terminal: libcontainer opens
            // it inside the container (the controlling terminal of the
            // command) and sends its master over the console socket.
            let spec: serde_json::Value = fs::read(t.container.bundle().join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| format!("cannot read the spec of {id}"))?;
            let mut process = spec["process"].clone();
            process["args"] = serde_json::json!(args);
            process["terminal"] = serde_json::json!(true);
            let env = process["env"].as_array_mut();
            if let Some(env) = env
                && !env
                    .iter()
                    .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")))
            {
                env.push(serde_json::json!("TERM=xterm"));
            }
            let process_file = dir.join(format!("exec-{n}.json"));
            fs::write(&process_file, process.to_string()).map_err(|e| e.to_string())?;
            let console = dir.join(format!("console-{n}.sock"));
            let _ = fs::remove_file(&console);
            let listener =
                UnixListener::bind(&console).map_err(|e| format!("console socket: {e}"))?;
            let (width, height) = size.unwrap_or((80, 24));
            let built = builder
                .with_executor(SizedTerminal { width, height })
                .with_console_socket(Some(&console))
                .as_tenant()
                .with_process(Some(&process_file))
                .with_detach(true)
                .build();
            let _ = fs::remove_file(&process_file);
            let _ = fs::remove_file(&console);
            let pid = built.map_err(|e| format!("exec in {id}: {e}"))?;
            let master = OwnedFd::from(receive_terminal(&listener)?);
            let pid = Pid::from_raw(pid.as_raw()).ok_or("exec returned no process")?;
            return Ok((pid, vec![master]));
        }
        let io = Stdio::new(stdin)?;
        let pid = builder
            .with_stdin(io.child_in)
            .with_stdout(io.child_out)
            .with_stderr(io.child_err)
            .as_tenant()
            .with_container_args(args)
            .with_detach(true)
            .build()
            .map_err(|e| format!("exec in {id}: {e}"))?;
        let pid = Pid::from_raw(pid.as_raw()).ok_or("exec returned no process")?;
        let mut fds = vec![io.out, io.err];
        fds.extend(io.stdin);
        Ok((pid, fds))
    }

    /// A shim that died left its containers running without anyone to
    /// read their output or reap them: kill and delete them (and their
    /// old exit records), so the agent starts them again by the pod's
    /// restart policy.
    fn clear_leftovers(&self) {
        let root = self.state_root();
        for e in fs::read_dir(&root).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            match libcontainer::container::Container::load(e.path()) {
                Ok(mut c) => {
                    tracing::warn!(container = %id, "a previous shim left this container; killing it");
                    let _ = c.kill(
                        libcontainer::signal::Signal::try_from(9).expect("SIGKILL"),
                        true,
                    );
                    if c.delete(true).is_err() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
                Err(_) => {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        for e in fs::read_dir(self.dir.join("exits"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_file(e.path());
        }
    }

    /// Reap children nobody waits for: the processes of a libcontainer
    /// exec that failed before its command ran (a missing program) are
    /// left as zombies otherwise.
    fn reap_strays(&self) {
        let me = std::process::id();
        let Ok(children) = fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
            return;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let owned = self.containers.values().any(|t| t.pid == pid)
                || self.sessions.iter().any(|s| s.pid.as_raw_pid() == pid);
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            if !owned
                && zombie
                && let Some(p) = Pid::from_raw(pid)
            {
                let _ = rustix::process::waitpid(Some(p), WaitOptions::NOHANG);
            }
        }
    }

    /// A streaming exec ended: tell its caller how.
    fn end_session(&mut self, index: usize) {
        let s = self.sessions.swap_remove(index);
        let code = rustix::process::waitpid(Some(s.pid), WaitOptions::NOHANG)
            .ok()
            .flatten()
            .map_or(255, |(_, status)| {
                status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255)
            });
        let mut line = serde_json::to_vec(&ExecExit { exit_code: code }).expect("serialises");
        line.push(b'\n');
        let _ = (&s.conn).write_all(&line);
        let _ = s.conn.shutdown(std::net::Shutdown::Both);
    }

    /// Read what attached client `i` sent: stdin, resizes, close. False
    /// when the client is gone.
    fn client_input(&mut self, i: usize) -> bool {
        use crate::api::remotecommand::{CLOSE, RESIZE, STDIN, parse_resize};
        let Some(a) = self.attachments.get_mut(i) else {
            return false;
        };
        let mut buf = [0u8; 32 * 1024];
        let n = match (&a.conn).read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        a.deframer.push(&buf[..n]);
        let (id, may_write) = (a.id.clone(), a.stdin);
        let mut messages = Vec::new();
        while let Some(m) = a.deframer.next_message() {
            messages.push(m);
        }
        let Some(t) = self.containers.get_mut(&id) else {
            return false;
        };
        for (channel, data) in messages {
            match channel {
                STDIN if may_write => {
                    if let Some(f) = &mut t.stdin
                        && f.write_all(&data).is_err()
                    {
                        t.stdin = None;
                    }
                }
                RESIZE => {
                    if let (Some(term), Some((w, h))) = (&t.terminal, parse_resize(&data)) {
                        set_terminal_size(term, w, h);
                    }
                }
                CLOSE
                    if data.first() == Some(&STDIN)
                        && may_write
                        && t.terminal.is_none()
                        && t.stdin_once =>
                {
                    t.stdin = None;
                }
                _ => {}
            }
        }
        true
    }

    /// A client left: with `stdinOnce`, the container's stdin ends with it.
    fn detach(&mut self, a: &Attachment) {
        let _ = a.conn.shutdown(std::net::Shutdown::Both);
        if a.stdin
            && let Some(t) = self.containers.get_mut(&a.id)
            && t.stdin_once
            && t.terminal.is_none()
        {
            t.stdin = None;
        }
    }

    /// The container's init exited: reap it and record how.
    fn reap(&mut self, id: &str) {
        let exit_path = self.exit_path(id);
        let Some(t) = self.containers.get_mut(id) else {
            return;
        };
        t.pidfd = None;
        let code = Pid::from_raw(t.pid)
            .and_then(|pid| {
                rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)
                    .ok()
                    .flatten()
            })
            .map_or(255, |(_, status)| {
                status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255)
            });
        t.record.status = "exited".into();
        t.record.exit_code = Some(code);
        if oom_killed(&t.cgroup) {
            t.record.reason = Some("OOMKilled".into());
        }
        t.record.finished_at = Some(now());
        if let Ok(bytes) = serde_json::to_vec(&t.record) {
            let _ = fs::write(&exit_path, bytes);
        }
        // Attached clients get the end (a success, as the kubelet says:
        // kubectl reads the exit code from the pod's status).
        let status = crate::api::remotecommand::exit_status(0);
        let frame = crate::api::remotecommand::frame(crate::api::remotecommand::ERROR, &status);
        self.attachments.retain(|a| {
            if a.id != id {
                return true;
            }
            let _ = (&a.conn).write_all(&frame);
            let _ = a.conn.shutdown(std::net::Shutdown::Both);
            false
        });
        // Watchers that cannot take a line (gone, or not reading) are dropped.
        self.watchers.retain(|w| (&*w).write_all(b"\n").is_ok());
    }
}

/// Run the shim in `dir` until it is told to shut down and has no
/// containers left. The shim first creates the pod's namespaces asked for
/// (or joins them, after a restart) and lives in them; with `hide`, it
/// then takes a mount namespace of its own without the mounts under those
/// directories but those under `keep` (see [`crate::runtime::mountns::isolate`]).
/// With `listener_on_stdin`, it serves the listening socket its parent
/// bound at `<dir>/shim.sock` and passed as stdin (see [`listen`]), else
/// it binds that socket itself.
///
/// # Errors
/// The namespace, the socket or polling fails.
pub fn run(
    dir: &Path,
    namespaces: &crate::runtime::netns::PodNamespaces<'_>,
    hide: &[PathBuf],
    keep: &[PathBuf],
    listener_on_stdin: bool,
    pidns: Option<&Path>,
    log_limits: LogLimits,
) -> Result<(), Error> {
    crate::runtime::netns::create_or_join_pod(namespaces)
        .map_err(io_err("creating the pod's namespaces"))?;
    if !hide.is_empty() {
        crate::runtime::mountns::isolate(hide, keep)
            .map_err(io_err("taking a mount namespace of its own"))?;
    }
    if let Some(pin) = pidns {
        // After the mount namespace: the pin is the shim's alone and goes
        // with it, as the holder does.
        crate::runtime::netns::spawn_pid_holder(pin)
            .map_err(io_err("starting the pod's shared PID namespace"))?;
    }
    fs::create_dir_all(dir.join("exits")).map_err(io_err(format!("creating {}", dir.display())))?;
    let listener = if listener_on_stdin {
        take_stdin_listener().map_err(io_err("taking the listening socket on stdin"))?
    } else {
        let socket = dir.join("shim.sock");
        let _ = fs::remove_file(&socket);
        UnixListener::bind(&socket).map_err(io_err(format!("binding {}", socket.display())))?
    };
    fs::write(dir.join("shim.pid"), std::process::id().to_string())
        .map_err(io_err("writing shim.pid"))?;
    let mut shim = Shim {
        dir: dir.to_owned(),
        containers: BTreeMap::new(),
        sessions: Vec::new(),
        attachments: Vec::new(),
        watchers: Vec::new(),
        next_exec: 0,
        shutting_down: false,
        log_limits,
    };
    shim.clear_leftovers();
    tracing::info!(dir = %dir.display(), pid = std::process::id(), "orch shim ready");
    loop {
        if shim.shutting_down && shim.containers.is_empty() {
            break;
        }
        // What to watch: (container id, which) per poll entry after the listener.
        #[derive(Clone, Copy)]
        enum Kind {
            Out,
            Err,
            Exit,
            Session,
            /// A session's caller hung up.
            Caller,
            Client,
            Watcher,
        }
        let mut keys: Vec<(String, Kind)> = Vec::new();
        let mut ready: Vec<bool> = Vec::new();
        let listener_ready;
        {
            let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
            for (id, t) in &shim.containers {
                if let Some(f) = &t.stdout {
                    fds.push(PollFd::from_borrowed_fd(f.as_fd(), PollFlags::IN));
                    keys.push((id.clone(), Kind::Out));
                }
                if let Some(f) = &t.stderr {
                    fds.push(PollFd::from_borrowed_fd(f.as_fd(), PollFlags::IN));
                    keys.push((id.clone(), Kind::Err));
                }
                if let Some(fd) = &t.pidfd {
                    fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
                    keys.push((id.clone(), Kind::Exit));
                }
            }
            for (i, a) in shim.attachments.iter().enumerate() {
                fds.push(PollFd::from_borrowed_fd(a.conn.as_fd(), PollFlags::IN));
                keys.push((i.to_string(), Kind::Client));
            }
            for (i, session) in shim.sessions.iter().enumerate() {
                fds.push(PollFd::from_borrowed_fd(
                    session.pidfd.as_fd(),
                    PollFlags::IN,
                ));
                keys.push((i.to_string(), Kind::Session));
                if session.kill_on_hangup {
                    // Its caller sends nothing: readable means gone.
                    fds.push(PollFd::from_borrowed_fd(
                        session.conn.as_fd(),
                        PollFlags::IN,
                    ));
                    keys.push((i.to_string(), Kind::Caller));
                }
            }
            // A watcher's end only ever becomes readable when it hangs up.
            for (i, w) in shim.watchers.iter().enumerate() {
                fds.push(PollFd::from_borrowed_fd(w.as_fd(), PollFlags::IN));
                keys.push((i.to_string(), Kind::Watcher));
            }
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_err("poll")(errno(e))),
            }
            listener_ready = !fds[0].revents().is_empty();
            ready.extend(fds[1..].iter().map(|f| !f.revents().is_empty()));
        }
        // Output first, so a container's last words are logged before its exit.
        for ((id, kind), _) in keys.iter().zip(&ready).filter(|(_, r)| **r) {
            let Some(t) = shim.containers.get_mut(id) else {
                continue;
            };
            let (pipe, stream) = match kind {
                Kind::Out => (&mut t.stdout, Stream::Stdout),
                Kind::Err => (&mut t.stderr, Stream::Stderr),
                Kind::Exit | Kind::Session | Kind::Caller | Kind::Client | Kind::Watcher => {
                    continue;
                }
            };
            let mut buf = [0u8; 64 * 1024];
            let n = pipe
                .as_mut()
                .map_or(Ok(0), |f| f.read(&mut buf))
                .unwrap_or(0);
            if n == 0 {
                *pipe = None;
                let _ = t.log.close_stream(stream);
            } else {
                if let Err(e) = t.log.write(stream, &buf[..n]) {
                    tracing::warn!(container = %id, %e, "cannot write the container log");
                }
                let channel = if matches!(kind, Kind::Out) {
                    crate::api::remotecommand::STDOUT
                } else {
                    crate::api::remotecommand::STDERR
                };
                let frame = crate::api::remotecommand::frame(channel, &buf[..n]);
                // A client that cannot keep up is dropped, not waited for.
                shim.attachments
                    .retain(|a| a.id != *id || (&a.conn).write_all(&frame).is_ok());
            }
        }
        // Attached clients' input, and clients that left.
        let mut gone: Vec<usize> = Vec::new();
        for ((i, kind), _) in keys.iter().zip(&ready).filter(|(_, r)| **r) {
            if !matches!(kind, Kind::Client) {
                continue;
            }
            let Ok(i) = i.parse::<usize>() else { continue };
            if !shim.client_input(i) {
                gone.push(i);
            }
        }
        gone.sort_unstable_by(|a, b| b.cmp(a));
        for i in gone {
            let a = shim.attachments.swap_remove(i);
            shim.detach(&a);
        }
        for ((id, kind), _) in keys.iter().zip(&ready).filter(|(_, r)| **r) {
            if matches!(kind, Kind::Exit) {
                shim.reap(id);
            }
        }
        // Sessions whose caller gave up (a probe's timeout): end the
        // command; its exit ends the session on a later turn.
        for ((i, kind), _) in keys.iter().zip(&ready).filter(|(_, r)| **r) {
            if matches!(kind, Kind::Caller)
                && let Some(s) = i.parse::<usize>().ok().and_then(|i| shim.sessions.get(i))
            {
                let _ = rustix::process::kill_process(s.pid, rustix::process::Signal::KILL);
            }
        }
        // Ended sessions, highest index first (they are swap-removed).
        let mut ended: Vec<usize> = keys
            .iter()
            .zip(&ready)
            .filter(|((_, kind), r)| **r && matches!(kind, Kind::Session))
            .filter_map(|((i, _), _)| i.parse().ok())
            .collect();
        ended.sort_unstable_by(|a, b| b.cmp(a));
        for i in ended {
            shim.end_session(i);
        }
        let mut hung_up: Vec<usize> = keys
            .iter()
            .zip(&ready)
            .filter(|((_, kind), r)| **r && matches!(kind, Kind::Watcher))
            .filter_map(|((i, _), _)| i.parse().ok())
            .collect();
        hung_up.sort_unstable_by(|a, b| b.cmp(a));
        for i in hung_up {
            shim.watchers.swap_remove(i);
        }
        if listener_ready && let Ok((stream, _)) = listener.accept() {
            serve(&mut shim, stream);
            shim.reap_strays();
        }
    }
    let _ = fs::remove_file(dir.join("shim.sock"));
    tracing::info!("orch shim exiting: no containers left");
    Ok(())
}

/// Did the OOM killer kill a process in this cgroup? (`oom_kill` in
/// memory.events on v2, memory.oom_control on v1.)
/// Set the pod's sysctls ([`crate::runtime::spec::ANNOTATION_SYSCTLS`]) where the
/// shim is: in the pod's network and IPC namespaces, which /proc/sys
/// shows to whoever writes it.
fn set_sysctls(spec: &serde_json::Value) -> Result<(), String> {
    let Some(text) = spec["annotations"][crate::runtime::spec::ANNOTATION_SYSCTLS].as_str() else {
        return Ok(());
    };
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("sysctls annotation: {e}"))?;
    for (name, value) in map {
        if name.contains("..") || name.starts_with('.') {
            return Err(format!("sysctl {name:?}: not a sysctl name"));
        }
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        fs::write(&path, value.as_str().unwrap_or_default())
            .map_err(|e| format!("sysctl {name}: {e}"))?;
    }
    Ok(())
}

fn oom_killed(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    if rel.is_empty() {
        return false;
    }
    let root = Path::new("/sys/fs/cgroup");
    let files = [
        root.join(rel).join("memory.events"),
        root.join("memory").join(rel).join("memory.oom_control"),
    ];
    files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

fn serve(shim: &mut Shim, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    let response = match reader.read_line(&mut line) {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::ExecStream {
                id,
                args,
                tty,
                stdin,
                size,
                kill_on_hangup,
            }) => {
                drop(reader);
                return serve_exec(
                    shim,
                    stream,
                    &id,
                    ExecArgs {
                        args,
                        tty,
                        stdin,
                        size,
                        kill_on_hangup,
                    },
                );
            }
            Ok(Request::Attach { id, stdin }) => {
                drop(reader);
                return serve_attach(shim, stream, id, stdin);
            }
            Ok(Request::Watch) => {
                drop(reader);
                let mut out = serde_json::to_vec(&Response {
                    ok: true,
                    ..Response::default()
                })
                .expect("responses serialise");
                out.push(b'\n');
                // Never wait on a watcher: a full buffer drops it instead.
                if (&stream).write_all(&out).is_ok() && stream.set_nonblocking(true).is_ok() {
                    shim.watchers.push(stream);
                }
                return;
            }
            Ok(request) => shim.handle(request),
            Err(e) => Response {
                ok: false,
                error: Some(format!("bad request: {e}")),
                ..Response::default()
            },
        },
        Err(e) => Response {
            ok: false,
            error: Some(format!("reading the request: {e}")),
            ..Response::default()
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialise");
    out.push(b'\n');
    let _ = (&stream).write_all(&out);
    // A container created but not started holds a copy of this socket
    // until it execs: shut the connection down rather than rely on close.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Take a client attaching to container `id` (see [`Request::Attach`]).
fn serve_attach(shim: &mut Shim, stream: UnixStream, id: String, stdin: bool) {
    let refusal = match shim.containers.get(&id) {
        None => Some(format!("no container {id} in this shim")),
        Some(t) if t.record.status == "exited" => Some(format!("container {id} has exited")),
        Some(t) if stdin && t.stdin.is_none() => Some(format!(
            "container {id} does not keep stdin open (stdin: true in its spec, or stdinOnce and it was used)"
        )),
        Some(_) => None,
    };
    let response = match &refusal {
        Some(e) => Response {
            ok: false,
            error: Some(e.clone()),
            ..Response::default()
        },
        None => Response {
            ok: true,
            ..Response::default()
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialise");
    out.push(b'\n');
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if (&stream).write_all(&out).is_err() || refusal.is_some() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    shim.attachments.push(Attachment {
        id,
        conn: stream,
        stdin,
        deframer: crate::api::remotecommand::Deframer::default(),
    });
}

/// The terminal master libcontainer sent to the console socket `listener`
/// (it has been sent by the time the container is built).
fn receive_terminal(listener: &UnixListener) -> Result<File, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("the container sent no terminal: {e}"))?;
    let mut name = [0u8; 256];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &conn,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving the terminal: {e}"))?;
    control
        .drain()
        .find_map(|m| match m {
            rustix::net::RecvAncillaryMessage::ScmRights(mut r) => r.next(),
            _ => None,
        })
        .map(File::from)
        .ok_or_else(|| "the container sent no terminal".to_owned())
}

/// Answer an exec stream with its descriptors and keep the connection
/// for the exit line.
/// What a streaming exec asks for.
struct ExecArgs {
    args: Vec<String>,
    tty: bool,
    stdin: bool,
    size: Option<(u16, u16)>,
    kill_on_hangup: bool,
}

fn serve_exec(shim: &mut Shim, stream: UnixStream, id: &str, exec: ExecArgs) {
    let ExecArgs {
        args,
        tty,
        stdin,
        size,
        kill_on_hangup,
    } = exec;
    let started = shim.exec_stream(id, args, tty, stdin, size);
    let (response, fds, pid) = match started {
        Ok((pid, fds)) => (
            Response {
                ok: true,
                ..Response::default()
            },
            fds,
            Some(pid),
        ),
        Err(e) => (
            Response {
                ok: false,
                error: Some(e),
                ..Response::default()
            },
            Vec::new(),
            None,
        ),
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialise");
    out.push(b'\n');
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed));
    }
    let sent = rustix::net::sendmsg(
        &stream,
        &[io::IoSlice::new(&out)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    );
    // Our copies go: the caller and the command hold the ends now.
    drop(fds);
    let Some(pid) = pid else {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    };
    match (sent, rustix::process::pidfd_open(pid, PidfdFlags::empty())) {
        (Ok(_), Ok(pidfd)) => shim.sessions.push(Session {
            pid,
            pidfd,
            conn: stream,
            kill_on_hangup,
        }),
        _ => {
            // The caller is gone or the process is: do not leave it behind.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}
