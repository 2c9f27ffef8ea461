//! Probes on a real node (`orch server` and `orch agent` in a network
//! namespace the test creates): readiness, liveness and startup probes
//! over exec, HTTP, TCP and gRPC, their timeouts and delays, and the pod
//! conditions they set. Needs root.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;
use support::agents::is_ready;
use support::wait::{self, secs};

#[test]
fn probes_gate_readiness_and_restart_unhealthy_containers() {
    let server = Cluster::builder()
        .own_netns("probes")
        .loopback_agent(&[])
        .start();
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
    command: [/bin/sh, -c, \"mkdir -p /tmp; exec sleep 3600\"]
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
    // The probe has failed (its event), then the file it tests appears.
    server.eventually(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=slow",
        ],
        "slow's readiness probe failing",
        |events| events.contains("Readiness probe failed"),
    );
    server.ok("1.33", &["exec", "slow", "--", "touch", "/tmp/ready"]);
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
    // Nothing to wait for: the count must stay low all that while.
    wait::holds(
        secs(12),
        "timed-out probes are killed, not left running (at most two `sleep 30`)",
        || {
            let ps = server.ok("1.33", &["exec", "stuck", "--", "busybox", "ps"]);
            ps.matches("sleep 30").count() <= 2
        },
    );
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
    // Nothing to wait for: it must stay unstarted and unready while the
    // startup probe fails.
    let unstarted = |p: &Value| {
        let s = &p["status"]["containerStatuses"][0];
        s["started"] == false && s["ready"] == false && s["restartCount"] == 0
    };
    wait::holds(
        secs(2),
        "starting unstarted, unready, not restarted",
        || unstarted(&server.wait_json(&["get", "pod", "starting"], 10, "starting", |_| true)),
    );
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
