//! The compact binary form of a task's status in the open-task index (`queue_project_task`).
//! Start-up reads every entry of that index, and whatever it reads stays in sled's cache, so the
//! entry is kept small: the ids come from the key, the router version (a SHA-256 in hex) is
//! stored as its 32 bytes, numbers are fixed-width big-endian.
//!
//! Layout: tag `1` · state u8 · reviews u32 · priority i64 · flags u8 (gold, estimate, pool,
//! router, router-as-hash) · [estimate f64] · [pool: u16 length + bytes] · [router: 32 bytes,
//! or u16 length + bytes] · done_by: u32 count + ids · skipped_by: u32 count + ids.

use crate::domain::{Id, QaKind, TaskState, TaskStatus};

const TAG: u8 = 1;
const GOLD: u8 = 1;
const ESTIMATE: u8 = 2;
const POOL: u8 = 4;
const ROUTER: u8 = 8;
const ROUTER_HASH: u8 = 16;

/// The state, with what a task in QA waits for: 1 a verdict, 5 a final answer.
fn state_byte(s: TaskState, qa: Option<QaKind>) -> u8 {
    match s {
        TaskState::Open => 0,
        TaskState::InQa if qa == Some(QaKind::Adjudicate) => 5,
        TaskState::InQa => 1,
        TaskState::Complete => 2,
        TaskState::Archived => 3,
        TaskState::Broken => 4,
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn push_ids(out: &mut Vec<u8>, ids: &[Id]) {
    out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
}

pub fn encode(s: &TaskStatus) -> Vec<u8> {
    // Kept as 32 raw bytes only when the text is what decoding them gives back (lowercase hex),
    // so a version always reads back exactly as it was written.
    let hash = s
        .router_version
        .as_deref()
        .filter(|v| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|v| {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(v, &mut raw).ok().map(|()| raw)
        });
    let mut flags = 0;
    flags |= if s.gold { GOLD } else { 0 };
    flags |= if s.estimate_minutes.is_some() {
        ESTIMATE
    } else {
        0
    };
    flags |= if s.pool.is_some() { POOL } else { 0 };
    flags |= if s.router_version.is_some() {
        ROUTER
    } else {
        0
    };
    flags |= if hash.is_some() { ROUTER_HASH } else { 0 };
    let mut out = Vec::with_capacity(64 + 8 * (s.done_by.len() + s.skipped_by.len()));
    out.push(TAG);
    out.push(state_byte(s.state, s.qa));
    out.extend_from_slice(&s.reviews.to_be_bytes());
    out.extend_from_slice(&s.priority.to_be_bytes());
    out.push(flags);
    if let Some(e) = s.estimate_minutes {
        out.extend_from_slice(&e.to_be_bytes());
    }
    if let Some(pool) = &s.pool {
        push_str(&mut out, pool);
    }
    match (&hash, &s.router_version) {
        (Some(raw), _) => out.extend_from_slice(raw),
        (None, Some(v)) => push_str(&mut out, v),
        (None, None) => {}
    }
    push_ids(&mut out, &s.done_by);
    push_ids(&mut out, &s.skipped_by);
    out
}

/// Reads fixed-width fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.take()?) as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
    fn ids(&mut self) -> Option<Vec<Id>> {
        let n = u32::from_be_bytes(self.take()?) as usize;
        (0..n)
            .map(|_| self.take().map(u64::from_be_bytes))
            .collect()
    }
}

/// The status stored for task `task` of `project`; `None` when the bytes are not a valid entry.
pub fn decode(project: Id, task: Id, bytes: &[u8]) -> Option<TaskStatus> {
    Decoder::default().decode(project, task, bytes)
}

/// Decodes many entries (a start-up reads a million): the text of a router version is made
/// once and copied while the next entry has the same one, as most of a project's tasks do.
#[derive(Default)]
pub struct Decoder {
    router: Option<([u8; 32], String)>,
}

impl Decoder {
    fn router_hex(&mut self, raw: &[u8]) -> Option<String> {
        let raw: [u8; 32] = raw.try_into().ok()?;
        match &self.router {
            Some((last, text)) if *last == raw => Some(text.clone()),
            _ => Some(self.router.insert((raw, hex::encode(raw))).1.clone()),
        }
    }

    /// As [`decode`].
    pub fn decode(&mut self, project: Id, task: Id, bytes: &[u8]) -> Option<TaskStatus> {
        let mut r = Reader(bytes);
        if r.take::<1>()?[0] != TAG {
            return None;
        }
        let (state, qa) = match r.take::<1>()?[0] {
            0 => (TaskState::Open, None),
            1 => (TaskState::InQa, Some(QaKind::Qa)),
            2 => (TaskState::Complete, None),
            3 => (TaskState::Archived, None),
            4 => (TaskState::Broken, None),
            5 => (TaskState::InQa, Some(QaKind::Adjudicate)),
            _ => return None,
        };
        let reviews = u32::from_be_bytes(r.take()?);
        let priority = i64::from_be_bytes(r.take()?);
        let flags = r.take::<1>()?[0];
        let estimate_minutes = match flags & ESTIMATE {
            0 => None,
            _ => Some(f64::from_be_bytes(r.take()?)),
        };
        let pool = match flags & POOL {
            0 => None,
            _ => Some(r.string()?),
        };
        let router_version = match (flags & ROUTER, flags & ROUTER_HASH) {
            (0, _) => None,
            (_, 0) => Some(r.string()?),
            _ => Some(self.router_hex(r.bytes(32)?)?),
        };
        let done_by = r.ids()?;
        let skipped_by = r.ids()?;
        r.0.is_empty().then_some(TaskStatus {
            task_id: task,
            project_id: project,
            state,
            pool,
            reviews,
            priority,
            estimate_minutes,
            done_by,
            skipped_by,
            router_version,
            gold: flags & GOLD != 0,
            qa,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(router: Option<&str>, pool: Option<&str>) -> TaskStatus {
        TaskStatus {
            task_id: 7,
            project_id: 3,
            state: TaskState::Open,
            pool: pool.map(str::to_owned),
            reviews: 3,
            priority: -5,
            estimate_minutes: Some(2.5),
            done_by: vec![1, 2],
            skipped_by: vec![9],
            router_version: router.map(str::to_owned),
            gold: true,
            qa: None,
        }
    }

    #[test]
    fn every_field_round_trips() {
        let hash = "ab".repeat(32);
        for s in [
            status(Some(&hash), Some("cardiology")),
            status(Some("not-a-hash"), None),
            status(Some(&"AB".repeat(32)), None), // upper-case hex is kept as written
            status(Some(&"aB".repeat(32)), None),
            status(Some(&"ab".repeat(31)), None), // lowercase hex of another length
            status(Some(&"ab".repeat(33)), None),
            status(None, Some("")),
            TaskStatus {
                estimate_minutes: None,
                gold: false,
                done_by: vec![],
                skipped_by: vec![],
                ..status(None, None)
            },
        ] {
            let bytes = encode(&s);
            assert_eq!(decode(3, 7, &bytes), Some(s.clone()));
        }
        // One decoder over entries whose router versions repeat, change and come back.
        let other = "0f".repeat(32);
        let mut decoder = Decoder::default();
        for router in [&hash, &hash, &other, "not-a-hash", &other, &hash] {
            let s = status(Some(router), None);
            assert_eq!(decoder.decode(3, 7, &encode(&s)), Some(s));
        }
        let compact = encode(&status(Some(&hash), None));
        assert!(compact.len() < 90, "{} bytes", compact.len());
    }

    #[test]
    fn damaged_entries_are_refused() {
        let bytes = encode(&status(Some(&"cd".repeat(32)), Some("law")));
        for cut in 0..bytes.len() {
            assert_eq!(decode(3, 7, &bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(3, 7, &longer), None);
        assert_eq!(decode(3, 7, b"{\"task_id\":7}"), None);
    }
}
