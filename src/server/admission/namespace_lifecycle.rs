//! NamespaceLifecycle: nothing new goes into a namespace that does not
//! exist (404, the namespace's NotFound) or is being terminated (403,
//! with the `NamespaceTerminating` cause kubectl drain looks for). That
//! covers creates of subresources too (`pods/binding`, `pods/eviction`),
//! as upstream.
//!
//! Unlike upstream, updates in a missing namespace are let through, and
//! no namespace is immortal: orch refused neither before.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Attributes, Mutating, Objects, Operation, Plugin, forbidden};
use crate::api::status::{ApiError, Cause};

/// Keeps new objects out of missing and terminating namespaces.
pub struct NamespaceLifecycle;

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
            let Some(ns) = attrs.namespace.filter(|n| !n.is_empty()) else {
                return Ok(());
            };
            if attrs.operation != Operation::Create
                || !attrs.resource.namespaced
                || attrs.is("", "namespaces")
            {
                return Ok(());
            }
            let namespace = objects.get("", "namespaces", None, ns).await?;
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
            let got = NamespaceLifecycle
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
        let err = NamespaceLifecycle
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
