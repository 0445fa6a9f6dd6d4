//! Storage behind one trait. Handlers and services never see `sled::`; the one conformance suite
//! in `tests/it/store.rs` runs against any implementation.
//!
//! Every method blocks: call them from `web::block` / `spawn_blocking`, never on an async worker.
//! Writes are atomic but not yet durable: what must survive a crash waits on
//! [`flush::GroupFlusher`] before it is acknowledged.

pub mod flush;
pub mod keys;
pub mod queue_codec;
pub mod sled_store;

use crate::domain::*;

pub use sled_store::backup::{self, BackupHeader, BackupSummary};
pub use sled_store::SledStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("{0} not found")]
    Missing(&'static str),
    #[error("the assignment was already ended")]
    AssignmentEnded(Assignment),
    #[error("database error: {0}")]
    Backend(String),
    /// The store takes no more writes of this kind until it is reopened, which the storage
    /// watchdog does by itself within seconds; nothing the caller asked for is lost.
    #[error("the store is waiting to be reopened: {0}")]
    Reopening(String),
    #[error("corrupt record in {tree}: {message}")]
    Corrupt { tree: &'static str, message: String },
    #[error("the database has schema version {found}, newer than this binary's {supported}; use a newer assay")]
    TooNew { found: u32, supported: u32 },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Result of writing one batch of imported tasks.
#[derive(Debug, Default, Clone)]
pub struct ImportedBatch {
    /// The statuses of the tasks that were created (duplicates are left out).
    pub created: Vec<TaskStatus>,
    /// Records skipped because their `external_id` already exists in the project.
    pub duplicates: u64,
}

/// One member of a submission batch: the answer, the lease it ends, the task's status after it,
/// and its audit event.
#[derive(Debug, Clone)]
pub struct SubmissionWrite {
    pub submission: Submission,
    pub assignment: Assignment,
    pub status: TaskStatus,
    pub audit: AuditEvent,
    /// The task's state before this write, when the caller read it under the lock all writers
    /// of the task take (the store then need not read it again); `None`: the store reads it.
    pub prior_state: Option<TaskState>,
}

/// A QA verdict or final answer, written in one transaction: the submissions with their QA
/// records, the task's new status, the final answer, the result a retry gets, the audit.
#[derive(Debug, Clone)]
pub struct VerdictWrite {
    pub lease: Id,
    pub submissions: Vec<Submission>,
    pub status: TaskStatus,
    pub final_answer: Option<FinalAnswer>,
    pub result: serde_json::Value,
    pub audit: Vec<AuditEvent>,
    /// Kept counters to add to (`accepted`, `rejected`, `fixed`, and per author).
    pub counts: Vec<(String, i64)>,
}

/// What `verify_audit` found.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct AuditCheck {
    pub events: u64,
    pub sealed: u64,
    pub head_seq: u64,
    /// Record it somewhere else: a chain rewritten from an edit on is caught only against it.
    pub head_hash: String,
    /// Empty when every event is intact and in the chain.
    pub problems: Vec<String>,
}

pub trait Store: Send + Sync + 'static {
    /// Makes every write so far durable (write-through to the OS; see `storage.fsync`).
    fn flush(&self) -> StoreResult<()>;
    /// A fresh id, unique and increasing for the life of the database.
    fn new_id(&self) -> StoreResult<Id>;
    /// Reads and removes (durably) the mark a clean stop left beside its snapshot of the
    /// hand-out index. Called once at start, before any change: a snapshot whose mark is not
    /// the store's describes another moment of it and must not be used.
    fn take_snapshot_mark(&self) -> StoreResult<Option<u64>>;
    /// Durably records the mark of a snapshot just written (the last write of a clean stop).
    fn set_snapshot_mark(&self, mark: u64) -> StoreResult<()>;

    // Users
    fn create_user(&self, user: User) -> StoreResult<User>;
    fn update_user(&self, user: &User) -> StoreResult<()>;
    fn user(&self, id: Id) -> StoreResult<Option<User>>;
    fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    /// A user from memory only, never touching the disk (so it may run on an async worker);
    /// `None` when not cached. Every user read or write through the store refreshes it.
    fn cached_user(&self, id: Id) -> Option<User>;
    fn users(&self) -> StoreResult<Vec<User>>;
    fn user_count(&self) -> StoreResult<u64>;

    // Projects and membership
    fn create_project(&self, project: Project) -> StoreResult<Project>;
    fn update_project(&self, project: &Project) -> StoreResult<()>;
    fn project(&self, id: Id) -> StoreResult<Option<Project>>;
    fn projects(&self) -> StoreResult<Vec<Project>>;
    fn set_member(&self, project: Id, user: Id, role: Option<ProjectRole>) -> StoreResult<()>;
    fn member_role(&self, project: Id, user: Id) -> StoreResult<Option<ProjectRole>>;
    fn members(&self, project: Id) -> StoreResult<Vec<(Id, ProjectRole)>>;
    fn memberships(&self, user: Id) -> StoreResult<Vec<(Id, ProjectRole)>>;
    fn project_counts(&self, project: Id) -> StoreResult<ProjectCounts>;
    /// One kept counter of a project (0 when never counted).
    fn project_counter(&self, project: Id, name: &str) -> StoreResult<u64>;

    // Tasks
    /// Writes a batch atomically; records whose `external_id` exists already are skipped.
    /// Starts a staged import: what its batches write stays invisible (uncounted, not handed
    /// out) until `publish_import`, and is removed by `abandon_import` or, after a crash, by
    /// `clean_imports` at start-up.
    fn begin_import(&self, project: Id) -> StoreResult<Id>;
    /// Writes one batch of a staged import; `external_id`s already in the project are skipped.
    fn import_tasks(
        &self,
        project: Id,
        import: Id,
        batch: Vec<NewTask>,
    ) -> StoreResult<ImportedBatch>;
    /// Makes a staged import's `created` tasks count, in one transaction.
    fn publish_import(&self, project: Id, import: Id, created: u64) -> StoreResult<()>;
    /// Removes what an unpublished import wrote; returns how many tasks.
    fn abandon_import(&self, import: Id) -> StoreResult<u64>;
    /// At start-up, before the queue is read: removes what interrupted imports wrote.
    fn clean_imports(&self) -> StoreResult<u64>;
    /// One batch imported and published at once.
    fn import_batch(&self, project: Id, batch: Vec<NewTask>) -> StoreResult<ImportedBatch> {
        let import = self.begin_import(project)?;
        match self.import_tasks(project, import, batch) {
            Ok(done) => {
                self.publish_import(project, import, done.created.len() as u64)?;
                Ok(done)
            }
            Err(e) => {
                let _ = self.abandon_import(import);
                Err(e)
            }
        }
    }
    fn task(&self, id: Id) -> StoreResult<Option<Task>>;
    /// A task as its stored JSON text (a serialized [`Task`]), for streaming it out unparsed.
    fn task_json(&self, id: Id) -> StoreResult<Option<Vec<u8>>>;
    fn task_status(&self, id: Id) -> StoreResult<Option<TaskStatus>>;
    fn tasks_page(&self, project: Id, after: Option<Id>, limit: usize) -> StoreResult<Vec<Task>>;
    /// Replaces tasks' routing and progress, keeping state counters and the queue index in
    /// step: all of them in one transaction, or none.
    fn put_task_statuses(&self, statuses: &[TaskStatus]) -> StoreResult<()>;
    /// Every task that is waiting for reviews, for rebuilding the in-memory queue.
    fn open_tasks(&self) -> StoreResult<Vec<TaskStatus>>;

    // Leases
    /// Hands out, extends or ends an assignment. Not atomic, and a live lease need not reach
    /// the disk before the next flush or [`Store::write_live_leases`] (a lost lease only
    /// returns its task to the queue). An ended one's record is written before its live lease
    /// goes, so a reader never misses both.
    fn put_assignment(&self, assignment: &Assignment) -> StoreResult<()>;
    fn assignment(&self, id: Id) -> StoreResult<Option<Assignment>>;
    /// Ends an active assignment (skip, release, expiry) and optionally updates its task.
    /// Fails with `AssignmentEnded` when it was ended already.
    fn end_assignment(&self, ended: &Assignment, status: Option<&TaskStatus>) -> StoreResult<()>;
    /// Quarantines a task, ending (released) the lease it was served under when there is one:
    /// the task leaves the queue in state `Broken`, with `broken` recording why. One
    /// transaction; `AssignmentEnded` when the lease had ended already.
    fn quarantine(
        &self,
        ended: Option<&Assignment>,
        status: &TaskStatus,
        broken: &BrokenTask,
    ) -> StoreResult<()>;
    /// A project's quarantined tasks, in task order.
    fn broken_tasks(&self, project: Id) -> StoreResult<Vec<BrokenTask>>;
    /// Puts quarantined tasks back in the queue, all or none; `None` means all of the
    /// project's. Tasks that are not broken are passed over. Returns the reopened statuses.
    fn reopen_broken(&self, project: Id, tasks: Option<&[Id]>) -> StoreResult<Vec<TaskStatus>>;
    /// Active assignments whose lease ends at or before `now`, oldest first.
    fn expired_assignments(&self, now: i64, limit: usize) -> StoreResult<Vec<Assignment>>;
    /// Every active assignment in id order, for rebuilding the in-memory queue.
    fn active_assignments(&self) -> StoreResult<Vec<Assignment>>;
    /// Takes live leases to the store's records where it keeps them in memory between writes.
    /// Called at each pass of the lease sweeper; every flush (a clean stop's too) does it as
    /// well. What a crash loses of them is only leases.
    fn write_live_leases(&self) -> StoreResult<()> {
        Ok(())
    }

    // Submissions
    /// Stores a batch of submissions: each ends its assignment, updates its
    /// task (members on the same task carry statuses that build on each other, in order) and
    /// appends its audit event; `submission.id` is assigned here and added to the event's detail.
    /// All or nothing: if any member's assignment was already ended (it was submitted, skipped
    /// released or expired meanwhile), nothing is written and the call fails with
    /// `AssignmentEnded` carrying that member's stored assignment. An assignment that is not
    /// stored at all (lost in a crash, vouched for by its signed token) is accepted. Any other
    /// error may leave the batch written in part; the store completes it when it next opens.
    fn commit_submissions(&self, batch: Vec<SubmissionWrite>) -> StoreResult<Vec<Submission>>;
    /// Makes every batch [`Store::commit_submissions`] committed so far durable. `flush` is the
    /// shared flush (a store may need it, e.g. to empty a log of its own); a store with no
    /// cheaper way simply calls it.
    fn sync_submissions(&self, flush: &dyn Fn() -> StoreResult<()>) -> StoreResult<()> {
        flush()
    }
    /// Why the store must be reopened before it takes more submit batches: one was written in
    /// part (a write failed or panicked between its first and last), and only reopening
    /// completes it. `None` while it works.
    fn needs_reopen(&self) -> Option<String> {
        None
    }
    /// One submission alone: [`Store::commit_submissions`] with a batch of one.
    fn commit_submission(&self, write: SubmissionWrite) -> StoreResult<Submission> {
        self.commit_submissions(vec![write])?
            .pop()
            .ok_or(StoreError::Missing("submission"))
    }
    /// A submission, by its project and id.
    fn submission(&self, project: Id, id: Id) -> StoreResult<Option<Submission>>;
    /// Like `submissions_page`, as the stored JSON text of each [`Submission`].
    fn submissions_page_json(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Vec<u8>>>;
    /// An expert's submissions made at or after `since` (ms), newest first.
    fn expert_submissions_since(&self, expert: Id, since: i64) -> StoreResult<Vec<Submission>>;
    /// Submissions per hour in a project: `hours` counts starting at hour `first_hour`
    /// (hours since the epoch), kept as counters when each submission is stored.
    fn submissions_per_hour(
        &self,
        project: Id,
        first_hour: i64,
        hours: usize,
    ) -> StoreResult<Vec<u64>>;
    fn submissions_for_task(&self, task: Id) -> StoreResult<Vec<Submission>>;
    /// Writes a verdict all at once; `Conflict` when this lease's verdict is stored already.
    fn commit_verdict(&self, write: &VerdictWrite) -> StoreResult<()>;
    /// The stored result of a QA lease's verdict.
    fn qa_result(&self, lease: Id) -> StoreResult<Option<serde_json::Value>>;
    fn final_answer(&self, task: Id) -> StoreResult<Option<FinalAnswer>>;
    fn submissions_page(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Submission>>;

    // Plugin versions and audit
    fn put_plugin_version(&self, version: &PluginVersion) -> StoreResult<()>;
    fn plugin_version(&self, hash: &str) -> StoreResult<Option<PluginVersion>>;
    /// Every stored version of one plugin, oldest first.
    fn plugin_versions(&self, kind: PluginKind, name: &str) -> StoreResult<Vec<PluginVersion>>;
    /// Notes that the server is up at `at` (ms); read back at start to measure the downtime.
    fn set_alive_at(&self, at: i64) -> StoreResult<()>;
    fn alive_at(&self) -> StoreResult<Option<i64>>;
    /// Notes the version of a plugin that serves now.
    fn set_served_plugin(&self, kind: PluginKind, name: &str, hash: &str) -> StoreResult<()>;
    /// The version of a plugin that served last.
    fn served_plugin(&self, kind: PluginKind, name: &str) -> StoreResult<Option<String>>;
    /// Revokes one session (by its id) until `exp` (seconds), and forgets revocations whose
    /// sessions have expired anyway.
    fn revoke_session(&self, sid: &str, exp: i64, now_s: i64) -> StoreResult<()>;
    /// Revoked sessions that have not expired yet: `(sid, exp)`.
    fn revoked_sessions(&self) -> StoreResult<Vec<(String, i64)>>;
    fn append_audit(&self, event: &AuditEvent) -> StoreResult<()>;
    /// Seals the events older than `settled_before` (ms) into the hash chain; how many.
    fn seal_audit(&self, settled_before: i64) -> StoreResult<u64>;
    /// The chain's last seal: (sequence, hash).
    fn audit_head(&self) -> StoreResult<(u64, String)>;
    /// Checks the chain against the events (see `sled_store::audit_chain`).
    fn verify_audit(&self) -> StoreResult<AuditCheck>;
    /// Removes sealed events older than `before` (ms) with their seals; how many.
    fn prune_audit(&self, before: i64) -> StoreResult<u64>;
    /// Events from `from` to `to` (ms), newest first, that `keep` admits, at most `limit`, looking
    /// at no more than `scan` events.
    fn audit_between(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> StoreResult<Vec<AuditEvent>>;
    /// Most recent first.
    fn recent_audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>>;

    // Backup
    /// Writes a consistent copy of everything to `out`: no write happens while it is taken.
    fn backup(&self, out: &mut dyn std::io::Write) -> StoreResult<BackupSummary>;
}
