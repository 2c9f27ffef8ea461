//! The official Python `kubernetes` client works unchanged against orch.

mod support;

use std::process::Command;

use support::Cluster;

#[test]
fn python_client_creates_lists_watches_patches_and_deletes() {
    let server = Cluster::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_test.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&server.kubeconfig)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python client checks failed (is `pip install kubernetes` done? scripts/test.sh installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
