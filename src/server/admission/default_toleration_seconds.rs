//! DefaultTolerationSeconds: a pod that does not tolerate the
//! `node.kubernetes.io/not-ready` or `node.kubernetes.io/unreachable`
//! taint gets a NoExecute toleration of it for a limited time (300 s by
//! default: `--default-not-ready-toleration-seconds`,
//! `--default-unreachable-toleration-seconds`), so its pods leave a node
//! that is gone after that long. On creates and updates of pods, as
//! upstream.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Mutating, Objects, Operation, Plugin, Settings, ready};
use crate::api::status::ApiError;

/// Bounds how long pods stay on a node that is not ready or unreachable.
pub struct DefaultTolerationSeconds {
    not_ready_seconds: i64,
    unreachable_seconds: i64,
}

impl DefaultTolerationSeconds {
    pub fn new(settings: Settings) -> Self {
        Self {
            not_ready_seconds: settings.not_ready_toleration_seconds,
            unreachable_seconds: settings.unreachable_toleration_seconds,
        }
    }
}

impl Plugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn mutating(&self) -> Option<&dyn Mutating> {
        Some(self)
    }
}

impl Mutating for DefaultTolerationSeconds {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a mut Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        if attrs.operation == Operation::Delete || !attrs.is_main("", "pods") {
            return ready(Ok(()));
        }
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return ready(Ok(()));
        };
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(list) = tolerations.as_array_mut() {
            for (key, seconds) in [
                ("node.kubernetes.io/not-ready", self.not_ready_seconds),
                ("node.kubernetes.io/unreachable", self.unreachable_seconds),
            ] {
                let present = list.iter().any(|t| {
                    t.get("key").and_then(Value::as_str) == Some(key)
                        || (t.get("operator").and_then(Value::as_str) == Some("Exists")
                            && t.get("key").is_none())
                });
                if !present {
                    list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
                }
            }
        }
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admission::tests::{Stored, attrs};
    use crate::server::auth::User;

    fn toleration(key: &str, seconds: i64) -> Value {
        json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds})
    }

    #[tokio::test]
    async fn pods_tolerate_lost_nodes_for_a_while() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let plugin = DefaultTolerationSeconds::new(Settings {
            not_ready_toleration_seconds: 60,
            unreachable_toleration_seconds: 120,
        });
        let not_ready = toleration("node.kubernetes.io/not-ready", 60);
        let unreachable = toleration("node.kubernetes.io/unreachable", 120);
        let own = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        let everything = json!({"operator": "Exists"});
        let custom = json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"});
        // (operation, resource, subresource, tolerations before, after)
        #[rustfmt::skip]
        let cases = [
            (Operation::Create, "pods", None, None, Some(json!([not_ready, unreachable]))),
            (Operation::Create, "pods", None, Some(json!([custom])), Some(json!([custom, not_ready, unreachable]))),
            (Operation::Create, "pods", None, Some(json!([own])), Some(json!([own, not_ready]))),
            (Operation::Create, "pods", None, Some(json!([everything])), Some(json!([everything]))),
            (Operation::Update, "pods", None, Some(json!([])), Some(json!([not_ready, unreachable]))),
            (Operation::Update, "pods", Some("status"), None, None),
            (Operation::Create, "pods", Some("binding"), None, None),
            (Operation::Create, "apps/deployments", None, None, None),
            (Operation::Delete, "pods", None, None, None),
        ];
        for (operation, plural, sub, before, want) in cases {
            let mut pod = json!({"spec": {"containers": [{"name": "c"}]}});
            if let Some(t) = &before {
                pod["spec"]["tolerations"] = t.clone();
            }
            let mut a = attrs(&catalog, &user, operation, plural, Some("default"), "p");
            a.subresource = sub;
            plugin
                .admit(&a, &mut pod, &Stored::default())
                .await
                .unwrap();
            assert_eq!(
                pod["spec"].get("tolerations"),
                want.as_ref(),
                "{operation:?} {plural} {sub:?} {before:?}"
            );
        }
    }
}
