//! Criteria: the kinds a rubric can ask for, their definitions, and paths into a task's data.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ScriptError;
use crate::scripting::Plugin;

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
    /// Whether checking an answer to this criterion looks into the task's data (a list to rank
    /// or to answer item by item, a text to mark or to rewrite).
    pub fn reads_task_data(&self) -> bool {
        match &self.kind {
            Kind::Ranking { items } => matches!(items, Items::Path(_)),
            Kind::Rewrite { .. } | Kind::Spans { .. } | Kind::PerItem { .. } => true,
            Kind::Likert { .. }
            | Kind::Choice { .. }
            | Kind::Multi { .. }
            | Kind::Pairwise { .. }
            | Kind::Number { .. }
            | Kind::Boolean
            | Kind::Text { .. } => false,
        }
    }

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
