//! The declarative checks of an answer against its criteria, in Rust: types, ranges, required
//! fields, lengths, spans inside their text.

use serde_json::Value;

use super::schema::*;
use crate::error::FieldError;

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
                // Only what a span is: nothing else rides along into storage and exports.
                let Some(keys) = span.as_object() else {
                    out.push(FieldError::new(at, "must be an object {start, end, label}"));
                    continue;
                };
                if let Some(extra) = keys.keys().find(|k| !SPAN_KEYS.contains(&k.as_str())) {
                    out.push(FieldError::new(
                        at,
                        format!(
                            "unknown key `{}`; a span has only start, end and label",
                            crate::text::truncate(extra, 64)
                        ),
                    ));
                    continue;
                }
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

/// The keys of a span answer.
const SPAN_KEYS: [&str; 3] = ["start", "end", "label"];

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
        assert!(!errors(&c, data.clone(), json!([{"start":0,"end":4,"label":"x"}])).is_empty());
        let extra = errors(
            &c,
            data.clone(),
            json!([{"start":0,"end":1,"label":"x","note":"y"}]),
        );
        assert!(extra[0].contains("unknown key `note`"), "{extra:?}");
        assert!(!errors(&c, data, json!(["0..1"])).is_empty());
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
