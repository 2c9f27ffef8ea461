//! The control plane with simulated nodes, driven by kubectl: deployments
//! roll out, update within their surge/unavailability budget, roll back,
//! pause and resume, scale; deletes cascade; namespaces empty and go;
//! unschedulable pods say why.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;
use support::{Cluster, wait};

fn deployment(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: app, image: \"{image}\"}}
"
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
}

async fn client(server: &Cluster) -> Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).unwrap();
    Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_stays_within_surge_and_unavailability_and_rolls_back() {
    let server = Cluster::start();
    let _nodes = server.simulate("roll", 3, &[]);
    let file = server.write("web.yaml", &deployment("web", "nginx:1", 4));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let out = server.ok(
        "1.33",
        &["rollout", "status", "deploy/web", "--timeout=60s"],
    );
    assert!(out.contains("successfully rolled out"), "{out}");

    let old_rs = server.ok(
        "1.33",
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    // Record every ReplicaSet change during the update.
    let rss: Api<ReplicaSet> = Api::namespaced(client(&server).await, "default");
    let rv = server.ok(
        "1.33",
        &["get", "rs", "-o", "jsonpath={.metadata.resourceVersion}"],
    );
    let mut stream = rss
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    std::fs::write(&file, deployment("web", "nginx:2", 4)).unwrap();
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let status = tokio::task::spawn_blocking({
        let kubeconfig = server.kubeconfig.clone();
        move || {
            std::process::Command::new(support::kubectl_path("1.33"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["rollout", "status", "deploy/web", "--timeout=60s"])
                .output()
                .unwrap()
        }
    });
    let mut state: HashMap<String, (i32, i32)> = HashMap::new();
    let mut steps = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the rollout finished within 60 s")
            .expect("watch open")
            .unwrap();
        let rs = match event {
            WatchEvent::Added(rs) | WatchEvent::Modified(rs) => rs,
            _ => continue,
        };
        let name = rs.metadata.name.clone().unwrap();
        let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let available = rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        state.insert(name, (spec, available));
        let total: i32 = state.values().map(|(s, _)| s).sum();
        let avail: i32 = state.values().map(|(_, a)| a).sum();
        steps.push(format!("{state:?}"));
        assert!(
            total <= 5,
            "more than replicas + maxSurge pods wanted: {steps:#?}"
        );
        assert!(
            avail >= 4 || state.len() < 2,
            "fewer than replicas - maxUnavailable available: {steps:#?}"
        );
        let done = state.len() == 2
            && state.get(&old_rs).is_some_and(|&(s, _)| s == 0)
            && state
                .iter()
                .any(|(n, &(s, a))| *n != old_rs && s == 4 && a == 4);
        if done {
            break;
        }
    }
    let out = status.await.unwrap();
    assert!(
        out.status.success(),
        "rollout status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        steps.len() >= 4,
        "the update went in several steps: {steps:#?}"
    );

    let history = server.ok("1.33", &["rollout", "history", "deploy/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    server.ok("1.33", &["rollout", "undo", "deploy/web"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/web", "--timeout=60s"],
    );
    let image = server.ok(
        "1.33",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image, "nginx:1");
    let rev = server.ok(
        "1.33",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ],
    );
    assert_eq!(rev, "3", "the rolled-back template gets the next revision");
}

#[test]
fn pause_resume_restart_and_scale() {
    let server = Cluster::start();
    let _nodes = server.simulate("ops", 2, &[]);
    let file = server.write("api.yaml", &deployment("api", "busybox:1", 2));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/api", "--timeout=60s"],
    );

    server.ok("1.33", &["rollout", "pause", "deploy/api"]);
    server.ok("1.33", &["set", "image", "deploy/api", "app=busybox:2"]);
    // Nothing to wait for: a paused rollout makes no new ReplicaSet.
    wait::holds(Duration::from_secs(1), "no rollout while paused", || {
        let rs = server.ok("1.33", &["get", "rs", "-l", "app=api", "-o", "name"]);
        rs.lines().count() == 1
    });
    server.ok("1.33", &["rollout", "resume", "deploy/api"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/api", "--timeout=60s"],
    );
    let rs = server.ok("1.33", &["get", "rs", "-l", "app=api", "-o", "name"]);
    assert_eq!(rs.lines().count(), 2, "{rs}");

    server.ok("1.33", &["rollout", "restart", "deploy/api"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/api", "--timeout=60s"],
    );
    server.eventually(
        &["get", "rs", "-l", "app=api", "-o", "name"],
        "a third ReplicaSet after restart",
        |o| o.lines().count() == 3,
    );

    server.ok("1.33", &["scale", "deploy/api", "--replicas=0"]);
    server.eventually(
        &["get", "pods", "-l", "app=api", "-o", "name"],
        "no pods at 0 replicas",
        |o| o.trim().is_empty(),
    );
    server.ok("1.33", &["scale", "deploy/api", "--replicas=3"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/api", "--timeout=60s"],
    );
    let pods = server.ok("1.33", &["get", "pods", "-l", "app=api", "-o", "json"]);
    let pods = json(&pods);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|p| {
        p["status"]["phase"] == "Running"
            && p["spec"]["nodeName"]
                .as_str()
                .unwrap()
                .starts_with("ops-sim-")
    }));
    // What the ReplicaSet controller did shows in describe.
    let describe = server.eventually(
        &["describe", "rs", "-l", "app=api"],
        "ReplicaSet events",
        |o| o.contains("SuccessfulCreate") && o.contains("SuccessfulDelete"),
    );
    assert!(describe.contains("Created pod: api-"), "{describe}");
}

#[test]
fn deletes_cascade_and_namespaces_empty_before_they_go() {
    let server = Cluster::start();
    let _nodes = server.simulate("gc", 2, &[]);
    server.ok("1.33", &["create", "namespace", "tmp"]);
    for ns in ["default", "tmp"] {
        let file = server.write(&format!("{ns}.yaml"), &deployment("app", "busybox:1", 2));
        server.ok("1.33", &["apply", "-n", ns, "-f", file.to_str().unwrap()]);
        server.ok(
            "1.33",
            &["rollout", "status", "-n", ns, "deploy/app", "--timeout=60s"],
        );
    }
    let sa = server.ok(
        "1.33",
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "tmp",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        sa.trim(),
        "serviceaccount/default",
        "every namespace gets a default ServiceAccount"
    );

    // Background: the ReplicaSet and pods follow the Deployment.
    server.ok("1.33", &["delete", "deploy", "app"]);
    server.eventually(
        &["get", "rs,pods", "-l", "app=app", "-o", "name"],
        "dependents deleted",
        |o| o.trim().is_empty(),
    );

    // Foreground, through the namespace: everything in it goes, then it does.
    server.ok("1.33", &["delete", "namespace", "tmp", "--timeout=60s"]);
    let err = server.fails("1.33", &["get", "namespace", "tmp"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    let left = server.ok("1.33", &["get", "pods,rs,deploy", "-A", "-o", "name"]);
    assert!(!left.contains("app"), "{left}");
}

#[test]
fn foreground_delete_waits_for_dependents() {
    let server = Cluster::start();
    let _nodes = server.simulate("fg", 1, &[]);
    let file = server.write("fg.yaml", &deployment("fg", "busybox:1", 2));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok("1.33", &["rollout", "status", "deploy/fg", "--timeout=60s"]);
    let out = server.ok(
        "1.33",
        &[
            "delete",
            "deploy",
            "fg",
            "--cascade=foreground",
            "--timeout=60s",
        ],
    );
    assert!(out.contains("deleted"), "{out}");
    let left = server.ok(
        "1.33",
        &["get", "deploy,rs,pods", "-l", "app=fg", "-o", "name"],
    );
    assert_eq!(left.trim(), "", "owner and dependents are gone");
}

#[test]
fn unschedulable_pods_say_why_and_schedule_when_room_appears() {
    let server = Cluster::start();
    let _nodes = server.simulate("small", 2, &["--sim-cpu", "1"]);
    let pod = server.write(
        "big.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {requests: {cpu: \"2\"}}\n",
    );
    server.ok("1.33", &["apply", "-f", pod.to_str().unwrap()]);
    let describe = server.eventually(
        &["describe", "pod", "big"],
        "a FailedScheduling event",
        |o| o.contains("FailedScheduling"),
    );
    assert!(
        describe.contains("0/2 nodes are available: 2 Insufficient cpu."),
        "{describe}"
    );
    let cond = server.ok(
        "1.33",
        &[
            "get",
            "pod",
            "big",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        ],
    );
    assert_eq!(cond, "Unschedulable");
    // A bigger node joins: the pod is retried and lands there.
    let _big = server.simulate("large", 1, &["--sim-cpu", "4"]);
    server.eventually(
        &["get", "pod", "big", "-o", "jsonpath={.spec.nodeName}"],
        "the pod bound to the large node",
        |o| o == "large-sim-0",
    );
    server.eventually(
        &["get", "pod", "big", "-o", "jsonpath={.status.phase}"],
        "the pod running",
        |o| o == "Running",
    );
}

#[test]
fn scheduler_spreads_and_respects_selectors_and_taints() {
    let server = Cluster::start();
    let _nodes = server.simulate("spread", 3, &[]);
    server.ok("1.33", &["label", "node", "spread-sim-0", "disk=ssd"]);
    server.ok(
        "1.33",
        &["taint", "node", "spread-sim-2", "dedicated=gpu:NoSchedule"],
    );
    let file = server.write("s.yaml", &deployment("s", "busybox:1", 4));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok("1.33", &["rollout", "status", "deploy/s", "--timeout=60s"]);
    let nodes = server.ok(
        "1.33",
        &[
            "get",
            "pods",
            "-l",
            "app=s",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ],
    );
    let nodes: Vec<&str> = nodes.split_whitespace().collect();
    assert!(
        !nodes.contains(&"spread-sim-2"),
        "the tainted node gets no pods: {nodes:?}"
    );
    assert_eq!(
        nodes.iter().filter(|n| **n == "spread-sim-0").count(),
        2,
        "spread evenly: {nodes:?}"
    );
    let picky = server.write(
        "picky.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: ssd}\n  containers: [{name: c, image: busybox}]\n",
    );
    server.ok("1.33", &["apply", "-f", picky.to_str().unwrap()]);
    server.eventually(
        &["get", "pod", "picky", "-o", "jsonpath={.spec.nodeName}"],
        "the selected node",
        |o| o == "spread-sim-0",
    );
}

#[test]
fn endpoints_follow_ready_pods_with_named_ports_resolved() {
    let server = Cluster::start();
    let _nodes = server.simulate("ep", 2, &[]);
    let app = server.write(
        "app.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{name: web, port: 80, targetPort: http}]
",
    );
    server.ok("1.33", &["apply", "-f", app.to_str().unwrap()]);
    server.ok(
        "1.33",
        &["rollout", "status", "deploy/shop", "--timeout=60s"],
    );
    let ep = server.eventually(
        &["get", "endpoints", "shop", "-o", "json"],
        "two ready addresses",
        |o| {
            serde_json::from_str::<Value>(o).is_ok_and(|v| {
                v.pointer("/subsets/0/addresses")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() == 2)
            })
        },
    );
    let ep = json(&ep);
    assert_eq!(
        ep["subsets"][0]["ports"],
        serde_json::json!([{"name": "web", "port": 8080, "protocol": "TCP"}]),
        "named port resolved"
    );
    server.ok("1.33", &["scale", "deploy/shop", "--replicas=3"]);
    server.eventually(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=shop",
            "-o",
            "json",
        ],
        "three endpoints in the slice",
        |o| {
            serde_json::from_str::<Value>(o).is_ok_and(|v| {
                v.pointer("/items/0/endpoints")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.len() == 3)
            })
        },
    );
    let table = server.ok("1.33", &["get", "endpoints", "shop"]);
    assert!(table.contains(":8080"), "{table}");
    // Slices hold at most 100 endpoints; extra slices go when unneeded.
    let slice_sizes = |o: &str| -> Vec<usize> {
        let v: Value = serde_json::from_str(o).unwrap_or_default();
        let mut sizes: Vec<usize> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
            .collect();
        sizes.sort_unstable();
        sizes
    };
    let slices = [
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=shop",
        "-o",
        "json",
    ];
    server.ok("1.33", &["scale", "deploy/shop", "--replicas=105"]);
    server.eventually(&slices, "105 endpoints in two slices", |o| {
        slice_sizes(o) == [5, 100]
    });
    server.ok("1.33", &["scale", "deploy/shop", "--replicas=2"]);
    server.eventually(&slices, "back to one slice", |o| slice_sizes(o) == [2]);
    server.ok("1.33", &["delete", "service", "shop"]);
    server.eventually(
        &["get", "endpoints,endpointslices", "-o", "name"],
        "endpoints removed with the service",
        |o| !o.contains("shop"),
    );
}

#[test]
fn a_restarted_server_schedules_onto_nodes_it_already_knew() {
    // A fixed port, so the restarted server is where the kubeconfig says.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let flags = ["--https-listen-port", port.as_str()];
    let server = Cluster::start_with(&flags);
    let nodes = server.simulate("known", 1, &[]);
    drop(nodes);
    let server = server.restart(&flags);
    let file = server.write(
        "p.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: busybox}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.eventually(
        &["get", "pod", "p", "-o", "jsonpath={.spec.nodeName}"],
        "the pod bound to the node registered before the restart",
        |o| o == "known-sim-0",
    );
}

#[test]
fn nodes_get_a_pod_range_each_never_the_same_and_freed_when_they_go() {
    // Room for two /24s only.
    let server = Cluster::start_with(&["--cluster-cidr", "10.99.0.0/23"]);
    let node = |name: &str| {
        let file = server.write(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n"),
        );
        server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    };
    let range_of = |name: &str| {
        server.wait_json(&["get", "node", name], 10, "a podCIDR", |n| {
            n["spec"]["podCIDR"].is_string()
        })["spec"]
            .clone()
    };
    node("a");
    node("b");
    let (a, b) = (range_of("a"), range_of("b"));
    assert_eq!(a["podCIDRs"][0], a["podCIDR"]);
    let mut got = [
        a["podCIDR"].as_str().unwrap().to_owned(),
        b["podCIDR"].as_str().unwrap().to_owned(),
    ];
    got.sort();
    assert_eq!(got, ["10.99.0.0/24", "10.99.1.0/24"]);
    // No room for c until a goes; then c gets a's range.
    node("c");
    // Nothing to wait for: c gets no range while none is free.
    wait::holds(Duration::from_secs(1), "c has no podCIDR", || {
        let c: Value = json(&server.ok("1.33", &["get", "node", "c", "-o", "json"]));
        c["spec"]["podCIDR"].is_null()
    });
    server.ok("1.33", &["delete", "node", "a"]);
    assert_eq!(range_of("c")["podCIDR"], a["podCIDR"]);

    let data = tempfile::tempdir().unwrap();
    let bad = support::refused_server(&[
        "--cluster-cidr",
        "10.42.0.0/25",
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("24 or less"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn load_balancer_services_get_the_ready_nodes_addresses_as_ingress() {
    let server = Cluster::start();
    let _nodes = server.simulate("lb", 2, &[]);
    let file = server.write(
        "lb.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
",
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let ingress = |v: &serde_json::Value| -> Vec<String> {
        v["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_owned))
            .collect()
    };
    let svc = server.wait_json(&["get", "svc", "lb"], 20, "two ingress IPs", |s| {
        ingress(s).len() == 2
    });
    assert_eq!(ingress(&svc), ["10.99.0.1", "10.99.0.2"]);
    // kubectl shows them as the EXTERNAL-IP.
    let table = server.ok("1.33", &["get", "svc", "lb"]);
    assert!(table.contains("10.99.0.1,10.99.0.2"), "{table}");
    // A ClusterIP Service gets none; turning it into one clears them.
    server.ok(
        "1.33",
        &[
            "patch",
            "svc",
            "lb",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/type","value":"ClusterIP"},{"op":"remove","path":"/spec/ports/0/nodePort"}]"#,
        ],
    );
    server.wait_json(&["get", "svc", "lb"], 20, "no ingress", |s| {
        ingress(s).is_empty()
    });
}
