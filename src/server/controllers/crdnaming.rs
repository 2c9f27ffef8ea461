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
//! Once its names are accepted a definition is Installing (condition
//! Established False, as upstream's naming controller leaves it); it
//! becomes Established when its objects are served.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Action, Context, feed, meta_str, run_workers};
use crate::api::status::ApiError;
use crate::server::informer::{Change, Informer, Queue};
use crate::server::registry::WriteOptions;

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

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
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

/// `conditions` with `ty` set as upstream's `SetCRDCondition` sets it:
/// appended if new, else changed in place, its transition time moved
/// only when its status changes.
pub fn set_condition(status: &mut Value, ty: &str, state: &str, reason: &str, message: &str) {
    let now = jiff::Timestamp::now().to_string();
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let conditions = status["conditions"].as_array_mut().expect("an array");
    match conditions.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            if c["status"] != state {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(state);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conditions.push(
            json!({"type": ty, "status": state, "lastTransitionTime": now,
                                       "reason": reason, "message": message}),
        ),
    }
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
        return Ok(Action::AwaitChange);
    };
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(Action::AwaitChange);
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
        return Ok(Action::AwaitChange);
    }
    let mut updated = (*crd).clone();
    updated["status"] = status;
    let res = ctx.res("apiextensions.k8s.io", "customresourcedefinitions");
    match ctx
        .registry
        .update(
            &res,
            None,
            &name,
            updated,
            Some("status"),
            &WriteOptions::default(),
        )
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.code == 404 || e.code == 409 => Ok(Action::AwaitChange),
        Err(e) => Err(e),
    }
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
