//! The references a rule makes, checked when its definition is written, as
//! cel-go's checker does: every identifier is a variable in scope (`self`,
//! `oldSelf`, a comprehension's) or a type, and every function is one the
//! environment or the Kubernetes libraries declare. A rule that calls
//! `self.bogus()` is refused with upstream's "undeclared reference to
//! 'bogus' (in container '')", not accepted to fail on every write.
//!
//! Types are not checked: a function applied to the wrong type of value
//! still fails when the rule runs.

use std::collections::HashSet;
use std::sync::LazyLock;

use cel::Program;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};

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

fn declared(function: &str) -> bool {
    // Operators (`_==_`, `@in`, `!_`) are the interpreter's own.
    if function.starts_with(['_', '@', '!', '-']) || LIBRARY.contains(function) {
        return true;
    }
    // The environment refuses a context function under a name it declares.
    let mut probe = cel::Context::with_env(ENV.clone());
    probe.add_function(function, || 0i64).is_err()
}

/// Check `program`'s references, with `variables` declared.
///
/// # Errors
/// cel-go's message for the first undeclared one, with its position.
pub fn check(program: &Program, variables: &[&str]) -> Result<(), String> {
    let mut scope: Vec<String> = variables.iter().map(|v| (*v).to_owned()).collect();
    match walk(program.expression(), &mut scope) {
        Ok(()) => Ok(()),
        Err((id, name)) => {
            let source = &program.source_info().source;
            let offset = program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start as usize);
            Err(located(
                source,
                offset,
                &format!("undeclared reference to '{name}' (in container '')"),
            ))
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

type Undeclared = (u64, String);

fn walk(e: &IdedExpr, scope: &mut Vec<String>) -> Result<(), Undeclared> {
    match &e.expr {
        Expr::Ident(name) => {
            if scope.iter().any(|v| v == name) || TYPES.contains(&name.as_str()) {
                Ok(())
            } else {
                Err((e.id, name.clone()))
            }
        }
        Expr::Select(select) => walk(&select.operand, scope),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                // `math.greatest(…)`, `format.dns1123Label()`: a function
                // in a namespace, not a member call on a variable.
                if let Some(namespace) = qualified(&target.expr)
                    && !scope.iter().any(|v| *v == namespace[0])
                    && declared(&format!("{}.{}", namespace.join("."), call.func_name))
                {
                    return call.args.iter().try_for_each(|a| walk(a, scope));
                }
                walk(target, scope)?;
            }
            if !declared(&call.func_name) {
                return Err((e.id, call.func_name.clone()));
            }
            call.args.iter().try_for_each(|a| walk(a, scope))
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, scope)?;
            walk(&c.accu_init, scope)?;
            let outer = scope.len();
            scope.push(c.accu_var.clone());
            scope.push(c.iter_var.clone());
            scope.extend(c.iter_var2.clone());
            let body = walk(&c.loop_cond, scope).and_then(|()| walk(&c.loop_step, scope));
            scope.truncate(outer + 1);
            let result = body.and_then(|()| walk(&c.result, scope));
            scope.truncate(outer);
            result
        }
        Expr::List(list) => list.elements.iter().try_for_each(|i| walk(i, scope)),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => walk(&m.key, scope).and_then(|()| walk(&m.value, scope)),
            EntryExpr::StructField(f) => walk(&f.value, scope),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => walk(&m.key, scope).and_then(|()| walk(&m.value, scope)),
            EntryExpr::StructField(f) => walk(&f.value, scope),
        }),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
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

    fn checked(rule: &str) -> Result<(), String> {
        check(&super::super::compile(rule).unwrap(), &["self", "oldSelf"])
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
        ] {
            assert_eq!(checked(rule), Ok(()), "{rule}");
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
        let err = check(&super::super::compile("oldSelf > 1").unwrap(), &["self"]).unwrap_err();
        assert!(err.contains("'oldSelf'"), "{err}");
    }
}
