//! The one Rhai engine every plugin runs in, hardened: only the packages scripts need, no
//! `eval`, no module imports from disk, no clock, every size and depth limited, and each call
//! bounded in wall-clock time and in memory through `on_progress` (an operation limit alone
//! bounds neither). Rhai is built with `no_module`, so `import` does not exist and scripts
//! cannot load files. Functions that could build an oversized value in one step are replaced by
//! checked ones (`bounded.rs`), and `print`/`debug` are truncated and rate-limited per plugin.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::packages::{
    BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage, BasicMathPackage,
    BasicStringPackage, CorePackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Position, Scope, AST};

use super::{Plugin, ScriptError};
use crate::config::ScriptingConfig;

/// The limits of the script call running on this thread.
#[derive(Clone, Copy)]
struct Running {
    deadline: Instant,
    /// Whether `deadline` is the total budget of several calls (`tests()`), not this call's.
    budget_ends_first: bool,
    /// The thread's allocation count when the call began (`memory::thread_held`).
    held_at_start: isize,
    /// The thread's CPU time when the call last paused to leave the CPU to others (see
    /// `LONG_CALL`); at first, at its first clock check (its 256th operation). Not read when
    /// the call begins: that is a system call, and most calls end before their first check.
    paused_at: Option<Duration>,
    /// Whether the call has run past `LONG_CALL`.
    long: bool,
}

/// A call that has used this much CPU is throttled: it runs in slices of `THROTTLE_RUN` (of
/// CPU), each waiting for its turn (see `next_slow_slot`), so scripts looping until their
/// deadlines share a fifth of a core, and cannot take the CPU from other projects' quick calls. Ordinary calls take
/// microseconds and never get here. CPU time, not wall time: a quick call that waited for a
/// core on a busy machine must not be slowed down further.
const LONG_CALL: Duration = Duration::from_millis(20);
const THROTTLE_RUN: Duration = Duration::from_millis(1);
const THROTTLE_PAUSE: Duration = Duration::from_millis(4);

/// When the next slice of a throttled call may start. Slices are handed out one after the
/// other, `THROTTLE_RUN + THROTTLE_PAUSE` apart, to every throttled call of the server
/// together: however many calls loop to their deadlines, in however many projects, they share
/// a fifth of one core, and quick calls keep the rest.
static NEXT_SLOW_SLOT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

fn next_slow_slot(now: Instant) -> Instant {
    let mut next = NEXT_SLOW_SLOT.lock().unwrap_or_else(|p| p.into_inner());
    let start = next.map_or(now, |n| n.max(now));
    *next = Some(start + THROTTLE_RUN + THROTTLE_PAUSE);
    start
}

thread_local! {
    static RUNNING: Cell<Option<Running>> = const { Cell::new(None) };
    /// A deadline over several calls, set by `ScriptEngine::within_budget`.
    static BUDGET: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Name of the plugin running on this thread, for `print` and `debug`.
    static PLUGIN: RefCell<String> = const { RefCell::new(String::new()) };
}

/// CPU time this thread has used (on Linux a system call: the vDSO serves no CPU clocks).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

/// Why `on_progress` stopped a call (the token of `ErrorTerminated`).
const STOP_TIMEOUT: &str = "timeout";
const STOP_BUDGET: &str = "budget";
const STOP_MEMORY: &str = "memory";

/// Whether the running call is past its deadline: helpers that loop call it, so no native
/// function outlives the deadline by much.
pub fn past_deadline() -> Result<(), Box<EvalAltResult>> {
    match RUNNING.get() {
        Some(r) if Instant::now() >= r.deadline => Err(Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(if r.budget_ends_first {
                STOP_BUDGET
            } else {
                STOP_TIMEOUT
            }),
            Position::NONE,
        ))),
        _ => Ok(()),
    }
}

/// The longest line a script may print; the rest is cut.
const MAX_PRINT_BYTES: usize = 1024;
/// Lines a plugin may print per second; more are counted and reported as dropped.
const PRINTS_PER_SECOND: u32 = 20;

/// Per-plugin print allowance: a fixed one-second window.
#[derive(Default)]
struct PrintLimiter {
    windows: Mutex<HashMap<String, PrintWindow>>,
    dropped: AtomicU64,
}

struct PrintWindow {
    started: Instant,
    printed: u32,
    dropped: u64,
}

impl PrintLimiter {
    /// Whether `plugin` may print now; when a new window opens, how many lines the last dropped.
    fn admit(&self, plugin: &str) -> (bool, u64) {
        let Ok(mut windows) = self.windows.lock() else {
            return (false, 0);
        };
        let now = Instant::now();
        let window = windows.entry(plugin.to_owned()).or_insert(PrintWindow {
            started: now,
            printed: 0,
            dropped: 0,
        });
        let mut reported = 0;
        if now.duration_since(window.started) >= Duration::from_secs(1) {
            reported = std::mem::take(&mut window.dropped);
            window.started = now;
            window.printed = 0;
        }
        if window.printed < PRINTS_PER_SECOND {
            window.printed += 1;
            (true, reported)
        } else {
            window.dropped += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            (false, reported)
        }
    }

    fn log(&self, text: &str, write: impl FnOnce(&str, &str)) {
        PLUGIN.with_borrow(|plugin| {
            let (admitted, dropped) = self.admit(plugin);
            if dropped > 0 {
                tracing::warn!(plugin = %plugin, "print: {dropped} lines dropped (over {PRINTS_PER_SECOND} per second)");
            }
            if admitted {
                write(plugin, crate::text::truncate(text, MAX_PRINT_BYTES));
            }
        })
    }
}

pub struct ScriptEngine {
    engine: Engine,
    timeout: Duration,
    max_memory_mb: usize,
    /// The total wall-clock time of a plugin's `tests()` cases.
    pub tests_budget: Duration,
    /// Calls that failed (errors, time-outs), for `/metrics`.
    pub failures: AtomicU64,
    prints: Arc<PrintLimiter>,
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
        let max_memory = (limits.max_memory_mb as isize).saturating_mul(1 << 20);
        engine.on_progress(move |ops| {
            let running = RUNNING.get()?;
            if crate::memory::thread_held().wrapping_sub(running.held_at_start) > max_memory {
                return Some(Dynamic::from(STOP_MEMORY));
            }
            // Reading the clock on every operation would be costly; every 256th is enough.
            if ops % 256 != 0 {
                return None;
            }
            let now = Instant::now();
            if now >= running.deadline {
                let why = if running.budget_ends_first {
                    STOP_BUDGET
                } else {
                    STOP_TIMEOUT
                };
                return Some(Dynamic::from(why));
            }
            let Some(paused_at) = running.paused_at else {
                RUNNING.set(Some(Running {
                    paused_at: Some(thread_cpu_time()),
                    ..running
                }));
                return None;
            };
            let ran = thread_cpu_time().saturating_sub(paused_at);
            if ran >= THROTTLE_RUN && (running.long || ran >= LONG_CALL) {
                let start = next_slow_slot(now);
                std::thread::sleep(start.min(running.deadline).saturating_duration_since(now));
                RUNNING.set(Some(Running {
                    paused_at: Some(thread_cpu_time()),
                    long: true,
                    ..running
                }));
            }
            None
        });
        let prints = Arc::new(PrintLimiter::default());
        let (printer, debugger) = (prints.clone(), prints.clone());
        engine.on_print(move |text| {
            printer.log(
                text,
                |plugin, text| tracing::info!(plugin = %plugin, "print: {text}"),
            )
        });
        engine.on_debug(move |text, source, pos| {
            debugger.log(text, |plugin, text| {
                tracing::debug!(plugin = %plugin, source = source.unwrap_or(""), position = %pos, "debug: {text}")
            })
        });
        super::bounded::register(&mut engine);
        super::helpers::register(&mut engine);
        Self {
            engine,
            timeout: Duration::from_millis(limits.timeout_ms),
            max_memory_mb: limits.max_memory_mb,
            tests_budget: Duration::from_millis(limits.tests_budget_ms),
            failures: Default::default(),
            prints,
        }
    }

    /// Lines of `print`/`debug` dropped for going over the per-plugin rate.
    pub fn prints_dropped(&self) -> u64 {
        self.prints.dropped.load(Ordering::Relaxed)
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

    /// Runs `f` with one deadline over every script call it makes (on this thread), besides
    /// each call's own: a plugin's `tests()` cases together get `budget`.
    pub fn within_budget<R>(&self, budget: Duration, f: impl FnOnce() -> R) -> R {
        let outer = BUDGET.replace(Some(Instant::now() + budget));
        let out = f();
        BUDGET.set(outer);
        out
    }

    /// Calls a script function with a fresh scope, under the deadline. Top-level statements are
    /// not re-run (`eval_ast(false)`).
    pub fn call(
        &self,
        plugin: &Plugin,
        function: &str,
        args: impl FuncArgs,
    ) -> Result<Dynamic, ScriptError> {
        let _guard = RunningGuard::enter(&plugin.name, self.timeout);
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
                self.failures.fetch_add(1, Ordering::Relaxed);
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
            EvalAltResult::ErrorTerminated(why, ..) if why.to_string() == STOP_MEMORY => (
                format!(
                    "allocated more than the {} MB memory limit",
                    self.max_memory_mb
                ),
                false,
            ),
            EvalAltResult::ErrorTerminated(why, ..) if why.to_string() == STOP_BUDGET => (
                "ran past the total time budget of its tests() cases".to_owned(),
                true,
            ),
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

/// Sets the thread's limits and plugin name for one call and restores the previous ones after.
struct RunningGuard {
    outer: Option<Running>,
}

impl RunningGuard {
    fn enter(plugin: &str, timeout: Duration) -> Self {
        let own = Instant::now() + timeout;
        let (deadline, budget_ends_first) = match BUDGET.get() {
            Some(budget) if budget < own => (budget, true),
            _ => (own, false),
        };
        let outer = RUNNING.replace(Some(Running {
            deadline,
            budget_ends_first,
            held_at_start: crate::memory::thread_held(),
            paused_at: None,
            long: false,
        }));
        PLUGIN.with_borrow_mut(|name| {
            name.clear();
            name.push_str(plugin);
        });
        RunningGuard { outer }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.set(self.outer);
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
