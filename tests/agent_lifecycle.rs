//! A pod's life on a real node (`orch server` and `orch agent` in a
//! network namespace the test creates, busybox through the shim and
//! libcontainer, driven by kubectl): it runs, exits, restarts with a
//! back-off, outlives an agent kill, is OOM-killed, runs its hooks and
//! init containers, and stops within its grace period. Needs root.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::agents::{import_busybox, is_ready};
use support::pods::{one_shot, pod, until_pods_left, wait_logs, waiting, waits_with};
use support::wait::{self, secs};
use support::{Cluster, ORCH};

#[test]
fn pods_really_run_exit_restart_and_go() {
    let mut server = Cluster::builder()
        .own_netns("agent")
        .loopback_agent(&[])
        .start();
    let (data, run_dir, logs) = server.node_dirs("node-a");
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
    let gone_cgroup = format!("{}/pod{gone_uid}", server.agent("node-a").cgroup_root());
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
    server.agent("node-a").kill();
    server.ok(
        "1.33",
        &["delete", "pod", "gone", "--force", "--grace-period=0"],
    );
    server.agent("node-a").start_again();
    let ticks_at_kill = ticks();
    // Nothing to wait for: the new agent must leave the container alone
    // (the check below repeats on what it says after these 2 s).
    wait::holds(
        secs(2),
        "long's container running, not restarted, across the agent restart",
        || {
            let p = server.wait_json(&["get", "pod", "long"], 30, "long", |_| true);
            let cs = &p["status"]["containerStatuses"][0];
            cs["state"]["running"]["startedAt"] == started && cs["restartCount"] == 0
        },
    );
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
    wait::until_true(secs(15), "the log goes on after the agent's kill", || {
        ticks() >= ticks_at_kill + 3
    });
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
    wait::until_ok(
        secs(30),
        "a pod deleted while the agent was away leaves nothing",
        || {
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
                Ok(())
            } else {
                Err(format!("left {left:?}"))
            }
        },
    );
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
    until_pods_left(
        &data.join("pods"),
        0,
        secs(30),
        "the agent cleans up the deleted pods",
    );
    assert_eq!(std::fs::read_dir(run_dir.join("pods")).unwrap().count(), 0);
}

#[test]
fn oom_kills_termination_messages_hooks_and_events() {
    let mut server = Cluster::builder()
        .own_netns("lifecycle")
        .loopback_agent(&[])
        .start();
    let (data, _, logs) = server.node_dirs("node-a");
    let manifest = [
        one_shot("oom", "dd if=/dev/zero of=/dev/null bs=64M count=1", "    resources: {limits: {memory: 16Mi}}\n"),
        one_shot("msg", "echo bye > /dev/termination-log; exit 2", ""),
        one_shot("fallback", "echo last words; exit 1", "    terminationMessagePolicy: FallbackToLogsOnError\n"),
        one_shot(
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
    wait::until_true(
        secs(10),
        "postStart ran before the main process looked",
        || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("post-start")
        },
    );
    // The pod's own cgroup carries the pod's limits.
    let pod_cgroup = format!("{}/pod{uid}", server.agent("node-a").cgroup_root());
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
    let again = server.dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    import_busybox(&again, &data);
    // The log as it goes (the file goes with the pod): preStop's words
    // must be in it.
    let mut follow = server
        .kubectl_command("1.33", &["logs", "-f", "hooks"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let mut stdout = follow.stdout.take().unwrap();
        let followed = followed.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                followed.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    // Following, once the first line came through.
    wait::until_true(secs(30), "kubectl logs -f hooks follows", || {
        String::from_utf8_lossy(&followed.lock().unwrap()).contains("post-start")
    });
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
    follow.wait().unwrap();
    reader.join().unwrap();
    let log = String::from_utf8(followed.lock().unwrap().clone()).unwrap();
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
}
