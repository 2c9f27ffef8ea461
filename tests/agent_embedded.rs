//! `orch server` running pods on its embedded agent (in a network
//! namespace the test creates): more pods than the server's blocking
//! pool, and every example in `examples/` doing what its comments say.
//! Needs root.

mod support;

use std::path::Path;
use std::process::Command;

use support::agents::{cgroup_root, is_ready};
use support::pods::{Embedded, embedded, pod, until_pods_left};
use support::wait::{self, secs};
use support::{Cluster, Netns, ORCH};

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
    until_pods_left(
        &server.dir.path().join("pods"),
        0,
        secs(60),
        "the many pods torn down",
    );
    wait::until_true(secs(30), "the embedded agent cleans up", || {
        !server.dir.path().join("pods").join(uid).exists()
    });
    drop(server);
}

/// `orch server` with its embedded agent (node `tag`) in `netns`, its
/// run and log dirs in `dir/run` and `dir/logs`, and the busybox image
/// waiting in `<data-dir>/agent/images` (an air-gapped install); the

#[test]
fn the_examples_do_what_their_comments_say() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("examples");
    let (run_dir, logs) = (dir.path().join("run"), dir.path().join("logs"));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let server = Cluster::start_with_agent(
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
    let server = Embedded::new(server, run_dir, "examples");
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
    let logs_of = |args: &[&str], needle: &str, within: u64| {
        wait::until_ok(
            secs(within),
            &format!("{needle:?} in kubectl {args:?}"),
            || {
                let out = server.kubectl("1.33", args);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains(needle) {
                    Ok(text)
                } else {
                    Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
                }
            },
        )
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
    let job = wait::until(secs(150), "the CronJob makes a Job", || {
        let jobs = server.ok("1.33", &["get", "jobs", "-l", "app=hello", "-o", "name"]);
        jobs.lines().next().map(str::to_owned)
    });
    logs_of(&["logs", &job], "hello at ", 60);
}
