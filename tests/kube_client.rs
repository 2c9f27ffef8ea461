//! kube-rs, the Rust client the agent will use, works unchanged against orch.

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use support::Cluster;

async fn client(server: &Cluster) -> Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid for kube-rs");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn kube_rs_creates_lists_watches_patches_and_deletes() {
    let server = Cluster::start();
    let client = client(&server).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "kube-rs"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-rs");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}}),
    )
    .unwrap();
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let list = cms
        .list(&ListParams::default().labels("x=1"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let rv = list
        .metadata
        .resource_version
        .clone()
        .expect("list has a resourceVersion");

    let mut stream = cms
        .watch(&WatchParams::default().labels("x=1").timeout(30), &rv)
        .await
        .expect("watch")
        .boxed();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "patched"}})),
    )
    .await
    .expect("merge patch");
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch event within 10 s")
        .expect("stream open")
        .expect("event decodes");
    match event {
        WatchEvent::Modified(cm) => assert_eq!(cm.data.unwrap()["k"], "patched"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Optimistic concurrency: a stale resourceVersion is a 409.
    let mut stale = created.clone();
    stale.data = Some([("k".to_owned(), "stale".to_owned())].into());
    let err = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .expect_err("stale update");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-rs");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}
    }))
    .unwrap();
    let d = deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    assert_eq!(d.spec.unwrap().replicas, Some(1), "defaulted");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}});
    let d = deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .expect("strategic merge patch");
    assert_eq!(d.metadata.generation, Some(2));

    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = cms.get("a").await.expect_err("deleted");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn kube_rs_asks_subject_access_and_token_reviews() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let server = Cluster::start();
    let client = client(&server).await;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let ask = |user: &str, verb: &str, resource: &str| -> SubjectAccessReview {
        serde_json::from_value(json!({"spec": {"user": user,
            "resourceAttributes": {"verb": verb, "resource": resource, "namespace": "default"}}}))
        .unwrap()
    };
    // Every authenticated user may create self reviews (system:basic-user);
    // a stranger may not list pods.
    let answer = reviews
        .create(&PostParams::default(), &ask("stranger", "list", "pods"))
        .await
        .expect("create SubjectAccessReview");
    assert!(!answer.status.expect("status").allowed);
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {"user": "x", "groups": ["system:authenticated"],
        "resourceAttributes": {"verb": "create", "group": "authorization.k8s.io", "resource": "selfsubjectaccessreviews"}}}))
    .unwrap();
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .expect("create");
    let status = answer.status.expect("status");
    assert!(status.allowed, "{status:?}");
    assert_eq!(
        status.reason.as_deref(),
        Some(
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\""
        )
    );

    // A TokenReview names the token's service account; a made-up token
    // is not authenticated.
    let sa = server.eventually(&["create", "token", "default"], "a token", |t| {
        !t.trim().is_empty()
    });
    let tokens: Api<TokenReview> = Api::all(client.clone());
    let review: TokenReview =
        serde_json::from_value(json!({"spec": {"token": sa.trim()}})).unwrap();
    let status = tokens
        .create(&PostParams::default(), &review)
        .await
        .expect("create")
        .status
        .expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    assert!(
        user.groups
            .unwrap_or_default()
            .contains(&"system:serviceaccounts:default".to_owned())
    );
    let review: TokenReview = serde_json::from_value(json!({"spec": {"token": "nope"}})).unwrap();
    let status = tokens
        .create(&PostParams::default(), &review)
        .await
        .expect("create")
        .status
        .expect("status");
    assert_ne!(status.authenticated, Some(true));
    assert_eq!(status.error.as_deref(), Some("invalid bearer token"));
    // For another audience than the token's: not authenticated.
    let review: TokenReview =
        serde_json::from_value(json!({"spec": {"token": sa.trim(), "audiences": ["vault"]}}))
            .unwrap();
    let status = tokens
        .create(&PostParams::default(), &review)
        .await
        .expect("create")
        .status
        .expect("status");
    assert_ne!(status.authenticated, Some(true), "{status:?}");
}
