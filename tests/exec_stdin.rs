//! Exec stdin from clients not written here: the Python client sends `str`
//! stdin in WebSocket text frames, which upstream reads like binary ones;
//! `v4.base64.channel.k8s.io` carries base64 text both ways. A real agent
//! in a network namespace runs the pod. Needs root.

mod support;

use support::{Cluster, in_netns};

#[test]
fn exec_reads_stdin_sent_as_text_frames_and_base64() {
    let server = Cluster::builder()
        .own_netns("execin")
        .loopback_agent(&[])
        .start();
    let file = server.write(
        "box.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"trap 'exit 0' TERM; sleep 3600 & wait\"]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "box"], 60, "box Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/exec_stdin.py");
    let out = in_netns(server.netns.as_deref(), "python3")
        .arg(script)
        .arg(&server.kubeconfig)
        .arg("box")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "exec stdin checks failed (is `pip install kubernetes` done?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.ok("1.33", &["delete", "pod", "box", "--wait=false"]);
}
