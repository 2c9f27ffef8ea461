//! rbac.authorization.k8s.io/v1: the shapes, defaults and validation of
//! Role, ClusterRole, RoleBinding and ClusterRoleBinding, as upstream's
//! `pkg/apis/rbac` has them (field paths and messages included).

use serde_json::{Value, json};

use crate::api::selector::LabelSelector;
use crate::api::status::FieldError;
use crate::api::validation::{NameRule, check_name};

/// The API group, and the `apiGroup` of User and Group subjects and of
/// every `roleRef`.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// `obj` with the fields the typed schema requires filled in empty where
/// missing, so that a body without them reaches validation (422 naming
/// each field, as upstream, whose decoder leaves them zero) instead of
/// failing to decode. RBAC objects are small; the copy costs little.
pub fn fill_required(obj: &Value) -> Value {
    let mut obj = obj.clone();
    for rule in array_mut(&mut obj, "rules") {
        if let Some(r) = rule.as_object_mut() {
            r.entry("verbs").or_insert_with(|| json!([]));
        }
    }
    for subject in array_mut(&mut obj, "subjects") {
        if let Some(s) = subject.as_object_mut() {
            s.entry("kind").or_insert_with(|| json!(""));
            s.entry("name").or_insert_with(|| json!(""));
        }
    }
    let binding = obj
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("Binding"));
    if binding {
        if !obj.get("roleRef").is_some_and(Value::is_object) {
            obj["roleRef"] = json!({});
        }
        if let Some(r) = obj["roleRef"].as_object_mut() {
            for key in ["apiGroup", "kind", "name"] {
                r.entry(key).or_insert_with(|| json!(""));
            }
        }
    }
    obj
}

fn array_mut<'v>(obj: &'v mut Value, key: &str) -> impl Iterator<Item = &'v mut Value> {
    obj.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// Defaults of a RoleBinding or ClusterRoleBinding: `roleRef.apiGroup`,
/// and each subject's `apiGroup` by its kind.
pub fn binding_defaults(obj: &mut Value) {
    if let Some(r) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        && r.get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
    {
        r.insert("apiGroup".into(), json!(GROUP));
    }
    for subject in array_mut(obj, "subjects") {
        let Some(s) = subject.as_object_mut() else {
            continue;
        };
        if !s
            .get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            continue;
        }
        match s.get("kind").and_then(Value::as_str) {
            Some("User" | "Group") => {
                s.insert("apiGroup".into(), json!(GROUP));
            }
            // Defaulted to "", which upstream's JSON leaves out.
            Some("ServiceAccount") => {
                s.remove("apiGroup");
            }
            _ => {}
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Go's `%#v` of a `[]string`, as upstream's messages show one.
fn go_strings(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn required(field: String, detail: &str) -> FieldError {
    let mut err = FieldError::required(field);
    if !detail.is_empty() {
        err.message = format!("Required value: {detail}");
    }
    err
}

/// The rules of a Role (`namespaced`) or ClusterRole.
pub fn validate_rules(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = format!("rules[{i}]");
        if strings(rule.get("verbs")).is_empty() {
            errs.push(required(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strings(rule.get("nonResourceURLs"));
        if !urls.is_empty() {
            let invalid = |detail: &str| FieldError {
                reason: "FieldValueInvalid",
                field: format!("{path}.nonResourceURLs"),
                message: format!("Invalid value: {}: {detail}", go_strings(&urls)),
            };
            if namespaced {
                errs.push(invalid(
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !strings(rule.get(*k)).is_empty())
            {
                errs.push(invalid(
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if strings(rule.get("apiGroups")).is_empty() {
            errs.push(required(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if strings(rule.get("resources")).is_empty() {
            errs.push(required(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A ClusterRole's `aggregationRule`.
pub fn validate_aggregation(obj: &Value, errs: &mut Vec<FieldError>) {
    let Some(rule) = obj.get("aggregationRule").filter(|r| !r.is_null()) else {
        return;
    };
    let selectors = rule
        .get("clusterRoleSelectors")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if selectors.is_empty() {
        errs.push(required(
            "aggregationRule.clusterRoleSelectors".into(),
            "at least one clusterRoleSelector required if aggregationRule is non-nil",
        ));
    }
    for (i, selector) in selectors.iter().enumerate() {
        if LabelSelector::from_label_selector(selector).is_err() {
            errs.push(FieldError::invalid(
                format!("aggregationRule.clusterRoleSelectors[{i}]"),
                selector,
                "invalid label selector.",
            ));
        }
    }
}

/// A RoleBinding's (`namespaced`) or ClusterRoleBinding's roleRef and
/// subjects, after [`binding_defaults`].
pub fn validate_binding(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    let field = |k: &str| role_ref.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("apiGroup") != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &json!(field("apiGroup")),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&field("kind")) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &json!(field("kind")),
            kinds,
        ));
    }
    match field("name") {
        "" => errs.push(FieldError::required("roleRef.name")),
        name => {
            if let Some(msg) = check_name(NameRule::PathSegment, name) {
                errs.push(FieldError::invalid("roleRef.name", &json!(name), msg));
            }
        }
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, subject) in subjects.into_iter().flatten().enumerate() {
        validate_subject(subject, namespaced, &format!("subjects[{i}]"), errs);
    }
}

fn validate_subject(subject: &Value, namespaced: bool, path: &str, errs: &mut Vec<FieldError>) {
    let field = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
    let name = field("name");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name")));
    }
    match field("kind") {
        "ServiceAccount" => {
            if !name.is_empty()
                && let Some(msg) = check_name(NameRule::Subdomain, name)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.name"),
                    &json!(name),
                    msg,
                ));
            }
            if !field("apiGroup").is_empty() {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    &json!(field("apiGroup")),
                    &[""],
                ));
            }
            if !namespaced && field("namespace").is_empty() {
                errs.push(FieldError::required(format!("{path}.namespace")));
            }
        }
        "User" | "Group" => {
            if field("apiGroup") != GROUP {
                errs.push(FieldError::not_supported(
                    format!("{path}.apiGroup"),
                    &json!(field("apiGroup")),
                    &[GROUP],
                ));
            }
        }
        kind => errs.push(FieldError::not_supported(
            format!("{path}.kind"),
            &json!(kind),
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// A binding's roleRef is fixed once made: to point it elsewhere, delete
/// and recreate the binding (`kubectl auth reconcile` does).
pub fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let (old_ref, new_ref) = (old.get("roleRef"), new.get("roleRef"));
    if old_ref != new_ref {
        let field = |k: &str| {
            new_ref
                .and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "roleRef".into(),
            message: format!(
                "Invalid value: rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}: cannot change roleRef",
                field("apiGroup"),
                field("kind"),
                field("name")
            ),
        });
    }
}

/// One PolicyRule, as the authorizer reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

impl Rule {
    /// A rule from its JSON (a Role's or ClusterRole's `rules[i]`).
    pub fn from_value(rule: &Value) -> Self {
        let owned = |k: &str| {
            strings(rule.get(k))
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        Self {
            verbs: owned("verbs"),
            api_groups: owned("apiGroups"),
            resources: owned("resources"),
            resource_names: owned("resourceNames"),
            non_resource_urls: owned("nonResourceURLs"),
        }
    }

    /// Whether the rule allows `verb` on a resource (upstream's RuleAllows):
    /// `*` matches any verb, group or resource (subresources included);
    /// `pods` does not match `pods/log`; `*/scale` matches any resource's
    /// `scale`; with resourceNames, only requests naming one of them.
    pub fn allows_resource(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> bool {
        let combined = if subresource.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{subresource}")
        };
        let any = |list: &[String], want: &str| list.iter().any(|v| v == "*" || v == want);
        any(&self.verbs, verb)
            && any(&self.api_groups, group)
            && self.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
            })
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name))
    }

    /// Whether the rule allows `verb` on a non-resource `path`: `*`, the
    /// path itself, or a prefix ending in `*` (`/api/*` matches `/api/v1`
    /// but not `/api`).
    pub fn allows_path(&self, verb: &str, path: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
            && self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            })
    }
}

/// The parts of `servant` that `owner` does not cover, each as a rule of
/// one verb on one group's resource (and name) or on one URL: empty when
/// `owner` grants everything `servant` does (upstream's `Covers`, used to
/// stop privilege escalation and to reconcile the bootstrap policy).
pub fn uncovered(owner: &[Rule], servant: &[Rule]) -> Vec<Rule> {
    servant
        .iter()
        .flat_map(Rule::breakdown)
        .filter(|sub| !owner.iter().any(|o| o.covers(sub)))
        .collect()
}

/// Upstream's refusal of a grant beyond the granter's own rights
/// (`ConfirmNoEscalation`): the rules not held, compacted (one rule per
/// group, resource and name, with every verb), each as upstream's
/// `CompactString`, sorted, one per line.
pub fn escalation_message(
    user: &str,
    groups: &[String],
    missing: &[Rule],
    errors: &[String],
) -> String {
    let mut compact: Vec<Rule> = Vec::new();
    let mut simple: Vec<Rule> = Vec::new();
    for rule in missing {
        let is_simple = rule.api_groups.len() == 1
            && rule.resources.len() == 1
            && rule.resource_names.len() <= 1
            && rule.non_resource_urls.is_empty()
            && !rule.verbs.is_empty();
        if !is_simple {
            compact.push(rule.clone());
            continue;
        }
        match simple.iter_mut().find(|s| {
            s.api_groups == rule.api_groups
                && s.resources == rule.resources
                && s.resource_names == rule.resource_names
        }) {
            Some(s) => s.verbs.extend(rule.verbs.iter().cloned()),
            None => simple.push(rule.clone()),
        }
    }
    compact.extend(simple);
    let mut lines: Vec<String> = compact.iter().map(Rule::compact_string).collect();
    lines.sort();
    lines.dedup();
    let mut message = format!(
        "user {user:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quoted(groups),
        lines.join("\n")
    );
    if !errors.is_empty() {
        message.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
    }
    message
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// The rules of a Role or ClusterRole (its `rules`, none when absent).
pub fn rules_of(obj: &Value) -> Vec<Rule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(Rule::from_value)
        .collect()
}

impl Rule {
    /// Upstream's `CompactString`: `{APIGroups:["apps"],
    /// Resources:["deployments"], Verbs:["get" "list"]}`, leaving out
    /// empty lists.
    pub fn compact_string(&self) -> String {
        let parts: Vec<String> = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(name, list)| format!("{name}:{}", go_quoted(list)))
        .collect();
        format!("{{{}}}", parts.join(", "))
    }

    /// The rule as JSON, leaving out empty lists but `verbs`.
    pub fn to_value(&self) -> Value {
        let mut out = json!({"verbs": self.verbs});
        for (key, list) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !list.is_empty() {
                out[key] = json!(list);
            }
        }
        out
    }

    /// The rule as rules of one verb each on one group's resource (one per
    /// resource name, if named) and on one URL (upstream's
    /// `BreakdownRule`).
    pub fn breakdown(&self) -> Vec<Rule> {
        let one = |v: &String| vec![v.clone()];
        let mut out = Vec::new();
        for group in &self.api_groups {
            for resource in &self.resources {
                for verb in &self.verbs {
                    if self.resource_names.is_empty() {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            ..Rule::default()
                        });
                    }
                    for name in &self.resource_names {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names: one(name),
                            ..Rule::default()
                        });
                    }
                }
            }
        }
        for url in &self.non_resource_urls {
            for verb in &self.verbs {
                out.push(Rule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..Rule::default()
                });
            }
        }
        out
    }

    /// Does this rule grant everything `sub` does (upstream's
    /// `ruleCovers`)? `*` covers any verb, group or resource, `*/x` any
    /// resource's `x`, a URL ending in `*` the paths under it; a rule
    /// limited to names covers only rules limited to some of them.
    pub fn covers(&self, sub: &Rule) -> bool {
        let has = |set: &[String], v: &str| set.iter().any(|s| s == v);
        let has_all = |set: &[String], want: &[String]| want.iter().all(|w| has(set, w));
        let verbs = has(&self.verbs, "*") || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.api_groups, "*") || has_all(&self.api_groups, &sub.api_groups);
        let resources = has(&self.resources, "*")
            || sub.resources.iter().all(|r| {
                has(&self.resources, r)
                    || r.split_once('/')
                        .is_some_and(|(_, sub)| has(&self.resources, &format!("*/{sub}")))
            });
        let urls = sub.non_resource_urls.iter().all(|path| {
            self.non_resource_urls.iter().any(|owner| {
                owner == path
                    || owner
                        .strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
            })
        });
        let names = if sub.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty() || has_all(&self.resource_names, &sub.resource_names)
        };
        verbs && groups && resources && urls && names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: impl Fn(&mut Vec<FieldError>)) -> Vec<String> {
        let mut errs = Vec::new();
        f(&mut errs);
        errs.iter().map(FieldError::display).collect()
    }

    #[test]
    fn rules_are_checked_as_upstream_checks_them() {
        let role = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"verbs": []},
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            {"nonResourceURLs": ["/a", "/b"], "resources": ["pods"], "verbs": ["get"]},
        ]});
        assert_eq!(
            errors(|e| validate_rules(&role, true, e)),
            [
                "rules[1].verbs: Required value: verbs must contain at least one value",
                "rules[1].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[1].resources: Required value: resource rules must supply at least one resource",
                "rules[2].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[3].nonResourceURLs: Invalid value: []string{\"/a\", \"/b\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[3].nonResourceURLs: Invalid value: []string{\"/a\", \"/b\"}: rules cannot apply to both regular resources and non-resource URLs",
            ]
        );
        let cluster_role = json!({"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
        assert!(errors(|e| validate_rules(&cluster_role, false, e)).is_empty());
        let aggregated = json!({"aggregationRule": {"clusterRoleSelectors": []}});
        assert_eq!(
            errors(|e| validate_aggregation(&aggregated, e)),
            [
                "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil"
            ]
        );
    }

    #[test]
    fn bindings_get_defaults_then_their_ref_and_subjects_checked() {
        let mut binding = json!({
            "kind": "ClusterRoleBinding",
            "roleRef": {"kind": "Role", "name": "a/b"},
            "subjects": [
                {"kind": "User", "name": "jane"},
                {"kind": "ServiceAccount", "name": "Bad_Name"},
                {"kind": "Robot", "name": "r2"},
                {"kind": "Group", "name": "", "apiGroup": "example.com"},
            ],
        });
        binding_defaults(&mut binding);
        assert_eq!(binding["roleRef"]["apiGroup"], GROUP);
        assert_eq!(binding["subjects"][0]["apiGroup"], GROUP);
        assert!(binding["subjects"][1].get("apiGroup").is_none());
        let got = errors(|e| validate_binding(&binding, false, e));
        assert_eq!(
            got[0],
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""
        );
        assert_eq!(
            got[1],
            "roleRef.name: Invalid value: \"a/b\": may not contain '/'"
        );
        assert!(
            got[2].starts_with(
                "subjects[1].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
            ),
            "{}",
            got[2]
        );
        assert_eq!(got[3], "subjects[1].namespace: Required value");
        assert_eq!(
            got[4],
            "subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\""
        );
        assert_eq!(got[5], "subjects[3].name: Required value");
        assert_eq!(
            got[6],
            "subjects[3].apiGroup: Unsupported value: \"example.com\": supported values: \"rbac.authorization.k8s.io\""
        );
        assert_eq!(got.len(), 7, "{got:?}");
    }

    #[test]
    fn a_binding_keeps_its_role_ref() {
        let old = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"}});
        let new = json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "edit"}});
        assert_eq!(
            errors(|e| validate_binding_update(&old, &new, e)),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
            ]
        );
        assert!(errors(|e| validate_binding_update(&old, &old, e)).is_empty());
    }

    #[test]
    fn bodies_missing_required_fields_still_decode() {
        let binding = json!({"kind": "RoleBinding", "metadata": {"name": "b"}, "subjects": [{"kind": "User"}]});
        let filled = fill_required(&binding);
        assert_eq!(
            filled["roleRef"],
            json!({"apiGroup": "", "kind": "", "name": ""})
        );
        assert_eq!(filled["subjects"][0]["name"], "");
        let role = json!({"kind": "Role", "rules": [{"apiGroups": [""]}]});
        assert_eq!(fill_required(&role)["rules"][0]["verbs"], json!([]));
        let complete = json!({"kind": "Role", "rules": [{"verbs": ["get"]}]});
        assert_eq!(fill_required(&complete), complete);
    }

    #[test]
    fn rules_match_as_upstreams_evaluation_helpers() {
        let rule = |v: Value| Rule::from_value(&v);
        let pods =
            rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(pods.allows_resource("get", "", "pods", "", "web"));
        assert!(pods.allows_resource("list", "", "pods", "", ""));
        assert!(
            !pods.allows_resource("GET", "", "pods", "", "web"),
            "verbs are case-sensitive"
        );
        assert!(!pods.allows_resource("watch", "", "pods", "", ""));
        assert!(!pods.allows_resource("get", "apps", "pods", "", ""));
        assert!(
            !pods.allows_resource("get", "", "pods", "log", "web"),
            "pods is not pods/log"
        );
        let logs = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}));
        assert!(logs.allows_resource("get", "", "pods", "log", "web"));
        assert!(!logs.allows_resource("get", "", "pods", "", "web"));
        let scale = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(scale.allows_resource("update", "apps", "deployments", "scale", "d"));
        assert!(!scale.allows_resource("update", "apps", "deployments", "", "d"));
        assert!(!scale.allows_resource("update", "apps", "deployments", "status", "d"));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(star.allows_resource("delete", "batch", "jobs", "status", "j"));
        let not_wild = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/*"]}));
        assert!(
            !not_wild.allows_resource("get", "", "pods", "log", "p"),
            "pods/* is literal"
        );
        let named = rule(
            json!({"verbs": ["get", "list", "create"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
        );
        assert!(named.allows_resource("get", "", "configmaps", "", "a"));
        assert!(!named.allows_resource("get", "", "configmaps", "", "b"));
        assert!(!named.allows_resource("list", "", "configmaps", "", ""));
        assert!(!named.allows_resource("create", "", "configmaps", "", ""));
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]}));
        assert!(urls.allows_path("get", "/healthz"));
        assert!(!urls.allows_path("get", "/healthz/ping"));
        assert!(urls.allows_path("get", "/api/v1"));
        assert!(!urls.allows_path("get", "/api"));
        assert!(!urls.allows_path("post", "/healthz"));
        assert!(!pods.allows_path("get", "/healthz"));
        assert!(rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})).allows_path("put", "/x"));
    }

    fn rule(v: Value) -> Rule {
        Rule::from_value(&v)
    }

    #[test]
    fn coverage_is_upstream_s() {
        let owner = [
            rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/scale"]}),
            ),
            rule(
                json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"]}),
            ),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/api/*", "/healthz"]})),
        ];
        let covered = [
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
            json!({"verbs": ["list", "get"], "apiGroups": [""], "resources": ["pods", "replicationcontrollers/scale"]}),
            json!({"verbs": ["delete"], "apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"]}),
            json!({"verbs": ["get"], "nonResourceURLs": ["/api/v1", "/healthz", "/api/"]}),
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a", "b"]}),
        ];
        for c in covered {
            assert_eq!(uncovered(&owner, &[rule(c.clone())]), vec![], "{c}");
        }
        let not = [
            (
                json!({"verbs": ["watch"], "apiGroups": [""], "resources": ["pods"]}),
                1,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
                1,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments"]}),
                1,
            ),
            (
                json!({"verbs": ["get"], "apiGroups": ["", "apps"], "resources": ["pods", "secrets"]}),
                3,
            ),
            (
                json!({"verbs": ["get"], "nonResourceURLs": ["/api", "/metrics"]}),
                2,
            ),
            (
                json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
                1,
            ),
        ];
        for (c, n) in not {
            assert_eq!(uncovered(&owner, &[rule(c.clone())]).len(), n, "{c}");
        }
        let star = [
            rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})),
            rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
        ];
        assert!(uncovered(&star, &owner).is_empty());
    }

    #[test]
    fn escalation_refusals_read_as_upstream_s() {
        let owner = [rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        let asked = [
            rule(
                json!({"verbs": ["get", "list", "delete"], "apiGroups": ["", "apps"], "resources": ["pods"]}),
            ),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]})),
        ];
        let missing = uncovered(&owner, &asked);
        let groups = vec!["devs".to_owned(), "system:authenticated".to_owned()];
        assert_eq!(
            escalation_message("bob", &groups, &missing, &[]),
            "user \"bob\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"list\" \"delete\"]}\n\
             {APIGroups:[\"apps\"], Resources:[\"pods\"], Verbs:[\"get\" \"list\" \"delete\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
        );
        let errors = ["clusterrole.rbac.authorization.k8s.io \"x\" not found".to_owned()];
        assert!(
            escalation_message("bob", &groups, &missing, &errors).ends_with(
                "; resolution errors: [clusterrole.rbac.authorization.k8s.io \"x\" not found]"
            )
        );
    }
}
