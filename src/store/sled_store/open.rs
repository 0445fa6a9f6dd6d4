//! Opening the database, and the ordered schema migrations (each with its own test in the
//! store suite).

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use super::super::{queue_codec, StoreError, StoreResult};
use super::audit_chain::{Block, Seal, SEALS_PER_BLOCK};
use super::tx::*;
use super::{SledStore, Trees};
use crate::domain::*;
use crate::store::keys;

/// Schema version written by this binary. Bump it and add a step to `migrate` when a stored
/// layout changes.
pub const SCHEMA_VERSION: u32 = 11;

impl SledStore {
    /// Opens (or creates) the database in `path`, refusing one written by a newer binary.
    pub fn open(path: &Path, fsync: bool) -> StoreResult<Self> {
        Self::open_with_cache(path, fsync, 128)
    }

    /// Opens with a page cache of `cache_mb` MiB.
    pub fn open_with_cache(path: &Path, fsync: bool, cache_mb: u64) -> StoreResult<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_mb * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled wraps the lock failure in an error of its own kind, naming it.
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Backend(format!(
                        "the database in {} is in use by another assay process",
                        path.display()
                    ))
                }
                other => backend(other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let t = Trees {
            meta: tree("meta")?,
            users: tree("users_id")?,
            users_name: tree("users_name")?,
            projects: tree("projects_id")?,
            members_pu: tree("members_project_user")?,
            members_up: tree("members_user_project")?,
            tasks: tree("tasks_id")?,
            taskstatus: tree("taskstatus_id")?,
            tasks_project: tree("tasks_project_task")?,
            tasks_external: tree("tasks_project_external")?,
            queue: tree("queue_project_task")?,
            assignments: tree("assignments_id")?,
            leases: tree("leases_assignment")?,
            submissions: tree("submissions_project_id")?,
            subs_task: tree("submissions_task_id")?,
            subs_expert: tree("submissions_expert_id")?,
            counters: tree("counters_project_name")?,
            plugins: tree("plugins_hash")?,
            plugins_by_name: tree("plugins_kind_name_time")?,
            audit: tree("audit_time_id")?,
            broken: tree("broken_project_task")?,
            imports: tree("imports_id")?,
            finals: tree("finals_task")?,
            qa_results: tree("qa_results_lease")?,
            audit_blocks: tree("audit_blocks_seq")?,
            segments: tree("segments_import")?,
            submit_redo: tree("submit_redo")?,
        };
        let published: Vec<Id> = t
            .segments
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| keys::u64_at(&k, 0)))
            .collect();
        let segments = super::segments::Segments::open(path, &published)?;
        let sync_file = if fsync {
            File::open(path.join("db")).ok().map(Mutex::new)
        } else {
            None
        };
        let id_base = t
            .meta
            .get(super::backup::ID_BASE)
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let (submit_log, logged) = super::submit_log::SubmitLog::open(path)?;
        let log_sync = super::log_sync::LogSync::start(submit_log.sync_handle()?, 0)?;
        let mut store = Self {
            db,
            t,
            users: Default::default(),
            projects: Default::default(),
            roles: Default::default(),
            sync_file,
            audit_sealer: Mutex::new(()),
            audit_recently_sealed: Default::default(),
            audit_written_from: std::sync::atomic::AtomicI64::new(i64::MAX),
            gate: Default::default(),
            id_base,
            segments,
            submit_log: parking_lot::Mutex::new(submit_log),
            unfinished_batch: Default::default(),
            log_sync,
            live: Default::default(),
        };
        store.migrate()?;
        store.replay_submit_log(logged)?;
        // Live leases as last written, less those ended since (see `stored_live_leases`).
        store.live = super::live_leases::LiveLeases::load(store.stored_live_leases()?);
        Ok(store)
    }

    fn migrate(&self) -> StoreResult<()> {
        let found = self
            .t
            .meta
            .get(b"schema_version")
            .map_err(backend)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        match found {
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::TooNew {
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(1) => {
                self.upgrade_1_to_2()?;
                self.migrate()
            }
            Some(2) => {
                self.upgrade_2_to_3()?;
                self.migrate()
            }
            Some(3) => {
                self.upgrade_3_to_4()?;
                self.migrate()
            }
            Some(4) => {
                self.upgrade_4_to_5()?;
                self.migrate()
            }
            Some(5) => {
                self.upgrade_5_to_6()?;
                self.migrate()
            }
            // Version 7 adds import segments; a version-6 database has none, so nothing changes
            // but the number (which keeps older binaries from missing a segment's tasks).
            Some(6) => {
                self.finish_upgrade(7)?;
                self.migrate()
            }
            // Version 8 makes submit batches durable through the submit log (`submit_log.rs`);
            // a version-7 database has no log, so nothing changes but the number (which keeps
            // an older binary from opening it after a crash and missing the log's batches).
            Some(7) => {
                self.finish_upgrade(8)?;
                self.migrate()
            }
            // Version 9 writes submit batches without a transaction; a counter a batch changed
            // carries that batch's number after its value (`tx::Counter`). A version-8 counter
            // reads the same, so nothing changes but the number (which keeps an older binary,
            // which would read such a counter as 0, from opening the database).
            Some(8) => {
                self.finish_upgrade(9)?;
                self.migrate()
            }
            Some(9) => {
                self.upgrade_9_to_10()?;
                self.migrate()
            }
            Some(10) => {
                self.upgrade_10_to_11()?;
                self.migrate()
            }
            // Later upgrade steps go here, in order: `Some(11) => self.upgrade_11_to_12()`, ...
            Some(_) => Ok(()),
            None => {
                self.t
                    .meta
                    .insert(b"schema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(backend)?;
                Ok(())
            }
        }
    }

    /// Version 6: the audit chain's seals are stored in blocks (`audit_blocks_seq`) instead of
    /// one record per seal plus one per sealed event; the hashes are the same, so the chain
    /// verifies as before.
    fn upgrade_5_to_6(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 6");
        const OLD_SEALS: &str = "audit_chain_seq";
        const OLD_SEALED: &str = "audit_sealed_key";
        let old = self.db.open_tree(OLD_SEALS).map_err(backend)?;
        // A crash halfway leaves version 5: start over.
        self.t.audit_blocks.clear().map_err(backend)?;
        let mut block: Option<(u64, Block)> = None;
        // Every event of a block and of the blocks before it is older than the block's cursor.
        let mut cursor = 0i64;
        let write = |first: u64, block: &Block| -> StoreResult<()> {
            self.t
                .audit_blocks
                .insert(first.to_be_bytes(), enc(block)?)
                .map_err(backend)?;
            Ok(())
        };
        for item in old.iter() {
            let (key, bytes) = item.map_err(backend)?;
            let seq = keys::u64_at(&key, 0).unwrap_or(0);
            let seal: Seal = dec(OLD_SEALS, &bytes)?;
            cursor = cursor.max(seal.time() + 1);
            match &mut block {
                // A gap (a seal someone removed) starts a new block, so it stays visible.
                Some((first, b))
                    if b.seals.len() < SEALS_PER_BLOCK && *first + b.seals.len() as u64 == seq =>
                {
                    b.seals.push(seal);
                    b.cursor = cursor;
                }
                _ => {
                    if let Some((first, b)) = block.take() {
                        write(first, &b)?;
                    }
                    block = Some((
                        seq,
                        Block {
                            seals: vec![seal],
                            cursor,
                        },
                    ));
                }
            }
        }
        if let Some((first, b)) = block.take() {
            write(first, &b)?;
        }
        self.finish_upgrade(6)?;
        self.db.drop_tree(OLD_SEALS).map_err(backend)?;
        self.db.drop_tree(OLD_SEALED).map_err(backend)?;
        Ok(())
    }

    /// Version 5: tasks waiting in QA are kept in the open-task index too (the QA queue is
    /// built from it at start-up), as waiting for a verdict.
    fn upgrade_4_to_5(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 5");
        for item in self.t.taskstatus.iter() {
            let (_, value) = item.map_err(backend)?;
            let mut status: TaskStatus = dec("taskstatus_id", &value)?;
            if status.state == TaskState::InQa {
                status.qa.get_or_insert(QaKind::Qa);
                let key = keys::pair(status.project_id, status.task_id);
                self.t
                    .queue
                    .insert(key, queue_codec::encode(&status))
                    .map_err(backend)?;
            }
        }
        self.finish_upgrade(5)
    }

    /// Version 3: the open-task index holds each status in the compact binary form of
    /// `queue_codec` instead of JSON (a third of the size; start-up reads all of it).
    fn upgrade_2_to_3(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 3");
        for item in self.t.queue.iter() {
            let (key, value) = item.map_err(backend)?;
            let status: TaskStatus = dec("queue_project_task", &value)?;
            self.t
                .queue
                .insert(&key, queue_codec::encode(&status))
                .map_err(backend)?;
        }
        self.finish_upgrade(3)
    }

    /// Version 4: active leases are indexed by assignment id (`leases_assignment`) instead of by
    /// expiry time and id (`leases_expiry_assignment`), so extending one touches no index.
    fn upgrade_3_to_4(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 4");
        const OLD: &str = "leases_expiry_assignment";
        let old = self.db.open_tree(OLD).map_err(backend)?;
        for item in old.iter().keys() {
            let key = item.map_err(backend)?;
            if let Some(id) = keys::u64_at(&key, 8) {
                self.t.leases.insert(keys::id(id), &[]).map_err(backend)?;
            }
        }
        self.finish_upgrade(4)?;
        self.db.drop_tree(OLD).map_err(backend)?;
        Ok(())
    }

    /// Version 10: a live lease's record is kept in `leases_assignment` (version 9 kept it in
    /// `assignments_id` and the index entry empty), so a hand-out is one write; `assignments_id`
    /// holds ended leases. Run again after a crash halfway, it finishes what the first run began.
    fn upgrade_9_to_10(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 10");
        for item in self.t.leases.iter() {
            let (key, value) = item.map_err(backend)?;
            let record = self.t.assignments.get(&key).map_err(backend)?;
            let active = match &record {
                Some(bytes) => {
                    assignment_status("assignments_id", bytes)? == AssignmentStatus::Active
                }
                None => false,
            };
            match record {
                Some(bytes) if active => {
                    self.t.leases.insert(&key, bytes).map_err(backend)?;
                    self.t.assignments.remove(&key).map_err(backend)?;
                }
                // Moved by a run that stopped halfway.
                None if !value.is_empty() => {}
                // Ended, or never written: not a live lease.
                _ => {
                    self.t.leases.remove(&key).map_err(backend)?;
                }
            }
        }
        self.finish_upgrade(10)
    }

    /// Version 11: a submission is stored once, under its project (`submissions_project_id`,
    /// which only indexed it before), and the task and expert indexes name its project, so a
    /// submit writes one record fewer and an export reads a project's submissions in one range.
    /// `submissions_id` (the records by id alone) goes. Run again after a crash halfway, it
    /// copies every record again.
    fn upgrade_10_to_11(&self) -> StoreResult<()> {
        const OLD: &str = "submissions_id";
        tracing::info!("upgrading the database to schema version 11");
        #[derive(serde::Deserialize)]
        struct Owners {
            project_id: Id,
            task_id: Id,
            expert_id: Id,
        }
        let old = self.db.open_tree(OLD).map_err(backend)?;
        for item in old.iter() {
            let (key, bytes) = item.map_err(backend)?;
            let Some(id) = keys::u64_at(&key, 0) else {
                continue;
            };
            let owners: Owners = dec(OLD, &bytes)?;
            let project = keys::id(owners.project_id);
            let t = &self.t;
            t.submissions
                .insert(keys::pair(owners.project_id, id), bytes)
                .map_err(backend)?;
            t.subs_task
                .insert(keys::pair(owners.task_id, id), &project)
                .map_err(backend)?;
            t.subs_expert
                .insert(keys::pair(owners.expert_id, id), &project)
                .map_err(backend)?;
        }
        self.finish_upgrade(11)?;
        self.db.drop_tree(OLD).map_err(backend)?;
        Ok(())
    }

    /// Records that an upgrade step is complete, durably, before the next step or any use.
    fn finish_upgrade(&self, version: u32) -> StoreResult<()> {
        self.t
            .meta
            .insert(b"schema_version", &version.to_be_bytes())
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Version 2: the open-task index carries each task's status (version 1 kept it empty).
    fn upgrade_1_to_2(&self) -> StoreResult<()> {
        tracing::info!("upgrading the database to schema version 2");
        for item in self.t.queue.iter().keys() {
            let key = item.map_err(backend)?;
            let Some(task) = keys::u64_at(&key, 8) else {
                continue;
            };
            if let Some(status) =
                self.get::<TaskStatus>(&self.t.taskstatus, "taskstatus_id", &keys::id(task))?
            {
                self.t.queue.insert(&key, enc(&status)?).map_err(backend)?;
            }
        }
        self.finish_upgrade(2)
    }
}
