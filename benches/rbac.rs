//! RBAC benchmark: prints the figures issue #22 names.
//!
//! - the server's RSS before and after loading a policy of 100
//!   ClusterRoles, 300 Roles and 1,000 bindings (half RoleBindings, half
//!   ClusterRoleBindings, to users and groups);
//! - GET latency p50/p99 of one ConfigMap by a user allowed through RBAC
//!   (a RoleBinding of `view`, among the 1,000) against the same GET by
//!   `system:masters` (allowed before RBAC is asked), interleaved, and
//!   their ratio (target ≤ 1.1).
//!
//! Run with `cargo bench --bench rbac`: the real `orch server` on a free
//! loopback port, kube-rs clients over HTTPS, the user's certificate from
//! `orch kubeconfig create`.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use support::{client, machine, ms, pct, rss_kib, start_server};

const NAMESPACES: usize = 30;
const CLUSTER_ROLES: usize = 100;
const ROLES: usize = 300;
const BINDINGS: usize = 1_000;
const GETS: usize = 3_000;

fn rules(i: usize) -> serde_json::Value {
    json!([
        {"apiGroups": [""], "resources": ["pods", "pods/log", "services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["get", "update", "patch"]},
        {"apiGroups": [format!("team{i}.example.com")], "resources": ["widgets"], "verbs": ["*"], "resourceNames": [format!("w{i}")]},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["create", "delete"]},
    ])
}

fn subjects(i: usize) -> serde_json::Value {
    json!([
        {"kind": "User", "name": format!("user-{i}"), "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "Group", "name": format!("team-{}", i % 50), "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
    ])
}

async fn load_policy(admin: &Client) {
    let pp = PostParams::default();
    for n in 0..NAMESPACES {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("ns-{n}")}})).unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&pp, &ns)
            .await
            .expect("namespace");
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&pp, &ns)
        .await
        .expect("namespace");
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    for i in 0..CLUSTER_ROLES {
        let r: ClusterRole = serde_json::from_value(
            json!({"metadata": {"name": format!("bench-cr-{i}")}, "rules": rules(i)}),
        )
        .unwrap();
        cluster_roles.create(&pp, &r).await.expect("clusterrole");
    }
    for i in 0..ROLES {
        let ns = format!("ns-{}", i % NAMESPACES);
        let r: Role = serde_json::from_value(
            json!({"metadata": {"name": format!("bench-r-{i}")}, "rules": rules(i)}),
        )
        .unwrap();
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(&pp, &r)
            .await
            .expect("role");
    }
    for i in 0..BINDINGS / 2 {
        let ns = format!("ns-{}", i % NAMESPACES);
        let (kind, role) = if i % 2 == 0 {
            (
                "Role",
                format!(
                    "bench-r-{}",
                    i % ROLES / NAMESPACES * NAMESPACES + i % NAMESPACES
                ),
            )
        } else {
            ("ClusterRole", format!("bench-cr-{}", i % CLUSTER_ROLES))
        };
        let b: RoleBinding = serde_json::from_value(json!({"metadata": {"name": format!("bench-rb-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}, "subjects": subjects(i)}))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin.clone(), &ns)
            .create(&pp, &b)
            .await
            .expect("rolebinding");
        let cb: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": format!("bench-crb-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("bench-cr-{}", i % CLUSTER_ROLES)},
            "subjects": subjects(i + BINDINGS)}))
        .unwrap();
        Api::<ClusterRoleBinding>::all(admin.clone())
            .create(&pp, &cb)
            .await
            .expect("clusterrolebinding");
    }
    // The user measured: view in "bench", through one RoleBinding among
    // the thousand, and in a few groups that have bindings of their own.
    let b: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "bench-user-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "bench-user", "apiGroup": "rbac.authorization.k8s.io"}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "bench")
        .create(&pp, &b)
        .await
        .expect("binding");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "bench")
        .create(&pp, &cm)
        .await
        .expect("configmap");
}

async fn user_client(server: &support::Server) -> Client {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .args([
            "kubeconfig",
            "create",
            "--user",
            "bench-user",
            "--group",
            "team-1",
            "--group",
            "team-2",
            "--data-dir",
        ])
        .arg(server.dir.path())
        .output()
        .expect("orch kubeconfig create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kc = Kubeconfig::from_yaml(&String::from_utf8_lossy(&out.stdout)).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rbac bench: run with `cargo bench --bench rbac`");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("orch RBAC benchmark — {}", machine());
    let server = start_server();
    let pid = server.child.id();
    rt.block_on(async {
        let admin = client(&server).await;
        // Settle, then the RSS of a fresh server (bootstrap policy only).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_kib(pid);
        let start = Instant::now();
        load_policy(&admin).await;
        let loaded = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        println!(
            "policy: {CLUSTER_ROLES} ClusterRoles, {ROLES} Roles, {BINDINGS} bindings loaded in {:.1} s",
            loaded.as_secs_f64()
        );
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB after loading the policy (+{:.1} MiB)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after as f64 - before as f64) / 1024.0
        );
        let user = user_client(&server).await;
        let as_admin: Api<ConfigMap> = Api::namespaced(admin.clone(), "bench");
        let as_user: Api<ConfigMap> = Api::namespaced(user.clone(), "bench");
        as_user.get("c").await.expect("the user may get the ConfigMap");
        // Warm both connections, then interleave so drift hits both.
        for _ in 0..200 {
            as_admin.get("c").await.expect("get");
            as_user.get("c").await.expect("get");
        }
        let (mut a, mut u) = (Vec::with_capacity(GETS), Vec::with_capacity(GETS));
        for i in 0..GETS {
            let order: [(&Api<ConfigMap>, bool); 2] = if i % 2 == 0 {
                [(&as_admin, true), (&as_user, false)]
            } else {
                [(&as_user, false), (&as_admin, true)]
            };
            for (api, is_admin) in order {
                let t = Instant::now();
                api.get("c").await.expect("get");
                let d = t.elapsed();
                if is_admin { a.push(d) } else { u.push(d) }
            }
        }
        a.sort();
        u.sort();
        let (a50, a99, u50, u99) = (pct(&a, 0.5), pct(&a, 0.99), pct(&u, 0.5), pct(&u, 0.99));
        println!("GET configmap, {GETS} each, interleaved:");
        println!("  system:masters:   p50 {}  p99 {}", ms(a50), ms(a99));
        println!("  RBAC (view):      p50 {}  p99 {}", ms(u50), ms(u99));
        println!(
            "  ratio RBAC/masters: p50 {:.2}  p99 {:.2}  (target <= 1.1)",
            u50.as_secs_f64() / a50.as_secs_f64(),
            u99.as_secs_f64() / a99.as_secs_f64()
        );
    });
}
