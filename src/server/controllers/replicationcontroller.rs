//! The ReplicationController controller: the ReplicaSet controller's loop
//! ([`super::replicaset::run`]) for core/v1 ReplicationControllers, whose
//! selector is a plain label map, reporting failed creates and deletes as
//! upstream's `ReplicaFailure` condition.

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;

use super::Context;
use super::replicaset::{Replicated, run};
use crate::api::selector::LabelSelector;

/// ReplicationControllers (core/v1).
pub const REPLICATION_CONTROLLER: Replicated = Replicated {
    kind: "ReplicationController",
    group: "",
    plural: "replicationcontrollers",
    controller: "replication-controller",
    informer: |i| &i.replicationcontrollers,
    selector: selector_of,
    failure_condition: true,
};

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    run(ctx, tasks, &REPLICATION_CONTROLLER);
}

/// An RC's `spec.selector` (a map of labels) as a selector; `None` when
/// empty (such an RC selects nothing, as upstream).
pub fn selector_of(rc: &Value) -> Option<LabelSelector> {
    let labels = rc.pointer("/spec/selector")?;
    if labels.as_object().is_none_or(serde_json::Map::is_empty) {
        return None;
    }
    LabelSelector::from_label_selector(&serde_json::json!({ "matchLabels": labels }))
        .ok()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_selector_is_the_label_map() {
        let rc = json!({"spec": {"selector": {"app": "web", "tier": "front"}}});
        let sel = selector_of(&rc).unwrap();
        assert!(sel.matches_object(
            &json!({"metadata": {"labels": {"app": "web", "tier": "front", "x": "y"}}})
        ));
        assert!(!sel.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(selector_of(&json!({"spec": {"selector": {}}})).is_none());
        assert!(selector_of(&json!({"spec": {}})).is_none());
    }
}
