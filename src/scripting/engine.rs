//! The one Rhai engine every plugin runs in, hardened: only the packages scripts need, no
//! `eval`, no module imports from disk, no clock, every size and depth limited, and a wall-clock
//! deadline enforced through `on_progress` (an operation limit alone does not bound time).
//! Rhai is built with `no_module`, so `import` does not exist and scripts cannot load files.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use rhai::packages::{
    BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage, BasicMathPackage,
    BasicStringPackage, CorePackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Position, Scope, AST};

use super::{Plugin, ScriptError};
use crate::config::ScriptingConfig;

thread_local! {
    /// Deadline of the script call running on this thread, if any.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Name of the plugin running on this thread, for `print` and `debug`.
    static RUNNING: RefCell<String> = const { RefCell::new(String::new()) };
}

pub struct ScriptEngine {
    engine: Engine,
    timeout: Duration,
    /// Calls that failed (errors, time-outs), for `/metrics`.
    pub failures: std::sync::atomic::AtomicU64,
}

impl ScriptEngine {
    pub fn new(limits: &ScriptingConfig) -> Self {
        let mut engine = Engine::new_raw();
        for module in [
            CorePackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
            BasicStringPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
            BasicIteratorPackage::new().as_shared_module(),
            BasicFnPackage::new().as_shared_module(),
        ] {
            engine.register_global_module(module);
        }
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_depth)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .disable_symbol("eval");
        engine.on_progress(|ops| {
            // Reading the clock on every operation would be costly; every 256th is enough.
            if ops % 256 != 0 {
                return None;
            }
            match DEADLINE.get() {
                Some(deadline) if Instant::now() >= deadline => Some(Dynamic::from("timeout")),
                _ => None,
            }
        });
        engine.on_print(|text| {
            RUNNING.with_borrow(|plugin| tracing::info!(plugin = %plugin, "print: {text}"))
        });
        engine.on_debug(|text, source, pos| {
            RUNNING.with_borrow(|plugin| {
                tracing::debug!(plugin = %plugin, source = source.unwrap_or(""), position = %pos, "debug: {text}")
            })
        });
        super::helpers::register(&mut engine);
        Self {
            engine,
            timeout: Duration::from_millis(limits.timeout_ms),
            failures: Default::default(),
        }
    }

    /// Compiles a script; errors carry file:line:col.
    pub fn compile(&self, plugin_name: &str, file: &str, source: &str) -> Result<AST, ScriptError> {
        let mut ast = self.engine.compile(source).map_err(|e| {
            let (line, column) = position(e.position());
            ScriptError {
                plugin: plugin_name.to_owned(),
                function: None,
                file: file.to_owned(),
                line,
                column,
                message: format!("syntax error: {}", e.err_type()),
                timed_out: false,
            }
        })?;
        ast.set_source(file);
        Ok(ast)
    }

    /// Calls a script function with a fresh scope, under the deadline. Top-level statements are
    /// not re-run (`eval_ast(false)`).
    pub fn call(
        &self,
        plugin: &Plugin,
        function: &str,
        args: impl FuncArgs,
    ) -> Result<Dynamic, ScriptError> {
        let _guard = RunningGuard::enter(&plugin.name, Instant::now() + self.timeout);
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(false);
        self.engine
            .call_fn_with_options::<Dynamic>(
                options,
                &mut Scope::new(),
                &plugin.ast,
                function,
                args,
            )
            .map_err(|e| {
                self.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.describe(plugin, function, *e)
            })
    }

    fn describe(&self, plugin: &Plugin, function: &str, err: EvalAltResult) -> ScriptError {
        // The innermost error has the useful position: unwrap nested function calls.
        let mut err = err;
        let mut outer_pos = err.position();
        while let EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) = err {
            if !pos.is_none() {
                outer_pos = pos;
            }
            err = *inner;
        }
        let pos = if err.position().is_none() {
            outer_pos
        } else {
            err.position()
        };
        let (line, column) = position(pos);
        let (message, timed_out) = match &err {
            EvalAltResult::ErrorTerminated(..) => (
                format!(
                    "ran longer than the {} ms time limit",
                    self.timeout.as_millis()
                ),
                true,
            ),
            EvalAltResult::ErrorTooManyOperations(..) => (
                "ran more operations than the configured limit".to_owned(),
                true,
            ),
            EvalAltResult::ErrorStackOverflow(..) => (
                "call stack too deep (recursion limit reached)".to_owned(),
                false,
            ),
            EvalAltResult::ErrorDataTooLarge(what, ..) => {
                (format!("{what} exceeds the configured size limit"), false)
            }
            EvalAltResult::ErrorFunctionNotFound(sig, ..) if sig.starts_with(function) => {
                (format!("function `{sig}` is not defined"), false)
            }
            other => (strip_position(&other.to_string()), false),
        };
        ScriptError {
            plugin: plugin.name.clone(),
            function: Some(function.to_owned()),
            file: plugin.file.clone(),
            line,
            column,
            message,
            timed_out,
        }
    }
}

/// Sets the thread's deadline and plugin name for one call and clears them afterwards.
struct RunningGuard;

impl RunningGuard {
    fn enter(plugin: &str, deadline: Instant) -> Self {
        DEADLINE.set(Some(deadline));
        RUNNING.with_borrow_mut(|name| {
            name.clear();
            name.push_str(plugin);
        });
        RunningGuard
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        DEADLINE.set(None);
    }
}

fn position(pos: Position) -> (Option<usize>, Option<usize>) {
    match (pos.line(), pos.position()) {
        (Some(line), col) => (Some(line), Some(col.unwrap_or(1))),
        _ => (None, None),
    }
}

/// Rhai appends " (line L, position P)" to messages; the position is reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripting::PluginKind;

    fn plugin(engine: &ScriptEngine, source: &str) -> Plugin {
        Plugin::new(
            "t",
            PluginKind::Rubric,
            "t.rhai".into(),
            "h".into(),
            source.into(),
            engine.compile("t", "t.rhai", source).unwrap(),
        )
    }

    #[test]
    fn the_deadline_stops_an_endless_loop() {
        let limits = ScriptingConfig {
            timeout_ms: 50,
            max_operations: u64::MAX,
            ..Default::default()
        };
        let engine = ScriptEngine::new(&limits);
        let p = plugin(&engine, "fn f() {\n  let n = 0;\n  loop { n += 1; }\n}\n");
        let started = Instant::now();
        let err = engine.call(&p, "f", ()).unwrap_err();
        assert!(err.timed_out, "{err}");
        assert_eq!(err.function.as_deref(), Some("f"));
        assert!(err.message.contains("50 ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn runtime_errors_carry_the_innermost_position() {
        let engine = ScriptEngine::new(&ScriptingConfig::default());
        let p = plugin(
            &engine,
            "fn inner() {\n  throw \"boom\";\n}\nfn f() {\n  inner()\n}\n",
        );
        let err = engine.call(&p, "f", ()).unwrap_err();
        assert_eq!((err.line, err.timed_out), (Some(2), false), "{err:?}");
        assert!(err.message.contains("boom"));
    }
}
