//! The router contract: `route(task)` → `#{pool, reviews, priority, estimate_minutes}`, each
//! optional; what is left out comes from the project's settings.

use serde_json::Value;

use super::rubric::{from_dynamic, to_dynamic};
use super::{Plugin, ScriptEngine, ScriptError};
use crate::domain::{Project, QaKind, Routing, TaskState, TaskStatus};

/// Calls `route(task)` and merges its answer with the project's defaults.
pub fn route(
    engine: &ScriptEngine,
    router: &Plugin,
    project: &Project,
    task: &Value,
) -> Result<Routing, ScriptError> {
    let defaults = Routing {
        pool: None,
        reviews: project.reviews_per_task,
        priority: 0,
        estimate_minutes: project.estimate_minutes,
        router_version: Some(router.hash.clone()),
    };
    route_with(engine, router, defaults, task)
}

/// Calls `route(task)`; what the script leaves out keeps the value in `defaults`.
pub fn route_with(
    engine: &ScriptEngine,
    router: &Plugin,
    defaults: Routing,
    task: &Value,
) -> Result<Routing, ScriptError> {
    let out = engine.call(router, "route", (to_dynamic(router, "route", task)?,))?;
    let value = from_dynamic(router, "route", &out)?;
    let mut routing = defaults;
    let bad = |m: &str| ScriptError::contract(router, "route", m.to_owned());
    let map = match value {
        Value::Null => return Ok(routing),
        Value::Object(map) => map,
        _ => {
            return Err(bad(
                "must return a map #{pool, reviews, priority, estimate_minutes}",
            ))
        }
    };
    for (key, v) in map {
        match (key.as_str(), v) {
            (_, Value::Null) => {}
            ("pool", Value::String(s)) if s.is_empty() => {}
            ("pool", Value::String(s)) => routing.pool = Some(s),
            ("pool", _) => return Err(bad("`pool` must be a string")),
            ("reviews", Value::Number(n)) => match n.as_u64() {
                Some(r @ 1..=1000) => routing.reviews = r as u32,
                _ => return Err(bad("`reviews` must be a whole number from 1 to 1000")),
            },
            ("reviews", _) => return Err(bad("`reviews` must be a whole number")),
            ("priority", Value::Number(n)) => match n.as_i64() {
                Some(p) => routing.priority = p,
                None => return Err(bad("`priority` must be a whole number")),
            },
            ("priority", _) => return Err(bad("`priority` must be a whole number")),
            ("estimate_minutes", Value::Number(n)) => routing.estimate_minutes = n.as_f64(),
            ("estimate_minutes", _) => return Err(bad("`estimate_minutes` must be a number")),
            (other, _) => return Err(bad(&format!("unknown key `{other}` in the result"))),
        }
    }
    Ok(routing)
}

/// What `on_submit` decided about a task after a new submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No `on_submit`, or it returned nothing: complete once `reviews` submissions are in.
    Default,
    Complete,
    /// Ask for more reviews (a new total), optionally from another pool.
    More {
        reviews: u32,
        pool: Option<String>,
    },
    /// Send the task to QA: a reviewer's verdict on each unchecked submission.
    Qa,
    /// Send the task to a reviewer who picks or writes its final answer.
    Adjudicate,
}

impl Decision {
    /// Applies the decision to a task whose `done_by` already counts the new submission.
    /// `sampled`: the submission was drawn for QA (the project's `qa_rate`), so a task that
    /// would complete goes to QA instead.
    pub fn apply(&self, status: &mut TaskStatus, sampled: bool) {
        let done = status.done_by.len();
        status.qa = None;
        match self {
            Decision::Default if done >= status.reviews as usize => {
                status.state = TaskState::Complete
            }
            Decision::Default => status.state = TaskState::Open,
            Decision::Complete => status.state = TaskState::Complete,
            Decision::Qa => status.qa = Some(QaKind::Qa),
            Decision::Adjudicate => status.qa = Some(QaKind::Adjudicate),
            Decision::More { reviews, pool } => {
                status.reviews = (*reviews).max(done as u32 + 1);
                if pool.is_some() {
                    status.pool = pool.clone();
                }
                status.state = TaskState::Open;
            }
        }
        if sampled && status.state == TaskState::Complete {
            status.qa = Some(QaKind::Qa);
        }
        if status.qa.is_some() {
            status.state = TaskState::InQa;
        }
    }
}

/// Calls `on_submit(task, submission, submissions)`; `submissions` includes the new one.
pub fn on_submit(
    engine: &ScriptEngine,
    router: &Plugin,
    task: &Value,
    submission: &Value,
    submissions: &Value,
) -> Result<Decision, ScriptError> {
    let f = "on_submit";
    let args = (
        to_dynamic(router, f, task)?,
        to_dynamic(router, f, submission)?,
        to_dynamic(router, f, submissions)?,
    );
    let out = from_dynamic(router, f, &engine.call(router, f, args)?)?;
    decision(router, f, out)
}

/// Calls the optional `on_verdict(task, submission, verdict)` after a QA verdict; `Default`
/// when the router has none or returns nothing.
pub fn on_verdict(
    engine: &ScriptEngine,
    router: &Plugin,
    task: &Value,
    submission: &Value,
    verdict: &Value,
) -> Result<Decision, ScriptError> {
    let f = "on_verdict";
    if !router.has_fn(f, 3) {
        return Ok(Decision::Default);
    }
    let args = (
        to_dynamic(router, f, task)?,
        to_dynamic(router, f, submission)?,
        to_dynamic(router, f, verdict)?,
    );
    let out = from_dynamic(router, f, &engine.call(router, f, args)?)?;
    decision(router, f, out)
}

/// Reads `#{action, reviews, pool}`, what `on_submit` and `on_verdict` return.
fn decision(router: &Plugin, f: &str, out: Value) -> Result<Decision, ScriptError> {
    let bad = |m: &str| ScriptError::contract(router, f, m.to_owned());
    let map = match out {
        Value::Null => return Ok(Decision::Default),
        Value::Object(m) if m.is_empty() => return Ok(Decision::Default),
        Value::Object(m) => m,
        _ => return Err(bad("must return #{action, reviews, pool}")),
    };
    match map.get("action").and_then(Value::as_str) {
        Some("complete") => Ok(Decision::Complete),
        Some("qa") => Ok(Decision::Qa),
        Some("adjudicate") => Ok(Decision::Adjudicate),
        Some("more") => {
            let reviews = map
                .get("reviews")
                .and_then(Value::as_u64)
                .filter(|r| (1..=1000).contains(r))
                .ok_or_else(|| bad("`more` needs `reviews`: the new total, 1 to 1000"))?;
            let pool = match map.get("pool") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                Some(_) => return Err(bad("`pool` must be a string")),
            };
            Ok(Decision::More {
                reviews: reviews as u32,
                pool,
            })
        }
        _ => Err(bad(
            "`action` must be \"complete\", \"more\", \"qa\" or \"adjudicate\"",
        )),
    }
}

/// Calls `pick(expert, candidates)`: `Some(index)` of the chosen candidate, `None` for "none of
/// these" (the expert gets nothing now). An index out of range is a contract error.
pub fn pick(
    engine: &ScriptEngine,
    router: &Plugin,
    expert: &Value,
    candidates: &Value,
) -> Result<Option<usize>, ScriptError> {
    let f = "pick";
    let n = candidates.as_array().map_or(0, Vec::len);
    let args = (
        to_dynamic(router, f, expert)?,
        to_dynamic(router, f, candidates)?,
    );
    let out = engine.call(router, f, args)?;
    match out.as_int() {
        Ok(-1) => Ok(None),
        Ok(i) if i >= 0 && (i as usize) < n => Ok(Some(i as usize)),
        _ => {
            // A call that returned nonsense failed as much as one that threw.
            engine
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ScriptError::contract(
                router,
                f,
                format!(
                    "must return an index from 0 to {} or -1, got {out}",
                    n.saturating_sub(1)
                ),
            ))
        }
    }
}
