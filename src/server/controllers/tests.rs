//! Controller machinery against a real registry on a temporary store.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::server::registry::{DeleteOptions, ListQuery, ServiceRanges};

async fn registry() -> (tempfile::TempDir, Arc<Registry>) {
    let (dir, store) = crate::store::test_util::temp_store();
    let registry = Registry::new(
        store,
        ServiceRanges::default(),
        crate::server::admission::Chain::default(),
    )
    .await
    .unwrap();
    let ns = registry.resource("", "namespaces").unwrap().clone();
    registry
        .create(
            &ns,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    (dir, registry)
}

async fn list(registry: &Registry, plural: &str) -> Vec<Value> {
    let res = registry.resource("", plural).unwrap().clone();
    registry
        .list(&res, Some("default"), &ListQuery::default())
        .await
        .unwrap()
        .decoded()
        .unwrap()
}

/// Poll until `check` holds (5 s).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_are_counted_on_one_object() {
    let (_dir, registry) = registry().await;
    let (ctx, _tasks) = start(registry.clone(), Config::default()).await;
    let obj = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": "u-1"}});
    record_event(
        &ctx,
        &obj,
        "Warning",
        "BackOff",
        "Back-off restarting".into(),
        "test",
    );
    eventually("the first event is stored", || async {
        list(&registry, "events").await.len() == 1
    })
    .await;
    record_event(
        &ctx,
        &obj,
        "Warning",
        "BackOff",
        "Back-off restarting".into(),
        "test",
    );
    record_event(
        &ctx,
        &obj,
        "Warning",
        "BackOff",
        "Back-off restarting".into(),
        "test",
    );
    eventually("the count reaches 3", || async {
        let events = list(&registry, "events").await;
        events.len() == 1 && events[0]["count"] == 3
    })
    .await;
    // A different message is a different event.
    record_event(
        &ctx,
        &obj,
        "Warning",
        "BackOff",
        "something else".into(),
        "test",
    );
    eventually("a second event", || async {
        list(&registry, "events").await.len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaning_delete_cut_short_is_finished_at_start() {
    let (_dir, registry) = registry().await;
    let cms = registry.resource("", "configmaps").unwrap().clone();
    // The state a crash mid-orphaning leaves: the owner marked deleting
    // with the `orphan` finalizer, the dependent still pointing at it.
    let owner = registry
        .create(
            &cms,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "owner", "finalizers": ["orphan"]}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap()
        .object;
    registry
        .delete(&cms, Some("default"), "owner", &DeleteOptions::default())
        .await
        .unwrap();
    registry
        .create(
            &cms,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dependent",
                   "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                         "uid": owner["metadata"]["uid"]}]}}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let (_ctx, _tasks) = start(registry.clone(), Config::default()).await;
    eventually("owner gone, dependent released and kept", || async {
        let left = list(&registry, "configmaps").await;
        left.len() == 1
            && left[0]["metadata"]["name"] == "dependent"
            && left[0]["metadata"].get("ownerReferences").is_none()
    })
    .await;
}
