//! A real node: `orch server` and `orch agent` in a network namespace the
//! test creates, pods running busybox through the shim and libcontainer,
//! driven by kubectl. Needs root.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agents::{Agent, agent_dirs, cgroup_root, import_busybox, is_ready};
use support::{Netns, TestServer, in_netns};

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// The cgroup tags of this file's agents.
const TAGS: &[&str] = &[
    "a",
    "embedded",
    "probes",
    "config",
    "lifecycle",
    "restart",
    "registry",
    "exec",
    "sa",
    "join",
    "tokens",
    "restartlate",
    "examples",
    "logs",
    "pfwd",
];

/// Whatever a test left: every container, shim, mount, netns and cgroup.
fn cleanup(run_dir: &Path, data: &Path) {
    support::agents::cleanup(run_dir, data, TAGS);
}

/// `kubectl logs …`, retried while the node's tunnel comes back.
fn wait_logs(server: &TestServer, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.kubectl("1.33", args);
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod(name: &str, command: &str, policy: &str, grace: u32) -> String {
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

#[test]
fn pods_really_run_exit_restart_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("agent");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let mut agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "a");
    let node = server.wait_json(&["get", "node", "node-a"], 30, "the node Ready", is_ready);
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("orch://")
    );
    assert!(
        node["status"]["capacity"]["cpu"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );

    // Runs to completion: Succeeded, exit 0, its output in the CRI log.
    let file = server.write(
        "ok.yaml",
        &pod("ok", "echo hello from $WHO on $(hostname)", "Never", 30),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let ok = server.wait_json(&["get", "pod", "ok"], 60, "ok Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let term = &ok["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0, "{ok}");
    assert_eq!(term["reason"], "Completed");
    assert!(
        ok["status"]["containerStatuses"][0]["imageID"]
            .as_str()
            .unwrap()
            .contains("@sha256:")
    );
    let uid = ok["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(logs.join(format!("default_ok_{uid}/main/0.log"))).unwrap();
    assert!(log.contains(" stdout F hello from ok on ok"), "{log}");
    // kubectl logs, through the tunnel the agent opened.
    let logs_out = server.ok("1.33", &["logs", "ok"]);
    assert_eq!(logs_out, "hello from ok on ok\n");
    let stamped = server.ok("1.33", &["logs", "ok", "--timestamps"]);
    assert!(
        stamped.ends_with(" hello from ok on ok\n") && stamped.len() > 30,
        "{stamped}"
    );

    // Fails: Failed with the exit code.
    let file = server.write("bad.yaml", &pod("bad", "exit 3", "Never", 30));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let bad = server.wait_json(&["get", "pod", "bad"], 60, "bad Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(
        bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );

    // OnFailure: the first exit restarts at once (as upstream); the count
    // shows.
    let restarts = |p: &serde_json::Value| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
    };
    let file = server.write("flaky.yaml", &pod("flaky", "exit 1", "OnFailure", 30));
    let t0 = Instant::now();
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let flaky = server.wait_json(&["get", "pod", "flaky"], 60, "a restart", |p| {
        restarts(p) >= 1
    });
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "the first restart waited a back-off: {:?}",
        t0.elapsed()
    );
    assert_eq!(flaky["status"]["phase"], "Running", "still trying: {flaky}");
    // Follow: the output as it comes, ending when the container does.
    let file = server.write(
        "ticker.yaml",
        &pod(
            "ticker",
            "for i in 1 2 3; do echo tick $i; sleep 1; done",
            "Never",
            30,
        ),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "ticker"], 30, "ticker started", |p| {
        p["status"]["phase"] == "Running" || p["status"]["phase"] == "Succeeded"
    });
    let t0 = Instant::now();
    let followed = server.ok("1.33", &["logs", "-f", "ticker"]);
    assert_eq!(followed, "tick 1\ntick 2\ntick 3\n");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "follow did not end with the container"
    );
    assert_eq!(
        server.ok("1.33", &["logs", "ticker", "--tail=1"]),
        "tick 3\n"
    );
    let err = server.fails("1.33", &["logs", "ticker", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod ticker"),
        "{err}"
    );
    server.ok("1.33", &["delete", "pod", "ticker", "--timeout=60s"]);

    // Crashing again and again: CrashLoopBackOff, each wait longer than
    // the last (10 s, then 20 s).
    let looping = server.wait_json(&["get", "pod", "flaky"], 30, "CrashLoopBackOff", |p| {
        waiting(p).0 == "CrashLoopBackOff"
    });
    let n = restarts(&looping);
    let delay = |p: &serde_json::Value| -> u64 {
        let (_, message) = waiting(p);
        message
            .strip_prefix("back-off ")
            .and_then(|m| m.split_once("s restarting failed container=main pod=flaky"))
            .and_then(|(secs, _)| secs.parse().ok())
            .unwrap_or_else(|| panic!("a back-off message: {p}"))
    };
    // 10 s, unless this machine was slow enough that the next one runs.
    let first = delay(&looping);
    assert!(first == 10 || first == 20, "{looping}");
    let table = server.ok("1.33", &["get", "pod", "flaky"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=flaky",
        ],
    );
    assert!(
        events.contains("Back-off restarting failed container main in pod flaky_default"),
        "{events}"
    );
    let next = server.wait_json(
        &["get", "pod", "flaky"],
        first + 30,
        "the next restart's back-off",
        |p| restarts(p) > n && waiting(p).0 == "CrashLoopBackOff",
    );
    assert_eq!(delay(&next), first * 2, "the back-off doubles: {next}");
    let time = |p: &serde_json::Value, field: &str| -> jiff::Timestamp {
        p["status"]["containerStatuses"][0]["lastState"]["terminated"][field]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("lastState.terminated.{field}: {e}: {p}"))
    };
    let waited = time(&next, "startedAt").duration_since(time(&looping, "finishedAt"));
    assert!(
        waited.as_secs() >= first as i64 - 1,
        "restarted {waited:?} after the exit, not after the {first} s back-off"
    );

    // Long-running: Running and Ready; survives an agent kill -9.
    let file = server.write(
        "long.yaml",
        &pod(
            "long",
            "echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
            "Always",
            2,
        ),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let long = server.wait_json(&["get", "pod", "long"], 60, "long Running", |p| {
        p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    });
    let started = long["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    let long_log = logs.join(format!(
        "default_long_{}/main/0.log",
        long["metadata"]["uid"].as_str().unwrap()
    ));
    let ticks = || {
        std::fs::read_to_string(&long_log)
            .unwrap_or_default()
            .matches(" tick ")
            .count()
    };
    let flaky_restarts =
        restarts(&server.wait_json(&["get", "pod", "flaky"], 10, "flaky", |_| true));
    // One more pod, deleted while the agent is away (forced: nobody is
    // there to stop it): the new agent cleans up everything it had.
    let file = server.write("gone.yaml", &pod("gone", "exec sleep 3600", "Always", 0));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let gone = server.wait_json(&["get", "pod", "gone"], 60, "gone Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let gone_uid = gone["metadata"]["uid"].as_str().unwrap().to_owned();
    let gone_cgroup = format!("{}/pod{gone_uid}", cgroup_root("a"));
    let gone_paths = [
        run_dir.join("pods").join(&gone_uid),
        run_dir.join("netns").join(&gone_uid),
        data.join("pods").join(&gone_uid),
        logs.join(format!("default_gone_{gone_uid}")),
    ];
    assert!(
        gone_paths.iter().all(|p| p.exists())
            && !orch::runtime::cgroup::dirs(&gone_cgroup).is_empty(),
        "{gone_paths:?}"
    );
    agent.kill_and_restart_after(|| {
        server.ok(
            "1.33",
            &["delete", "pod", "gone", "--force", "--grace-period=0"],
        );
    });
    let ticks_at_kill = ticks();
    std::thread::sleep(Duration::from_secs(2));
    let long = server.wait_json(&["get", "pod", "long"], 30, "long still Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let cs = &long["status"]["containerStatuses"][0];
    assert_eq!(
        cs["state"]["running"]["startedAt"], started,
        "the container was not restarted: {long}"
    );
    assert_eq!(cs["restartCount"], 0);
    // Its log goes on, and the new agent serves it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while ticks() < ticks_at_kill + 3 {
        assert!(
            Instant::now() < deadline,
            "the log stopped at the agent's kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = wait_logs(&server, &["logs", "long", "--tail=1"]);
    let n: usize = last
        .trim()
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a tick line: {last:?}"));
    assert!(
        n >= ticks_at_kill + 3,
        "{last:?} after {ticks_at_kill} ticks"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = gone_paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .chain(
                orch::runtime::cgroup::dirs(&gone_cgroup)
                    .into_iter()
                    .map(|p| p.display().to_string()),
            )
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a pod deleted while the agent was away left {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Restart counts are kept.
    let flaky = server.wait_json(&["get", "pod", "flaky"], 10, "flaky", |_| true);
    assert!(
        restarts(&flaky) >= flaky_restarts,
        "flaky's restart count went back: {flaky}"
    );

    // Deleted: TERM (ignored by sleep as PID 1), the 2 s grace, KILL, gone.
    let long_uid = long["metadata"]["uid"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let out = server.kubectl("1.33", &["delete", "pod", "long", "--timeout=60s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "killed before the grace period"
    );
    assert!(
        !run_dir.join("pods").join(&long_uid).exists(),
        "the shim dir is cleaned up"
    );
    assert!(
        !run_dir.join("netns").join(&long_uid).exists(),
        "the netns is cleaned up"
    );
    assert!(
        !data.join("pods").join(&long_uid).exists(),
        "the rootfs is cleaned up"
    );

    // After the agent restart the tunnel is back; --previous shows the
    // crashed instance.
    let previous = wait_logs(&server, &["logs", "flaky", "--previous"]);
    assert_eq!(previous, "", "flaky printed nothing before exiting 1");
    for p in ["ok", "bad", "flaky"] {
        server.ok("1.33", &["delete", "pod", p, "--timeout=60s"]);
    }
    // Finished pods go at once (no grace): the agent cleans up after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(data.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not clean up the deleted pods"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_dir(run_dir.join("pods")).unwrap().count(), 0);
    drop(agent);
}

const CHATTY: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: chatty}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      sleep 2
      i=0
      while [ $i -lt 400 ]; do echo line $i of the chatty container; i=$((i+1)); [ $((i % 20)) = 0 ] && sleep 0.05; done
      printf 'caf\303\251 \377\376 end\n'
      printf '\303\251\303\251\303\251\n' >&2
      sleep 3600
";

#[test]
fn logs_follow_rotations_count_bytes_and_take_any_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("logs");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let token = server.dir.path().join("server/token");
    let agent = Agent::start_as(
        &server,
        &netns,
        &data,
        &run_dir,
        &logs,
        "logs",
        "node-a",
        &token,
        &[
            "--container-log-max-size",
            "4Ki",
            "--container-log-max-files",
            "3",
        ],
    );
    server.wait_json(&["get", "node", "node-a"], 30, "the node Ready", is_ready);
    let file = server.write("chatty.yaml", CHATTY);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/chatty",
            "--timeout=60s",
        ],
    );
    // Following from before the first line: every line, in order, across
    // the rotations (the file rotates every ~90 lines).
    let mut follow = server
        .kubectl_command("1.33", &["logs", "-f", "chatty"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
            shared.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    // The last thing written is the stderr line.
    let done = "\u{e9}\u{e9}\u{e9}\n".as_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.lock().unwrap().ends_with(done) {
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f did not see the end: {}",
            String::from_utf8_lossy(&got.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let got = got.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&got);
    let lines: Vec<&str> = text.lines().collect();
    let expected: Vec<String> = (0..400)
        .map(|i| format!("line {i} of the chatty container"))
        .collect();
    let stderr_line = "\u{e9}\u{e9}\u{e9}";
    let stdout_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| *l != stderr_line)
        .collect();
    assert_eq!(
        stdout_lines[..stdout_lines.len() - 1],
        expected,
        "every line once, in order"
    );
    // Bytes that are not UTF-8 come through as replacement characters.
    assert_eq!(
        stdout_lines.last().unwrap(),
        &"caf\u{e9} \u{fffd}\u{fffd} end"
    );
    let uid = server.ok(
        "1.33",
        &["get", "pod", "chatty", "-o", "jsonpath={.metadata.uid}"],
    );
    let files: Vec<_> = std::fs::read_dir(logs.join(format!("default_chatty_{uid}/main")))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        3,
        "the current file and two rotated: {files:?}"
    );
    // --limit-bytes counts bytes, even inside a character.
    let out = server.kubectl("1.33", &["logs", "chatty", "--tail=1", "--limit-bytes=3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"\xc3\xa9\xc3");
    drop(agent);
}

#[test]
fn the_server_runs_pods_on_its_embedded_agent() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("embedded");
    let logs = dir.path().join("logs");
    let server = embedded(dir.path(), &netns, "embedded");
    server.wait_json(
        &["get", "node", "embedded"],
        30,
        "the embedded node Ready",
        is_ready,
    );
    let file = server.write("hi.yaml", &pod("hi", "echo hi from $WHO", "Never", 30));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let hi = server.wait_json(&["get", "pod", "hi"], 60, "hi Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(hi["spec"]["nodeName"], "embedded");
    let uid = hi["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(logs.join(format!("default_hi_{uid}/main/0.log"))).unwrap();
    assert!(log.contains(" stdout F hi from hi"), "{log}");
    server.ok("1.33", &["delete", "pod", "hi"]);
    // More pods than the server's blocking pool has threads: the API keeps
    // answering (the embedded agent's work has a pool of its own).
    let many = server.write(
        "many.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: many}
spec:
  replicas: 12
  selector: {matchLabels: {app: many}}
  template:
    metadata: {labels: {app: many}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {name: main, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600']}
",
    );
    server.ok("1.33", &["apply", "-f", many.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/many", "--timeout=120s"],
    );
    let table = server.ok("1.33", &["get", "pods", "-l", "app=many"]);
    assert_eq!(table.matches("Running").count(), 12, "{table}");
    server.ok("1.33", &["delete", "deployment", "many"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(server.dir.path().join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the many pods were not torn down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.dir.path().join("pods").join(uid).exists() {
        assert!(
            Instant::now() < deadline,
            "the embedded agent did not clean up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
}

/// `orch server` with its embedded agent (node `tag`) in `netns`, its
/// run and log dirs in `dir/run` and `dir/logs`, and the busybox image
/// waiting in `<data-dir>/agent/images` (an air-gapped install); the
/// guard cleans up after it.
fn embedded(dir: &Path, netns: &Netns, tag: &str) -> Embedded {
    let archive = support::busybox_archive(dir);
    let run_dir = dir.join("run");
    let server = TestServer::start_with_agent(
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
    let guard = Cleanup {
        run_dir,
        data: server.dir.path().to_owned(),
    };
    Embedded {
        server,
        _guard: guard,
    }
}

/// A server with its embedded agent. Dropped, the server (and so its
/// agent) stops first — an agent still running would start again what the
/// clean-up removes — and then what it left is cleaned up.
struct Embedded {
    server: TestServer,
    _guard: Cleanup,
}

impl std::ops::Deref for Embedded {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

/// Tears down what an agent left in `run_dir` and `data` (for agents whose
/// process the test does not hold).
struct Cleanup {
    run_dir: PathBuf,
    data: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup(&self.run_dir, &self.data);
    }
}

#[test]
fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("probes");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "probes");
    let file = server.write(
        "probes.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www\"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"mkdir -p /tmp; sleep 3; touch /tmp/ready; exec sleep 3600\"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"mkdir -p /tmp; touch /tmp/alive; (sleep 4; rm /tmp/alive) & exec sleep 3600\"]
    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2, terminationGracePeriodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: stuck}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    readinessProbe: {exec: {command: [sleep, '30']}, periodSeconds: 1, timeoutSeconds: 10}
---
apiVersion: v1
kind: Pod
metadata: {name: busy}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: checked
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    livenessProbe: {exec: {command: [sleep, '20']}, periodSeconds: 60, timeoutSeconds: 40}
  - name: quick
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    readinessProbe: {exec: {command: ['true']}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: local}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: httpd
    image: busybox:test
    imagePullPolicy: Never
    command: [httpd, -f, -p, '127.0.0.1:8080']
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: rpc
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    readinessProbe: {grpc: {port: 9090, service: web}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar}
spec:
  terminationGracePeriodSeconds: 0
  initContainers:
  - name: side
    image: busybox:test
    imagePullPolicy: Never
    restartPolicy: Always
    command: [/bin/sh, -c, 'mkdir -p /tmp; exec sleep 3600']
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: starting}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'mkdir -p /tmp; exec sleep 3600']
    startupProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 300}
    readinessProbe: {exec: {command: ['true']}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: delayed}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    readinessProbe: {exec: {command: ['true']}, initialDelaySeconds: 5, periodSeconds: 1}
",
    );
    let applied = Instant::now();
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    // Each probe runs on its own: the first container's 20 s liveness
    // probe holds up neither the pod's status nor the second's readiness.
    server.wait_json(&["get", "pod", "busy"], 30, "busy ready", is_ready);
    assert!(
        applied.elapsed() < Duration::from_secs(12),
        "ready {:?} after it was made: the slow probe held the pod up",
        applied.elapsed()
    );
    // Not ready while the exec probe fails, ready once it passes.
    let slow = server.wait_json(&["get", "pod", "slow"], 30, "slow running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(!is_ready(&slow), "ready before its probe passed: {slow}");
    // The conditions as the kubelet words them, each with the time it
    // last changed.
    let condition = |pod: &Value, kind: &str| -> Value {
        pod["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} condition: {pod}"))
    };
    let not_ready = condition(&slow, "Ready");
    assert_eq!(
        (not_ready["reason"].as_str(), not_ready["message"].as_str()),
        (
            Some("ContainersNotReady"),
            Some("containers with unready status: [main]")
        ),
        "{slow}"
    );
    let slow = server.wait_json(&["get", "pod", "slow"], 30, "slow ready", is_ready);
    for kind in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        let c = condition(&slow, kind);
        assert!(
            c["status"] == "True" && c["lastTransitionTime"].is_string(),
            "{c}"
        );
    }
    // Ready changed after the others did.
    assert!(
        condition(&slow, "Ready")["lastTransitionTime"].as_str()
            > condition(&slow, "Initialized")["lastTransitionTime"].as_str(),
        "{slow}"
    );
    // HTTP readiness and TCP liveness against busybox httpd.
    let web = server.wait_json(&["get", "pod", "web"], 30, "web ready", is_ready);
    assert_eq!(web["status"]["containerStatuses"][0]["restartCount"], 0);
    // Probes dial the pod's IP from the node, as the kubelet's: a server
    // on the pod's loopback only is not ready.
    let local = server.wait_json(&["get", "pod", "local"], 30, "local running", |p| {
        p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
    });
    let ip = local["status"]["podIP"].as_str().unwrap().to_owned();
    let refused =
        format!("Readiness probe failed: dial tcp {ip}:8080: connect: connection refused");
    server.eventually(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=local",
        ],
        &refused,
        |events| events.contains(&refused),
    );
    // A gRPC probe asks the pod's IP too (nothing serves it here).
    let unserved = format!("Readiness probe failed: failed to connect service \"{ip}:9090\"");
    server.eventually(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=local",
        ],
        &unserved,
        |events| events.contains(&unserved),
    );
    let local = server.ok("1.33", &["get", "pod", "local", "-o", "json"]);
    assert!(!is_ready(&serde_json::from_str(&local).unwrap()), "{local}");
    // The liveness probe passes while /tmp/alive exists...
    let alive = server.wait_json(&["get", "pod", "sick"], 30, "sick running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(alive["status"]["containerStatuses"][0]["restartCount"], 0);
    // ...then fails: the container is restarted, killed after the probe's
    // 1 s grace period, not the pod's 60 (sleep ignores SIGTERM as PID 1).
    let t0 = Instant::now();
    let sick = server.wait_json(&["get", "pod", "sick"], 60, "sick restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    let last = &sick["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert!(
        last["exitCode"].as_i64().unwrap_or(0) >= 128,
        "killed by a signal: {sick}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "restarted {:?} after it ran, not within the probe's grace",
        t0.elapsed()
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sick",
        ],
    );
    assert!(
        events.contains("Liveness probe failed: ")
            && events.contains("Container main failed liveness probe, will be restarted"),
        "{events}"
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=slow",
        ],
    );
    assert_eq!(
        events.matches("Readiness probe failed").count(),
        1,
        "one event for the run of failures: {events}"
    );
    // An exec probe that overruns its timeout fails and is killed; while
    // such probes run, the pod's shim still serves kubectl exec at once.
    server.wait_json(&["get", "pod", "stuck"], 30, "stuck running", |p| {
        p["status"]["phase"] == "Running"
    });
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(
            server.ok("1.33", &["exec", "stuck", "--", "echo", "hi"]),
            "hi\n"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "exec waited for a probe: {:?}",
            t.elapsed()
        );
    }
    // (A shim that ran the 10 s probe in its own loop would have kept
    // each of those waiting.) Then the probe times out, and is killed.
    server.eventually(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=stuck",
        ],
        "the probe's timeout event",
        |events| events.contains("Readiness probe failed: command timed out after 10s"),
    );
    let stuck = server.ok("1.33", &["get", "pod", "stuck", "-o", "json"]);
    let stuck: Value = serde_json::from_str(&stuck).unwrap();
    assert!(!is_ready(&stuck), "{stuck}");
    // Two more timeouts on: left running, three would sleep by now.
    std::thread::sleep(Duration::from_secs(12));
    let ps = server.ok("1.33", &["exec", "stuck", "--", "busybox", "ps"]);
    assert!(
        ps.matches("sleep 30").count() <= 2,
        "timed-out probes are killed, not left running: {ps}"
    );
    // Until its startup probe passes, a container is not started and its
    // readiness probe does not run (it would pass at once).
    let starting = server.wait_json(&["get", "pod", "starting"], 30, "starting running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    });
    std::thread::sleep(Duration::from_secs(2));
    let starting_now = server.wait_json(&["get", "pod", "starting"], 10, "starting", |_| true);
    let s = &starting_now["status"]["containerStatuses"][0];
    assert!(
        s["started"] == false && s["ready"] == false,
        "started or ready before the startup probe passed: {starting_now}"
    );
    assert_eq!(s["restartCount"], 0, "{starting}");
    server.ok("1.33", &["exec", "starting", "--", "touch", "/tmp/started"]);
    let started = server.wait_json(&["get", "pod", "starting"], 30, "starting ready", is_ready);
    assert_eq!(started["status"]["containerStatuses"][0]["started"], true);
    // initialDelaySeconds: no readiness probe in the first 5 s.
    let delayed = server.wait_json(&["get", "pod", "delayed"], 30, "delayed ready", is_ready);
    let seconds = |t: &Value| {
        t.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or_else(|| panic!("a time: {t}"))
    };
    let began =
        seconds(&delayed["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]);
    let ready_at = seconds(&condition(&delayed, "Ready")["lastTransitionTime"]);
    assert!(
        ready_at - began >= 4,
        "ready {} s after it started, with initialDelaySeconds 5: {delayed}",
        ready_at - began
    );
    // A sidecar's readiness counts for the pod's.
    let sidecar = server.wait_json(
        &["get", "pod", "sidecar"],
        30,
        "sidecar's main ready",
        |p| p["status"]["containerStatuses"][0]["ready"] == true,
    );
    assert!(
        !is_ready(&sidecar),
        "ready with its sidecar unready: {sidecar}"
    );
    assert_eq!(
        condition(&sidecar, "ContainersReady")["message"],
        "containers with unready status: [side]",
        "{sidecar}"
    );
    server.ok(
        "1.33",
        &["exec", "sidecar", "-c", "side", "--", "touch", "/tmp/ready"],
    );
    let sidecar = server.wait_json(&["get", "pod", "sidecar"], 30, "sidecar ready", is_ready);
    // Ready again: no word left of why it was not.
    let ready = condition(&sidecar, "Ready");
    assert!(
        ready.get("reason").is_none() && ready.get("message").is_none(),
        "{ready}"
    );
    for p in [
        "web", "slow", "sick", "stuck", "busy", "local", "sidecar", "starting", "delayed",
    ] {
        server.ok(
            "1.33",
            &["delete", "pod", p, "--timeout=60s", "--grace-period=1"],
        );
    }
}

#[test]
fn configmaps_and_secrets_reach_containers_and_follow_updates() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("config");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "config");
    // The pod first: its ConfigMap is missing, so it waits.
    let file = server.write(
        "app.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: app, labels: {tier: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"echo env $LEVEL $PW $APP_MODE ref $(LEVEL) ip $POD_IP api $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; while true; do echo conf $(cat /etc/app/app.conf) secret $(cat /etc/secret/password) tier $(cat /etc/info/labels); sleep 1; done\"]
    env:
    - {name: PW, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: LEVEL, valueFrom: {configMapKeyRef: {name: app, key: level}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    envFrom: [{configMapRef: {name: app}, prefix: APP_}]
    volumeMounts:
    - {name: cfg, mountPath: /etc/app}
    - {name: creds, mountPath: /etc/secret}
    - {name: info, mountPath: /etc/info}
  volumes:
  - {name: cfg, configMap: {name: app, items: [{key: conf, path: app.conf}]}}
  - {name: creds, secret: {secretName: db, defaultMode: 0400}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let waiting = server.wait_json(
        &["get", "pod", "app"],
        30,
        "CreateContainerConfigError",
        |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        },
    );
    let message = waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("not found"), "{message}");
    server.ok(
        "1.33",
        &[
            "create",
            "configmap",
            "app",
            "--from-literal=conf=v1",
            "--from-literal=level=debug",
            "--from-literal=MODE=fast",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=hunter2",
        ],
    );
    let app = server.wait_json(&["get", "pod", "app"], 30, "app Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = app["metadata"]["uid"].as_str().unwrap().to_owned();
    let log_path = logs.join(format!("default_app_{uid}/main/0.log"));
    let wait_log = |needle: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log after {secs} s: {log}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // `$(LEVEL)` in the command is the kubelet's to expand; the pod's
    // IP is known on the first start; the API server's service variables
    // are there for in-cluster clients.
    let pod_ip = app["status"]["podIP"].as_str().unwrap();
    wait_log(
        &format!("env debug hunter2 fast ref debug ip {pod_ip} api 10.43.0.1:443"),
        10,
    );
    wait_log("conf v1 secret hunter2 tier tier=\"web\"", 10);
    // Secrets and downward API files live in memory, as the kubelet keeps
    // them; configMaps on disk.
    let mounts = server.ok("1.33", &["exec", "app", "--", "cat", "/proc/mounts"]);
    let fs_of = |path: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(fs_of("/etc/secret"), "tmpfs", "{mounts}");
    assert_eq!(fs_of("/etc/info"), "tmpfs", "{mounts}");
    assert_ne!(fs_of("/etc/app"), "tmpfs", "{mounts}");
    // An update reaches the running container within a minute.
    server.ok(
        "1.33",
        &[
            "patch",
            "configmap",
            "app",
            "-p",
            r#"{"data":{"conf":"v2"}}"#,
        ],
    );
    wait_log("conf v2 secret hunter2", 60);
    server.ok("1.33", &["delete", "pod", "app", "--timeout=60s"]);

    // hostPath by type: DirectoryOrCreate and FileOrCreate are made; a
    // Directory that is not there keeps the pod waiting (FailedMount)
    // until it is.
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let file = server.write(
        "hostpaths.yaml",
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: hostpaths}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [sh, -c, 'echo hi > /made/x; cat /given/y; exec sleep 3600']
    volumeMounts:
    - {{name: made, mountPath: /made}}
    - {{name: file, mountPath: /file}}
    - {{name: given, mountPath: /given}}
  volumes:
  - {{name: made, hostPath: {{path: {host}/new/made, type: DirectoryOrCreate}}}}
  - {{name: file, hostPath: {{path: {host}/f.txt, type: FileOrCreate}}}}
  - {{name: given, hostPath: {{path: {host}/given, type: Directory}}}}
",
            host = host.display()
        ),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let events = server.wait_json(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hostpaths",
        ],
        30,
        "a FailedMount event",
        |e| {
            e["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|e| e["reason"] == "FailedMount"))
        },
    );
    let message = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "FailedMount")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .unwrap();
    assert_eq!(
        message,
        format!(
            "MountVolume.SetUp failed for volume \"given\" : hostPath type check failed: {}/given is not a directory",
            host.display()
        )
    );
    let pending = server.ok(
        "1.33",
        &["get", "pod", "hostpaths", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(pending, "Pending");
    std::fs::create_dir_all(host.join("given")).unwrap();
    std::fs::write(host.join("given/y"), "from the host\n").unwrap();
    server.wait_json(&["get", "pod", "hostpaths"], 30, "hostpaths Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(
        wait_logs(&server, &["logs", "hostpaths"]),
        "from the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("new/made/x")).unwrap(),
        "hi\n"
    );
    assert!(std::fs::metadata(host.join("f.txt")).unwrap().is_file());
    server.ok("1.33", &["delete", "pod", "hostpaths", "--timeout=60s"]);
}

#[test]
fn oom_kills_termination_messages_hooks_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("lifecycle");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "lifecycle");
    let container = |name: &str, script: &str, extra: &str| {
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
    };
    let manifest = [
        container("oom", "dd if=/dev/zero of=/dev/null bs=64M count=1", "    resources: {limits: {memory: 16Mi}}\n"),
        container("msg", "echo bye > /dev/termination-log; exit 2", ""),
        container("fallback", "echo last words; exit 1", "    terminationMessagePolicy: FallbackToLogsOnError\n"),
        container(
            "hooks",
            "sleep 1; cat /started; exec sleep 3600",
            "    resources: {limits: {cpu: 200m, memory: 64Mi}}\n    lifecycle:\n      postStart: {exec: {command: [/bin/sh, -c, 'echo post-start > /started']}}\n      preStop: {exec: {command: [/bin/sh, -c, 'echo goodbye > /proc/1/fd/1']}}\n",
        ),
    ]
    .concat()
        // OOM-killed once, then running: the reason stays in lastState.
        + "apiVersion: v1
kind: Pod
metadata: {name: oomonce}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"[ -e /data/ran ] && exec sleep 3600; touch /data/ran; dd if=/dev/zero of=/dev/null bs=64M count=1\"]
    resources: {limits: {memory: 16Mi}}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
";
    let file = server.write("lifecycle.yaml", &manifest);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let terminated = |name: &str| {
        let pod = server.wait_json(&["get", "pod", name], 60, &format!("{name} Failed"), |p| {
            p["status"]["phase"] == "Failed"
        });
        pod["status"]["containerStatuses"][0]["state"]["terminated"].clone()
    };
    let oom = terminated("oom");
    assert_eq!(oom["reason"], "OOMKilled", "{oom}");
    assert_eq!(oom["exitCode"], 137);
    let msg = terminated("msg");
    assert_eq!(
        (msg["exitCode"].as_i64(), msg["message"].as_str()),
        (Some(2), Some("bye\n")),
        "{msg}"
    );
    let fallback = terminated("fallback");
    assert_eq!(fallback["message"], "last words", "{fallback}");
    let oomonce = server.wait_json(
        &["get", "pod", "oomonce"],
        60,
        "oomonce running again",
        |p| {
            let s = &p["status"]["containerStatuses"][0];
            s["restartCount"] == 1 && s["state"]["running"].is_object()
        },
    );
    let last = &oomonce["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(
        (last["reason"].as_str(), last["exitCode"].as_i64()),
        (Some("OOMKilled"), Some(137)),
        "{oomonce}"
    );

    let hooks = server.wait_json(&["get", "pod", "hooks"], 60, "hooks Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = hooks["metadata"]["uid"].as_str().unwrap().to_owned();
    let log_path = logs.join(format!("default_hooks_{uid}/main/0.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("post-start")
    {
        assert!(
            Instant::now() < deadline,
            "postStart did not run before the main process looked"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pod's own cgroup carries the pod's limits.
    let pod_cgroup = format!("{}/pod{uid}", cgroup_root("lifecycle"));
    let dirs = orch::runtime::cgroup::dirs(&pod_cgroup);
    assert!(!dirs.is_empty(), "no cgroup {pod_cgroup}");
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_owned())
    };
    if let Some(limit) = read("memory.limit_in_bytes") {
        assert_eq!(limit, (64u64 << 20).to_string());
        assert_eq!(read("cpu.cfs_quota_us").as_deref(), Some("20000"));
        assert_eq!(read("cpu.shares").as_deref(), Some("204"));
    } else {
        assert_eq!(read("memory.max"), Some((64u64 << 20).to_string()));
        assert_eq!(read("cpu.max").as_deref(), Some("20000 100000"));
    }
    // Removing the image of a running container keeps the layers its root
    // is made of: the exec below still finds its shell.
    let rm = Command::new(ORCH)
        .args(["image", "--data-dir"])
        .arg(&data)
        .args(["rm", "busybox:test"])
        .output()
        .unwrap();
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let layers = std::fs::read_dir(data.join("images/layers/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(layers > 0, "the running pods' layers were removed");
    // In the container, /sys/fs/cgroup shows its own cgroup, read-only:
    // no raising its own limits, no cgroups of its own making. (The
    // probe writes each limit's own value back.)
    let view = server.ok(
        "1.33",
        &[
            "exec",
            "hooks",
            "--",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max
             for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory.max; do
               [ -e $f ] && { (v=$(cat $f); echo $v > $f) 2>/dev/null && echo $f writable || echo read-only; }
             done
             mkdir /sys/fs/cgroup/memory/x /sys/fs/cgroup/x 2>/dev/null && echo made a cgroup || echo no-mkdir",
        ],
    );
    let limit = (64u64 << 20).to_string();
    assert_eq!(
        view.lines().collect::<Vec<_>>(),
        [limit.as_str(), "read-only", "read-only", "no-mkdir"],
        "{view}"
    );
    // Back, for the pods below.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    import_busybox(&again, &data);
    // The log as it goes (the file goes with the pod): preStop's words
    // must be in it.
    let follow = server
        .kubectl_command("1.33", &["logs", "-f", "hooks"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.ok("1.33", &["delete", "pod", "hooks", "--timeout=60s"]);
    // Everything the pod had is gone: cgroups, mounts, processes, logs.
    assert!(
        !log_path.parent().unwrap().parent().unwrap().exists(),
        "the pod's logs are left: {}",
        log_path.display()
    );
    assert!(
        orch::runtime::cgroup::dirs(&pod_cgroup).is_empty(),
        "the pod's cgroup is left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&uid),
        "mounts of the pod are left: {}",
        mounts
            .lines()
            .filter(|l| l.contains(&uid))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cg = std::fs::read_to_string(p.path().join("cgroup")).unwrap_or_default();
        assert!(
            !cg.contains(&format!("pod{uid}")),
            "process {} of the pod is left",
            p.file_name().to_string_lossy()
        );
    }
    let log = String::from_utf8(follow.wait_with_output().unwrap().stdout).unwrap();
    assert!(
        log.contains("goodbye"),
        "preStop ran before the container stopped: {log}"
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hooks",
        ],
    );
    assert!(
        events.contains("Started") && events.contains("Killing"),
        "{events}"
    );
    for p in ["oom", "msg", "fallback", "oomonce"] {
        server.ok("1.33", &["delete", "pod", p, "--timeout=60s"]);
    }

    // The grace period is the whole budget: a preStop hook longer than it
    // is cut off, SIGTERM still gets its 2 s, then the sidecar stops.
    let slow = server.write(
        "slowstop.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: slowstop}
spec:
  terminationGracePeriodSeconds: 3
  initContainers:
  - {name: side, image: busybox:test, imagePullPolicy: Never, restartPolicy: Always, command: [sleep, '3600']}
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [sleep, '3600']
    lifecycle:
      preStop: {exec: {command: [sleep, '20']}}
",
    );
    server.ok("1.33", &["apply", "-f", slow.to_str().unwrap()]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/slowstop",
            "--timeout=60s",
        ],
    );
    let t0 = Instant::now();
    server.ok("1.33", &["delete", "pod", "slowstop", "--timeout=60s"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(10),
        "3 s for the hook, 2 s for SIGTERM, not the hook's 20: {took:?}"
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=slowstop",
        ],
    );
    assert!(
        events.contains("Stopping container main")
            && events.contains("Stopping container side")
            && events.contains("did not finish within the grace period"),
        "{events}"
    );

    // seccompProfile RuntimeDefault refuses unshare; Unconfined does not.
    let manifest = [
        container(
            "confined",
            "unshare -U true && echo allowed || echo denied",
            "    securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
        ),
        container(
            "unconfined",
            "unshare -U true && echo allowed || echo denied",
            "",
        ),
        // A privileged container has the host's devices; others do not.
        container(
            "privileged",
            "test -c /dev/kmsg && echo allowed || echo denied",
            "    securityContext: {privileged: true}\n",
        ),
        container(
            "unprivileged",
            "test -c /dev/kmsg && echo allowed || echo denied",
            "",
        ),
        // Nor can it open a device node it makes (/dev/kmsg's numbers):
        // the device cgroup allows mknod, not use.
        container(
            "devnode",
            "mknod /dev/k c 1 11 && { (echo orch-test > /dev/k) 2>/dev/null && echo allowed || echo denied; }",
            "",
        ),
        // The user, no_new_privs, a read-only root, masked and read-only
        // /proc paths, as the spec asked, seen from inside.
        container(
            "restricted",
            "grep -E '^(Uid|Gid|NoNewPrivs):' /proc/self/status; grep -q ' / / ro' /proc/self/mountinfo && echo root ro; grep -q . /proc/timer_list && echo timer_list shown || echo timer_list masked; (echo 1 > /proc/sys/kernel/printk) 2>/dev/null && echo sysctl writable || echo sysctl ro",
            "    securityContext: {runAsUser: 1000, runAsGroup: 3000, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}\n",
        ),
    ]
    .concat();
    let file = server.write("seccomp.yaml", &manifest);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    for (name, want) in [
        ("confined", "denied"),
        ("unconfined", "allowed"),
        ("privileged", "allowed"),
        ("unprivileged", "denied"),
        ("devnode", "denied"),
        ("restricted", "Uid:\t1000\t1000\t1000\t1000"),
        ("restricted", "Gid:\t3000\t3000\t3000\t3000"),
        ("restricted", "NoNewPrivs:\t1"),
        ("restricted", "root ro"),
        ("restricted", "timer_list masked"),
        ("restricted", "sysctl ro"),
    ] {
        let pod = server.wait_json(&["get", "pod", name], 60, &format!("{name} done"), |p| {
            p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
        });
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let log =
            std::fs::read_to_string(logs.join(format!("default_{name}_{uid}/main/0.log"))).unwrap();
        assert!(log.contains(&format!("stdout F {want}")), "{name}: {log}");
    }
    for name in [
        "confined",
        "unconfined",
        "privileged",
        "unprivileged",
        "devnode",
        "restricted",
    ] {
        server.ok("1.33", &["delete", "pod", name, "--timeout=60s"]);
    }

    // A container that cannot be created says why, on the pod and as an
    // event.
    waits_with(
        &server,
        "missing",
        "apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [no-such-program]}
",
        "CreateContainerError",
        "no-such-program",
    );
    let table = server.ok("1.33", &["get", "pod", "missing"]);
    assert!(table.contains("CreateContainerError"), "{table}");
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=missing",
        ],
    );
    assert!(
        events.contains("Failed") && events.contains("no-such-program"),
        "{events}"
    );
    server.ok("1.33", &["delete", "pod", "missing", "--timeout=60s"]);
    // An image that is not here, with pull policy Never: the kubelet's
    // reason, and what to do.
    waits_with(
        &server,
        "absent",
        "apiVersion: v1
kind: Pod
metadata: {name: absent}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: busybox:absent, imagePullPolicy: Never}
",
        "ErrImageNeverPull",
        "is not present with pull policy of Never",
    );
    server.ok("1.33", &["delete", "pod", "absent", "--timeout=60s"]);
    // runAsNonRoot with an image that runs as root: refused, as the
    // kubelet refuses it.
    waits_with(
        &server,
        "rooted",
        "apiVersion: v1
kind: Pod
metadata: {name: rooted}
spec:
  terminationGracePeriodSeconds: 0
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600']}
",
        "CreateContainerConfigError",
        "container has runAsNonRoot and image will run as root",
    );
    server.ok("1.33", &["delete", "pod", "rooted", "--timeout=60s"]);
    // Safe sysctls are set in the pod's namespaces (not the node's);
    // others are refused.
    let sysctls = server.write(
        "sysctls.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: tuned}
spec:
  restartPolicy: Never
  securityContext:
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: '0'}, {name: net/ipv4/ping_group_range, value: '0 2147483647'}]
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [cat, /proc/sys/net/ipv4/ip_unprivileged_port_start, /proc/sys/net/ipv4/ping_group_range]}
---
apiVersion: v1
kind: Pod
metadata: {name: untuned}
spec:
  terminationGracePeriodSeconds: 0
  securityContext:
    sysctls: [{name: kernel.msgmax, value: '1'}]
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600']}
",
    );
    server.ok("1.33", &["apply", "-f", sysctls.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "tuned"], 60, "tuned Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let out = server.ok("1.33", &["logs", "tuned"]);
    assert_eq!(out, "0\n0\t2147483647\n");
    let node = in_netns(Some(&netns.0), "cat")
        .arg("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&node.stdout),
        "1024\n",
        "the node's own setting changed"
    );
    let pod = server.wait_json(
        &["get", "pod", "untuned"],
        30,
        "CreateContainerConfigError",
        |p| waiting_reason(p) == "CreateContainerConfigError",
    );
    assert!(
        waiting(&pod)
            .1
            .contains("forbidden sysctl: \"kernel.msgmax\" not allowlisted"),
        "{pod}"
    );
    server.ok(
        "1.33",
        &["delete", "pod", "tuned", "untuned", "--timeout=60s"],
    );

    // Init containers run first, in order; a sidecar keeps running beside
    // the main container and stops when the pod's work is done.
    let init = server.write(
        "init.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: init}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: first, image: busybox:test, imagePullPolicy: Never, command: [/bin/sh, -c, 'echo one > /dev/shm/order']}
  - {name: helper, image: busybox:test, imagePullPolicy: Never, restartPolicy: Always, command: [/bin/sh, -c, 'echo helper >> /dev/shm/order; exec sleep 3600']}
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, command: [/bin/sh, -c, 'sleep 1; echo main >> /dev/shm/order; cat /dev/shm/order']}
",
    );
    server.ok("1.33", &["apply", "-f", init.to_str().unwrap()]);
    let done = server.wait_json(&["get", "pod", "init"], 60, "init Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let uid = done["metadata"]["uid"].as_str().unwrap().to_owned();
    let log = std::fs::read_to_string(logs.join(format!("default_init_{uid}/main/0.log"))).unwrap();
    let order: Vec<&str> = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    assert_eq!(order, ["one", "helper", "main"], "{log}");
    let helper = &done["status"]["initContainerStatuses"][1];
    assert_eq!(helper["name"], "helper");
    assert!(
        helper["state"]["terminated"].is_object(),
        "the sidecar stopped with the pod: {done}"
    );
    server.ok("1.33", &["delete", "pod", "init", "--timeout=60s"]);

    // A pod's containers share its IPC and UTS namespaces and /dev/shm.
    let pair = server.write(
        "pair.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: pair}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: a, image: busybox:test, imagePullPolicy: Never, command: [/bin/sh, -c, 'echo shared > /dev/shm/note; exec sleep 3599']}
  - name: b
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'sleep 1; echo note $(cat /dev/shm/note) host $(hostname) mem $MEM_MI; ls -ldn /scratch; exec sleep 3600']
    resources: {limits: {memory: 64Mi}}
    env: [{name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}]
    volumeMounts: [{name: scratch, mountPath: /scratch}, {name: cache, mountPath: /cache}]
  securityContext: {fsGroup: 2000}
  volumes: [{name: scratch, emptyDir: {}}, {name: cache, emptyDir: {medium: Memory, sizeLimit: 1Mi}}]
",
    );
    server.ok("1.33", &["apply", "-f", pair.to_str().unwrap()]);
    let pod = server.wait_json(&["get", "pod", "pair"], 60, "pair Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let log_b = logs.join(format!("default_pair_{uid}/b/0.log"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&log_b).unwrap_or_default();
        if log.contains("note shared host pair mem 64") && log.contains(" 2000 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b did not see a's /dev/shm and the pod host name: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A memory emptyDir is a tmpfs of its sizeLimit: writing past it fails.
    let mounts = server.ok(
        "1.33",
        &["exec", "pair", "-c", "b", "--", "cat", "/proc/mounts"],
    );
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /cache tmpfs ") && l.contains("size=1024k")),
        "{mounts}"
    );
    let out = server.kubectl(
        "1.33",
        &[
            "exec",
            "pair",
            "-c",
            "b",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/cache/big",
            "bs=1024",
            "count=2048",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("No space left on device"),
        "{err}"
    );
    // Each container has a PID namespace of its own ...
    let ps = server.ok(
        "1.33",
        &[
            "exec", "pair", "-c", "b", "--", "busybox", "ps", "-o", "pid,args",
        ],
    );
    assert!(!ps.contains("sleep 3599"), "b sees a's processes: {ps}");
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sleep", "3600"]),
        "b's command is its PID 1: {ps}"
    );
    server.ok("1.33", &["delete", "pod", "pair", "--timeout=60s"]);
    assert!(
        !data.join("pods").join(&uid).exists(),
        "the pod's shm and dirs are gone"
    );
    // ... unless the pod shares one: then each sees the other's, under a
    // PID 1 of the pod's, which also reaps what they orphan.
    let shared = server.write(
        "shared.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: a, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3601']}
  - {name: b, image: busybox:test, imagePullPolicy: Never, command: [sh, -c, '(sleep 0.2 &) ; exec sleep 3602']}
",
    );
    server.ok("1.33", &["apply", "-f", shared.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "shared"], 60, "shared Running", |p| {
        p["status"]["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_millis(500));
    let ps = server.ok(
        "1.33",
        &[
            "exec",
            "shared",
            "-c",
            "b",
            "--",
            "busybox",
            "ps",
            "-o",
            "pid,stat,args",
        ],
    );
    assert!(
        ps.contains("sleep 3601") && ps.contains("sleep 3602"),
        "b sees a's processes: {ps}"
    );
    let pid_of = |what: &str| -> String {
        ps.lines()
            .find(|l| l.ends_with(what))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        pid_of("sleep 3601") != "1" && pid_of("sleep 3602") != "1",
        "PID 1 is the pod's, not a container's: {ps}"
    );
    assert!(
        !ps.lines().any(|l| l.split_whitespace().nth(1) == Some("Z")),
        "the orphaned sleep was reaped: {ps}"
    );
    let shared_uid = server.ok(
        "1.33",
        &["get", "pod", "shared", "-o", "jsonpath={.metadata.uid}"],
    );
    server.ok("1.33", &["delete", "pod", "shared", "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_dir.join("pods").join(&shared_uid).exists() {
        assert!(Instant::now() < deadline, "the shared pod's shim stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // It dies with the shim.
    let holders = || {
        let out = Command::new("pgrep")
            .args(["-x", "pod-pid1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holders().is_empty() {
        let pid = holders();
        assert!(
            Instant::now() < deadline,
            "the pod's PID 1 outlived its shim: {pid} {}",
            String::from_utf8_lossy(
                &Command::new("ps")
                    .args(["-o", "pid,ppid,stat,args", "-p", pid.trim()])
                    .output()
                    .unwrap()
                    .stdout
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_agent_resumes_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("srvrestart");
    // A fixed port (the namespace is the test's own), so the agent finds
    // the server again where it was.
    let port = ["--https-listen-port", "16443"];
    let server = TestServer::start_in_netns(&netns.0, &port);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "restart");
    let file = server.write(
        "before.yaml",
        &pod("before", "echo before; exec sleep 3600", "Always", 1),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "before"], 60, "before Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // While the server is down a new agent starts: it retries until the
    // server is back, then joins.
    let token = server.dir.path().join("server/token");
    let (server, _late) = server.restart_with(&port, |stopped| {
        let late = Agent::start_as(
            stopped,
            &netns,
            &dir.path().join("late"),
            &dir.path().join("late-run"),
            &dir.path().join("late-logs"),
            "restartlate",
            "node-late",
            &token,
            &["--node-taint", "dedicated=late:NoSchedule"],
        );
        std::thread::sleep(Duration::from_millis(2500));
        late
    });
    let late = server.wait_json(
        &["get", "node", "node-late"],
        60,
        "node-late Ready",
        is_ready,
    );
    // It registered with its --node-taint.
    assert!(
        late["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "dedicated"
                && t["value"] == "late"
                && t["effect"] == "NoSchedule"),
        "{late}"
    );
    // The agent's watch, heartbeat and tunnel come back on their own.
    let file = server.write("after.yaml", &pod("after", "echo after", "Never", 1));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "after"], 60, "after Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(wait_logs(&server, &["logs", "after"]), "after\n");
    assert_eq!(wait_logs(&server, &["logs", "before"]), "before\n");
    let before = server.ok(
        "1.33",
        &[
            "get",
            "pod",
            "before",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
    );
    assert_eq!(
        before, "0",
        "the server restart did not touch the running container"
    );
    for p in ["before", "after"] {
        server.ok("1.33", &["delete", "pod", p, "--timeout=60s"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(data.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the agent did not clean up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `docker-registry` (Debian's distribution 2.8) on 127.0.0.1:`port`
/// inside the test's network namespace; with `user`, it asks for basic
/// auth (htpasswd, bcrypt).
struct Registry {
    child: Child,
}

impl Registry {
    fn start(netns: &Netns, dir: &Path, port: u16, user: Option<(&str, &str)>) -> Self {
        let root = dir.join(format!("registry-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: \"127.0.0.1:{port}\"}}\n",
            root.join("data").display()
        );
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils; scripts/test.sh installs it)");
            assert!(out.status.success());
            std::fs::write(root.join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd: {{realm: test, path: {}}}\n",
                root.join("htpasswd").display()
            ));
        }
        std::fs::write(root.join("config.yml"), config).unwrap();
        let child = support::docker_registry(netns, &root.join("config.yml"), port);
        Self { child }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy the OCI layout's `latest` to `dest` (`127.0.0.1:5000/x:tag`).
fn push(netns: &Netns, layout: &Path, dest: &str, creds: Option<&str>) {
    let out = in_netns(Some(&netns.0), "skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(creds.map(|c| format!("--dest-creds={c}")))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn waiting_reason(p: &Value) -> String {
    waiting(p).0
}

/// Apply `manifest` (one pod, `name`), wait until its first container
/// waits for `reason`, check the message has `words`; the pod.
fn waits_with(server: &TestServer, name: &str, manifest: &str, reason: &str, words: &str) -> Value {
    let file = server.write(&format!("{name}.yaml"), manifest);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let pod = server.wait_json(&["get", "pod", name], 30, reason, |p| {
        waiting_reason(p) == reason
    });
    assert!(waiting(&pod).1.contains(words), "{pod}");
    pod
}

/// The first container's waiting reason and message.
fn waiting(p: &Value) -> (String, String) {
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_owned(),
        w["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn images_are_pulled_from_registries_with_mirrors_and_pull_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("registry");
    let layout = support::busybox_layout(dir.path());
    let _open = Registry::start(&netns, dir.path(), 5000, None);
    let _private = Registry::start(&netns, dir.path(), 5001, Some(("alice", "s3cret")));
    push(&netns, &layout, "127.0.0.1:5000/busybox:v1", None);
    push(
        &netns,
        &layout,
        "127.0.0.1:5000/library/busybox:mirrored",
        None,
    );
    push(
        &netns,
        &layout,
        "127.0.0.1:5001/private/busybox:v1",
        Some("alice:s3cret"),
    );
    // Docker Hub names go to the local mirror; the private registry
    // speaks plain HTTP.
    let registries = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n  \"127.0.0.1:5001\":\n    endpoint: [\"http://127.0.0.1:5001\"]\n",
    )
    .unwrap();

    // `orch image pull` into a store of its own.
    let cli_store = dir.path().join("cli");
    let pull = |image: &str, extra: &[&str]| {
        support::image_pull(&netns, &cli_store, &registries, extra, image)
    };
    let out = pull("busybox:mirrored", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pulled docker.io/library/busybox:mirrored"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("from http://127.0.0.1:5000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pull("127.0.0.1:5001/private/busybox:v1", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Not authorized"), "{err}");
    let out = pull(
        "127.0.0.1:5001/private/busybox:v1",
        &["--creds", "alice:s3cret"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pull("127.0.0.1:5000/busybox:missing", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().count() == 1 && err.contains("manifest unknown"),
        "{err}"
    );
    let ls = Command::new(ORCH)
        .args(["image", "--data-dir"])
        .arg(&cli_store)
        .arg("ls")
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("docker.io/library/busybox:mirrored")
            && ls.contains("127.0.0.1:5001/private/busybox:v1"),
        "{ls}"
    );

    // The agent pulls for its pods.
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = (
        dir.path().join("agent"),
        dir.path().join("run"),
        dir.path().join("logs"),
    );
    let mut agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "registry");
    agent.args.extend([
        "--private-registry".to_owned(),
        registries.display().to_string(),
    ]);
    agent.kill_and_restart();
    server.wait_json(&["get", "node", "node-a"], 30, "the node Ready", is_ready);
    // A Deployment of busybox httpd from the registry, Ready by its probe.
    let web = server.write(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: 127.0.0.1:5000/busybox:v1
        command: [/bin/sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
",
    );
    server.ok("1.33", &["apply", "-f", web.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let pods = server.wait_json(
        &["get", "pods", "-l", "app=web"],
        30,
        "web pods Ready",
        |l| {
            l["items"].as_array().is_some_and(|i| {
                i.len() == 2
                    && i.iter()
                        .all(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            })
        },
    );
    let status = &pods["items"][0]["status"]["containerStatuses"][0];
    assert_eq!(status["image"], "127.0.0.1:5000/busybox:v1");
    assert!(
        status["imageID"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:5000/busybox@sha256:"),
        "{status}"
    );
    let events = server.eventually(
        &["get", "events", "--field-selector", "reason=Pulled"],
        "a Pulled event",
        |out| out.contains("Successfully pulled image \"127.0.0.1:5000/busybox:v1\""),
    );
    assert!(events.contains("Pulled"), "{events}");

    // A Docker Hub name through the mirror; a private image needs its
    // pull secret; a missing tag backs off.
    server.ok(
        "1.33",
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=127.0.0.1:5001",
            "--docker-username=alice",
            "--docker-password=s3cret",
        ],
    );
    let pods = server.write(
        "pods.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: hub}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: 'busybox:mirrored', command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: private}
spec:
  terminationGracePeriodSeconds: 0
  imagePullSecrets: [{name: regcred}]
  containers:
  - {name: main, image: '127.0.0.1:5001/private/busybox:v1', command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: nosecret}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: '127.0.0.1:5001/private/busybox:v1', imagePullPolicy: Always, command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: '127.0.0.1:5000/busybox:missing', command: [sleep, '3600']}
",
    );
    server.ok("1.33", &["apply", "-f", pods.to_str().unwrap()]);
    for name in ["hub", "private"] {
        server.wait_json(&["get", "pod", name], 60, "Running", |p| {
            p["status"]["phase"] == "Running"
        });
    }
    let nosecret = server.wait_json(&["get", "pod", "nosecret"], 60, "a failed pull", |p| {
        ["ErrImagePull", "ImagePullBackOff"].contains(&waiting_reason(p).as_str())
    });
    let message = nosecret["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("Not authorized") && message.contains("imagePullSecrets"),
        "{message}"
    );
    server.wait_json(&["get", "pod", "missing"], 60, "ImagePullBackOff", |p| {
        waiting_reason(p) == "ImagePullBackOff"
    });
    let table = server.ok("1.33", &["get", "pod", "missing"]);
    assert!(table.contains("ImagePullBackOff"), "{table}");
    let describe = server.ok("1.33", &["describe", "pod", "missing"]);
    assert!(
        describe.contains("Failed to pull image \"127.0.0.1:5000/busybox:missing\"")
            && describe.contains("Back-off pulling image"),
        "{describe}"
    );
    // The tag appears: the next attempt (after 10 s) pulls it.
    push(&netns, &layout, "127.0.0.1:5000/busybox:missing", None);
    server.wait_json(&["get", "pod", "missing"], 60, "Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // Image GC: with every threshold at 0, unused images go at the next
    // start; images pods use stay.
    server.ok(
        "1.33",
        &["delete", "pod", "hub", "nosecret", "--wait=false"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(data.join("pods")).unwrap().count() > 4 {
        assert!(
            Instant::now() < deadline,
            "hub and nosecret were not torn down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.args.extend(
        [
            "--image-gc-high-threshold",
            "0",
            "--image-gc-low-threshold",
            "0",
            "--image-minimum-gc-age",
            "0",
        ]
        .map(str::to_owned),
    );
    agent.kill_and_restart();
    let store_ls = || {
        let out = Command::new(ORCH)
            .args(["image", "--data-dir"])
            .arg(&data)
            .arg("ls")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while store_ls().contains("busybox:mirrored") {
        assert!(
            Instant::now() < deadline,
            "the unused image was not collected: {}",
            store_ls()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ls = store_ls();
    for kept in [
        "127.0.0.1:5000/busybox:v1",
        "127.0.0.1:5001/private/busybox:v1",
        "127.0.0.1:5000/busybox:missing",
    ] {
        assert!(ls.contains(kept), "{kept} is in use: {ls}");
    }
    server.ok("1.33", &["delete", "deployment", "web"]);
    server.ok("1.33", &["delete", "pod", "--all", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(data.join("pods")).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "pods were not torn down");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}

#[test]
fn kubectl_exec_streams_stdio_terminals_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("exec");
    let run_dir = dir.path().join("run");
    let server = embedded(dir.path(), &netns, "exec");
    let file = server.write(
        "pods.yaml",
        &[
            pod("box", "trap 'exit 0' TERM; sleep 3600 & wait", "Always", 1),
            pod("done", "true", "Never", 1),
        ]
        .join("---\n"),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "box"], 60, "box Running", |p| {
        p["status"]["phase"] == "Running"
    });
    // Output and exit codes.
    let out = server.kubectl("1.33", &["exec", "box", "--", "echo", "hello", "world"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    let out = server.kubectl(
        "1.33",
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; echo $WHO; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nbox\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("err") && err.contains("command terminated with exit code 3"),
        "{err}"
    );
    // stdin, until it ends.
    let mut child = in_netns(Some(&netns.0), support::kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args([
            "exec",
            "-i",
            "box",
            "--",
            "sh",
            "-c",
            "read line; echo got $line; cat > /x; cat /x; exit 4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"first\nsecond\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got first\nsecond\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4));
    // A terminal (from script(1)), its size passed on, the shell's exit
    // code back.
    // `before` then kubectl `args` in a 33x101 terminal of script(1).
    let in_terminal = |before: &str, args: &str| {
        let line = format!(
            "stty rows 33 cols 101; {before} {} --kubeconfig {} {args}",
            support::kubectl_path("1.33").display(),
            server.kubeconfig.display()
        );
        in_netns(Some(&netns.0), "script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = in_terminal("", "exec -it box -- sh -c 'tty; stty size; exit 5'");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("33 101"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5), "{text}");
    // The terminal resized during the exec: kubectl sees SIGWINCH and
    // sends the new size, which the container's terminal takes.
    // (A background job's stdin is /dev/null in a non-interactive sh.)
    let out = in_terminal(
        "(sleep 2; stty rows 50 cols 140 </dev/tty) &",
        "exec -it box -- sh -c 'stty size; sleep 5; stty size'",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("33 101") && text.contains("50 140"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad requests get kubectl's errors.
    let err = server.fails("1.33", &["exec", "box", "-c", "nope", "--", "true"]);
    assert!(
        err.contains("container nope is not valid for pod box"),
        "{err}"
    );
    server.wait_json(&["get", "pod", "done"], 60, "done Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let err = server.fails("1.33", &["exec", "done", "--", "true"]);
    assert!(err.contains("completed pod"), "{err}");
    let err = server.fails("1.33", &["exec", "box", "--", "/no/such/program"]);
    assert!(
        err.contains("/no/such/program") && err.contains("not found"),
        "{err}"
    );
    // Nothing is left behind: the exec'd processes are gone.
    let out = server.kubectl(
        "1.33",
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "ls /proc | grep -c '^[0-9]'",
        ],
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    assert!(
        counts
            .lines()
            .last()
            .is_some_and(|n| n.trim().parse::<u32>().unwrap_or(99) <= 5),
        "processes left in the container: {counts}"
    );

    // The pod's shim dies (kill -9): its old container goes with it, and
    // the agent starts a new shim and the container again.
    let box_pod = server.wait_json(&["get", "pod", "box"], 10, "box", |_| true);
    let uid = box_pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let pod_procs = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read_to_string(p.path().join("cgroup"))
                    .is_ok_and(|c| c.contains(&format!("pod{uid}")))
            })
            .map(|p| p.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = pod_procs();
    assert!(!before.is_empty(), "no processes in the pod's cgroup");
    let shim_pid =
        std::fs::read_to_string(run_dir.join("pods").join(&uid).join("shim.pid")).unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", shim_pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = server.kubectl("1.33", &["exec", "box", "--", "echo", "back"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == "back\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod did not come back after its shim died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = pod_procs();
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "processes of the old container survived: {before:?} / {after:?}"
    );
    // As the kubelet counts a container its runtime lost: a restart, the
    // last one ended with 255, Unknown.
    let back = server.wait_json(&["get", "pod", "box"], 30, "box restarted", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
            && p["status"]["containerStatuses"][0]["restartCount"] == 1
    });
    let last = &back["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(
        (last["exitCode"].as_i64(), last["reason"].as_str()),
        (Some(255), Some("Unknown")),
        "{back}"
    );

    // kubectl run -i --rm: attach to stdin (stdinOnce), the exit code
    // from the pod, the pod gone after.
    let mut child = in_netns(Some(&netns.0), support::kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args([
            "run",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox:test",
            "--image-pull-policy=Never",
            "once",
            "--",
            "sh",
            "-c",
            "read l; echo got $l; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("got hello"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        server
            .fails("1.33", &["get", "pod", "once"])
            .contains("not found")
    );
    // kubectl attach -it to a shell on a terminal: its size, its input,
    // its end.
    let term = server.write(
        "term.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: busybox:test, imagePullPolicy: Never, stdin: true, tty: true, command: [sh]}
",
    );
    server.ok("1.33", &["apply", "-f", term.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "term"], 60, "term Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let kubectl = format!(
        "(sleep 2; printf 'stty size; tty\\n'; sleep 1; printf 'exit 7\\n'; sleep 2) | script -qec \"stty rows 40 cols 120; {} --kubeconfig {} attach -it term\" /dev/null",
        support::kubectl_path("1.33").display(),
        server.kubeconfig.display()
    );
    let out = in_netns(Some(&netns.0), "sh")
        .args(["-c", &kubectl])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("40 120") && text.contains("/dev/pts/"),
        "{text}"
    );
    let ended = server.wait_json(&["get", "pod", "term"], 30, "term Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(
        ended["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        7
    );
    server.ok(
        "1.33",
        &["delete", "pod", "box", "done", "term", "--wait=false"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(server.dir.path().join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(Instant::now() < deadline, "pods were not torn down");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kubectl port-forward <pod> local:remote`, running until killed,
/// once it says it listens; its stderr is read when it is killed.
struct Forward(Child);

impl Forward {
    fn start(server: &TestServer, version: &str, pod: &str, ports: &str, websockets: bool) -> Self {
        let mut child = server
            .kubectl_command(version, &["port-forward", pod, ports, "-v=6"])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let local = ports.split(':').next().unwrap();
        let listening = format!("Forwarding from 127.0.0.1:{local}");
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains(&listening) => break,
                Some(Ok(_)) => {}
                _ => {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "kubectl port-forward {ports} ended: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self(child)
    }

    /// Stop it; what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.0.kill();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let _ = self.0.wait();
        err
    }
}

/// The Python client's `portforward()` to pod `web`: argv kubeconfig,
/// port, path; the HTTP body on stdout, the port's error on stderr.
const PYTHON_PORT_FORWARD: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
port = int(sys.argv[2])
pf = portforward(client.CoreV1Api().connect_get_namespaced_pod_portforward,
                 "web", "default", ports=str(port))
s = pf.socket(port)
s.settimeout(30)
data = b""
try:
    s.sendall(b"GET " + sys.argv[3].encode() + b" HTTP/1.0\r\n\r\n")
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    # A forwarding error can close the socket before the request is sent.
    pass
sys.stdout.buffer.write(data.split(b"\r\n\r\n", 1)[-1] if data else b"")
sys.stderr.write("port error: %s\n" % pf.error(port))
"#;

#[test]
fn kubectl_port_forward_reaches_the_pods_loopback_over_websocket_and_spdy() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("pfwd");
    let server = embedded(dir.path(), &netns, "pfwd");
    // httpd on the pod's loopback only: not reachable at the pod's IP,
    // only from inside its network namespace. A file of 50,000 lines
    // (477 KiB: many SPDY frames, more than a flow-control window).
    let web = pod(
        "web",
        "mkdir -p /www && i=0 && while [ $i -lt 50000 ]; do echo line$i; i=$((i+1)); done > /www/big && touch /www/done && exec httpd -f -p 127.0.0.1:8080 -h /www",
        "Always",
        1,
    );
    // A hostNetwork pod's loopback is the node's.
    let host = "apiVersion: v1
kind: Pod
metadata: {name: hostweb}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, 'mkdir -p /www && echo on the node > /www/index.html && exec httpd -f -p 127.0.0.1:18090 -h /www']
";
    let web = web.replace(
        "metadata: {name: web}",
        "metadata: {name: web, labels: {app: web}}",
    );
    let service = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";
    let file = server.write(
        "web.yaml",
        &[
            web,
            pod("done", "true", "Never", 1),
            host.to_owned(),
            service.to_owned(),
        ]
        .join("---\n"),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "web"], 60, "web Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until httpd serves (a forwarding error would end kubectl's session).
    while !server
        .kubectl(
            "1.33",
            &[
                "exec",
                "web",
                "--",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/done",
            ],
        )
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "web did not start serving");
        std::thread::sleep(Duration::from_millis(300));
    }
    let big: String = (0..50_000).map(|i| format!("line{i}\n")).collect();
    let get = |port: u16, path: &str| {
        in_netns(Some(&netns.0), "curl")
            .args(["-sS", "--max-time", "30"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap()
    };
    // kubectl 1.27 speaks only SPDY; 1.33 tunnels it in a WebSocket
    // unless told not to.
    for (local, version, websockets) in [
        (18080, "1.33", true),
        (18081, "1.33", false),
        (18083, "1.27", false),
    ] {
        let forward = Forward::start(
            &server,
            version,
            "pod/web",
            &format!("{local}:8080"),
            websockets,
        );
        // Several connections, one after another and two at once.
        for _ in 0..2 {
            let out = get(local, "/big");
            assert!(
                out.stdout == big.as_bytes(),
                "{} bytes over kubectl {version}'s port-forward (websockets {websockets}), {} expected: {}",
                out.stdout.len(),
                big.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let both = std::thread::scope(|s| {
            let a = s.spawn(|| get(local, "/big"));
            let b = s.spawn(|| get(local, "/done"));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(both.0.stdout, big.as_bytes());
        assert!(both.1.status.success(), "{both:?}");
        let log = forward.stop();
        // Which way kubectl went: a WebSocket upgrade is a GET, SPDY (and
        // the fallback after a failed WebSocket) a POST.
        let method = if websockets { "GET" } else { "POST" };
        let other = if websockets { "POST" } else { "GET" };
        let requests: Vec<&str> = log.lines().filter(|l| l.contains("/portforward")).collect();
        assert!(
            requests
                .iter()
                .any(|l| l.contains(method) && l.contains("101"))
                && !requests.iter().any(|l| l.contains(other)),
            "port-forward over {} expected: {log}",
            if websockets { "a WebSocket" } else { "SPDY" }
        );
    }
    // kubectl finds the pod behind a Service and its target port itself.
    let forward = Forward::start(&server, "1.33", "svc/web", "18086:80", true);
    let out = get(18086, "/done");
    assert!(out.status.success(), "svc/web over port-forward: {out:?}");
    forward.stop();
    server.wait_json(&["get", "pod", "hostweb"], 60, "hostweb Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(18090, "/").stdout != b"on the node\n" {
        assert!(Instant::now() < deadline, "hostweb did not start serving");
        std::thread::sleep(Duration::from_millis(300));
    }
    let forward = Forward::start(&server, "1.33", "pod/hostweb", "18091:18090", true);
    let out = get(18091, "/");
    assert_eq!(out.stdout, b"on the node\n", "{out:?}");
    forward.stop();
    // The Python client's portforward(): WebSocket channels.
    let python = |port: u16, path: &str| {
        // (A broken session must fail the test, not hang it.)
        in_netns(Some(&netns.0), "timeout")
            .args(["60", "python3", "-c"])
            .arg(PYTHON_PORT_FORWARD)
            .arg(&server.kubeconfig)
            .arg(port.to_string())
            .arg(path)
            .output()
            .unwrap()
    };
    let out = python(8080, "/big");
    assert!(
        out.status.success() && out.stdout == big.as_bytes(),
        "{} bytes through the Python client, {} expected: {}",
        out.stdout.len(),
        big.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = python(9999, "/");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("port error: ")
            && err.contains("nothing accepts connections on localhost:9999"),
        "{err}"
    );
    // Nothing listens on 9999: the error reaches kubectl on the error
    // stream, with the reason.
    let forward = Forward::start(&server, "1.33", "pod/web", "18082:9999", true);
    let out = get(18082, "/");
    assert!(!out.status.success(), "{out:?}");
    // kubectl drops the connection after a forwarding error and says so.
    std::thread::sleep(Duration::from_secs(1));
    let log = forward.stop();
    assert!(
        log.contains("an error occurred forwarding 18082 -> 9999")
            && log.contains("nothing accepts connections on localhost:9999"),
        "{log}"
    );
    // Requests that are not an upgrade, or for a pod that is not
    // running, get a Status saying why.
    let err = server.fails(
        "1.33",
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/web/portforward",
        ],
    );
    assert!(
        err.contains("port-forward is served over SPDY/3.1"),
        "{err}"
    );
    server.wait_json(&["get", "pod", "done"], 60, "done Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let err = server.fails(
        "1.33",
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/done/portforward",
        ],
    );
    assert!(err.contains("it is not running (phase Succeeded)"), "{err}");
    server.ok(
        "1.33",
        &["delete", "pod", "web", "done", "hostweb", "--wait=false"],
    );
    server.ok("1.33", &["delete", "service", "web", "--wait=false"]);
}

#[test]
fn service_account_tokens_are_mounted_and_authenticate_while_the_pod_lives() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("sa");
    let server = embedded(dir.path(), &netns, "sa");
    let url = server.url();
    // The status code of GET /api/v1/namespaces/default/pods with `token`.
    let call = |token: &str| -> (String, String) {
        let out = in_netns(Some(&netns.0), "curl")
            .args(["-sk", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{url}/api/v1/namespaces/default/pods"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_owned(), body.to_owned())
    };
    let mut no_token = pod("plain", "sleep 3600", "Always", 0);
    no_token.push_str("  automountServiceAccountToken: false\n");
    let file = server.write(
        "pods.yaml",
        &[
            pod("app", "trap 'exit 0' TERM; sleep 3600 & wait", "Always", 0),
            no_token,
        ]
        .join("---\n"),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let app = server.wait_json(&["get", "pod", "app"], 60, "app Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let mounts = &app["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .to_string()
            .contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts}"
    );
    let read = |file: &str| {
        server.ok(
            "1.33",
            &[
                "exec",
                "app",
                "--",
                "cat",
                &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
            ],
        )
    };
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").contains("BEGIN CERTIFICATE"));
    let token = read("token");
    assert_eq!(token.split('.').count(), 3, "{token}");
    // Authenticated as the service account (authorization is issue #6's).
    let (code, body) = call(&token);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("system:serviceaccount:default:default"),
        "{body}"
    );
    let (code, _) = call("not.a.token");
    assert_eq!(code, "401");
    // kubectl create token: the TokenRequest API.
    let made = server.ok("1.33", &["create", "token", "default", "--duration=20m"]);
    assert_eq!(call(made.trim()).0, "403");
    let err = server.fails("1.33", &["create", "token", "default", "--duration=1m"]);
    assert!(err.contains("10 minutes"), "{err}");
    let plain = server.wait_json(&["get", "pod", "plain"], 60, "plain Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(
        !plain["spec"].to_string().contains("kube-api-access"),
        "{}",
        plain["spec"]
    );
    // A bound token dies with its pod.
    server.ok("1.33", &["delete", "pod", "app", "plain", "--timeout=60s"]);
    assert_eq!(call(&token).0, "401");
}

/// kubectl 1.33 as whoever `kubeconfig` names, in the server's namespace.
fn kubectl_as(netns: &Netns, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    in_netns(Some(&netns.0), support::kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn nodes_join_with_their_own_certificate_and_are_confined_to_their_pods() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("join");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start(&server, &netns, &data, &run_dir, &logs, "join");
    server.wait_json(&["get", "node", "node-a"], 30, "node-a registered", |n| {
        n["metadata"]["name"] == "node-a"
    });
    // The agent made its key, got a certificate for it, and wrote a
    // kubeconfig for that identity; the token is not in it.
    let node_kc = data.join("agent/kubeconfig.yaml");
    let kc = std::fs::read_to_string(&node_kc).unwrap();
    let token = std::fs::read_to_string(server.dir.path().join("server/token")).unwrap();
    assert!(!kc.contains(token.trim()));
    use std::os::unix::fs::PermissionsExt;
    for f in ["client-kubelet.key", "node-password", "kubeconfig.yaml"] {
        let mode = std::fs::metadata(data.join("agent").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    let who = kubectl_as(&netns, &node_kc, &["auth", "whoami", "-o", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&who.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&who.stderr)));
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:node-a");

    // Another node and what its pods use; and what node-a's pod uses.
    let file = server.write(
        "join.yaml",
        "apiVersion: v1
kind: Node
metadata: {name: elsewhere}
---
apiVersion: v1
kind: Secret
metadata: {name: theirs}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: mine}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: far}
spec:
  nodeName: elsewhere
  containers: [{name: c, image: busybox:test, volumeMounts: [{name: s, mountPath: /s}]}]
  volumes: [{name: s, secret: {secretName: theirs}}]
---
apiVersion: v1
kind: Pod
metadata: {name: near}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600'], volumeMounts: [{name: s, mountPath: /s}]}
  volumes: [{name: s, secret: {secretName: mine}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox:test}]}
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let node = |args: &[&str]| kubectl_as(&netns, &node_kc, args);
    let forbidden = |args: &[&str], needle: &str| {
        let out = node(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(
            err.contains("Forbidden") || err.contains("forbidden"),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    assert!(node(&["get", "secret", "mine"]).status.success());
    forbidden(
        &["get", "secret", "theirs"],
        "User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object",
    );
    forbidden(&["get", "secrets"], "cannot list resource \"secrets\"");
    forbidden(
        &["scale", "deployment", "web", "--replicas=2"],
        "resource \"deployments\" in API group \"apps\"",
    );
    forbidden(
        &["delete", "deployment", "web"],
        "cannot delete resource \"deployments\"",
    );
    // Another Node: the authorizer lets nodes write Nodes, NodeRestriction
    // admission keeps each to its own (as upstream).
    forbidden(
        &["label", "node", "elsewhere", "taken=yes"],
        "nodes \"elsewhere\" is forbidden: node \"node-a\" is not allowed to modify node \"elsewhere\"",
    );
    forbidden(
        &["delete", "pod", "far", "--wait=false"],
        "no relationship found",
    );
    let impostor = server.write(
        "impostor.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: impostor}\n",
    );
    forbidden(
        &["create", "-f", impostor.to_str().unwrap()],
        "may only create its own Node object",
    );
    forbidden(
        &[
            "patch",
            "node",
            "elsewhere",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
        ],
        "nodes \"elsewhere\" is forbidden: node \"node-a\" is not allowed to modify node \"elsewhere\"",
    );
    // A certificate the cluster CA did not sign — even one claiming to be
    // an admin — is a 401.
    {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let forged = params.self_signed(&key).unwrap();
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut kc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&kc).unwrap();
        kc["users"][0]["user"]["client-certificate-data"] = b64(&forged.pem()).into();
        kc["users"][0]["user"]["client-key-data"] = b64(&key.serialize_pem()).into();
        let forged_kc = dir.path().join("forged.yaml");
        std::fs::write(&forged_kc, serde_yaml_ng::to_string(&kc).unwrap()).unwrap();
        let out = kubectl_as(&netns, &forged_kc, &["get", "pods"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("(Unauthorized)"),
            "{err}"
        );
    }
    // Its own node, its pods, the services every proxy reads: allowed.
    assert!(
        node(&["label", "node", "node-a", "mine=yes"])
            .status
            .success()
    );
    assert!(node(&["get", "pods", "-A"]).status.success());
    assert!(node(&["get", "services", "-A"]).status.success());
    server.wait_json(&["get", "pod", "near"], 30, "near Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // A second machine cannot take node-a's name (another node password).
    let url = server.url();
    let other = dir.path().join("other");
    let out = in_netns(Some(&netns.0), ORCH)
        .args(["agent", "--server", &url, "--token", token.trim()])
        .args(["--node-name", "node-a", "--data-dir"])
        .arg(&other)
        .args(["--run-dir"])
        .arg(other.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already taken by another machine")
            && err.contains("node-a.node-password.orch"),
        "{err}"
    );
    assert!(!other.join("agent/client-kubelet.crt").exists());

    // A token pinning another CA is refused before anything is sent.
    let (_, secret) = token.trim().split_once("::").unwrap();
    let wrong = format!("K10{}::{secret}", "0".repeat(64));
    let out = in_netns(Some(&netns.0), ORCH)
        .args(["agent", "--server", &url, "--token", &wrong])
        .args(["--node-name", "node-b", "--data-dir"])
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not match the join token") && err.contains("man-in-the-middle"),
        "{err}"
    );
    // The secret in that token is the server's real one: had the agent sent
    // it, it would have got a certificate and a node password stored.
    assert!(!dir.path().join("b/agent/client-kubelet.crt").exists());
    let stored = server.kubectl(
        "1.33",
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "node-b.node-password.orch",
        ],
    );
    assert!(!stored.status.success());
    server.ok("1.33", &["delete", "pod", "near", "--wait=true"]);
}

#[test]
fn extra_join_tokens_expire_and_only_get_node_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("tokens");
    let server = TestServer::start_in_netns(&netns.0, &[]);
    let orch = |args: &[&str]| {
        in_netns(Some(&netns.0), ORCH)
            .args(["token", "--data-dir"])
            .arg(server.dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = orch(&["create", "--ttl", "1h", "--description", "edge boxes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (id, _) = orch::api::join::parse_bootstrap(&token).expect("a K10 bootstrap token");
    let listed = String::from_utf8(orch(&["list"]).stdout).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    assert!(
        line.contains("edge boxes") && (line.contains(" 59m ") || line.contains(" 1h ")),
        "{listed}"
    );
    let bad = orch(&["create", "--ttl", "soon"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --ttl \"soon\""));

    // An agent joins with it and then uses its own certificate.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let _agent = Agent::start_as(
        &server,
        &netns,
        &data,
        &run_dir,
        &logs,
        "tokens",
        "node-t",
        &token_file,
        &[],
    );
    server.wait_json(&["get", "node", "node-t"], 30, "node-t Ready", is_ready);
    assert!(data.join("agent/client-kubelet.crt").exists());

    // The token itself may do nothing but that.
    let url = server.url();
    let with_token = |token: &str| {
        in_netns(Some(&netns.0), support::kubectl_path("1.33"))
            .args(["--kubeconfig", "/dev/null", "--server", &url])
            .args([
                "--insecure-skip-tls-verify",
                "--token",
                token,
                "get",
                "pods",
            ])
            .output()
            .unwrap()
    };
    let out = with_token(&token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Forbidden"), "{err}");

    // Deleted or expired, it no longer authenticates, and a new agent is
    // told what to do.
    let out = orch(&["delete", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&with_token(&token).stderr).into_owned();
    // kubectl's words for a 401.
    assert!(
        err.contains("asked for the client to provide credentials"),
        "{err}"
    );
    let missing = orch(&["delete", id]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no token with ID"));
    let short = orch(&["create", "--ttl", "1s"]);
    let short = String::from_utf8(short.stdout).unwrap().trim().to_owned();
    std::thread::sleep(Duration::from_millis(2100));
    for refused in [&token, &short] {
        let out = in_netns(Some(&netns.0), ORCH)
            .args(["agent", "--server", &url, "--token", refused])
            .args(["--node-name", "node-u", "--data-dir"])
            .arg(dir.path().join("u"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("refused the join token"), "{err}");
    }
    // The agent that joined keeps working with its certificate.
    assert!(
        kubectl_as(
            &netns,
            &data.join("agent/kubeconfig.yaml"),
            &["get", "node", "node-t"]
        )
        .status
        .success()
    );
}

#[test]
fn the_examples_do_what_their_comments_say() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("examples");
    let (run_dir, logs) = (dir.path().join("run"), dir.path().join("logs"));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let server = TestServer::start_with_agent(
        &netns.0,
        &[
            "--node-name",
            "examples",
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--pod-log-dir",
            logs.to_str().unwrap(),
            "--cgroup-root",
            &cgroup_root("examples"),
        ],
        |data| {
            // The air-gapped path the examples' README gives.
            let out = Command::new("sh")
                .arg(examples.join("build-image.sh"))
                .env("ORCH", ORCH)
                .env("ORCH_DATA_DIR", data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "build-image.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        },
    );
    let data = server.dir.path().to_owned();
    let server = Embedded {
        server,
        _guard: Cleanup { run_dir, data },
    };
    let apply = |file: &str| {
        server.ok(
            "1.33",
            &["apply", "-f", examples.join(file).to_str().unwrap()],
        );
    };
    for file in [
        "web.yaml",
        "daemonset.yaml",
        "job.yaml",
        "cronjob.yaml",
        "statefulset.yaml",
        "config.yaml",
        "init-sidecar.yaml",
    ] {
        apply(file);
    }
    let logs_of = |args: &[&str], needle: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = server.kubectl("1.33", args);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in kubectl {args:?} after {secs} s: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    // web.yaml: two Ready replicas answering HTTP, resources set, and the
    // two Services.
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/web", "--timeout=90s"],
    );
    let answer = logs_of(
        &[
            "exec",
            "deploy/web",
            "--",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/index.html",
        ],
        "hello from web-",
        30,
    );
    assert!(answer.starts_with("hello from web-"), "{answer}");
    // … and through the `web` Service, by its name (cluster DNS, proxy).
    let answer = logs_of(
        &[
            "exec",
            "deploy/web",
            "--",
            "wget",
            "-qO-",
            "http://web/index.html",
        ],
        "hello from web-",
        30,
    );
    assert!(answer.starts_with("hello from web-"), "{answer}");
    // Pods resolve through the cluster DNS (dnsPolicy ClusterFirst).
    let resolv = server.ok(
        "1.33",
        &["exec", "deploy/web", "--", "cat", "/etc/resolv.conf"],
    );
    assert_eq!(
        resolv,
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.43.0.10\noptions ndots:5\n"
    );
    let svc = server.wait_json(&["get", "svc", "web"], 10, "web Service", |s| {
        s["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43."))
    });
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    let np = server.wait_json(&["get", "svc", "web-nodeport"], 10, "NodePort", |s| {
        s["spec"]["type"] == "NodePort"
    });
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);

    // daemonset.yaml: one pod on the node, logging where it runs.
    logs_of(&["logs", "ds/node-logger"], "alive on examples", 60);

    // job.yaml: three completions, each printing the sum.
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/sum",
            "--timeout=90s",
        ],
    );
    let job = server.wait_json(&["get", "job", "sum"], 10, "sum done", |j| {
        j["status"]["succeeded"] == 3
    });
    assert_eq!(job["spec"]["parallelism"], 2);
    logs_of(&["logs", "job/sum"], "sum 5050", 10);

    // statefulset.yaml: db-0 and db-1, each named as its pod.
    server.ok("1.33", &["rollout", "status", "sts/db", "--timeout=90s"]);
    logs_of(&["exec", "db-1", "--", "hostname"], "db-1", 30);
    let headless = server.ok(
        "1.33",
        &["get", "svc", "db", "-o", "jsonpath={.spec.clusterIP}"],
    );
    assert_eq!(headless, "None");

    // config.yaml: env from both, the file from the ConfigMap, the
    // secret's file for its owner only.
    let configured = logs_of(&["logs", "configured"], "greeting=hello", 60);
    assert!(
        configured.contains("level=debug password=s3cret"),
        "{configured}"
    );
    assert!(configured.contains("-r--------"), "{configured}");

    // init-sidecar.yaml: the init container's message, shipped by the
    // sidecar while the app runs.
    logs_of(
        &["logs", "sidecar", "-c", "log-shipper"],
        "app says: prepared by the init container",
        60,
    );
    // All of the pod's containers at once (kubectl asks for each one),
    // each line prefixed with the container it came from.
    logs_of(
        &["logs", "sidecar", "--all-containers", "--prefix"],
        "[pod/sidecar/log-shipper] app says: prepared by the init container",
        30,
    );

    // cronjob.yaml: a Job within a minute or so, printing the time.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let jobs = server.ok("1.33", &["get", "jobs", "-l", "app=hello", "-o", "name"]);
        if let Some(job) = jobs.lines().next() {
            logs_of(&["logs", job], "hello at ", 60);
            break;
        }
        assert!(Instant::now() < deadline, "the CronJob made no Job");
        std::thread::sleep(Duration::from_secs(1));
    }
}
