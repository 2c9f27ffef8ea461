//! kubectl against a real `orch server`: every scenario runs with kubectl
//! 1.31, 1.32, 1.33 and the version-picking dispatcher.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, KUBECTL_VERSIONS, header, kubectl_path};

fn json(out: &str) -> Value {
    serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("kubectl printed invalid JSON ({e}): {out}"))
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: nginx:1.0
        env:
        - {name: A, value: \"1\"}
        - {name: B, value: \"2\"}
      - name: sidecar
        image: busybox:1.36
";

#[test]
fn apply_creates_then_updates_like_upstream() {
    let server = Cluster::start();
    for (i, v) in KUBECTL_VERSIONS.iter().enumerate() {
        let ns = format!("apply{i}");
        server.ok(v, &["create", "namespace", &ns]);
        let file = server.write(&format!("d{i}.yaml"), DEPLOYMENT);
        let out = server.ok(v, &["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
        assert!(out.contains("deployment.apps/web created"), "{v}: {out}");

        // Change the image, drop env B, and put the sidecar first.
        let changed = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: sidecar
        image: busybox:1.36
      - name: app
        image: nginx:2.0
        env:
        - {name: A, value: \"1\"}
";
        std::fs::write(&file, changed).unwrap();
        let out = server.ok(v, &["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
        assert!(out.contains("deployment.apps/web configured"), "{v}: {out}");
        let d = json(&server.ok(v, &["get", "deploy", "web", "-n", &ns, "-o", "json"]));
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["sidecar", "app"],
            "{v}: container order follows the manifest"
        );
        assert_eq!(containers[1]["image"], "nginx:2.0", "{v}");
        assert_eq!(
            containers[1]["env"],
            serde_json::json!([{"name": "A", "value": "1"}]),
            "{v}: env B removed"
        );
        assert_eq!(d["metadata"]["generation"], 2, "{v}");
        assert_eq!(
            d["spec"]["strategy"]["type"], "RollingUpdate",
            "{v}: defaults kept"
        );
        let ann = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
        assert!(
            ann.contains("nginx:2.0"),
            "{v}: last-applied annotation updated"
        );

        let out = server.ok(v, &["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
        assert!(out.contains("deployment.apps/web unchanged"), "{v}: {out}");
    }
}

#[test]
fn get_prints_upstream_columns() {
    let server = Cluster::start();
    let file = server.write("d.yaml", DEPLOYMENT);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let pod = server.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {tier: db}}\nspec:\n  containers:\n  - {name: c, image: busybox}\n",
    );
    server.ok("1.33", &["apply", "-f", pod.to_str().unwrap()]);
    for v in KUBECTL_VERSIONS {
        let out = server.ok(v, &["get", "deployments"]);
        assert_eq!(
            header(&out),
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            "{v}: {out}"
        );
        assert!(
            out.lines().nth(1).unwrap().starts_with("web "),
            "{v}: {out}"
        );
        let wide = server.ok(v, &["get", "deploy", "-o", "wide"]);
        assert_eq!(
            header(&wide)[5..],
            ["CONTAINERS", "IMAGES", "SELECTOR"],
            "{v}: {wide}"
        );
        assert!(
            wide.contains("app,sidecar") && wide.contains("app=web"),
            "{v}: {wide}"
        );
        let pods = server.ok(v, &["get", "po"]);
        assert_eq!(
            header(&pods),
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{v}: {pods}"
        );
        assert!(
            pods.contains("p1") && pods.contains("0/1") && pods.contains("Pending"),
            "{v}: {pods}"
        );
        let all_ns = server.ok(v, &["get", "svc", "-A"]);
        assert_eq!(header(&all_ns)[..2], ["NAMESPACE", "NAME"], "{v}: {all_ns}");
        assert!(
            all_ns.contains("kubernetes")
                && all_ns.contains("10.43.0.1")
                && all_ns.contains("443/TCP"),
            "{v}: {all_ns}"
        );
        let selected = server.ok(v, &["get", "pods", "-l", "tier=db", "-o", "name"]);
        assert_eq!(selected.trim(), "pod/p1", "{v}");
        let none = server.ok(v, &["get", "pods", "-l", "tier=web", "-o", "name"]);
        assert_eq!(none.trim(), "", "{v}");
        let yaml = server.ok(v, &["get", "deploy", "web", "-o", "yaml"]);
        assert!(
            yaml.contains("kind: Deployment") && yaml.contains("resourceVersion:"),
            "{v}: {yaml}"
        );
    }
}

#[test]
fn get_watch_sees_changes() {
    let server = Cluster::start();
    server.ok("1.33", &["create", "configmap", "w1", "--from-literal=a=b"]);
    for v in KUBECTL_VERSIONS {
        let mut watch = Command::new(kubectl_path(v))
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args(["get", "configmaps", "-w", "-o", "name"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl get -w");
        let stdout = watch.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("initial listing");
        assert!(first.contains("configmap/"), "{v}: {first}");
        let name = format!("later{}", v.replace('.', ""));
        server.ok("1.33", &["create", "configmap", &name]);
        let mut seen = Vec::new();
        let found = loop {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(line) if line.contains(&name) => break true,
                Ok(line) => seen.push(line),
                Err(_) => break false,
            }
        };
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(
            found,
            "{v}: kubectl get -w never showed {name}; saw {seen:?}"
        );
    }
}

#[test]
fn describe_edit_label_annotate_patch_scale() {
    let server = Cluster::start();
    let file = server.write("d.yaml", DEPLOYMENT);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    for v in KUBECTL_VERSIONS {
        let out = server.ok(v, &["describe", "deployment", "web"]);
        assert!(
            out.contains("Name:")
                && out.contains("web")
                && out.contains("StrategyType:")
                && out.contains("RollingUpdate"),
            "{v}: {out}"
        );

        server.ok(
            v,
            &[
                "label",
                "deploy",
                "web",
                "--overwrite",
                &format!("touched=v{}", v.replace('.', "")),
            ],
        );
        server.ok(
            v,
            &["annotate", "deploy", "web", "--overwrite", "note=hello"],
        );
        let d = json(&server.ok(v, &["get", "deploy", "web", "-o", "json"]));
        assert_eq!(
            d["metadata"]["labels"]["touched"],
            format!("v{}", v.replace('.', "")),
            "{v}"
        );
        assert_eq!(d["metadata"]["annotations"]["note"], "hello", "{v}");

        server.ok(
            v,
            &[
                "patch",
                "deploy",
                "web",
                "--type=merge",
                "-p",
                r#"{"spec":{"replicas":5}}"#,
            ],
        );
        server.ok(
            v,
            &[
                "patch",
                "deploy",
                "web",
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/spec/minReadySeconds","value":3}]"#,
            ],
        );
        server.ok(v, &["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"nginx:9"}]}}}}"#]);
        let d = json(&server.ok(v, &["get", "deploy", "web", "-o", "json"]));
        assert_eq!(d["spec"]["replicas"], 5, "{v}");
        assert_eq!(d["spec"]["minReadySeconds"], 3, "{v}");
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            (c[0]["image"].as_str(), c[1]["image"].as_str()),
            (Some("nginx:9"), Some("busybox:1.36")),
            "{v}: strategic merge by name"
        );

        server.ok(v, &["scale", "deploy", "web", "--replicas=3"]);
        let replicas = server.ok(
            v,
            &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        );
        assert_eq!(replicas, "3", "{v}");

        let out = server.kubectl_env(
            v,
            &["edit", "deploy", "web"],
            &[(
                "KUBE_EDITOR",
                "sed -i -e s/minReadySeconds:\\ 3/minReadySeconds:\\ 7/",
            )],
        );
        assert!(
            out.status.success(),
            "{v}: edit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mrs = server.ok(
            v,
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.minReadySeconds}",
            ],
        );
        assert_eq!(mrs, "7", "{v}: edit applied");
        server.ok(
            v,
            &[
                "patch",
                "deploy",
                "web",
                "--type=merge",
                "-p",
                r#"{"spec":{"minReadySeconds":3}}"#,
            ],
        );
    }
}

#[test]
fn create_commands_and_auth_whoami() {
    let server = Cluster::start();
    for (i, v) in KUBECTL_VERSIONS.iter().enumerate() {
        let ns = format!("made{i}");
        server.ok(v, &["create", "namespace", &ns]);
        server.ok(
            v,
            &[
                "create",
                "configmap",
                "cfg",
                "-n",
                &ns,
                "--from-literal=k=v",
            ],
        );
        server.ok(
            v,
            &[
                "create",
                "secret",
                "generic",
                "sec",
                "-n",
                &ns,
                "--from-literal=user=admin",
            ],
        );
        server.ok(
            v,
            &[
                "create",
                "deployment",
                "dep",
                "-n",
                &ns,
                "--image=busybox:1.36",
                "--replicas=0",
            ],
        );
        let cm = json(&server.ok(v, &["get", "cm", "cfg", "-n", &ns, "-o", "json"]));
        assert_eq!(cm["data"]["k"], "v", "{v}");
        let sec = json(&server.ok(v, &["get", "secret", "sec", "-n", &ns, "-o", "json"]));
        assert_eq!(sec["data"]["user"], "YWRtaW4=", "{v}");
        assert_eq!(sec["type"], "Opaque", "{v}");
        let dep = json(&server.ok(v, &["get", "deploy", "dep", "-n", &ns, "-o", "json"]));
        assert_eq!(dep["spec"]["replicas"], 0, "{v}: an explicit 0 is kept");
        let out = server.ok(v, &["auth", "whoami"]);
        assert!(
            out.contains("system:admin") && out.contains("system:masters"),
            "{v}: {out}"
        );
        let err = server.fails(v, &["create", "namespace", &ns]);
        assert!(
            err.contains("AlreadyExists") || err.contains("already exists"),
            "{v}: {err}"
        );
    }
}

#[test]
fn delete_including_orphan_cascade() {
    let server = Cluster::start();
    let file = server.write("d.yaml", DEPLOYMENT);
    for (i, v) in KUBECTL_VERSIONS.iter().enumerate() {
        let ns = format!("del{i}");
        server.ok(v, &["create", "namespace", &ns]);
        server.ok(v, &["apply", "-n", &ns, "-f", file.to_str().unwrap()]);
        let uid = server.ok(
            v,
            &[
                "get",
                "deploy",
                "web",
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        );
        // A dependent, owned by the Deployment.
        let rs = format!(
            "{{\"apiVersion\":\"apps/v1\",\"kind\":\"ReplicaSet\",\"metadata\":{{\"name\":\"web-1\",\"labels\":{{\"app\":\"web\"}},\"ownerReferences\":[{{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"name\":\"web\",\"uid\":\"{uid}\",\"controller\":true}}]}},\"spec\":{{\"selector\":{{\"matchLabels\":{{\"app\":\"web\"}}}},\"template\":{{\"metadata\":{{\"labels\":{{\"app\":\"web\"}}}},\"spec\":{{\"containers\":[{{\"name\":\"c\",\"image\":\"busybox\"}}]}}}}}}}}"
        );
        let rs_file = server.write(&format!("rs{i}.json"), &rs);
        server.ok(v, &["apply", "-n", &ns, "-f", rs_file.to_str().unwrap()]);
        let out = server.ok(
            v,
            &["delete", "deploy", "web", "-n", &ns, "--cascade=orphan"],
        );
        assert!(out.contains("deleted"), "{v}: {out}");
        let err = server.fails(v, &["get", "deploy", "web", "-n", &ns]);
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{v}: {err}"
        );
        let orphan = json(&server.ok(v, &["get", "rs", "web-1", "-n", &ns, "-o", "json"]));
        assert!(
            orphan["metadata"].get("ownerReferences").is_none(),
            "{v}: owner reference removed: {orphan}"
        );
        // The Deployment controller's own ReplicaSet was orphaned too.
        let out = server.ok(v, &["delete", "rs", "--all", "-n", &ns]);
        assert!(out.contains("deleted"), "{v}: {out}");
        let out = server.ok(v, &["get", "rs", "-n", &ns, "-o", "name"]);
        assert_eq!(out.trim(), "", "{v}");
    }
}

#[test]
fn api_resources_lists_kinds_with_short_names() {
    let server = Cluster::start();
    for v in KUBECTL_VERSIONS {
        let out = server.ok(v, &["api-resources"]);
        for (name, short) in [
            ("deployments", "deploy"),
            ("pods", "po"),
            ("services", "svc"),
            ("cronjobs", "cj"),
            ("namespaces", "ns"),
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{v}: no {name} in {out}"));
            assert!(line.split_whitespace().any(|w| w == short), "{v}: {line}");
        }
        // Short names resolve.
        server.ok(v, &["get", "deploy,sts,ds,rs,cj,ns,no,cm,ep,ev,sa,svc,po"]);
    }
}

#[test]
fn explain_describes_fields_from_openapi() {
    let server = Cluster::start();
    for v in KUBECTL_VERSIONS {
        let out = server.ok(v, &["explain", "deployment.spec.strategy"]);
        assert!(
            out.contains("DeploymentStrategy")
                && out.contains("rollingUpdate")
                && out.contains("Recreate"),
            "{v}: {out}"
        );
        let out = server.ok(v, &["explain", "pods.spec.containers.image"]);
        assert!(out.contains("Container image name"), "{v}: {out}");
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let server = Cluster::start();
    let bad = server.write(
        "bad.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: Bad_Name}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: other}}\n    spec: {containers: [{name: c}]}\n",
    );
    let unknown = server.write(
        "unknown.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: u}\ndata: {a: b}\nbogusField: 1\n",
    );
    server.ok("1.33", &["run", "p", "--image=busybox"]);
    for v in KUBECTL_VERSIONS {
        // Not built: kubectl debug's ephemeral containers. kubectl says so
        // (a 404 Status without details made it crash).
        let err = server.fails(v, &["debug", "p", "--image=busybox", "--", "true"]);
        assert!(
            err.contains("ephemeral containers are disabled") && !err.contains("panic"),
            "{v}: {err}"
        );
        let err = server.fails(v, &["apply", "-f", bad.to_str().unwrap()]);
        assert!(err.contains("is invalid"), "{v}: {err}");
        for field in [
            "metadata.name",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].image",
        ] {
            assert!(err.contains(field), "{v}: {field} missing from {err}");
        }
        let err = server.fails(v, &["apply", "-f", unknown.to_str().unwrap()]);
        assert!(
            err.contains("unknown field") && err.contains("bogusField"),
            "{v}: {err}"
        );
        let err = server.fails(v, &["get", "pods", "-l", "a in b"]);
        assert!(!err.is_empty(), "{v}");
        let err = server.fails(v, &["get", "pods", "--field-selector", "spec.bogus=1"]);
        assert!(err.contains("field label not supported"), "{v}: {err}");
        let out = server.ok(v, &["get", "deploy,cm", "-o", "name"]);
        assert!(
            !out.contains("Bad_Name") && !out.contains("configmap/u"),
            "{v}: nothing stored: {out}"
        );
    }
}

#[test]
fn restart_keeps_certificates_data_and_the_kubeconfig_working() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let flags = ["--https-listen-port", port.as_str()];
    let first = Cluster::start_with(&flags);
    first.ok(
        "1.33",
        &["create", "configmap", "kept", "--from-literal=a=b"],
    );
    let ca = std::fs::read(first.dir.path().join("server/tls/ca.crt")).unwrap();
    let kubeconfig = std::fs::read_to_string(&first.kubeconfig).unwrap();
    // Same data dir, new process: the old kubeconfig must still work.
    let second = first.restart(&flags);
    assert_eq!(
        std::fs::read(second.dir.path().join("server/tls/ca.crt")).unwrap(),
        ca,
        "the CA is reused"
    );
    assert_eq!(
        std::fs::read_to_string(&second.kubeconfig).unwrap(),
        kubeconfig,
        "the kubeconfig is unchanged"
    );
    let out = second.ok(
        "1.33",
        &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"],
    );
    assert_eq!(out, "b");
}
