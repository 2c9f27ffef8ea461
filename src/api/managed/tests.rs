use serde_json::{Value, json};

use super::*;

fn typer(name: &'static str, scope: Scope) -> Typer<'static> {
    Typer {
        shape: Shape::component(name, crate::api::components::structure()),
        scope,
    }
}

fn writer<'a>(manager: &'a str, api_version: &'a str) -> Writer<'a> {
    Writer {
        manager,
        api_version,
        subresource: "",
        now: "2026-12-07T10:00:00Z",
    }
}

fn fields_of<'m>(managed: &'m Managed, manager: &str) -> &'m Entry {
    managed
        .entries()
        .find(|e| e.manager == manager)
        .unwrap_or_else(|| panic!("no entry for {manager}: {managed:?}"))
}

fn with_managed(mut obj: Value, managed: &Managed) -> Value {
    obj["metadata"]["managedFields"] = managed.encode().unwrap_or(Value::Null);
    obj
}

#[test]
fn a_create_is_tracked_from_the_zero_object_as_upstream() {
    let t = typer("io.k8s.api.apps.v1.Deployment", Scope::NotStatus);
    let new = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]},
            },
        },
    });
    let managed = t.update(
        &t.zero(),
        &new,
        Managed::default(),
        &writer("kubectl-create", "apps/v1"),
    );
    let entry = fields_of(&managed, "kubectl-create");
    assert_eq!(entry.operation, Operation::Update);
    assert_eq!(entry.time.as_deref(), Some("2026-12-07T10:00:00Z"));
    assert_eq!(
        entry.fields.to_fields_v1(),
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}}, "f:type": {}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                        ".": {}, "f:image": {}, "f:name": {}, "f:resources": {}}}},
                },
            },
        })
    );
    let encoded = managed.encode().unwrap();
    assert_eq!(encoded[0]["manager"], "kubectl-create");
    assert_eq!(encoded[0]["fieldsType"], "FieldsV1");
    assert_eq!(encoded[0]["apiVersion"], "apps/v1");
}

#[test]
fn a_custom_resource_create_marks_every_new_parent() {
    let schema = json!({"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}}},
    }});
    let t = Typer {
        shape: Shape::new(&schema, None),
        scope: Scope::Whole,
    };
    let new = json!({"apiVersion": "example.com/v1", "kind": "CronTab",
        "metadata": {"name": "a"}, "spec": {"cronSpec": "* * * * */5"}});
    let managed = t.update(
        &t.zero(),
        &new,
        Managed::default(),
        &writer("kubectl-create", "example.com/v1"),
    );
    assert_eq!(
        fields_of(&managed, "kubectl-create").fields.to_fields_v1(),
        json!({"f:spec": {".": {}, "f:cronSpec": {}}})
    );
}

#[test]
fn objects_never_tracked_stay_untracked_on_update() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let live = json!({"metadata": {"name": "a", "uid": "u"}, "data": {"a": "1"}});
    let new = json!({"metadata": {"name": "a", "uid": "u"}, "data": {"a": "2"}});
    assert!(
        t.update(&live, &new, Managed::default(), &writer("x", "v1"))
            .is_empty()
    );
}

fn apply(
    t: &Typer,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApplyError> {
    let managed = incoming(live, live, false);
    let (obj, managed) = t.apply(live, config, managed, &writer(manager, "v1"), force)?;
    Ok(with_managed(obj, &managed))
}

#[test]
fn two_appliers_conflict_until_one_forces() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let created = apply(
        &t,
        &json!({}),
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}),
        "first",
        false,
    )
    .unwrap();
    let mut live = created.clone();
    live["metadata"]["uid"] = json!("u");
    // Same values: shared ownership, no conflict.
    let shared = apply(
        &t,
        &live,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}),
        "second",
        false,
    )
    .unwrap();
    assert_eq!(
        shared["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Different values: a conflict naming the field and its owner.
    let err = apply(
        &t,
        &shared,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9", "b": "9"}}),
        "second",
        false,
    )
    .unwrap_err();
    let ApplyError::Conflicts(conflicts) = err else {
        panic!("expected conflicts");
    };
    assert_eq!(
        conflict_message(&conflicts),
        "Apply failed with 2 conflicts: conflicts with \"first\":\n- .data.a\n- .data.b"
    );
    let forced = apply(
        &t,
        &shared,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9", "b": "9"}}),
        "second",
        true,
    )
    .unwrap();
    assert_eq!(forced["data"], json!({"a": "9", "b": "9"}));
    let managed = Managed::decode(&forced["metadata"]["managedFields"]).unwrap();
    assert!(
        managed.entries().all(|e| e.manager == "second"),
        "{managed:?}"
    );
}

#[test]
fn conflicts_with_several_managers_are_grouped() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let live = json!({"metadata": {"name": "c", "uid": "u"}, "data": {"a": "1", "b": "2"}});
    let mut managed = Managed::default();
    t.update_tracked(
        &json!({}),
        &json!({"data": {"a": "1"}}),
        &mut managed,
        &writer("m1", "v1"),
    );
    t.update_tracked(
        &json!({"data": {"a": "1"}}),
        &live,
        &mut managed,
        &writer("m2", "v1"),
    );
    let err = t
        .apply(
            &live,
            &json!({"data": {"a": "x", "b": "y"}}),
            managed,
            &writer("kubectl", "v1"),
            false,
        )
        .unwrap_err();
    let ApplyError::Conflicts(conflicts) = err else {
        panic!("expected conflicts");
    };
    assert_eq!(
        conflict_message(&conflicts),
        "Apply failed with 2 conflicts: conflicts with \"m1\" using v1:\n- .data.a\nconflicts with \"m2\" using v1:\n- .data.b"
    );
}

#[test]
fn fields_an_applier_drops_are_removed_unless_someone_else_owns_them() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let first = apply(
        &t,
        &json!({}),
        &json!({"metadata": {"name": "c", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2", "c": "3"}}),
        "applier",
        false,
    )
    .unwrap();
    let mut live = first;
    live["metadata"]["uid"] = json!("u");
    // Another manager takes over "c" by updating it.
    let mut managed = incoming(&live, &live, false);
    let mut updated = live.clone();
    updated["data"]["c"] = json!("33");
    managed = t.update(&live, &updated, managed, &writer("editor", "v1"));
    let live = with_managed(updated, &managed);
    let out = apply(
        &t,
        &live,
        &json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
        "applier",
        false,
    )
    .unwrap();
    assert_eq!(out["data"], json!({"a": "1", "c": "33"}));
    assert!(out["metadata"].get("labels").is_none(), "{out}");
}

#[test]
fn kubectl_takes_over_its_client_side_fields() {
    let t = typer("io.k8s.api.apps.v1.Deployment", Scope::NotStatus);
    let config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"replicas": 2}});
    let last = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"replicas": 2}});
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "uid": "u", "annotations": {LAST_APPLIED: last.to_string()}},
        "spec": {"replicas": 2}});
    let mut managed = Managed::default();
    t.update_tracked(
        &t.zero(),
        &live,
        &mut managed,
        &writer("kubectl-client-side-apply", "apps/v1"),
    );
    let new_config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"}, "spec": {"replicas": 3}});
    // Another applier conflicts with the client-side apply's field...
    assert!(matches!(
        t.apply(
            &live,
            &new_config,
            managed.clone(),
            &writer("other", "apps/v1"),
            false
        ),
        Err(ApplyError::Conflicts(_))
    ));
    // ...but kubectl takes over what it applied client-side.
    let (obj, managed) = t
        .apply(
            &live,
            &new_config,
            managed,
            &writer("kubectl", "apps/v1"),
            false,
        )
        .unwrap();
    assert_eq!(obj["spec"]["replicas"], 3);
    assert!(fields_of(&managed, "kubectl").fields.has(&[
        Element::Field("spec".into()),
        Element::Field("replicas".into())
    ]));
    let annotation: Value = serde_json::from_str(
        obj["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(annotation["spec"]["replicas"], 3);
    let _ = config;
}

#[test]
fn status_is_not_owned_through_the_main_resource() {
    let t = typer("io.k8s.api.apps.v1.Deployment", Scope::NotStatus);
    let (_, managed) = t
        .apply(
            &json!({}),
            &json!({"spec": {"replicas": 1}, "status": {"replicas": 5}}),
            Managed::default(),
            &writer("m", "apps/v1"),
            false,
        )
        .unwrap();
    assert_eq!(
        fields_of(&managed, "m").fields.to_fields_v1(),
        json!({"f:spec": {"f:replicas": {}}})
    );
}

#[test]
fn old_update_managers_merge_into_ancient_changes() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let mut managed = Managed::default();
    let mut live = json!({"data": {}});
    for i in 0..12 {
        let mut new = live.clone();
        new["data"][format!("k{i}")] = json!("v");
        let now = format!("2026-12-07T10:00:{i:02}Z");
        let w = Writer {
            manager: &format!("m{i}"),
            api_version: "v1",
            subresource: "",
            now: &now,
        };
        t.update_tracked(&live, &new, &mut managed, &w);
        live = new;
    }
    let names: Vec<&str> = managed.entries().map(|e| e.manager.as_str()).collect();
    assert_eq!(managed.entries().count(), 10, "{names:?}");
    let ancient = fields_of(&managed, "ancient-changes");
    assert_eq!(ancient.fields.paths().len(), 3);
    assert!(!names.contains(&"m0") && !names.contains(&"m1") && !names.contains(&"m2"));
}

#[test]
fn managed_fields_sent_by_the_client_replace_or_reset_the_live_ones() {
    let live = json!({"metadata": {"managedFields": [
        {"manager": "a", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}
    ]}});
    assert_eq!(incoming(&live, &json!({}), false).entries().count(), 1);
    assert!(incoming(&live, &json!({"metadata": {"managedFields": []}}), false).is_empty());
    assert!(incoming(&live, &json!({"metadata": {"managedFields": [{}]}}), false).is_empty());
    let sent = json!({"metadata": {"managedFields": [
        {"manager": "b", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}
    ]}});
    assert_eq!(
        incoming(&live, &sent, false)
            .entries()
            .next()
            .unwrap()
            .manager,
        "b"
    );
    assert_eq!(
        incoming(&live, &sent, true)
            .entries()
            .next()
            .unwrap()
            .manager,
        "a"
    );
    assert_eq!(
        Managed::decode(&json!([{"manager": "b", "operation": "Patch", "apiVersion": "v1"}]))
            .unwrap_err(),
        "operation must be `Apply` or `Update`"
    );
}

#[test]
fn managers_come_from_user_agents() {
    assert_eq!(
        manager_from_user_agent("kubectl/v1.33.1 (linux/amd64) kubernetes/abc"),
        "kubectl"
    );
    assert_eq!(
        manager_from_user_agent("Go-http-client/1.1"),
        "Go-http-client"
    );
    assert_eq!(manager_from_user_agent(&"x".repeat(300)).len(), 128);
}

#[test]
fn a_writer_stops_owning_what_it_removes() {
    let t = typer("io.k8s.api.core.v1.ConfigMap", Scope::Whole);
    let mut managed = Managed::default();
    let a = json!({"metadata": {"labels": {"a": "1"}}, "data": {"x": "1"}});
    t.update_tracked(&json!({}), &a, &mut managed, &writer("editor", "v1"));
    let b = json!({"metadata": {}, "data": {"x": "1"}});
    t.update_tracked(&a, &b, &mut managed, &writer("editor", "v1"));
    let fields = &fields_of(&managed, "editor").fields;
    assert!(!fields.has(&[
        Element::Field("metadata".into()),
        Element::Field("labels".into()),
        Element::Field("a".into())
    ]));
    assert!(fields.has(&[Element::Field("data".into()), Element::Field("x".into())]));
}
