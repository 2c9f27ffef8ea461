//! The strategy table: every catalog kind has its strategy, and the generic
//! fallback behaves as a kind without particulars.

use serde_json::json;

use crate::api::catalog::{Catalog, Resource};
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
