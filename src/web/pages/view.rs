//! View models: what templates see of a task, a rubric's criteria and an answer. Templates get
//! plain data (strict mode: every field they name exists, `null` when unused); untrusted text is
//! passed through as text, escaped by the template or rendered by the sanitizing `markdown`
//! helper. The few HTML fragments built here escape every piece of task content themselves.

use serde_json::{json, Map, Value};

use crate::scripting::rubric::{item_ids, resolve, Criterion, Items, Kind};

/// Keys an option list gets when the rubric names none: a, b, c…
const OPTION_KEYS: &str = "abcdefghilmnopqrsuvwxz";

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(m) => m
            .get("text")
            .or_else(|| m.get("content"))
            .map(text_of)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

fn letter(i: usize) -> String {
    char::from_u32('A' as u32 + (i % 26) as u32)
        .map(String::from)
        .unwrap_or_default()
}

/// The task as the review page shows it, following the data conventions: `prompt` or chat
/// `messages`, `responses` side by side, numbered `steps`, collapsible `context` and
/// `reference`; anything else is shown as formatted JSON.
pub fn task_view(data: &Value, response_labels: &[String]) -> Value {
    let empty = Map::new();
    let obj = data.as_object().unwrap_or(&empty);
    let known = [
        "prompt",
        "question",
        "messages",
        "responses",
        "steps",
        "context",
        "reference",
    ];
    let prompt = obj
        .get("prompt")
        .or_else(|| obj.get("question"))
        .map(text_of);
    let messages = obj.get("messages").and_then(Value::as_array).map(|list| {
        list.iter()
            .map(|m| {
                json!({
                    "role": m.get("role").and_then(Value::as_str).unwrap_or("message"),
                    "content": m.get("content").map(text_of).unwrap_or_default(),
                })
            })
            .collect::<Vec<_>>()
    });
    let responses = obj.get("responses").and_then(Value::as_array).map(|list| {
        list.iter()
            .enumerate()
            .map(|(i, r)| {
                let label = response_labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("Response {}", letter(i)));
                json!({ "index": i, "label": label, "text": text_of(r) })
            })
            .collect::<Vec<_>>()
    });
    let steps = obj.get("steps").and_then(Value::as_array).map(|list| {
        list.iter()
            .enumerate()
            .map(|(i, s)| json!({ "n": i + 1, "text": text_of(s) }))
            .collect::<Vec<_>>()
    });
    let other: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let structured =
        prompt.is_some() || messages.is_some() || responses.is_some() || steps.is_some();
    json!({
        "prompt": prompt,
        "messages": messages,
        "responses": responses,
        "side_by_side": responses.as_ref().is_some_and(|r| r.len() >= 2),
        "steps": steps,
        "context": obj.get("context").map(text_of),
        "reference": obj.get("reference").map(text_of),
        "other": if !structured { Some(data.clone()) } else if other.is_empty() { None } else { Some(Value::Object(other)) },
    })
}

/// Response labels taken from the rubric's pairwise criterion (left, right), if it has one.
pub fn response_labels(criteria: &[Criterion]) -> Vec<String> {
    criteria
        .iter()
        .find_map(|c| match &c.kind {
            Kind::Pairwise { left, right, .. } => Some(vec![left.clone(), right.clone()]),
            _ => None,
        })
        .unwrap_or_default()
}

fn option_keys(shortcut: Option<&str>, count: usize) -> Vec<String> {
    // A rubric may name the option keys itself: `shortcut: "c/i"`.
    if let Some(keys) = shortcut.filter(|s| s.contains('/')) {
        let keys: Vec<String> = keys.split('/').map(|k| k.trim().to_lowercase()).collect();
        if keys.len() == count && keys.iter().all(|k| k.chars().count() == 1) {
            return keys;
        }
    }
    OPTION_KEYS
        .chars()
        .map(String::from)
        .chain(std::iter::repeat(String::new()))
        .take(count)
        .collect()
}

/// The criteria as the review form is built from them, one map per criterion with every key
/// present. `field` is the answer path the browser reports errors against (`steps.2`).
pub fn criteria_view(criteria: &[Criterion], data: &Value) -> Vec<Value> {
    criteria
        .iter()
        .enumerate()
        .map(|(i, c)| criterion_view(c, data, &c.id, i + 1))
        .collect()
}

fn criterion_view(c: &Criterion, data: &Value, field: &str, number: usize) -> Value {
    let jump = c
        .shortcut
        .as_deref()
        .filter(|s| s.chars().count() == 1)
        .map(str::to_lowercase);
    let mut v = json!({
        "id": c.id, "field": field, "number": number, "label": c.label, "help": c.help,
        "required": c.required, "key": jump, "kind": kind_name(&c.kind),
        "container": matches!(c.kind, Kind::PerItem { .. }),
        "partial": format!("kind_{}", kind_name(&c.kind)),
        "points": [], "options": [], "min": null, "max": null, "step": null,
        "left": null, "right": null, "ties": false, "strengths": [], "items": [],
        "source_text": null, "target_text": null, "labels": [], "per_item": [],
    });
    let Some(m) = v.as_object_mut() else {
        return v;
    };
    match &c.kind {
        Kind::Likert { min, max, labels } => {
            let direct = *min >= 0 && *max <= 9;
            let points: Vec<Value> = (*min..=*max)
                .enumerate()
                .map(|(i, value)| {
                    let key = if direct {
                        value.to_string()
                    } else if i < 9 {
                        (i + 1).to_string()
                    } else {
                        String::new()
                    };
                    json!({ "value": value, "label": labels.get(i), "key": key })
                })
                .collect();
            m.insert("points".into(), points.into());
            m.insert("min".into(), json!(min));
            m.insert("max".into(), json!(max));
        }
        Kind::Choice { options } | Kind::Multi { options, .. } => {
            let keys = option_keys(c.shortcut.as_deref(), options.len());
            let list: Vec<Value> = options
                .iter()
                .zip(keys)
                .enumerate()
                .map(|(i, (o, k))| json!({ "value": o, "key": k, "index": i }))
                .collect();
            m.insert("options".into(), list.into());
            if let Kind::Multi { min, max, .. } = &c.kind {
                m.insert("min".into(), json!(min));
                m.insert("max".into(), json!(max));
            }
            if c.shortcut.as_deref().is_some_and(|s| s.contains('/')) {
                m.insert("key".into(), Value::Null);
            }
        }
        Kind::Pairwise {
            left,
            right,
            ties,
            strength,
        } => {
            m.insert("left".into(), json!(left));
            m.insert("right".into(), json!(right));
            m.insert("ties".into(), json!(ties));
            m.insert(
                "strengths".into(),
                json!((1..=*strength).collect::<Vec<_>>()),
            );
        }
        Kind::Ranking { items } => {
            let list: Vec<Value> = match items {
                Items::List(ids) => ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| json!({ "id": id, "n": i + 1, "text": id }))
                    .collect(),
                Items::Path(path) => {
                    let values = resolve(data, path)
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    item_ids(&values)
                        .into_iter()
                        .zip(values.iter())
                        .enumerate()
                        .map(|(i, (id, value))| {
                            let text: String = text_of(value).chars().take(160).collect();
                            json!({ "id": id, "n": i + 1, "text": text })
                        })
                        .collect()
                }
            };
            m.insert("items".into(), list.into());
        }
        Kind::Number { min, max, step } => {
            m.insert("min".into(), json!(min));
            m.insert("max".into(), json!(max));
            m.insert("step".into(), json!(step.unwrap_or(1.0)));
        }
        Kind::Boolean => {}
        Kind::Text {
            min_chars,
            max_chars,
        } => {
            m.insert("min".into(), json!(min_chars));
            m.insert("max".into(), json!(max_chars));
        }
        Kind::Rewrite { source } => {
            let text = resolve(data, source).map(text_of).unwrap_or_default();
            m.insert("source_text".into(), json!(text));
        }
        Kind::Spans { target, labels } => {
            let text = resolve(data, target).map(text_of).unwrap_or_default();
            m.insert("target_text".into(), json!(text));
            let list: Vec<Value> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| json!({ "label": l, "key": if i < 9 { (i + 1).to_string() } else { String::new() } }))
                .collect();
            m.insert("labels".into(), list.into());
        }
        Kind::PerItem { over, item } => {
            let values = resolve(data, over)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let items: Vec<Value> = values
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    let inner = criterion_view(item, data, &format!("{field}.{i}"), i + 1);
                    json!({ "index": i, "n": i + 1, "text": text_of(value), "criterion": inner })
                })
                .collect();
            m.insert("per_item".into(), items.into());
        }
    }
    v
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Likert { .. } => "likert",
        Kind::Choice { .. } => "choice",
        Kind::Multi { .. } => "multi",
        Kind::Pairwise { .. } => "pairwise",
        Kind::Ranking { .. } => "ranking",
        Kind::Number { .. } => "number",
        Kind::Boolean => "boolean",
        Kind::Text { .. } => "text",
        Kind::Rewrite { .. } => "rewrite",
        Kind::Spans { .. } => "spans",
        Kind::PerItem { .. } => "per_item",
    }
}

fn esc(s: &str) -> String {
    handlebars::html_escape(s)
}

/// An answer shown read-only beside its task (lead pages): one entry per criterion with its
/// value as escaped HTML.
pub fn answer_view(criteria: &[Criterion], data: &Value, answer: &Value) -> Vec<Value> {
    criteria
        .iter()
        .map(|c| {
            let value = answer.get(&c.id).unwrap_or(&Value::Null);
            json!({ "label": c.label, "id": c.id, "html": value_html(c, data, value) })
        })
        .collect()
}

fn value_html(c: &Criterion, data: &Value, value: &Value) -> String {
    if value.is_null() {
        return "<span class=\"muted\">—</span>".into();
    }
    match (&c.kind, value) {
        (Kind::Pairwise { left, right, .. }, Value::Object(m)) => {
            let pick = m.get("pick").and_then(Value::as_str).unwrap_or("");
            let who = match pick {
                "left" => left.as_str(),
                "right" => right.as_str(),
                _ => "tie",
            };
            match m.get("strength").and_then(Value::as_i64) {
                Some(s) if pick != "tie" => format!("<strong>{}</strong>, strength {s}", esc(who)),
                _ => format!("<strong>{}</strong>", esc(who)),
            }
        }
        (Kind::Text { .. }, Value::String(s)) => {
            format!("<div class=\"prose-plain\">{}</div>", esc(s))
        }
        (Kind::Rewrite { source }, Value::String(new)) => {
            let old = resolve(data, source).map(text_of).unwrap_or_default();
            diff_html(&old, new)
        }
        (Kind::Spans { target, .. }, Value::Array(spans)) => {
            let text = resolve(data, target).map(text_of).unwrap_or_default();
            spans_html(&text, spans)
        }
        (Kind::PerItem { item, .. }, Value::Array(list)) => {
            let mut out = String::from("<ol class=\"per-item-answer\">");
            for v in list {
                out.push_str("<li>");
                out.push_str(&value_html(item, data, v));
                out.push_str("</li>");
            }
            out.push_str("</ol>");
            out
        }
        (_, Value::Array(list)) => list
            .iter()
            .map(|v| format!("<span class=\"tag\">{}</span>", esc(&text_of(v))))
            .collect::<Vec<_>>()
            .join(" "),
        (_, v) => format!("<strong>{}</strong>", esc(&text_of(v))),
    }
}

/// A word-level diff: deleted words in `<del>`, inserted in `<ins>`.
pub fn diff_html(old: &str, new: &str) -> String {
    use similar::{ChangeTag, TextDiff};
    let diff = TextDiff::from_words(old, new);
    let mut out = String::from("<div class=\"diff\">");
    for change in diff.iter_all_changes() {
        let text = esc(change.value());
        match change.tag() {
            ChangeTag::Equal => out.push_str(&text),
            ChangeTag::Delete => out.push_str(&format!("<del>{text}</del>")),
            ChangeTag::Insert => out.push_str(&format!("<ins>{text}</ins>")),
        }
    }
    out.push_str("</div>");
    out
}

/// The target text with each span wrapped in `<mark>` (offsets are code points).
pub fn spans_html(text: &str, spans: &[Value]) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut marks: Vec<(usize, usize, String)> = spans
        .iter()
        .filter_map(|s| {
            let start = s.get("start")?.as_u64()? as usize;
            let end = s.get("end")?.as_u64()? as usize;
            let label = s.get("label").map(text_of).unwrap_or_default();
            (start < end && end <= chars.len()).then_some((start, end, label))
        })
        .collect();
    marks.sort_by_key(|m| (m.0, m.1));
    let mut out = String::from("<div class=\"span-text\">");
    let mut at = 0;
    for (start, end, label) in marks {
        if start < at {
            continue; // overlapping spans are shown once
        }
        out.push_str(&esc(&chars[at..start].iter().collect::<String>()));
        out.push_str(&format!(
            "<mark data-label=\"{l}\" title=\"{l}\">{t}</mark>",
            l = esc(&label),
            t = esc(&chars[start..end].iter().collect::<String>())
        ));
        at = end;
    }
    out.push_str(&esc(&chars[at..].iter().collect::<String>()));
    out.push_str("</div>");
    out
}
