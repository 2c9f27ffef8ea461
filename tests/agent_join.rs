//! Nodes joining a real server (`orch server` and `orch agent` in a
//! network namespace the test creates): each with a certificate of its
//! own, confined to what its pods need; join tokens that expire and do
//! nothing else. Needs root.

mod support;

use support::agents::{Agent, agent_dirs, is_ready};
use support::pods::kubectl_as;
use support::wait::{self, secs};
use support::{Cluster, Netns, ORCH, in_netns};

#[test]
fn nodes_join_with_their_own_certificate_and_are_confined_to_their_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = Cluster::builder()
        .own_netns("join")
        .loopback_agent(&[])
        .start();
    let netns = server.host("server");
    let (data, _, _) = server.node_dirs("node-a");
    server.wait_json(&["get", "node", "node-a"], 30, "node-a registered", |n| {
        n["metadata"]["name"] == "node-a"
    });
    // The agent made its key, got a certificate for it, and wrote a
    // kubeconfig for that identity; the token is not in it.
    let node_kc = data.join("agent/kubeconfig.yaml");
    let kc = std::fs::read_to_string(&node_kc).unwrap();
    let token = std::fs::read_to_string(server.dir.path().join("server/token")).unwrap();
    assert!(!kc.contains(token.trim()));
    use std::os::unix::fs::PermissionsExt;
    for f in ["client-kubelet.key", "node-password", "kubeconfig.yaml"] {
        let mode = std::fs::metadata(data.join("agent").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
    let who = kubectl_as(netns, &node_kc, &["auth", "whoami", "-o", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&who.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&who.stderr)));
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:node-a");
    // It asked through the CertificateSigningRequest API, as a kubelet
    // does; the join token's request was approved at once.
    let csr = issued_to(&server, "system:orch-agent");
    assert!(
        csr["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("node-csr-")
    );
    assert_eq!(
        csr["status"]["conditions"][0]["message"],
        "Auto approving kubelet client certificate after SubjectAccessReview."
    );
    let table = server.ok("1.33", &["get", "csr"]);
    let row = table
        .lines()
        .find(|l| l.contains("system:orch-agent"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("kubernetes.io/kube-apiserver-client-kubelet")
            && row.ends_with("Approved,Issued"),
        "{table}"
    );

    // Another node and what its pods use; and what node-a's pod uses.
    let file = server.write(
        "join.yaml",
        "apiVersion: v1
kind: Node
metadata: {name: elsewhere}
---
apiVersion: v1
kind: Secret
metadata: {name: theirs}
stringData: {k: v}
---
apiVersion: v1
kind: Secret
metadata: {name: mine}
stringData: {k: v}
---
apiVersion: v1
kind: Pod
metadata: {name: far}
spec:
  nodeName: elsewhere
  containers: [{name: c, image: busybox:test, volumeMounts: [{name: s, mountPath: /s}]}]
  volumes: [{name: s, secret: {secretName: theirs}}]
---
apiVersion: v1
kind: Pod
metadata: {name: near}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: busybox:test, imagePullPolicy: Never, command: [sleep, '3600'], volumeMounts: [{name: s, mountPath: /s}]}
  volumes: [{name: s, secret: {secretName: mine}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox:test}]}
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let node = |args: &[&str]| kubectl_as(netns, &node_kc, args);
    let forbidden = |args: &[&str], needle: &str| {
        let out = node(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(
            err.contains("Forbidden") || err.contains("forbidden"),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    assert!(node(&["get", "secret", "mine"]).status.success());
    forbidden(
        &["get", "secret", "theirs"],
        "User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object",
    );
    forbidden(&["get", "secrets"], "cannot list resource \"secrets\"");
    forbidden(
        &["scale", "deployment", "web", "--replicas=2"],
        "resource \"deployments\" in API group \"apps\"",
    );
    forbidden(
        &["delete", "deployment", "web"],
        "cannot delete resource \"deployments\"",
    );
    // Another Node: the authorizer lets nodes write Nodes, NodeRestriction
    // admission keeps each to its own (as upstream).
    forbidden(
        &["label", "node", "elsewhere", "taken=yes"],
        "nodes \"elsewhere\" is forbidden: node \"node-a\" is not allowed to modify node \"elsewhere\"",
    );
    forbidden(
        &["delete", "pod", "far", "--wait=false"],
        "no relationship found",
    );
    let impostor = server.write(
        "impostor.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: impostor}\n",
    );
    forbidden(
        &["create", "-f", impostor.to_str().unwrap()],
        "may only create its own Node object",
    );
    forbidden(
        &[
            "patch",
            "node",
            "elsewhere",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
        ],
        "nodes \"elsewhere\" is forbidden: node \"node-a\" is not allowed to modify node \"elsewhere\"",
    );
    // A certificate the cluster CA did not sign — even one claiming to be
    // an admin — is a 401.
    {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let forged = params.self_signed(&key).unwrap();
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut kc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&kc).unwrap();
        kc["users"][0]["user"]["client-certificate-data"] = b64(&forged.pem()).into();
        kc["users"][0]["user"]["client-key-data"] = b64(&key.serialize_pem()).into();
        let forged_kc = dir.path().join("forged.yaml");
        std::fs::write(&forged_kc, serde_yaml_ng::to_string(&kc).unwrap()).unwrap();
        let out = kubectl_as(netns, &forged_kc, &["get", "pods"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("(Unauthorized)"),
            "{err}"
        );
    }
    // Its own node, its pods, the services every proxy reads: allowed.
    assert!(
        node(&["label", "node", "node-a", "mine=yes"])
            .status
            .success()
    );
    assert!(node(&["get", "pods", "-A"]).status.success());
    assert!(node(&["get", "services", "-A"]).status.success());
    server.wait_json(&["get", "pod", "near"], 30, "near Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // A second machine cannot take node-a's name (another node password).
    let url = server.url();
    let other = dir.path().join("other");
    let out = in_netns(Some(&netns.0), ORCH)
        .args(["agent", "--server", &url, "--token", token.trim()])
        .args(["--node-name", "node-a", "--data-dir"])
        .arg(&other)
        .args(["--run-dir"])
        .arg(other.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already taken by another machine")
            && err.contains("node-a.node-password.orch"),
        "{err}"
    );
    assert!(!other.join("agent/client-kubelet.crt").exists());

    // A token pinning another CA is refused before anything is sent.
    let (_, secret) = token.trim().split_once("::").unwrap();
    let wrong = format!("K10{}::{secret}", "0".repeat(64));
    let out = in_netns(Some(&netns.0), ORCH)
        .args(["agent", "--server", &url, "--token", &wrong])
        .args(["--node-name", "node-b", "--data-dir"])
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not match the join token") && err.contains("man-in-the-middle"),
        "{err}"
    );
    // The secret in that token is the server's real one: had the agent sent
    // it, it would have got a certificate and a node password stored.
    assert!(!dir.path().join("b/agent/client-kubelet.crt").exists());
    let stored = server.kubectl(
        "1.33",
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "node-b.node-password.orch",
        ],
    );
    assert!(!stored.status.success());
    server.ok("1.33", &["delete", "pod", "near", "--wait=true"]);
}

#[test]
fn extra_join_tokens_expire_and_only_get_node_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("tokens");
    let server = Cluster::start_in_netns(&netns.0, &[]);
    let orch = |args: &[&str]| {
        in_netns(Some(&netns.0), ORCH)
            .args(["token", "--data-dir"])
            .arg(server.dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = orch(&["create", "--ttl", "1h", "--description", "edge boxes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (id, _) = orch::api::join::parse_bootstrap(&token).expect("a K10 bootstrap token");
    let listed = String::from_utf8(orch(&["list"]).stdout).unwrap();
    let line = listed
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    assert!(
        line.contains("edge boxes") && (line.contains(" 59m ") || line.contains(" 1h ")),
        "{listed}"
    );
    let bad = orch(&["create", "--ttl", "soon"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --ttl \"soon\""));

    // An agent joins with it and then uses its own certificate.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let (data, run_dir, logs) = agent_dirs(dir.path());
    let mut agent = Agent::start_as(
        &server,
        &netns,
        &data,
        &run_dir,
        &logs,
        "tokens",
        "node-t",
        &token_file,
        &[],
    );
    server.wait_json(&["get", "node", "node-t"], 30, "node-t Ready", is_ready);
    assert!(data.join("agent/client-kubelet.crt").exists());
    let csr = issued_to(&server, &format!("system:bootstrap:{id}"));
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved");

    // The token itself may do nothing but that.
    let url = server.url();
    let with_token = |token: &str, args: &[&str]| {
        in_netns(Some(&netns.0), support::kubectl_path("1.33"))
            .args(["--kubeconfig", "/dev/null", "--server", &url])
            .args(["--insecure-skip-tls-verify", "--token", token])
            .args(args)
            .output()
            .unwrap()
    };
    let out = with_token(&token, &["get", "pods"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Forbidden"), "{err}");
    // It may ask for certificates, but only nodes' are approved: a
    // person's waits for an admin, while a node's asked for after it is
    // approved at once. And it must prove a node's password to ask for a
    // node's (orch agent sends it; kubectl cannot).
    let (jane, _) = csr_manifest("jane", "", "kubernetes.io/kube-apiserver-client", None);
    let jane_file = server.write("jane-csr.yaml", &jane);
    let out = with_token(&token, &["create", "-f", jane_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (node_v, _) = csr_manifest(
        "system:node:node-v",
        "system:nodes",
        "kubernetes.io/kube-apiserver-client-kubelet",
        None,
    );
    let node_v_file = server.write("node-v-csr.yaml", &node_v);
    let out = with_token(&token, &["create", "-f", node_v_file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "a bootstrap token may ask for node \"node-v\"'s certificate only with that node's password in header orch-node-password"
            ),
        "{err}"
    );
    let (short_cert, short_key) = node_certificate(&server, "node-t", 30 * 24 * 3600);
    let jane: serde_json::Value =
        serde_json::from_str(&server.ok("1.33", &["get", "csr", "jane", "-o", "json"])).unwrap();
    assert!(jane["status"]["conditions"].is_null(), "{jane}");

    // Deleted or expired, it no longer authenticates, and a new agent is
    // told what to do.
    let out = orch(&["delete", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&with_token(&token, &["get", "pods"]).stderr).into_owned();
    assert!(unauthorized(&err), "{err}");
    let missing = orch(&["delete", id]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no token with ID"));
    let short = orch(&["create", "--ttl", "1s"]);
    let short = String::from_utf8(short.stdout).unwrap().trim().to_owned();
    // Until the server no longer takes it (401, not the 403 of a live one).
    wait::until_ok(secs(10), "the 1 s token expires", || {
        let err =
            String::from_utf8_lossy(&with_token(&short, &["get", "pods"]).stderr).into_owned();
        if unauthorized(&err) { Ok(()) } else { Err(err) }
    });
    for refused in [&token, &short] {
        let out = in_netns(Some(&netns.0), ORCH)
            .args(["agent", "--server", &url, "--token", refused])
            .args(["--node-name", "node-u", "--data-dir"])
            .arg(dir.path().join("u"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("refused the join token"), "{err}");
    }
    // The agent that joined keeps working with its certificate.
    assert!(
        kubectl_as(
            &netns,
            &data.join("agent/kubeconfig.yaml"),
            &["get", "node", "node-t"]
        )
        .status
        .success()
    );
    // One whose certificate nears its end renews it at start as itself,
    // with its token long gone: approved as its own (selfnodeclient).
    agent.kill_and_restart_after(|| {
        std::fs::write(data.join("agent/client-kubelet.crt"), &short_cert).unwrap();
        std::fs::write(data.join("agent/client-kubelet.key"), &short_key).unwrap();
    });
    let csr = issued_to(&server, "system:node:node-t");
    assert_eq!(
        csr["status"]["conditions"][0]["message"],
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    );
    let days_left = |pem: &str| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        (cert.validity().not_after.timestamp() - jiff::Timestamp::now().as_second()) / 86400
    };
    assert!(days_left(&short_cert) < 31);
    wait::until_true(secs(30), "node-t's new certificate is written", || {
        std::fs::read_to_string(data.join("agent/client-kubelet.crt"))
            .is_ok_and(|c| c != short_cert && days_left(&c) > 360)
    });
    server.wait_json(&["get", "node", "node-t"], 30, "node-t Ready", is_ready);
}

/// A CertificateSigningRequest named after `cn` (`:` made `-`) for a
/// fresh key, asking `signer` for CN `cn` in `org` (none if empty): the
/// manifest and the key (PEM).
fn csr_manifest(cn: &str, org: &str, signer: &str, seconds: Option<u32>) -> (String, String) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if !org.is_empty() {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
    }
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let expiration = seconds
        .map(|s| format!("\n  expirationSeconds: {s}"))
        .unwrap_or_default();
    let manifest = format!(
        "apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {{name: {name}}}
spec:
  request: {request}
  signerName: {signer}
  usages: [digital signature, client auth]{expiration}
",
        name = cn.replace(':', "-"),
        request = base64::engine::general_purpose::STANDARD.encode(pem),
    );
    (manifest, key.serialize_pem())
}

/// A client certificate for node `node` valid for `seconds`, asked for by
/// the admin (approved at once, as the admin may approve nodes'): the
/// certificate and its key (PEM).
fn node_certificate(server: &Cluster, node: &str, seconds: u32) -> (String, String) {
    use base64::Engine;
    let cn = format!("system:node:{node}");
    let (manifest, key) = csr_manifest(
        &cn,
        "system:nodes",
        "kubernetes.io/kube-apiserver-client-kubelet",
        Some(seconds),
    );
    let file = server.write(&format!("{node}-csr.yaml"), &manifest);
    server.ok("1.33", &["create", "-f", file.to_str().unwrap()]);
    let name = cn.replace(':', "-");
    let signed = server.wait_json(&["get", "csr", &name], 10, "the request signed", |c| {
        c["status"]["certificate"].is_string()
    });
    let pem = base64::engine::general_purpose::STANDARD
        .decode(signed["status"]["certificate"].as_str().unwrap())
        .unwrap();
    (String::from_utf8(pem).unwrap(), key)
}

/// The node-client CertificateSigningRequest `requester` made, once it is
/// approved and signed.
fn issued_to(server: &Cluster, requester: &str) -> serde_json::Value {
    let list = server.wait_json(
        &["get", "csr"],
        30,
        &format!("a signed request by {requester}"),
        |l| {
            l["items"].as_array().is_some_and(|items| {
                items.iter().any(|c| {
                    c["spec"]["username"] == requester && c["status"]["certificate"].is_string()
                })
            })
        },
    );
    let csr = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spec"]["username"] == requester && c["status"]["certificate"].is_string())
        .unwrap()
        .clone();
    assert_eq!(
        csr["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved");
    csr
}

/// kubectl's words for a 401: on discovery (which tokens may read, as
/// upstream's `system:discovery` lets every authenticated user) or on the
/// request itself.
fn unauthorized(kubectl_stderr: &str) -> bool {
    kubectl_stderr.contains("You must be logged in to the server (Unauthorized)")
        || kubectl_stderr.contains("asked for the client to provide credentials")
}
