//! Streams into a pod on a real node (`orch server` with its embedded
//! agent in a network namespace the test creates): `kubectl exec` with
//! stdin and terminals, `run -i` and `attach`, a shim lost under a running
//! container, and `kubectl port-forward` over WebSocket and SPDY. Needs
//! root.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use support::pods::{embedded, pod, until_pods_left};
use support::wait::{self, secs};
use support::{Cluster, Netns, in_netns};

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
    wait::until_ok(secs(60), "the pod comes back after its shim died", || {
        let out = server.kubectl("1.33", &["exec", "box", "--", "echo", "back"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == "back\n" {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
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
    until_pods_left(
        &server.dir.path().join("pods"),
        0,
        secs(30),
        "pods torn down",
    );
}

/// `kubectl port-forward <pod> local:remote`, running until killed,
/// once it says it listens; its stderr is read as it comes.
struct Forward {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Forward {
    fn start(server: &Cluster, version: &str, pod: &str, ports: &str, websockets: bool) -> Self {
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
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let stderr = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                    let Ok(line) = line else { break };
                    let mut all = stderr.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            })
        };
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let local = ports.split(':').next().unwrap();
        let listening = format!("Forwarding from 127.0.0.1:{local}");
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains(&listening) => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.wait();
                    let _ = reader.join();
                    panic!(
                        "kubectl port-forward {ports} ended: {}",
                        stderr.lock().unwrap()
                    );
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            stderr,
            reader,
        }
    }

    /// What it wrote on stderr so far.
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stop it; what it wrote on stderr.
    fn stop(self) -> String {
        let Self {
            mut child,
            stderr,
            reader,
        } = self;
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        stderr.lock().unwrap().clone()
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
    // Until httpd serves (a forwarding error would end kubectl's session).
    wait::until_true(secs(60), "web serves", || {
        server
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
    });
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
    wait::until_true(secs(30), "hostweb serves", || {
        get(18090, "/").stdout == b"on the node\n"
    });
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
    wait::until_true(secs(10), "kubectl reports the forwarding error", || {
        forward
            .stderr()
            .contains("an error occurred forwarding 18082 -> 9999")
    });
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
