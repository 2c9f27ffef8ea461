//! NamespaceLifecycle: nothing new goes into a namespace that does not
//! exist (404, the namespace's NotFound) or is being terminated (403,
//! with the `NamespaceTerminating` cause kubectl drain looks for). That
//! covers creates of subresources too (`pods/binding`, `pods/eviction`),
//! as upstream.
//!
//! As upstream, the namespace is read from a cache (the controllers'
//! namespace informer) when the chain has one, and from the store when
//! the cache has not got it (a namespace created a moment ago) or the
//! namespace was deleted in the last 30 s (so a create racing the
//! deletion sees it Terminating, not the cache's stale Active).
//!
//! Unlike upstream, updates in a missing namespace are let through, and
//! no namespace is immortal: orch refused neither before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, CacheSlot, Mutating, Objects, Operation, Plugin, forbidden};
use crate::api::status::{ApiError, Cause};

/// How long after a namespace's deletion creates in it read the store
/// (upstream's `forceLiveLookupTTL`).
const LIVE_LOOKUP_FOR: Duration = Duration::from_secs(30);
/// How many recently deleted namespaces are remembered (upstream keeps
/// 100 too).
const LIVE_LOOKUP_MAX: usize = 100;

/// Keeps new objects out of missing and terminating namespaces.
#[derive(Default)]
pub struct NamespaceLifecycle {
    namespaces: CacheSlot,
    /// Namespaces deleted lately, and when.
    deleted: Mutex<HashMap<String, Instant>>,
}

impl NamespaceLifecycle {
    /// The plugin, reading namespaces from the cache `namespaces` holds
    /// once it is given one.
    pub fn new(namespaces: CacheSlot) -> Self {
        Self {
            namespaces,
            deleted: Mutex::default(),
        }
    }

    /// Remember that `name` is being deleted.
    fn deleting(&self, name: &str) {
        let Ok(mut deleted) = self.deleted.lock() else {
            return;
        };
        let now = Instant::now();
        deleted.retain(|_, at| now.duration_since(*at) < LIVE_LOOKUP_FOR);
        if deleted.len() >= LIVE_LOOKUP_MAX
            && let Some(oldest) = deleted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(n, _)| n.clone())
        {
            deleted.remove(&oldest);
        }
        deleted.insert(name.to_owned(), now);
    }

    /// Was `name` deleted lately, so the cache may not show it yet?
    fn deleted_lately(&self, name: &str) -> bool {
        self.deleted.lock().is_ok_and(|deleted| {
            deleted
                .get(name)
                .is_some_and(|at| at.elapsed() < LIVE_LOOKUP_FOR)
        })
    }

    /// The namespace `name`: cached when that can be trusted, else stored.
    async fn namespace(&self, name: &str, objects: &dyn Objects) -> Result<Arc<Value>, ApiError> {
        if !self.deleted_lately(name)
            && let Some(found) = self.namespaces.get().and_then(|cache| cache.get(name))
        {
            return Ok(found);
        }
        Ok(Arc::new(objects.get("", "namespaces", None, name).await?))
    }
}

impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn mutating(&self) -> Option<&dyn Mutating> {
        Some(self)
    }
}

impl Mutating for NamespaceLifecycle {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        _object: &'a mut Value,
        objects: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            if attrs.operation == Operation::Delete && attrs.is_main("", "namespaces") {
                self.deleting(attrs.name);
                return Ok(());
            }
            let Some(ns) = attrs.namespace.filter(|n| !n.is_empty()) else {
                return Ok(());
            };
            if attrs.operation != Operation::Create
                || !attrs.resource.namespaced
                || attrs.is("", "namespaces")
            {
                return Ok(());
            }
            let namespace = self.namespace(ns, objects).await?;
            if namespace.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating") {
                return Ok(());
            }
            let mut err = forbidden(
                attrs,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            );
            if let Some(details) = err.details.as_mut() {
                details.causes.push(Cause {
                    reason: "NamespaceTerminating".into(),
                    message: format!("namespace {ns} is being terminated"),
                    field: "metadata.namespace".into(),
                });
            }
            Err(err)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admission::CacheSlot;
    use crate::server::admission::tests::{Stored, attrs};
    use crate::server::auth::User;
    use serde_json::json;

    const TERMINATING: &str = "pods \"p\" is forbidden: unable to create new content in namespace old because it is being terminated";

    #[tokio::test]
    async fn nothing_new_goes_into_missing_or_terminating_namespaces() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let stored = Stored(
            [("live", "Active"), ("old", "Terminating")]
                .into_iter()
                .map(|(name, phase)| {
                    (
                        format!("namespaces//{name}"),
                        json!({"metadata": {"name": name}, "status": {"phase": phase}}),
                    )
                })
                .collect(),
        );
        use Operation::{Create, Delete, Update};
        #[rustfmt::skip]
        let cases = [
            (Create, "pods", Some("live"), None, None),
            (Create, "pods", Some("old"), None, Some((403, TERMINATING))),
            (Create, "pods", Some("old"), Some("binding"), Some((403, TERMINATING))),
            (Create, "pods", Some("gone"), None, Some((404, "namespaces \"gone\" not found"))),
            (Update, "pods", Some("old"), None, None),
            (Update, "pods", Some("gone"), None, None),
            (Delete, "pods", Some("old"), None, None),
            // Cluster-scoped objects, and namespaces themselves.
            (Create, "nodes", None, None, None),
            (Create, "namespaces", None, None, None),
        ];
        for (operation, plural, ns, sub, want) in cases {
            let mut a = attrs(&catalog, &user, operation, plural, ns, "p");
            a.subresource = sub;
            let got = NamespaceLifecycle::default()
                .admit(&a, &mut Value::Null, &stored)
                .await
                .map_err(|e| (e.code, e.message));
            assert_eq!(
                got,
                want.map_or(Ok(()), |(code, m)| Err((code, m.to_owned()))),
                "{operation:?} {plural} in {ns:?} ({sub:?})"
            );
        }
    }

    /// Namespaces as a cache holds them, by name.
    struct Cached(HashMap<String, Arc<Value>>);

    impl crate::server::admission::Cache for Cached {
        fn get(&self, key: &str) -> Option<Arc<Value>> {
            self.0.get(key).cloned()
        }
    }

    fn namespace(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"phase": phase}})
    }

    #[tokio::test]
    async fn the_cache_is_read_first_and_the_store_after_a_miss_or_a_deletion() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        // The store: `cached` is gone from it (the cache answers for it),
        // `fresh` is not cached yet, `old` is Terminating and the cache
        // still shows it Active.
        let stored = Stored(
            [("fresh", "Active"), ("old", "Terminating")]
                .into_iter()
                .map(|(n, phase)| (format!("namespaces//{n}"), namespace(n, phase)))
                .collect(),
        );
        let cache = Cached(
            [("cached", "Active"), ("old", "Active")]
                .into_iter()
                .map(|(n, phase)| (n.to_owned(), Arc::new(namespace(n, phase))))
                .collect(),
        );
        let slot = CacheSlot::default();
        let plugin = NamespaceLifecycle::new(slot.clone());
        let (catalog, user, stored, plugin) = (&catalog, &user, &stored, &plugin);
        let create = |ns| async move {
            let a = attrs(catalog, user, Operation::Create, "pods", Some(ns), "p");
            plugin
                .admit(&a, &mut Value::Null, stored)
                .await
                .map_err(|e| e.code)
        };
        // No cache given yet: the store answers.
        assert_eq!(create("cached").await, Err(404));
        assert_eq!(create("old").await, Err(403));
        let _ = slot.set(Arc::new(cache));
        assert_eq!(create("cached").await, Ok(()), "read from the cache");
        assert_eq!(create("fresh").await, Ok(()), "a miss reads the store");
        assert_eq!(create("gone").await, Err(404));
        assert_eq!(create("old").await, Ok(()), "the cache's stale Active");
        // Deleting `old` makes creates in it read the store from then on.
        let mut delete = attrs(catalog, user, Operation::Delete, "namespaces", None, "old");
        delete.namespace = None;
        plugin
            .admit(&delete, &mut Value::Null, stored)
            .await
            .unwrap();
        assert_eq!(create("old").await, Err(403), "read from the store");
        assert_eq!(create("cached").await, Ok(()), "others still cached");
    }

    #[tokio::test]
    async fn a_terminating_namespace_is_named_in_the_causes() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let stored = Stored(
            [(
                "namespaces//old".to_owned(),
                json!({"status": {"phase": "Terminating"}}),
            )]
            .into(),
        );
        let a = attrs(&catalog, &user, Operation::Create, "pods", Some("old"), "p");
        let err = NamespaceLifecycle::default()
            .admit(&a, &mut Value::Null, &stored)
            .await
            .unwrap_err();
        let details = err.details.unwrap();
        assert_eq!(
            (details.name.as_str(), details.kind.as_str()),
            ("p", "pods")
        );
        assert_eq!(
            details.causes,
            [Cause {
                reason: "NamespaceTerminating".into(),
                message: "namespace old is being terminated".into(),
                field: "metadata.namespace".into(),
            }]
        );
    }
}
