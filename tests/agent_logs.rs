//! Container logs on a real node (`orch server` and `orch agent` in a
//! network namespace the test creates): `kubectl logs -f` across the
//! agent's rotations, byte limits, and output that is not UTF-8. Needs
//! root.

mod support;

use std::process::Stdio;

use support::agents::{Agent, agent_dirs, is_ready};
use support::wait::{self, secs};
use support::{Cluster, Netns};

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
    let server = Cluster::start_in_netns(&netns.0, &[]);
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
    wait::until_ok(secs(60), "kubectl logs -f sees the end", || {
        let got = got.lock().unwrap();
        if got.ends_with(done) {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&got).into_owned())
        }
    });
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
