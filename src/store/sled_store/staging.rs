//! Staged imports: an import's batches write its tasks as they go, each one's project-index
//! entry naming the import; one small transaction publishes them all (the import's record goes,
//! the counters grow). While an import has its record, nothing counts its tasks, lists them or
//! hands them out, and after a crash start-up removes them. A published import's index entries
//! keep its id; with no record left, it no longer hides anything.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::segment_file::SegmentWriter;
use super::segments::MIN_SEGMENT_BATCH;
use super::tx::*;
use super::SledStore;
use crate::domain::*;
use crate::store::{keys, ImportedBatch, StoreError, StoreResult};

/// An imported task as it is stored: a [`Task`]'s JSON, with `data` as it was uploaded.
#[derive(Serialize)]
struct StoredTask<'a> {
    id: Id,
    project_id: Id,
    external_id: &'a Option<String>,
    data: &'a serde_json::value::RawValue,
    meta: &'a serde_json::Value,
    gold: &'a Option<serde_json::Value>,
    created_at: i64,
}

/// An imported task's stored JSON, and its first status.
fn first_records(
    project: Id,
    id: Id,
    new: &NewTask,
    now: i64,
) -> StoreResult<(Vec<u8>, TaskStatus)> {
    let status = TaskStatus {
        task_id: id,
        project_id: project,
        state: TaskState::Open,
        pool: new.routing.pool.clone(),
        reviews: new.routing.reviews,
        priority: new.routing.priority,
        estimate_minutes: new.routing.estimate_minutes,
        done_by: Vec::new(),
        skipped_by: Vec::new(),
        router_version: new.routing.router_version.clone(),
        gold: new.gold.is_some(),
        qa: None,
    };
    let task = enc(&StoredTask {
        id,
        project_id: project,
        external_id: &new.external_id,
        data: &new.data,
        meta: &new.meta,
        gold: &new.gold,
        created_at: now,
    })?;
    Ok((task, status))
}

/// An import that has begun and not yet been published.
#[derive(Serialize, Deserialize)]
struct ImportRecord {
    project: Id,
    started_at: i64,
}

impl SledStore {
    /// Writes one batch of an import: into its segment once the import has one or the batch
    /// is large, else into the trees. Every external id is checked against the trees, the
    /// published segments and the imports being written (whose writes this serializes).
    pub(super) fn write_import_batch(
        &self,
        project: Id,
        import: Id,
        batch: Vec<NewTask>,
    ) -> StoreResult<ImportedBatch> {
        let now = crate::now_ms();
        let mut writers = self.segments.writers();
        let to_segment = batch.len() >= MIN_SEGMENT_BATCH || writers.contains_key(&import);
        // Per-record tree lookups only when the project has external ids filed there at all.
        let filed_in_trees = self
            .t
            .tasks_external
            .scan_prefix(keys::id(project))
            .next()
            .is_some();
        let mut out = ImportedBatch::default();
        out.created.reserve(batch.len());
        let mut for_trees = Vec::new();
        for new in batch {
            if let Some(x) = &new.external_id {
                // The trees path checks the trees in its transaction.
                let in_trees = to_segment
                    && filed_in_trees
                    && self
                        .t
                        .tasks_external
                        .contains_key(keys::with_suffix(project, x.as_bytes()))
                        .map_err(backend)?;
                if in_trees || self.segments.external_taken(&mut writers, project, x)? {
                    out.duplicates += 1;
                    continue;
                }
            }
            if !to_segment {
                for_trees.push(new);
                continue;
            }
            let writer = match writers.entry(import) {
                std::collections::hash_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(SegmentWriter::create(self.segments.dir(), project, import)?)
                }
            };
            let id = self.next_id()?;
            let (task, status) = first_records(project, id, &new, now)?;
            writer.append(id, &task, &status, new.external_id.as_deref())?;
            out.created.push(status);
        }
        if to_segment {
            return Ok(out);
        }
        let mut done = self.import_into_trees(project, import, for_trees, now)?;
        done.duplicates += out.duplicates;
        Ok(done)
    }

    /// Writes a small batch into the trees, in one transaction.
    fn import_into_trees(
        &self,
        project: Id,
        import: Id,
        batch: Vec<NewTask>,
        now: i64,
    ) -> StoreResult<ImportedBatch> {
        // Ids are taken before the transaction so the closure stays pure if sled retries it.
        let mut prepared = Vec::with_capacity(batch.len());
        for new in batch {
            let (task, status) = first_records(project, self.next_id()?, &new, now)?;
            prepared.push((task, new.external_id, status));
        }
        let t = &self.t;
        let import_key = keys::id(import);
        (
            &t.tasks,
            &t.taskstatus,
            &t.tasks_project,
            &t.tasks_external,
            &t.queue,
        )
            .transaction(|(tasks, statuses, by_project, by_external, queue)| {
                let mut out = ImportedBatch::default();
                for (task_bytes, external_id, status) in &prepared {
                    let id = keys::id(status.task_id);
                    if let Some(ext) = external_id {
                        let ext_key = keys::with_suffix(project, ext.as_bytes());
                        if by_external.get(&ext_key)?.is_some() {
                            out.duplicates += 1;
                            continue;
                        }
                        by_external.insert(ext_key, &id)?;
                    }
                    tasks.insert(&id, task_bytes.as_slice())?;
                    tx_put(statuses, &id, status)?;
                    // The entry names the import: hidden until it is published.
                    by_project.insert(&keys::pair(project, status.task_id), &import_key)?;
                    // Counted when the import is published.
                    tx_transition_counted(&mut CounterDeltas::default(), queue, status, None)?;
                    out.created.push(status.clone());
                }
                Ok(out)
            })
            .map_err(from_tx)
    }

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
        // The writers stay locked until the segment is published: another import's
        // external-id check must see its tasks all along.
        let mut writers = self.segments.writers();
        let segment = match writers.remove(&import) {
            // Durable before the transaction that makes it count.
            Some(writer) => Some(writer.finish(self.sync_file.is_some())?),
            None => None,
        };
        let published = (
            &self.t.imports,
            &self.t.counters,
            &self.t.meta,
            &self.t.segments,
        )
            .transaction(|(imports, counters, meta, segments)| {
                if imports.remove(keys::id(import).as_slice())?.is_none() {
                    return Err(abort(StoreError::Missing("import")));
                }
                if segment.is_some() {
                    segments.insert(&keys::id(import), &keys::id(project))?;
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
            .map_err(from_tx);
        match (published, segment) {
            (Ok(()), Some(segment)) => {
                self.segments.publish(segment);
                Ok(())
            }
            (Err(e), Some(segment)) => {
                let _ = std::fs::remove_file(segment.path());
                Err(e)
            }
            (result, None) => result,
        }
    }

    /// Removes what an unpublished import wrote, then its record. Safe to repeat.
    pub(super) fn abandon_staged_import(&self, import: Id) -> StoreResult<u64> {
        let writer = self.segments.writers().remove(&import);
        let mut removed = 0;
        if let Some(writer) = writer {
            removed += writer.len() as u64;
            writer.discard();
        }
        let Some(record) = self.t.imports.get(keys::id(import)).map_err(backend)? else {
            return Ok(removed);
        };
        let record: ImportRecord = dec("imports_id", &record)?;
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

/// Takes one (key, value) entry.
pub(super) type EntrySink<'a> = dyn FnMut(&[u8], &[u8]) -> StoreResult<()> + 'a;

impl SledStore {
    /// The entries the segments' tasks would have in tree `name` had they been written there:
    /// a backup holds them so, and a restored database has no segments.
    pub(super) fn segment_entries(&self, name: &[u8], put: &mut EntrySink<'_>) -> StoreResult<()> {
        match name {
            b"tasks_id" | b"tasks_project_task" | b"tasks_project_external" => {
                for segment in self.segments.all() {
                    for &id in segment.ids() {
                        let pair = keys::pair(segment.project, id);
                        if name == b"tasks_project_task" {
                            put(&pair, &[])?;
                            continue;
                        }
                        let Some(body) = segment.body(id)? else {
                            continue;
                        };
                        if name == b"tasks_id" {
                            put(&keys::id(id), &body)?;
                        } else {
                            let task: Task = dec("tasks_id", &body)?;
                            if let Some(x) = task.external_id {
                                put(
                                    &keys::with_suffix(segment.project, x.as_bytes()),
                                    &keys::id(id),
                                )?;
                            }
                        }
                    }
                }
            }
            b"taskstatus_id" => {
                for status in self.untouched_segment_tasks()? {
                    put(&keys::id(status.task_id), &enc(&status)?)?;
                }
            }
            b"queue_project_task" => {
                for status in self.untouched_segment_tasks()? {
                    let key = keys::pair(status.project_id, status.task_id);
                    put(&key, &super::super::queue_codec::encode(&status))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
