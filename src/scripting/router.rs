//! The router contract: `route(task)` → `#{pool, reviews, priority, estimate_minutes}`, each
//! optional; what is left out comes from the project's settings.

use serde_json::Value;

use super::rubric::{from_dynamic, to_dynamic};
use super::{Plugin, ScriptEngine, ScriptError};
use crate::domain::{Project, Routing};

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
