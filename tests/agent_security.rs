//! What a container may do on a real node (`orch server` and `orch agent`
//! in a network namespace the test creates): seccomp, privileges, the
//! user and read-only paths a securityContext asks for, sysctls, and the
//! namespaces a pod's containers share. Needs root.

mod support;

use std::process::Command;

use support::pods::{one_shot, waiting, waiting_reason, waits_with};
use support::wait::{self, secs};
use support::{Cluster, in_netns};

#[test]
fn security_contexts_seccomp_and_sysctls_are_enforced() {
    let server = Cluster::builder()
        .own_netns("security")
        .loopback_agent(&[])
        .start();
    let (_, _, logs) = server.node_dirs("node-a");
    // seccompProfile RuntimeDefault refuses unshare; Unconfined does not.
    let manifest = [
        one_shot(
            "confined",
            "unshare -U true && echo allowed || echo denied",
            "    securityContext: {seccompProfile: {type: RuntimeDefault}}\n",
        ),
        one_shot(
            "unconfined",
            "unshare -U true && echo allowed || echo denied",
            "",
        ),
        // A privileged container has the host's devices; others do not.
        one_shot(
            "privileged",
            "test -c /dev/kmsg && echo allowed || echo denied",
            "    securityContext: {privileged: true}\n",
        ),
        one_shot(
            "unprivileged",
            "test -c /dev/kmsg && echo allowed || echo denied",
            "",
        ),
        // Nor can it open a device node it makes (/dev/kmsg's numbers):
        // the device cgroup allows mknod, not use.
        one_shot(
            "devnode",
            "mknod /dev/k c 1 11 && { (echo orch-test > /dev/k) 2>/dev/null && echo allowed || echo denied; }",
            "",
        ),
        // The user, no_new_privs, a read-only root, masked and read-only
        // /proc paths, as the spec asked, seen from inside.
        one_shot(
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
    let node = in_netns(server.netns.as_deref(), "cat")
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
}

#[test]
fn a_pods_containers_share_ipc_uts_and_shm_and_pids_only_when_asked() {
    let server = Cluster::builder()
        .own_netns("namespaces")
        .loopback_agent(&[])
        .start();
    let (data, run_dir, logs) = server.node_dirs("node-a");
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
    wait::until_ok(
        secs(15),
        "b sees a's /dev/shm and the pod host name",
        || {
            let log = std::fs::read_to_string(&log_b).unwrap_or_default();
            if log.contains("note shared host pair mem 64") && log.contains(" 2000 ") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
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
    // Once both run and the orphan (`sleep 0.2`) has ended: it is
    // reaped, or left a zombie (checked below).
    let ps = wait::until_ok(
        secs(30),
        "both containers' sleeps up and the orphan's gone",
        || {
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
            if ps.contains("sleep 3601") && ps.contains("sleep 3602") && !ps.contains("sleep 0.2") {
                Ok(ps)
            } else {
                Err(ps)
            }
        },
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
    wait::until_true(secs(10), "the shared pod's shim goes", || {
        !run_dir.join("pods").join(&shared_uid).exists()
    });
    // It dies with the shim.
    let holders = || {
        let out = Command::new("pgrep")
            .args(["-x", "pod-pid1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait::until_ok(secs(10), "the pod's PID 1 dies with its shim", || {
        let pid = holders();
        if pid.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{pid} {}",
            String::from_utf8_lossy(
                &Command::new("ps")
                    .args(["-o", "pid,ppid,stat,args", "-p", pid.trim()])
                    .output()
                    .unwrap()
                    .stdout
            )
        ))
    });
}
