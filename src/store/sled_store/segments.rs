//! The import segments of a database (`segment_file.rs`): the published ones, read by task
//! lookups, and the ones imports are still writing.
//!
//! A segment is published by the transaction that publishes its import, which also files it in
//! `segments_import`; a file without that record is an import that never finished, and opening
//! the store removes it. The files live in `segments/` inside the database folder, so a
//! restore, which replaces that folder, never meets another database's segments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::segment_file::{Segment, SegmentWriter};
use crate::domain::{Id, TaskStatus};
use crate::store::{StoreError, StoreResult};

/// Batches of at least this many tasks start a segment; smaller imports stay in the trees
/// (a segment per tiny import would cost a file each).
pub(super) const MIN_SEGMENT_BATCH: usize = 256;

pub(super) struct Segments {
    dir: PathBuf,
    /// Oldest first.
    published: RwLock<Vec<Arc<Segment>>>,
    /// Imports writing a segment now. Held for every import write, so the external-id checks
    /// of concurrent imports see each other.
    writers: Mutex<HashMap<Id, SegmentWriter>>,
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

impl Segments {
    /// Opens the segments named by `published` (import ids) and removes every other file.
    pub fn open(db_path: &Path, published: &[Id]) -> StoreResult<Self> {
        let dir = db_path.join("segments");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut found = HashMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            let import = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<Id>().ok());
            match import {
                Some(import) if published.contains(&import) => {
                    found.insert(import, path);
                }
                _ => {
                    tracing::info!(file = %path.display(), "removing what an unfinished import wrote");
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                }
            }
        }
        let mut segments = Vec::with_capacity(published.len());
        for import in published {
            let Some(path) = found.get(import) else {
                return Err(StoreError::Corrupt {
                    tree: "segments_import",
                    message: format!(
                        "import {import} is published but its segment file is missing from {}",
                        dir.display()
                    ),
                });
            };
            let segment = Segment::open(path)?;
            if segment.import != *import {
                return Err(StoreError::Corrupt {
                    tree: "segments_import",
                    message: format!("{} holds import {}", path.display(), segment.import),
                });
            }
            segments.push(Arc::new(segment));
        }
        Ok(Self {
            dir,
            published: RwLock::new(segments),
            writers: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The writers, locked: every import write holds this.
    pub fn writers(&self) -> MutexGuard<'_, HashMap<Id, SegmentWriter>> {
        self.writers.lock()
    }

    pub fn publish(&self, segment: Segment) {
        self.published.write().push(Arc::new(segment));
    }

    /// Every published segment, oldest first.
    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.published.read().clone()
    }

    pub fn of_project(&self, project: Id) -> Vec<Arc<Segment>> {
        let all = self.published.read();
        all.iter()
            .filter(|s| s.project == project)
            .cloned()
            .collect()
    }

    /// The segment holding task `id` (ids are unique, so at most one), found in memory.
    fn holding(&self, id: Id) -> Option<Arc<Segment>> {
        let all = self.published.read();
        all.iter().find(|s| s.contains(id)).cloned()
    }

    /// Whether a segment holds task `id` (no file is read).
    pub fn holds(&self, id: Id) -> bool {
        self.holding(id).is_some()
    }

    /// A task's stored JSON, when a segment holds it.
    pub fn body(&self, id: Id) -> StoreResult<Option<Vec<u8>>> {
        match self.holding(id) {
            Some(segment) => segment.body(id),
            None => Ok(None),
        }
    }

    /// A task's first status, when a segment holds it.
    pub fn first_status(&self, id: Id) -> StoreResult<Option<TaskStatus>> {
        match self.holding(id) {
            Some(segment) => segment.first_status(id),
            None => Ok(None),
        }
    }

    /// Whether a published segment of `project`, or another import writing one for it, holds
    /// this external id.
    pub fn external_taken(
        &self,
        writers: &mut HashMap<Id, SegmentWriter>,
        project: Id,
        external_id: &str,
    ) -> StoreResult<bool> {
        let published = self.published.read();
        for segment in published.iter().filter(|s| s.project == project) {
            if segment.has_external(external_id)? {
                return Ok(true);
            }
        }
        drop(published);
        for writer in writers.values_mut().filter(|w| w.project == project) {
            if writer.has_external(external_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
