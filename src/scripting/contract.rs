//! A plugin's own `tests()` cases, run at load time (and by `assay check`) against the full
//! validation. A failing case keeps the previous version serving.
//!
//! Rubric cases: `#{task, answer, valid}` plus optional `scores` (a map of numbers that must
//! match). Router cases: `#{task, route}` where `route` lists the expected `pool`, `reviews`,
//! `priority` or `estimate_minutes`; or `#{task, submissions, on_submit}` where `on_submit` is
//! the expected action (`"complete"`, `"more"`, `"qa"`, `"adjudicate"`, or `()` for the
//! default) after the last of `submissions`. A case's `task` is
//! `#{data, meta?, external_id?, gold?}`.

use serde_json::Value;

use super::rubric::{self, from_dynamic, Checked};
use super::{router, Plugin, PluginKind, ScriptEngine, ScriptError};
use crate::domain::{Routing, Task};

/// Runs every case, all within the engine's tests budget; returns how many passed, or the first
/// failure.
pub fn run_tests(engine: &ScriptEngine, plugin: &Plugin) -> Result<usize, ScriptError> {
    if !plugin.has_fn("tests", 0) {
        return Ok(0);
    }
    engine.within_budget(engine.tests_budget, || run_cases(engine, plugin))
}

fn run_cases(engine: &ScriptEngine, plugin: &Plugin) -> Result<usize, ScriptError> {
    let out = engine.call(plugin, "tests", ())?;
    let fail = |i: usize, m: String| {
        ScriptError::contract(plugin, "tests", format!("case {}: {m}", i + 1))
    };
    let Value::Array(cases) = from_dynamic(plugin, "tests", &out)? else {
        return Err(ScriptError::contract(
            plugin,
            "tests",
            "must return an array of cases",
        ));
    };
    for (i, case) in cases.iter().enumerate() {
        let task = case_task(case).map_err(|m| fail(i, m))?;
        match plugin.kind {
            PluginKind::Rubric => {
                check_rubric_case(engine, plugin, &task, case).map_err(|m| fail(i, m))?
            }
            PluginKind::Router => {
                check_router_case(engine, plugin, &task, case).map_err(|m| fail(i, m))?
            }
        }
    }
    Ok(cases.len())
}

fn case_task(case: &Value) -> Result<Task, String> {
    let t = case.get("task").ok_or("needs a `task`")?;
    let data = t.get("data").cloned().ok_or("`task` needs `data`")?;
    Ok(Task {
        id: t.get("id").and_then(Value::as_u64).unwrap_or(0),
        project_id: 0,
        external_id: t
            .get("external_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        data,
        meta: t
            .get("meta")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({})),
        gold: t.get("gold").cloned(),
        created_at: 0,
    })
}

/// Script errors inside a case are reported as the case failing, with the script's message.
fn check_rubric_case(
    engine: &ScriptEngine,
    plugin: &Plugin,
    task: &Task,
    case: &Value,
) -> Result<(), String> {
    let answer = case.get("answer").ok_or("needs an `answer`")?;
    let valid = case
        .get("valid")
        .and_then(Value::as_bool)
        .ok_or("needs `valid: true | false`")?;
    match rubric::check_answer(engine, plugin, task, answer).map_err(|e| e.to_string())? {
        Checked::Valid { scores } => {
            if !valid {
                return Err("expected the answer to be rejected, but it was accepted".into());
            }
            if let Some(Value::Object(expected)) = case.get("scores") {
                for (k, v) in expected {
                    let got = scores.get(k).and_then(Value::as_f64);
                    if got
                        .zip(v.as_f64())
                        .is_none_or(|(g, e)| (g - e).abs() > 1e-9)
                    {
                        return Err(format!(
                            "expected score `{k}` = {v}, got {}",
                            got.map_or("none".into(), |g| g.to_string())
                        ));
                    }
                }
            }
            Ok(())
        }
        Checked::Invalid(errors) if valid => Err(format!(
            "expected the answer to be accepted, but: {}",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Checked::Invalid(_) => Ok(()),
    }
}

fn check_router_case(
    engine: &ScriptEngine,
    plugin: &Plugin,
    task: &Task,
    case: &Value,
) -> Result<(), String> {
    if let Some(expected) = case.get("on_submit") {
        return check_on_submit_case(engine, plugin, task, case, expected);
    }
    let Some(Value::Object(expected)) = case.get("route") else {
        return Err("needs `route` (the expected routing) or `on_submit`".into());
    };
    let defaults = Routing {
        reviews: 1,
        ..Default::default()
    };
    let got = router::route_with(engine, plugin, defaults, &rubric::task_value(task))
        .map_err(|e| e.to_string())?;
    let got = serde_json::to_value(&got).map_err(|e| e.to_string())?;
    for (k, v) in expected {
        if got.get(k) != Some(v) && !(v.is_null() && got.get(k).is_none()) {
            return Err(format!(
                "expected `{k}` = {v}, got {}",
                got.get(k).unwrap_or(&Value::Null)
            ));
        }
    }
    Ok(())
}

fn check_on_submit_case(
    engine: &ScriptEngine,
    plugin: &Plugin,
    task: &Task,
    case: &Value,
    expected: &Value,
) -> Result<(), String> {
    let Some(Value::Array(subs)) = case.get("submissions") else {
        return Err("an `on_submit` case needs `submissions`".into());
    };
    let last = subs.last().cloned().unwrap_or(Value::Null);
    let decision = router::on_submit(
        engine,
        plugin,
        &rubric::task_value(task),
        &last,
        &Value::Array(subs.clone()),
    )
    .map_err(|e| e.to_string())?;
    let got = match decision {
        router::Decision::Default => Value::Null,
        router::Decision::Complete => "complete".into(),
        router::Decision::More { .. } => "more".into(),
        router::Decision::Qa => "qa".into(),
        router::Decision::Adjudicate => "adjudicate".into(),
    };
    if &got != expected {
        return Err(format!("expected on_submit {expected}, got {got}"));
    }
    Ok(())
}
