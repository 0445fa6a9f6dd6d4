//! One import segment: a write-once file holding the tasks of one large import, so importing
//! them costs a sequential write instead of five store records per task (sled spends 4–8 µs on
//! each record, which caps an import near 20,000 tasks/s; see BENCHMARKS.md).
//!
//! A task never changes after import, and neither does a segment; what changes later (the
//! task's status) goes to the store, which wins over the status kept here. The file, integers
//! little-endian:
//! ```text
//! bodies     each task as its stored JSON (a serialized `Task`), in id order
//! statuses   each task's first status (`queue_codec`), in id order
//! tables     ids:            n × u64, strictly increasing
//!            body offsets:   (n + 1) × u64
//!            body CRC-32s:   n × u32
//!            status offsets: (n + 1) × u64
//!            external ids:   m × (u64 FNV-1a hash, u64 task id), sorted
//! footer     "ASSAYSG1", u32 version, u32 0, u64 project, u64 import, u64 n, u64 m,
//!            u64 where the tables start, u32 CRC-32 of the tables, u32 CRC-32 of the footer
//! ```
//! The tables are read into memory when the segment opens (about 44 bytes a task); a body is
//! read on demand and checked against its CRC.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::domain::{Id, TaskStatus};
use crate::store::{queue_codec, StoreError, StoreResult};

const MAGIC: &[u8; 8] = b"ASSAYSG1";
const VERSION: u32 = 1;
const FOOTER: usize = 64;

/// How much of a segment's bodies may sit in the page cache before its write-out is started.
/// Without it the kernel writes a large import only at the final sync (about 0.3 s for 230 MB
/// on a disk that writes 500 MB/s), after the parsing is done; started as the import goes, the
/// write overlaps the parsing and the final sync has little left to wait for.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// The hash external ids are filed under (stable across builds, unlike std's hasher).
pub(super) fn external_hash(external_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in external_id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("segment {}: {e}", path.display()))
}

fn corrupt(path: &Path, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: "segment",
        message: format!("{}: {}", path.display(), message.into()),
    }
}

/// A segment being written by an import, not yet visible to anything.
pub(super) struct SegmentWriter {
    pub project: Id,
    pub import: Id,
    path: PathBuf,
    bodies: BufWriter<File>,
    written: u64,
    /// Where the write-out of `bodies` was last started up to (see [`WRITEBACK_EVERY`]).
    writeback_from: u64,
    /// The statuses go to a file of their own until `finish` appends them.
    statuses: BufWriter<File>,
    statuses_path: PathBuf,
    statuses_written: u64,
    ids: Vec<Id>,
    body_offsets: Vec<u64>,
    body_crcs: Vec<u32>,
    status_offsets: Vec<u64>,
    externals: Vec<(u64, Id)>,
    /// External id hash → the first task filed under it (`externals` holds them all).
    external_index: std::collections::HashMap<u64, Id>,
}

impl SegmentWriter {
    pub fn create(dir: &Path, project: Id, import: Id) -> StoreResult<Self> {
        let path = dir.join(file_name(import));
        let statuses_path = dir.join(format!("{import:020}.statuses"));
        // Read as well as written: a hash match is checked against the task written.
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(|e| io(p, e))
        };
        Ok(Self {
            project,
            import,
            bodies: open(&path)?,
            statuses: open(&statuses_path)?,
            path,
            statuses_path,
            written: 0,
            writeback_from: 0,
            statuses_written: 0,
            ids: Vec::new(),
            body_offsets: vec![0],
            body_crcs: Vec::new(),
            status_offsets: vec![0],
            externals: Vec::new(),
            external_index: Default::default(),
        })
    }

    /// Appends one task (ids must grow).
    pub fn append(
        &mut self,
        id: Id,
        body: &[u8],
        status: &TaskStatus,
        external_id: Option<&str>,
    ) -> StoreResult<()> {
        if self.ids.last().is_some_and(|&last| last >= id) {
            return Err(StoreError::Backend("segment ids must grow".into()));
        }
        let status = queue_codec::encode(status);
        self.bodies.write_all(body).map_err(|e| io(&self.path, e))?;
        self.statuses
            .write_all(&status)
            .map_err(|e| io(&self.statuses_path, e))?;
        self.written += body.len() as u64;
        self.statuses_written += status.len() as u64;
        self.ids.push(id);
        self.body_offsets.push(self.written);
        self.body_crcs.push(crc32fast::hash(body));
        self.status_offsets.push(self.statuses_written);
        if let Some(x) = external_id {
            let hash = external_hash(x);
            self.externals.push((hash, id));
            self.external_index.entry(hash).or_insert(id);
        }
        self.start_writeback();
        Ok(())
    }

    /// Starts writing out the bodies the file holds so far, once [`WRITEBACK_EVERY`] bytes
    /// wait in the page cache. Only a hint that does not wait for the disk: durability still
    /// comes from the sync in [`Self::finish`], so a failure here is ignored.
    fn start_writeback(&mut self) {
        let in_file = self.written - self.bodies.buffer().len() as u64;
        if in_file - self.writeback_from < WRITEBACK_EVERY {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(from), Ok(len)) = (
                self.writeback_from.try_into(),
                (in_file - self.writeback_from).try_into(),
            ) else {
                return;
            };
            // SAFETY: a plain system call on a descriptor this writer owns; it reads no memory.
            unsafe {
                libc::sync_file_range(
                    self.bodies.get_ref().as_raw_fd(),
                    from,
                    len,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.writeback_from = in_file;
    }

    /// Tasks in it so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether a task written so far has this external id.
    pub fn has_external(&mut self, external_id: &str) -> StoreResult<bool> {
        let hash = external_hash(external_id);
        if !self.external_index.contains_key(&hash) {
            return Ok(false);
        }
        // A hash match: compare the ids themselves (rare, so the linear pass is fine).
        self.bodies.flush().map_err(|e| io(&self.path, e))?;
        let candidates: Vec<Id> = self
            .externals
            .iter()
            .filter(|(h, _)| *h == hash)
            .map(|&(_, id)| id)
            .collect();
        for id in candidates {
            let Ok(i) = self.ids.binary_search(&id) else {
                continue;
            };
            let body = read_body(
                self.bodies.get_ref(),
                &self.path,
                self.body_offsets[i],
                self.body_offsets[i + 1],
            )?;
            if stored_external_id(&self.path, &body)?.as_deref() == Some(external_id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Appends the statuses and tables, makes the file durable when `sync`, and opens it.
    pub fn finish(self, sync: bool) -> StoreResult<Segment> {
        let Self {
            project,
            import,
            path,
            bodies,
            written,
            statuses,
            statuses_path,
            ids,
            body_offsets,
            body_crcs,
            status_offsets,
            mut externals,
            ..
        } = self;
        let mut out = bodies;
        let statuses = statuses
            .into_inner()
            .map_err(|e| io(&statuses_path, e.into_error()))?;
        drop(statuses);
        let mut copied = File::open(&statuses_path).map_err(|e| io(&statuses_path, e))?;
        std::io::copy(&mut copied, &mut out).map_err(|e| io(&path, e))?;
        drop(copied);
        let _ = std::fs::remove_file(&statuses_path);
        externals.sort_unstable();

        let mut tables = Vec::with_capacity(ids.len() * 28 + externals.len() * 16 + 16);
        for id in &ids {
            tables.extend_from_slice(&id.to_le_bytes());
        }
        for o in &body_offsets {
            tables.extend_from_slice(&o.to_le_bytes());
        }
        for c in &body_crcs {
            tables.extend_from_slice(&c.to_le_bytes());
        }
        for o in &status_offsets {
            tables.extend_from_slice(&(o + written).to_le_bytes());
        }
        for (h, id) in &externals {
            tables.extend_from_slice(&h.to_le_bytes());
            tables.extend_from_slice(&id.to_le_bytes());
        }
        let tables_at = written + status_offsets.last().copied().unwrap_or(0);
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(MAGIC);
        footer.extend_from_slice(&VERSION.to_le_bytes());
        footer.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            project,
            import,
            ids.len() as u64,
            externals.len() as u64,
            tables_at,
        ] {
            footer.extend_from_slice(&v.to_le_bytes());
        }
        footer.extend_from_slice(&crc32fast::hash(&tables).to_le_bytes());
        let footer_crc = crc32fast::hash(&footer);
        footer.extend_from_slice(&footer_crc.to_le_bytes());
        out.write_all(&tables).map_err(|e| io(&path, e))?;
        out.write_all(&footer).map_err(|e| io(&path, e))?;
        let file = out.into_inner().map_err(|e| io(&path, e.into_error()))?;
        if sync {
            file.sync_data().map_err(|e| io(&path, e))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io(dir, e))?;
            }
        }
        drop(file);
        Segment::open(&path)
    }

    /// Removes what was written (an abandoned import).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.statuses_path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The file a segment of `import` is kept in.
pub(super) fn file_name(import: Id) -> String {
    format!("{import:020}.seg")
}

/// A published segment, its tables in memory.
pub(super) struct Segment {
    pub project: Id,
    pub import: Id,
    path: PathBuf,
    file: File,
    ids: Vec<Id>,
    body_offsets: Vec<u64>,
    body_crcs: Vec<u32>,
    status_offsets: Vec<u64>,
    externals: Vec<(u64, Id)>,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn read_body(file: &File, path: &Path, from: u64, to: u64) -> StoreResult<Vec<u8>> {
    let len = usize::try_from(to.saturating_sub(from)).map_err(|_| corrupt(path, "huge body"))?;
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, from)
        .map_err(|e| io(path, e))?;
    Ok(body)
}

fn stored_external_id(path: &Path, body: &[u8]) -> StoreResult<Option<String>> {
    #[derive(serde::Deserialize)]
    struct External {
        #[serde(default)]
        external_id: Option<String>,
    }
    serde_json::from_slice::<External>(body)
        .map(|e| e.external_id)
        .map_err(|e| corrupt(path, format!("a task does not parse: {e}")))
}

impl Segment {
    /// Opens a finished segment, checking its footer and tables.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let size = file.metadata().map_err(|e| io(path, e))?.len();
        if size < FOOTER as u64 {
            return Err(corrupt(path, "shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, size - FOOTER as u64)
            .map_err(|e| io(path, e))?;
        if &footer[..8] != MAGIC || crc32fast::hash(&footer[..60]) != le_u32(&footer[60..]) {
            return Err(corrupt(path, "its footer is damaged"));
        }
        if le_u32(&footer[8..]) != VERSION {
            return Err(corrupt(path, "unknown segment version"));
        }
        let field = |i: usize| le_u64(&footer[16 + 8 * i..]);
        let (project, import, n, m, tables_at) = (field(0), field(1), field(2), field(3), field(4));
        let tables_len = size - FOOTER as u64 - tables_at.min(size - FOOTER as u64);
        let expected = n
            .checked_mul(28)
            .and_then(|v| v.checked_add(16))
            .and_then(|v| v.checked_add(m.checked_mul(16)?));
        if tables_at > size - FOOTER as u64 || expected != Some(tables_len) {
            return Err(corrupt(path, "its tables do not fit the file"));
        }
        let tables = read_body(&file, path, tables_at, tables_at + tables_len)?;
        if crc32fast::hash(&tables) != le_u32(&footer[56..]) {
            return Err(corrupt(path, "its tables are damaged"));
        }
        let n = n as usize;
        let m = m as usize;
        let mut at = 0;
        let mut take = |len: usize| {
            let part = &tables[at..at + len];
            at += len;
            part
        };
        let ids: Vec<Id> = take(n * 8).chunks_exact(8).map(le_u64).collect();
        let body_offsets: Vec<u64> = take((n + 1) * 8).chunks_exact(8).map(le_u64).collect();
        let body_crcs: Vec<u32> = take(n * 4).chunks_exact(4).map(le_u32).collect();
        let status_offsets: Vec<u64> = take((n + 1) * 8).chunks_exact(8).map(le_u64).collect();
        let externals: Vec<(u64, Id)> = take(m * 16)
            .chunks_exact(16)
            .map(|c| (le_u64(c), le_u64(&c[8..])))
            .collect();
        let increasing = |v: &[u64]| v.windows(2).all(|w| w[0] <= w[1]);
        if !ids.windows(2).all(|w| w[0] < w[1])
            || !increasing(&body_offsets)
            || !increasing(&status_offsets)
            || body_offsets.last() != status_offsets.first()
            || status_offsets.last() != Some(&tables_at)
        {
            return Err(corrupt(path, "its tables are out of order"));
        }
        Ok(Self {
            project,
            import,
            path: path.to_path_buf(),
            file,
            ids,
            body_offsets,
            body_crcs,
            status_offsets,
            externals,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ids(&self) -> &[Id] {
        &self.ids
    }

    /// Whether task `id` is in it (looked up in memory).
    pub fn contains(&self, id: Id) -> bool {
        self.position(id).is_some()
    }

    fn position(&self, id: Id) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    /// The bytes of task `i` between two of its offsets (`offsets[i]..offsets[i + 1]`).
    fn slot(&self, offsets: &[u64], i: usize) -> StoreResult<Vec<u8>> {
        read_body(&self.file, &self.path, offsets[i], offsets[i + 1])
    }

    /// A task's stored JSON, checked against its CRC; `None` when the task is not here.
    pub fn body(&self, id: Id) -> StoreResult<Option<Vec<u8>>> {
        let Some(i) = self.position(id) else {
            return Ok(None);
        };
        let body = self.slot(&self.body_offsets, i)?;
        if crc32fast::hash(&body) != self.body_crcs[i] {
            return Err(corrupt(&self.path, format!("task {id} is damaged")));
        }
        Ok(Some(body))
    }

    /// A task's first status; `None` when the task is not here.
    pub fn first_status(&self, id: Id) -> StoreResult<Option<TaskStatus>> {
        let Some(i) = self.position(id) else {
            return Ok(None);
        };
        let bytes = self.slot(&self.status_offsets, i)?;
        queue_codec::decode(self.project, id, &bytes)
            .map(Some)
            .ok_or_else(|| corrupt(&self.path, format!("the status of task {id} is damaged")))
    }

    /// Every first status, in id order, read in one pass; `keep` picks which to decode.
    pub fn first_statuses(&self, keep: &mut dyn FnMut(Id) -> bool) -> StoreResult<Vec<TaskStatus>> {
        let (Some(&from), Some(&to)) = (self.status_offsets.first(), self.status_offsets.last())
        else {
            return Ok(Vec::new());
        };
        let all = read_body(&self.file, &self.path, from, to)?;
        let mut out = Vec::new();
        let mut decoder = queue_codec::Decoder::default();
        for (i, &id) in self.ids.iter().enumerate() {
            if !keep(id) {
                continue;
            }
            let bytes = &all[(self.status_offsets[i] - from) as usize
                ..(self.status_offsets[i + 1] - from) as usize];
            out.push(decoder.decode(self.project, id, bytes).ok_or_else(|| {
                corrupt(&self.path, format!("the status of task {id} is damaged"))
            })?);
        }
        Ok(out)
    }

    /// Whether a task here has this external id.
    pub fn has_external(&self, external_id: &str) -> StoreResult<bool> {
        let hash = external_hash(external_id);
        let from = self.externals.partition_point(|&(h, _)| h < hash);
        for &(h, id) in &self.externals[from..] {
            if h != hash {
                break;
            }
            if let Some(body) = self.body(id)? {
                if stored_external_id(&self.path, &body)?.as_deref() == Some(external_id) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskState;

    fn status(id: Id) -> TaskStatus {
        TaskStatus {
            task_id: id,
            project_id: 7,
            state: TaskState::Open,
            pool: Some("clinical".into()),
            reviews: 2,
            priority: 1,
            estimate_minutes: None,
            done_by: Vec::new(),
            skipped_by: Vec::new(),
            router_version: None,
            gold: false,
            qa: None,
        }
    }

    fn write(dir: &Path) -> Segment {
        let mut w = SegmentWriter::create(dir, 7, 99).unwrap();
        for id in [10, 12, 15] {
            let body = format!(r#"{{"id":{id},"external_id":"x{id}","data":{{}}}}"#);
            w.append(id, body.as_bytes(), &status(id), Some(&format!("x{id}")))
                .unwrap();
        }
        assert!(w.has_external("x12").unwrap());
        assert!(!w.has_external("x13").unwrap());
        w.finish(false).unwrap()
    }

    #[test]
    fn a_written_segment_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let seg = write(dir.path());
        assert_eq!(seg.ids(), &[10, 12, 15]);
        assert!(seg.body(11).unwrap().is_none());
        let body = seg.body(12).unwrap().unwrap();
        assert!(String::from_utf8(body).unwrap().contains("\"x12\""));
        assert_eq!(seg.first_status(15).unwrap().unwrap().reviews, 2);
        assert_eq!(seg.first_statuses(&mut |id| id != 10).unwrap().len(), 2);
        assert!(seg.has_external("x15").unwrap());
        assert!(!seg.has_external("x16").unwrap());
        let reopened = Segment::open(seg.path()).unwrap();
        assert_eq!(reopened.ids(), seg.ids());
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let seg = write(dir.path());
        let path = seg.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        // A body byte: the task reads as damaged, the rest still opens.
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let seg = Segment::open(&path).unwrap();
        assert!(matches!(seg.body(10), Err(StoreError::Corrupt { .. })));
        // A cut-off file: refused.
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(Segment::open(&path).is_err());
    }
}
