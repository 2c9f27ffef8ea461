//! Volumes and what a pod is told on a real node (`orch server` and
//! `orch agent` in a network namespace the test creates): configMaps,
//! secrets and the downward API as env and files that follow updates,
//! hostPath types, and the service account token a pod mounts. Needs
//! root.

mod support;

use support::pods::{embedded, pod, wait_logs};
use support::wait::{self, secs};
use support::{Cluster, Netns, in_netns};

#[test]
fn configmaps_and_secrets_reach_containers_and_follow_updates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Cluster::builder()
        .own_netns("config")
        .loopback_agent(&[])
        .start();
    let (_, _, logs) = server.node_dirs("node-a");
    // The pod first: its ConfigMap is missing, so it waits.
    let file = server.write(
        "app.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: app, labels: {tier: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [/bin/sh, -c, \"echo env $LEVEL $PW $APP_MODE ref $(LEVEL) ip $POD_IP api $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; while true; do echo conf $(cat /etc/app/app.conf) secret $(cat /etc/secret/password) tier $(cat /etc/info/labels); sleep 1; done\"]
    env:
    - {name: PW, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: LEVEL, valueFrom: {configMapKeyRef: {name: app, key: level}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    envFrom: [{configMapRef: {name: app}, prefix: APP_}]
    volumeMounts:
    - {name: cfg, mountPath: /etc/app}
    - {name: creds, mountPath: /etc/secret}
    - {name: info, mountPath: /etc/info}
  volumes:
  - {name: cfg, configMap: {name: app, items: [{key: conf, path: app.conf}]}}
  - {name: creds, secret: {secretName: db, defaultMode: 0400}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let waiting = server.wait_json(
        &["get", "pod", "app"],
        30,
        "CreateContainerConfigError",
        |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        },
    );
    let message = waiting["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("not found"), "{message}");
    server.ok(
        "1.33",
        &[
            "create",
            "configmap",
            "app",
            "--from-literal=conf=v1",
            "--from-literal=level=debug",
            "--from-literal=MODE=fast",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=hunter2",
        ],
    );
    let app = server.wait_json(&["get", "pod", "app"], 30, "app Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let uid = app["metadata"]["uid"].as_str().unwrap().to_owned();
    let log_path = logs.join(format!("default_app_{uid}/main/0.log"));
    let wait_log = |needle: &str, within: u64| {
        wait::until_ok(secs(within), &format!("{needle:?} in the log"), || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains(needle) {
                Ok(log)
            } else {
                Err(log)
            }
        })
    };
    // `$(LEVEL)` in the command is the kubelet's to expand; the pod's
    // IP is known on the first start; the API server's service variables
    // are there for in-cluster clients.
    let pod_ip = app["status"]["podIP"].as_str().unwrap();
    wait_log(
        &format!("env debug hunter2 fast ref debug ip {pod_ip} api 10.43.0.1:443"),
        10,
    );
    wait_log("conf v1 secret hunter2 tier tier=\"web\"", 10);
    // Secrets and downward API files live in memory, as the kubelet keeps
    // them; configMaps on disk.
    let mounts = server.ok("1.33", &["exec", "app", "--", "cat", "/proc/mounts"]);
    let fs_of = |path: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(fs_of("/etc/secret"), "tmpfs", "{mounts}");
    assert_eq!(fs_of("/etc/info"), "tmpfs", "{mounts}");
    assert_ne!(fs_of("/etc/app"), "tmpfs", "{mounts}");
    // An update reaches the running container within a minute.
    server.ok(
        "1.33",
        &[
            "patch",
            "configmap",
            "app",
            "-p",
            r#"{"data":{"conf":"v2"}}"#,
        ],
    );
    wait_log("conf v2 secret hunter2", 60);
    server.ok("1.33", &["delete", "pod", "app", "--timeout=60s"]);

    // hostPath by type: DirectoryOrCreate and FileOrCreate are made; a
    // Directory that is not there keeps the pod waiting (FailedMount)
    // until it is.
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let file = server.write(
        "hostpaths.yaml",
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: hostpaths}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: Never
    command: [sh, -c, 'echo hi > /made/x; cat /given/y; exec sleep 3600']
    volumeMounts:
    - {{name: made, mountPath: /made}}
    - {{name: file, mountPath: /file}}
    - {{name: given, mountPath: /given}}
  volumes:
  - {{name: made, hostPath: {{path: {host}/new/made, type: DirectoryOrCreate}}}}
  - {{name: file, hostPath: {{path: {host}/f.txt, type: FileOrCreate}}}}
  - {{name: given, hostPath: {{path: {host}/given, type: Directory}}}}
",
            host = host.display()
        ),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let events = server.wait_json(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hostpaths",
        ],
        30,
        "a FailedMount event",
        |e| {
            e["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|e| e["reason"] == "FailedMount"))
        },
    );
    let message = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "FailedMount")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .unwrap();
    assert_eq!(
        message,
        format!(
            "MountVolume.SetUp failed for volume \"given\" : hostPath type check failed: {}/given is not a directory",
            host.display()
        )
    );
    let pending = server.ok(
        "1.33",
        &["get", "pod", "hostpaths", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(pending, "Pending");
    std::fs::create_dir_all(host.join("given")).unwrap();
    std::fs::write(host.join("given/y"), "from the host\n").unwrap();
    server.wait_json(&["get", "pod", "hostpaths"], 30, "hostpaths Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(
        wait_logs(&server, &["logs", "hostpaths"]),
        "from the host\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("new/made/x")).unwrap(),
        "hi\n"
    );
    assert!(std::fs::metadata(host.join("f.txt")).unwrap().is_file());
    server.ok("1.33", &["delete", "pod", "hostpaths", "--timeout=60s"]);
}

#[test]
fn service_account_tokens_are_mounted_and_authenticate_while_the_pod_lives() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("sa");
    let server = embedded(dir.path(), &netns, "sa");
    let url = server.url();
    // The status code of GET /api/v1/namespaces/default/pods with `token`.
    let call = |token: &str| -> (String, String) {
        let out = in_netns(Some(&netns.0), "curl")
            .args(["-sk", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("{url}/api/v1/namespaces/default/pods"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_owned(), body.to_owned())
    };
    let mut no_token = pod("plain", "sleep 3600", "Always", 0);
    no_token.push_str("  automountServiceAccountToken: false\n");
    let file = server.write(
        "pods.yaml",
        &[
            pod("app", "trap 'exit 0' TERM; sleep 3600 & wait", "Always", 0),
            no_token,
        ]
        .join("---\n"),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let app = server.wait_json(&["get", "pod", "app"], 60, "app Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let mounts = &app["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .to_string()
            .contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts}"
    );
    let read = |file: &str| {
        server.ok(
            "1.33",
            &[
                "exec",
                "app",
                "--",
                "cat",
                &format!("/var/run/secrets/kubernetes.io/serviceaccount/{file}"),
            ],
        )
    };
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").contains("BEGIN CERTIFICATE"));
    let token = read("token");
    assert_eq!(token.split('.').count(), 3, "{token}");
    // Authenticated as the service account (authorization is issue #6's).
    let (code, body) = call(&token);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("system:serviceaccount:default:default"),
        "{body}"
    );
    let (code, _) = call("not.a.token");
    assert_eq!(code, "401");
    // kubectl create token: the TokenRequest API.
    let made = server.ok("1.33", &["create", "token", "default", "--duration=20m"]);
    assert_eq!(call(made.trim()).0, "403");
    let err = server.fails("1.33", &["create", "token", "default", "--duration=1m"]);
    assert!(err.contains("10 minutes"), "{err}");
    let plain = server.wait_json(&["get", "pod", "plain"], 60, "plain Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(
        !plain["spec"].to_string().contains("kube-api-access"),
        "{}",
        plain["spec"]
    );
    // A bound token dies with its pod.
    server.ok("1.33", &["delete", "pod", "app", "plain", "--timeout=60s"]);
    assert_eq!(call(&token).0, "401");
}
