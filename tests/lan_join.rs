//! A cluster on a LAN with no default route, joined by node IPs: the
//! server advertises its `--node-ip` (not 127.0.0.1) and its serving
//! certificate covers it, so an agent joining by that address trusts it;
//! an agent joining by an address the certificate lacks says so in one
//! line and stops. Root; only in network namespaces the test creates.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::agents::{agent_dirs, cgroup_root, is_ready};
use support::{Netns, ORCH, TestServer, in_netns};

const SERVER_IP: &str = "10.77.0.1";
/// Also the server's, but named by no flag, so not in its certificate.
const OTHER_SERVER_IP: &str = "10.77.0.5";
const AGENT_IP: &str = "10.77.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces on one link, 10.77.0.0/24, and no default route in
/// either.
fn lan(server: &Netns, agent: &Netns) {
    ip(&[
        "link", "add", "lan0", "netns", &server.0, "type", "veth", "peer", "name", "lan0", "netns",
        &agent.0,
    ]);
    for (ns, addrs) in [
        (server, vec![SERVER_IP, OTHER_SERVER_IP]),
        (agent, vec![AGENT_IP]),
    ] {
        for a in addrs {
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "lan0",
            ]);
        }
        ip(&["-n", &ns.0, "link", "set", "lan0", "up"]);
    }
}

/// The port the server listens on (from its kubeconfig).
fn port(server: &TestServer) -> String {
    let url = server.url();
    url.rsplit(':').next().expect("a port").to_owned()
}

/// An `orch agent` child, killed and its leftovers removed when dropped.
struct AgentProcess {
    child: std::process::Child,
    run_dir: PathBuf,
    data: PathBuf,
    tag: &'static str,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        support::agents::cleanup(&self.run_dir, &self.data, &[self.tag]);
    }
}

fn agent_command(netns: &Netns, dir: &Path, url: &str, token: &Path, tag: &str) -> Command {
    let (data, run_dir, logs) = agent_dirs(dir);
    let mut cmd = in_netns(Some(&netns.0), ORCH);
    cmd.args(["agent", "--server", url, "--token-file"])
        .arg(token)
        .args([
            "--node-name",
            "lan-agent",
            "--node-ip",
            AGENT_IP,
            "--data-dir",
        ])
        .arg(&data)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--pod-log-dir")
        .arg(&logs)
        .args(["--cgroup-root", &cgroup_root(tag)])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn agent_joins_by_the_servers_node_ip_on_a_lan_without_default_route() {
    let dir = tempfile::tempdir().unwrap();
    let server_ns = Netns::new("lans");
    let agent_ns = Netns::new("lana");
    lan(&server_ns, &agent_ns);
    let server = TestServer::start_in_netns(
        &server_ns.0,
        &["--bind-address", "0.0.0.0", "--node-ip", SERVER_IP],
    );
    let port = port(&server);

    // The serving certificate covers the node IP.
    let pem = in_netns(Some(&server_ns.0), "sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {SERVER_IP}:{port} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&pem.stdout);
    assert!(
        sans.contains(&format!("IP Address:{SERVER_IP}")),
        "the serving certificate lacks the node IP: {sans}"
    );

    // The `kubernetes` Service's endpoints hold the node IP, not 127.0.0.1.
    let eps = server.wait_json(
        &["get", "endpoints", "kubernetes", "-n", "default"],
        30,
        "kubernetes endpoints",
        |e| e["subsets"][0]["addresses"][0]["ip"].is_string(),
    );
    assert_eq!(eps["subsets"][0]["addresses"][0]["ip"], SERVER_IP, "{eps}");
    let slice = server.wait_json(
        &["get", "endpointslice", "kubernetes", "-n", "default"],
        30,
        "kubernetes endpointslice",
        |e| e["endpoints"][0]["addresses"][0].is_string(),
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], SERVER_IP, "{slice}");

    // A real agent in the other namespace joins by the node IP.
    let token = server.dir.path().join("server/token");
    let url = format!("https://{SERVER_IP}:{port}");
    let agent_dir = dir.path().join("a");
    let child = agent_command(&agent_ns, &agent_dir, &url, &token, "lanjoin")
        .spawn()
        .unwrap();
    let _agent = AgentProcess {
        child,
        run_dir: agent_dir.join("run"),
        data: agent_dir.join("agent"),
        tag: "lanjoin",
    };
    let node = server.wait_json(&["get", "node", "lan-agent"], 60, "lan-agent Ready", |n| {
        is_ready(n)
    });
    let addresses = node["status"]["addresses"].to_string();
    assert!(addresses.contains(AGENT_IP), "{addresses}");
}

#[test]
fn agent_joining_by_an_address_the_certificate_lacks_names_tls_san_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server_ns = Netns::new("lanbs");
    let agent_ns = Netns::new("lanba");
    lan(&server_ns, &agent_ns);
    let server = TestServer::start_in_netns(
        &server_ns.0,
        &["--bind-address", "0.0.0.0", "--node-ip", SERVER_IP],
    );
    let url = format!("https://{OTHER_SERVER_IP}:{}", port(&server));
    let token = server.dir.path().join("server/token");
    let agent_dir = dir.path().join("a");
    let child = agent_command(&agent_ns, &agent_dir, &url, &token, "lanbad")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = AgentProcess {
        child,
        run_dir: agent_dir.join("run"),
        data: agent_dir.join("agent"),
        tag: "lanbad",
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent still runs 30 s after joining by an address not in the certificate (retrying forever?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    use std::io::Read;
    agent
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("--tls-san"))
        .unwrap_or_else(|| panic!("no line names --tls-san: {stderr}"));
    assert!(
        line.contains(&url)
            && line.contains(&format!("not valid for {OTHER_SERVER_IP}"))
            && line.contains(&format!("--tls-san {OTHER_SERVER_IP}"))
            && line.contains(SERVER_IP),
        "the error names the URL, the cause, the names covered and the fix: {line}"
    );
}
