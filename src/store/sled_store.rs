//! The sled implementation of [`Store`].
//!
//! Trees (one per relation, named `relation_key`), values are JSON unless noted:
//!
//! | tree                     | key                                   | value                |
//! |--------------------------|---------------------------------------|----------------------|
//! | `meta`                   | `b"schema_version"`                   | u32 BE               |
//! | `meta`                   | `b"snapshot_mark"` (after a clean stop) | u64 BE             |
//! | `users_id`               | user id                               | User                 |
//! | `users_name`             | username bytes                        | user id              |
//! | `projects_id`            | project id                            | Project              |
//! | `members_project_user`   | project id ++ user id                 | ProjectRole          |
//! | `members_user_project`   | user id ++ project id                 | ProjectRole          |
//! | `tasks_id`               | task id                               | Task                 |
//! | `taskstatus_id`          | task id                               | TaskStatus           |
//! | `tasks_project_task`     | project id ++ task id                 | empty                |
//! | `tasks_project_external` | project id ++ external id bytes       | task id              |
//! | `queue_project_task`     | project id ++ task id (open tasks)    | TaskStatus (binary, `queue_codec`) |
//! | `assignments_id`         | assignment id                         | Assignment           |
//! | `leases_assignment`      | assignment id (active leases)         | empty                |
//! | `submissions_id`         | submission id                         | Submission           |
//! | `submissions_task_id`    | task id ++ submission id              | empty                |
//! | `submissions_expert_id`  | expert id ++ submission id            | empty                |
//! | `submissions_project_id` | project id ++ submission id           | empty                |
//! | `counters_project_name`  | project id ++ counter name            | u64 BE               |
//! | `plugins_hash`           | content hash (hex)                    | PluginVersion        |
//! | `plugins_kind_name_time` | kind 0x00 name 0x00 first-seen time ++ hash | empty          |
//! | `audit_time_id`          | time ++ event id                      | AuditEvent           |
//!
//! Ids and times are big-endian u64 (times offset by 2^63, see `keys::time`). Ids come from
//! sled's monotonic `generate_id`. Secondary indexes are written in the same transaction as
//! their record; counters are updated there too and never computed with `len()`.
//!
//! One exception, for speed: a lease is handed out and extended without a transaction (a sled
//! transaction costs two extra log writes, each synced). `leases_assignment` is keyed by the
//! assignment id alone, so extending a lease rewrites only the record, and a new lease writes its
//! index entry first and its record second. The index may therefore name an id whose record is
//! missing (a crash between the two writes) or no longer active; readers check the record, and
//! the start-up scan drops such entries. Ending a lease is transactional as before.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{Db, Transactional, Tree};

use super::{keys, queue_codec};
use super::{ImportedBatch, Store, StoreError, StoreResult, SubmissionWrite};
use crate::domain::*;

/// Schema version written by this binary. Bump it and add a step to `migrate` when a stored
/// layout changes.
pub const SCHEMA_VERSION: u32 = 4;

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
    subs_project: Tree,
    counters: Tree,
    plugins: Tree,
    plugins_by_name: Tree,
    audit: Tree,
}

pub struct SledStore {
    db: Db,
    t: Trees,
    /// Users are few and read on every request (authentication): kept in memory, written
    /// through.
    users: std::sync::RwLock<std::collections::HashMap<Id, User>>,
    /// The main data file, for an optional fdatasync after each flush.
    sync_file: Option<Mutex<File>>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(backend)
}

fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

/// Read a JSON value inside a transaction.
fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    name: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => dec(name, &bytes).map(Some).map_err(abort),
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(tree: &TransactionalTree, key: &[u8], value: &T) -> TxResult<()> {
    tree.insert(key, enc(value).map_err(abort)?)?;
    Ok(())
}

/// Add `delta` to a kept counter inside a transaction.
fn tx_count(counters: &TransactionalTree, project: Id, name: &str, delta: i64) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let key = keys::with_suffix(project, name.as_bytes());
    let current = counters
        .get(&key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let next = (current as i64 + delta).max(0) as u64;
    counters.insert(key, &next.to_be_bytes())?;
    Ok(())
}

/// Name of the per-project counter of submissions in the hour holding `ms`.
fn hour_counter(ms: i64) -> String {
    format!("submitted_hour_{:012}", ms.div_euclid(3_600_000))
}

fn state_counter(state: TaskState) -> &'static str {
    match state {
        TaskState::Open => "open",
        TaskState::InQa => "in_qa",
        TaskState::Complete => "complete",
        TaskState::Archived => "archived",
    }
}

/// Counter changes gathered over a transaction and written once each at its end: a batch of
/// submissions touches the same few counters many times.
#[derive(Default)]
struct CounterDeltas(std::collections::BTreeMap<(Id, String), i64>);

impl CounterDeltas {
    fn add(&mut self, project: Id, name: &str, delta: i64) {
        *self.0.entry((project, name.to_owned())).or_default() += delta;
    }

    fn apply(self, counters: &TransactionalTree) -> TxResult<()> {
        for ((project, name), delta) in self.0 {
            tx_count(counters, project, &name, delta)?;
        }
        Ok(())
    }
}

/// Moves a task between states: counters and the open-queue index.
fn tx_transition(
    counters: &TransactionalTree,
    queue: &TransactionalTree,
    status: &TaskStatus,
    from: Option<TaskState>,
) -> TxResult<()> {
    let mut deltas = CounterDeltas::default();
    tx_transition_counted(&mut deltas, queue, status, from)?;
    deltas.apply(counters)
}

/// [`tx_transition`] with the counter changes left in `deltas`.
fn tx_transition_counted(
    deltas: &mut CounterDeltas,
    queue: &TransactionalTree,
    status: &TaskStatus,
    from: Option<TaskState>,
) -> TxResult<()> {
    let key = keys::pair(status.project_id, status.task_id);
    if from != Some(status.state) {
        if let Some(from) = from {
            deltas.add(status.project_id, state_counter(from), -1);
        }
        deltas.add(status.project_id, state_counter(status.state), 1);
    }
    // The open-task index carries the status itself, so rebuilding the in-memory queue at
    // start-up is one sequential scan instead of a random read per task.
    if status.state == TaskState::Open {
        queue.insert(&key, queue_codec::encode(status))?;
    } else {
        queue.remove(&key)?;
    }
    Ok(())
}

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
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
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
            submissions: tree("submissions_id")?,
            subs_task: tree("submissions_task_id")?,
            subs_expert: tree("submissions_expert_id")?,
            subs_project: tree("submissions_project_id")?,
            counters: tree("counters_project_name")?,
            plugins: tree("plugins_hash")?,
            plugins_by_name: tree("plugins_kind_name_time")?,
            audit: tree("audit_time_id")?,
        };
        let sync_file = if fsync {
            File::open(path.join("db")).ok().map(Mutex::new)
        } else {
            None
        };
        let store = Self {
            db,
            t,
            users: Default::default(),
            sync_file,
        };
        store.migrate()?;
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
            // Later upgrade steps go here, in order: `Some(4) => self.upgrade_4_to_5()`, ...
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

    fn remember(&self, user: &User) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        users.insert(user.id, user.clone());
    }

    fn next_id(&self) -> StoreResult<Id> {
        self.db.generate_id().map(|id| id + 1).map_err(backend)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &'static str,
        key: &[u8],
    ) -> StoreResult<Option<T>> {
        match tree.get(key).map_err(backend)? {
            Some(bytes) => dec(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn counter(&self, project: Id, name: &str) -> StoreResult<u64> {
        Ok(self
            .t
            .counters
            .get(keys::with_suffix(project, name.as_bytes()))
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Loads the records whose ids are the second half of index keys under `prefix`.
    fn by_index<T: DeserializeOwned>(
        &self,
        index: &Tree,
        prefix: u64,
        after: Option<Id>,
        limit: usize,
        records: &Tree,
        name: &'static str,
    ) -> StoreResult<Vec<T>> {
        self.by_index_raw(index, prefix, after, limit, records)?
            .iter()
            .map(|bytes| dec(name, bytes))
            .collect()
    }

    /// The stored bytes of the records whose ids are the second half of index keys under
    /// `prefix`, in index order.
    fn by_index_raw(
        &self,
        index: &Tree,
        prefix: u64,
        after: Option<Id>,
        limit: usize,
        records: &Tree,
    ) -> StoreResult<Vec<sled::IVec>> {
        let start = keys::pair(prefix, after.map(|a| a.saturating_add(1)).unwrap_or(0));
        let end = keys::pair(prefix, u64::MAX);
        let mut out = Vec::new();
        for item in index.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(backend)?;
            let Some(id) = keys::u64_at(&key, 8) else {
                continue;
            };
            if let Some(bytes) = records.get(keys::id(id)).map_err(backend)? {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// Every assignment the lease index names whose record is active. With `repair`, index
    /// entries without an active record are dropped (safe only while no lease is being handed out).
    fn indexed_leases(&self, repair: bool) -> StoreResult<Vec<Assignment>> {
        let mut out = Vec::new();
        for item in self.t.leases.iter().keys() {
            let key = item.map_err(backend)?;
            let Some(id) = keys::u64_at(&key, 0) else {
                continue;
            };
            match self.assignment(id)? {
                Some(a) if a.status == AssignmentStatus::Active => out.push(a),
                _ if repair => {
                    self.t.leases.remove(&key).map_err(backend)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Decodes one range of the open-task index.
    fn open_tasks_in(&self, range: sled::Iter) -> StoreResult<Vec<TaskStatus>> {
        let mut out = Vec::new();
        for item in range {
            let (key, value) = item.map_err(backend)?;
            let (Some(project), Some(task)) = (keys::u64_at(&key, 0), keys::u64_at(&key, 8)) else {
                continue;
            };
            let status = queue_codec::decode(project, task, &value).ok_or(StoreError::Corrupt {
                tree: "queue_project_task",
                message: format!("entry for task {task} is not a valid status"),
            })?;
            out.push(status);
        }
        Ok(out)
    }

    fn all<T: DeserializeOwned>(&self, tree: &Tree, name: &'static str) -> StoreResult<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| v.map_err(backend).and_then(|bytes| dec(name, &bytes)))
            .collect()
    }
}

impl Store for SledStore {
    fn flush(&self) -> StoreResult<()> {
        self.db.flush().map_err(backend)?;
        if let Some(file) = &self.sync_file {
            let file = file
                .lock()
                .map_err(|_| backend("sync file lock poisoned"))?;
            file.sync_data().map_err(backend)?;
        }
        Ok(())
    }

    fn new_id(&self) -> StoreResult<Id> {
        self.next_id()
    }

    fn take_snapshot_mark(&self) -> StoreResult<Option<u64>> {
        let old = self.t.meta.remove(b"snapshot_mark").map_err(backend)?;
        if old.is_some() {
            Store::flush(self)?;
        }
        Ok(old
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes))
    }

    fn set_snapshot_mark(&self, mark: u64) -> StoreResult<()> {
        self.t
            .meta
            .insert(b"snapshot_mark", &mark.to_be_bytes())
            .map_err(backend)?;
        Store::flush(self)?;
        Ok(())
    }

    fn create_user(&self, mut user: User) -> StoreResult<User> {
        user.id = self.next_id()?;
        (&self.t.users, &self.t.users_name)
            .transaction(|(users, names)| {
                if names.get(user.username.as_bytes())?.is_some() {
                    return Err(abort(StoreError::Conflict("username")));
                }
                names.insert(user.username.as_bytes(), &keys::id(user.id))?;
                tx_put(users, &keys::id(user.id), &user)
            })
            .map_err(from_tx)?;
        self.remember(&user);
        Ok(user)
    }

    fn update_user(&self, user: &User) -> StoreResult<()> {
        // Usernames never change, so the name index stays as it is.
        if self
            .t
            .users
            .get(keys::id(user.id))
            .map_err(backend)?
            .is_none()
        {
            return Err(StoreError::Missing("user"));
        }
        self.t
            .users
            .insert(keys::id(user.id), enc(user)?)
            .map_err(backend)?;
        self.remember(user);
        Ok(())
    }

    fn user(&self, id: Id) -> StoreResult<Option<User>> {
        if let Some(user) = self.cached_user(id) {
            return Ok(Some(user));
        }
        let user: Option<User> = self.get(&self.t.users, "users_id", &keys::id(id))?;
        if let Some(u) = &user {
            self.remember(u);
        }
        Ok(user)
    }

    fn cached_user(&self, id: Id) -> Option<User> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn user_by_name(&self, username: &str) -> StoreResult<Option<User>> {
        match self
            .t
            .users_name
            .get(username.as_bytes())
            .map_err(backend)?
        {
            Some(id) => match keys::u64_at(&id, 0) {
                Some(id) => self.user(id),
                None => Err(StoreError::Corrupt {
                    tree: "users_name",
                    message: "bad id".into(),
                }),
            },
            None => Ok(None),
        }
    }

    fn users(&self) -> StoreResult<Vec<User>> {
        self.all(&self.t.users, "users_id")
    }

    fn user_count(&self) -> StoreResult<u64> {
        // Checked only at start-up, and `first()` is enough to know "none".
        Ok(u64::from(self.t.users.first().map_err(backend)?.is_some()))
    }

    fn create_project(&self, mut project: Project) -> StoreResult<Project> {
        project.id = self.next_id()?;
        self.t
            .projects
            .insert(keys::id(project.id), enc(&project)?)
            .map_err(backend)?;
        Ok(project)
    }

    fn update_project(&self, project: &Project) -> StoreResult<()> {
        if self
            .t
            .projects
            .get(keys::id(project.id))
            .map_err(backend)?
            .is_none()
        {
            return Err(StoreError::Missing("project"));
        }
        self.t
            .projects
            .insert(keys::id(project.id), enc(project)?)
            .map_err(backend)?;
        Ok(())
    }

    fn project(&self, id: Id) -> StoreResult<Option<Project>> {
        self.get(&self.t.projects, "projects_id", &keys::id(id))
    }

    fn projects(&self) -> StoreResult<Vec<Project>> {
        self.all(&self.t.projects, "projects_id")
    }

    fn set_member(&self, project: Id, user: Id, role: Option<ProjectRole>) -> StoreResult<()> {
        (&self.t.members_pu, &self.t.members_up)
            .transaction(|(pu, up)| {
                match role {
                    Some(role) => {
                        tx_put(pu, &keys::pair(project, user), &role)?;
                        tx_put(up, &keys::pair(user, project), &role)?;
                    }
                    None => {
                        pu.remove(&keys::pair(project, user))?;
                        up.remove(&keys::pair(user, project))?;
                    }
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    fn member_role(&self, project: Id, user: Id) -> StoreResult<Option<ProjectRole>> {
        self.get(
            &self.t.members_pu,
            "members_project_user",
            &keys::pair(project, user),
        )
    }

    fn members(&self, project: Id) -> StoreResult<Vec<(Id, ProjectRole)>> {
        let mut out = Vec::new();
        for item in self.t.members_pu.scan_prefix(keys::id(project)) {
            let (key, value) = item.map_err(backend)?;
            if let Some(user) = keys::u64_at(&key, 8) {
                out.push((user, dec("members_project_user", &value)?));
            }
        }
        Ok(out)
    }

    fn memberships(&self, user: Id) -> StoreResult<Vec<(Id, ProjectRole)>> {
        let mut out = Vec::new();
        for item in self.t.members_up.scan_prefix(keys::id(user)) {
            let (key, value) = item.map_err(backend)?;
            if let Some(project) = keys::u64_at(&key, 8) {
                out.push((project, dec("members_user_project", &value)?));
            }
        }
        Ok(out)
    }

    fn project_counts(&self, project: Id) -> StoreResult<ProjectCounts> {
        Ok(ProjectCounts {
            tasks: self.counter(project, "tasks")?,
            open: self.counter(project, "open")?,
            in_qa: self.counter(project, "in_qa")?,
            complete: self.counter(project, "complete")?,
            archived: self.counter(project, "archived")?,
            submissions: self.counter(project, "submissions")?,
        })
    }

    fn import_tasks(&self, project: Id, batch: Vec<NewTask>) -> StoreResult<ImportedBatch> {
        let now = crate::now_ms();
        // Ids are taken before the transaction so the closure stays pure if sled retries it.
        let mut prepared = Vec::with_capacity(batch.len());
        for new in batch {
            let id = self.next_id()?;
            let has_gold = new.gold.is_some();
            let task = Task {
                id,
                project_id: project,
                external_id: new.external_id,
                data: new.data,
                meta: new.meta,
                gold: new.gold,
                created_at: now,
            };
            let status = TaskStatus {
                task_id: id,
                project_id: project,
                state: TaskState::Open,
                pool: new.routing.pool,
                reviews: new.routing.reviews,
                priority: new.routing.priority,
                estimate_minutes: new.routing.estimate_minutes,
                done_by: Vec::new(),
                skipped_by: Vec::new(),
                router_version: new.routing.router_version,
                gold: has_gold,
            };
            prepared.push((enc(&task)?, task.external_id, status));
        }
        let t = &self.t;
        (
            &t.tasks,
            &t.taskstatus,
            &t.tasks_project,
            &t.tasks_external,
            &t.queue,
            &t.counters,
        )
            .transaction(
                |(tasks, statuses, by_project, by_external, queue, counters)| {
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
                        by_project.insert(&keys::pair(project, status.task_id), &[])?;
                        tx_transition(counters, queue, status, None)?;
                        out.created.push(status.clone());
                    }
                    tx_count(counters, project, "tasks", out.created.len() as i64)?;
                    Ok(out)
                },
            )
            .map_err(from_tx)
    }

    fn task(&self, id: Id) -> StoreResult<Option<Task>> {
        self.get(&self.t.tasks, "tasks_id", &keys::id(id))
    }

    fn task_json(&self, id: Id) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .t
            .tasks
            .get(keys::id(id))
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn task_status(&self, id: Id) -> StoreResult<Option<TaskStatus>> {
        self.get(&self.t.taskstatus, "taskstatus_id", &keys::id(id))
    }

    fn tasks_page(&self, project: Id, after: Option<Id>, limit: usize) -> StoreResult<Vec<Task>> {
        self.by_index(
            &self.t.tasks_project,
            project,
            after,
            limit,
            &self.t.tasks,
            "tasks_id",
        )
    }

    fn put_task_status(&self, status: &TaskStatus) -> StoreResult<()> {
        let t = &self.t;
        (&t.taskstatus, &t.queue, &t.counters)
            .transaction(|(statuses, queue, counters)| {
                let key = keys::id(status.task_id);
                let old: Option<TaskStatus> = tx_get(statuses, "taskstatus_id", &key)?;
                let Some(old) = old else {
                    return Err(abort(StoreError::Missing("task")));
                };
                tx_put(statuses, &key, status)?;
                tx_transition(counters, queue, status, Some(old.state))
            })
            .map_err(from_tx)
    }

    fn open_tasks(&self) -> StoreResult<Vec<TaskStatus>> {
        // Start-up reads all of it: two threads, each on half of the key range.
        let (Some((first, _)), Some((last, _))) = (
            self.t.queue.first().map_err(backend)?,
            self.t.queue.last().map_err(backend)?,
        ) else {
            return Ok(Vec::new());
        };
        let middle = keys::midpoint(&first, &last);
        let (low, high) = std::thread::scope(|scope| {
            let low = scope.spawn(|| self.open_tasks_in(self.t.queue.range(..middle.as_slice())));
            let high = self.open_tasks_in(self.t.queue.range(middle.as_slice()..));
            (low.join(), high)
        });
        let mut out = low.map_err(|_| backend("the index scan thread panicked"))??;
        out.extend(high?);
        Ok(out)
    }

    fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        // No transaction (see the module notes): the index entry of an active lease goes first,
        // so the index never misses a live lease; the record of an ended one goes first, so a
        // live-looking index entry is always checked against it.
        let id = keys::id(a.id);
        let active = a.status == AssignmentStatus::Active;
        if active && !self.t.leases.contains_key(id).map_err(backend)? {
            self.t.leases.insert(id, &[]).map_err(backend)?;
        }
        self.t.assignments.insert(id, enc(a)?).map_err(backend)?;
        if !active {
            self.t.leases.remove(id).map_err(backend)?;
        }
        Ok(())
    }

    fn assignment(&self, id: Id) -> StoreResult<Option<Assignment>> {
        self.get(&self.t.assignments, "assignments_id", &keys::id(id))
    }

    fn end_assignment(&self, ended: &Assignment, status: Option<&TaskStatus>) -> StoreResult<()> {
        let t = &self.t;
        (
            &t.assignments,
            &t.leases,
            &t.taskstatus,
            &t.queue,
            &t.counters,
        )
            .transaction(|(assignments, leases, statuses, queue, counters)| {
                let id = keys::id(ended.id);
                if let Some(old) = tx_get::<Assignment>(assignments, "assignments_id", &id)? {
                    if old.status != AssignmentStatus::Active {
                        return Err(abort(StoreError::AssignmentEnded(old)));
                    }
                }
                leases.remove(&id)?;
                tx_put(assignments, &id, ended)?;
                if let Some(status) = status {
                    let key = keys::id(status.task_id);
                    let old: Option<TaskStatus> = tx_get(statuses, "taskstatus_id", &key)?;
                    tx_put(statuses, &key, status)?;
                    tx_transition(counters, queue, status, old.map(|s| s.state))?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    fn expired_assignments(&self, now: i64, limit: usize) -> StoreResult<Vec<Assignment>> {
        // The index holds only live leases (one per working expert), so a scan is cheap.
        let mut due: Vec<Assignment> = self
            .indexed_leases(false)?
            .into_iter()
            .filter(|a| a.expires_at <= now)
            .collect();
        due.sort_by_key(|a| (a.expires_at, a.id));
        due.truncate(limit);
        Ok(due)
    }

    fn active_assignments(&self) -> StoreResult<Vec<Assignment>> {
        self.indexed_leases(true)
    }

    fn commit_submissions(&self, batch: Vec<SubmissionWrite>) -> StoreResult<Vec<Submission>> {
        // Ids and encodings are made before the transaction: its closure may run more than once.
        struct Prepared {
            submission: Submission,
            bytes: Vec<u8>,
            ended: Assignment,
            status: TaskStatus,
            audit_key: Vec<u8>,
            audit: Vec<u8>,
        }
        let mut prepared = Vec::with_capacity(batch.len());
        for w in batch {
            let mut submission = w.submission;
            submission.id = self.next_id()?;
            let mut ended = w.assignment;
            ended.status = AssignmentStatus::Submitted;
            ended.submission_id = Some(submission.id);
            let mut event = w.audit;
            if let Some(detail) = event.detail.as_object_mut() {
                detail.insert("submission".into(), submission.id.into());
            }
            prepared.push(Prepared {
                bytes: enc(&submission)?,
                audit_key: keys::pair(keys::time(event.at), self.next_id()?).to_vec(),
                audit: enc(&event)?,
                submission,
                ended,
                status: w.status,
            });
        }
        let t = &self.t;
        let trees = [
            &t.submissions,
            &t.subs_task,
            &t.subs_expert,
            &t.subs_project,
            &t.assignments,
            &t.leases,
            &t.taskstatus,
            &t.queue,
            &t.counters,
            &t.audit,
        ];
        trees[..]
            .transaction(|trees| {
                let [submissions, by_task, by_expert, by_project, assignments, leases, statuses, queue, counters, audit] =
                    trees.as_slice()
                else {
                    return Err(abort(backend("transaction view has the wrong shape")));
                };
                let mut deltas = CounterDeltas::default();
                for p in &prepared {
                    let aid = keys::id(p.ended.id);
                    if let Some(old) = tx_get::<Assignment>(assignments, "assignments_id", &aid)? {
                        if old.status != AssignmentStatus::Active {
                            return Err(abort(StoreError::AssignmentEnded(old)));
                        }
                    }
                    leases.remove(&aid)?;
                    let sub = &p.submission;
                    submissions.insert(&keys::id(sub.id), p.bytes.as_slice())?;
                    by_task.insert(&keys::pair(sub.task_id, sub.id), &[])?;
                    by_expert.insert(&keys::pair(sub.expert_id, sub.id), &[])?;
                    by_project.insert(&keys::pair(sub.project_id, sub.id), &[])?;
                    tx_put(assignments, &aid, &p.ended)?;
                    let key = keys::id(p.status.task_id);
                    let old: Option<TaskStatus> = tx_get(statuses, "taskstatus_id", &key)?;
                    tx_put(statuses, &key, &p.status)?;
                    tx_transition_counted(&mut deltas, queue, &p.status, old.map(|s| s.state))?;
                    deltas.add(sub.project_id, "submissions", 1);
                    deltas.add(sub.project_id, &hour_counter(sub.submitted_at), 1);
                    audit.insert(p.audit_key.as_slice(), p.audit.as_slice())?;
                }
                deltas.apply(counters)
            })
            .map_err(from_tx)?;
        Ok(prepared.into_iter().map(|p| p.submission).collect())
    }

    fn submissions_page_json(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Vec<u8>>> {
        let raw = self.by_index_raw(
            &self.t.subs_project,
            project,
            after,
            limit,
            &self.t.submissions,
        )?;
        Ok(raw.into_iter().map(|v| v.to_vec()).collect())
    }

    fn expert_submissions_since(&self, expert: Id, since: i64) -> StoreResult<Vec<Submission>> {
        // Newest first, stopping at the first one older than `since` (ids grow with time).
        let range = keys::pair(expert, 0)..=keys::pair(expert, u64::MAX);
        let mut out = Vec::new();
        for item in self.t.subs_expert.range(range).rev() {
            let (key, _) = item.map_err(backend)?;
            let Some(id) = keys::u64_at(&key, 8) else {
                continue;
            };
            let Some(sub) =
                self.get::<Submission>(&self.t.submissions, "submissions_id", &keys::id(id))?
            else {
                continue;
            };
            if sub.submitted_at < since {
                break;
            }
            out.push(sub);
        }
        Ok(out)
    }

    fn submissions_per_hour(
        &self,
        project: Id,
        first_hour: i64,
        hours: usize,
    ) -> StoreResult<Vec<u64>> {
        (0..hours as i64)
            .map(|h| self.counter(project, &hour_counter((first_hour + h) * 3_600_000)))
            .collect()
    }

    fn submission(&self, id: Id) -> StoreResult<Option<Submission>> {
        self.get(&self.t.submissions, "submissions_id", &keys::id(id))
    }

    fn submissions_for_task(&self, task: Id) -> StoreResult<Vec<Submission>> {
        self.by_index(
            &self.t.subs_task,
            task,
            None,
            usize::MAX,
            &self.t.submissions,
            "submissions_id",
        )
    }

    fn submissions_page(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Submission>> {
        self.by_index(
            &self.t.subs_project,
            project,
            after,
            limit,
            &self.t.submissions,
            "submissions_id",
        )
    }

    fn put_plugin_version(&self, version: &PluginVersion) -> StoreResult<()> {
        // First write wins: a hash names one source forever.
        let bytes = enc(version)?;
        let mut index = plugin_prefix(version.kind.as_str(), &version.name);
        index.extend_from_slice(&keys::time(version.first_seen_at).to_be_bytes());
        index.extend_from_slice(version.hash.as_bytes());
        (&self.t.plugins, &self.t.plugins_by_name)
            .transaction(|(plugins, by_name)| {
                if plugins.get(version.hash.as_bytes())?.is_none() {
                    plugins.insert(version.hash.as_bytes(), bytes.as_slice())?;
                    by_name.insert(index.as_slice(), &[])?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    fn plugin_versions(&self, kind: PluginKind, name: &str) -> StoreResult<Vec<PluginVersion>> {
        let prefix = plugin_prefix(kind.as_str(), name);
        let mut out = Vec::new();
        for item in self.t.plugins_by_name.scan_prefix(&prefix).keys() {
            let key = item.map_err(backend)?;
            let Some(hash) = key.get(prefix.len() + 8..) else {
                continue;
            };
            let hash = String::from_utf8_lossy(hash);
            if let Some(v) = self.plugin_version(&hash)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn plugin_version(&self, hash: &str) -> StoreResult<Option<PluginVersion>> {
        self.get(&self.t.plugins, "plugins_hash", hash.as_bytes())
    }

    fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        let id = self.next_id()?;
        self.t
            .audit
            .insert(keys::pair(keys::time(event.at), id), enc(event)?)
            .map_err(backend)?;
        Ok(())
    }

    fn recent_audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.t
            .audit
            .iter()
            .values()
            .rev()
            .take(limit)
            .map(|v| v.map_err(backend).and_then(|b| dec("audit_time_id", &b)))
            .collect()
    }
}

fn plugin_prefix(kind: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(kind.len() + name.len() + 2);
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(e: UnabortableTransactionError) -> Self {
        backend(e)
    }
}
