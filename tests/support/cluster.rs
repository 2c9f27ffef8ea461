//! The one cluster fixture: a real `orch server` in a temp dir on a free
//! port — on the machine, in a network namespace (the test's, or one of
//! its own with an agent beside the server), or on a LAN of network
//! namespaces with agents joined to it — and kubectl pointed at it.
//!
//! Built with [`Cluster::builder`]; everything it started (agents and
//! their pods, the server, the namespaces) is stopped and removed when it
//! is dropped, also when the test failed.
//!
//! ```no_run
//! // A node `node-a` beside the server, in a namespace of their own:
//! let mut server = Cluster::builder().own_netns("probes").loopback_agent(&[]).start();
//! let (data, run_dir, logs) = server.node_dirs("node-a");
//! server.agent("node-a").kill_and_restart();
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::agents::{Agent, agent_dirs};
use super::{Netns, ORCH, in_netns, kubectl_path, require_root, wait};

/// Fills a server's data dir before it starts.
type Prepare<'a> = Box<dyn FnOnce(&Path) + 'a>;

/// What a [`Cluster`] is made of; [`Builder::start`] makes it.
#[derive(Default)]
pub struct Builder<'a> {
    flags: Vec<String>,
    netns: Option<String>,
    own_netns: Option<String>,
    loopback_agent: bool,
    embedded_agent: bool,
    prepare: Option<Prepare<'a>>,
    lan: Option<(String, String)>,
    agents: usize,
    agent_flags: Vec<String>,
}

impl<'a> Builder<'a> {
    /// Extra `orch server` flags.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// Run the server (and kubectl) in `/run/netns/<netns>`, a namespace
    /// the test made.
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// Run the server (and kubectl) in a network namespace of the
    /// cluster's own, `orch-test-<tag>-<pid>` (its machine `server`, see
    /// [`Cluster::host`]), removed after the server when the cluster is
    /// dropped. `tag` must be unique among the tests of one file.
    pub fn own_netns(mut self, tag: &str) -> Self {
        self.own_netns = Some(tag.to_owned());
        self
    }

    /// Join one agent, node `node-a`, beside the server: in the server's
    /// namespace, dialing it over loopback (`--node-ip 127.0.0.1` unless
    /// `flags` name one), its state under [`Cluster::node_dir`] with the
    /// busybox test image imported, and `flags` added. Unlike
    /// [`Builder::embedded_agent`] it joins the way a remote agent does
    /// (its own process, token and certificate); reach it with
    /// [`Cluster::agent`]. Needs [`Builder::own_netns`]: an agent makes
    /// bridges and nftables rules, never in the machine's namespace.
    pub fn loopback_agent(mut self, flags: &[&str]) -> Self {
        self.loopback_agent = true;
        self.agent_flags = flags.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// Keep the server's embedded agent (by default it runs with
    /// `--disable-agent`); `prepare` fills its data dir first (e.g.
    /// images to import).
    pub fn embedded_agent(mut self, prepare: impl FnOnce(&Path) + 'a) -> Self {
        self.embedded_agent = true;
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Put the cluster on a LAN of network namespaces, `<prefix>.0/24`
    /// (see [`Lan`]): the server on machine `server`, `<prefix>.1`, bound
    /// there unless the flags say otherwise. `tag` names the namespaces
    /// and must be unique among the tests of one file.
    pub fn lan(mut self, tag: &str, prefix: &str) -> Self {
        self.lan = Some((tag.to_owned(), prefix.to_owned()));
        self
    }

    /// Join `count` agents, nodes `n1`…, each on a machine of the LAN
    /// (`<prefix>.11`…, its `--node-ip`), with the busybox test image
    /// imported and `flags` added. Needs [`Builder::lan`].
    pub fn agents(mut self, count: usize, flags: &[&str]) -> Self {
        self.agents = count;
        self.agent_flags = flags.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// Start the server, wait until it is ready, join the agents (not
    /// waiting for their nodes: tests say which state they need).
    ///
    /// # Panics
    /// When the server is not ready within 30 s (with what it logged), a
    /// namespace or agent is asked for without root, or the builder asks
    /// for two places for the server or an agent without its namespace.
    pub fn start(self) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(prepare) = self.prepare {
            prepare(dir.path());
        }
        let mut hosts = Vec::new();
        let mut lan = None;
        let mut flags = self.flags;
        let mut netns = self.netns;
        let places = [
            netns.is_some(),
            self.own_netns.is_some(),
            self.lan.is_some(),
        ];
        assert!(
            places.iter().filter(|p| **p).count() <= 1,
            "the server runs in one place: Builder::in_netns, own_netns or lan"
        );
        assert!(
            !self.loopback_agent || self.own_netns.is_some(),
            "an agent beside the server needs its namespace (Builder::own_netns)"
        );
        if let Some(tag) = &self.own_netns {
            let ns = Netns::new(tag);
            netns = Some(ns.0.clone());
            hosts.push(("server".to_owned(), ns));
        }
        if let Some((tag, prefix)) = &self.lan {
            let l = Lan::new(tag, prefix);
            let server = l.machine("server", 1);
            netns = Some(server.0.clone());
            if !flags.iter().any(|f| f == "--bind-address") {
                flags.extend(["--bind-address".into(), l.ip(1)]);
            }
            hosts.push(("server".to_owned(), server));
            lan = Some(l);
        }
        assert!(
            self.agents == 0 || lan.is_some(),
            "joined agents need a LAN (Builder::lan)"
        );
        let (child, log) = spawn_server(dir.path(), &flags, netns.as_deref(), self.embedded_agent);
        let mut cluster = Cluster {
            agents: Vec::new(),
            child,
            netns,
            kubeconfig: dir.path().join("kubeconfig.yaml"),
            dir,
            log,
            flags,
            embedded_agent: self.embedded_agent,
            nodes: None,
            agent_flags: self.agent_flags,
            hosts,
            lan,
        };
        for i in 1..=self.agents {
            cluster.join(&format!("n{i}"));
        }
        if self.loopback_agent
            && let Some(tag) = &self.own_netns
        {
            cluster.join_beside(tag);
        }
        cluster
    }
}

/// A running cluster; see the module docs. Fields drop in this order:
/// agents (and their pods), then the server, then the namespaces.
pub struct Cluster {
    agents: Vec<Agent>,
    child: Child,
    /// The network namespace the server (and kubectl) run in, if any.
    pub netns: Option<String>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    /// Lines the server logged (collected in the background).
    pub log: mpsc::Receiver<String>,
    flags: Vec<String>,
    embedded_agent: bool,
    /// The joined agents' state, `<nodes>/<node>/{agent,run,logs}`.
    nodes: Option<tempfile::TempDir>,
    agent_flags: Vec<String>,
    hosts: Vec<(String, Netns)>,
    lan: Option<Lan>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first: their pods go while the namespaces still exist.
        self.agents.clear();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The embedded agent's pods, mounts and namespace pins (its data
        // dir is the server's; `run/` beside it).
        if self.embedded_agent {
            let dir = self.dir.path();
            super::agents::cleanup(&dir.join("run"), dir, &[]);
        }
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

/// `orch server` on `dir`, once it logged that it is ready: the child and
/// the rest of its log.
fn spawn_server(
    dir: &Path,
    flags: &[String],
    netns: Option<&str>,
    embedded_agent: bool,
) -> (Child, mpsc::Receiver<String>) {
    let has = |flag: &str| flags.iter().any(|f| f == flag);
    let mut child = in_netns(netns, ORCH)
        .arg("server")
        .args((!embedded_agent).then_some("--disable-agent"))
        .args(if has("--bind-address") {
            &[][..]
        } else {
            &["--bind-address", "127.0.0.1"][..]
        })
        .arg("--data-dir")
        .arg(dir)
        .arg("--write-kubeconfig")
        .arg(dir.join("kubeconfig.yaml"))
        .args(flags)
        // A free port unless the test picked one.
        .args(if has("--https-listen-port") {
            &[][..]
        } else {
            &["--https-listen-port", "0"][..]
        })
        .env("RUST_LOG", "info")
        .env_remove("ORCH_LOG_LEVEL")
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
    (child, rx)
}

impl Cluster {
    pub fn builder<'a>() -> Builder<'a> {
        Builder::default()
    }

    /// A server alone (`--disable-agent`) on 127.0.0.1.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Start with extra `orch server` flags.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::builder().flags(extra).start()
    }

    /// Start a server inside the network namespace `/run/netns/<netns>`.
    pub fn start_in_netns(netns: &str, extra: &[&str]) -> Self {
        Self::builder().in_netns(netns).flags(extra).start()
    }

    /// Start a server with its embedded agent in `/run/netns/<netns>`,
    /// after `prepare` has filled its data dir (e.g. images to import).
    pub fn start_with_agent(netns: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        Self::builder()
            .in_netns(netns)
            .flags(extra)
            .embedded_agent(prepare)
            .start()
    }

    /// Stop this server (SIGKILL) and start a new one on the same data dir
    /// with `extra` instead of the flags it had.
    pub fn restart(self, extra: &[&str]) -> Self {
        self.restart_with(extra, |_| ()).0
    }

    /// Stop the server, run `between` while it is down (it gets the
    /// stopped server, for its paths), start it again on the same data dir
    /// with `extra` instead of the flags it had (the LAN's bind address
    /// stays). Joined agents keep running.
    pub fn restart_with<T>(
        mut self,
        extra: &[&str],
        between: impl FnOnce(&Self) -> T,
    ) -> (Self, T) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let got = between(&self);
        let mut flags: Vec<String> = extra.iter().map(|f| (*f).to_owned()).collect();
        if let Some(lan) = &self.lan
            && !extra.contains(&"--bind-address")
        {
            flags.extend(["--bind-address".into(), lan.ip(1)]);
        }
        let (child, log) = spawn_server(
            self.dir.path(),
            &flags,
            self.netns.as_deref(),
            self.embedded_agent,
        );
        self.child = child;
        self.log = log;
        self.flags = flags;
        (self, got)
    }

    /// SIGTERM the server and wait (up to `within`) for it to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        wait::until(within, "the orch server exits after SIGTERM", || {
            self.child.try_wait().expect("wait for orch server")
        })
    }

    /// The server process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Is the server process still running?
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("wait for orch server")
            .is_none()
    }

    /// The LAN the cluster is on.
    ///
    /// # Panics
    /// When it was built without [`Builder::lan`].
    pub fn lan(&self) -> &Lan {
        self.lan
            .as_ref()
            .expect("a cluster built with Builder::lan")
    }

    /// The network namespace of machine `name` the cluster made: `server`
    /// (with [`Builder::own_netns`] or [`Builder::lan`]), or LAN machine
    /// `n1`, ….
    pub fn host(&self, name: &str) -> &Netns {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no machine {name} in this cluster"))
    }

    /// The state dir of joined node `node`: `agent/` (its data dir),
    /// `run/`, `logs/`.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.nodes
            .as_ref()
            .expect("a cluster with joined agents")
            .path()
            .join(node)
    }

    /// Joined node `node`'s data dir, run dir and pod log dir (`agent/`,
    /// `run/`, `logs/` in its [`Cluster::node_dir`]).
    pub fn node_dirs(&self, node: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = self.node_dir(node);
        (dir.join("agent"), dir.join("run"), dir.join("logs"))
    }

    /// The agent of joined node `node`.
    pub fn agent(&mut self, node: &str) -> &mut Agent {
        self.agents
            .iter_mut()
            .find(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent for node {node}"))
    }

    /// Stop node `node`'s agent and remove what its pods left (its state
    /// dir stays, for [`Cluster::join`]).
    pub fn leave(&mut self, node: &str) {
        self.agents.retain(|a| a.node != node);
    }

    /// Join node `n<i>` (again): an agent on LAN machine `n<i>`
    /// (`<prefix>.<10 + i>`, made if missing) with the builder's agent
    /// flags, its state under [`Cluster::node_dir`] (busybox imported the
    /// first time).
    pub fn join(&mut self, node: &str) {
        let i: u8 = node
            .strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("joined nodes are n1, n2, …; not {node}"));
        if !self.hosts.iter().any(|(n, _)| n == node) {
            let host = self.lan().machine(node, 10 + i);
            self.hosts.push((node.to_owned(), host));
        }
        let (data, run, logs) = self.make_node_dirs(node);
        let ip = self.lan().ip(10 + i);
        let mut extra = vec!["--node-ip".to_owned(), ip];
        extra.extend(self.agent_flags.iter().cloned());
        let agent = Agent::join(super::agents::Join {
            url: self.lan_url(),
            token_file: self.token_file(),
            netns: self.host(node).0.clone(),
            data,
            run_dir: run,
            logs,
            tag: format!("{}-{node}", self.lan().tag),
            node: node.to_owned(),
            extra,
            stderr: Stdio::inherit(),
        });
        self.agents.push(agent);
    }

    /// Join node `node-a` beside the server ([`Builder::loopback_agent`]);
    /// `tag` names its cgroup parent.
    fn join_beside(&mut self, tag: &str) {
        let node = "node-a";
        let (data, run_dir, logs) = self.make_node_dirs(node);
        let agent = Agent::join(super::agents::Join {
            url: self.url(),
            token_file: self.token_file(),
            netns: self.host("server").0.clone(),
            data,
            run_dir,
            logs,
            tag: tag.to_owned(),
            node: node.to_owned(),
            extra: self.agent_flags.clone(),
            stderr: Stdio::inherit(),
        });
        self.agents.push(agent);
    }

    /// [`Cluster::node_dirs`], made with busybox imported the first time
    /// node `node` joins.
    fn make_node_dirs(&mut self, node: &str) -> (PathBuf, PathBuf, PathBuf) {
        let nodes = self
            .nodes
            .get_or_insert_with(|| tempfile::tempdir().expect("temp dir"));
        let dir = nodes.path().join(node);
        if dir.exists() {
            self.node_dirs(node)
        } else {
            agent_dirs(&dir)
        }
    }

    /// The API's URL on the LAN: the server machine's address.
    pub fn lan_url(&self) -> String {
        format!("https://{}:{}", self.lan().ip(1), self.port())
    }

    /// The join token's file.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("server/token")
    }

    /// The port the API listens on.
    pub fn port(&self) -> u16 {
        self.url()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("a port in the server URL")
    }

    /// Run `kubectl` of `version` ("" for the dispatcher) against the server.
    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_env(version, args, &[])
    }

    /// `kubectl` of `version` against the server, to spawn (follows,
    /// watches).
    pub fn kubectl_command(&self, version: &str, args: &[&str]) -> Command {
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

    /// A kubeconfig for the server with no credentials of its own (the
    /// admin one presents a client certificate, which would win over
    /// `--token`): requests through it are anonymous unless a `--token`
    /// or certificate is given.
    pub fn bare_kubeconfig(&self) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("admin kubeconfig");
        let bare: Vec<&str> = admin
            .lines()
            .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
            .collect();
        self.write(
            "bare.kubeconfig",
            &format!("{}\n    {{}}\n", bare.join("\n")),
        )
    }

    /// kubectl 1.33 as the holder of `token`. (Without any credential
    /// kubectl asks for a user name, so anonymous requests are curl's.)
    pub fn kubectl_as(&self, token: &str, args: &[&str]) -> Output {
        let bare = self.bare_kubeconfig();
        let flag = format!("--token={token}");
        let mut full = vec!["--kubeconfig", bare.to_str().expect("utf-8 path"), &flag];
        full.extend_from_slice(args);
        self.kubectl("1.33", &full)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Join `count` simulated nodes named `<prefix>-sim-<i>`, and wait until
    /// they are registered.
    pub fn simulate(&self, prefix: &str, count: usize, extra: &[&str]) -> SimulatedNodes {
        let child = Command::new(ORCH)
            .args(["agent", "--server", &self.url(), "--token-file"])
            .arg(self.token_file())
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

/// `orch agent --simulate` joined to a test server; stopped when dropped.
pub struct SimulatedNodes(Child);

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Machines on one L2 segment, with no default route anywhere: a switch
/// namespace holding a bridge, and each machine a namespace joined to it
/// by a veth pair (`eth0` inside, `<prefix>.<host>/24`). The switch goes
/// when dropped; each machine when its [`Netns`] is.
pub struct Lan {
    switch: Netns,
    tag: String,
    prefix: String,
}

impl Lan {
    /// A LAN `<prefix>.0/24`; `tag` names its namespaces.
    pub fn new(tag: &str, prefix: &str) -> Self {
        let switch = Netns::new(&format!("{tag}-sw"));
        ip(&["-n", &switch.0, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch.0, "link", "set", "br0", "up"]);
        Lan {
            switch,
            tag: tag.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>.<host>`.
    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// A machine `name` with address `<prefix>.<host>`.
    pub fn machine(&self, name: &str, host: u8) -> Netns {
        let ns = Netns::new(&format!("{}-{name}", self.tag));
        let port = format!("p{host}");
        ip(&[
            "-n",
            &self.switch.0,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.0,
        ]);
        ip(&[
            "-n",
            &self.switch.0,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{}/24", self.ip(host)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        ns
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    require_root("ip links and addresses in test network namespaces");
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
