//! The agent and the server restarted on a real node (`orch server` and
//! `orch agent` in a network namespace the test creates): an agent that
//! starts while the server is down joins when it is back, and running
//! pods, watches, heartbeats and log tunnels carry on. Needs root.

mod support;

use std::time::Duration;

use support::Cluster;
use support::agents::{Agent, is_ready};
use support::pods::{pod, until_pods_left, wait_logs};
use support::wait::{self, secs};

#[test]
fn the_agent_resumes_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port (the namespace is the test's own), so the agent finds
    // the server again where it was.
    let port = ["--https-listen-port", "16443"];
    let server = Cluster::builder()
        .own_netns("srvrestart")
        .flags(&port)
        .loopback_agent(&[])
        .start();
    let (data, _, _) = server.node_dirs("node-a");
    let file = server.write(
        "before.yaml",
        &pod("before", "echo before; exec sleep 3600", "Always", 1),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.wait_json(&["get", "pod", "before"], 60, "before Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // While the server is down a new agent starts: it retries until the
    // server is back, then joins. (A second node, started by hand: the
    // builder's agents start with the server.)
    let token = server.dir.path().join("server/token");
    let (server, _late) = server.restart_with(&port, |stopped| {
        let mut late = Agent::start_as(
            stopped,
            stopped.host("server"),
            &dir.path().join("late"),
            &dir.path().join("late-run"),
            &dir.path().join("late-logs"),
            "restartlate",
            "node-late",
            &token,
            &["--node-taint", "dedicated=late:NoSchedule"],
        );
        // Nothing to wait for while the server is down: the agent must
        // keep retrying, not give up.
        wait::holds(
            Duration::from_millis(2500),
            "node-late's agent keeps running while the server is down",
            || late.child.try_wait().unwrap().is_none(),
        );
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
    until_pods_left(&data.join("pods"), 0, secs(30), "the agent cleans up");
}
