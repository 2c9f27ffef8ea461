//! The strategy table: every catalog kind has its strategy, the generic
//! fallback behaves as a kind without particulars, and the
//! ReplicationController's defaulting and validation follow upstream.

use serde_json::{Value, json};

use crate::api::catalog::{Catalog, Resource};
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::validation::NameRule;
use crate::server::registry::strategy::{self, GenericStrategy, Strategy};

#[test]
fn every_catalog_kind_has_a_strategy_of_its_own() {
    let catalog = Catalog::builtin();
    for res in catalog.resources() {
        // Review kinds are answered by handlers, never stored.
        if !res.allows("get") {
            continue;
        }
        assert!(
            strategy::has_own(&res.group, &res.kind),
            "{}/{} has no strategy",
            res.group,
            res.kind
        );
    }
    let rc = catalog.find("", "v1", "replicationcontrollers").unwrap();
    assert_eq!(strategy::of(rc).printer(), Printer::ReplicationController);
}

fn generic_resource() -> Resource {
    let mut res = Catalog::builtin()
        .find("", "v1", "configmaps")
        .unwrap()
        .clone();
    res.group = "example.com".into();
    res.kind = "Widget".into();
    res.plural = "widgets".into();
    res
}

#[test]
fn a_kind_without_a_strategy_takes_the_generic_paths() {
    let res = generic_resource();
    assert!(!strategy::has_own(&res.group, &res.kind));
    let s = strategy::of(&res);
    let obj = json!({"metadata": {"name": "w"}, "spec": {"x": 1}, "status": {"y": 2}});
    assert!(s.round_trip(&obj).is_none(), "no typed schema");
    assert_eq!(s.name_rule(), NameRule::Subdomain);
    assert!(!s.tracks_generation());
    assert_eq!(s.grace_period(&obj, Some(30)), None);
    assert!(!s.deletion_pending(&obj));
    let mut defaulted = obj.clone();
    s.defaults(&mut defaulted);
    assert_eq!(defaulted, obj);
    let mut errs = Vec::new();
    s.validate(&obj, &mut errs);
    assert!(errs.is_empty());
    // A status subresource splits status from the rest.
    let mut with_status = res.clone();
    with_status.subresources.push(
        Catalog::builtin()
            .find("apps", "v1", "deployments")
            .unwrap()
            .subresource("status")
            .unwrap()
            .clone(),
    );
    let mut written = json!({"metadata": {"name": "w"}, "spec": {"x": 2}, "status": {"y": 9}});
    s.reset_status(&with_status, &obj, &mut written);
    assert_eq!(written["status"], json!({"y": 2}));
    assert_eq!(
        s.status_update(&obj, json!({"status": {"y": 3}}))["spec"],
        json!({"x": 1})
    );
    // Rows: name and creation time.
    let cols = s.column_definitions();
    assert_eq!(cols.as_array().unwrap().len(), 2);
    assert_eq!(s.cells(&obj, jiff::Timestamp::now()).len(), 2);
    // A strategy built from data is a trait object like any other.
    let built: Box<dyn Strategy> = Box::new(GenericStrategy::with_printer(Printer::ConfigMap));
    assert_eq!(built.printer(), Printer::ConfigMap);
}

fn rc() -> std::sync::Arc<dyn Strategy> {
    let catalog = Catalog::builtin();
    strategy::of(catalog.find("", "v1", "replicationcontrollers").unwrap())
}

#[test]
fn replication_controller_defaults_follow_upstream() {
    struct Case {
        name: &'static str,
        input: Value,
        selector: Value,
        labels: Value,
        replicas: Value,
    }
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    for case in [
        Case {
            name: "selector and labels from the template, one replica",
            input: json!({"metadata": {"name": "web"}, "spec": {"template": template}}),
            selector: json!({"app": "web"}),
            labels: json!({"app": "web"}),
            replicas: json!(1),
        },
        Case {
            name: "a given selector and labels stay",
            input: json!({"metadata": {"name": "web", "labels": {"team": "a"}}, "spec": {"replicas": 0, "selector": {"app": "web"}, "template": {"metadata": {"labels": {"app": "web", "v": "2"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            selector: json!({"app": "web"}),
            labels: json!({"team": "a"}),
            replicas: json!(0),
        },
        Case {
            name: "empty selector and labels are defaulted too",
            input: json!({"metadata": {"name": "web", "labels": {}}, "spec": {"selector": {}, "template": template}}),
            selector: json!({"app": "web"}),
            labels: json!({"app": "web"}),
            replicas: json!(1),
        },
        Case {
            name: "no template: nothing to default from",
            input: json!({"metadata": {"name": "web"}, "spec": {}}),
            selector: Value::Null,
            labels: Value::Null,
            replicas: json!(1),
        },
    ] {
        let mut obj = case.input.clone();
        rc().defaults(&mut obj);
        assert_eq!(obj["spec"]["selector"], case.selector, "{}", case.name);
        assert_eq!(obj["metadata"]["labels"], case.labels, "{}", case.name);
        assert_eq!(obj["spec"]["replicas"], case.replicas, "{}", case.name);
        if case.input["spec"].get("template").is_some() {
            assert_eq!(
                obj["spec"]["template"]["spec"]["restartPolicy"], "Always",
                "{}: the pod template gets pod defaults",
                case.name
            );
        } else {
            assert!(obj["spec"].get("template").is_none(), "{}", case.name);
        }
    }
}

#[test]
fn replication_controller_validation_uses_upstream_paths_and_messages() {
    let containers = json!([{"name": "c", "image": "i"}]);
    /// A case's name, the object, and the (field, message) pairs expected.
    type Case = (&'static str, Value, Vec<(&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "valid",
            json!({"spec": {"replicas": 2, "selector": {"app": "web"}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "Always", "containers": containers}}}}),
            vec![],
        ),
        (
            "template labels must match the selector",
            json!({"spec": {"selector": {"app": "web"}, "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"restartPolicy": "Always", "containers": containers}}}}),
            vec![(
                "spec.template.metadata.labels",
                "Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`",
            )],
        ),
        (
            "selector required",
            json!({"spec": {"template": {"metadata": {}, "spec": {"restartPolicy": "Always", "containers": containers}}}}),
            vec![("spec.selector", "Required value")],
        ),
        (
            "template required",
            json!({"spec": {"replicas": 0, "selector": {"app": "web"}}}),
            vec![("spec.template", "Required value")],
        ),
        (
            "restart policy Always only",
            json!({"spec": {"selector": {"app": "web"}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "OnFailure", "containers": containers}}}}),
            vec![(
                "spec.template.spec.restartPolicy",
                "Unsupported value: \"OnFailure\": supported values: \"Always\"",
            )],
        ),
        (
            "no negative counts, no deadline",
            json!({"spec": {"replicas": -1, "minReadySeconds": -2, "selector": {"app": "web"}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"restartPolicy": "Always", "activeDeadlineSeconds": 5, "containers": containers}}}}),
            vec![
                (
                    "spec.minReadySeconds",
                    "Invalid value: -2: must be greater than or equal to 0",
                ),
                (
                    "spec.replicas",
                    "Invalid value: -1: must be greater than or equal to 0",
                ),
                (
                    "spec.template.spec.activeDeadlineSeconds",
                    "Forbidden: activeDeadlineSeconds in ReplicationController is not Supported",
                ),
            ],
        ),
    ];
    for (name, obj, want) in cases {
        let mut errs: Vec<FieldError> = Vec::new();
        rc().validate(&obj, &mut errs);
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.field.clone(), e.message.clone()))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn secret_string_data_counts_toward_the_one_mib_limit() {
    use base64::Engine as _;
    let catalog = Catalog::builtin();
    let secret = strategy::of(catalog.find("", "v1", "secrets").unwrap());
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n]);
    let fields = |obj: Value| {
        let mut obj = obj;
        secret.defaults(&mut obj);
        let mut errs: Vec<FieldError> = Vec::new();
        secret.validate(&obj, &mut errs);
        errs.into_iter().map(|e| e.field).collect::<Vec<_>>()
    };
    let full = 1024 * 1024;
    assert!(fields(json!({"data": {"a": b64(full)}})).is_empty());
    assert_eq!(
        fields(json!({"data": {"a": b64(full)}, "stringData": {"b": "x"}})),
        ["data"],
        "stringData is folded into data before the count"
    );
    assert!(
        fields(json!({"data": {"a": b64(full)}, "stringData": {"a": "x"}})).is_empty(),
        "a stringData key replaces the data key of that name"
    );
    let config_map = strategy::of(catalog.find("", "v1", "configmaps").unwrap());
    let mut errs = Vec::new();
    config_map.validate(&json!({"data": {"a": "x".repeat(full + 1)}}), &mut errs);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "[]");
}
