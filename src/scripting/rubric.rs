//! The rubric contract: `criteria(task)` declares what a review asks; the server checks every
//! declarative rule itself (types, ranges, required, lengths, spans inside their text); optional
//! `validate(task, answer)` adds cross-field rules and `score(task, answer)` computes numbers.

use rhai::Dynamic;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Plugin, ScriptEngine, ScriptError};
use crate::domain::Task;
use crate::error::FieldError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Criterion {
    pub id: String,
    #[serde(default)]
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<String>,
    #[serde(flatten)]
    pub kind: Kind,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    Likert {
        min: i64,
        max: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
    },
    Choice {
        options: Vec<String>,
    },
    Multi {
        options: Vec<String>,
        #[serde(default)]
        min: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<usize>,
    },
    Pairwise {
        #[serde(default = "left_label")]
        left: String,
        #[serde(default = "right_label")]
        right: String,
        #[serde(default)]
        ties: bool,
        #[serde(default)]
        strength: u32,
    },
    Ranking {
        items: Items,
    },
    Number {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<f64>,
    },
    Boolean,
    Text {
        #[serde(default)]
        min_chars: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_chars: Option<usize>,
    },
    Rewrite {
        source: String,
    },
    Spans {
        target: String,
        labels: Vec<String>,
    },
    PerItem {
        over: String,
        item: Box<Criterion>,
    },
}

fn left_label() -> String {
    "A".into()
}
fn right_label() -> String {
    "B".into()
}

/// Ranking items: a path to a list inside the task's data, or a literal list of ids.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Items {
    Path(String),
    List(Vec<String>),
}

/// The value at a dot-separated path inside `data` (`responses.0.text`).
pub fn resolve<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Ids of the items of a list: an element's `id` if it has one, else its index.
pub fn item_ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => i.to_string(),
        })
        .collect()
}

impl Criterion {
    /// Checks that a criterion definition makes sense (the script's fault if not).
    fn check_definition(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("a criterion needs a non-empty `id`".into());
        }
        let dup = |opts: &[String]| {
            let mut seen = std::collections::HashSet::new();
            opts.iter().find(|o| !seen.insert(o.as_str())).cloned()
        };
        match &self.kind {
            Kind::Likert { min, max, labels } => {
                if min >= max {
                    return Err(format!("likert `{}` needs min < max", self.id));
                }
                if !labels.is_empty() && labels.len() as i64 != max - min + 1 {
                    return Err(format!("likert `{}` needs one label per point", self.id));
                }
            }
            Kind::Choice { options } | Kind::Multi { options, .. } => {
                if options.is_empty() {
                    return Err(format!("`{}` needs at least one option", self.id));
                }
                if let Some(d) = dup(options) {
                    return Err(format!("`{}` lists option `{d}` twice", self.id));
                }
            }
            Kind::Spans { labels, .. } if labels.is_empty() => {
                return Err(format!("spans `{}` needs at least one label", self.id));
            }
            Kind::Number {
                min: Some(a),
                max: Some(b),
                ..
            } if a > b => {
                return Err(format!("number `{}` needs min <= max", self.id));
            }
            Kind::Number { step: Some(s), .. } if *s <= 0.0 => {
                return Err(format!("number `{}` needs a positive step", self.id));
            }
            Kind::PerItem { item, .. } => {
                if matches!(item.kind, Kind::PerItem { .. }) {
                    return Err(format!(
                        "per_item `{}` cannot nest another per_item",
                        self.id
                    ));
                }
                item.check_definition()?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Parses and checks what `criteria` returned.
pub fn parse_criteria(plugin: &Plugin, value: Value) -> Result<Vec<Criterion>, ScriptError> {
    let err = |m: String| ScriptError::contract(plugin, "criteria", m);
    let Value::Array(list) = value else {
        return Err(err("must return an array of criterion maps".into()));
    };
    let mut out: Vec<Criterion> = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let c: Criterion =
            serde_json::from_value(item).map_err(|e| err(format!("criterion {}: {e}", i + 1)))?;
        c.check_definition()
            .map_err(|m| err(format!("criterion {}: {m}", i + 1)))?;
        if out.iter().any(|o| o.id == c.id) {
            return Err(err(format!("criterion id `{}` is used twice", c.id)));
        }
        out.push(c);
    }
    Ok(out)
}

/// Checks an answer against the criteria, in Rust. Returns every problem found.
pub fn check_declarative(criteria: &[Criterion], data: &Value, answer: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Value::Object(answer) = answer else {
        errors.push(FieldError::new(
            "answer",
            "must be an object keyed by criterion id",
        ));
        return errors;
    };
    for key in answer.keys() {
        if !criteria.iter().any(|c| &c.id == key) {
            errors.push(FieldError::new(
                key.clone(),
                "is not a criterion of this rubric",
            ));
        }
    }
    for c in criteria {
        match answer.get(&c.id) {
            None | Some(Value::Null) => {
                if c.required {
                    errors.push(FieldError::new(c.id.clone(), "is required"));
                }
            }
            Some(value) => check_value(c, &c.id, data, value, &mut errors),
        }
    }
    errors
}

fn check_value(c: &Criterion, field: &str, data: &Value, v: &Value, out: &mut Vec<FieldError>) {
    let mut fail = |m: String| out.push(FieldError::new(field, m));
    match &c.kind {
        Kind::Likert { min, max, .. } => match as_integer(v) {
            Some(n) if (*min..=*max).contains(&n) => {}
            Some(n) => fail(format!("{n} is outside the scale {min}..{max}")),
            None => fail(format!("must be a whole number from {min} to {max}")),
        },
        Kind::Choice { options } => match v.as_str() {
            Some(s) if options.iter().any(|o| o == s) => {}
            Some(s) => fail(format!("`{s}` is not one of: {}", options.join(", "))),
            None => fail("must be one of the option strings".into()),
        },
        Kind::Multi { options, min, max } => {
            let Some(list) = v.as_array() else {
                return fail("must be an array of option strings".into());
            };
            let mut seen = std::collections::HashSet::new();
            for item in list {
                match item.as_str() {
                    Some(s) if !options.iter().any(|o| o == s) => {
                        fail(format!("`{s}` is not one of: {}", options.join(", ")))
                    }
                    Some(s) if !seen.insert(s) => fail(format!("`{s}` is chosen twice")),
                    Some(_) => {}
                    None => fail("must contain only option strings".into()),
                }
            }
            if list.len() < *min {
                fail(format!("choose at least {min}"));
            }
            if let Some(max) = max {
                if list.len() > *max {
                    fail(format!("choose at most {max}"));
                }
            }
        }
        Kind::Pairwise { ties, strength, .. } => {
            let Some(map) = v.as_object() else {
                return fail("must be an object {pick, strength}".into());
            };
            let pick = map.get("pick").and_then(Value::as_str);
            match pick {
                Some("left" | "right") => {}
                Some("tie") if *ties => {}
                Some("tie") => fail("ties are not allowed here".into()),
                _ => fail("`pick` must be \"left\" or \"right\"".into()),
            }
            match (map.get("strength"), *strength) {
                (None | Some(Value::Null), 0) => {}
                // A tie has no strength.
                (None | Some(Value::Null), _) if pick == Some("tie") => {}
                (Some(_), 0) => fail("`strength` is not asked here".into()),
                (s, levels) => match s.and_then(as_integer) {
                    Some(n) if (1..=i64::from(levels)).contains(&n) => {}
                    _ => fail(format!(
                        "`strength` must be a whole number from 1 to {levels}"
                    )),
                },
            }
            for key in map.keys() {
                if key != "pick" && key != "strength" {
                    fail(format!("unknown key `{key}`"));
                }
            }
        }
        Kind::Ranking { items } => {
            let ids = match items {
                Items::List(ids) => ids.clone(),
                Items::Path(path) => match resolve(data, path).and_then(Value::as_array) {
                    Some(list) => item_ids(list),
                    None => return fail(format!("the task has no list at `{path}` to rank")),
                },
            };
            let Some(list) = v.as_array() else {
                return fail("must be an array of item ids, best first".into());
            };
            let given: Vec<String> = list
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let mut sorted_given = given.clone();
            sorted_given.sort();
            let mut sorted_ids = ids.clone();
            sorted_ids.sort();
            if sorted_given != sorted_ids {
                fail(format!(
                    "must rank each of [{}] exactly once",
                    ids.join(", ")
                ));
            }
        }
        Kind::Number { min, max, step } => {
            let Some(n) = v.as_f64() else {
                return fail("must be a number".into());
            };
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                fail(format!(
                    "{n} is outside {}..{}",
                    min.map_or("".into(), |m| m.to_string()),
                    max.map_or("".into(), |m| m.to_string())
                ));
            }
            if let Some(step) = step {
                let k = (n - min.unwrap_or(0.0)) / step;
                if (k - k.round()).abs() > 1e-9 {
                    fail(format!("must be a multiple of {step}"));
                }
            }
        }
        Kind::Boolean => {
            if !v.is_boolean() {
                fail("must be true or false".into());
            }
        }
        Kind::Text {
            min_chars,
            max_chars,
        } => {
            let Some(s) = v.as_str() else {
                return fail("must be a string".into());
            };
            let n = s.chars().count();
            if c.required && s.trim().is_empty() {
                fail("is required".into());
            } else if n < *min_chars {
                fail(format!("needs at least {min_chars} characters, has {n}"));
            }
            if let Some(max) = max_chars {
                if n > *max {
                    fail(format!("allows at most {max} characters, has {n}"));
                }
            }
        }
        Kind::Rewrite { source } => {
            if resolve(data, source).and_then(Value::as_str).is_none() {
                return fail(format!("the task has no text at `{source}` to rewrite"));
            }
            match v.as_str() {
                Some(s) if c.required && s.trim().is_empty() => fail("is required".into()),
                Some(_) => {}
                None => fail("must be the edited text as a string".into()),
            }
        }
        Kind::Spans { target, labels } => {
            let Some(text) = resolve(data, target).and_then(Value::as_str) else {
                return fail(format!("the task has no text at `{target}` to mark"));
            };
            let len = text.chars().count() as i64;
            let Some(list) = v.as_array() else {
                return fail("must be an array of {start, end, label}".into());
            };
            for (i, span) in list.iter().enumerate() {
                let at = format!("{field}[{i}]");
                let start = span.get("start").and_then(as_integer);
                let end = span.get("end").and_then(as_integer);
                let label = span.get("label").and_then(Value::as_str);
                match (start, end) {
                    (Some(s), Some(e)) if 0 <= s && s < e && e <= len => {}
                    (Some(s), Some(e)) => out.push(FieldError::new(
                        at.clone(),
                        format!("span {s}..{e} is not inside the text (0..{len}) or is empty"),
                    )),
                    _ => out.push(FieldError::new(
                        at.clone(),
                        "needs whole-number `start` and `end`",
                    )),
                }
                match label {
                    Some(l) if labels.iter().any(|x| x == l) => {}
                    _ => out.push(FieldError::new(
                        at,
                        format!("`label` must be one of: {}", labels.join(", ")),
                    )),
                }
            }
        }
        Kind::PerItem { over, item } => {
            let Some(items) = resolve(data, over).and_then(Value::as_array) else {
                return fail(format!("the task has no list at `{over}`"));
            };
            let Some(list) = v.as_array() else {
                return fail(format!(
                    "must be an array with one value per item ({})",
                    items.len()
                ));
            };
            if list.len() != items.len() {
                return fail(format!(
                    "needs {} values, one per item, has {}",
                    items.len(),
                    list.len()
                ));
            }
            for (i, value) in list.iter().enumerate() {
                let at = format!("{field}[{i}]");
                if value.is_null() {
                    if item.required {
                        out.push(FieldError::new(at, "is required"));
                    }
                } else {
                    check_value(item, &at, data, value, out);
                }
            }
        }
    }
}

fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

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
    check_answer_with(engine, rubric, task, &criteria, answer)
}

/// [`check_answer`] with the task's criteria already at hand (see `Registry::criteria`).
pub fn check_answer_with(
    engine: &ScriptEngine,
    rubric: &Plugin,
    task: &Task,
    criteria: &[Criterion],
    answer: &Value,
) -> Result<Checked, ScriptError> {
    let task_json = task_value(task);
    let mut errors = check_declarative(criteria, &task.data, answer);
    if !errors.is_empty() {
        return Ok(Checked::Invalid(errors));
    }
    let task_dyn = to_dynamic(rubric, "validate", &task_json)?;
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
    if let (Some(gold), true) = (&task.gold, rubric.has_fn("grade", 2)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crit(v: Value) -> Criterion {
        serde_json::from_value(v).unwrap()
    }

    fn errors(c: &Criterion, data: Value, value: Value) -> Vec<String> {
        check_declarative(
            std::slice::from_ref(c),
            &data,
            &json!({ c.id.clone(): value }),
        )
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
    }

    #[test]
    fn every_kind_accepts_good_and_rejects_bad_answers() {
        let data = json!({"responses": [{"id": "a", "text": "héllo world"}, {"id": "b", "text": "x"}],
                          "steps": ["s1", "s2", "s3"]});
        let cases = vec![
            (
                json!({"id":"q","kind":"likert","min":1,"max":5}),
                json!(3),
                json!(6),
            ),
            (
                json!({"id":"q","kind":"choice","options":["yes","no"]}),
                json!("no"),
                json!("maybe"),
            ),
            (
                json!({"id":"q","kind":"multi","options":["a","b"],"min":1,"max":1}),
                json!(["a"]),
                json!(["a", "b"]),
            ),
            (
                json!({"id":"q","kind":"pairwise","strength":3}),
                json!({"pick":"left","strength":2}),
                json!({"pick":"tie","strength":2}),
            ),
            (
                json!({"id":"q","kind":"ranking","items":"responses"}),
                json!(["b", "a"]),
                json!(["a", "a"]),
            ),
            (
                json!({"id":"q","kind":"number","min":0,"max":10,"step":0.5}),
                json!(2.5),
                json!(2.3),
            ),
            (
                json!({"id":"q","kind":"boolean"}),
                json!(true),
                json!("true"),
            ),
            (
                json!({"id":"q","kind":"text","min_chars":3,"max_chars":5}),
                json!("abcé"),
                json!("ab"),
            ),
            (
                json!({"id":"q","kind":"rewrite","source":"responses.0.text"}),
                json!("better"),
                json!(7),
            ),
            (
                json!({"id":"q","kind":"spans","target":"responses.0.text","labels":["fabricated"]}),
                json!([{"start":0,"end":11,"label":"fabricated"}]),
                json!([{"start":5,"end":12,"label":"fabricated"}]),
            ),
            (
                json!({"id":"q","kind":"per_item","over":"steps","item":{"id":"ok","kind":"boolean"}}),
                json!([true, false, true]),
                json!([true, false]),
            ),
        ];
        for (def, good, bad) in cases {
            let c = crit(def.clone());
            assert!(
                errors(&c, data.clone(), good.clone()).is_empty(),
                "{def} should accept {good}"
            );
            assert!(
                !errors(&c, data.clone(), bad.clone()).is_empty(),
                "{def} should reject {bad}"
            );
        }
    }

    #[test]
    fn required_optional_and_unknown_fields() {
        let a = crit(json!({"id":"a","kind":"boolean"}));
        let b = crit(json!({"id":"b","kind":"text","required":false}));
        let errs = check_declarative(&[a, b], &json!({}), &json!({"c": 1, "b": null}));
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["c", "a"]);
    }

    #[test]
    fn span_offsets_count_code_points() {
        let c = crit(json!({"id":"s","kind":"spans","target":"t","labels":["x"]}));
        let data = json!({"t": "ééé"});
        assert!(errors(&c, data.clone(), json!([{"start":0,"end":3,"label":"x"}])).is_empty());
        assert!(!errors(&c, data, json!([{"start":0,"end":4,"label":"x"}])).is_empty());
    }

    #[test]
    fn paths_resolve_objects_and_list_indexes() {
        let data = json!({"responses": [{"text": "a"}, {"text": "b"}]});
        assert_eq!(resolve(&data, "responses.1.text"), Some(&json!("b")));
        assert_eq!(resolve(&data, "responses.2.text"), None);
        assert_eq!(
            item_ids(data["responses"].as_array().unwrap()),
            vec!["0", "1"]
        );
    }
}
