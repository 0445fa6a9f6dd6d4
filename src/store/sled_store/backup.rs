//! Backup and restore of the whole database.
//!
//! A backup is a consistent copy: it is written while the write gate is held, so every store
//! write (each takes the gate's shared side) happened wholly before it or wholly after it.
//! Reads go on meanwhile; writers wait for the copy, which goes to a local file, never to a
//! slow client (the web layer streams that file afterwards).
//!
//! The file, all integers big-endian:
//! ```text
//! "ASSAY-BACKUP\n"
//! u32 length, then the header as JSON: {format, schema_version, created_at, id_high_water}
//! per tree:  0x01, u32 name length, name; then per entry 0x02, u32 key length, key,
//!            u32 value length, value
//! 0x03, u64 number of entries
//! the SHA-256 of every byte before it (32 bytes)
//! ```
//! A restore checks the digest before the restored database is put in place: it writes a new
//! database beside the target and renames it into place only when every byte checked out.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tx::backend;
use super::{SledStore, SCHEMA_VERSION};
use crate::store::{StoreError, StoreResult};

const MAGIC: &[u8] = b"ASSAY-BACKUP\n";
const FORMAT: u32 = 1;
const TREE: u8 = 1;
const ENTRY: u8 = 2;
const END: u8 = 3;
/// The meta key holding the id offset a restored database starts its ids from.
pub(super) const ID_BASE: &[u8] = b"id_base";
/// Meta keys that describe one running database, not its data: never copied.
const LOCAL_META: &[&[u8]] = &[b"snapshot_mark"];
/// A header is a few hundred bytes; anything larger is not a backup.
const MAX_HEADER: u32 = 64 * 1024;
/// The largest key or value a backup can hold: far above any record the server writes (a
/// request body is capped well below), so a larger length can only be damage.
const MAX_FIELD: u32 = 256 << 20;

/// What a backup holds, written at its start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: u32,
    pub schema_version: u32,
    /// When it was taken (ms).
    pub created_at: i64,
    /// Every id in it is below this: a restored database starts its ids here.
    pub id_high_water: u64,
}

/// What a finished backup or restore reports.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub header: BackupHeader,
    pub trees: u64,
    pub entries: u64,
    pub bytes: u64,
    /// SHA-256 of the file's content before the digest (hex).
    pub sha256: String,
}

/// A writer that hashes and counts what passes through.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("backup: {e}"))
}

impl SledStore {
    /// Writes a consistent backup to `out`, holding the write gate for the copy.
    pub(super) fn write_backup(&self, out: &mut dyn Write) -> StoreResult<BackupSummary> {
        let _quiet = self.gate.write();
        // The backup holds the leases live now (their records are otherwise written lazily).
        self.live.write_to(&self.t.leases)?;
        let header = BackupHeader {
            format: FORMAT,
            schema_version: SCHEMA_VERSION,
            created_at: crate::now_ms(),
            id_high_water: self.next_id()?,
        };
        let mut w = Hashing {
            inner: BufWriter::with_capacity(1 << 20, out),
            hash: Sha256::new(),
            bytes: 0,
        };
        let json = serde_json::to_vec(&header).map_err(|e| StoreError::Backend(e.to_string()))?;
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&(json.len() as u32).to_be_bytes())
            .map_err(io)?;
        w.write_all(&json).map_err(io)?;
        let (mut trees, mut entries) = (0u64, 0u64);
        for name in self.db.tree_names() {
            // Segments are written below as the tree entries they stand for.
            if name.as_ref() == b"segments_import" {
                continue;
            }
            let tree = self.db.open_tree(&name).map_err(backend)?;
            let is_meta = name.as_ref() == b"meta";
            w.write_all(&[TREE]).map_err(io)?;
            put_bytes(&mut w, &name)?;
            trees += 1;
            for kv in tree.iter() {
                let (k, v) = kv.map_err(backend)?;
                if is_meta && (LOCAL_META.contains(&k.as_ref()) || k.as_ref() == ID_BASE) {
                    continue;
                }
                w.write_all(&[ENTRY]).map_err(io)?;
                put_bytes(&mut w, &k)?;
                put_bytes(&mut w, &v)?;
                entries += 1;
            }
            self.segment_entries(&name, &mut |k, v| {
                w.write_all(&[ENTRY]).map_err(io)?;
                put_bytes(&mut w, k)?;
                put_bytes(&mut w, v)?;
                entries += 1;
                Ok(())
            })?;
        }
        w.write_all(&[END]).map_err(io)?;
        w.write_all(&entries.to_be_bytes()).map_err(io)?;
        let digest = w.hash.clone().finalize();
        let bytes = w.bytes;
        w.inner.write_all(&digest).map_err(io)?;
        w.inner.flush().map_err(io)?;
        Ok(BackupSummary {
            header,
            trees,
            entries,
            bytes: bytes + digest.len() as u64,
            sha256: hex(&digest),
        })
    }
}

fn put_bytes(w: &mut impl Write, bytes: &[u8]) -> StoreResult<()> {
    w.write_all(&(bytes.len() as u32).to_be_bytes())
        .map_err(io)?;
    w.write_all(bytes).map_err(io)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that hashes what it reads.
struct Checked<R: Read> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

/// The file ends inside a record: it was cut off, or a damaged length points past its end.
const ENDS_INSIDE_A_RECORD: &str = "the backup is damaged or cut off: it ends inside a record";

/// Why a read stopped short: the file ends inside a record, or it cannot be read at all.
fn short_read(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ENDS_INSIDE_A_RECORD.into()
    } else {
        format!("the backup cannot be read: {e}")
    }
}

impl<R: Read> Checked<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.inner.read_exact(buf).map_err(short_read)?;
        self.hash.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }
    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    /// A length-prefixed field. The length is not trusted: the field is read as it arrives,
    /// so a damaged length costs at most what the file holds, never the 4 GiB it may claim.
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()?;
        if n > MAX_FIELD {
            return Err(format!(
                "the backup is damaged: a field claims {n} bytes (at most {MAX_FIELD})"
            ));
        }
        let mut v = Vec::with_capacity((n as usize).min(1 << 16));
        (&mut self.inner)
            .take(u64::from(n))
            .read_to_end(&mut v)
            .map_err(short_read)?;
        if v.len() != n as usize {
            return Err(ENDS_INSIDE_A_RECORD.into());
        }
        self.hash.update(&v);
        self.bytes += v.len() as u64;
        Ok(v)
    }
}

fn header<R: Read>(r: &mut Checked<R>) -> Result<BackupHeader, String> {
    let mut magic = [0u8; MAGIC.len()];
    if r.exact(&mut magic).is_err() || magic != MAGIC {
        return Err("this file is not an assay backup".into());
    }
    let len = r.u32()?;
    if len > MAX_HEADER {
        return Err("the backup's header is damaged".into());
    }
    let mut json = vec![0u8; len as usize];
    r.exact(&mut json)?;
    let header: BackupHeader = serde_json::from_slice(&json)
        .map_err(|e| format!("the backup's header is damaged: {e}"))?;
    if header.format != FORMAT {
        return Err(format!(
            "backup format {} is not supported (this build reads {FORMAT})",
            header.format
        ));
    }
    if header.schema_version > SCHEMA_VERSION {
        return Err(format!(
            "the backup holds schema {}, newer than this build's {SCHEMA_VERSION}: restore it with a newer assay",
            header.schema_version
        ));
    }
    Ok(header)
}

/// Restores a backup into `db_path`, which must not exist yet. The database is built beside it
/// and renamed into place only after the digest matched: a damaged or cut-off backup leaves
/// nothing behind. An older schema is upgraded when the server opens it.
pub fn restore(input: &mut dyn Read, db_path: &Path) -> Result<BackupSummary, String> {
    if db_path.exists() {
        return Err(format!(
            "{} exists: restore into a data folder without a database (move the old one away first)",
            db_path.display()
        ));
    }
    let staging = db_path.with_extension("restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| format!("cannot remove {}: {e}", staging.display()))?;
    }
    let result = restore_into(input, &staging);
    match result {
        Ok(summary) => {
            std::fs::rename(&staging, db_path)
                .map_err(|e| format!("cannot move the restored database into place: {e}"))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Reads a whole backup and checks it (structure, count, checksum) without restoring it.
pub fn verify(input: &mut dyn Read) -> Result<BackupSummary, String> {
    read_backup(input, &mut |_| Ok(()))
}

fn restore_into(input: &mut dyn Read, path: &Path) -> Result<BackupSummary, String> {
    let db = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        // Written once, in order: a small cache keeps the restore's memory flat.
        .cache_capacity(64 << 20)
        .open()
        .map_err(|e| format!("cannot create the database in {}: {e}", path.display()))?;
    let write = |e: sled::Error| format!("cannot write the restored database: {e}");
    let mut tree: Option<sled::Tree> = None;
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let summary = read_backup(input, &mut |record| {
        match record {
            Record::Tree(name) => {
                if let Some(t) = &tree {
                    t.apply_batch(std::mem::take(&mut batch)).map_err(write)?;
                }
                pending = 0;
                tree = Some(db.open_tree(name).map_err(write)?);
            }
            Record::Entry(k, v) => {
                batch.insert(k, v);
                pending += 1;
                if pending == 10_000 {
                    if let Some(t) = &tree {
                        t.apply_batch(std::mem::take(&mut batch)).map_err(write)?;
                    }
                    pending = 0;
                    // Written pages leave memory only once flushed.
                    db.flush().map_err(write)?;
                }
            }
            Record::End => {
                if let Some(t) = &tree {
                    t.apply_batch(std::mem::take(&mut batch)).map_err(write)?;
                }
            }
        }
        Ok(())
    })?;
    // New ids must not meet the restored ones.
    let meta = db.open_tree("meta").map_err(write)?;
    meta.insert(ID_BASE, &summary.header.id_high_water.to_be_bytes())
        .map_err(write)?;
    db.flush().map_err(write)?;
    Ok(summary)
}

/// One record of a backup, as it is read.
enum Record<'a> {
    Tree(&'a [u8]),
    Entry(&'a [u8], &'a [u8]),
    End,
}

/// Reads a backup, handing each record to `apply`, and checks its count and checksum.
fn read_backup(
    input: &mut dyn Read,
    apply: &mut dyn FnMut(Record<'_>) -> Result<(), String>,
) -> Result<BackupSummary, String> {
    let mut r = Checked {
        inner: BufReader::with_capacity(1 << 20, input),
        hash: Sha256::new(),
        bytes: 0,
    };
    let header = header(&mut r)?;
    let (mut trees, mut entries) = (0u64, 0u64);
    loop {
        match r.byte()? {
            TREE => {
                let name = r.bytes()?;
                apply(Record::Tree(&name))?;
                trees += 1;
            }
            ENTRY => {
                if trees == 0 {
                    return Err("the backup is damaged: an entry before any tree".into());
                }
                let (k, v) = (r.bytes()?, r.bytes()?);
                apply(Record::Entry(&k, &v))?;
                entries += 1;
            }
            END => {
                let mut count = [0u8; 8];
                r.exact(&mut count)?;
                if u64::from_be_bytes(count) != entries {
                    return Err("the backup is damaged: its entry count does not match".into());
                }
                break;
            }
            other => return Err(format!("the backup is damaged: unknown record {other}")),
        }
    }
    let digest = r.hash.clone().finalize();
    let mut stored = [0u8; 32];
    r.inner
        .read_exact(&mut stored)
        .map_err(|_| "the backup is damaged or cut off: it ends before its checksum")?;
    if stored[..] != digest[..] {
        return Err("the backup's checksum does not match its content: it is damaged".into());
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_err(|e| e.to_string())? != 0 {
        return Err("the backup has bytes after its checksum: it is damaged".into());
    }
    // Only the digest is before the end: apply the last batch only once it checked out.
    apply(Record::End)?;
    Ok(BackupSummary {
        header,
        trees,
        entries,
        bytes: r.bytes + stored.len() as u64,
        sha256: hex(&digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small store's backup: a few entries of different sizes in two trees.
    fn small_backup() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db"), false).unwrap();
        for (tree, n) in [("tasks_id", 5usize), ("submissions_id", 3)] {
            let t = store.db.open_tree(tree).unwrap();
            for i in 0..n {
                t.insert((i as u64).to_be_bytes(), vec![b'x'; 1 + 70 * i])
                    .unwrap();
            }
        }
        let mut out = Vec::new();
        store.write_backup(&mut out).unwrap();
        out
    }

    /// Any changed byte after the magic, and any cut, is reported as damage; a damaged length
    /// is never trusted for an allocation (the reads would take gigabytes otherwise).
    #[test]
    fn every_damaged_byte_or_cut_is_reported_as_damage() {
        let good = small_backup();
        let summary = verify(&mut good.as_slice()).unwrap();
        assert!(summary.entries >= 8, "{summary:?}");
        for at in MAGIC.len()..good.len() {
            for mask in [0x55u8, 0xff, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= mask;
                let err = verify(&mut bad.as_slice()).unwrap_err();
                assert!(err.contains("damaged"), "byte {at} ^ {mask:#x}: {err}");
            }
        }
        for len in 0..good.len() {
            let err = verify(&mut &good[..len]).unwrap_err();
            let expected = if len < MAGIC.len() {
                "not an assay backup"
            } else {
                "damaged"
            };
            assert!(err.contains(expected), "cut at {len}: {err}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(verify(&mut longer.as_slice())
            .unwrap_err()
            .contains("damaged"));
    }

    #[test]
    fn a_damaged_restore_leaves_nothing_and_a_good_one_restores_every_entry() {
        let good = small_backup();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let mut bad = good.clone();
        let at = good.len() / 2;
        bad[at] ^= 0x55;
        let err = restore(&mut bad.as_slice(), &target).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
        assert!(!target.exists() && !target.with_extension("restoring").exists());
        let summary = restore(&mut good.as_slice(), &target).unwrap();
        let db = sled::open(&target).unwrap();
        let tasks = db.open_tree("tasks_id").unwrap();
        assert_eq!(tasks.len(), 5);
        assert_eq!(tasks.get(4u64.to_be_bytes()).unwrap().unwrap().len(), 281);
        assert_eq!(db.open_tree("submissions_id").unwrap().len(), 3);
        assert!(summary.entries >= 8);
    }
}
