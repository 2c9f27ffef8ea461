//! RBAC (issue #22): Role, ClusterRole, RoleBinding and ClusterRoleBinding
//! are served, listed in discovery and OpenAPI, validated as upstream
//! validates them and shown with upstream's columns, so manifests and
//! charts that carry them apply; and what they grant is enforced, with
//! upstream's bootstrap policy, aggregation and escalation checks.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

/// A token for service account `name` in `ns`, once it exists.
fn token(server: &Cluster, ns: &str, name: &str) -> String {
    server
        .eventually(
            &["create", "token", name, "-n", ns],
            "a token for the service account",
            |t| !t.trim().is_empty(),
        )
        .trim()
        .to_owned()
}

/// kubectl as the holder of `token`, which must succeed: its stdout.
fn as_ok(server: &Cluster, token: &str, args: &[&str]) -> String {
    let out = server.kubectl_as(token, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} should succeed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl as the holder of `token`, which must fail: its stderr.
fn as_refused(server: &Cluster, token: &str, args: &[&str]) -> String {
    let out = server.kubectl_as(token, args);
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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

    // kubectl auth reconcile: missing rules and subjects are added, extra
    // ones removed when asked, and a changed roleRef recreates the
    // binding.
    let reconciled = server.write(
        "reconcile.yaml",
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: config, namespace: default}
rules:
- {apiGroups: [""], resources: [secrets], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: config, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
- {kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}
"#,
    );
    let path = reconciled.to_str().unwrap();
    let out = server.ok("1.33", &["auth", "reconcile", "-f", path]);
    assert!(
        out.contains("role.rbac.authorization.k8s.io/config reconciled")
            && out.contains("rolebinding.rbac.authorization.k8s.io/config reconciled"),
        "{out}"
    );
    let role: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "role", "config", "-o", "json"])).unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        ])
    );
    let binding: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "rolebinding", "config", "-o", "json"]))
            .unwrap();
    // A changed roleRef makes the binding anew, as the file has it.
    assert_eq!(binding["roleRef"]["name"], "view");
    assert_eq!(subject_names(&binding), ["bob"]);
    server.ok(
        "1.33",
        &[
            "auth",
            "reconcile",
            "-f",
            path,
            "--remove-extra-permissions",
        ],
    );
    let role: Value =
        serde_json::from_str(&server.ok("1.33", &["get", "role", "config", "-o", "json"])).unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    );
    // Subjects: added to what is there, or (asked) replacing it.
    let carol = server.write(
        "reconcile-carol.yaml",
        &std::fs::read_to_string(&reconciled)
            .unwrap()
            .replace("name: bob", "name: carol"),
    );
    let carol = carol.to_str().unwrap();
    server.ok("1.33", &["auth", "reconcile", "-f", carol]);
    let binding = |server: &Cluster| -> Value {
        serde_json::from_str(&server.ok("1.33", &["get", "rolebinding", "config", "-o", "json"]))
            .unwrap()
    };
    assert_eq!(subject_names(&binding(&server)), ["bob", "carol"]);
    server.ok(
        "1.33",
        &["auth", "reconcile", "-f", carol, "--remove-extra-subjects"],
    );
    assert_eq!(subject_names(&binding(&server)), ["carol"]);
}

/// The names of a binding's subjects.
fn subject_names(binding: &Value) -> Vec<&str> {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect()
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

#[test]
fn service_accounts_get_what_their_bindings_grant_and_nothing_else() {
    let server = Cluster::start();
    let chart = server.write("chart.yaml", CHART);
    server.ok("1.33", &["apply", "-f", chart.to_str().unwrap()]);
    server.ok("1.33", &["create", "namespace", "other"]);
    let app = token(&server, "default", "app");

    // The Role through its RoleBinding, in its namespace only.
    as_ok(
        &server,
        &app,
        &["create", "configmap", "c1", "--from-literal=a=1"],
    );
    let listed = as_ok(&server, &app, &["get", "configmaps", "-o", "name"]);
    assert!(listed.contains("configmap/c1"), "{listed}");
    let refused = as_refused(&server, &app, &["get", "configmaps", "-n", "other"]);
    assert!(
        refused.contains(
            "Error from server (Forbidden): configmaps is forbidden: User \"system:serviceaccount:default:app\" \
             cannot list resource \"configmaps\" in API group \"\" in the namespace \"other\""
        ),
        "{refused}"
    );
    // The ClusterRole through its ClusterRoleBinding, everywhere.
    as_ok(&server, &app, &["get", "pods", "-A"]);
    let refused = as_refused(&server, &app, &["get", "secrets"]);
    assert!(
        refused.contains(
            "secrets is forbidden: User \"system:serviceaccount:default:app\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{refused}"
    );
    let refused = as_refused(&server, &app, &["delete", "pod", "nothing"]);
    assert!(
        refused.contains("pods \"nothing\" is forbidden: User \"system:serviceaccount:default:app\" cannot delete resource \"pods\""),
        "{refused}"
    );
    // can-i agrees, and --list shows the grants.
    assert_eq!(
        as_ok(&server, &app, &["auth", "can-i", "delete", "configmaps"]).trim(),
        "yes"
    );
    let out = server.kubectl_as(
        &app,
        &["auth", "can-i", "delete", "configmaps", "-n", "other"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let list = as_ok(&server, &app, &["auth", "can-i", "--list"]);
    let has = |resource: &str, verbs: &str| {
        list.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&resource) && l.trim_end().ends_with(verbs)
        })
    };
    assert!(has("configmaps", "[*]"), "{list}");
    assert!(has("pods", "[get list watch]"), "{list}");
    assert!(has("pods/log", "[get list watch]"), "{list}");
    assert!(list.contains("[/metrics]"), "{list}");
    assert!(!list.contains("secrets"), "{list}");

    // A binding to a role that does not exist is accepted and grants
    // nothing; the 403 says why.
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "ghost",
            "--clusterrole=ghost",
            "--serviceaccount=default:app",
        ],
    );
    let refused = as_refused(&server, &app, &["get", "nodes"]);
    assert!(
        refused.contains("cannot list resource \"nodes\" in API group \"\" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io \"ghost\" not found"),
        "{refused}"
    );
    // The role appears: the binding grants it.
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "ghost",
            "--verb=list",
            "--resource=nodes",
        ],
    );
    server.eventually(&["get", "clusterrole", "ghost"], "the role", |_| true);
    support::wait::until_true(
        Duration::from_secs(5),
        "the new role grants within 5 s",
        || server.kubectl_as(&app, &["get", "nodes"]).status.success(),
    );
}

#[test]
fn a_cluster_role_labelled_for_view_joins_view_edit_and_admin() {
    let server = Cluster::start();
    let widgets = server.write(
        "widgets.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
         metadata: {name: widgets-view, labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}}\n\
         rules: [{apiGroups: [example.com], resources: [widgets], verbs: [get, list, watch]}]\n",
    );
    let start = Instant::now();
    server.ok("1.33", &["apply", "-f", widgets.to_str().unwrap()]);
    let grants = |role: &str| {
        let out = server.ok("1.33", &["get", "clusterrole", role, "-o", "json"]);
        let role: Value = serde_json::from_str(&out).unwrap();
        role["rules"].as_array().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| r["resources"] == serde_json::json!(["widgets"]))
        })
    };
    while !grants("view") {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "view aggregates within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    support::wait::until_true(
        Duration::from_secs(5),
        "edit and admin aggregate view",
        || grants("edit") && grants("admin"),
    );
    // Removing the label takes it out again.
    server.ok(
        "1.33",
        &[
            "label",
            "clusterrole",
            "widgets-view",
            "rbac.authorization.k8s.io/aggregate-to-view-",
        ],
    );
    support::wait::until_true(
        Duration::from_secs(5),
        "view and admin shrink again",
        || !(grants("view") || grants("admin")),
    );
}

#[test]
fn escalation_through_roles_and_bindings_is_refused() {
    let server = Cluster::start();
    let manager = server.write(
        "manager.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: manager, namespace: default}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: manager, namespace: default}\n\
         rules:\n- {apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [create, update, get]}\n\
         - {apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: manager, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: manager}\n\
         subjects: [{kind: ServiceAccount, name: manager}]\n",
    );
    server.ok("1.33", &["apply", "-f", manager.to_str().unwrap()]);
    let manager = token(&server, "default", "manager");
    let who = "user \"system:serviceaccount:default:manager\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:default\" \"system:authenticated\"])";

    // A role with what the manager holds: fine; with more: refused.
    as_ok(
        &server,
        &manager,
        &[
            "create",
            "role",
            "reader",
            "--verb=get",
            "--resource=configmaps",
        ],
    );
    let refused = as_refused(
        &server,
        &manager,
        &[
            "create",
            "role",
            "secrets",
            "--verb=get,list",
            "--resource=secrets,configmaps",
        ],
    );
    assert!(
        refused.contains(&format!(
            "roles.rbac.authorization.k8s.io \"secrets\" is forbidden: {who} is attempting to grant RBAC permissions not currently held:\n\
             {{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}}"
        )),
        "{refused}"
    );
    // A binding to a role whose permissions the manager holds: fine; to
    // edit: refused.
    as_ok(
        &server,
        &manager,
        &["create", "rolebinding", "r", "--role=reader", "--user=jane"],
    );
    let refused = as_refused(
        &server,
        &manager,
        &[
            "create",
            "rolebinding",
            "e",
            "--clusterrole=edit",
            "--user=jane",
        ],
    );
    assert!(
        refused.contains(&format!(
            "rolebindings.rbac.authorization.k8s.io \"e\" is forbidden: {who} is attempting to grant RBAC permissions not currently held:"
        )),
        "{refused}"
    );
    // `bind` on edit, and `escalate` on roles, let them.
    server.ok(
        "1.33",
        &[
            "create",
            "role",
            "delegate",
            "--verb=bind",
            "--resource=clusterroles.rbac.authorization.k8s.io",
            "--resource-name=edit",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "role",
            "escalator",
            "--verb=escalate",
            "--resource=roles.rbac.authorization.k8s.io",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "delegate",
            "--role=delegate",
            "--serviceaccount=default:manager",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "escalator",
            "--role=escalator",
            "--serviceaccount=default:manager",
        ],
    );
    support::wait::until_true(
        Duration::from_secs(5),
        "bind lets the manager bind edit",
        || {
            server
                .kubectl_as(
                    &manager,
                    &[
                        "create",
                        "rolebinding",
                        "e",
                        "--clusterrole=edit",
                        "--user=jane",
                    ],
                )
                .status
                .success()
        },
    );
    as_ok(
        &server,
        &manager,
        &[
            "create",
            "role",
            "secrets",
            "--verb=get,list",
            "--resource=secrets",
        ],
    );
    // Still not another cluster role.
    let refused = as_refused(
        &server,
        &manager,
        &[
            "create",
            "rolebinding",
            "a",
            "--clusterrole=admin",
            "--user=jane",
        ],
    );
    assert!(
        refused.contains("is attempting to grant RBAC permissions not currently held"),
        "{refused}"
    );
}

#[test]
fn kubectl_as_and_as_group_impersonate_when_allowed() {
    let server = Cluster::start();
    // system:masters may impersonate anyone; jane holds nothing yet.
    let refused = server.fails("1.33", &["get", "pods", "--as=jane"]);
    assert!(
        refused.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{refused}"
    );
    server.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "devs-view",
            "--clusterrole=view",
            "--group=devs",
        ],
    );
    support::wait::until_true(Duration::from_secs(5), "jane in devs may list pods", || {
        server
            .kubectl("1.33", &["get", "pods", "--as=jane", "--as-group=devs"])
            .status
            .success()
    });
    let whoami = server.ok(
        "1.33",
        &[
            "auth",
            "whoami",
            "--as=jane",
            "--as-group=devs",
            "-o",
            "json",
        ],
    );
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "jane");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );
    let list = server.ok(
        "1.33",
        &["auth", "can-i", "--list", "--as=jane", "--as-group=devs"],
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    let can = server.kubectl(
        "1.33",
        &[
            "auth",
            "can-i",
            "delete",
            "pods",
            "--as=jane",
            "--as-group=devs",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    // Impersonating a service account gives its groups.
    let sa = server.ok(
        "1.33",
        &[
            "auth",
            "whoami",
            "--as=system:serviceaccount:default:default",
            "-o",
            "json",
        ],
    );
    assert!(sa.contains("system:serviceaccounts:default"), "{sa}");

    // A service account without the impersonate verb is refused...
    server.ok("1.33", &["create", "serviceaccount", "ci"]);
    let ci = token(&server, "default", "ci");
    let out = server.kubectl_as(&ci, &["get", "pods", "--as=jane"]);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains("users \"jane\" is forbidden: User \"system:serviceaccount:default:ci\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{refused}"
    );
    // ... until a role grants it, for jane only and not for her groups.
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "as-jane",
            "--verb=impersonate",
            "--resource=users",
            "--resource-name=jane",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "ci-as-jane",
            "--clusterrole=as-jane",
            "--serviceaccount=default:ci",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = server.kubectl_as(
            &ci,
            &[
                "auth",
                "whoami",
                "--as=jane",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        );
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "jane");
            break;
        }
        assert!(Instant::now() < deadline, "ci may act as jane");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = server.kubectl_as(&ci, &["get", "pods", "--as=jane", "--as-group=devs"]);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains("groups \"devs\" is forbidden"),
        "{refused}"
    );
}

#[test]
fn legacy_token_secrets_are_filled_and_revoked_as_upstream() {
    let server = Cluster::start();
    // The Secret before its service account, as a chart may apply them.
    let manifest = server.write(
        "legacy.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ci-token\n  annotations: {kubernetes.io/service-account.name: ci}\n\
         type: kubernetes.io/service-account-token\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ci}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: ci-view}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: ci}]\n",
    );
    server.ok("1.33", &["apply", "-f", manifest.to_str().unwrap()]);
    let secret = server.wait_json(
        &["get", "secret", "ci-token"],
        10,
        "the token filled in",
        |s| s["data"]["token"].is_string(),
    );
    let uid = server.ok(
        "1.33",
        &[
            "get",
            "serviceaccount",
            "ci",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        uid.as_str()
    );
    let b64 = |k: &str| {
        use base64::Engine;
        let v = secret["data"][k].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
        String::from_utf8(bytes).unwrap()
    };
    assert_eq!(b64("namespace"), "default");
    assert!(b64("ca.crt").contains("BEGIN CERTIFICATE"));
    let token = b64("token");
    // The token is the service account's, with what its bindings grant.
    let who = as_ok(
        &server,
        &token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(who, "system:serviceaccount:default:ci");
    as_ok(&server, &token, &["get", "configmaps"]);
    let refused = as_refused(&server, &token, &["get", "secrets"]);
    assert!(
        refused.contains("cannot list resource \"secrets\""),
        "{refused}"
    );
    // Deleting the Secret revokes the token.
    server.ok("1.33", &["delete", "secret", "ci-token"]);
    let refused = as_refused(&server, &token, &["get", "configmaps"]);
    assert!(refused.contains("Unauthorized"), "{refused}");
    // A token Secret must name its service account.
    let bad = server.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ntype: kubernetes.io/service-account-token\n",
    );
    let err = server.fails("1.33", &["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        err.contains("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        "{err}"
    );
    // Deleting the service account deletes its token Secrets.
    let again = server.write(
        "again.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ci-token-2\n  annotations: {kubernetes.io/service-account.name: ci}\n\
         type: kubernetes.io/service-account-token\n",
    );
    server.ok("1.33", &["apply", "-f", again.to_str().unwrap()]);
    server.wait_json(
        &["get", "secret", "ci-token-2"],
        10,
        "the token filled in",
        |s| s["data"]["token"].is_string(),
    );
    server.ok("1.33", &["delete", "serviceaccount", "ci"]);
    server.eventually(
        &["get", "secrets", "-o", "name"],
        "the token Secret deleted",
        |out| !out.contains("ci-token-2"),
    );
}

#[test]
fn a_person_given_a_kubeconfig_and_view_in_one_namespace_may_read_only_there() {
    let server = Cluster::start();
    server.ok("1.33", &["create", "namespace", "team"]);
    let made = std::process::Command::new(support::ORCH)
        .args([
            "kubeconfig",
            "create",
            "--user",
            "jane",
            "--group",
            "devs",
            "--ttl",
            "2h",
            "--data-dir",
        ])
        .arg(server.dir.path())
        .output()
        .expect("run orch kubeconfig create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let jane = server.write("jane.kubeconfig", &String::from_utf8_lossy(&made.stdout));
    let jane = jane.to_str().unwrap();
    let as_jane = |args: &[&str]| {
        let mut full = vec!["--kubeconfig", jane];
        full.extend_from_slice(args);
        server.kubectl("1.33", &full)
    };
    let whoami = as_jane(&["auth", "whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"],
        serde_json::json!({"username": "jane", "groups": ["devs", "system:authenticated"]})
    );
    server.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "jane-view",
            "--clusterrole=view",
            "--user=jane",
            "-n",
            "team",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "team",
            "--from-literal=a=1",
        ],
    );
    support::wait::until_true(Duration::from_secs(5), "view lets jane read team", || {
        as_jane(&["get", "configmaps", "-n", "team"])
            .status
            .success()
    });
    for args in [
        &["get", "pods", "-n", "team"][..],
        &["get", "deployments", "-n", "team"],
        &["get", "configmap", "settings", "-n", "team", "-o", "name"],
    ] {
        let out = as_jane(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A watch works too (it ends at its timeout).
    let watch = as_jane(&[
        "get",
        "configmaps",
        "-n",
        "team",
        "--watch",
        "--request-timeout=1s",
    ]);
    assert!(String::from_utf8_lossy(&watch.stdout).contains("settings"));
    // Nothing elsewhere, nothing written, no secrets.
    let refused = |args: &[&str]| String::from_utf8_lossy(&as_jane(args).stderr).into_owned();
    assert!(refused(&["get", "pods", "-n", "default"]).contains(
        "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    ));
    assert!(
        refused(&["get", "secrets", "-n", "team"]).contains("cannot list resource \"secrets\"")
    );
    assert!(
        refused(&["get", "nodes"])
            .contains("cannot list resource \"nodes\" in API group \"\" at the cluster scope")
    );
    let edit = refused(&["label", "configmap", "settings", "-n", "team", "x=y"]);
    assert!(
        edit.contains(
            "Error from server (Forbidden): configmaps \"settings\" is forbidden: User \"jane\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"team\""
        ),
        "{edit}"
    );
    assert!(
        refused(&["delete", "configmap", "settings", "-n", "team"])
            .contains("cannot delete resource \"configmaps\"")
    );
    // can-i --list shows exactly view's rules (and the self reviews).
    let list = as_jane(&["auth", "can-i", "--list", "-n", "team"]);
    let list = String::from_utf8_lossy(&list.stdout);
    for line in list.lines().skip(1) {
        let verbs = line.rsplit('[').next().unwrap_or_default();
        assert!(
            verbs.is_empty()
                || ["get", "list", "watch", "create"]
                    .iter()
                    .any(|v| verbs.contains(v)),
            "{line}"
        );
        assert!(
            !verbs.contains("delete") && !verbs.contains("update") && !verbs.contains("patch"),
            "{line}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("configmaps ") && l.ends_with("[get list watch]")),
        "{list}"
    );
    let elsewhere =
        String::from_utf8_lossy(&as_jane(&["auth", "can-i", "--list", "-n", "default"]).stdout)
            .into_owned();
    assert!(!elsewhere.contains("configmaps"), "{elsewhere}");
    // Bad input: a too short ttl, or no user, is one clear line.
    let bad = std::process::Command::new(support::ORCH)
        .args([
            "kubeconfig",
            "create",
            "--user",
            "x",
            "--ttl",
            "1m",
            "--data-dir",
        ])
        .arg(server.dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ttl must be at least 10m"));
    let nowhere = std::process::Command::new(support::ORCH)
        .args([
            "kubeconfig",
            "create",
            "--user",
            "x",
            "--data-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("run this on the server machine"));
}

/// A key and a PEM certificate request for `subject` (`/CN=u/O=g`), made
/// with openssl: (key path, request PEM).
fn key_and_request(server: &Cluster, name: &str, subject: &str) -> (std::path::PathBuf, String) {
    let key = server.dir.path().join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
        ])
        .arg(&key)
        .output()
        .expect("run openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn a_certificate_from_an_approved_request_authenticates_its_subject() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = Cluster::start();
    let (key, request) = key_and_request(&server, "carol", "/CN=carol/O=devs");
    let csr = |name: &str, request: &str, extra: &str| {
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\n\
             spec:\n  request: {}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 3600\n  usages: [client auth]\n{extra}",
            b64.encode(request)
        )
    };
    let file = server.write("carol.yaml", &csr("carol", &request, ""));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    let listed = server.ok("1.33", &["get", "csr", "carol"]);
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    assert_eq!(
        lines[1][2..],
        [
            "kubernetes.io/kube-apiserver-client",
            "system:admin",
            "60m",
            "Pending"
        ]
    );
    // The requester is who posted it, whatever the body said.
    let spec = server.ok(
        "1.33",
        &[
            "get",
            "csr",
            "carol",
            "-o",
            "jsonpath={.spec.username} {.spec.groups}",
        ],
    );
    assert!(
        spec.starts_with("system:admin [") && spec.contains("system:masters"),
        "{spec}"
    );

    server.ok("1.33", &["certificate", "approve", "carol"]);
    let issued = server.wait_json(&["get", "csr", "carol"], 10, "a certificate issued", |c| {
        c["status"]["certificate"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    });
    let condition = server.ok("1.33", &["get", "csr", "carol", "--no-headers"]);
    assert!(
        condition.trim_end().ends_with("Approved,Issued"),
        "{condition}"
    );
    let cert = b64
        .decode(issued["status"]["certificate"].as_str().unwrap())
        .unwrap();
    let cert_path = server.write("carol.crt", &String::from_utf8(cert).unwrap());
    // It lasts what was asked (an hour), not a year.
    let dates = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(&cert_path)
        .output()
        .unwrap();
    let end = String::from_utf8_lossy(&dates.stdout);
    let year = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .year()
        .to_string();
    assert!(end.contains(&year), "{end}");
    let admin = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap();
    let kubeconfig = server.write(
        "carol.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{certificate-authority-data: {ca}, server: \"{}\"}}\n  name: c\n\
             contexts:\n- context: {{cluster: c, user: carol}}\n  name: c\ncurrent-context: c\n\
             users:\n- name: carol\n  user: {{client-certificate: {}, client-key: {}}}\n",
            server.url(),
            cert_path.display(),
            key.display()
        ),
    );
    let whoami = server.ok(
        "1.33",
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert_eq!(whoami, "carol [\"devs\",\"system:authenticated\"]");

    // Denied: never signed.
    let (_, other) = key_and_request(&server, "dave", "/CN=dave");
    let file = server.write("dave.yaml", &csr("dave", &other, ""));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok("1.33", &["certificate", "deny", "dave"]);
    std::thread::sleep(Duration::from_millis(500));
    let row = server.ok("1.33", &["get", "csr", "dave", "--no-headers"]);
    assert!(row.trim_end().ends_with("Denied"), "{row}");
    // Usages a client certificate may not have: Failed, saying why.
    let (_, third) = key_and_request(&server, "erin", "/CN=erin");
    let file = server.write(
        "erin.yaml",
        &csr("erin", &third, "").replace(
            "usages: [client auth]",
            "usages: [client auth, server auth]",
        ),
    );
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    server.ok("1.33", &["certificate", "approve", "erin"]);
    let failed = server.wait_json(&["get", "csr", "erin"], 10, "the request failed", |c| {
        c["status"]["conditions"].to_string().contains("Failed")
    });
    assert!(
        failed["status"]["conditions"]
            .to_string()
            .contains("invalid usage for client certificate: server auth"),
        "{}",
        failed["status"]
    );
    // Bad input: 422 naming every field.
    let bad = server.write(
        "bad-csr.yaml",
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: bad}\n\
         spec: {request: bm90IGEgcmVxdWVzdA==, expirationSeconds: 60, usages: [client auth]}\n",
    );
    let err = server.fails("1.33", &["create", "-f", bad.to_str().unwrap()]);
    for want in [
        "spec.request: Invalid value",
        "PEM block type must be CERTIFICATE REQUEST",
        "spec.signerName: Required value",
        "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 600 seconds (10 minutes)",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // Someone who may not approve for the signer is refused.
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "csr-approver",
            "--verb=update",
            "--resource=certificatesigningrequests/approval",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "ci-csr",
            "--clusterrole=csr-approver",
            "--user=ci",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "csr-reader",
            "--verb=get,list",
            "--resource=certificatesigningrequests",
        ],
    );
    server.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "ci-csr-read",
            "--clusterrole=csr-reader",
            "--user=ci",
        ],
    );
    let (_, fourth) = key_and_request(&server, "finn", "/CN=finn");
    let file = server.write("finn.yaml", &csr("finn", &fourth, ""));
    server.ok("1.33", &["apply", "-f", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let refused = server.fails("1.33", &["certificate", "approve", "finn", "--as=ci"]);
    assert!(
        refused.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""),
        "{refused}"
    );
}
