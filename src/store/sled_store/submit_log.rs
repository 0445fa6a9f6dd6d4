//! The submit log: what makes a batch of submissions durable without a sled flush.
//!
//! A sled flush waits for every log buffer written since the last one (a submit batch's
//! transaction writes two, each a synchronous page write on one of sled's I/O threads) and then
//! for an fdatasync. Instead, each committed batch is appended to this small file, and one write
//! and one fdatasync of it make the batch durable. Sled keeps writing its buffers in the
//! background, and its state stays the one that is read.
//!
//! Recovery relies on two things: a batch's sled transaction is atomic, and it records the
//! batch's sequence number (`meta/submit_log_seq`) along with its writes. At open, every logged
//! batch above the recorded number never reached sled's disk and is applied again, with the ids
//! and encodings it was first written with; then sled is flushed and the log emptied. It is also
//! emptied (after a flush) whenever it passes [`CHECKPOINT_BYTES`].
//!
//! Format: records of `len: u32 LE | crc32(seq ++ payload): u32 LE | seq: u64 LE | payload`. A
//! torn or damaged record ends the log: it was being written when the process stopped, so its
//! batch was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::store::{StoreError, StoreResult};

pub(super) const FILE_NAME: &str = "submit.log";

/// The log is emptied (after a sled flush) once it grows past this.
pub(super) const CHECKPOINT_BYTES: u64 = 64 << 20;

/// A record larger than this is damage, not data (a batch holds at most 256 submissions).
const MAX_RECORD: u32 = 256 << 20;

const HEADER: usize = 16;

/// A logged batch: its number and payload.
pub(super) type Record = (u64, Vec<u8>);

pub(super) struct SubmitLog {
    file: File,
    len: u64,
    /// The next batch's number (numbers only grow, also across an emptied log).
    pub next_seq: u64,
    /// Appended since the last sync.
    unsynced: bool,
    /// An append failed since the last checkpoint: the log cannot vouch for what sled holds,
    /// so the next sync flushes sled instead.
    pub broken: bool,
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("submit log: {e}"))
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

impl SubmitLog {
    /// Opens the log in `dir`, with the records it holds (in order), and cuts off a torn tail.
    pub fn open(dir: &Path) -> StoreResult<(Self, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))
            .map_err(io_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while let Some((seq, payload, next)) = Self::record_at(&bytes, at) {
            records.push((seq, payload.to_vec()));
            at = next;
        }
        if at < bytes.len() {
            tracing::warn!(
                kept = at,
                dropped = bytes.len() - at,
                "the submit log ends in a torn record; it was never acknowledged"
            );
            file.set_len(at as u64).map_err(io_error)?;
        }
        file.seek(SeekFrom::Start(at as u64)).map_err(io_error)?;
        let next_seq = records.last().map_or(1, |(seq, _)| seq + 1);
        let log = Self {
            file,
            len: at as u64,
            next_seq,
            unsynced: false,
            broken: false,
        };
        Ok((log, records))
    }

    fn record_at(bytes: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
        let header = bytes.get(at..at + HEADER)?;
        let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
        let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
        let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
        if len > MAX_RECORD {
            return None;
        }
        let end = at + HEADER + len as usize;
        let payload = bytes.get(at + HEADER..end)?;
        (checksum(seq, payload) == crc).then_some((seq, payload, end))
    }

    /// Appends one batch's record (not yet durable: see [`SubmitLog::sync`]).
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> StoreResult<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| StoreError::Backend("submit log: record too large".into()))?;
        let mut record = Vec::with_capacity(HEADER + payload.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&checksum(seq, payload).to_le_bytes());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(payload);
        if let Err(e) = self.file.write_all(&record) {
            self.broken = true;
            return Err(io_error(e));
        }
        self.len += record.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every appended record durable (`fsync`: with an fdatasync; without it, the write
    /// to the OS is all, as for sled's own flush under `storage.fsync = false`).
    pub fn sync(&mut self, fsync: bool) -> StoreResult<()> {
        if self.unsynced && fsync {
            self.file.sync_data().map_err(io_error)?;
        }
        self.unsynced = false;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Empties the log; the caller has made everything in it durable in sled first.
    pub fn clear(&mut self) -> StoreResult<()> {
        self.file.set_len(0).map_err(io_error)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        self.file.sync_all().map_err(io_error)?;
        self.len = 0;
        self.unsynced = false;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, records) = SubmitLog::open(dir.path()).unwrap();
            assert!(records.is_empty());
            assert_eq!(log.next_seq, 1);
            log.append(1, b"first").unwrap();
            log.append(2, b"second").unwrap();
            log.sync(true).unwrap();
        }
        // A third record torn half-way, as by a crash during its write.
        let path = dir.path().join(FILE_NAME);
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let (mut log, records) = SubmitLog::open(dir.path()).unwrap();
        assert_eq!(
            records,
            vec![(1, b"first".to_vec()), (2, b"second".to_vec())]
        );
        assert_eq!(log.next_seq, 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        // Appends go after the last whole record; a damaged byte ends the log there.
        log.append(3, b"third").unwrap();
        log.sync(true).unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let second_payload = bytes.len() - 5 - HEADER - 6 + 1;
        bytes[second_payload] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (log, records) = SubmitLog::open(dir.path()).unwrap();
        assert_eq!(records, vec![(1, b"first".to_vec())]);
        assert_eq!(log.next_seq, 2);
    }

    #[test]
    fn a_cleared_log_is_empty_and_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SubmitLog::open(dir.path()).unwrap();
        log.append(7, b"x").unwrap();
        log.clear().unwrap();
        assert_eq!(log.len(), 0);
        log.next_seq = 8;
        log.append(8, b"y").unwrap();
        drop(log);
        let (_, records) = SubmitLog::open(dir.path()).unwrap();
        assert_eq!(records, vec![(8, b"y".to_vec())]);
    }
}
