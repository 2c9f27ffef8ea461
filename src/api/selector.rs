//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`,
//! `a`, `!a`, joined by commas. Field selectors: `f=v`, `f==v`, `f!=v`,
//! joined by commas, with `\` escaping `,`, `=`, `!` and `\` in values; which
//! fields a resource supports is listed per kind.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    /// Sorted, for `in`/`notin`; one value for `=`/`!=`; empty otherwise.
    pub values: Vec<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::Equals | Op::In => value.is_some_and(|v| self.values.contains(v)),
            Op::NotEquals | Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Op::Equals => write!(f, "{}={}", self.key, self.values[0]),
            Op::NotEquals => write!(f, "{}!={}", self.key, self.values[0]),
            Op::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Op::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct Error(pub String);

impl LabelSelector {
    /// Parse the `labelSelector` query parameter.
    ///
    /// # Errors
    /// A message saying which requirement is malformed.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(Error(format!("empty requirement in {input:?}")));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Match against an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&labels_of(obj))
    }

    /// The selector of a `metav1.LabelSelector` (`matchLabels` and
    /// `matchExpressions`), as controllers and kubectl use it.
    ///
    /// # Errors
    /// An unknown operator or a malformed key or value.
    pub fn from_label_selector(sel: &Value) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        if let Some(map) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in map {
                let v = v.as_str().unwrap_or_default();
                check_key(k)?;
                check_value(v)?;
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Op::Equals,
                    values: vec![v.to_owned()],
                });
            }
        }
        for expr in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
            check_key(key)?;
            let mut values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            values.sort();
            values.dedup();
            let op = match expr.get("operator").and_then(Value::as_str) {
                Some("In") => Op::In,
                Some("NotIn") => Op::NotIn,
                Some("Exists") => Op::Exists,
                Some("DoesNotExist") => Op::DoesNotExist,
                other => {
                    return Err(Error(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            requirements.push(Requirement {
                key: key.to_owned(),
                op,
                values,
            });
        }
        Ok(Self { requirements })
    }
}

/// `metadata.labels` as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Split on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, Error> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement {
            key: key.to_owned(),
            op: Op::DoesNotExist,
            values: Vec::new(),
        });
    }
    for (token, op) in [("!=", Op::NotEquals), ("==", Op::Equals), ("=", Op::Equals)] {
        if let Some((key, value)) = part.split_once(token) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key)?;
            check_value(value)?;
            return Ok(Requirement {
                key: key.to_owned(),
                op,
                values: vec![value.to_owned()],
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0];
        let rest = words[1].trim_start();
        let (op, list) = if let Some(list) = rest.strip_prefix("notin") {
            (Op::NotIn, list)
        } else if let Some(list) = rest.strip_prefix("in") {
            (Op::In, list)
        } else {
            return Err(Error(format!(
                "{part:?}: expected one of =, ==, !=, in, notin after the key"
            )));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| Error(format!("{part:?}: the values must be in parentheses")))?;
        check_key(key)?;
        let mut values = Vec::new();
        for v in inner.split(',') {
            let v = v.trim();
            check_value(v)?;
            values.push(v.to_owned());
        }
        values.sort();
        values.dedup();
        if values.is_empty()
            || (values.len() == 1 && values[0].is_empty() && inner.trim().is_empty())
        {
            return Err(Error(format!(
                "{part:?}: for 'in' and 'notin', the values must not be empty"
            )));
        }
        return Ok(Requirement {
            key: key.to_owned(),
            op,
            values,
        });
    }
    check_key(part)?;
    Ok(Requirement {
        key: part.to_owned(),
        op: Op::Exists,
        values: Vec::new(),
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of
/// at most 63 characters starting and ending alphanumeric.
pub fn check_key(key: &str) -> Result<(), Error> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !super::names::is_dns1123_subdomain(p))
    {
        return Err(Error(format!(
            "invalid label key {key:?}: prefix part must be a lowercase RFC 1123 subdomain"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(is_name_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

/// A label value: empty, or at most 63 characters starting and ending
/// alphanumeric.
pub fn check_value(value: &str) -> Result<(), Error> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.chars().all(is_name_char)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error(format!(
            "invalid label value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub negated: bool,
    pub value: String,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parse the `fieldSelector` query parameter.
    ///
    /// # Errors
    /// A term without an operator.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let mut terms = Vec::new();
        for part in split_unescaped(input, ',') {
            if part.is_empty() {
                continue;
            }
            let (field, negated, value) = split_field_term(&part).ok_or_else(|| {
                Error(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ))
            })?;
            terms.push(FieldTerm {
                field: field.trim().to_owned(),
                negated,
                value: unescape(&value),
            });
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Does the object match, reading each field with `field_value`?
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = field_value(obj, &t.field);
            (actual == t.value) != t.negated
        })
    }

    /// The value a term requires for `field` (`f=v`), if any: lets a list by
    /// `metadata.name` or `metadata.namespace` read one key.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    parts.push(cur);
    parts
}

/// Split `field<op>value` at the first unescaped operator.
fn split_field_term(part: &str) -> Option<(String, bool, String)> {
    let chars: Vec<char> = part.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '!' if chars.get(i + 1) == Some(&'=') => {
                return Some((
                    chars[..i].iter().collect(),
                    true,
                    chars[i + 2..].iter().collect(),
                ));
            }
            '=' => {
                let skip = if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
                return Some((
                    chars[..i].iter().collect(),
                    false,
                    chars[i + skip..].iter().collect(),
                ));
            }
            _ => i += 1,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of a selectable field: a dotted path into the object, with
/// the few aliases upstream has (events' `source` is `source.component`).
/// Missing fields read as `""`, booleans and numbers as their text.
pub fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        "source" => "source.component",
        other => other,
    };
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// The fields a resource's field selectors may name, beyond
/// `metadata.name` and `metadata.namespace`.
pub fn selectable_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "type",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn label_selector_table() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web, db), tier", true),
        ] {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused() {
        for sel in [
            "app=web=x",
            "a b c",
            "app in web",
            "Bad Key=1",
            "app=-x-",
            "x in ()",
            ",",
            "app=web,",
        ] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel} should not parse");
        }
    }

    #[test]
    fn field_selector_matches_and_escapes() {
        let pod = json!({"metadata": {"name": "a,b", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        for (sel, want) in [
            ("metadata.name=a\\,b", true),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("spec.nodeName!=n1", false),
            ("spec.nodeName==n2", false),
            ("spec.nodeName=", false),
            ("status.podIP=", true),
        ] {
            let parsed = FieldSelector::parse(sel).unwrap();
            assert_eq!(parsed.matches(&pod), want, "{sel}");
        }
        assert!(FieldSelector::parse("nonsense").is_err());
    }

    #[test]
    fn label_selector_from_match_expressions() {
        let sel = LabelSelector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
        }))
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z]([a-z0-9.-]{0,8}[a-z0-9])?(/[a-z]([a-z0-9_-]{0,8}[a-z0-9])?)?"
            .prop_filter("prefix must be a subdomain", |k| check_key(k).is_ok())
    }

    fn value() -> impl Strategy<Value = String> {
        "([a-z0-9]([a-z0-9_.-]{0,8}[a-z0-9])?)?"
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        (
            key(),
            0..6usize,
            prop::collection::vec(value().prop_filter("non-empty", |v| !v.is_empty()), 1..4),
        )
            .prop_map(|(key, op, mut values)| {
                values.sort();
                values.dedup();
                let (op, values) = match op {
                    0 => (Op::Equals, vec![values[0].clone()]),
                    1 => (Op::NotEquals, vec![values[0].clone()]),
                    2 => (Op::In, values),
                    3 => (Op::NotIn, values),
                    4 => (Op::Exists, vec![]),
                    _ => (Op::DoesNotExist, vec![]),
                };
                Requirement { key, op, values }
            })
    }

    proptest! {
        #[test]
        fn label_selectors_round_trip_through_text(reqs in prop::collection::vec(requirement(), 0..5)) {
            let sel = LabelSelector { requirements: reqs };
            let text = sel.to_string();
            let parsed = LabelSelector::parse(&text).unwrap();
            prop_assert_eq!(parsed, sel);
        }
    }
}
