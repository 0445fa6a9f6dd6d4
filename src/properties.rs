//! Property tests over untrusted input (the suite's fuzzing): whatever bytes arrive, parsing,
//! validation, decoding and sanitizing return an answer and never panic, and round trips hold.
//! `PROPTEST_CASES` sets how many cases each property runs (256 by default); proptest keeps
//! the shrunk inputs of any failure in `proptest-regressions/`, replayed on every run.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::domain::{Assignment, AssignmentStatus, QaKind, TaskState, TaskStatus};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_status() -> impl Strategy<Value = TaskStatus> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            0u8..6,
            any::<u32>(),
            any::<i64>(),
        ),
        (
            prop::option::of(-1e9f64..1e9),
            prop::option::of(".{0,32}"),
            prop::option::of(prop_oneof!["[0-9a-f]{64}".boxed(), ".{0,70}".boxed()]),
            prop::collection::vec(any::<u64>(), 0..16),
            prop::collection::vec(any::<u64>(), 0..16),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (task_id, project_id, state, reviews, priority),
                (estimate, pool, router, done, skipped, gold),
            )| {
                TaskStatus {
                    task_id,
                    project_id,
                    state: match state {
                        0 => TaskState::Open,
                        1 | 5 => TaskState::InQa,
                        2 => TaskState::Complete,
                        3 => TaskState::Archived,
                        _ => TaskState::Broken,
                    },
                    pool,
                    reviews,
                    priority,
                    estimate_minutes: estimate,
                    done_by: done,
                    skipped_by: skipped,
                    router_version: router,
                    gold,
                    // A task in QA always says what for.
                    qa: match state {
                        1 => Some(QaKind::Qa),
                        5 => Some(QaKind::Adjudicate),
                        _ => None,
                    },
                }
            },
        )
}

/// The criteria of every kind, as a rubric would return them.
fn every_kind() -> Vec<crate::scripting::rubric::Criterion> {
    let specs = json!([
        {"id": "likert", "kind": "likert", "min": 1, "max": 5},
        {"id": "choice", "kind": "choice", "options": ["a", "b"]},
        {"id": "multi", "kind": "multi", "options": ["a", "b", "c"], "min": 1, "max": 2},
        {"id": "pair", "kind": "pairwise", "ties": true, "strength": 3},
        {"id": "rank", "kind": "ranking", "items": "responses"},
        {"id": "num", "kind": "number", "min": 0, "max": 10, "step": 0.5},
        {"id": "bool", "kind": "boolean"},
        {"id": "text", "kind": "text", "min_chars": 2, "max_chars": 50},
        {"id": "rewrite", "kind": "rewrite", "source": "responses.0.text"},
        {"id": "spans", "kind": "spans", "target": "responses.0.text", "labels": ["x"]},
        {"id": "each", "kind": "per_item", "over": "responses", "item": {"id": "ok", "kind": "boolean"}},
    ]);
    serde_json::from_value(specs).unwrap_or_default()
}

proptest! {
    #[test]
    fn import_parsing_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut seen = 0u64;
        let _ = crate::import::read_records(&bytes[..], &mut |pos, _| {
            seen += 1;
            assert_eq!(pos.record, seen);
        });
    }

    #[test]
    fn import_parsing_takes_any_json_in_every_format(records in prop::collection::vec(any_json(), 0..8)) {
        let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
        let array = Value::Array(records.clone()).to_string();
        let studio = Value::Array(records.iter().map(|r| json!({"data": r})).collect()).to_string();
        for upload in [lines, array, studio] {
            let mut n = 0u64;
            let counted = crate::import::read_records(upload.as_bytes(), &mut |_, _| n += 1);
            if let Ok(total) = counted {
                prop_assert_eq!(total, n);
            }
        }
    }

    #[test]
    fn every_criterion_kind_validates_any_answer(answer in any_json(), data in any_json()) {
        let criteria = every_kind();
        prop_assert_eq!(criteria.len(), 11);
        let task = json!({"responses": [{"text": "some text"}, {"text": "other"}], "extra": data});
        let _ = crate::scripting::rubric::check_declarative(&criteria, &task, &answer);
        let wrapped: serde_json::Map<String, Value> =
            criteria.iter().map(|c| (c.id.clone(), answer.clone())).collect();
        let _ = crate::scripting::rubric::check_declarative(&criteria, &task, &Value::Object(wrapped));
    }

    #[test]
    fn the_queue_codec_round_trips_and_refuses_garbage(
        status in any_status(),
        garbage in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let bytes = crate::store::queue_codec::encode(&status);
        let back = crate::store::queue_codec::decode(status.project_id, status.task_id, &bytes);
        prop_assert_eq!(back.as_ref(), Some(&status));
        let _ = crate::store::queue_codec::decode(1, 2, &garbage);
    }

    #[test]
    fn keys_keep_their_order_and_round_trip(a in any::<u64>(), b in any::<u64>(), t in any::<i64>(), u in any::<i64>()) {
        use crate::store::keys;
        prop_assert_eq!(keys::u64_at(&keys::pair(a, b), 0), Some(a));
        prop_assert_eq!(keys::u64_at(&keys::pair(a, b), 8), Some(b));
        prop_assert_eq!(keys::time_back(keys::time(t)), t);
        prop_assert_eq!(keys::time(t).cmp(&keys::time(u)), t.cmp(&u));
        prop_assert_eq!(keys::pair(a, b).cmp(&keys::pair(b, a)), (a, b).cmp(&(b, a)));
        let (lo, hi) = (keys::pair(a.min(b), 0), keys::pair(a.max(b), u64::MAX));
        let mid = keys::midpoint(&lo, &hi);
        prop_assert!(lo <= mid && mid <= hi);
        prop_assert_eq!(keys::u64_at(&[1, 2, 3], 0), None);
    }

    #[test]
    fn tokens_refuse_anything_but_their_own(text in ".{0,300}", flip in 0usize..400) {
        let keys = crate::auth::Keys::new(b"property-test-secret-property-test-secret", 1);
        prop_assert!(keys.verify_session(&text).is_none());
        prop_assert!(keys.verify_assignment(&text).is_none());
        let now = crate::now_ms();
        let a = Assignment {
            id: 9, task_id: 8, project_id: 7, expert_id: 6, status: AssignmentStatus::Active,
            served_at: now, expires_at: now + 3_600_000, last_seen_at: now, active_seconds: 0.0, fence: 5,
            rubric: "r".into(), rubric_version: "v".into(), router: "q".into(),
            router_version: "w".into(), submission_id: None, reason: None,
        };
        let token = keys.assignment(&a).map_err(TestCaseError::fail)?;
        prop_assert!(keys.verify_assignment(&token).is_some());
        // Any one changed character breaks it.
        let mut bytes = token.into_bytes();
        let at = flip % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(keys.verify_session(&tampered).is_none());
        prop_assert!(keys.verify_assignment(&tampered).is_none());
    }

    #[test]
    fn the_sanitizer_never_lets_active_or_app_like_content_through(
        text in ".{0,200}",
        tag in prop::sample::select(vec!["script", "img", "a", "div", "input", "form", "button", "iframe", "svg", "style", "object"]),
        attr in prop::sample::select(vec!["onerror", "onclick", "style", "class", "href", "src", "formaction"]),
        value in prop::sample::select(vec!["javascript:alert(1)", "/p/1/review", "data:text/html,x", "x", "JaVaScRiPt:x", "//evil.example/x"]),
    ) {
        let html = format!("{text}<{tag} {attr}=\"{value}\">{text}</{tag}>\n\n[{text}]({value})");
        let out = crate::web::pages::markdown::render(&html).to_ascii_lowercase();
        // Text is escaped, so a literal `<` opens a tag: only what is inside tags can act.
        for tag in out.split('<').skip(1).filter_map(|t| t.split('>').next()) {
            for banned in ["script", "iframe", "input", "form", "button", "object", "style", " on", "class=", "javascript:", "data:text", "/p/1/review", "//evil"] {
                prop_assert!(!tag.contains(banned), "`{}` in <{}> of {}", banned, tag, out);
            }
        }
    }
}
