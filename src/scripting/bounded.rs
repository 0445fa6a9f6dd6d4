//! Rhai functions that can build a value far over the size limits in one step, replaced by
//! versions that work out the result's size first and refuse before allocating. Rhai checks
//! sizes only after a native function returns: `s.replace("a", s)` on a 256 KB string would
//! allocate gigabytes first. Functions registered on the engine take precedence over the
//! packages', so scripts call these under the same names.

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, ImmutableString, NativeCallContext, Position, INT,
};

type Checked<T> = Result<T, Box<EvalAltResult>>;

fn too_large(what: &str) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorDataTooLarge(
        what.to_owned(),
        Position::NONE,
    ))
}

/// `string.replace(find, substitute)` in place, refused when the result would be over
/// `max_string_size`.
fn replace(
    ctx: &NativeCallContext,
    string: &mut ImmutableString,
    find: &str,
    with: &str,
) -> Checked<()> {
    if string.is_empty() || find.is_empty() {
        // Rust's `replace("")` inserts between every character: size it like any other.
        if find.is_empty() && !string.is_empty() {
            let grown = string
                .chars()
                .count()
                .saturating_add(1)
                .saturating_mul(with.len())
                .saturating_add(string.len());
            check_string(ctx, grown)?;
            *string = string.replace(find, with).into();
        }
        return Ok(());
    }
    if with.len() > find.len() {
        let hits = string.matches(find).count();
        let grown = string
            .len()
            .saturating_add(hits.saturating_mul(with.len() - find.len()));
        check_string(ctx, grown)?;
    }
    *string = string.replace(find, with).into();
    Ok(())
}

fn check_string(ctx: &NativeCallContext, len: usize) -> Checked<()> {
    let max = ctx.engine().max_string_size();
    if max > 0 && len > max {
        return Err(too_large("Length of string"));
    }
    Ok(())
}

/// Builds the pieces of a split once their count is known to fit `max_array_size`.
fn split_into<'a>(
    ctx: &NativeCallContext,
    pieces: usize,
    split: impl Iterator<Item = &'a str>,
) -> Checked<Array> {
    let max = ctx.engine().max_array_size();
    if max > 0 && pieces > max {
        return Err(too_large("Size of array/BLOB"));
    }
    Ok(split.map(|piece| Dynamic::from(piece.to_owned())).collect())
}

/// How many pieces `split(delimiter)` yields, at most `limit`.
fn piece_count(string: &str, delimiter: &str, limit: usize) -> usize {
    let count = if delimiter.is_empty() {
        // Rust yields an empty piece at each end and one per character.
        string.chars().count() + 2
    } else {
        string.matches(delimiter).count() + 1
    };
    count.min(limit)
}

fn segments(n: INT) -> usize {
    usize::try_from(n.max(1)).unwrap_or(usize::MAX)
}

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, with: &str| {
            replace(&ctx, s, find, with)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: &str, with: char| {
            replace(&ctx, s, find, with.encode_utf8(&mut [0; 4]))
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, with: &str| {
            replace(&ctx, s, find.encode_utf8(&mut [0; 4]), with)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, find: char, with: char| {
            replace(
                &ctx,
                s,
                find.encode_utf8(&mut [0; 4]),
                with.encode_utf8(&mut [0; 4]),
            )
        },
    );
    engine.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: &str| {
            split_into(&ctx, piece_count(s, d, usize::MAX), s.split(d))
        },
    );
    engine.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: char| {
            let d = d.encode_utf8(&mut [0; 4]).to_owned();
            split_into(&ctx, piece_count(s, &d, usize::MAX), s.split(d.as_str()))
        },
    );
    engine.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: &str, n: INT| {
            let n = segments(n);
            split_into(&ctx, piece_count(s, d, n), s.splitn(n, d))
        },
    );
    engine.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: char, n: INT| {
            let (d, n) = (d.encode_utf8(&mut [0; 4]).to_owned(), segments(n));
            split_into(&ctx, piece_count(s, &d, n), s.splitn(n, d.as_str()))
        },
    );
    engine.register_fn(
        "split_rev",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: &str| {
            split_into(&ctx, piece_count(s, d, usize::MAX), s.rsplit(d))
        },
    );
    engine.register_fn(
        "split_rev",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: char| {
            let d = d.encode_utf8(&mut [0; 4]).to_owned();
            split_into(&ctx, piece_count(s, &d, usize::MAX), s.rsplit(d.as_str()))
        },
    );
    engine.register_fn(
        "split_rev",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: &str, n: INT| {
            let n = segments(n);
            split_into(&ctx, piece_count(s, d, n), s.rsplitn(n, d))
        },
    );
    engine.register_fn(
        "split_rev",
        |ctx: NativeCallContext, s: &mut ImmutableString, d: char, n: INT| {
            let (d, n) = (d.encode_utf8(&mut [0; 4]).to_owned(), segments(n));
            split_into(&ctx, piece_count(s, &d, n), s.rsplitn(n, d.as_str()))
        },
    );
    engine.register_fn(
        "split",
        |ctx: NativeCallContext, s: &mut ImmutableString| {
            let pieces = s.split_whitespace().count();
            split_into(&ctx, pieces, s.split_whitespace())
        },
    );
    super::helpers::register(engine);
}
