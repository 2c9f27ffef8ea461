//! Images on a real node (`orch server` and `orch agent` in a network
//! namespace the test creates, registries in it too): `orch image pull`,
//! the agent's pulls through mirrors and with pull secrets, back-off on a
//! missing tag, and image garbage collection. Needs root.

mod support;

use std::path::Path;
use std::process::{Child, Command};

use support::agents::is_ready;
use support::pods::waiting_reason;
use support::wait::{self, secs};
use support::{Cluster, Netns, ORCH, in_netns};

/// A `docker-registry` (Debian's distribution 2.8) on 127.0.0.1:`port`
/// inside the test's network namespace; with `user`, it asks for basic
/// auth (htpasswd, bcrypt).
struct Registry {
    child: Child,
}

impl Registry {
    fn start(netns: &Netns, dir: &Path, port: u16, user: Option<(&str, &str)>) -> Self {
        let root = dir.join(format!("registry-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        let mut config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: \"127.0.0.1:{port}\"}}\n",
            root.join("data").display()
        );
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils; scripts/test.sh installs it)");
            assert!(out.status.success());
            std::fs::write(root.join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd: {{realm: test, path: {}}}\n",
                root.join("htpasswd").display()
            ));
        }
        std::fs::write(root.join("config.yml"), config).unwrap();
        let child = support::docker_registry(netns, &root.join("config.yml"), port);
        Self { child }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy the OCI layout's `latest` to `dest` (`127.0.0.1:5000/x:tag`).
fn push(netns: &Netns, layout: &Path, dest: &str, creds: Option<&str>) {
    let out = in_netns(Some(&netns.0), "skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(creds.map(|c| format!("--dest-creds={c}")))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Ok` when the agent's pods dir under `data` (which must be there) has
/// at most `left` pods, else the pods' UIDs.
fn pods_of(data: &Path, left: usize) -> Result<(), String> {
    let uids: Vec<String> = std::fs::read_dir(data.join("pods"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if uids.len() <= left {
        Ok(())
    } else {
        Err(format!("pods {uids:?}"))
    }
}

#[test]
fn images_are_pulled_from_registries_with_mirrors_and_pull_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // Docker Hub names go to the local mirror; the private registry
    // speaks plain HTTP.
    let registries = dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n  \"127.0.0.1:5001\":\n    endpoint: [\"http://127.0.0.1:5001\"]\n",
    )
    .unwrap();
    // The cluster first: the registries run in its namespace.
    let mut server = Cluster::builder()
        .own_netns("registry")
        .loopback_agent(&["--private-registry", registries.to_str().unwrap()])
        .start();
    let netns = server.host("server");
    let layout = support::busybox_layout(dir.path());
    let _open = Registry::start(netns, dir.path(), 5000, None);
    let _private = Registry::start(netns, dir.path(), 5001, Some(("alice", "s3cret")));
    push(netns, &layout, "127.0.0.1:5000/busybox:v1", None);
    push(
        netns,
        &layout,
        "127.0.0.1:5000/library/busybox:mirrored",
        None,
    );
    push(
        netns,
        &layout,
        "127.0.0.1:5001/private/busybox:v1",
        Some("alice:s3cret"),
    );

    // `orch image pull` into a store of its own.
    let cli_store = dir.path().join("cli");
    let pull = |image: &str, extra: &[&str]| {
        support::image_pull(netns, &cli_store, &registries, extra, image)
    };
    let out = pull("busybox:mirrored", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pulled docker.io/library/busybox:mirrored"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("from http://127.0.0.1:5000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pull("127.0.0.1:5001/private/busybox:v1", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Not authorized"), "{err}");
    let out = pull(
        "127.0.0.1:5001/private/busybox:v1",
        &["--creds", "alice:s3cret"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pull("127.0.0.1:5000/busybox:missing", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().count() == 1 && err.contains("manifest unknown"),
        "{err}"
    );
    let ls = Command::new(ORCH)
        .args(["image", "--data-dir"])
        .arg(&cli_store)
        .arg("ls")
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("docker.io/library/busybox:mirrored")
            && ls.contains("127.0.0.1:5001/private/busybox:v1"),
        "{ls}"
    );

    // The agent pulls for its pods.
    let (data, _, _) = server.node_dirs("node-a");
    server.wait_json(&["get", "node", "node-a"], 30, "the node Ready", is_ready);
    // A Deployment of busybox httpd from the registry, Ready by its probe.
    let web = server.write(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: 127.0.0.1:5000/busybox:v1
        command: [/bin/sh, -c, 'mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www']
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
",
    );
    server.ok("1.33", &["apply", "-f", web.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let pods = server.wait_json(
        &["get", "pods", "-l", "app=web"],
        30,
        "web pods Ready",
        |l| {
            l["items"].as_array().is_some_and(|i| {
                i.len() == 2
                    && i.iter()
                        .all(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            })
        },
    );
    let status = &pods["items"][0]["status"]["containerStatuses"][0];
    assert_eq!(status["image"], "127.0.0.1:5000/busybox:v1");
    assert!(
        status["imageID"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:5000/busybox@sha256:"),
        "{status}"
    );
    let events = server.eventually(
        &["get", "events", "--field-selector", "reason=Pulled"],
        "a Pulled event",
        |out| out.contains("Successfully pulled image \"127.0.0.1:5000/busybox:v1\""),
    );
    assert!(events.contains("Pulled"), "{events}");

    // A Docker Hub name through the mirror; a private image needs its
    // pull secret; a missing tag backs off.
    server.ok(
        "1.33",
        &[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=127.0.0.1:5001",
            "--docker-username=alice",
            "--docker-password=s3cret",
        ],
    );
    let pods = server.write(
        "pods.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: hub}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: 'busybox:mirrored', command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: private}
spec:
  terminationGracePeriodSeconds: 0
  imagePullSecrets: [{name: regcred}]
  containers:
  - {name: main, image: '127.0.0.1:5001/private/busybox:v1', command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: nosecret}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: '127.0.0.1:5001/private/busybox:v1', imagePullPolicy: Always, command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: '127.0.0.1:5000/busybox:missing', command: [sleep, '3600']}
",
    );
    server.ok("1.33", &["apply", "-f", pods.to_str().unwrap()]);
    for name in ["hub", "private"] {
        server.wait_json(&["get", "pod", name], 60, "Running", |p| {
            p["status"]["phase"] == "Running"
        });
    }
    let nosecret = server.wait_json(&["get", "pod", "nosecret"], 60, "a failed pull", |p| {
        ["ErrImagePull", "ImagePullBackOff"].contains(&waiting_reason(p).as_str())
    });
    let message = nosecret["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("Not authorized") && message.contains("imagePullSecrets"),
        "{message}"
    );
    server.wait_json(&["get", "pod", "missing"], 60, "ImagePullBackOff", |p| {
        waiting_reason(p) == "ImagePullBackOff"
    });
    let table = server.ok("1.33", &["get", "pod", "missing"]);
    assert!(table.contains("ImagePullBackOff"), "{table}");
    let describe = server.ok("1.33", &["describe", "pod", "missing"]);
    assert!(
        describe.contains("Failed to pull image \"127.0.0.1:5000/busybox:missing\"")
            && describe.contains("Back-off pulling image"),
        "{describe}"
    );
    // The tag appears: the next attempt (after 10 s) pulls it.
    push(netns, &layout, "127.0.0.1:5000/busybox:missing", None);
    server.wait_json(&["get", "pod", "missing"], 60, "Running", |p| {
        p["status"]["phase"] == "Running"
    });

    // Image GC: with every threshold at 0, unused images go at the next
    // start; images pods use stay.
    server.ok(
        "1.33",
        &["delete", "pod", "hub", "nosecret", "--wait=false"],
    );
    wait::until_ok(secs(30), "hub and nosecret torn down", || pods_of(&data, 4));
    let agent = server.agent("node-a");
    agent.args.extend(
        [
            "--image-gc-high-threshold",
            "0",
            "--image-gc-low-threshold",
            "0",
            "--image-minimum-gc-age",
            "0",
        ]
        .map(str::to_owned),
    );
    agent.kill_and_restart();
    let store_ls = || {
        let out = Command::new(ORCH)
            .args(["image", "--data-dir"])
            .arg(&data)
            .arg("ls")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait::until_ok(secs(30), "the unused image collected", || {
        let ls = store_ls();
        if ls.contains("busybox:mirrored") {
            Err(ls)
        } else {
            Ok(())
        }
    });
    let ls = store_ls();
    for kept in [
        "127.0.0.1:5000/busybox:v1",
        "127.0.0.1:5001/private/busybox:v1",
        "127.0.0.1:5000/busybox:missing",
    ] {
        assert!(ls.contains(kept), "{kept} is in use: {ls}");
    }
    server.ok("1.33", &["delete", "deployment", "web"]);
    // Its ReplicaSet goes after it (background cascade); until then it
    // would make new pods for those deleted below.
    server.eventually(
        &["get", "replicasets", "-l", "app=web", "-o", "name"],
        "web's ReplicaSet collected",
        |names| names.trim().is_empty(),
    );
    server.ok("1.33", &["delete", "pod", "--all", "--wait=false"]);
    wait::until_ok(secs(30), "pods torn down", || pods_of(&data, 0));
}
