//! Calling a rubric's entry points (`criteria`, `validate`, `score`, `grade`) and checking what
//! they return.

use rhai::Dynamic;
use serde_json::{Map, Value};

use super::schema::{parse_criteria, Criterion};
use super::validate::check_declarative;
use crate::domain::Task;
use crate::error::{FieldError, ScriptError};
use crate::scripting::{Plugin, ScriptEngine};

/// `task` as scripts see it: `#{id, external_id, data, meta, is_gold}`.
pub fn task_value(task: &Task) -> Value {
    serde_json::json!({
        "id": task.id,
        "external_id": task.external_id,
        "data": task.data,
        "meta": task.meta,
        "is_gold": task.gold.is_some(),
    })
}

pub fn to_dynamic(plugin: &Plugin, function: &str, v: &Value) -> Result<Dynamic, ScriptError> {
    rhai::serde::to_dynamic(v)
        .map_err(|e| ScriptError::contract(plugin, function, format!("cannot pass value: {e}")))
}

pub fn from_dynamic(plugin: &Plugin, function: &str, d: &Dynamic) -> Result<Value, ScriptError> {
    rhai::serde::from_dynamic::<Value>(d).map_err(|e| {
        ScriptError::contract(
            plugin,
            function,
            format!("returned a value that is not data: {e}"),
        )
    })
}

/// Calls `criteria(task)` and checks what it returned.
pub fn criteria(
    engine: &ScriptEngine,
    rubric: &Plugin,
    task: &Value,
) -> Result<Vec<Criterion>, ScriptError> {
    let out = engine.call(rubric, "criteria", (to_dynamic(rubric, "criteria", task)?,))?;
    parse_criteria(rubric, from_dynamic(rubric, "criteria", &out)?)
}

/// Calls `criteria` on a task with no content, at load: a result of the wrong shape is refused
/// then, not at every hand-out. A throw is let pass (the rubric may need the task's content).
pub fn probe_criteria(engine: &ScriptEngine, rubric: &Plugin) -> Result<(), ScriptError> {
    let probe = serde_json::json!({"id": 0, "data": {}, "meta": {}});
    let Ok(out) = engine.call(
        rubric,
        "criteria",
        (to_dynamic(rubric, "criteria", &probe)?,),
    ) else {
        return Ok(());
    };
    parse_criteria(rubric, from_dynamic(rubric, "criteria", &out)?)
        .map(|_| ())
        .map_err(|e| ScriptError {
            message: format!("on a task with no content: {}", e.message),
            ..e
        })
}

/// The outcome of checking an answer.
pub enum Checked {
    Valid { scores: Value },
    Invalid(Vec<FieldError>),
}

/// Full validation of an answer: declarative rules, then the script's `validate`, then `score`.
pub fn check_answer(
    engine: &ScriptEngine,
    rubric: &Plugin,
    task: &Task,
    answer: &Value,
) -> Result<Checked, ScriptError> {
    let criteria = criteria(engine, rubric, &task_value(task))?;
    check_answer_with(engine, rubric, Some(task), &criteria, answer)
}

/// Whether checking an answer against these criteria needs the task itself; when it does not
/// (and the task is not gold, which `grade` would need), [`check_answer_with`] may be given
/// `None`, and the caller need not read the task at all.
pub fn checks_need_task(rubric: &Plugin, criteria: &[Criterion]) -> bool {
    rubric.checks_read_task || criteria.iter().any(Criterion::reads_task_data)
}

/// [`check_answer`] with the task's criteria already at hand (see `Registry::criteria`).
/// `task`: `None` only for a task that is not gold, when [`checks_need_task`] says no.
pub fn check_answer_with(
    engine: &ScriptEngine,
    rubric: &Plugin,
    task: Option<&Task>,
    criteria: &[Criterion],
    answer: &Value,
) -> Result<Checked, ScriptError> {
    let data = task.map_or(&Value::Null, |t| &t.data);
    let mut errors = check_declarative(criteria, data, answer);
    if !errors.is_empty() {
        return Ok(Checked::Invalid(errors));
    }
    // Converting the task (a deep copy, then a Rhai map) is skipped when no check reads it.
    let task_dyn = match (rubric.checks_read_task, task) {
        (true, Some(task)) => to_dynamic(rubric, "validate", &task_value(task))?,
        (true, None) => {
            return Err(ScriptError::contract(
                rubric,
                "validate",
                "reads its task, which was not given",
            ))
        }
        (false, _) => Dynamic::UNIT,
    };
    let answer_dyn = to_dynamic(rubric, "validate", answer)?;
    if rubric.has_fn("validate", 2) {
        let out = engine.call(rubric, "validate", (task_dyn.clone(), answer_dyn.clone()))?;
        errors = parse_field_errors(rubric, &out)?;
        if !errors.is_empty() {
            return Ok(Checked::Invalid(errors));
        }
    }
    let mut scores = if rubric.has_fn("score", 2) {
        let out = engine.call(rubric, "score", (task_dyn, answer_dyn.clone()))?;
        let value = from_dynamic(rubric, "score", &out)?;
        match value {
            Value::Object(m) if m.values().all(Value::is_number) => m,
            Value::Null => Map::new(),
            _ => {
                return Err(ScriptError::contract(
                    rubric,
                    "score",
                    "must return a map of numbers",
                ))
            }
        }
    } else {
        Map::new()
    };
    // A gold task is graded against its gold answer; the grade is stored with the scores.
    let gold = task.and_then(|t| t.gold.as_ref());
    if let (Some(gold), true) = (gold, rubric.has_fn("grade", 2)) {
        let out = engine.call(
            rubric,
            "grade",
            (to_dynamic(rubric, "grade", gold)?, answer_dyn),
        )?;
        let grade = out
            .as_float()
            .ok()
            .or_else(|| out.as_int().ok().map(|i| i as f64))
            .filter(|g| (0.0..=1.0).contains(g))
            .ok_or_else(|| {
                ScriptError::contract(rubric, "grade", "must return a number from 0.0 to 1.0")
            })?;
        scores.insert("gold_grade".into(), serde_json::json!(grade));
    }
    let scores = Value::Object(scores);
    Ok(Checked::Valid { scores })
}

fn parse_field_errors(rubric: &Plugin, out: &Dynamic) -> Result<Vec<FieldError>, ScriptError> {
    if out.is_unit() {
        return Ok(Vec::new());
    }
    let value = from_dynamic(rubric, "validate", out)?;
    serde_json::from_value::<Vec<FieldError>>(value).map_err(|_| {
        ScriptError::contract(
            rubric,
            "validate",
            "must return an array of #{field, message}",
        )
    })
}
