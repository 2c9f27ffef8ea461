//! The references a rule makes, checked when its definition is written, as
//! cel-go's checker does: every identifier is a variable in scope (`self`,
//! `oldSelf`, a comprehension's) or a type, every function is one the
//! environment or the Kubernetes libraries declare, and every field
//! selected on a schema's object is one it declares (under its escaped
//! name, [`super::escape`]). A rule that calls `self.bogus()` is refused
//! with upstream's "undeclared reference to 'bogus' (in container '')", and
//! one that reads `self.z` of an object without `z` with "undefined field
//! 'z'", instead of being accepted to fail on every write.
//!
//! Types are followed only as far as they are evident (schema nodes,
//! literals, comparisons and logical operators, `size`, `has`), enough to
//! refuse a rule that is not a bool, a message that is not a string, and
//! an operator between plainly different types (`'n: ' + self.replicas`);
//! a function applied to the wrong type of value still fails when the rule
//! runs.

use std::collections::HashSet;
use std::sync::LazyLock;

use cel::Program;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, MapExpr, StructExpr};
use serde_json::Value;

use super::{ENV, library};

/// Identifiers that name types (`type(x) == int`), and the root of the
/// protobuf well-known types (`google.protobuf.Timestamp`).
const TYPES: [&str; 12] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "google",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// What the Kubernetes libraries add to a context.
static LIBRARY: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut ctx = cel::Context::with_env(ENV.clone());
    library::register(&mut ctx).into_iter().collect()
});

/// Names upstream's environment has that this one lacks (the sets and
/// semver libraries, two-variable comprehensions): not refused at
/// creation, they fail when a rule using them runs.
const UNIMPLEMENTED: [&str; 12] = [
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    "isSemver",
    "semver",
    "transformList",
    "transformMap",
    "transformMapEntry",
    "all",
    "exists",
    "existsOne",
    "exists_one",
];

fn declared(function: &str) -> bool {
    // Operators (`_==_`, `@in`, `!_`) are the interpreter's own.
    if function.starts_with(['_', '@', '!', '-'])
        || LIBRARY.contains(function)
        || UNIMPLEMENTED.contains(&function)
    {
        return true;
    }
    // The environment refuses a context function under a name it declares.
    let mut probe = cel::Context::with_env(ENV.clone());
    probe.add_function(function, || 0i64).is_err()
}

/// What a rule's value is known to be: a schema node (`resource` when it
/// is a resource's root: the object itself, or an embedded resource), a
/// CEL type evident from the expression, or anything.
#[derive(Clone, Copy)]
pub enum Ty<'s> {
    Schema(&'s Value, bool),
    /// A CEL type known from the expression (a literal, an operator).
    Known(&'static str),
    Dyn,
}

/// The metadata every resource root shows to rules, whatever its schema
/// says (upstream's `WithTypeAndObjectMeta`).
static ROOT_METADATA: LazyLock<Value> = LazyLock::new(|| {
    serde_json::json!({"type": "object", "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"}}})
});
static STRING: LazyLock<Value> = LazyLock::new(|| serde_json::json!({"type": "string"}));

impl<'s> Ty<'s> {
    /// The node of `self.<field>`, or `Err` when the node is an object
    /// that does not declare it (cel-go's "undefined field").
    fn field(self, field: &str) -> Result<Ty<'s>, ()> {
        let Ty::Schema(s, resource) = self else {
            return Ok(Ty::Dyn);
        };
        if resource {
            match field {
                "apiVersion" | "kind" => return Ok(Ty::Schema(&STRING, false)),
                "metadata" => return Ok(Ty::Schema(&ROOT_METADATA, false)),
                _ => {}
            }
        }
        if let Some(map) = s.get("additionalProperties").filter(|a| a.is_object()) {
            return Ok(Ty::node(map));
        }
        match s.get("properties").and_then(Value::as_object) {
            Some(props) => props
                .iter()
                .find(|(name, _)| super::escape(name).as_deref() == Some(field))
                .map(|(_, node)| Ty::node(node))
                .ok_or(()),
            // An object with neither (under x-kubernetes-preserve-unknown-
            // fields): not checked.
            None => Ok(Ty::Dyn),
        }
    }

    /// The CEL type, where it is known: a schema node's by its type and
    /// format.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Ty::Known(name) => Some(name),
            Ty::Dyn => None,
            Ty::Schema(s, _) => {
                let format = s.get("format").and_then(Value::as_str);
                Some(match s.get("type").and_then(Value::as_str)? {
                    "boolean" => "bool",
                    "integer" => "int",
                    "number" => "double",
                    "string" => match format {
                        Some("byte") => "bytes",
                        Some("date" | "date-time") => "google.protobuf.Timestamp",
                        Some("duration") => "google.protobuf.Duration",
                        _ => "string",
                    },
                    "array" => "list",
                    "object" => "map",
                    _ => return None,
                })
            }
        }
    }

    fn node(s: &'s Value) -> Ty<'s> {
        if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return Ty::Dyn;
        }
        Ty::Schema(
            s,
            s.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)),
        )
    }

    /// The node of an element: a list's items or a map's values.
    fn element(self) -> Ty<'s> {
        match self {
            Ty::Schema(s, _) => s
                .get("items")
                .or_else(|| s.get("additionalProperties"))
                .filter(|n| n.is_object())
                .map_or(Ty::Dyn, Ty::node),
            Ty::Known(_) | Ty::Dyn => Ty::Dyn,
        }
    }

    /// What a comprehension over a value of this type binds: a list's
    /// items, a map's keys.
    fn iterated(self) -> Ty<'s> {
        match self {
            Ty::Schema(s, _) if s.get("items").is_some() => self.element(),
            _ => Ty::Dyn,
        }
    }
}

/// The type a rule at `schema` sees `self` (and `oldSelf`) as; `root` for
/// the rules of a definition's top-level schema.
pub fn rule_type(schema: &Value, root: bool) -> Ty<'_> {
    match Ty::node(schema) {
        Ty::Schema(s, embedded) => Ty::Schema(s, embedded || root),
        other => other,
    }
}

/// Check `program`'s references, with `variables` declared and typed.
/// Returns the type of its result, where it is known.
///
/// # Errors
/// cel-go's message for the first undeclared variable or function, or
/// undefined field, with its position.
pub fn check(program: &Program, variables: &[(&str, Ty)]) -> Result<Option<&'static str>, String> {
    let mut scope: Vec<(String, Ty)> = variables
        .iter()
        .map(|(v, t)| ((*v).to_owned(), *t))
        .collect();
    match walk(program.expression(), &mut scope) {
        Ok(ty) => Ok(ty.name()),
        Err((id, message)) => {
            let source = &program.source_info().source;
            let offset = program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start as usize);
            Err(located(source, offset, &message))
        }
    }
}

/// cel-go's layout of an error at byte `offset` of `source`:
/// `ERROR: <input>:LINE:COLUMN: MESSAGE`, the line, and a caret under the
/// column.
pub fn located(source: &str, offset: usize, message: &str) -> String {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count();
    let text = source[line_start..].lines().next().unwrap_or_default();
    format!(
        "ERROR: <input>:{line}:{}: {message}\n | {}\n | {}^",
        column + 1,
        text.replace('\t', " "),
        ".".repeat(column)
    )
}

/// An expression's id and what is wrong with it.
type Problem = (u64, String);

fn undeclared(id: u64, name: &str) -> Problem {
    (
        id,
        format!("undeclared reference to '{name}' (in container '')"),
    )
}

fn walk<'s>(e: &IdedExpr, scope: &mut Vec<(String, Ty<'s>)>) -> Result<Ty<'s>, Problem> {
    match &e.expr {
        Expr::Ident(name) => {
            if let Some((_, ty)) = scope.iter().rev().find(|(v, _)| v == name) {
                Ok(*ty)
            } else if TYPES.contains(&name.as_str()) {
                Ok(Ty::Dyn)
            } else {
                Err(undeclared(e.id, name))
            }
        }
        Expr::Select(select) => {
            let field = walk(&select.operand, scope)?
                .field(&select.field)
                .map_err(|()| (e.id, format!("undefined field '{}'", select.field)))?;
            // `has(self.field)`
            Ok(if select.test {
                Ty::Known("bool")
            } else {
                field
            })
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                // `math.greatest(…)`, `format.dns1123Label()`: a function
                // in a namespace, not a member call on a variable.
                if let Some(namespace) = qualified(&target.expr)
                    && !scope.iter().any(|(v, _)| *v == namespace[0])
                    && declared(&format!("{}.{}", namespace.join("."), call.func_name))
                {
                    for a in &call.args {
                        walk(a, scope)?;
                    }
                    return Ok(Ty::Dyn);
                }
                walk(target, scope)?;
            }
            if !declared(&call.func_name) {
                return Err(undeclared(e.id, &call.func_name));
            }
            // A two-variable comprehension (not expanded here): its first
            // two arguments name variables, so its arguments are not checked.
            let comprehension = matches!(
                call.func_name.as_str(),
                "all"
                    | "exists"
                    | "existsOne"
                    | "exists_one"
                    | "transformList"
                    | "transformMap"
                    | "transformMapEntry"
            );
            if comprehension && call.args.len() >= 3 {
                return Ok(Ty::Dyn);
            }
            let mut args = Vec::with_capacity(call.args.len());
            for a in &call.args {
                args.push(walk(a, scope)?);
            }
            if let [a, b] = args.as_slice()
                && let Some(problem) = mismatch(&call.func_name, *a, *b)
            {
                return Err((e.id, problem));
            }
            Ok(match (call.func_name.as_str(), args.as_slice()) {
                ("_[_]", [of, _]) => of.element(),
                // `self.?field`
                ("_?._", [of, _]) => {
                    if let Some(Expr::Literal(LiteralValue::String(field))) =
                        call.args.get(1).map(|a| &a.expr)
                    {
                        of.field(field.inner())
                            .map_err(|()| (e.id, format!("undefined field '{}'", field.inner())))?;
                    }
                    Ty::Dyn
                }
                (
                    "_==_"
                    | "_!=_"
                    | "_<_"
                    | "_<=_"
                    | "_>_"
                    | "_>=_"
                    | "_&&_"
                    | "_||_"
                    | "!_"
                    | "@in"
                    | "@not_strictly_false",
                    _,
                ) => Ty::Known("bool"),
                ("size", _) => Ty::Known("int"),
                _ => Ty::Dyn,
            })
        }
        Expr::Comprehension(c) => {
            let range = walk(&c.iter_range, scope)?;
            walk(&c.accu_init, scope)?;
            let outer = scope.len();
            scope.push((c.accu_var.clone(), Ty::Dyn));
            match &c.iter_var2 {
                // Two variables: a list's index and item, a map's key
                // and value.
                Some(second) => {
                    scope.push((c.iter_var.clone(), Ty::Dyn));
                    scope.push((second.clone(), range.element()));
                }
                None => scope.push((c.iter_var.clone(), range.iterated())),
            }
            let body = walk(&c.loop_cond, scope).and_then(|_| walk(&c.loop_step, scope));
            scope.truncate(outer + 1);
            let result = body.and_then(|_| walk(&c.result, scope));
            scope.truncate(outer);
            result.map(|_| Ty::Dyn)
        }
        Expr::List(list) => {
            for i in &list.elements {
                walk(i, scope)?;
            }
            Ok(Ty::Dyn)
        }
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        walk(&m.key, scope)?;
                        walk(&m.value, scope)?;
                    }
                    EntryExpr::StructField(f) => {
                        walk(&f.value, scope)?;
                    }
                }
            }
            Ok(Ty::Dyn)
        }
        Expr::Literal(literal) => Ok(Ty::Known(match literal {
            LiteralValue::Boolean(_) => "bool",
            LiteralValue::Bytes(_) => "bytes",
            LiteralValue::Double(_) => "double",
            LiteralValue::Int(_) => "int",
            LiteralValue::Null => "null_type",
            LiteralValue::String(_) => "string",
            LiteralValue::UInt(_) => "uint",
        })),
        Expr::Unspecified => Ok(Ty::Dyn),
    }
}

/// What a binary operator applied to two values of evident, plainly
/// incompatible types is to cel-go's checker: a number and a string, a
/// string and a bool… (`'replicas ' + self.replicas`). Only such pairs are
/// named; numbers of different kinds, timestamps with durations, nulls and
/// anything less evident are left to run.
fn mismatch(op: &str, a: Ty, b: Ty) -> Option<String> {
    let operator = matches!(
        op,
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "_+_" | "_-_" | "_*_" | "_/_" | "_%_"
    );
    let plain = |t: Ty| {
        let name = t.name()?;
        let family = match name {
            "int" | "uint" | "double" => "number",
            "string" | "bool" | "bytes" => name,
            _ => return None,
        };
        Some((name, family))
    };
    let ((a, fa), (b, fb)) = (plain(a)?, plain(b)?);
    (operator && fa != fb)
        .then(|| format!("found no matching overload for '{op}' applied to '({a}, {b})'"))
}

/// The segments of `a.b.c`, when the expression is only that.
fn qualified(e: &Expr) -> Option<Vec<&str>> {
    match e {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(select) if !select.test => {
            let mut segments = qualified(&select.operand.expr)?;
            segments.push(&select.field);
            Some(segments)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(rule: &str) -> Result<Option<&'static str>, String> {
        check(
            &super::super::compile(rule).unwrap(),
            &[("self", Ty::Dyn), ("oldSelf", Ty::Dyn)],
        )
    }

    #[test]
    fn known_references_pass() {
        for rule in [
            "self.replicas >= 0 && size(self.name) < 10",
            "self.items.all(i, i.name.startsWith('a')) && self.items.exists(x, x.size() > 1)",
            "self.items.map(i, i * 2).filter(j, j > 1).size() > 0",
            "math.greatest(1, 2) == 2 && strings.quote('a') != ''",
            "!format.dns1123Label().validate(self.name).hasValue()",
            "format.named('dns1123Label').hasValue()",
            "quantity(self.q).isLessThan(quantity('1Gi')) && isQuantity(self.q)",
            "ip(self.ip).family() == 4 && cidr(self.c).containsIP(self.ip)",
            "ip.isCanonical(self.ip)",
            "url(self.u).getHost() != '' && self.l.isSorted() && self.l.indexOf(1) >= 0",
            "self.name.find('[a-z]+') != '' && self.name.matches('^a')",
            "duration(self.d) < duration('1h') && timestamp(self.t).getFullYear() > 2000",
            "type(self.x) == int || type(self.x) == string",
            "!has(oldSelf.x) || self.x == oldSelf.x",
            "oldSelf.hasValue() && optional.of(1).value() == 1",
            "[1, 2].all(x, [3].all(y, x < y))",
            "{'a': 1}.size() == 1 && self.x in [1, 2]",
            "self.?x.orValue(0) == 0",
            "sets.contains(self.a, ['x']) && self.m.all(k, v, v > 0)",
        ] {
            assert!(checked(rule).is_ok(), "{rule}: {:?}", checked(rule));
        }
    }

    #[test]
    fn undeclared_references_are_named_where_they_are() {
        assert_eq!(
            checked("self.bogus()"),
            Err("ERROR: <input>:1:11: undeclared reference to 'bogus' (in container '')\n | self.bogus()\n | ..........^".into())
        );
        let err = checked("foo == 1").unwrap_err();
        assert!(
            err.starts_with("ERROR: <input>:1:1: undeclared reference to 'foo' (in container '')"),
            "{err}"
        );
        let err = checked("self.items.all(x, y > 0)").unwrap_err();
        assert!(err.contains("undeclared reference to 'y'"), "{err}");
        // A comprehension's variable is out of scope after it.
        let err = checked("self.items.all(x, x > 0) && x > 0").unwrap_err();
        assert!(err.contains("undeclared reference to 'x'"), "{err}");
        let err = checked("nosuch.func(1)").unwrap_err();
        assert!(err.contains("undeclared reference to 'nosuch'"), "{err}");
        let err = check(
            &super::super::compile("oldSelf > 1").unwrap(),
            &[("self", Ty::Dyn)],
        )
        .unwrap_err();
        assert!(err.contains("'oldSelf'"), "{err}");
    }

    #[test]
    fn positions_after_non_ascii_text_are_in_characters() {
        // The call is placed at its parenthesis, counted in characters.
        let err = checked("'héllo wörld' == self.x && bogus(1)").unwrap_err();
        assert!(
            err.starts_with("ERROR: <input>:1:33: undeclared reference to 'bogus'"),
            "{err}"
        );
        assert!(err.ends_with(&format!("\n | {}^", ".".repeat(32))), "{err}");
        let err = super::super::compile("'é' +").unwrap_err();
        assert!(err.starts_with("ERROR: <input>:1:6: Syntax error"), "{err}");
    }

    #[test]
    fn operands_of_plainly_different_types_are_refused() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "replicas": {"type": "integer"}, "ratio": {"type": "number"},
            "name": {"type": "string"}, "on": {"type": "boolean"},
            "at": {"type": "string", "format": "date-time"},
            "wait": {"type": "string", "format": "duration"}}});
        let run = |rule: &str| {
            let ty = rule_type(&schema, false);
            check(
                &super::super::compile(rule).unwrap(),
                &[("self", ty), ("oldSelf", ty)],
            )
        };
        for ok in [
            "self.replicas < self.ratio",
            "self.replicas == 3 && self.name != 'a' && self.on == true",
            "'n' + self.name + string(self.replicas)",
            "self.at + self.wait > self.at",
            "self.name == null || self.replicas * 2 > 1",
        ] {
            assert!(run(ok).is_ok(), "{ok}: {:?}", run(ok));
        }
        assert_eq!(
            run("'replicas ' + self.replicas"),
            Err("ERROR: <input>:1:13: found no matching overload for '_+_' applied to '(string, int)'\n | 'replicas ' + self.replicas\n | ............^".into())
        );
        for (bad, types) in [
            ("self.replicas == '3'", "'_==_' applied to '(int, string)'"),
            ("self.on > 1", "'_>_' applied to '(bool, int)'"),
            (
                "self.name < self.ratio",
                "'_<_' applied to '(string, double)'",
            ),
        ] {
            let err = run(bad).unwrap_err();
            assert!(err.contains(types), "{bad}: {err}");
        }
    }

    #[test]
    fn fields_must_be_declared_by_the_schema() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "x": {"type": "integer"},
                "dashed-name": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}}}},
                "labels": {"type": "object", "additionalProperties": {"type": "object",
                    "properties": {"value": {"type": "string"}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                    "properties": {"spec": {"type": "object"}}},
            }},
        }});
        let run = |rule: &str| {
            let ty = rule_type(&schema, true);
            check(
                &super::super::compile(rule).unwrap(),
                &[("self", ty), ("oldSelf", ty)],
            )
        };
        for rule in [
            "self.spec.x > 0 && has(self.spec.dashed__dash__name)",
            "self.metadata.name.startsWith('a') && self.apiVersion != '' && self.kind != ''",
            "self.spec.items.all(i, i.name != '') && self.spec.items[0].name != ''",
            "self.spec.labels.all(k, self.spec.labels[k].value != '')",
            "self.spec.labels.anything.value == '' && self.spec.free.whatever == 1",
            "self.spec.template.metadata.name != '' && has(self.spec.template.spec)",
            "self.spec.?x.orValue(0) == 0",
        ] {
            assert!(run(rule).is_ok(), "{rule}: {:?}", run(rule));
        }
        assert_eq!(
            run("self.spec.z == 100"),
            Err(
                "ERROR: <input>:1:10: undefined field 'z'\n | self.spec.z == 100\n | .........^"
                    .into()
            )
        );
        for (rule, field) in [
            ("has(self.spec.z)", "z"),
            ("self.metadata.labels.size() > 0", "labels"),
            ("self.spec.items.all(i, i.nom != '')", "nom"),
            ("self.spec.labels['a'].valeur == ''", "valeur"),
            ("self.spec.template.metadata.labels == {}", "labels"),
            ("self.spec.?y.hasValue()", "y"),
            ("self.spec.dashed-name == ''", "dashed"),
        ] {
            let err = run(rule).unwrap_err();
            assert!(
                err.contains(&format!("undefined field '{field}'")),
                "{rule}: {err}"
            );
        }
    }
}
