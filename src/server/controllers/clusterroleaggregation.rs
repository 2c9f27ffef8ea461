//! ClusterRole aggregation (upstream's clusterrole-aggregation
//! controller): a ClusterRole with an `aggregationRule` gets as its rules
//! the union of the rules of every ClusterRole its selectors match, in name
//! order, each rule once. This is how `admin`, `edit` and `view` grow when
//! a ClusterRole labelled `rbac.authorization.k8s.io/aggregate-to-view:
//! "true"` (say, a CRD's) appears, and shrink when it goes.
//!
//! Any ClusterRole change queues every aggregated ClusterRole; aggregated
//! roles that select each other (`edit` is in `admin`) settle in a few
//! rounds, as upstream's.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::replicaset::rv_of;
use super::{Action, Context, feed, run_workers};
use crate::api::meta::meta_str;
use crate::api::selector::LabelSelector;
use crate::api::status::ApiError;
use crate::server::informer::{Informer, Queue};
use crate::server::registry::WriteOptions;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let informer = ctx.informers.clusterroles.clone();
    let all = {
        let informer = informer.clone();
        move || aggregated(&informer)
    };
    let keys = {
        let informer = informer.clone();
        move |_: &crate::server::informer::Change| aggregated(&informer)
    };
    feed(tasks, &informer, &queue, keys, all);
    run_workers(tasks, "clusterrole-aggregation", queue, 1, move |name| {
        reconcile(ctx.clone(), name)
    });
}

/// The names of the ClusterRoles that aggregate.
fn aggregated(informer: &Informer) -> Vec<String> {
    informer
        .list(None)
        .iter()
        .filter(|r| r.get("aggregationRule").is_some_and(|a| !a.is_null()))
        .map(|r| meta_str(r, "name").to_owned())
        .collect()
}

/// The rules `role` aggregates from `roles`: each rule of each ClusterRole
/// a selector matches (by name, each role once), without repeats.
pub fn aggregate(role: &Value, roles: &[Arc<Value>]) -> Vec<Value> {
    let mut matched: BTreeMap<&str, &Value> = BTreeMap::new();
    let selectors = role
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for selector in selectors {
        // A selector the API let through always parses; one that does not
        // matches nothing rather than everything.
        let Ok(selector) = LabelSelector::from_label_selector(selector) else {
            continue;
        };
        for other in roles {
            if meta_str(other, "name") != meta_str(role, "name") && selector.matches_object(other) {
                matched.insert(meta_str(other, "name"), other);
            }
        }
    }
    let mut rules: Vec<Value> = Vec::new();
    for other in matched.values() {
        for rule in other
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    rules
}

async fn reconcile(ctx: Arc<Context>, name: String) -> Result<Action, ApiError> {
    let informer = &ctx.informers.clusterroles;
    let Some(role) = informer.get(&name) else {
        return Ok(Action::AwaitChange);
    };
    if role.get("aggregationRule").is_none_or(Value::is_null) {
        return Ok(Action::AwaitChange);
    }
    let rules = aggregate(&role, &informer.list(None));
    let have = role
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if have == rules {
        return Ok(Action::AwaitChange);
    }
    let mut updated = (*role).clone();
    updated["rules"] = json!(rules);
    let res = ctx.res(crate::api::rbac::GROUP, "clusterroles");
    match ctx
        .registry
        .update(&res, None, &name, updated, None, &WriteOptions::default())
        .await
    {
        Ok(written) => {
            informer.wait_for(rv_of(&written.object)).await;
            Ok(Action::AwaitChange)
        }
        // Changed meanwhile: the change queues it again.
        Err(e) if e.code == 409 || e.code == 404 => Ok(Action::AwaitChange),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
    }

    #[test]
    fn aggregation_unions_the_rules_of_matching_roles_once() {
        let pods = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let crd = json!({"verbs": ["get"], "apiGroups": ["x.io"], "resources": ["widgets"]});
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"agg": "view"}}, {"matchLabels": {"extra": "yes"}}]}});
        let roles = [
            role(
                "b-crd",
                json!({"agg": "view", "extra": "yes"}),
                json!([crd, pods]),
            ),
            role("a-core", json!({"agg": "view"}), json!([pods])),
            role(
                "c-other",
                json!({"agg": "edit"}),
                json!([{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]),
            ),
            Arc::new(view.clone()),
        ];
        assert_eq!(aggregate(&view, &roles), vec![pods, crd]);
        assert_eq!(aggregate(&view, &roles[2..]), Vec::<Value>::new());
    }
}
