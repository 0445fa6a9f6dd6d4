//! Reading task uploads: a JSON array, JSON Lines, or Label Studio's task list
//! (`[{"data": {...}}]`). Records stream one at a time so memory does not grow with the file.
//! Each record is `{external_id?, data, meta?, gold?}` or a bare object taken as `data`.

use std::io::BufRead;

use std::collections::HashMap;

use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A record as uploaded, before routing. `data` stays the uploaded JSON text (checked to be an
/// object): it is stored as it came, and parsed only when a router reads it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub external_id: Option<String>,
    pub data: Box<RawValue>,
    pub meta: Value,
    pub gold: Option<Value>,
}

impl RawRecord {
    /// `data` parsed.
    pub fn data_value(&self) -> Value {
        // It parsed once already, as part of the record.
        serde_json::from_str(self.data.get()).unwrap_or(Value::Null)
    }
}

/// Where a record was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// 1-based index of the record.
    pub record: u64,
    /// 1-based line (JSON Lines only).
    pub line: Option<u64>,
}

/// A failure that stops reading altogether (the rest of the file cannot be parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct Fatal {
    pub line: Option<u64>,
    pub message: String,
}

/// Keys Label Studio puts beside `data` in its task exports; accepted and ignored.
const LABEL_STUDIO_KEYS: &[&str] = &[
    "id",
    "annotations",
    "predictions",
    "drafts",
    "created_at",
    "updated_at",
    "inner_id",
    "total_annotations",
    "cancelled_annotations",
    "total_predictions",
    "project",
    "file_upload",
    "comment_count",
    "unresolved_comment_count",
    "last_comment_updated_at",
    "updated_by",
    "is_labeled",
    "overlap",
    "comment_authors",
    "annotators",
];

const MAX_EXTERNAL_ID: usize = 256;

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

fn parse<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| e.to_string())
}

/// Turns one uploaded JSON value into a record, or says what is wrong with it.
pub fn to_record(raw: &RawValue) -> Result<RawRecord, String> {
    if !is_object(raw) {
        return Err("a record must be a JSON object".into());
    }
    let mut map: HashMap<String, Box<RawValue>> = parse(raw)?;
    if !map.contains_key("data") {
        return Ok(RawRecord {
            external_id: None,
            data: raw.to_owned(),
            meta: Value::Object(Map::new()),
            gold: None,
        });
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let known = ["external_id", "data", "meta", "gold"].contains(&key.as_str())
            || LABEL_STUDIO_KEYS.contains(&key.as_str());
        if !known {
            return Err(format!(
                "unknown field `{key}` (expected external_id, data, meta, gold)"
            ));
        }
    }
    let data = match map.remove("data") {
        Some(d) if is_object(&d) => d,
        _ => return Err("field `data` must be an object".into()),
    };
    let mut field = |name: &str| -> Result<Value, String> {
        map.remove(name).map_or(Ok(Value::Null), |raw| parse(&raw))
    };
    let external_id = match field("external_id")? {
        Value::Null => None,
        Value::String(s) if !s.is_empty() && s.len() <= MAX_EXTERNAL_ID => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => {
            return Err(format!(
                "field `external_id` must be a string of 1-{MAX_EXTERNAL_ID} bytes or a number"
            ))
        }
    };
    let meta = match field("meta")? {
        Value::Null => Value::Object(Map::new()),
        m @ Value::Object(_) => m,
        _ => return Err("field `meta` must be an object".into()),
    };
    let gold = match field("gold")? {
        Value::Null => None,
        g => Some(g),
    };
    Ok(RawRecord {
        external_id,
        data,
        meta,
        gold,
    })
}

/// Reads every record of an upload, calling `each` with its position and either the record or
/// what is wrong with it. Returns the number of records seen.
pub fn read_records(
    mut reader: impl BufRead,
    each: &mut dyn FnMut(Position, Result<RawRecord, String>),
) -> Result<u64, Fatal> {
    let first = loop {
        let buf = reader.fill_buf().map_err(|e| Fatal {
            line: None,
            message: e.to_string(),
        })?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            // Only the whitespace is consumed; the first byte stays for the parser.
            Some(i) => {
                let byte = buf[i];
                reader.consume(i);
                break Some(byte);
            }
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        None => Ok(0),
        Some(b'[') => read_array(reader, each),
        Some(_) => read_lines(reader, each),
    }
}

fn read_lines(
    mut reader: impl BufRead,
    each: &mut dyn FnMut(Position, Result<RawRecord, String>),
) -> Result<u64, Fatal> {
    let mut line = String::new();
    let (mut line_no, mut records) = (0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| Fatal {
            line: Some(line_no + 1),
            message: format!("cannot read: {e}"),
        })?;
        if n == 0 {
            return Ok(records);
        }
        line_no += 1;
        if line.trim().is_empty() {
            continue;
        }
        records += 1;
        let pos = Position {
            record: records,
            line: Some(line_no),
        };
        let parsed = serde_json::from_str::<&RawValue>(&line)
            .map_err(|e| format!("invalid JSON at column {}: {e}", e.column()))
            .and_then(to_record);
        each(pos, parsed);
    }
}

struct ArrayVisitor<'a> {
    each: &'a mut dyn FnMut(Position, Result<RawRecord, String>),
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of task records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut records = 0;
        while let Some(value) = seq.next_element::<Box<RawValue>>()? {
            records += 1;
            (self.each)(
                Position {
                    record: records,
                    line: None,
                },
                to_record(&value),
            );
        }
        Ok(records)
    }
}

fn read_array(
    reader: impl BufRead,
    each: &mut dyn FnMut(Position, Result<RawRecord, String>),
) -> Result<u64, Fatal> {
    let fatal = |e: serde_json::Error| Fatal {
        line: Some(e.line() as u64),
        message: format!(
            "invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ),
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let records = (&mut de)
        .deserialize_seq(ArrayVisitor { each })
        .map_err(fatal)?;
    de.end().map_err(fatal)?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Seen = Vec<(Position, Result<RawRecord, String>)>;

    fn read(text: &str) -> (Result<u64, Fatal>, Seen) {
        let mut seen = Vec::new();
        let r = read_records(text.as_bytes(), &mut |p, r| seen.push((p, r)));
        (r, seen)
    }

    #[test]
    fn reads_arrays_lines_and_label_studio_lists() {
        let (n, seen) =
            read(r#" [{"prompt": "a"}, {"data": {"prompt": "b"}, "id": 7, "annotations": []}] "#);
        assert_eq!(n, Ok(2));
        assert_eq!(
            seen[0].1.as_ref().unwrap().data_value(),
            json!({"prompt": "a"})
        );
        assert_eq!(
            seen[1].1.as_ref().unwrap().data_value(),
            json!({"prompt": "b"})
        );

        let (n, seen) = read("{\"external_id\": 5, \"data\": {\"x\": 1}}\n\n{\"y\": 2}\n");
        assert_eq!(n, Ok(2));
        assert_eq!(
            seen[0].1.as_ref().unwrap().external_id.as_deref(),
            Some("5")
        );
        assert_eq!(
            seen[1].0,
            Position {
                record: 2,
                line: Some(3)
            }
        );
    }

    #[test]
    fn reports_every_bad_line_and_wrong_types() {
        let (n, seen) =
            read("{\"a\":1}\n{oops\n{\"data\": \"text\"}\n[1]\n{\"data\":{},\"color\":1}\n");
        assert_eq!(n, Ok(5));
        let bad: Vec<_> = seen
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(p, _)| p.line)
            .collect();
        assert_eq!(bad, vec![Some(2), Some(3), Some(4), Some(5)]);
    }

    #[test]
    fn malformed_array_is_fatal_with_position() {
        let (r, _) = read("[{\"a\": 1},\n {\"b\": }]");
        let fatal = r.unwrap_err();
        assert_eq!(fatal.line, Some(2));
    }
}
