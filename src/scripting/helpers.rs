//! Functions every script may call, beyond Rhai's own string, array, map and math functions.
//! All of them run in time bounded by their inputs (which the engine's size limits bound), so
//! none can be used to get around the deadline.
//!
//! | function | returns |
//! |---|---|
//! | `char_count(s)` | characters (Unicode code points) in `s` |
//! | `word_count(s)` | whitespace-separated words in `s` |
//! | `diff(old, new)` | word diff: array of `#{op: "equal" \| "insert" \| "delete", text}` |
//! | `similarity(old, new)` | 0.0–1.0, how much of the text a word diff keeps |
//! | `glob_match(s, pattern)` | whether `s` matches `pattern` (`*` any run, `?` one character) |
//! | `contains_any(s, words)` | whether `s` contains any string of the array (case-insensitive) |

use std::time::Duration;

use rhai::{Array, Dynamic, Engine, Map};
use similar::{ChangeTag, TextDiff};

/// A diff of very long texts gives up and approximates rather than run long.
const DIFF_TIMEOUT: Duration = Duration::from_millis(50);

pub fn register(engine: &mut Engine) {
    engine.register_fn("char_count", |s: &str| s.chars().count() as i64);
    engine.register_fn("word_count", |s: &str| s.split_whitespace().count() as i64);
    engine.register_fn("diff", diff);
    engine.register_fn("similarity", similarity);
    engine.register_fn("glob_match", glob_match);
    engine.register_fn("contains_any", contains_any);
}

fn word_diff<'a>(old: &'a str, new: &'a str) -> TextDiff<'a, 'a, str> {
    TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_words(old, new)
}

pub fn diff(old: &str, new: &str) -> Array {
    let d = word_diff(old, new);
    let mut out: Array = Vec::new();
    let mut last: Option<(ChangeTag, String)> = None;
    let push = |tag: ChangeTag, text: String, out: &mut Array| {
        let op = match tag {
            ChangeTag::Equal => "equal",
            ChangeTag::Insert => "insert",
            ChangeTag::Delete => "delete",
        };
        let mut m = Map::new();
        m.insert("op".into(), Dynamic::from(op));
        m.insert("text".into(), Dynamic::from(text));
        out.push(Dynamic::from_map(m));
    };
    // Runs of the same operation are merged, so the result reads as phrases.
    for change in d.iter_all_changes() {
        let tag = change.tag();
        match &mut last {
            Some((t, text)) if *t == tag => text.push_str(change.value()),
            _ => {
                if let Some((t, text)) = last.take() {
                    push(t, text, &mut out);
                }
                last = Some((tag, change.value().to_owned()));
            }
        }
    }
    if let Some((t, text)) = last {
        push(t, text, &mut out);
    }
    out
}

pub fn similarity(old: &str, new: &str) -> f64 {
    f64::from(word_diff(old, new).ratio())
}

/// `*` matches any run of characters, `?` exactly one. Linear in practice (greedy with one
/// backtrack point), never worse than |s|·|pattern|.
pub fn glob_match(s: &str, pattern: &str) -> bool {
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), pattern.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && (p[j] == '?' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '*' {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    p[j..].iter().all(|&c| c == '*')
}

pub fn contains_any(s: &str, words: Array) -> bool {
    let lower = s.to_lowercase();
    words
        .iter()
        .filter_map(|w| w.clone().into_string().ok())
        .any(|w| !w.is_empty() && lower.contains(&w.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob_match("gpt-4o-mini", "gpt-*"));
        assert!(glob_match("abc", "a?c"));
        assert!(glob_match("", "*"));
        assert!(!glob_match("abc", "a?"));
        assert!(glob_match("aaaaaaaaaaaaaaaaaaab", "*a*a*a*a*b"));
        assert!(!glob_match("aaaaaaaaaaaaaaaaaaaa", "*a*a*a*a*b"));
    }

    #[test]
    fn diff_merges_runs_and_similarity_is_a_ratio() {
        let d = diff("the cat sat", "the dog sat");
        let ops: Vec<String> = d
            .iter()
            .map(|m| m.clone().cast::<Map>()["op"].clone().into_string().unwrap())
            .collect();
        assert_eq!(ops, vec!["equal", "delete", "insert", "equal"]);
        assert_eq!(similarity("same text", "same text"), 1.0);
        assert!(similarity("a b c d", "a b x y") < 1.0);
    }

    #[test]
    fn contains_any_ignores_case() {
        assert!(contains_any("See a DOCTOR", vec![Dynamic::from("doctor")]));
        assert!(!contains_any("fine", vec![Dynamic::from("")]));
    }
}
