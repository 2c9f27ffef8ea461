//! CEL for CustomResourceDefinitions' `x-kubernetes-validations`, on the
//! `cel` crate: the standard library and macros (timestamps and durations
//! included, in UTC or fixed offsets), the strings, lists and math
//! extensions, and the Kubernetes libraries ([`library`]: lists, regex,
//! URLs, quantities, IPs and CIDRs, named formats). A definition's rules are
//! checked for undeclared references when it is written ([`check`]).
//!
//! Upstream's cost limits are estimated before a definition is accepted
//! ([`estimated_cost`]): a rule's worst case grows with the sizes of the
//! lists, maps and strings it walks, so a rule over unbounded ones exceeds
//! the budget and is refused, with upstream's advice (add maxItems,
//! maxProperties, maxLength).

mod check;
mod library;

pub use check::{Ty, check, rule_type};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

pub use cel::Program;
pub use cel::Value as Cel;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env};
use serde_json::Value;

/// Upstream's per-rule estimated cost limit (`StaticEstimatedCostLimit`).
pub const RULE_COST_LIMIT: f64 = 10_000_000.0;
/// Upstream's limit on a definition's rules together
/// (`StaticEstimatedCRDCostLimit`).
pub const CRD_COST_LIMIT: f64 = 100_000_000.0;
/// The largest request the server takes: what bounds an unbounded list.
const MAX_REQUEST_BYTES: f64 = 3.0 * 1024.0 * 1024.0;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    for extension in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
    ] {
        // The extensions declare distinct names; a clash is a bug here.
        env.add_extension(extension)
            .expect("CEL extensions declare distinct names");
    }
    library::declare(&mut env).expect("the Kubernetes list overloads are distinct");
    Arc::new(env)
});

/// Compiled programs by source, shared by every evaluation (bounded: a
/// server sees few distinct rules, and a flood of new ones just recompiles).
static PROGRAMS: LazyLock<Mutex<HashMap<String, Arc<Program>>>> = LazyLock::new(Mutex::default);
const MAX_CACHED_PROGRAMS: usize = 4096;

/// Compile `source`.
///
/// # Errors
/// The parser's message, as upstream shows it after "compilation failed: ".
pub fn compile(source: &str) -> Result<Arc<Program>, String> {
    let mut cache = PROGRAMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = cache.get(source) {
        return Ok(p.clone());
    }
    let program = Arc::new(ENV.compile(source).map_err(|e| syntax_errors(source, &e))?);
    if cache.len() >= MAX_CACHED_PROGRAMS {
        cache.clear();
    }
    cache.insert(source.to_owned(), program.clone());
    Ok(program)
}

/// The parser's errors in cel-go's layout ([`check::located`]).
fn syntax_errors(source: &str, errors: &cel::ParseErrors) -> String {
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    errors
        .errors
        .iter()
        .map(|e| {
            // `pos` is a 1-based line and column.
            let (line, column) = (
                usize::try_from(e.pos.0).unwrap_or(1).max(1),
                usize::try_from(e.pos.1).unwrap_or(1).max(1),
            );
            let line_start: usize = lines.iter().take(line - 1).map(|l| l.len()).sum();
            let text = lines.get(line - 1).copied().unwrap_or_default();
            let offset = text
                .char_indices()
                .nth(column - 1)
                .map_or(text.len(), |(i, _)| i);
            check::located(source, line_start + offset, &e.msg)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a program reads `oldSelf` (a transition rule).
pub fn uses_old_self(program: &Program) -> bool {
    program.references().has_variable("oldSelf")
}

/// Words a property may not be named in CEL as it is (upstream's
/// `celReservedSymbols`).
const RESERVED: [&str; 21] = [
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// The name a rule reads property `name` by, as upstream escapes it:
/// `__{word}__` for a reserved word; `__` → `__underscores__`, `.` →
/// `__dot__`, `-` → `__dash__`, `/` → `__slash__`. `None` when the name
/// cannot be read from CEL at all (other characters, or a leading digit).
pub fn escape(name: &str) -> Option<Cow<'_, str>> {
    if RESERVED.contains(&name) {
        return Some(Cow::Owned(format!("__{name}__")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if !name.chars().all(allowed) || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !name.contains(['.', '-', '/']) && !name.contains("__") {
        return Some(Cow::Borrowed(name));
    }
    let mut out = String::with_capacity(name.len() + 16);
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let (replacement, len) = match c {
            '_' if rest.starts_with("__") => ("__underscores__", 2),
            '.' => ("__dot__", 1),
            '-' => ("__dash__", 1),
            '/' => ("__slash__", 1),
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
        };
        out.push_str(replacement);
        rest = &rest[len..];
    }
    Some(Cow::Owned(out))
}

/// A JSON value as CEL sees it under `schema`, as upstream types it:
/// `type: number` is a `double` even when written without a fraction, and
/// `format: byte` strings are `bytes`. Without a schema (or under
/// `x-kubernetes-preserve-unknown-fields`), integers are `int`.
pub fn typed(v: &Value, schema: Option<&Value>) -> Cel {
    let ty = schema.and_then(|s| s.get("type")).and_then(Value::as_str);
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) if ty == Some("number") => Cel::Float(n.as_f64().unwrap_or(0.0)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) if ty == Some("string") => {
            let format = schema.and_then(|s| s.get("format")).and_then(Value::as_str);
            formatted(s, format).unwrap_or_else(|| Cel::String(Arc::new(s.clone())))
        }
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let items_schema = schema.and_then(|s| s.get("items"));
            Cel::List(Arc::new(
                items.iter().map(|i| typed(i, items_schema)).collect(),
            ))
        }
        Value::Object(m) => {
            let properties = schema.and_then(|s| s.get("properties"));
            let map: HashMap<Key, Cel> = m
                .iter()
                .filter_map(|(k, v)| {
                    let child = schema.and_then(|s| child_schema(s, k));
                    // A declared property is read by its escaped name; a
                    // map's keys are as written.
                    let key = match properties.and_then(|p| p.get(k)) {
                        Some(_) => escape(k)?.into_owned(),
                        None => k.clone(),
                    };
                    Some((Key::String(Arc::new(key)), typed(v, child)))
                })
                .collect();
            Cel::Map(CelMap { map: Arc::new(map) })
        }
    }
}

/// A string of `format` as upstream's CEL sees it: `byte` is bytes,
/// `date` and `date-time` are timestamps, `duration` is a duration. `None`
/// for other formats, and for a value that does not parse (the schema's
/// format check has refused it already).
fn formatted(s: &str, format: Option<&str>) -> Option<Cel> {
    match format? {
        "byte" => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
            Some(Cel::Bytes(Arc::new(bytes)))
        }
        "date-time" => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(Cel::Timestamp),
        "date" => {
            let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let utc = chrono::FixedOffset::east_opt(0)?;
            let midnight = day.and_hms_opt(0, 0, 0)?.and_local_timezone(utc);
            midnight.single().map(Cel::Timestamp)
        }
        "duration" => parse_duration(s).map(Cel::Duration),
        _ => None,
    }
}

/// A duration as go-openapi's `strfmt.ParseDuration` reads it: Go's
/// `time.ParseDuration` syntax (`1h30m`, `-1.5s`, `300ms`), or a count and a
/// unit word (`3 days`, `2w`).
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    go_duration(s).or_else(|| {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let count: i64 = s[..digits].parse().ok()?;
        let unit = match s[digits..].trim() {
            "ns" | "nanosecond" | "nanoseconds" => chrono::Duration::nanoseconds(1),
            "us" | "microsecond" | "microseconds" => chrono::Duration::microseconds(1),
            "ms" | "millisecond" | "milliseconds" => chrono::Duration::milliseconds(1),
            "s" | "second" | "seconds" => chrono::Duration::seconds(1),
            "m" | "minute" | "minutes" => chrono::Duration::minutes(1),
            "h" | "hour" | "hours" => chrono::Duration::hours(1),
            "d" | "day" | "days" => chrono::Duration::days(1),
            "w" | "week" | "weeks" => chrono::Duration::weeks(1),
            _ => return None,
        };
        unit.checked_mul(i32::try_from(count).ok()?)
    })
}

/// Go's `time.ParseDuration`.
fn go_duration(s: &str) -> Option<chrono::Duration> {
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: i128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.bytes() {
            place /= 10;
            part = part.checked_add(i128::from(digit - b'0') * place)?;
        }
        nanos = nanos.checked_add(part)?;
    }
    let nanos = i64::try_from(if negative { -nanos } else { nanos }).ok()?;
    Some(chrono::Duration::nanoseconds(nanos))
}

/// What the old value is to a rule.
pub enum OldSelf<'a> {
    /// No `oldSelf` (a create, or a value new in this update).
    None,
    Some(&'a Value),
    /// `optionalOldSelf`: `oldSelf` is an optional, absent or not.
    Optional(Option<&'a Value>),
}

fn optional(v: Option<Cel>) -> Cel {
    // The crate's optional type is built by its `optional` functions.
    let program = match v {
        Some(_) => compile("optional.of(x)"),
        None => compile("optional.none()"),
    };
    let Ok(program) = program else {
        return Cel::Null;
    };
    let mut ctx = Context::with_env(ENV.clone());
    if let Some(v) = v {
        ctx.add_variable_from_value("x", v);
    }
    program.execute(&ctx).unwrap_or(Cel::Null)
}

/// Evaluate `program` with `self` (and `oldSelf`) bound, typed by the
/// node's `schema` ([`typed`]).
///
/// # Errors
/// The evaluation error's message.
pub fn evaluate(
    program: &Program,
    this: &Value,
    old: &OldSelf,
    schema: Option<&Value>,
) -> Result<Cel, String> {
    // The functions are registered once per thread; each evaluation binds
    // its variables in a scope of its own.
    thread_local! {
        static BASE: Context<'static, 'static> = {
            let mut ctx = Context::with_env(ENV.clone());
            library::register(&mut ctx);
            ctx
        };
    }
    BASE.with(|base| evaluate_in(base, program, this, old, schema))
}

fn evaluate_in(
    base: &Context,
    program: &Program,
    this: &Value,
    old: &OldSelf,
    schema: Option<&Value>,
) -> Result<Cel, String> {
    let mut ctx = base.new_inner_scope();
    ctx.add_variable_from_value("self", typed(this, schema));
    match old {
        OldSelf::None => {}
        OldSelf::Some(v) => ctx.add_variable_from_value("oldSelf", typed(v, schema)),
        OldSelf::Optional(v) => {
            ctx.add_variable_from_value("oldSelf", optional(v.map(|v| typed(v, schema))));
        }
    }
    program.execute(&ctx).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Cost estimation.

/// How big the values a rule sees can be, from its node's schema.
fn cardinality(schema: &Value) -> f64 {
    if let Some(max) = schema
        .get("maxItems")
        .or_else(|| schema.get("maxProperties"))
        .and_then(Value::as_f64)
    {
        return max;
    }
    // Unbounded: as many of the smallest element as a request can carry.
    MAX_REQUEST_BYTES / 2.0
}

fn string_length(schema: &Value) -> f64 {
    schema
        .get("maxLength")
        .and_then(Value::as_f64)
        .unwrap_or(MAX_REQUEST_BYTES)
}

/// The schema of what `self.<path>` names in a rule, for the sizes.
fn child_schema<'a>(schema: &'a Value, field: &str) -> Option<&'a Value> {
    schema
        .get("properties")
        .and_then(|p| p.get(field))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

/// A worst-case cost of `source` run on a value of `schema`: the product
/// of the sizes of the collections its comprehensions walk (nested ones
/// multiply), times the length of the strings it scans.
pub fn estimated_cost(source: &str, schema: &Value) -> f64 {
    let comprehensions = [".all(", ".exists(", ".exists_one(", ".map(", ".filter("];
    let string_ops = [
        ".matches(",
        ".contains(",
        ".startsWith(",
        ".endsWith(",
        ".find(",
        ".findAll(",
        ".split(",
    ];
    let mut cost = 1.0;
    let mut nested = 1.0f64;
    for c in comprehensions {
        for (at, _) in source.match_indices(c) {
            // The collection is what the comprehension is called on:
            // `self` or `self.a.b`.
            let before = &source[..at];
            let start = before
                .rfind(|ch: char| !(ch.is_alphanumeric() || ch == '.' || ch == '_'))
                .map_or(0, |i| i + 1);
            let target = &before[start..];
            let mut node = Some(schema);
            for part in target.split('.').skip(1) {
                node = node.and_then(|n| child_schema(n, part));
            }
            let n = node.map_or(MAX_REQUEST_BYTES / 2.0, cardinality);
            nested *= n;
        }
    }
    cost *= nested.max(1.0);
    let scans = string_ops.iter().filter(|op| source.contains(**op)).count();
    if scans > 0 {
        // The strings scanned: the node's own, or its items'.
        let strings = schema
            .get("items")
            .map_or_else(|| string_length(schema), string_length);
        #[allow(clippy::cast_precision_loss)]
        {
            cost *= strings.max(1.0) * scans as f64 / 10.0;
        }
    }
    cost
}

/// Upstream's wording for a rule over budget.
pub fn over_budget(cost: f64, limit: f64) -> String {
    format!(
        "estimated rule cost exceeds budget by factor of {:.1}x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
        cost / limit
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rule: &str, this: Value) -> Result<Cel, String> {
        evaluate(&compile(rule).unwrap(), &this, &OldSelf::None, None)
    }

    #[test]
    fn rules_see_self_with_integers_as_ints() {
        let obj = json!({"replicas": 3, "minReplicas": 1, "name": "web-1", "ports": [80, 443]});
        assert_eq!(
            run("self.replicas >= self.minReplicas", obj.clone()),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run("self.ports.map(p, p * 2)[1] == 886", obj.clone()),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run(
                "self.ports.all(p, p > 0) && self.ports.isSorted()",
                obj.clone()
            ),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run(
                "self.ports.sum() == 523 && self.ports.max() == 443",
                obj.clone()
            ),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run("self.name.find('[0-9]+') == '1'", obj.clone()),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run("has(self.name) && !has(self.other)", obj.clone()),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run("self.name.lowerAscii().startsWith('web')", obj.clone()),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            run(
                "isURL('https://example.com/x') && !isURL('nope') && isIP('10.0.0.1') && isCIDR('10.0.0.0/8') && isQuantity('1Gi')",
                obj
            ),
            Ok(Cel::Bool(true))
        );
    }

    #[test]
    fn transition_rules_see_old_self() {
        let program = compile("self >= oldSelf").unwrap();
        assert!(uses_old_self(&program));
        assert_eq!(
            evaluate(&program, &json!(3), &OldSelf::Some(&json!(2)), None),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            evaluate(&program, &json!(1), &OldSelf::Some(&json!(2)), None),
            Ok(Cel::Bool(false))
        );
        let optional = compile("!oldSelf.hasValue() || self >= oldSelf.value()").unwrap();
        assert_eq!(
            evaluate(&optional, &json!(1), &OldSelf::Optional(None), None),
            Ok(Cel::Bool(true))
        );
        assert_eq!(
            evaluate(
                &optional,
                &json!(1),
                &OldSelf::Optional(Some(&json!(2))),
                None
            ),
            Ok(Cel::Bool(false))
        );
    }

    #[test]
    fn dates_and_durations_are_typed_by_format() {
        let schema = json!({"type": "object", "properties": {
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "timeout": {"type": "string", "format": "duration"},
            "grace": {"type": "string", "format": "duration"},
            "plain": {"type": "string"},
        }});
        let obj = json!({
            "start": "2024-02-29T23:30:00Z", "end": "2024-03-01T01:30:00+01:00",
            "day": "2024-02-29", "timeout": "1m30s", "grace": "3 days",
            "plain": "2024-02-29T23:30:00Z",
        });
        let run =
            |rule: &str| evaluate(&compile(rule).unwrap(), &obj, &OldSelf::None, Some(&schema));
        for rule in [
            "self.end > self.start && self.end - self.start == duration('1h')",
            "self.start + duration('1h') == self.end",
            "self.start.getFullYear() == 2024 && self.start.getMonth() == 1",
            "self.start.getDayOfMonth() == 28 && self.start.getHours() == 23",
            "self.start.getHours('+02:00') == 1",
            "self.day.getDate() == 29 && self.day < self.start",
            "self.timeout == duration('90s') && self.timeout < duration('1h')",
            "self.grace == duration('72h') && self.grace.getHours() == 72",
            "type(self.plain) == string && timestamp(self.plain) == self.start",
            "string(self.timeout) == '90s'",
        ] {
            assert_eq!(run(rule), Ok(Cel::Bool(true)), "{rule}");
        }
        // Only UTC is compiled in (see Cargo.toml); a zone name fails
        // when the rule runs, with the name in the message.
        let err = run("self.start.getHours('Europe/Paris') == 0").unwrap_err();
        assert!(err.contains("Europe/Paris"), "{err}");
    }

    #[test]
    fn properties_are_read_by_their_escaped_names() {
        let schema = json!({"type": "object", "properties": {
            "dashed-name": {"type": "string"}, "if": {"type": "integer"},
            "a.b/c__d": {"type": "string"}, "plain": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        }});
        let obj = json!({"dashed-name": "x", "if": 1, "a.b/c__d": "y", "plain": "z",
            "labels": {"app.kubernetes.io/name": "web"}});
        let rule = "self.dashed__dash__name == 'x' && self.__if__ == 1 \
            && self.a__dot__b__slash__c__underscores__d == 'y' && self.plain == 'z' \
            && self.labels['app.kubernetes.io/name'] == 'web' && !has(self.labels.plain)";
        assert_eq!(
            evaluate(&compile(rule).unwrap(), &obj, &OldSelf::None, Some(&schema)),
            Ok(Cel::Bool(true))
        );
        assert_eq!(escape("9lives"), None);
        assert_eq!(escape("a b"), None);
        assert_eq!(escape("___x").as_deref(), Some("__underscores___x"));
    }

    #[test]
    fn durations_parse_as_go_and_strfmt_do() {
        let ns = |s: &str| parse_duration(s).and_then(|d| d.num_nanoseconds());
        assert_eq!(ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(ns("-1.5s"), Some(-1_500_000_000));
        assert_eq!(ns("300ms"), Some(300_000_000));
        assert_eq!(ns("1\u{b5}s"), Some(1_000));
        assert_eq!(ns(".5m"), Some(30_000_000_000));
        assert_eq!(ns("0"), Some(0));
        assert_eq!(ns("2 weeks"), Some(1_209_600_000_000_000));
        for bad in [
            "",
            "1",
            "h",
            "1.2.3s",
            "1x",
            "-",
            "3 fortnights",
            "99999999999h",
        ] {
            assert_eq!(ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn compile_errors_say_where() {
        let err = compile("self.a +").err().unwrap();
        assert!(
            err.starts_with("ERROR: <input>:1:9: Syntax error: mismatched input '<EOF>'"),
            "{err}"
        );
        assert!(err.ends_with("\n | self.a +\n | ........^"), "{err}");
    }

    #[test]
    fn unbounded_comprehensions_exceed_the_budget() {
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        assert!(estimated_cost("self.all(x, x.matches('^a'))", &unbounded) > RULE_COST_LIMIT);
        let bounded =
            json!({"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 64}});
        assert!(estimated_cost("self.all(x, x.matches('^a'))", &bounded) < RULE_COST_LIMIT);
        assert!(estimated_cost("self.replicas > 1", &json!({"type": "object"})) < RULE_COST_LIMIT);
    }
}
