//! CEL for CustomResourceDefinitions' `x-kubernetes-validations`, on the
//! `cel` crate: the standard library and macros, the strings, lists and math
//! extensions, and the Kubernetes libraries ([`library`]: lists, regex,
//! URLs, quantities, IPs and CIDRs, named formats).
//!
//! Upstream's cost limits are estimated before a definition is accepted
//! ([`estimated_cost`]): a rule's worst case grows with the sizes of the
//! lists, maps and strings it walks, so a rule over unbounded ones exceeds
//! the budget and is refused, with upstream's advice (add maxItems,
//! maxProperties, maxLength).

mod library;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

pub use cel::Value as Cel;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, Program};
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
    let program = Arc::new(ENV.compile(source).map_err(|e| e.to_string())?);
    if cache.len() >= MAX_CACHED_PROGRAMS {
        cache.clear();
    }
    cache.insert(source.to_owned(), program.clone());
    Ok(program)
}

/// Whether a program reads `oldSelf` (a transition rule).
pub fn uses_old_self(program: &Program) -> bool {
    program.references().has_variable("oldSelf")
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
        Value::String(s)
            if ty == Some("string")
                && schema.and_then(|s| s.get("format")) == Some(&Value::from("byte")) =>
        {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => Cel::Bytes(Arc::new(bytes)),
                Err(_) => Cel::String(Arc::new(s.clone())),
            }
        }
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let items_schema = schema.and_then(|s| s.get("items"));
            Cel::List(Arc::new(
                items.iter().map(|i| typed(i, items_schema)).collect(),
            ))
        }
        Value::Object(m) => {
            let map: HashMap<Key, Cel> = m
                .iter()
                .map(|(k, v)| {
                    let child = schema.and_then(|s| child_schema(s, k));
                    (Key::String(Arc::new(k.clone())), typed(v, child))
                })
                .collect();
            Cel::Map(CelMap { map: Arc::new(map) })
        }
    }
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
    fn compile_errors_say_where() {
        let err = compile("self.a +").err().unwrap();
        assert!(err.contains("Syntax error"), "{err}");
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
