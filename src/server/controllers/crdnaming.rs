//! CustomResourceDefinition names (upstream's naming controller): a
//! definition's names are accepted (`status.acceptedNames`, condition
//! NamesAccepted) unless another definition of the same group already
//! took one of them, which the condition names: `"crontabs" is already in
//! use`, reason PluralConflict (SingularConflict, ShortNamesConflict,
//! KindConflict, ListKindConflict). A name stays with whoever accepted
//! it first; a conflicting definition keeps what it had and gets the rest
//! when the name is freed (its group's definitions are looked at again
//! whenever one changes or goes).
//!
//! Once its names are accepted the definition's served versions are
//! installed in the registry's catalog (discovery, routing and storage
//! follow) and it is Established (upstream's establishing controller).
//! A definition being deleted is no longer served; its objects are
//! deleted, then its cleanup finalizer dropped (upstream's CRD finalizer).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, feed, meta_str, run_workers};
use crate::api::custom::strings;
use crate::api::status::ApiError;
use crate::server::informer::{Change, Informer, Queue};
use crate::server::registry::kinds::apiextensions::set_condition;

pub fn start(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let queue = Queue::new();
    let informer = ctx.informers.customresourcedefinitions.clone();
    let all = {
        let informer = informer.clone();
        move || names_of(&informer, None)
    };
    let keys = {
        let informer = informer.clone();
        // A change anywhere in a group may free (or take) a name another
        // definition of that group waits for.
        move |c: &Change| {
            let group = c
                .new
                .as_ref()
                .or(c.old.as_ref())
                .and_then(|o| o.pointer("/spec/group"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut keys = names_of(&informer, Some(&group));
            keys.push(c.key.clone());
            keys
        }
    };
    feed(tasks, &informer, &queue, keys, all);
    run_workers(tasks, "crd-naming", queue, 1, move |name| {
        reconcile(ctx.clone(), name)
    });
}

/// The definitions (of `group`, or all).
fn names_of(informer: &Informer, group: Option<&str>) -> Vec<String> {
    informer
        .list(None)
        .iter()
        .filter(|c| {
            group.is_none_or(|g| c.pointer("/spec/group").and_then(Value::as_str) == Some(g))
        })
        .map(|c| meta_str(c, "name").to_owned())
        .collect()
}

/// What the names come to: the accepted names, and the NamesAccepted
/// condition's status, reason and message.
fn accept(crd: &Value, group_crds: &[Arc<Value>]) -> (Value, (&'static str, &'static str, String)) {
    let mut resources: HashSet<String> = HashSet::new();
    let mut kinds: HashSet<String> = HashSet::new();
    for other in group_crds {
        let accepted = &other["status"]["acceptedNames"];
        for key in ["plural", "singular"] {
            if let Some(n) = accepted[key].as_str().filter(|n| !n.is_empty()) {
                resources.insert(n.to_owned());
            }
        }
        resources.extend(strings(&accepted["shortNames"]));
        for key in ["kind", "listKind"] {
            if let Some(n) = accepted[key].as_str().filter(|n| !n.is_empty()) {
                kinds.insert(n.to_owned());
            }
        }
    }
    let requested = &crd["spec"]["names"];
    let old = &crd["status"]["acceptedNames"];
    let mut accepted = if old.is_object() {
        old.clone()
    } else {
        json!({"plural": "", "kind": ""})
    };
    let mut condition = ("True", "NoConflicts", "no conflicts found".to_owned());
    // One name: taken from the request unless someone else uses it.
    let check = |key: &str,
                 used: &HashSet<String>,
                 reason: &'static str,
                 accepted: &mut Value,
                 condition: &mut (&'static str, &'static str, String)| {
        let want = requested[key].as_str().unwrap_or_default();
        if want.is_empty() {
            return;
        }
        if old[key].as_str() == Some(want) || !used.contains(want) {
            accepted[key] = json!(want);
        } else {
            *condition = ("False", reason, format!("{want:?} is already in use"));
        }
    };
    check(
        "plural",
        &resources,
        "PluralConflict",
        &mut accepted,
        &mut condition,
    );
    check(
        "singular",
        &resources,
        "SingularConflict",
        &mut accepted,
        &mut condition,
    );
    let short = strings(&requested["shortNames"]);
    if short != strings(&old["shortNames"]) {
        let taken: Vec<String> = short
            .iter()
            .filter(|s| resources.contains(*s))
            .map(|s| format!("{s:?} is already in use"))
            .collect();
        match taken.as_slice() {
            [] if short.is_empty() => {
                if let Some(m) = accepted.as_object_mut() {
                    m.remove("shortNames");
                }
            }
            [] => accepted["shortNames"] = json!(short),
            [one] => condition = ("False", "ShortNamesConflict", one.clone()),
            many => {
                condition = (
                    "False",
                    "ShortNamesConflict",
                    format!("[{}]", many.join(", ")),
                );
            }
        }
    }
    check(
        "kind",
        &kinds,
        "KindConflict",
        &mut accepted,
        &mut condition,
    );
    check(
        "listKind",
        &kinds,
        "ListKindConflict",
        &mut accepted,
        &mut condition,
    );
    match requested.get("categories").filter(|c| !c.is_null()) {
        Some(c) => accepted["categories"] = c.clone(),
        None => {
            if let Some(m) = accepted.as_object_mut() {
                m.remove("categories");
            }
        }
    }
    (accepted, condition)
}

fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

async fn reconcile(ctx: Arc<Context>, name: String) -> Result<Action, ApiError> {
    let informer = &ctx.informers.customresourcedefinitions;
    let Some(crd) = informer.get(&name) else {
        install(&ctx);
        return Ok(Action::AwaitChange);
    };
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        install(&ctx);
        return clean_up(&ctx, &crd).await;
    }
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let same_group: Vec<Arc<Value>> = informer
        .list(None)
        .into_iter()
        .filter(|c| c.pointer("/spec/group").and_then(Value::as_str) == Some(group))
        .filter(|c| meta_str(c, "name") != name)
        .collect();
    let (accepted, (state, reason, message)) = accept(&crd, &same_group);
    let mut status = crd["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    status["acceptedNames"] = accepted;
    set_condition(&mut status, "NamesAccepted", state, reason, &message);
    let established = condition(&status, "Established").is_some_and(|c| c["status"] == "True");
    if !established {
        if state == "True" {
            set_condition(
                &mut status,
                "Established",
                "False",
                "Installing",
                "the initial names have been accepted",
            );
        } else if condition(&status, "Established").is_none() {
            set_condition(
                &mut status,
                "Established",
                "False",
                "NotAccepted",
                "not all names are accepted",
            );
        }
    }
    if status == crd["status"] {
        // Names settled: serve them (the upstream establishing
        // controller's step), then say so.
        install(&ctx);
        if established || state != "True" {
            return Ok(Action::AwaitChange);
        }
        set_condition(
            &mut status,
            "Established",
            "True",
            "InitialNamesAccepted",
            "the initial names have been accepted",
        );
    }
    write_status(&ctx, &crd, status).await
}

async fn write_status(ctx: &Context, crd: &Value, status: Value) -> Result<Action, ApiError> {
    let mut updated = crd.clone();
    updated["status"] = status;
    let res = ctx.res("apiextensions.k8s.io", "customresourcedefinitions");
    let name = meta_str(crd, "name");
    ctx.write(&res, None, name, updated, Some("status")).await
}

/// Serve every definition whose names are accepted and that is not being
/// deleted, and nothing else.
fn install(ctx: &Context) {
    let mut crds = ctx.informers.customresourcedefinitions.list(None);
    crds.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
    let resources = crds
        .iter()
        .filter(|c| c.pointer("/metadata/deletionTimestamp").is_none())
        .flat_map(|c| crate::api::custom::resources(c))
        .collect();
    ctx.registry.install_custom(resources);
}

/// A definition being deleted: delete its objects, then let it go
/// (upstream's CRD finalizer), saying how far it got in condition
/// Terminating.
async fn clean_up(ctx: &Context, crd: &Value) -> Result<Action, ApiError> {
    use crate::server::registry::kinds::apiextensions::CLEANUP_FINALIZER;
    let finalizers = crd["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(Action::AwaitChange);
    }
    let terminating = condition(&crd["status"], "Terminating");
    if terminating.is_none_or(|c| c["reason"] == "InstanceDeletionPending") {
        let mut status = crd["status"].clone();
        set_condition(
            &mut status,
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        );
        return write_status(ctx, crd, status).await;
    }
    let mut status = crd["status"].clone();
    let established = condition(&status, "Established").is_some_and(|c| c["status"] == "True");
    match crate::api::custom::resources(crd).first() {
        Some(res) if established => {
            let left = delete_instances(ctx, res).await;
            match left {
                Ok(0) => set_condition(
                    &mut status,
                    "Terminating",
                    "False",
                    "InstanceDeletionCompleted",
                    "removed all instances",
                ),
                Ok(n) => {
                    tracing::debug!(crd = %meta_str(crd, "name"), left = n, "waiting for custom objects to go");
                    return Ok(Action::RequeueAfter(std::time::Duration::from_secs(1)));
                }
                Err(e) => {
                    set_condition(
                        &mut status,
                        "Terminating",
                        "True",
                        "InstanceDeletionFailed",
                        &format!("could not issue all deletes: {}", e.message),
                    );
                    write_status(ctx, crd, status).await?;
                    return Ok(Action::RequeueAfter(std::time::Duration::from_secs(5)));
                }
            }
        }
        _ => set_condition(
            &mut status,
            "Terminating",
            "False",
            "NeverEstablished",
            "resource was never established",
        ),
    }
    // Drop the finalizer: the definition goes once none is left.
    let mut updated = crd.clone();
    updated["status"] = status;
    updated["metadata"]["finalizers"] = json!(
        finalizers
            .into_iter()
            .filter(|f| f != CLEANUP_FINALIZER)
            .collect::<Vec<_>>()
    );
    let res = ctx.res("apiextensions.k8s.io", "customresourcedefinitions");
    ctx.write(&res, None, meta_str(crd, "name"), updated, None)
        .await
}

/// Delete every object of `res` (all namespaces); how many are left
/// (objects with finalizers of their own stay until those go).
async fn delete_instances(
    ctx: &Context,
    res: &crate::api::catalog::Resource,
) -> Result<usize, ApiError> {
    let items = ctx
        .registry
        .list(res, None, &crate::server::registry::ListQuery::default())
        .await?
        .decoded()?;
    let mut left = 0;
    for obj in &items {
        let ns = obj["metadata"]["namespace"].as_str();
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            left += 1;
            continue;
        }
        match ctx
            .registry
            .delete(
                res,
                ns,
                meta_str(obj, "name"),
                &crate::server::registry::DeleteOptions::default(),
            )
            .await
        {
            Ok(gone) if gone.pointer("/metadata/deletionTimestamp").is_some() => left += 1,
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(plural: &str, kind: &str, short: &[&str]) -> Value {
        json!({
            "metadata": {"name": format!("{plural}.example.com")},
            "spec": {"group": "example.com", "names": {
                "plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                "listKind": format!("{kind}List"), "shortNames": short,
            }},
        })
    }

    fn accepted_as(mut c: Value) -> Arc<Value> {
        c["status"]["acceptedNames"] = c["spec"]["names"].clone();
        Arc::new(c)
    }

    #[test]
    fn free_names_are_accepted() {
        let (names, condition) = accept(&crd("crontabs", "CronTab", &["ct"]), &[]);
        assert_eq!(names["plural"], "crontabs");
        assert_eq!(names["listKind"], "CronTabList");
        assert_eq!(names["shortNames"], json!(["ct"]));
        assert_eq!(
            condition,
            ("True", "NoConflicts", "no conflicts found".into())
        );
    }

    #[test]
    fn taken_names_are_refused_and_the_rest_accepted() {
        let holder = accepted_as(crd("crontabs", "CronTab", &["ct"]));
        let (names, condition) = accept(
            &crd("crontabs", "Other", &[]),
            std::slice::from_ref(&holder),
        );
        assert_eq!(
            condition,
            (
                "False",
                "PluralConflict",
                "\"crontabs\" is already in use".into()
            )
        );
        assert_eq!(names["plural"], "");
        assert_eq!(names["kind"], "Other");
        let mut same_kind = crd("others", "CronTab", &[]);
        let (_, condition) = accept(&same_kind, std::slice::from_ref(&holder));
        // Both kind and listKind are taken: the later conflict is told.
        assert_eq!(condition.1, "ListKindConflict");
        same_kind["spec"]["names"]["listKind"] = json!("OtherList");
        let (_, condition) = accept(&same_kind, std::slice::from_ref(&holder));
        assert_eq!(
            condition,
            (
                "False",
                "KindConflict",
                "\"CronTab\" is already in use".into()
            )
        );
        let (names, condition) = accept(&crd("others", "Other", &["ct", "crontabs"]), &[holder]);
        assert_eq!(
            condition,
            (
                "False",
                "ShortNamesConflict",
                "[\"ct\" is already in use, \"crontabs\" is already in use]".into()
            )
        );
        assert!(names.get("shortNames").is_none());
        // What a definition already accepted stays its own.
        let mine = accepted_as(crd("mine", "Mine", &["m"]));
        let (_, condition) = accept(&mine, &[]);
        assert_eq!(condition.0, "True");
    }

    #[test]
    fn conditions_keep_their_transition_time_unless_the_status_changes() {
        let mut status = json!({});
        set_condition(
            &mut status,
            "NamesAccepted",
            "True",
            "NoConflicts",
            "no conflicts found",
        );
        status["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        set_condition(
            &mut status,
            "NamesAccepted",
            "True",
            "NoConflicts",
            "no conflicts found",
        );
        assert_eq!(
            status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        set_condition(&mut status, "NamesAccepted", "False", "PluralConflict", "x");
        assert_ne!(
            status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        set_condition(&mut status, "Established", "False", "Installing", "y");
        assert_eq!(status["conditions"].as_array().unwrap().len(), 2);
    }
}
