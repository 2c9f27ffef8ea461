//! `x-kubernetes-validations`: CEL rules on a custom resource's schema.
//!
//! [`validate`] runs them on an object as upstream's CEL validator does:
//! each rule sees its node as `self`; transition rules (those reading
//! `oldSelf`) run only on updates where the node existed before, unless
//! `optionalOldSelf` makes `oldSelf` an optional; and a node unchanged by
//! an update is not held to its rules again (ratcheting), so an object that
//! no longer passes a tightened rule can still be updated elsewhere.
//! Transition rules are not ratcheted. Failures are
//! 422 causes in upstream's words: `message`, `messageExpression`, or
//! "failed rule: <rule>", with `reason` and `fieldPath`.
//!
//! [`definition_problems`] is what a definition gets checked for at
//! creation: rules that do not compile, bad reasons, and rules whose
//! estimated cost is over upstream's budget.

use std::sync::Arc;

use serde_json::Value;

use super::cel::{self, OldSelf};
use super::schema::{child, field as shown};
use super::status::FieldError;

const REASONS: &[&str] = &[
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
];

/// Run every rule of `schema` on `obj` (`old` on an update).
pub fn validate(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    walk(schema, obj, old, "", false, &mut errs);
    errs
}

/// Walk `v` with its `schema`; `unchanged` when an ancestor is as it was.
fn walk(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    unchanged: bool,
    errs: &mut Vec<FieldError>,
) {
    // Rules do not run on null values (upstream's validator returns).
    if v.is_null() {
        return;
    }
    // Ratcheting: what an update leaves as it was is not held to rules
    // again, except transition rules, which upstream never ratchets.
    let unchanged = unchanged || old == Some(v);
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            check_rule(schema, rule, v, old, path, unchanged, errs);
        }
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child_value) in map {
                let child_schema = props.and_then(|p| p.get(key)).or(extra);
                if let Some(s) = child_schema {
                    let old_child = old.and_then(|o| o.get(key));
                    walk(
                        s,
                        child_value,
                        old_child,
                        &child(path, key),
                        unchanged,
                        errs,
                    );
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.get("items") else {
                return;
            };
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let old_items = old.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                // Items of map lists and sets correlate with the old ones
                // by key or value; atomic lists' do not.
                let old_item = match (list_type, old_items) {
                    (Some("map"), Some(olds)) => olds
                        .iter()
                        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k))),
                    (Some("set"), Some(olds)) => olds.iter().find(|o| *o == item),
                    _ => None,
                };
                walk(
                    item_schema,
                    item,
                    old_item,
                    &format!("{path}[{i}]"),
                    unchanged,
                    errs,
                );
            }
        }
        _ => {}
    }
}

fn check_rule(
    schema: &Value,
    rule: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    unchanged: bool,
    errs: &mut Vec<FieldError>,
) {
    let source = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
    let Ok(program) = cel::compile(source) else {
        // Definitions with rules that do not compile are refused; one
        // stored before cannot fail every object.
        return;
    };
    if unchanged && !cel::uses_old_self(&program) {
        return;
    }
    let optional_old = rule.get("optionalOldSelf") == Some(&Value::Bool(true));
    let binding = if cel::uses_old_self(&program) {
        match (old, optional_old) {
            (_, true) => OldSelf::Optional(old),
            (Some(o), false) => OldSelf::Some(o),
            (None, false) => return,
        }
    } else {
        OldSelf::None
    };
    let at = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(f) if !f.is_empty() => {
            let f = f.strip_prefix('.').unwrap_or(f);
            child(path, f)
        }
        _ => path.to_owned(),
    };
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let message = match cel::evaluate(&program, v, &binding, Some(schema)) {
        Ok(cel::Cel::Bool(true)) => return,
        Ok(cel::Cel::Bool(false)) => failure_message(rule, source, schema, v, &binding),
        Ok(_) => format!("rule did not evaluate to a bool: {source}"),
        Err(e) => {
            errs.push(FieldError::invalid(
                shown(&at),
                &Value::String(ty.into()),
                e,
            ));
            return;
        }
    };
    let reason = rule
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("FieldValueInvalid");
    errs.push(match reason {
        "FieldValueForbidden" => FieldError::forbidden(shown(&at), message),
        "FieldValueRequired" => FieldError {
            reason: "FieldValueRequired",
            field: shown(&at),
            message: format!("Required value: {message}"),
        },
        "FieldValueDuplicate" => FieldError::duplicate(shown(&at), &Value::String(message)),
        _ => FieldError::invalid(shown(&at), &Value::String(ty.into()), message),
    });
}

fn failure_message(
    rule: &Value,
    source: &str,
    schema: &Value,
    v: &Value,
    binding: &OldSelf,
) -> String {
    if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
        && let Ok(program) = cel::compile(expr)
        && let Ok(cel::Cel::String(s)) = cel::evaluate(&program, v, binding, Some(schema))
        && !s.trim().is_empty()
    {
        return s.to_string();
    }
    match rule.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => format!("failed rule: {source}"),
    }
}

/// What is wrong with the rules of a definition's schema at `path`: rules
/// and message expressions that do not compile, unknown reasons, and cost
/// over upstream's budget (per rule, and for the definition as a whole).
pub fn definition_problems(schema: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0.0;
    problems_at(schema, path, true, 1.0, &mut total, &mut errs);
    if total > cel::CRD_COST_LIMIT {
        errs.push(FieldError::forbidden(
            path.to_owned(),
            format!(
                "total CRD cost exceeds budget by factor of {:.1}x (try simplifying the rule(s), or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
                total / cel::CRD_COST_LIMIT
            ),
        ));
    }
    errs
}

/// What a rule or message expression (`what`) is compiled and checked
/// for: its references ([`cel::check`]; `self` and `oldSelf` are of
/// `schema`'s type, `root` for the definition's top-level schema) and,
/// where it is known, the type of its result. The error is upstream's
/// detail: "compilation failed: …", "cel expression must evaluate to a
/// bool", "messageExpression must evaluate to a string".
fn compiled(
    what: Expression,
    source: &str,
    schema: &Value,
    root: bool,
    optional_old_self: bool,
) -> Result<Arc<cel::Program>, String> {
    let failed = |e: String| match what {
        Expression::Rule => format!("compilation failed: {e}"),
        Expression::Message => format!("messageExpression compilation failed: {e}"),
    };
    let program = cel::compile(source).map_err(failed)?;
    let ty = cel::rule_type(schema, root);
    let old = if optional_old_self { cel::Ty::Dyn } else { ty };
    let result = cel::check(&program, &[("self", ty), ("oldSelf", old)]).map_err(failed)?;
    match (what, result) {
        (Expression::Rule, Some(t)) if t != "bool" => {
            Err("cel expression must evaluate to a bool".into())
        }
        (Expression::Message, Some(t)) if t != "string" => {
            Err("messageExpression must evaluate to a string".into())
        }
        _ => Ok(program),
    }
}

#[derive(Clone, Copy)]
enum Expression {
    Rule,
    Message,
}

fn problems_at(
    schema: &Value,
    path: &str,
    root: bool,
    times: f64,
    total: &mut f64,
    errs: &mut Vec<FieldError>,
) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{path}.x-kubernetes-validations[{i}]");
            let source = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            if source.trim().is_empty() {
                errs.push(FieldError::required(format!("{at}.rule")));
                continue;
            }
            let optional = rule.get("optionalOldSelf") == Some(&Value::Bool(true));
            match compiled(Expression::Rule, source, schema, root, optional) {
                Err(e) => errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: format!("{at}.rule"),
                    message: format!("Invalid value: {}: {e}", rule_struct(rule)),
                }),
                Ok(program) => {
                    if optional && !cel::uses_old_self(&program) {
                        errs.push(FieldError::invalid(
                            format!("{at}.optionalOldSelf"),
                            &Value::Bool(true),
                            "may not be set if rule does not use oldSelf",
                        ));
                    }
                    let cost = cel::estimated_cost(source, schema);
                    if cost > cel::RULE_COST_LIMIT {
                        errs.push(FieldError::forbidden(
                            format!("{at}.rule"),
                            cel::over_budget(cost, cel::RULE_COST_LIMIT),
                        ));
                    }
                    *total += cost * times;
                }
            }
            if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str)
                && let Err(e) = compiled(Expression::Message, expr, schema, root, optional)
            {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: format!("{at}.messageExpression"),
                    message: format!("Invalid value: {}: {e}", rule_struct(rule)),
                });
            }
            if let Some(reason) = rule.get("reason").and_then(Value::as_str)
                && !REASONS.contains(&reason)
            {
                errs.push(FieldError::not_supported(
                    format!("{at}.reason"),
                    &Value::String(reason.into()),
                    REASONS,
                ));
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, s) in props {
            problems_at(
                s,
                &format!("{path}.properties[{key}]"),
                false,
                times,
                total,
                errs,
            );
        }
    }
    if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        let n = schema
            .get("maxProperties")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        problems_at(
            s,
            &format!("{path}.additionalProperties"),
            false,
            times * n,
            total,
            errs,
        );
    }
    if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
        let n = schema
            .get("maxItems")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        problems_at(s, &format!("{path}.items"), false, times * n, total, errs);
    }
}

/// A rule as upstream prints it in these errors (Go's `%#v`).
fn rule_struct(rule: &Value) -> String {
    let s = |k: &str| {
        serde_json::to_string(rule.get(k).and_then(Value::as_str).unwrap_or_default())
            .unwrap_or_default()
    };
    let reason = match rule.get("reason").and_then(Value::as_str) {
        Some(r) => format!("(*apiextensions.FieldValueErrorReason)({r:?})"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".into(),
    };
    let optional = match rule.get("optionalOldSelf").and_then(Value::as_bool) {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".into(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{reason}, FieldPath:{}, OptionalOldSelf:{optional}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.replicas", "message": "replicas must be at least minReplicas"},
                {"rule": "self.replicas <= 10", "messageExpression": "'replicas ' + string(self.replicas) + ' is over 10'", "reason": "FieldValueForbidden", "fieldPath": ".replicas"},
                {"rule": "self.name == oldSelf.name"},
            ],
            "properties": {
                "replicas": {"type": "integer"},
                "minReplicas": {"type": "integer"},
                "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() > 0"}]},
            },
        }}})
    }

    #[test]
    fn failing_rules_are_reported_as_upstream_reports_them() {
        let obj = json!({"spec": {"replicas": 11, "minReplicas": 12, "name": "a"}});
        let errs: Vec<String> = validate(&schema(), &obj, None)
            .iter()
            .map(FieldError::display)
            .collect();
        assert_eq!(
            errs,
            [
                "spec: Invalid value: \"object\": replicas must be at least minReplicas",
                "spec.replicas: Forbidden: replicas 11 is over 10",
            ]
        );
    }

    #[test]
    fn transition_rules_run_on_updates_and_unchanged_nodes_ratchet() {
        let old = json!({"spec": {"replicas": 1, "minReplicas": 0, "name": "a"}});
        let renamed = json!({"spec": {"replicas": 1, "minReplicas": 0, "name": "b"}});
        let errs: Vec<String> = validate(&schema(), &renamed, Some(&old))
            .iter()
            .map(FieldError::display)
            .collect();
        assert_eq!(
            errs,
            ["spec: Invalid value: \"object\": failed rule: self.name == oldSelf.name"]
        );
        // An unchanged object passes even if a rule would fail it now.
        let bad = json!({"spec": {"replicas": 1, "minReplicas": 5, "name": "a"}});
        assert!(validate(&schema(), &bad, Some(&bad)).is_empty());
        // Transition rules are never ratcheted: they run on unchanged
        // nodes too, and a rule that fails on equal values fails.
        let growing = json!({"type": "object", "properties": {"size": {"type": "integer",
            "x-kubernetes-validations": [{"rule": "self > oldSelf", "message": "must grow"}]}}});
        let same = json!({"size": 3});
        let errs: Vec<String> = validate(&growing, &same, Some(&same))
            .iter()
            .map(FieldError::display)
            .collect();
        assert_eq!(errs, ["size: Invalid value: \"integer\": must grow"]);
    }

    #[test]
    fn numbers_are_doubles_where_the_schema_says_number() {
        let ratio = json!({"type": "object", "properties": {"ratio": {"type": "number",
            "x-kubernetes-validations": [{"rule": "self == 1.0 && type(self) == double && self > 0 && self == 1"}]}}});
        assert!(validate(&ratio, &json!({"ratio": 1}), None).is_empty());
    }

    #[test]
    fn definitions_with_bad_or_costly_rules_are_refused() {
        let bad = json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.a +"},
            {"rule": "true", "reason": "Nope"},
        ], "properties": {"tags": {"type": "array", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(t, t.matches('^[a-z]+$'))"}]}}});
        let errs = definition_problems(&bad, "spec.validation.openAPIV3Schema");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.validation.openAPIV3Schema.x-kubernetes-validations[0].rule",
                "spec.validation.openAPIV3Schema.x-kubernetes-validations[1].reason",
                "spec.validation.openAPIV3Schema.properties[tags].x-kubernetes-validations[0].rule",
                // and the definition as a whole, over its budget too
                "spec.validation.openAPIV3Schema",
            ]
        );
        assert!(
            errs[0].message.contains("compilation failed"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[2]
                .message
                .starts_with("Forbidden: estimated rule cost exceeds budget by factor of"),
            "{}",
            errs[2].message
        );
    }

    #[test]
    fn rules_must_be_bool_and_messages_strings_where_known() {
        let schema = json!({"type": "object", "properties": {
        "replicas": {"type": "integer"}, "enabled": {"type": "boolean"},
        "name": {"type": "string"}},
        "x-kubernetes-validations": [
            {"rule": "self.replicas", "message": "m"},
            {"rule": "'yes'"},
            {"rule": "self.enabled", "messageExpression": "self.replicas"},
            {"rule": "has(self.name) && self.enabled",
                "messageExpression": "'name ' + self.name"},
            {"rule": "size(self.name)"},
            {"rule": "self.replicas > 1 ? true : false", "messageExpression": "self.name"},
        ]});
        let errs = definition_problems(&schema, "spec.validation.openAPIV3Schema");
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.field.as_str(), e.message.rsplit(": ").next().unwrap()))
            .collect();
        let p = "spec.validation.openAPIV3Schema.x-kubernetes-validations";
        assert_eq!(
            got,
            [
                (
                    &*format!("{p}[0].rule"),
                    "cel expression must evaluate to a bool"
                ),
                (
                    &*format!("{p}[1].rule"),
                    "cel expression must evaluate to a bool"
                ),
                (
                    &*format!("{p}[2].messageExpression"),
                    "messageExpression must evaluate to a string"
                ),
                (
                    &*format!("{p}[4].rule"),
                    "cel expression must evaluate to a bool"
                ),
            ]
        );
    }
}
