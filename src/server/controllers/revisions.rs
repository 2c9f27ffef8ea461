//! ControllerRevisions: the template history of DaemonSets and
//! StatefulSets, as upstream keeps it, so that `kubectl rollout history`
//! and `kubectl rollout undo` work on them.
//!
//! A revision is named `<owner>-<hash>`, labelled with the owner's selector
//! labels and `controller-revision-hash`, and holds in `data` the patch that
//! puts its template back (`{"spec":{"template":{…,"$patch":"replace"}}}`,
//! which kubectl applies for an undo). Going back to an old template
//! renumbers that revision as the newest, as upstream does.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Context, controller_of, controller_ref, meta_str};
use crate::api::patch::PatchType;
use crate::api::status::ApiError;
use crate::server::registry::{DeleteOptions, WriteOptions};

pub const HASH_LABEL: &str = "controller-revision-hash";

/// The revisions `owner` controls, oldest first.
pub fn owned(ctx: &Context, owner: &Value) -> Vec<Arc<Value>> {
    let uid = meta_str(owner, "uid");
    let mut revs: Vec<Arc<Value>> = ctx
        .informers
        .controllerrevisions
        .list(Some(meta_str(owner, "namespace")))
        .into_iter()
        .filter(|r| controller_of(r).and_then(|o| o["uid"].as_str()) == Some(uid))
        .collect();
    revs.sort_by_key(|r| number(r));
    revs
}

pub fn number(rev: &Value) -> i64 {
    rev["revision"].as_i64().unwrap_or(0)
}

/// What a revision stores for a template.
fn data_for(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a revision holds.
fn template_of(rev: &Value) -> Value {
    let mut t = rev
        .pointer("/data/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

/// Make sure the owner's current template has a revision, numbered the
/// newest; returns it. `hash` names it (`<owner>-<hash>`).
///
/// # Errors
/// Writing the revision failed.
pub async fn ensure_current(
    ctx: &Context,
    owner: &Value,
    hash: &str,
    revs: &[Arc<Value>],
) -> Result<Value, ApiError> {
    let template = &owner["spec"]["template"];
    let newest = revs.iter().map(|r| number(r)).max().unwrap_or(0);
    let res = ctx.res("apps", "controllerrevisions");
    let ns = meta_str(owner, "namespace");
    if let Some(rev) = revs.iter().find(|r| template_of(r) == *template) {
        if number(rev) == newest {
            return Ok((**rev).clone());
        }
        let patch = json!({"revision": newest + 1});
        let written = ctx
            .registry
            .patch(
                &res,
                Some(ns),
                meta_str(rev, "name"),
                (PatchType::Merge, &patch),
                None,
                &WriteOptions::default(),
            )
            .await?;
        return Ok(written.object);
    }
    let mut labels = owner
        .pointer("/spec/selector/matchLabels")
        .cloned()
        .unwrap_or(json!({}));
    labels[HASH_LABEL] = json!(hash);
    let rev = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {
            "name": format!("{}-{hash}", meta_str(owner, "name")),
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [controller_ref(owner)],
            "annotations": owner.pointer("/metadata/annotations/kubernetes.io~1change-cause")
                .map(|c| json!({"kubernetes.io/change-cause": c})).unwrap_or(json!({})),
        },
        "data": data_for(template),
        "revision": newest + 1,
    });
    match ctx
        .registry
        .create(&res, Some(ns), rev, &WriteOptions::default())
        .await
    {
        Ok(w) => Ok(w.object),
        // Left by an earlier attempt whose result we did not see.
        Err(e) if e.code == 409 => {
            ctx.registry
                .get(
                    &res,
                    Some(ns),
                    &format!("{}-{hash}", meta_str(owner, "name")),
                )
                .await
        }
        Err(e) => Err(e),
    }
}

/// Delete the oldest revisions beyond `limit`, except the current one and
/// those `in_use` (a live pod still runs them).
pub async fn prune(
    ctx: &Context,
    revs: &[Arc<Value>],
    current: &str,
    in_use: &[String],
    limit: usize,
) {
    let res = ctx.res("apps", "controllerrevisions");
    let idle: Vec<&Arc<Value>> = revs
        .iter()
        .filter(|r| {
            let name = meta_str(r, "name");
            name != current && !in_use.iter().any(|u| u == name)
        })
        .collect();
    if idle.len() <= limit {
        return;
    }
    for rev in &idle[..idle.len() - limit] {
        let _ = ctx
            .registry
            .delete(
                &res,
                Some(meta_str(rev, "namespace")),
                meta_str(rev, "name"),
                &DeleteOptions::default(),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_data_restores_the_template_by_replacement() {
        let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "v1"}]}});
        let data = data_for(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = json!({"data": data, "revision": 3});
        assert_eq!(template_of(&rev), template);
        assert_eq!(number(&rev), 3);
    }
}
