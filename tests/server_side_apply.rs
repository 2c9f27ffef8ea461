//! Server-side apply and managedFields (issue #23), through kubectl, kube-rs
//! and the Python client, for built-in kinds and custom resources: owners
//! shown as upstream shows them, conflicts between managers with upstream's
//! message, `--force-conflicts`, the upgrade from client-side apply, and
//! `kubectl diff --server-side`.

mod support;

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use support::Cluster;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1
        ports: [{containerPort: 80}]
"#;

fn managed_fields(server: &Cluster, what: &[&str]) -> Vec<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    let obj: Value = serde_json::from_str(&server.ok("1.33", &args)).unwrap();
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn entry<'a>(entries: &'a [Value], manager: &str, subresource: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| {
            e["manager"] == manager && e["subresource"].as_str().unwrap_or_default() == subresource
        })
        .unwrap_or_else(|| panic!("no entry of {manager} ({subresource}) in {entries:#?}"))
}

#[test]
fn kubectl_applies_server_side_with_owners_conflicts_and_force() {
    let server = Cluster::start();
    let file = server.write("web.yaml", DEPLOYMENT);
    let path = file.to_str().unwrap();
    let out = server.ok("1.33", &["apply", "--server-side", "-f", path]);
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");

    let entries = managed_fields(&server, &["deployment", "web"]);
    let applied = entry(&entries, "kubectl", "");
    assert_eq!(applied["operation"], "Apply");
    assert_eq!(applied["fieldsType"], "FieldsV1");
    assert_eq!(
        applied["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {},
                        "f:image": {},
                        "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}},
                    }}},
                },
            },
        })
    );
    // kubectl hides managedFields unless asked.
    let plain = server.ok("1.33", &["get", "deployment", "web", "-o", "yaml"]);
    assert!(!plain.contains("managedFields"), "{plain}");

    // Scaling makes kubectl's /scale write the owner of replicas (its
    // manager is its user agent's program name: kubectl.1.33 here)...
    server.ok("1.33", &["scale", "deployment", "web", "--replicas=3"]);
    let entries = managed_fields(&server, &["deployment", "web"]);
    let scaler = entries
        .iter()
        .find(|e| e["subresource"] == "scale")
        .unwrap_or_else(|| panic!("no /scale entry in {entries:#?}"));
    assert_eq!(scaler["operation"], "Update");
    assert_eq!(scaler["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    let scaler = scaler["manager"].as_str().unwrap().to_owned();
    assert!(scaler.starts_with("kubectl"), "{scaler}");
    // ...so applying another count conflicts, in upstream's words.
    server.write(
        "web.yaml",
        &DEPLOYMENT.replace("replicas: 2", "replicas: 5"),
    );
    let err = server.fails("1.33", &["apply", "--server-side", "-f", path]);
    assert!(
        err.contains(&format!(r#"Apply failed with 1 conflict: conflict with "{scaler}" with subresource "scale" using apps/v1: .spec.replicas"#)),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(
        server.ok(
            "1.33",
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "3"
    );

    // diff --server-side shows what the apply would change and stores nothing.
    let diff = server.kubectl(
        "1.33",
        &["diff", "--server-side", "--force-conflicts", "-f", path],
    );
    assert_eq!(diff.status.code(), Some(1), "{diff:?}");
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(
        shown.contains("-  replicas: 3") && shown.contains("+  replicas: 5"),
        "{shown}"
    );
    assert_eq!(
        server.ok(
            "1.33",
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "3"
    );

    let out = server.ok(
        "1.33",
        &["apply", "--server-side", "--force-conflicts", "-f", path],
    );
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    assert_eq!(
        server.ok(
            "1.33",
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "5"
    );
    let entries = managed_fields(&server, &["deployment", "web"]);
    assert!(
        !entries.iter().any(|e| e["subresource"] == "scale"),
        "forcing took replicas from /scale's writer: {entries:#?}"
    );

    // A field dropped from the file is removed; one another manager set stays.
    server.ok("1.33", &["annotate", "deployment", "web", "note=kept"]);
    server.write(
        "web.yaml",
        &DEPLOYMENT
            .replace("replicas: 2", "replicas: 5")
            .replace("  labels: {app: web}\n", ""),
    );
    server.ok("1.33", &["apply", "--server-side", "-f", path]);
    let meta: Value = serde_json::from_str(&server.ok(
        "1.33",
        &["get", "deployment", "web", "-o", "jsonpath={.metadata}"],
    ))
    .unwrap();
    assert!(meta.get("labels").is_none(), "{meta}");
    assert_eq!(meta["annotations"]["note"], "kept");
}

#[test]
fn a_client_side_applied_object_upgrades_to_server_side_apply() {
    let server = Cluster::start();
    let file = server.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: \"1\", b: \"2\"}\n",
    );
    let path = file.to_str().unwrap();
    server.ok("1.33", &["apply", "-f", path]);
    let entries = managed_fields(&server, &["configmap", "cm"]);
    let csa = entry(&entries, "kubectl-client-side-apply", "");
    assert_eq!(csa["operation"], "Update");
    assert_eq!(
        csa["fieldsV1"],
        json!({
            "f:data": {".": {}, "f:a": {}, "f:b": {}},
            "f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
        })
    );

    // The server-side apply takes over the client-side fields: no conflict.
    server.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {a: \"9\"}\n",
    );
    server.ok("1.33", &["apply", "--server-side", "-f", path]);
    let obj: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "configmap", "cm", "-o", "json"]))
            .unwrap();
    assert_eq!(
        obj["data"],
        json!({"a": "9"}),
        "b left with the client-side manager"
    );
    let entries = managed_fields(&server, &["configmap", "cm"]);
    assert_eq!(
        entry(&entries, "kubectl", "")["fieldsV1"],
        json!({"f:data": {"f:a": {}}})
    );
    assert!(
        !entries
            .iter()
            .any(|e| e["manager"] == "kubectl-client-side-apply"),
        "{entries:#?}"
    );

    // kubectl edit and label writes are Updates of their own managers.
    server.ok("1.33", &["label", "configmap", "cm", "team=a"]);
    let entries = managed_fields(&server, &["configmap", "cm"]);
    assert_eq!(
        entry(&entries, "kubectl-label", "")["fieldsV1"],
        json!({"f:metadata": {"f:labels": {".": {}, "f:team": {}}}})
    );
}

const WIDGETS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              ports:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    port: {type: integer}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {type: string}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

#[test]
fn custom_objects_merge_by_their_schemas_list_types() {
    let server = Cluster::start();
    let crd = server.write("crd.yaml", WIDGETS);
    server.ok(
        "1.33",
        &["apply", "--server-side", "-f", crd.to_str().unwrap()],
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=10s",
        ],
    );
    let a = server.write(
        "a.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec:\n  size: 1\n  ports: [{name: http, port: 80}]\n  tags: [a]\nstatus: {ready: true}\n",
    );
    let b = server.write(
        "b.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec:\n  ports: [{name: admin, port: 81}]\n  tags: [b]\n",
    );
    server.ok(
        "1.33",
        &["apply", "--server-side", "-f", a.to_str().unwrap()],
    );
    server.ok(
        "1.33",
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            b.to_str().unwrap(),
        ],
    );
    let obj: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "widget", "w", "-o", "json"])).unwrap();
    assert_eq!(
        obj["spec"],
        json!({"size": 1, "ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 81}], "tags": ["a", "b"]})
    );
    // status goes through its subresource only.
    assert!(obj.get("status").is_none(), "{obj}");
    server.ok(
        "1.33",
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=st",
            "-f",
            a.to_str().unwrap(),
        ],
    );
    let entries = managed_fields(&server, &["widget", "w"]);
    assert_eq!(
        entry(&entries, "kubectl", "")["fieldsV1"],
        json!({"f:spec": {"f:ports": {"k:{\"name\":\"http\"}": {".": {}, "f:name": {}, "f:port": {}}},
                           "f:size": {}, "f:tags": {"v:\"a\"": {}}}})
    );
    assert_eq!(
        entry(&entries, "st", "status")["fieldsV1"],
        json!({"f:status": {"f:ready": {}}})
    );
    assert_eq!(
        server.ok(
            "1.33",
            &["get", "widget", "w", "-o", "jsonpath={.status.ready}"]
        ),
        "true"
    );
    // A conflict on a list item names it by its key.
    let c = server.write(
        "c.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec:\n  ports: [{name: http, port: 8080}]\n",
    );
    let err = server.fails(
        "1.33",
        &[
            "apply",
            "--server-side",
            "--field-manager=third",
            "-f",
            c.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .spec.ports[name="http"].port"#),
        "{err}"
    );
}

async fn kube_client(server: &Cluster) -> Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid for kube-rs");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn kube_rs_applies_and_sees_conflicts() {
    let server = Cluster::start();
    let client = kube_client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rs"}, "data": {"k": "1"}});
    let made = cms
        .patch("rs", &PatchParams::apply("rs-one"), &Patch::Apply(&patch))
        .await
        .expect("apply creates");
    let managed = made.metadata.managed_fields.unwrap();
    assert_eq!(managed[0].manager.as_deref(), Some("rs-one"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rs"}, "data": {"k": "2"}});
    let err = cms
        .patch("rs", &PatchParams::apply("rs-two"), &Patch::Apply(&changed))
        .await
        .expect_err("a conflict");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
            assert_eq!(
                status.message,
                r#"Apply failed with 1 conflict: conflict with "rs-one": .data.k"#
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let forced = cms
        .patch(
            "rs",
            &PatchParams::apply("rs-two").force(),
            &Patch::Apply(&changed),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.data.unwrap()["k"], "2");

    // An applied Scale is the manager's Apply on /scale: it owns the
    // replicas, and another applier conflicts on them.
    let deployments: Api<Deployment> = Api::namespaced(cms.into_client(), "default");
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]}}}});
    deployments
        .patch("web", &PatchParams::apply("deployer"), &Patch::Apply(&web))
        .await
        .expect("apply the Deployment");
    let scale = |n: i32| json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"}, "spec": {"replicas": n}});
    let scaled = deployments
        .patch_scale(
            "web",
            &PatchParams::apply("autoscaler").force(),
            &Patch::Apply(&scale(3)),
        )
        .await
        .expect("apply the scale");
    assert_eq!(scaled.spec.unwrap().replicas, Some(3));
    let now = deployments.get("web").await.unwrap();
    assert_eq!(now.spec.unwrap().replicas, Some(3));
    let entries = now.metadata.managed_fields.unwrap();
    let autoscaler = entries
        .iter()
        .find(|e| e.manager.as_deref() == Some("autoscaler"))
        .unwrap_or_else(|| panic!("no autoscaler entry in {entries:#?}"));
    assert_eq!(autoscaler.operation.as_deref(), Some("Apply"));
    assert_eq!(autoscaler.subresource.as_deref(), Some("scale"));
    assert_eq!(
        autoscaler.fields_v1.as_ref().unwrap().0,
        json!({"f:spec": {"f:replicas": {}}})
    );
    // The deployer's forced apply took replicas over; the deployer no
    // longer owns them.
    let deployer = entries
        .iter()
        .find(|e| e.manager.as_deref() == Some("deployer"))
        .unwrap();
    assert!(
        deployer.fields_v1.as_ref().unwrap().0["f:spec"]
            .get("f:replicas")
            .is_none(),
        "{deployer:#?}"
    );
    let err = deployments
        .patch_scale(
            "web",
            &PatchParams::apply("other"),
            &Patch::Apply(&scale(5)),
        )
        .await
        .expect_err("a conflict on the replicas");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(
                status.message,
                // An Apply entry is named without its apiVersion.
                r#"Apply failed with 1 conflict: conflict with "autoscaler" with subresource "scale": .spec.replicas"#
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn python_client_applies_server_side() {
    let server = Cluster::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/server_side_apply.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(&server.kubeconfig)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python server-side apply checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
