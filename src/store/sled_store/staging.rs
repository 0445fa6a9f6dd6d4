//! Staged imports: an import's batches write its tasks as they go, each one's project-index
//! entry naming the import; one small transaction publishes them all (the import's record goes,
//! the counters grow). While an import has its record, nothing counts its tasks, lists them or
//! hands them out, and after a crash start-up removes them. A published import's index entries
//! keep its id; with no record left, it no longer hides anything.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::tx::*;
use super::SledStore;
use crate::domain::*;
use crate::store::{keys, StoreError, StoreResult};

/// An import that has begun and not yet been published.
#[derive(Serialize, Deserialize)]
struct ImportRecord {
    project: Id,
    started_at: i64,
}

impl SledStore {
    pub(super) fn begin_staged_import(&self, project: Id) -> StoreResult<Id> {
        let id = self.next_id()?;
        let record = ImportRecord {
            project,
            started_at: crate::now_ms(),
        };
        self.t
            .imports
            .insert(keys::id(id), enc(&record)?)
            .map_err(backend)?;
        Ok(id)
    }

    /// Makes an import's tasks count, all at once.
    pub(super) fn publish_staged_import(
        &self,
        project: Id,
        import: Id,
        created: u64,
    ) -> StoreResult<()> {
        (&self.t.imports, &self.t.counters, &self.t.meta)
            .transaction(|(imports, counters, meta)| {
                if imports.remove(keys::id(import).as_slice())?.is_none() {
                    return Err(abort(StoreError::Missing("import")));
                }
                // An import published after a clean stop's snapshot makes the snapshot stale.
                meta.remove(b"snapshot_mark".as_slice())?;
                tx_count(counters, project, "tasks", created as i64)?;
                tx_count(
                    counters,
                    project,
                    state_counter(TaskState::Open),
                    created as i64,
                )?;
                Ok(())
            })
            .map_err(from_tx)
    }

    /// Removes what an unpublished import wrote, then its record. Safe to repeat.
    pub(super) fn abandon_staged_import(&self, import: Id) -> StoreResult<u64> {
        let Some(record) = self.t.imports.get(keys::id(import)).map_err(backend)? else {
            return Ok(0);
        };
        let record: ImportRecord = dec("imports_id", &record)?;
        let mut removed = 0;
        let marker = keys::id(import);
        for item in self.t.tasks_project.scan_prefix(keys::id(record.project)) {
            let (key, value) = item.map_err(backend)?;
            if value.as_ref() != marker {
                continue;
            }
            if let Some(task) = keys::u64_at(&key, 8) {
                self.remove_unpublished_task(record.project, task)?;
                removed += 1;
            }
        }
        self.t.imports.remove(keys::id(import)).map_err(backend)?;
        Ok(removed)
    }

    /// At start-up: removes what every import a crash interrupted wrote.
    pub(super) fn clean_staged_imports(&self) -> StoreResult<u64> {
        let mut removed = 0;
        let unfinished: Vec<Id> = self
            .t
            .imports
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::u64_at(&k, 0)))
            .collect();
        for import in unfinished {
            removed += self.abandon_staged_import(import)?;
        }
        Ok(removed)
    }

    /// Whether a project-index entry's value names an import still being written.
    pub(super) fn hidden_by_import(&self, index_value: &[u8]) -> StoreResult<bool> {
        if index_value.is_empty() {
            return Ok(false);
        }
        self.t.imports.contains_key(index_value).map_err(backend)
    }

    /// Removes an unpublished task and its index entries (nothing counted it yet). The task
    /// record goes last, so a repeat after a crash still finds its external id.
    fn remove_unpublished_task(&self, project: Id, task: Id) -> StoreResult<()> {
        let id = keys::id(task);
        let stored: Option<Task> = self.get(&self.t.tasks, "tasks_id", &id)?;
        if let Some(ext) = stored.as_ref().and_then(|t| t.external_id.as_ref()) {
            let ext_key = keys::with_suffix(project, ext.as_bytes());
            // Only this task's own claim on the external id.
            if self
                .t
                .tasks_external
                .get(&ext_key)
                .map_err(backend)?
                .as_deref()
                == Some(&id[..])
            {
                self.t.tasks_external.remove(ext_key).map_err(backend)?;
            }
        }
        let pair = keys::pair(project, task);
        self.t.queue.remove(pair).map_err(backend)?;
        self.t.taskstatus.remove(id).map_err(backend)?;
        self.t.tasks_project.remove(pair).map_err(backend)?;
        self.t.tasks.remove(id).map_err(backend)?;
        Ok(())
    }
}
