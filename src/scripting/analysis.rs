//! What can be learned from a compiled script without running it.

use rhai::{ASTNode, Expr, Position, AST};

/// Whether the script function `name` with `arity` parameters may read its first parameter.
/// `true` unless the function exists and its body never names that parameter: scripts cannot
/// reach a variable except by its name (`eval` is disabled, and a closure that captures the
/// parameter names it in the enclosing body), so a body that never names it computes the same
/// result for every argument. Conservative: a shadowing `let` of the same name also counts.
pub fn reads_parameter(ast: &AST, name: &str, arity: usize) -> bool {
    let Some(function) = ast
        .iter_fn_def()
        .find(|f| f.name == name && f.params.len() == arity)
    else {
        return true;
    };
    let Some(param) = function.params.first() else {
        return false;
    };
    // Functions do not nest, so the body's source range holds exactly its own nodes (and those
    // of closures written inside it, whose own parameters of that name count too: conservative).
    let at = |p: Position| p.line().zip(p.position());
    let (Some(start), Some(end)) = (
        at(function.body.start_position()),
        at(function.body.end_position()),
    ) else {
        return true;
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

#[cfg(test)]
mod tests {
    use super::*;

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
