//! What can be learned from a compiled script without running it.

use rhai::{ASTNode, Expr, Position, AST};

/// A (line, column) in a script.
type At = (usize, usize);

fn at(p: Position) -> Option<At> {
    p.line().zip(p.position())
}

/// What `first_parameter` found.
enum Found {
    /// The first parameter's name, and where the function's body starts and ends.
    Parameter(rhai::ImmutableString, At, At),
    /// The function takes no parameter.
    NoParameter,
    /// No such function, or its body has no position: assume the worst.
    Unknown,
}

fn first_parameter(ast: &AST, name: &str, arity: usize) -> Found {
    let Some(function) = ast
        .iter_fn_def()
        .find(|f| f.name == name && f.params.len() == arity)
    else {
        return Found::Unknown;
    };
    let Some(param) = function.params.first() else {
        return Found::NoParameter;
    };
    // Functions do not nest, so the body's source range holds exactly its own nodes (and those
    // of closures written inside it, whose own parameters of that name count too: conservative).
    match (
        at(function.body.start_position()),
        at(function.body.end_position()),
    ) {
        (Some(start), Some(end)) => Found::Parameter(param.clone(), start, end),
        _ => Found::Unknown,
    }
}

/// Whether the script function `name` with `arity` parameters may read its first parameter.
/// `true` unless the function exists and its body never names that parameter: scripts cannot
/// reach a variable except by its name (`eval` is disabled, and a closure that captures the
/// parameter names it in the enclosing body), so a body that never names it computes the same
/// result for every argument. Conservative: a shadowing `let` of the same name also counts.
pub fn reads_parameter(ast: &AST, name: &str, arity: usize) -> bool {
    let (param, start, end) = match first_parameter(ast, name, arity) {
        Found::Parameter(param, start, end) => (param, start, end),
        Found::NoParameter => return false,
        Found::Unknown => return true,
    };
    let mut named = false;
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(expr @ Expr::Variable(var, ..))) = path.last() {
            let inside = at(expr.position()).is_some_and(|p| p >= start && p <= end);
            if inside && var.1 == *param {
                named = true;
                return false;
            }
        }
        true
    });
    named
}

/// The fields of its first parameter that the script function `name` with `arity` parameters
/// may read: `Some(fields)` when every use of the parameter in the body is a property access
/// (`task.meta`, `task.meta.priority`, `task.data[0]`, …), naming the first property of each;
/// `None` when it may read the whole value (it is passed on, indexed, iterated, printed, or
/// the function is missing). A body that never names the parameter reads no field.
/// Conservative like `reads_parameter`: an inner variable of the same name counts too.
pub fn parameter_fields(
    ast: &AST,
    name: &str,
    arity: usize,
) -> Option<std::collections::BTreeSet<String>> {
    let (param, start, end) = match first_parameter(ast, name, arity) {
        Found::Parameter(param, start, end) => (param, start, end),
        Found::NoParameter => return Some(Default::default()),
        Found::Unknown => return None,
    };
    let mut fields = std::collections::BTreeSet::new();
    let mut whole = false;
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(expr @ Expr::Variable(var, ..))) = path.last() else {
            return true;
        };
        let inside = at(expr.position()).is_some_and(|p| p >= start && p <= end);
        if !inside || var.1 != *param {
            return true;
        }
        // Only `param.property…`, the variable being the left side of the dot.
        let field = match path.len().checked_sub(2).and_then(|i| path.get(i)) {
            Some(ASTNode::Expr(Expr::Dot(dot, ..))) if dot.lhs.position() == expr.position() => {
                first_property(&dot.rhs)
            }
            _ => None,
        };
        match field {
            Some(field) => {
                fields.insert(field);
                true
            }
            None => {
                whole = true;
                false
            }
        }
    });
    (!whole).then_some(fields)
}

/// The property a dot chain's right side starts with (`meta` in `task.meta.priority`).
fn first_property(rhs: &Expr) -> Option<String> {
    match rhs {
        Expr::Property(p, _) => Some(p.2.to_string()),
        Expr::Dot(chain, ..) | Expr::Index(chain, ..) => first_property(&chain.lhs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(source: &str) -> Option<Vec<String>> {
        let engine = crate::scripting::ScriptEngine::new(&Default::default());
        let ast = engine.compile("t", "t.rhai", source).unwrap();
        parameter_fields(&ast, "route", 1).map(|f| f.into_iter().collect())
    }

    #[test]
    fn finds_the_fields_a_function_reads() {
        let some = |f: &[&str]| Some(f.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(fields("fn route(task) { #{} }"), some(&[]));
        assert_eq!(
            fields("fn route(task) { let p = task.meta.priority; #{ priority: p } }"),
            some(&["meta"])
        );
        assert_eq!(
            fields("fn route(t) { if t.data.kind == 1 { t.meta } else { t.data[\"x\"] } }"),
            some(&["data", "meta"])
        );
        assert_eq!(
            fields("fn route(t) { t.meta.keys().len() }"),
            some(&["meta"])
        );
        // Anything but a property access may read all of it.
        assert_eq!(fields("fn route(t) { t.keys() }"), None);
        assert_eq!(
            fields("fn route(t) { helper(t) } fn helper(x) { x.data }"),
            None
        );
        assert_eq!(fields("fn route(t) { t[\"data\"] }"), None);
        assert_eq!(fields("fn route(t) { let n = t; n.meta }"), None);
        assert_eq!(fields("fn route(t) { for k in t { } }"), None);
        assert_eq!(fields("fn route(t) { `${t}` }"), None);
        assert_eq!(fields("fn route(t) { let f = || t; f.call() }"), None);
        assert_eq!(fields("fn other(t) { 1 }"), None);
    }

    fn reads(source: &str) -> bool {
        let engine = crate::scripting::ScriptEngine::new(&Default::default());
        let ast = engine.compile("t", "t.rhai", source).unwrap();
        reads_parameter(&ast, "criteria", 1)
    }

    #[test]
    fn finds_every_way_of_naming_the_parameter() {
        assert!(!reads(
            "fn criteria(task) { [#{ id: \"a\", kind: \"boolean\" }] }"
        ));
        assert!(!reads("fn criteria(t) { let x = 1; [#{ id: `q${x}` }] }"));
        assert!(reads("fn criteria(task) { [#{ id: task.data.kind }] }"));
        assert!(reads("fn criteria(task) { let n = task; [n] }"));
        assert!(reads(
            "fn criteria(task) { if task.meta.x == 1 { [] } else { [1] } }"
        ));
        assert!(reads(
            "fn criteria(task) { helper(task) } fn helper(t) { [t] }"
        ));
        assert!(reads("fn criteria(task) { `${task.id}` }"));
        assert!(reads(
            "fn criteria(task) { let f = |x| task.id + x; [f.call(1)] }"
        ));
        assert!(reads("fn criteria(task) { [task[\"data\"]] }"));
        // A helper's own parameter of the same name is not the rubric's argument.
        assert!(!reads(
            "fn criteria(task) { helper(1) } fn helper(task) { [task] }"
        ));
        // No such function: assume it reads its argument.
        assert!(reads("fn other(task) { 1 }"));
        // The shipped pairwise rubric asks the same of every task.
        assert!(!reads(include_str!(
            "../../rubrics/pairwise_preference.rhai"
        )));
    }
}
