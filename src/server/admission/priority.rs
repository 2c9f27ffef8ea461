//! Priority: a pod's `priority` and `preemptionPolicy`. PriorityClasses
//! are not served, so every pod gets what upstream gives a pod when no
//! class is the default: priority 0, `PreemptLowerPriority`. An update
//! that leaves them out keeps the stored ones, as upstream.
//!
//! As orch did before, a priority the pod states itself is kept (upstream
//! refuses one that differs from its class's).

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Attributes, Mutating, Objects, Operation, Plugin, ready};
use crate::api::status::ApiError;

/// Gives pods their priority.
pub struct Priority;

impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn mutating(&self) -> Option<&dyn Mutating> {
        Some(self)
    }
}

impl Mutating for Priority {
    fn admit<'a>(
        &'a self,
        attrs: &'a Attributes<'a>,
        object: &'a mut Value,
        _: &'a dyn Objects,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        if attrs.operation == Operation::Delete || !attrs.is_main("", "pods") {
            return ready(Ok(()));
        }
        let old_spec = attrs.old_object.and_then(|o| o.get("spec"));
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            for (field, default) in [
                ("priority", json!(0)),
                ("preemptionPolicy", json!("PreemptLowerPriority")),
            ] {
                if spec.get(field).is_some_and(|v| !v.is_null()) {
                    continue;
                }
                let kept = old_spec
                    .and_then(|s| s.get(field))
                    .filter(|v| !v.is_null())
                    .cloned();
                spec.insert(field.into(), kept.unwrap_or(default));
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

    #[tokio::test]
    async fn pods_get_priority_zero_and_keep_what_they_have() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let user = User::service_account("default", "app");
        let bare = json!({"spec": {}});
        let stated = json!({"spec": {"priority": 7, "preemptionPolicy": "Never"}});
        let defaults = json!({"priority": 0, "preemptionPolicy": "PreemptLowerPriority"});
        let seven = json!({"priority": 7, "preemptionPolicy": "Never"});
        // (operation, resource, subresource, pod, stored pod, priority fields after)
        #[rustfmt::skip]
        let cases = [
            (Operation::Create, "pods", None, bare.clone(), None, defaults.clone()),
            (Operation::Create, "pods", None, json!({"spec": {"priority": null}}), None, defaults.clone()),
            (Operation::Create, "pods", None, stated.clone(), None, seven.clone()),
            (Operation::Update, "pods", None, bare.clone(), Some(stated.clone()), seven.clone()),
            (Operation::Update, "pods", None, bare.clone(), Some(bare.clone()), defaults.clone()),
            (Operation::Update, "pods", None, stated.clone(), Some(bare.clone()), seven),
            (Operation::Update, "pods", Some("status"), bare.clone(), Some(stated), json!({})),
            (Operation::Create, "apps/deployments", None, bare.clone(), None, json!({})),
            (Operation::Delete, "pods", None, bare, None, json!({})),
        ];
        for (operation, plural, sub, mut pod, old, want) in cases {
            let before = pod.clone();
            let mut a = attrs(&catalog, &user, operation, plural, Some("default"), "p");
            a.subresource = sub;
            a.old_object = old.as_ref();
            Priority
                .admit(&a, &mut pod, &Stored::default())
                .await
                .unwrap();
            let got: serde_json::Map<String, Value> = ["priority", "preemptionPolicy"]
                .iter()
                .filter_map(|f| pod["spec"].get(*f).map(|v| ((*f).to_owned(), v.clone())))
                .collect();
            assert_eq!(
                Value::Object(got),
                want,
                "{operation:?} {plural} {sub:?} {before} (stored {old:?})"
            );
        }
    }
}
