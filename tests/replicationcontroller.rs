//! ReplicationControllers (core/v1) end to end, with simulated nodes and
//! kubectl: pods from the template with the selector defaulted from its
//! labels, status counts, `kubectl scale rc`, the `kubectl get rc` columns,
//! garbage collection of the pods once the RC is gone, and upstream's
//! field path for an invalid RC.

mod support;

use serde_json::Value;
use support::{Cluster, header};

const RC: &str = "apiVersion: v1
kind: ReplicationController
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: nginx, image: \"nginx:1\"}
";

fn live_pods(list: &Value) -> Vec<Value> {
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

#[test]
fn replication_controller_keeps_scales_prints_and_collects_its_pods() {
    let server = Cluster::start();
    let _nodes = server.simulate("rc", 2, &[]);
    let file = server.write("rc.yaml", RC);
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);

    // Defaulting: the selector and the RC's labels come from the template.
    let rc: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "rc", "web", "-o", "json"])).unwrap();
    assert_eq!(rc["spec"]["selector"], serde_json::json!({"app": "web"}));
    assert_eq!(rc["metadata"]["labels"], serde_json::json!({"app": "web"}));
    assert_eq!(rc["metadata"]["generation"], 1);

    // Pods from the template, owned by the RC, counted in its status.
    let pods = server.wait_json(&["get", "pods", "-l", "app=web"], 30, "two pods", |v| {
        live_pods(v).len() == 2
    });
    for pod in live_pods(&pods) {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicationController", "{pod}");
        assert_eq!(owner["uid"], rc["metadata"]["uid"], "{pod}");
        assert_eq!(owner["controller"], true, "{pod}");
    }
    let rc = server.wait_json(&["get", "rc", "web"], 30, "two ready replicas", |v| {
        v["status"]["readyReplicas"] == 2 && v["status"]["availableReplicas"] == 2
    });
    assert_eq!(rc["status"]["replicas"], 2, "{rc}");
    assert_eq!(rc["status"]["fullyLabeledReplicas"], 2, "{rc}");
    assert_eq!(rc["status"]["observedGeneration"], 1, "{rc}");

    // kubectl scale goes through the scale subresource.
    let out = server.ok("1.33", &["scale", "rc", "web", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    server.wait_json(&["get", "pods", "-l", "app=web"], 30, "three pods", |v| {
        live_pods(v).len() == 3
    });
    server.wait_json(&["get", "rc", "web"], 30, "three ready replicas", |v| {
        v["status"]["readyReplicas"] == 3 && v["status"]["replicas"] == 3
    });
    // The scale subresource carries the selector in its string form, as
    // an autoscaler reads it (upstream: labels.SelectorFromSet).
    let scale = server.ok(
        "1.33",
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/replicationcontrollers/web/scale",
        ],
    );
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(
        (&scale["spec"]["replicas"], &scale["status"]["selector"]),
        (&serde_json::json!(3), &serde_json::json!("app=web")),
        "{scale}"
    );

    // Columns as upstream prints them.
    let table = server.ok("1.33", &["get", "rc"]);
    assert_eq!(
        header(&table),
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["web", "3", "3", "3"], "{table}");
    let wide = server.ok("1.33", &["get", "rc", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[5..], ["nginx", "nginx:1", "app=web"], "{wide}");

    // Discovery and OpenAPI know the kind.
    let resources = server.ok("1.33", &["api-resources", "--api-group="]);
    assert!(
        resources
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "replicationcontrollers",
                    "rc",
                    "v1",
                    "true",
                    "ReplicationController"
                ]),
        "{resources}"
    );
    let explained = server.ok("1.33", &["explain", "rc.spec.selector"]);
    assert!(
        explained.contains("KIND:       ReplicationController"),
        "{explained}"
    );

    // Deleting the RC (background propagation) collects its pods.
    server.ok("1.33", &["delete", "rc", "web", "--cascade=background"]);
    server.wait_json(
        &["get", "pods", "-l", "app=web"],
        30,
        "the RC's pods garbage-collected",
        |v| live_pods(v).is_empty(),
    );
}

#[test]
fn invalid_replication_controller_is_rejected_with_upstream_field_path() {
    let server = Cluster::start();
    let file = server.write(
        "bad.yaml",
        "apiVersion: v1
kind: ReplicationController
metadata: {name: bad, namespace: default}
spec:
  selector: {app: web}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: nginx, image: \"nginx:1\"}
",
    );
    let err = server.fails("1.33", &["create", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("is invalid")
            && err.contains(
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`"
            ),
        "{err}"
    );

    // The same request over HTTP: 422 Invalid with the field in details.
    let out = server.kubectl("1.33", &["create", "-f", file.to_str().unwrap(), "-v=8"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(r#""Response" status="422 Unprocessable Entity""#),
        "{log}"
    );
    // The body as kubectl logs it: on lines of its own, since a Status
    // ends with a newline as the Go server's does.
    assert!(
        log.contains(r#""reason":"Invalid""#)
            && log.contains(r#""field":"spec.template.metadata.labels""#),
        "{log}"
    );
}
