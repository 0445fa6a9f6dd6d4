//! The hand-out index as a file, written at a clean stop so the next start need not scan the
//! store (1,000,000 open tasks take seconds to scan and well under one to read back).
//!
//! A snapshot is trusted only when it describes the store exactly as it is. A clean stop
//! writes the file, then records a random mark in the store (`Store::set_snapshot_mark`), as
//! the very last write. A start reads and removes the mark before anything changes; the file
//! is used only when its own mark is that one. So a snapshot from an earlier stop (the store
//! has changed since: its mark was consumed by the start after it), one left after a SIGKILL,
//! and a damaged file (the checksum fails) all fall back to the scan.
//!
//! Layout (integers big-endian): `ASSAYQS1`, mark u64, open-task count u64, lease count u64;
//! per open task: project u64, task u64, length u32, the `queue_codec` bytes of its status;
//! per lease: project u64, task u64, assignment u64, expert u64, expires_at i64; then the
//! CRC-32 of everything before it, u32.

use std::io::Write;
use std::path::Path;

use crate::domain::{Id, TaskStatus};
use crate::queue::Lease;
use crate::store::queue_codec;

const MAGIC: &[u8; 8] = b"ASSAYQS1";

#[derive(Debug)]
pub struct Snapshot {
    pub mark: u64,
    pub open: Vec<TaskStatus>,
    pub leases: Vec<(Id, Id, Lease)>,
}

/// Writes a snapshot durably (a temporary file, synced, then renamed over `path`).
pub fn write(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(32 + snapshot.open.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&snapshot.mark.to_be_bytes());
    out.extend_from_slice(&(snapshot.open.len() as u64).to_be_bytes());
    out.extend_from_slice(&(snapshot.leases.len() as u64).to_be_bytes());
    for status in &snapshot.open {
        let bytes = queue_codec::encode(status);
        out.extend_from_slice(&status.project_id.to_be_bytes());
        out.extend_from_slice(&status.task_id.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    for (project, task, lease) in &snapshot.leases {
        for n in [*project, *task, lease.assignment_id, lease.expert_id] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&lease.expires_at.to_be_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());

    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&out)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a snapshot; an error says why it cannot be used.
pub fn read(path: &Path) -> Result<Snapshot, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (body, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("the file is truncated")?;
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return Err("the checksum does not match (damaged or truncated)".into());
    }
    let mut r = Reader(body);
    if r.take::<8>() != Some(*MAGIC) {
        return Err("not a snapshot of this version".into());
    }
    let corrupt = || "the contents do not parse".to_owned();
    let mark = r.u64().ok_or_else(corrupt)?;
    let open_count = r.u64().ok_or_else(corrupt)? as usize;
    let lease_count = r.u64().ok_or_else(corrupt)? as usize;
    // The counts are checked against what is there before anything is allocated for them.
    if open_count > body.len() / 20 || lease_count > body.len() / 40 {
        return Err(corrupt());
    }
    let mut open = Vec::with_capacity(open_count);
    let mut decoder = queue_codec::Decoder::default();
    for _ in 0..open_count {
        let project = r.u64().ok_or_else(corrupt)?;
        let task = r.u64().ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(r.take().ok_or_else(corrupt)?) as usize;
        let status = r
            .bytes(len)
            .and_then(|b| decoder.decode(project, task, b))
            .ok_or_else(corrupt)?;
        open.push(status);
    }
    let mut leases = Vec::with_capacity(lease_count);
    for _ in 0..lease_count {
        let (project, task) = (r.u64().ok_or_else(corrupt)?, r.u64().ok_or_else(corrupt)?);
        let lease = Lease {
            assignment_id: r.u64().ok_or_else(corrupt)?,
            expert_id: r.u64().ok_or_else(corrupt)?,
            expires_at: r.u64().ok_or_else(corrupt)? as i64,
        };
        leases.push((project, task, lease));
    }
    if !r.0.is_empty() {
        return Err(corrupt());
    }
    Ok(Snapshot { mark, open, leases })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskState;

    fn status(project: Id, task: Id) -> TaskStatus {
        TaskStatus {
            task_id: task,
            project_id: project,
            state: TaskState::Open,
            pool: Some("med".into()),
            reviews: 3,
            priority: -2,
            estimate_minutes: Some(1.5),
            done_by: vec![4, 5],
            skipped_by: vec![6],
            router_version: Some("abc".into()),
            gold: true,
            qa: None,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.snapshot");
        let lease = Lease {
            assignment_id: 9,
            expert_id: 7,
            expires_at: 123,
        };
        let snapshot = Snapshot {
            mark: 42,
            open: vec![status(1, 10), status(2, 20)],
            leases: vec![(1, 10, lease.clone())],
        };
        write(&path, &snapshot).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.mark, 42);
        assert_eq!(back.open, snapshot.open);
        assert_eq!(back.leases, vec![(1, 10, lease)]);

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).unwrap_err().contains("checksum"));
        std::fs::write(&path, &bytes[..3]).unwrap();
        assert!(read(&path).is_err());
    }
}
