//! Functions every script may call, beyond Rhai's own string, array, map and math functions.
//! All of them run in time linear in their inputs (which the engine's size limits bound), or
//! check the deadline as they go, so none can be used to get around it.
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

use aho_corasick::AhoCorasick;
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};

use super::engine::past_deadline;
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

/// `*` matches any run of characters, `?` exactly one. The pattern is cut at each `*`; the
/// first piece must match at the start, the last at the end, and the ones between are found
/// left to right, each once: linear for pieces without `?` (the standard library's search),
/// and checked against the deadline otherwise.
pub fn glob_match(s: &str, pattern: &str) -> Result<bool, Box<EvalAltResult>> {
    let pieces: Vec<&str> = pattern.split('*').collect();
    let (first, last) = match pieces.as_slice() {
        [only] => return Ok(match_at(s, 0, only) == Some(s.len())),
        [first, .., last] => (*first, *last),
        [] => return Ok(s.is_empty()),
    };
    let Some(mut at) = match_at(s, 0, first) else {
        return Ok(false);
    };
    let Some(tail) = s
        .char_indices()
        .rev()
        .nth(last.chars().count().wrapping_sub(1))
        .map(|(i, _)| i)
        .or((last.is_empty()).then_some(s.len()))
    else {
        return Ok(false);
    };
    if tail < at || match_at(s, tail, last) != Some(s.len()) {
        return Ok(false);
    }
    for piece in &pieces[1..pieces.len() - 1] {
        match find_from(&s[..tail], at, piece)? {
            Some(end) => at = end,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Where `piece` (`?` = any one character) ends when matched at byte `start` of `s`.
fn match_at(s: &str, start: usize, piece: &str) -> Option<usize> {
    let mut rest = s[start..].char_indices();
    for p in piece.chars() {
        let (_, c) = rest.next()?;
        if p != '?' && p != c {
            return None;
        }
    }
    Some(rest.next().map_or(s.len(), |(i, _)| start + i))
}

/// Where the leftmost match of `piece` at or after byte `from` ends.
fn find_from(s: &str, from: usize, piece: &str) -> Result<Option<usize>, Box<EvalAltResult>> {
    if !piece.contains('?') {
        return Ok(s[from..].find(piece).map(|i| from + i + piece.len()));
    }
    for (n, (i, _)) in s[from..].char_indices().enumerate() {
        if n % 1024 == 0 {
            past_deadline()?;
        }
        if let Some(end) = match_at(s, from + i, piece) {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

/// One pass over `s` for all words (Aho-Corasick), so many words cost no more than one.
pub fn contains_any(s: &str, words: Array) -> Result<bool, Box<EvalAltResult>> {
    past_deadline()?;
    let words: Vec<String> = words
        .iter()
        .filter_map(|w| w.read_lock::<ImmutableString>().map(|w| w.to_lowercase()))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Ok(false);
    }
    let matcher = AhoCorasick::new(&words).map_err(|e| {
        Box::new(EvalAltResult::ErrorRuntime(
            Dynamic::from(format!("contains_any: {e}")),
            rhai::Position::NONE,
        ))
    })?;
    past_deadline()?;
    Ok(matcher.is_match(&s.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let glob = |s: &str, p: &str| glob_match(s, p).unwrap();
        assert!(glob("gpt-4o-mini", "gpt-*"));
        assert!(glob("abc", "a?c"));
        assert!(glob("", "*"));
        assert!(glob("", ""));
        assert!(!glob("a", ""));
        assert!(!glob("abc", "a?"));
        assert!(glob("aaaaaaaaaaaaaaaaaaab", "*a*a*a*a*b"));
        assert!(!glob("aaaaaaaaaaaaaaaaaaaa", "*a*a*a*a*b"));
        assert!(glob("héllo wörld", "h?llo*w?rld"));
        assert!(glob("abcabc", "*abc"));
        assert!(!glob("ab", "a*b*b"));
        assert!(glob("aXbYb", "a*b*b"));
        assert!(glob("ab", "a**b"));
        assert!(!glob("ab", "ab?*"));
        assert!(glob("abc", "?*?"));
        assert!(!glob("a", "?*?"));
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
        assert!(contains_any("See a DOCTOR", vec![Dynamic::from("doctor")]).unwrap());
        assert!(!contains_any("fine", vec![Dynamic::from("")]).unwrap());
        assert!(contains_any("x Ärzt", vec![Dynamic::from(1), Dynamic::from("äRZT")]).unwrap());
    }
}
