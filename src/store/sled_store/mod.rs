//! The sled implementation of [`Store`](crate::store::Store).
//!
//! Trees (one per relation, named `relation_key`), values are JSON unless noted:
//!
//! | tree                     | key                                   | value                |
//! |--------------------------|---------------------------------------|----------------------|
//! | `meta`                   | `b"schema_version"`                   | u32 BE               |
//! | `meta`                   | `b"snapshot_mark"` (after a clean stop) | u64 BE             |
//! | `meta`                   | `b"id_base"` (a restored database)    | u64 BE               |
//! | `meta`                   | `b"submit_log_seq"` (last submit batch) | u64 BE             |
//! | `users_id`               | user id                               | User                 |
//! | `users_name`             | username bytes                        | user id              |
//! | `projects_id`            | project id                            | Project              |
//! | `members_project_user`   | project id ++ user id                 | ProjectRole          |
//! | `members_user_project`   | user id ++ project id                 | ProjectRole          |
//! | `tasks_id`               | task id                               | Task                 |
//! | `taskstatus_id`          | task id                               | TaskStatus           |
//! | `tasks_project_task`     | project id ++ task id                 | import id (or empty) |
//! | `tasks_project_external` | project id ++ external id bytes       | task id              |
//! | `queue_project_task`     | project id ++ task id (open tasks)    | TaskStatus (binary, `queue_codec`) |
//! | `assignments_id`         | assignment id (ended leases)          | Assignment           |
//! | `leases_assignment`      | assignment id (live leases, lazily)   | Assignment           |
//! | `submissions_project_id` | project id ++ submission id           | Submission           |
//! | `submissions_task_id`    | task id ++ submission id              | project id, u64 BE   |
//! | `submissions_expert_id`  | expert id ++ submission id            | project id, u64 BE   |
//! | `counters_project_name`  | project id ++ counter name            | u64 BE (++ batch u64 BE) |
//! | `plugins_hash`           | content hash (hex)                    | PluginVersion        |
//! | `plugins_kind_name_time` | kind 0x00 name 0x00 first-seen time ++ hash | empty          |
//! | `audit_time_id`          | time ++ event id                      | AuditEvent           |
//! | `broken_project_task`    | project id ++ task id (quarantined)   | BrokenTask           |
//! | `imports_id`             | import id (begun, not yet published)  | import record        |
//! | `segments_import`        | import id (a published segment)       | project id, u64 BE   |
//! | `submit_redo`            | `b"batch"` (the last submit batch)    | seq u64 BE ++ its submit log record |
//!
//! Large imports (batches of 256 tasks or more) do not write the task trees: their tasks go to a
//! write-once segment file (`segment_file.rs`) holding each task and its first status, and the
//! trees hold only what changes later. Every task read looks in both: `taskstatus_id` wins over
//! a segment's first status, and `tasks_id`, `tasks_project_task` and the open-task scan take
//! the segments' tasks in as well (`segments.rs`).
//!
//! An import's tasks name it in `tasks_project_task`; while its `imports_id` record exists they
//! are uncounted, unlisted and not in the hand-out index, and start-up removes them
//! (`staging.rs`): an import shows all at once or, after a crash, not at all.
//!
//! Ids and times are big-endian u64 (times offset by 2^63, see `keys::time`). Ids come from
//! sled's monotonic `generate_id`. Secondary indexes are written in the same transaction as
//! their record; counters are updated there too and never computed with `len()`.
//!
//! One exception, for speed: leases. A live lease's record is kept in memory and written to
//! `leases_assignment` only when it is still live at a flush, at a pass of the lease sweeper
//! or at a clean stop (`live_leases.rs`), so handing one out or extending it writes
//! nothing to sled. Ending one writes its ended record to `assignments_id` (in a transaction,
//! or in a submit batch) and then drops the live one; a record left in `leases_assignment`
//! beside an ended one (a crash before the next lease write) is dropped at open, and readers
//! look at the live record first, so they never miss both.
//!
//! The other: a submit batch is written without a transaction; its log record and its number
//! written last make it whole after a crash (`submit_batch.rs`).

//!
//! Files: `open.rs` opens the database and runs the ordered migrations; `tx.rs` holds the
//! transaction helpers (encoding, counters, state transitions); `records.rs` implements
//! [`Store`](crate::store::Store) over the trees; `backup.rs` writes and restores consistent backups (segments'
//! tasks are written into it as tree entries, so a restored database has no segments);
//! `submit_batch.rs` writes submit batches and `submit_log.rs` makes them durable without a
//! flush of sled (a batch sled lost in a crash is applied again from the log at open), synced
//! on a thread of its own by `log_sync.rs`;
//! `cache.rs` keeps projects and project roles in memory; `live_leases.rs` keeps live leases
//! and writes them to `leases_assignment` now and then.

mod audit_chain;
pub mod backup;
mod cache;
mod live_leases;
mod log_sync;
mod open;
mod records;
mod segment_file;
mod segments;
mod staging;
mod submit_batch;
mod submit_log;
mod tx;

use std::fs::File;
use std::sync::Mutex;

use sled::{Db, Tree};

use crate::domain::*;

pub use open::SCHEMA_VERSION;

struct Trees {
    meta: Tree,
    users: Tree,
    users_name: Tree,
    projects: Tree,
    members_pu: Tree,
    members_up: Tree,
    tasks: Tree,
    taskstatus: Tree,
    tasks_project: Tree,
    tasks_external: Tree,
    queue: Tree,
    assignments: Tree,
    leases: Tree,
    submissions: Tree,
    subs_task: Tree,
    subs_expert: Tree,
    counters: Tree,
    plugins: Tree,
    plugins_by_name: Tree,
    audit: Tree,
    /// Quarantined tasks: (project, task) → `BrokenTask`.
    broken: Tree,
    /// Imports begun and not yet published: import id → its record (`staging.rs`).
    imports: Tree,
    /// Adjudicated final answers, by task.
    finals: Tree,
    /// The answer to each QA verdict, by QA lease id: a retry gets the first result.
    qa_results: Tree,
    /// The audit hash chain: blocks of seals by the sequence number of their first.
    audit_blocks: Tree,
    /// Published import segments: import id → project id (`segments.rs`).
    segments: Tree,
    submit_redo: Tree,
}

pub struct SledStore {
    db: Db,
    t: Trees,
    /// Users are few and read on every request (authentication): kept in memory, written
    /// through.
    users: std::sync::RwLock<std::collections::HashMap<Id, User>>,
    /// Projects and project roles, read on every lease and submit: kept in memory, written
    /// through (`cache.rs`).
    projects: cache::Cache<Id, Option<Project>>,
    roles: cache::Cache<(Id, Id), Option<ProjectRole>>,
    /// The main data file, for an optional fdatasync after each flush.
    sync_file: Option<Mutex<File>>,
    /// One sealer (or pruner) of the audit chain at a time.
    audit_sealer: Mutex<()>,
    /// Audit keys sealed inside the sealer's look-back window (read from the newest blocks at
    /// the first pass, then kept up by the sealer).
    audit_recently_sealed: Mutex<Option<std::collections::HashSet<Vec<u8>>>>,
    /// The earliest time (ms) of the audit events written since the sealer's last pass began
    /// (`i64::MAX`: none), noted after each write: a pass looks back only that far, not over
    /// its whole window (see `audit_chain.rs`).
    audit_written_from: std::sync::atomic::AtomicI64,
    /// Every write holds the shared side; a backup holds the exclusive side for its copy.
    gate: parking_lot::RwLock<()>,
    /// Added to sled's id counter: a restored database starts its ids above the backup's.
    id_base: u64,
    /// The tasks of large imports, in files of their own (`segments.rs`).
    segments: segments::Segments,
    /// What makes submit batches durable (`submit_log.rs`).
    submit_log: parking_lot::Mutex<submit_log::SubmitLog>,
    /// Syncs the submit log while a batch's sled writes run (`log_sync.rs`).
    log_sync: log_sync::LogSync,
    /// The number of a submit batch whose writes failed or panicked part-way (0: none). Sled
    /// holds some of it, and no later batch may be written: its number, written last, would
    /// tell the next open that this one is whole. Set under the submit log's lock and never
    /// cleared (reopening the store completes the batch); read without the lock (`/healthz`).
    unfinished_batch: std::sync::atomic::AtomicU64,
    /// Live leases, written to `leases_assignment` only now and then (`live_leases.rs`).
    live: live_leases::LiveLeases,
}

impl SledStore {
    /// The write gate's shared side, held by every write. Recursive, so a write that calls
    /// another never waits behind a backup that is waiting for the first.
    pub(super) fn writing(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read_recursive()
    }
}
