//! Admission through the real server: every write passes the admission
//! chain, whichever way it comes (create, update, every patch type, a
//! subresource) and whoever makes it (a client over HTTP, or the
//! server's own controllers in-process).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, kubectl_path, wait};

/// A request with curl, as the admin or with the join token: the status
/// code and the body.
fn curl(
    server: &Cluster,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> (u16, String) {
    let body_file = server.dir.path().join("admission-body");
    std::fs::write(&body_file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(server.dir.path().join("server/tls/ca.crt"));
    if !body.is_empty() {
        cmd.arg("--data-binary")
            .arg(format!("@{}", body_file.display()));
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("curl is needed for these tests (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status code line");
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// POST `body` as the admin.
fn post(server: &Cluster, path: &str, body: &Value) -> (u16, Value) {
    let token = std::fs::read_to_string(server.dir.path().join("server/tls/admin.token")).unwrap();
    let (code, text) = curl(
        server,
        "POST",
        path,
        &[
            format!("Authorization: Bearer {}", token.trim()),
            "Content-Type: application/json".into(),
        ],
        body.to_string().as_bytes(),
    );
    let status = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (code, status)
}

/// Ask for node `name`'s client certificate (a fresh key) as an agent
/// does: a CertificateSigningRequest to the kubelet client signer,
/// presenting `token` and the node password `password`. The status code
/// of the create and, when it was created, the signed certificate (PEM,
/// once auto-approved and signed) or else the Status; and the key.
fn ask_node_certificate(
    server: &Cluster,
    token: &str,
    name: &str,
    password: &str,
) -> (u16, String, rcgen::KeyPair) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": b64.encode(csr),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    });
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (code, text) = curl(
        server,
        "POST",
        path,
        &[
            auth.clone(),
            format!("orch-node-password: {password}"),
            "Content-Type: application/json".into(),
        ],
        body.to_string().as_bytes(),
    );
    if code != 201 {
        return (code, text, key);
    }
    let created: Value = serde_json::from_str(&text).unwrap();
    let csr_name = created["metadata"]["name"].as_str().unwrap().to_owned();
    let cert = wait::until_ok(
        Duration::from_secs(10),
        "the node's request is approved and signed",
        || {
            let (_, text) = curl(
                server,
                "GET",
                &format!("{path}/{csr_name}"),
                std::slice::from_ref(&auth),
                b"",
            );
            let csr: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            let signed = csr["status"]["certificate"].as_str().unwrap_or_default();
            let pem = b64.decode(signed).unwrap_or_default();
            if pem.is_empty() {
                Err(csr.to_string())
            } else {
                Ok(String::from_utf8(pem).unwrap())
            }
        },
    );
    (code, cert, key)
}

/// A kubeconfig for node `name`, with the certificate the server issues
/// to the holder of the join token (as an agent gets its own).
fn node_kubeconfig(server: &Cluster, name: &str) -> PathBuf {
    use base64::Engine;
    let token = std::fs::read_to_string(server.dir.path().join("server/token")).unwrap();
    let (code, cert, key) =
        ask_node_certificate(server, &token, name, "admission-test-node-password");
    assert_eq!(code, 201, "a node certificate: {cert}");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = std::fs::read_to_string(server.dir.path().join("server/tls/ca.crt")).unwrap();
    let user = format!("system:node:{name}");
    let path = server.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- cluster: {{certificate-authority-data: {ca}, server: '{url}'}}
  name: orch
contexts:
- context: {{cluster: orch, user: '{user}'}}
  name: node
current-context: node
users:
- name: '{user}'
  user: {{client-certificate-data: {cert}, client-key-data: {key}}}
",
            ca = b64(&ca),
            url = server.url(),
            cert = b64(&cert),
            key = b64(&key.serialize_pem()),
        ),
    )
    .unwrap();
    path
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(kubectl_path("1.33"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[test]
fn patches_and_updates_pass_admission() {
    let server = Cluster::start();
    let other = server.write(
        "elsewhere.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: elsewhere}\n",
    );
    server.ok("1.33", &["create", "-f", other.to_str().unwrap()]);
    let node = node_kubeconfig(&server, "node-a");
    let own = server.write(
        "node-a.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n",
    );
    // Its own Node: created, labelled, patched.
    for args in [
        &["create", "-f", own.to_str().unwrap()][..],
        &["label", "node", "node-a", "mine=yes"],
        &[
            "patch",
            "node",
            "node-a",
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"a":"b"}}}"#,
        ],
    ] {
        let out = kubectl_as(&node, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Another Node: the authorizer lets the write through, NodeRestriction
    // refuses it, whatever the patch type, on the object and its status,
    // and on a full update.
    let refusal = "nodes \"elsewhere\" is forbidden: node \"node-a\" is not allowed to modify node \"elsewhere\"";
    let replaced = server.write(
        "replaced.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: elsewhere, labels: {taken: 'yes'}}\n",
    );
    for args in [
        &["label", "node", "elsewhere", "taken=yes"][..],
        &[
            "patch",
            "node",
            "elsewhere",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"taken":"yes"}}}"#,
        ],
        &[
            "patch",
            "node",
            "elsewhere",
            "--type=strategic",
            "-p",
            r#"{"metadata":{"labels":{"taken":"yes"}}}"#,
        ],
        &[
            "patch",
            "node",
            "elsewhere",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels","value":{"taken":"yes"}}]"#,
        ],
        &[
            "patch",
            "node",
            "elsewhere",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
        ],
        &["replace", "-f", replaced.to_str().unwrap()],
    ] {
        let out = kubectl_as(&node, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(
            err.contains("(Forbidden)") && err.contains(refusal),
            "{args:?}: {err}"
        );
    }
    let elsewhere = server.ok("1.33", &["get", "node", "elsewhere", "-o", "json"]);
    let elsewhere: Value = serde_json::from_str(&elsewhere).unwrap();
    assert_eq!(elsewhere["metadata"].get("labels"), None, "{elsewhere}");
    assert_eq!(
        elsewhere.get("status").and_then(|s| s.get("conditions")),
        None,
        "{elsewhere}"
    );
    // The admin is no node: the same patch goes through.
    server.ok("1.33", &["label", "node", "elsewhere", "taken=yes"]);
}

#[test]
fn pods_made_by_controllers_are_admitted() {
    let server = Cluster::start_with(&["--default-not-ready-toleration-seconds", "60"]);
    let file = server.write(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: busybox}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    // Made in-process by the ReplicaSet controller, and one a client made.
    server.ok("1.33", &["run", "direct", "--image=busybox"]);
    let pods = server.wait_json(&["get", "pods"], 30, "the deployment's pod", |list| {
        list["items"]
            .as_array()
            .is_some_and(|items| items.len() == 2)
    });
    for pod in pods["items"].as_array().unwrap() {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "default", "{name}");
        assert_eq!(spec["serviceAccount"], "default", "{name}");
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| {
                v.iter().find(|v| {
                    v["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("kube-api-access-"))
                })
            })
            .unwrap_or_else(|| panic!("{name} has no kube-api-access volume: {spec}"));
        assert_eq!(
            volume["projected"]["sources"][0]["serviceAccountToken"]["path"], "token",
            "{name}"
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"],
            json!([{"name": volume["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]),
            "{name}"
        );
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ]),
            "{name}"
        );
        assert_eq!(
            (&spec["priority"], &spec["preemptionPolicy"]),
            (&json!(0), &json!("PreemptLowerPriority")),
            "{name}"
        );
    }
}

#[test]
fn nothing_new_goes_into_terminating_or_missing_namespaces() {
    let server = Cluster::start();
    let file = server.write(
        "doomed.yaml",
        "apiVersion: v1
kind: Namespace
metadata: {name: doomed}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: hold, namespace: doomed, finalizers: [example.com/hold]}
---
apiVersion: v1
kind: Pod
metadata: {name: stuck, namespace: doomed, finalizers: [example.com/hold]}
spec:
  containers: [{name: c, image: busybox}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok("1.33", &["delete", "namespace", "doomed", "--wait=false"]);
    server.wait_json(
        &["get", "namespace", "doomed"],
        30,
        "doomed terminating",
        |ns| ns["status"]["phase"] == "Terminating",
    );

    // A create: 403, upstream's message, and the cause kubectl drain reads.
    let err = server.fails("1.33", &["create", "configmap", "late", "-n", "doomed"]);
    assert!(
        err.contains("configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"),
        "{err}"
    );
    let cause = json!([{"reason": "NamespaceTerminating", "message": "namespace doomed is being terminated", "field": "metadata.namespace"}]);
    let (code, status) = post(
        &server,
        "/api/v1/namespaces/doomed/configmaps",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}),
    );
    assert_eq!(code, 403, "{status}");
    assert_eq!(
        (
            &status["reason"],
            &status["details"]["kind"],
            &status["details"]["causes"]
        ),
        (&json!("Forbidden"), &json!("configmaps"), &cause),
        "{status}"
    );
    // Creates of subresources too: binding a pod, evicting one.
    let (code, status) = post(
        &server,
        "/api/v1/namespaces/doomed/pods/stuck/binding",
        &json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "stuck"}, "target": {"kind": "Node", "name": "n"}}),
    );
    assert_eq!(code, 403, "{status}");
    assert_eq!(
        status["message"],
        "pods \"stuck\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
    );
    let (code, status) = post(
        &server,
        "/api/v1/namespaces/doomed/pods/stuck/eviction",
        &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "stuck", "namespace": "doomed"}}),
    );
    assert_eq!(
        (code, &status["details"]["causes"]),
        (403, &cause),
        "{status}"
    );

    // A namespace that does not exist: its NotFound.
    let err = server.fails("1.33", &["create", "configmap", "late", "-n", "nowhere"]);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    let (code, status) = post(
        &server,
        "/api/v1/namespaces/nowhere/configmaps",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}),
    );
    assert_eq!(
        (code, &status["reason"]),
        (404, &json!("NotFound")),
        "{status}"
    );

    // What is there may still change: its finalizers go, and so does the
    // namespace.
    for what in ["configmap/hold", "pod/stuck"] {
        server.ok(
            "1.33",
            &[
                "patch",
                what,
                "-n",
                "doomed",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        );
    }
    wait::until_true(Duration::from_secs(30), "doomed gone", || {
        !server
            .kubectl("1.33", &["get", "namespace", "doomed"])
            .status
            .success()
    });
}

/// `kubectl args` as the node of `kubeconfig`, expected to be refused:
/// its stderr, which must carry a 403 and `message`.
fn refused_as(kubeconfig: &Path, args: &[&str], message: &str) -> String {
    let out = kubectl_as(kubeconfig, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} was allowed");
    assert!(
        err.contains("(Forbidden)") && err.contains(message),
        "{args:?}: wanted {message:?}, got {err}"
    );
    err
}

/// `kubectl args` as the node of `kubeconfig`, expected to succeed.
fn allowed_as(kubeconfig: &Path, args: &[&str]) {
    let out = kubectl_as(kubeconfig, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue #21: a node could create the Lease of another node, and so keep
/// it looking alive. Now it writes only its own, with upstream's words.
#[test]
fn nodes_write_only_their_own_lease() {
    let server = Cluster::start();
    let node = node_kubeconfig(&server, "node-a");
    let lease = |name: &str, ns: &str| {
        server.write(
            &format!("lease-{name}-{ns}.yaml"),
            &format!(
                "apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {{name: {name}, namespace: {ns}}}
spec: {{holderIdentity: {name}, leaseDurationSeconds: 40}}
"
            ),
        )
    };
    let (own, other) = (
        lease("node-a", "kube-node-lease"),
        lease("node-b", "kube-node-lease"),
    );
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();

    // Creating another node's Lease: the authorizer cannot see the name,
    // NodeRestriction refuses it.
    refused_as(
        &node,
        &["create", "-f", &path(&other)],
        "leases.coordination.k8s.io \"node-b\" is forbidden: can only access node lease with the same name as the requesting node",
    );
    let gone = server.kubectl("1.33", &["get", "lease", "-n", "kube-node-lease", "node-b"]);
    assert!(!gone.status.success(), "node-b's lease was created");
    // Its own: created, renewed, deleted.
    allowed_as(&node, &["create", "-f", &path(&own)]);
    let renew = r#"{"spec":{"renewTime":"2026-01-01T00:00:00.000000Z"}}"#;
    let patch = |name: &'static str| {
        [
            "patch",
            "lease",
            name,
            "-n",
            "kube-node-lease",
            "--type=merge",
            "-p",
            renew,
        ]
    };
    allowed_as(&node, &patch("node-a"));
    // Another node's existing Lease: the authorizer refuses, saying why
    // as upstream's does.
    server.ok("1.33", &["create", "-f", &path(&other)]);
    let verb_refusal = |verb: &str| {
        format!(
            "leases.coordination.k8s.io \"node-b\" is forbidden: User \"system:node:node-a\" cannot {verb} resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"kube-node-lease\": can only access node lease with the same name as the requesting node"
        )
    };
    // (kubectl reads the object before it patches it.)
    refused_as(&node, &patch("node-b"), &verb_refusal("get"));
    refused_as(
        &node,
        &["replace", "-f", &path(&other)],
        &verb_refusal("update"),
    );
    refused_as(
        &node,
        &["delete", "lease", "node-b", "-n", "kube-node-lease"],
        &verb_refusal("delete"),
    );
    // Leases elsewhere are none of a node's business.
    refused_as(
        &node,
        &["create", "-f", &path(&lease("node-a", "default"))],
        "in the namespace \"default\": can only access leases in the \"kube-node-lease\" system namespace",
    );
    let stored = server.ok(
        "1.33",
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "node-b",
            "-o",
            "json",
        ],
    );
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["spec"].get("renewTime"), None, "{stored}");
    allowed_as(
        &node,
        &["delete", "lease", "node-a", "-n", "kube-node-lease"],
    );
}

/// Issue #21: a node could label its own Node
/// `node-restriction.kubernetes.io/…` (labels that exist so an admin can
/// keep workloads off nodes that cannot vouch for themselves), or claim
/// any `kubernetes.io` label. Now it may set only the kubelet's own.
#[test]
fn nodes_set_only_the_labels_a_kubelet_may_set_on_itself() {
    let server = Cluster::start();
    let node = node_kubeconfig(&server, "node-a");
    let own = |file: &str, labels: &str| {
        let path = server.write(
            file,
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a, labels: {{{labels}}}}}\n"
            ),
        );
        path.to_str().unwrap().to_owned()
    };
    // Registering with a restricted label, or a Kubernetes one that is
    // not the kubelet's: refused, naming them (upstream's create wording).
    let restricted = own("restricted.yaml", "node-restriction.kubernetes.io/foo: bar");
    refused_as(
        &node,
        &["create", "-f", &restricted],
        "nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to set the following labels: node-restriction.kubernetes.io/foo",
    );
    let role = own(
        "role.yaml",
        "node-role.kubernetes.io/worker: '', kubernetes.io/os: linux",
    );
    refused_as(
        &node,
        &["create", "-f", &role],
        "node \"node-a\" is not allowed to set the following labels: node-role.kubernetes.io/worker",
    );
    // The kubelet's own labels, and anyone's outside Kubernetes': fine.
    let allowed = own(
        "allowed.yaml",
        "kubernetes.io/hostname: node-a, kubernetes.io/os: linux, kubernetes.io/arch: amd64, \
         topology.kubernetes.io/zone: z1, node.kubernetes.io/instance-type: big, \
         kubelet.kubernetes.io/x: '1', example.com/rack: r1",
    );
    allowed_as(&node, &["create", "-f", &allowed]);

    // Labelling itself afterwards (upstream's update wording).
    let update = "nodes \"node-a\" is forbidden: is not allowed to modify labels: ";
    refused_as(
        &node,
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/foo=bar",
        ],
        &format!("{update}node-restriction.kubernetes.io/foo"),
    );
    refused_as(
        &node,
        &[
            "patch",
            "node",
            "node-a",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":"true"}}}"#,
        ],
        &format!("{update}node-role.kubernetes.io/control-plane"),
    );
    allowed_as(
        &node,
        &[
            "label",
            "node",
            "node-a",
            "--overwrite",
            "topology.kubernetes.io/zone=z2",
            "node.kubernetes.io/extra=yes",
            "mine=yes",
        ],
    );
    // A restricted label the admin set: the node keeps writing its Node,
    // but may neither change nor remove that label.
    server.ok(
        "1.33",
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/pool=gpu",
        ],
    );
    allowed_as(&node, &["annotate", "node", "node-a", "seen=yes"]);
    allowed_as(
        &node,
        &[
            "patch",
            "node",
            "node-a",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
        ],
    );
    refused_as(
        &node,
        &[
            "label",
            "node",
            "node-a",
            "--overwrite",
            "node-restriction.kubernetes.io/pool=cpu",
        ],
        &format!("{update}node-restriction.kubernetes.io/pool"),
    );
    refused_as(
        &node,
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/pool-",
        ],
        &format!("{update}node-restriction.kubernetes.io/pool"),
    );
    let stored = server.ok("1.33", &["get", "node", "node-a", "-o", "json"]);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"kubernetes.io/hostname": "node-a", "kubernetes.io/os": "linux",
               "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "z2",
               "node.kubernetes.io/instance-type": "big", "kubelet.kubernetes.io/x": "1",
               "example.com/rack": "r1", "node.kubernetes.io/extra": "yes", "mine": "yes",
               "node-restriction.kubernetes.io/pool": "gpu"}),
        "{stored}"
    );
}

/// A node gets its taints when it registers, and no later change of them
/// is its own to make (NodeRestriction, as upstream): else it could shed
/// the taint that keeps workloads it must not run away from it.
#[test]
fn nodes_keep_the_taints_they_registered_with() {
    let server = Cluster::start();
    let node = node_kubeconfig(&server, "node-a");
    let tainted = server.write(
        "tainted.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
         spec: {taints: [{key: dedicated, value: gpu, effect: NoSchedule}]}\n",
    );
    allowed_as(&node, &["create", "-f", tainted.to_str().unwrap()]);
    let refused = "nodes \"node-a\" is forbidden: node \"node-a\" is not allowed to modify taints";
    refused_as(&node, &["taint", "nodes", "node-a", "dedicated-"], refused);
    refused_as(
        &node,
        &["taint", "nodes", "node-a", "extra=yes:NoExecute"],
        refused,
    );
    refused_as(
        &node,
        &[
            "patch",
            "node",
            "node-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":[]}}"#,
        ],
        refused,
    );
    // Its other writes go on; the admin taints and untaints it.
    allowed_as(&node, &["annotate", "node", "node-a", "seen=yes"]);
    server.ok("1.33", &["taint", "nodes", "node-a", "extra=yes:NoExecute"]);
    server.ok("1.33", &["taint", "nodes", "node-a", "dedicated-"]);
    let taints = server.ok(
        "1.33",
        &[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ],
    );
    // (The node lifecycle controller adds its own: node-a never reports.)
    let keys: Vec<&str> = taints.split(' ').collect();
    assert!(
        keys.contains(&"extra") && !keys.contains(&"dedicated"),
        "{taints}"
    );
}

/// Issue #21: simulated nodes had no node password, so anyone with a
/// join token — a bootstrap token (`orch token create`) included — could
/// get a node certificate in the name of one and act as it. They now
/// claim their names as real agents do, and rejoin after a restart.
#[test]
fn nobody_else_gets_the_name_of_a_simulated_node() {
    let server = Cluster::start();
    let simulated = server.simulate("claim", 1, &[]);
    server.ok(
        "1.33",
        &[
            "get",
            "secret",
            "-n",
            "kube-system",
            "claim-sim-0.node-password.orch",
        ],
    );
    let made = Command::new(support::ORCH)
        .args(["token", "create", "--ttl", "1h", "--data-dir"])
        .arg(server.dir.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let bootstrap = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let join = std::fs::read_to_string(server.token_file()).unwrap();
    for token in [bootstrap.as_str(), join.trim()] {
        let (code, body, _) = ask_node_certificate(
            &server,
            token,
            "claim-sim-0",
            "not-the-simulated-node-password",
        );
        let status: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (code, &status["reason"]),
            (403, &json!("Forbidden")),
            "{status}"
        );
        assert_eq!(
            status["message"],
            "node \"claim-sim-0\" is already taken by another machine (its node password differs); pick another --node-name, or to move the name to this machine delete the old one's password first: kubectl -n kube-system delete secret claim-sim-0.node-password.orch"
        );
    }
    // The same token still gets a name nobody holds.
    let (code, body, _) = ask_node_certificate(
        &server,
        &bootstrap,
        "fresh-node",
        "a-password-of-fresh-node",
    );
    assert_eq!(code, 201, "{body}");
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----"), "{body}");

    // The simulated node itself rejoins after a restart: it serves the
    // pods bound to it again.
    drop(simulated);
    let _simulated = server.simulate("claim", 1, &[]);
    let pod = server.write(
        "bound.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: bound}
spec:
  nodeName: claim-sim-0
  containers: [{name: c, image: busybox}]
",
    );
    server.ok("1.33", &["create", "-f", pod.to_str().unwrap()]);
    server.wait_json(
        &["get", "pod", "bound"],
        30,
        "bound Running on the rejoined node",
        |p| p["status"]["phase"] == "Running",
    );

    // And simulated nodes take no name another machine holds.
    node_kubeconfig(&server, "held-sim-0");
    let mut child = Command::new(support::ORCH)
        .args(["agent", "--server", &server.url(), "--token-file"])
        .arg(server.token_file())
        .args(["--node-name", "held", "--simulate", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if wait::poll(Duration::from_secs(30), || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        panic!("orch agent --simulate took node held-sim-0's name");
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("node \"held-sim-0\" is already taken by another machine")
            && err.contains("held-sim-0.node-password.orch"),
        "{err}"
    );
    let held = server.kubectl("1.33", &["get", "node", "held-sim-0"]);
    assert!(
        !held.status.success(),
        "the simulated agent registered held-sim-0"
    );
}
