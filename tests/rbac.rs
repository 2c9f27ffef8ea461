//! rbac.authorization.k8s.io/v1 as an API (issue #22, first part): Role,
//! ClusterRole, RoleBinding and ClusterRoleBinding are served, listed in
//! discovery and OpenAPI, validated as upstream validates them and shown
//! with upstream's columns, so manifests and charts that carry them apply.
//! (What they grant is the RBAC authorizer's business.)

mod support;

use serde_json::Value;
use support::Cluster;

const CHART: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: "app:reader"
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
- nonResourceURLs: ["/metrics"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: app-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "app:reader"}
subjects:
- {kind: ServiceAccount, name: app, namespace: default}
- {kind: User, name: jane}
- {kind: Group, name: devs}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: config, namespace: default}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: config, namespace: default}
roleRef: {kind: Role, name: config}
subjects:
- {kind: ServiceAccount, name: app}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: default}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      serviceAccountName: app
      containers: [{name: app, image: busybox}]
"#;

#[test]
fn a_chart_with_roles_and_bindings_applies_and_lists_as_upstream() {
    let server = Cluster::start();
    let resources = server.ok(
        "1.33",
        &[
            "api-resources",
            "--api-group=rbac.authorization.k8s.io",
            "-o",
            "name",
        ],
    );
    assert_eq!(
        resources,
        "clusterrolebindings.rbac.authorization.k8s.io\nclusterroles.rbac.authorization.k8s.io\n\
         rolebindings.rbac.authorization.k8s.io\nroles.rbac.authorization.k8s.io\n"
    );
    let chart = server.write("chart.yaml", CHART);
    let applied = server.ok("1.33", &["apply", "-f", chart.to_str().unwrap()]);
    assert!(
        applied.contains("clusterrolebinding.rbac.authorization.k8s.io/app-reader created")
            && applied.contains("deployment.apps/app created"),
        "{applied}"
    );
    // Applying again changes nothing.
    let again = server.ok("1.33", &["apply", "-f", chart.to_str().unwrap()]);
    assert!(
        again.contains("rolebinding.rbac.authorization.k8s.io/config unchanged"),
        "{again}"
    );

    // Columns: bindings show their role and (wide) subjects.
    let wide = server.ok(
        "1.33",
        &["get", "clusterrolebinding", "app-reader", "-o", "wide"],
    );
    let lines: Vec<Vec<&str>> = wide
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert_eq!(lines[1][..2], ["app-reader", "ClusterRole/app:reader"]);
    assert_eq!(lines[1][3..], ["jane", "devs", "default/app"]);
    let narrow = server.ok("1.33", &["get", "rolebinding", "config"]);
    assert!(
        narrow.starts_with("NAME     ROLE          AGE\nconfig   Role/config"),
        "{narrow}"
    );
    let roles = server.ok("1.33", &["get", "clusterrole", "app:reader"]);
    assert!(
        roles.starts_with("NAME         CREATED AT\napp:reader   20"),
        "{roles}"
    );

    // Defaults: roleRef.apiGroup, and User/Group subjects' apiGroup; a
    // ServiceAccount subject has none.
    let binding: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "rolebinding", "config", "-o", "json"]))
            .unwrap();
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(
        binding["subjects"][0],
        serde_json::json!({"kind": "ServiceAccount", "name": "app"})
    );

    // kubectl's create commands send protobuf.
    server.ok(
        "1.33",
        &[
            "create",
            "role",
            "pods",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "health",
            "--verb=get",
            "--non-resource-url=/healthz,/api/*",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "health",
            "--clusterrole=health",
            "--group=system:authenticated",
        ],
    );
    let role: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "role", "pods", "-o", "json"])).unwrap();
    assert_eq!(role["rules"][0]["apiGroups"], serde_json::json!([""]));
    assert_eq!(role["rules"][1]["apiGroups"], serde_json::json!(["apps"]));

    // The OpenAPI document knows the kinds (kubectl explain reads it).
    let explain = server.ok("1.33", &["explain", "rolebinding.roleRef"]);
    assert!(
        explain.contains("RoleRef can reference a Role"),
        "{explain}"
    );
}

#[test]
fn bad_roles_and_bindings_get_422_naming_every_field() {
    let server = Cluster::start();
    let binding = server.write(
        "binding.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {name: bad, namespace: default}\n\
         roleRef: {kind: Thing, name: \"\"}\n\
         subjects:\n- {kind: Robot, name: r}\n- {kind: User}\n- {kind: ServiceAccount, name: Not_Valid}\n",
    );
    let err = server.fails("1.33", &["apply", "-f", binding.to_str().unwrap()]);
    for want in [
        "The RoleBinding \"bad\" is invalid",
        "roleRef.kind: Unsupported value: \"Thing\": supported values: \"Role\", \"ClusterRole\"",
        "roleRef.name: Required value",
        "subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
        "subjects[1].name: Required value",
        "subjects[2].name: Invalid value: \"Not_Valid\": a lowercase RFC 1123 subdomain",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let cluster_binding = server.write(
        "crb.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {name: bad}\nroleRef: {kind: Role, name: r}\n\
         subjects:\n- {kind: ServiceAccount, name: sa}\n",
    );
    let err = server.fails("1.33", &["apply", "-f", cluster_binding.to_str().unwrap()]);
    assert!(
        err.contains(
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""
        ) && err.contains("subjects[0].namespace: Required value"),
        "{err}"
    );
    let role = server.write(
        "role.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
         metadata: {name: bad, namespace: default}\nrules:\n\
         - apiGroups: [\"\"]\n- nonResourceURLs: [/healthz]\n  verbs: [get]\n",
    );
    let err = server.fails("1.33", &["apply", "-f", role.to_str().unwrap()]);
    for want in [
        "rules[0].verbs: Required value: verbs must contain at least one value",
        "rules[0].resources: Required value: resource rules must supply at least one resource",
        "rules[1].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let name = server.write(
        "name.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"a%b\"}\n",
    );
    let err = server.fails("1.33", &["create", "-f", name.to_str().unwrap()]);
    assert!(
        err.contains("metadata.name: Invalid value: \"a%b\": may not contain '%'"),
        "{err}"
    );
    // Nothing bad was stored.
    let left = server.ok(
        "1.33",
        &[
            "get",
            "roles,rolebindings,clusterrolebindings",
            "-A",
            "-o",
            "name",
        ],
    );
    assert!(!left.contains("/bad"), "{left}");

    // A binding to a role that does not exist is accepted (and grants
    // nothing); its roleRef cannot change afterwards.
    server.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "dangling",
            "--clusterrole=does-not-exist",
            "--user=jane",
        ],
    );
    let err = server.fails(
        "1.33",
        &[
            "patch",
            "rolebinding",
            "dangling",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"view"}}"#,
        ],
    );
    assert!(
        err.contains(
            "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"view\"}: cannot change roleRef"
        ),
        "{err}"
    );
}
