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
