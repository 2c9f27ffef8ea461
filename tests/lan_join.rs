//! A cluster on a LAN with no default route, joined by node IPs: the
//! server advertises its `--node-ip` (not 127.0.0.1) and its serving
//! certificate covers it, so an agent joining by that address trusts it;
//! an agent joining by an address the certificate lacks says so in one
//! line and stops. Root; only in network namespaces the test creates.

mod support;

use std::process::Stdio;

use support::agents::{Agent, Join, agent_dirs, is_ready};
use support::cluster::ip;
use support::{Cluster, in_netns, wait};

/// The LAN, 10.77.0.0/24; the server is its `.1`.
const PREFIX: &str = "10.77.0";
const SERVER_IP: &str = "10.77.0.1";
/// Also the server's, but named by no flag, so not in its certificate.
const OTHER_SERVER_IP: &str = "10.77.0.5";
/// The first joined node's (n1).
const AGENT_IP: &str = "10.77.0.11";

/// A server on a LAN with no default route, listening on every address,
/// advertising its `--node-ip`, and `agents` nodes joined by that address.
fn cluster(tag: &str, agents: usize) -> Cluster {
    Cluster::builder()
        .lan(tag, PREFIX)
        .flags(&["--bind-address", "0.0.0.0", "--node-ip", SERVER_IP])
        .agents(agents, &[])
        .start()
}

#[test]
fn agent_joins_by_the_servers_node_ip_on_a_lan_without_default_route() {
    let server = cluster("lanjoin", 1);
    let port = server.port();

    // The serving certificate covers the node IP.
    let pem = in_netns(server.netns.as_deref(), "sh")
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

    // A real agent on another machine joined by the node IP.
    assert_eq!(server.lan_url(), format!("https://{SERVER_IP}:{port}"));
    let node = server.wait_json(&["get", "node", "n1"], 60, "n1 Ready", is_ready);
    let addresses = node["status"]["addresses"].to_string();
    assert!(addresses.contains(AGENT_IP), "{addresses}");
}

#[test]
fn agent_joining_by_an_address_the_certificate_lacks_names_tls_san_and_exits() {
    let server = cluster("lanbad", 0);
    let server_ns = server.host("server");
    ip(&[
        "-n",
        &server_ns.0,
        "addr",
        "add",
        &format!("{OTHER_SERVER_IP}/24"),
        "dev",
        "eth0",
    ]);
    let url = format!("https://{OTHER_SERVER_IP}:{}", server.port());
    let agent_ns = server.lan().machine("agent", 11);
    let dir = tempfile::tempdir().unwrap();
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let mut agent = Agent::join(Join {
        url: url.clone(),
        token_file: server.token_file(),
        netns: agent_ns.0.clone(),
        data,
        run_dir,
        logs,
        tag: "lanbad".into(),
        node: "lan-agent".into(),
        extra: vec!["--node-ip".into(), AGENT_IP.into()],
        stderr: Stdio::piped(),
    });
    // "Retrying forever" would be the bug.
    let status = agent.exit_status(wait::secs(30));
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
