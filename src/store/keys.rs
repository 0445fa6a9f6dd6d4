//! Key codecs. Integers are big-endian so that sled's byte order is numeric order; composite
//! keys are fixed-width fields concatenated, with a variable-length field only at the end.

use crate::domain::Id;

pub fn id(id: Id) -> [u8; 8] {
    id.to_be_bytes()
}

/// `a ++ b`, both big-endian u64.
pub fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// `a ++ suffix`.
pub fn with_suffix(a: u64, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Reads the big-endian u64 at `offset`, if the key is long enough.
pub fn u64_at(key: &[u8], offset: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Timestamps are stored offset so that they sort correctly as unsigned big-endian bytes.
pub fn time(ms: i64) -> u64 {
    (ms as u64) ^ (1 << 63)
}

pub fn time_back(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// A key between `a` and `b` (`a <= result <= b` in byte order), for splitting a scan: both read
/// as 16-byte big-endian numbers (shorter keys padded with zeros), and their mean.
pub fn midpoint(a: &[u8], b: &[u8]) -> [u8; 16] {
    let number = |k: &[u8]| {
        let mut bytes = [0u8; 16];
        let n = k.len().min(16);
        bytes[..n].copy_from_slice(&k[..n]);
        u128::from_be_bytes(bytes)
    };
    let (a, b) = (number(a), number(b));
    (a / 2 + b / 2 + (a % 2 + b % 2) / 2).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_round_trips_and_sorts_numerically() {
        let k = pair(7, 300);
        assert_eq!(u64_at(&k, 0), Some(7));
        assert_eq!(u64_at(&k, 8), Some(300));
        assert!(pair(1, u64::MAX) < pair(2, 0));
        assert!(pair(2, 255) < pair(2, 256));
        assert_eq!(u64_at(&k, 9), None);
    }

    #[test]
    fn times_sort_and_round_trip_including_negative() {
        for t in [-5_i64, 0, 1, 1_700_000_000_000] {
            assert_eq!(time_back(time(t)), t);
        }
        assert!(time(-5).to_be_bytes() < time(0).to_be_bytes());
        assert!(time(10).to_be_bytes() < time(11).to_be_bytes());
    }

    #[test]
    fn suffix_keys_group_by_prefix() {
        let k = with_suffix(9, b"ext-1");
        assert_eq!(u64_at(&k, 0), Some(9));
        assert_eq!(&k[8..], b"ext-1");
    }

    #[test]
    fn midpoint_lies_between_its_ends() {
        let (a, b) = (pair(3, 10), pair(3, 1_000_010));
        let m = midpoint(&a, &b);
        assert!(a.as_slice() <= m.as_slice() && m.as_slice() <= b.as_slice());
        assert_eq!(m, pair(3, 500_010));
        assert_eq!(midpoint(&a, &a), a);
        let (lo, hi) = (pair(1, u64::MAX), pair(u64::MAX, u64::MAX));
        let m = midpoint(&lo, &hi);
        assert!(lo.as_slice() <= m.as_slice() && m.as_slice() <= hi.as_slice());
    }
}
