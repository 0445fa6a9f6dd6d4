//! [`Store`] over the sled trees.

use serde::de::DeserializeOwned;
use sled::transaction::UnabortableTransactionError;
use sled::{Transactional, Tree};

use super::super::{
    queue_codec, ImportedBatch, Store, StoreError, StoreResult, SubmissionWrite, VerdictWrite,
};
use super::tx::*;
use super::SledStore;
use crate::domain::*;
use crate::store::keys;

impl SledStore {
    /// The (second id, role) pairs of a membership index under its first id.
    fn roles_under(
        &self,
        tree: &Tree,
        name: &'static str,
        first: Id,
    ) -> StoreResult<Vec<(Id, ProjectRole)>> {
        let mut out = Vec::new();
        for item in tree.scan_prefix(keys::id(first)) {
            let (key, value) = item.map_err(backend)?;
            if let Some(second) = keys::u64_at(&key, 8) {
                out.push((second, dec(name, &value)?));
            }
        }
        Ok(out)
    }

    /// Replaces the record stored under `id`; `Missing(what)` when there is none.
    fn replace_existing<T: serde::Serialize>(
        &self,
        tree: &Tree,
        id: Id,
        value: &T,
        what: &'static str,
    ) -> StoreResult<()> {
        if tree.get(keys::id(id)).map_err(backend)?.is_none() {
            return Err(StoreError::Missing(what));
        }
        tree.insert(keys::id(id), enc(value)?).map_err(backend)?;
        Ok(())
    }

    pub(super) fn remember(&self, user: &User) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        users.insert(user.id, user.clone());
    }

    fn set_member_in_trees(
        &self,
        project: Id,
        user: Id,
        role: Option<ProjectRole>,
    ) -> StoreResult<()> {
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

    /// The segment first statuses of those `tasks` whose status the trees do not hold yet: read
    /// before a transaction, as reading a file inside one would stall every other store call
    /// behind sled's commit lock. (A status in the trees is never removed, and a segment never
    /// changes, so what is read here still holds inside the transaction.)
    pub(super) fn segment_firsts(
        &self,
        tasks: impl IntoIterator<Item = Id>,
    ) -> StoreResult<std::collections::HashMap<Id, TaskStatus>> {
        let mut firsts = std::collections::HashMap::new();
        for task in tasks {
            // In memory first: a task no segment holds needs no store read.
            if !self.segments.holds(task)
                || self
                    .t
                    .taskstatus
                    .contains_key(keys::id(task))
                    .map_err(backend)?
            {
                continue;
            }
            if let Some(status) = self.segments.first_status(task)? {
                firsts.insert(task, status);
            }
        }
        Ok(firsts)
    }

    /// A task's stored status inside a transaction: the trees', else its segment's first
    /// (from `segment_firsts`).
    pub(super) fn tx_old_status(
        statuses: &sled::transaction::TransactionalTree,
        task: Id,
        firsts: &std::collections::HashMap<Id, TaskStatus>,
    ) -> TxResult<Option<TaskStatus>> {
        match tx_get(statuses, "taskstatus_id", &keys::id(task))? {
            Some(status) => Ok(Some(status)),
            None => Ok(firsts.get(&task).cloned()),
        }
    }

    /// The first statuses of segment tasks whose status never changed (a changed one is in
    /// `taskstatus_id`, and in the open-task index when it is still open).
    pub(super) fn untouched_segment_tasks(&self) -> StoreResult<Vec<TaskStatus>> {
        let mut out = Vec::new();
        for segment in self.segments.all() {
            let (Some(&first), Some(&last)) = (segment.ids().first(), segment.ids().last()) else {
                continue;
            };
            let mut changed = Vec::new();
            for key in self
                .t
                .taskstatus
                .range(keys::id(first)..=keys::id(last))
                .keys()
            {
                changed.extend(keys::u64_at(&key.map_err(backend)?, 0));
            }
            out.extend(segment.first_statuses(&mut |id| changed.binary_search(&id).is_err())?);
        }
        Ok(out)
    }

    pub(super) fn next_id(&self) -> StoreResult<Id> {
        self.db
            .generate_id()
            .map(|id| id + 1 + self.id_base)
            .map_err(backend)
    }

    pub(super) fn get<T: DeserializeOwned>(
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

    pub(super) fn counter(&self, project: Id, name: &str) -> StoreResult<u64> {
        let stored = self
            .t
            .counters
            .get(keys::with_suffix(project, name.as_bytes()))
            .map_err(backend)?;
        Ok(Counter::decode(stored.as_deref()).value)
    }

    /// The stored submissions of a project after `after` (by id), at most `limit`.
    fn project_submissions_raw(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<sled::IVec>> {
        let start = keys::pair(project, after.map_or(0, |a| a.saturating_add(1)));
        let end = keys::pair(project, u64::MAX);
        self.t
            .submissions
            .range(start..=end)
            .values()
            .take(limit)
            .map(|v| v.map_err(backend))
            .collect()
    }

    /// The submission an entry of an owner index (`index`: `subs_task` or `subs_expert`,
    /// owner ++ id, valued with the project id) names.
    fn indexed_submission(
        &self,
        index: &'static str,
        key: &[u8],
        project: &[u8],
    ) -> StoreResult<Option<Submission>> {
        let (Some(id), Some(project)) = (keys::u64_at(key, 8), keys::u64_at(project, 0)) else {
            return Err(StoreError::Corrupt {
                tree: index,
                message: "an entry is not an owner, an id and a project".into(),
            });
        };
        self.get(
            &self.t.submissions,
            "submissions_project_id",
            &keys::pair(project, id),
        )
    }

    /// Every live lease in `leases_assignment`, read at open. An entry is stale when the
    /// lease's ended record is in `assignments_id` too (it ended after the entry's last write,
    /// see `live_leases.rs`) or when it holds no record (schema 9 and before kept the index
    /// empty; the upgrade to 10 fills it). Stale entries are dropped.
    pub(super) fn stored_live_leases(&self) -> StoreResult<Vec<Assignment>> {
        let mut out = Vec::new();
        for item in self.t.leases.iter() {
            let (key, value) = item.map_err(backend)?;
            let live =
                if value.is_empty() || self.t.assignments.contains_key(&key).map_err(backend)? {
                    None
                } else {
                    Some(dec::<Assignment>("leases_assignment", &value)?)
                };
            match live {
                Some(a) if a.status == AssignmentStatus::Active => out.push(a),
                _ => {
                    self.t.leases.remove(&key).map_err(backend)?;
                }
            }
        }
        Ok(out)
    }

    /// Decodes one range of the open-task index.
    pub(super) fn open_tasks_in(&self, range: sled::Iter) -> StoreResult<Vec<TaskStatus>> {
        let mut out = Vec::new();
        let mut decoder = queue_codec::Decoder::default();
        for item in range {
            let (key, value) = item.map_err(backend)?;
            let (Some(project), Some(task)) = (keys::u64_at(&key, 0), keys::u64_at(&key, 8)) else {
                continue;
            };
            let status =
                decoder
                    .decode(project, task, &value)
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: "queue_project_task",
                        message: format!("entry for task {task} is not a valid status"),
                    })?;
            out.push(status);
        }
        Ok(out)
    }

    pub(super) fn all<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &'static str,
    ) -> StoreResult<Vec<T>> {
        tree.iter()
            .values()
            .map(|v| v.map_err(backend).and_then(|bytes| dec(name, &bytes)))
            .collect()
    }
}

/// Meta keys of revoked sessions: the prefix, then the session id.
const REVOKED_PREFIX: &[u8] = b"revoked\0";

impl Store for SledStore {
    fn flush(&self) -> StoreResult<()> {
        // Whatever is made durable takes the live leases with it.
        self.write_live_leases()?;
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
        let _writing = self.writing();
        let old = self.t.meta.remove(b"snapshot_mark").map_err(backend)?;
        if old.is_some() {
            Store::flush(self)?;
        }
        Ok(old
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes))
    }

    fn set_snapshot_mark(&self, mark: u64) -> StoreResult<()> {
        let _writing = self.writing();
        self.t
            .meta
            .insert(b"snapshot_mark", &mark.to_be_bytes())
            .map_err(backend)?;
        Store::flush(self)?;
        Ok(())
    }

    fn create_user(&self, mut user: User) -> StoreResult<User> {
        let _writing = self.writing();
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
        let _writing = self.writing();
        // Usernames never change, so the name index stays as it is.
        self.replace_existing(&self.t.users, user.id, user, "user")?;
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
        let _writing = self.writing();
        project.id = self.next_id()?;
        let bytes = enc(&project)?;
        self.projects
            .write_through(project.id, Some(project.clone()), || {
                self.t
                    .projects
                    .insert(keys::id(project.id), bytes)
                    .map_err(backend)
            })?;
        Ok(project)
    }

    fn update_project(&self, project: &Project) -> StoreResult<()> {
        let _writing = self.writing();
        self.projects
            .write_through(project.id, Some(project.clone()), || {
                self.replace_existing(&self.t.projects, project.id, project, "project")
            })
    }

    fn project(&self, id: Id) -> StoreResult<Option<Project>> {
        self.projects.get_or_load(id, || {
            self.get(&self.t.projects, "projects_id", &keys::id(id))
        })
    }

    fn projects(&self) -> StoreResult<Vec<Project>> {
        self.all(&self.t.projects, "projects_id")
    }

    fn set_member(&self, project: Id, user: Id, role: Option<ProjectRole>) -> StoreResult<()> {
        let _writing = self.writing();
        self.roles.write_through((project, user), role, || {
            self.set_member_in_trees(project, user, role)
        })
    }

    fn member_role(&self, project: Id, user: Id) -> StoreResult<Option<ProjectRole>> {
        self.roles.get_or_load((project, user), || {
            self.get(
                &self.t.members_pu,
                "members_project_user",
                &keys::pair(project, user),
            )
        })
    }

    fn members(&self, project: Id) -> StoreResult<Vec<(Id, ProjectRole)>> {
        self.roles_under(&self.t.members_pu, "members_project_user", project)
    }

    fn memberships(&self, user: Id) -> StoreResult<Vec<(Id, ProjectRole)>> {
        self.roles_under(&self.t.members_up, "members_user_project", user)
    }

    fn project_counts(&self, project: Id) -> StoreResult<ProjectCounts> {
        Ok(ProjectCounts {
            tasks: self.counter(project, "tasks")?,
            open: self.counter(project, "open")?,
            in_qa: self.counter(project, "in_qa")?,
            broken: self.counter(project, "broken")?,
            complete: self.counter(project, "complete")?,
            archived: self.counter(project, "archived")?,
            submissions: self.counter(project, "submissions")?,
            accepted: self.counter(project, "accepted")?,
            rejected: self.counter(project, "rejected")?,
            fixed: self.counter(project, "fixed")?,
            adjudicated: self.counter(project, "adjudicated")?,
        })
    }

    fn project_counter(&self, project: Id, name: &str) -> StoreResult<u64> {
        self.counter(project, name)
    }

    fn begin_import(&self, project: Id) -> StoreResult<Id> {
        let _writing = self.writing();
        self.begin_staged_import(project)
    }

    fn publish_import(&self, project: Id, import: Id, created: u64) -> StoreResult<()> {
        let _writing = self.writing();
        self.publish_staged_import(project, import, created)
    }

    fn abandon_import(&self, import: Id) -> StoreResult<u64> {
        let _writing = self.writing();
        self.abandon_staged_import(import)
    }

    fn clean_imports(&self) -> StoreResult<u64> {
        let _writing = self.writing();
        self.clean_staged_imports()
    }

    fn import_tasks(
        &self,
        project: Id,
        import: Id,
        batch: Vec<NewTask>,
    ) -> StoreResult<ImportedBatch> {
        let _writing = self.writing();
        self.write_import_batch(project, import, batch)
    }

    fn task(&self, id: Id) -> StoreResult<Option<Task>> {
        match self.task_json(id)? {
            Some(bytes) => dec("tasks_id", &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn task_json(&self, id: Id) -> StoreResult<Option<Vec<u8>>> {
        if let Some(body) = self.segments.body(id)? {
            return Ok(Some(body));
        }
        Ok(self
            .t
            .tasks
            .get(keys::id(id))
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn task_status(&self, id: Id) -> StoreResult<Option<TaskStatus>> {
        match self.get(&self.t.taskstatus, "taskstatus_id", &keys::id(id))? {
            Some(status) => Ok(Some(status)),
            None => self.segments.first_status(id),
        }
    }

    fn tasks_page(&self, project: Id, after: Option<Id>, limit: usize) -> StoreResult<Vec<Task>> {
        let first = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let start = keys::pair(project, first);
        let end = keys::pair(project, u64::MAX);
        // The first `limit` ids of the trees and of each segment, merged.
        let mut ids = Vec::new();
        for item in self.t.tasks_project.range(start..=end) {
            if ids.len() >= limit {
                break;
            }
            let (key, import) = item.map_err(backend)?;
            // An import shows all at once: tasks of one still being written are left out.
            if self.hidden_by_import(&import)? {
                continue;
            }
            ids.extend(keys::u64_at(&key, 8));
        }
        for segment in self.segments.of_project(project) {
            let held = segment.ids();
            let from = held.partition_point(|&id| id < first);
            ids.extend(held[from..].iter().take(limit));
        }
        ids.sort_unstable();
        ids.truncate(limit);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.task(id)?);
        }
        Ok(out)
    }

    fn put_task_statuses(&self, all: &[TaskStatus]) -> StoreResult<()> {
        let _writing = self.writing();
        let firsts = self.segment_firsts(all.iter().map(|s| s.task_id))?;
        let t = &self.t;
        (&t.taskstatus, &t.queue, &t.counters)
            .transaction(|(statuses, queue, counters)| {
                let mut deltas = CounterDeltas::default();
                for status in all {
                    let key = keys::id(status.task_id);
                    let old = Self::tx_old_status(statuses, status.task_id, &firsts)?;
                    let Some(old) = old else {
                        return Err(abort(StoreError::Missing("task")));
                    };
                    tx_put(statuses, &key, status)?;
                    tx_transition_counted(&mut deltas, queue, status, Some(old.state))?;
                }
                deltas.apply(counters)
            })
            .map_err(from_tx)
    }

    fn open_tasks(&self) -> StoreResult<Vec<TaskStatus>> {
        // Start-up reads all of it: two threads, each on half of the key range.
        let (Some((first, _)), Some((last, _))) = (
            self.t.queue.first().map_err(backend)?,
            self.t.queue.last().map_err(backend)?,
        ) else {
            return self.untouched_segment_tasks();
        };
        let middle = keys::midpoint(&first, &last);
        let (low, high) = std::thread::scope(|scope| {
            let low = scope.spawn(|| self.open_tasks_in(self.t.queue.range(..middle.as_slice())));
            let high = self.open_tasks_in(self.t.queue.range(middle.as_slice()..));
            (low.join(), high)
        });
        let mut out = low.map_err(|_| backend("the index scan thread panicked"))??;
        out.extend(high?);
        out.extend(self.untouched_segment_tasks()?);
        Ok(out)
    }

    fn put_assignment(&self, a: &Assignment) -> StoreResult<()> {
        let _writing = self.writing();
        // A live lease is kept in memory (`live_leases.rs`). An ended one is written to
        // `assignments_id` before its live record goes, so a reader that finds no live record
        // always finds the ended one.
        if a.status == AssignmentStatus::Active {
            self.live.put(a);
        } else {
            self.t
                .assignments
                .insert(keys::id(a.id), enc(a)?)
                .map_err(backend)?;
            self.live.end(a.id);
        }
        Ok(())
    }

    fn assignment(&self, id: Id) -> StoreResult<Option<Assignment>> {
        // The live record first: ending a lease writes the ended record before it drops the
        // live one, so this order never misses both.
        match self.live.get(id) {
            Some(live) => Ok(Some(live)),
            None => self.get(&self.t.assignments, "assignments_id", &keys::id(id)),
        }
    }

    fn end_assignment(&self, ended: &Assignment, status: Option<&TaskStatus>) -> StoreResult<()> {
        let _writing = self.writing();
        let firsts = self.segment_firsts(status.map(|s| s.task_id))?;
        let t = &self.t;
        (&t.assignments, &t.taskstatus, &t.queue, &t.counters)
            .transaction(|(assignments, statuses, queue, counters)| {
                tx_end_assignment(assignments, ended)?;
                if let Some(status) = status {
                    let key = keys::id(status.task_id);
                    let old = Self::tx_old_status(statuses, status.task_id, &firsts)?;
                    tx_put(statuses, &key, status)?;
                    tx_transition(counters, queue, status, old.map(|s| s.state))?;
                }
                Ok(())
            })
            .map_err(from_tx)?;
        self.live.end(ended.id);
        Ok(())
    }

    fn quarantine(
        &self,
        ended: Option<&Assignment>,
        status: &TaskStatus,
        broken: &BrokenTask,
    ) -> StoreResult<()> {
        let _writing = self.writing();
        let firsts = self.segment_firsts([status.task_id])?;
        let t = &self.t;
        (
            &t.assignments,
            &t.taskstatus,
            &t.queue,
            &t.counters,
            &t.broken,
        )
            .transaction(|(assignments, statuses, queue, counters, quarantined)| {
                if let Some(ended) = ended {
                    tx_end_assignment(assignments, ended)?;
                }
                let key = keys::id(status.task_id);
                let old = Self::tx_old_status(statuses, status.task_id, &firsts)?;
                tx_put(statuses, &key, status)?;
                tx_transition(counters, queue, status, old.map(|s| s.state))?;
                tx_put(
                    quarantined,
                    &keys::pair(broken.project_id, broken.task_id),
                    broken,
                )?;
                Ok(())
            })
            .map_err(from_tx)?;
        if let Some(ended) = ended {
            self.live.end(ended.id);
        }
        Ok(())
    }

    fn broken_tasks(&self, project: Id) -> StoreResult<Vec<BrokenTask>> {
        self.t
            .broken
            .scan_prefix(keys::id(project))
            .values()
            .map(|v| dec("broken_project_task", &v.map_err(backend)?))
            .collect()
    }

    fn reopen_broken(&self, project: Id, tasks: Option<&[Id]>) -> StoreResult<Vec<TaskStatus>> {
        let _writing = self.writing();
        let wanted: Vec<Id> = match tasks {
            Some(ids) => ids.to_vec(),
            None => self
                .broken_tasks(project)?
                .iter()
                .map(|b| b.task_id)
                .collect(),
        };
        let firsts = self.segment_firsts(wanted.iter().copied())?;
        let t = &self.t;
        (&t.taskstatus, &t.queue, &t.counters, &t.broken)
            .transaction(|(statuses, queue, counters, quarantined)| {
                let mut reopened = Vec::new();
                let mut deltas = CounterDeltas::default();
                for &task in &wanted {
                    let key = keys::pair(project, task);
                    if quarantined.remove(key.as_slice())?.is_none() {
                        continue;
                    }
                    let skey = keys::id(task);
                    let Some(mut status) = Self::tx_old_status(statuses, task, &firsts)? else {
                        continue;
                    };
                    if status.state != TaskState::Broken {
                        continue;
                    }
                    status.state = TaskState::Open;
                    tx_put(statuses, &skey, &status)?;
                    tx_transition_counted(&mut deltas, queue, &status, Some(TaskState::Broken))?;
                    reopened.push(status);
                }
                deltas.apply(counters)?;
                Ok(reopened)
            })
            .map_err(from_tx)
    }

    fn expired_assignments(&self, now: i64, limit: usize) -> StoreResult<Vec<Assignment>> {
        // Only live leases (one per working expert), so a scan is cheap.
        let mut due: Vec<Assignment> = self
            .live
            .all()
            .into_iter()
            .filter(|a| a.expires_at <= now)
            .collect();
        due.sort_by_key(|a| (a.expires_at, a.id));
        due.truncate(limit);
        Ok(due)
    }

    fn active_assignments(&self) -> StoreResult<Vec<Assignment>> {
        Ok(self.live.all())
    }

    fn write_live_leases(&self) -> StoreResult<()> {
        let _writing = self.writing();
        self.live.write_to(&self.t.leases)
    }

    fn commit_verdict(&self, w: &VerdictWrite) -> StoreResult<()> {
        let _writing = self.writing();
        let subs = w
            .submissions
            .iter()
            .map(|s| Ok((keys::pair(s.project_id, s.id), enc(s)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let mut events = Vec::with_capacity(w.audit.len());
        for event in &w.audit {
            events.push((
                keys::pair(keys::time(event.at), self.next_id()?),
                enc(event)?,
            ));
        }
        let final_answer = w.final_answer.as_ref().map(enc).transpose()?;
        let result = enc(&w.result)?;
        let firsts = self.segment_firsts([w.status.task_id])?;
        let t = &self.t;
        let trees = [
            &t.submissions,
            &t.taskstatus,
            &t.queue,
            &t.counters,
            &t.finals,
            &t.qa_results,
            &t.audit,
        ];
        trees[..]
            .transaction(|trees| {
                let [submissions, statuses, queue, counters, finals, results, audit] =
                    trees.as_slice()
                else {
                    return Err(abort(backend("transaction view has the wrong shape")));
                };
                let lease = keys::id(w.lease);
                if results.get(lease)?.is_some() {
                    return Err(abort(StoreError::Conflict("verdict")));
                }
                results.insert(&lease, result.as_slice())?;
                for (key, bytes) in &subs {
                    submissions.insert(key, bytes.as_slice())?;
                }
                let key = keys::id(w.status.task_id);
                let old = Self::tx_old_status(statuses, w.status.task_id, &firsts)?;
                tx_put(statuses, &key, &w.status)?;
                tx_transition(counters, queue, &w.status, old.map(|s| s.state))?;
                if let Some(bytes) = &final_answer {
                    finals.insert(&key, bytes.as_slice())?;
                    tx_count(counters, w.status.project_id, "adjudicated", 1)?;
                }
                for (name, n) in &w.counts {
                    tx_count(counters, w.status.project_id, name, *n)?;
                }
                for (key, bytes) in &events {
                    audit.insert(key, bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(from_tx)?;
        if let Some(at) = w.audit.iter().map(|e| e.at).min() {
            self.audit_written(at);
        }
        Ok(())
    }

    fn qa_result(&self, lease: Id) -> StoreResult<Option<serde_json::Value>> {
        self.get(&self.t.qa_results, "qa_results_lease", &keys::id(lease))
    }

    fn final_answer(&self, task: Id) -> StoreResult<Option<FinalAnswer>> {
        self.get(&self.t.finals, "finals_task", &keys::id(task))
    }

    fn commit_submissions(&self, batch: Vec<SubmissionWrite>) -> StoreResult<Vec<Submission>> {
        self.commit_submit_batch(batch)
    }

    fn sync_submissions(&self, flush: &dyn Fn() -> StoreResult<()>) -> StoreResult<()> {
        self.sync_submit_log(flush)
    }

    fn needs_reopen(&self) -> Option<String> {
        self.unfinished()
            .map(|seq| super::submit_batch::unfinished_error(seq).to_string())
    }

    fn submissions_page_json(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Vec<u8>>> {
        let raw = self.project_submissions_raw(project, after, limit)?;
        Ok(raw.into_iter().map(|v| v.to_vec()).collect())
    }

    fn expert_submissions_since(&self, expert: Id, since: i64) -> StoreResult<Vec<Submission>> {
        // Newest first, stopping at the first one older than `since` (ids grow with time).
        let range = keys::pair(expert, 0)..=keys::pair(expert, u64::MAX);
        let mut out = Vec::new();
        for item in self.t.subs_expert.range(range).rev() {
            let (key, project) = item.map_err(backend)?;
            let Some(sub) = self.indexed_submission("submissions_expert_id", &key, &project)?
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

    fn submission(&self, project: Id, id: Id) -> StoreResult<Option<Submission>> {
        self.get(
            &self.t.submissions,
            "submissions_project_id",
            &keys::pair(project, id),
        )
    }

    fn submissions_for_task(&self, task: Id) -> StoreResult<Vec<Submission>> {
        let range = keys::pair(task, 0)..=keys::pair(task, u64::MAX);
        let mut out = Vec::new();
        for item in self.t.subs_task.range(range) {
            let (key, project) = item.map_err(backend)?;
            out.extend(self.indexed_submission("submissions_task_id", &key, &project)?);
        }
        Ok(out)
    }

    fn submissions_page(
        &self,
        project: Id,
        after: Option<Id>,
        limit: usize,
    ) -> StoreResult<Vec<Submission>> {
        self.project_submissions_raw(project, after, limit)?
            .iter()
            .map(|bytes| dec("submissions_project_id", bytes))
            .collect()
    }

    fn put_plugin_version(&self, version: &PluginVersion) -> StoreResult<()> {
        let _writing = self.writing();
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

    fn revoke_session(&self, sid: &str, exp: i64, now_s: i64) -> StoreResult<()> {
        let _writing = self.writing();
        for (old, old_exp) in self.revoked_sessions()? {
            if old_exp <= now_s {
                let key = [REVOKED_PREFIX, old.as_bytes()].concat();
                self.t.meta.remove(key).map_err(backend)?;
            }
        }
        let key = [REVOKED_PREFIX, sid.as_bytes()].concat();
        self.t
            .meta
            .insert(key, &exp.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    fn revoked_sessions(&self) -> StoreResult<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for item in self.t.meta.scan_prefix(REVOKED_PREFIX) {
            let (key, value) = item.map_err(backend)?;
            let sid = String::from_utf8_lossy(&key[REVOKED_PREFIX.len()..]).into_owned();
            let exp = value
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            out.push((sid, exp));
        }
        Ok(out)
    }

    fn set_alive_at(&self, at: i64) -> StoreResult<()> {
        let _writing = self.writing();
        self.t
            .meta
            .insert(b"alive_at", &at.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    fn alive_at(&self) -> StoreResult<Option<i64>> {
        Ok(self
            .t
            .meta
            .get(b"alive_at")
            .map_err(backend)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(i64::from_be_bytes))
    }

    fn set_served_plugin(&self, kind: PluginKind, name: &str, hash: &str) -> StoreResult<()> {
        let _writing = self.writing();
        let key = [b"served\0".as_slice(), &plugin_prefix(kind.as_str(), name)].concat();
        self.t.meta.insert(key, hash.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn served_plugin(&self, kind: PluginKind, name: &str) -> StoreResult<Option<String>> {
        let key = [b"served\0".as_slice(), &plugin_prefix(kind.as_str(), name)].concat();
        Ok(self
            .t
            .meta
            .get(key)
            .map_err(backend)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn plugin_version(&self, hash: &str) -> StoreResult<Option<PluginVersion>> {
        self.get(&self.t.plugins, "plugins_hash", hash.as_bytes())
    }

    fn append_audit(&self, event: &AuditEvent) -> StoreResult<()> {
        let _writing = self.writing();
        let id = self.next_id()?;
        self.t
            .audit
            .insert(keys::pair(keys::time(event.at), id), enc(event)?)
            .map_err(backend)?;
        self.audit_written(event.at);
        Ok(())
    }

    fn seal_audit(&self, settled_before: i64) -> StoreResult<u64> {
        let _writing = self.writing();
        self.seal_audit_events(settled_before)
    }

    fn audit_head(&self) -> StoreResult<(u64, String)> {
        self.audit_chain_head()
    }

    fn verify_audit(&self) -> StoreResult<super::super::AuditCheck> {
        self.verify_audit_chain()
    }

    fn prune_audit(&self, before: i64) -> StoreResult<u64> {
        let _writing = self.writing();
        self.prune_audit_events(before)
    }

    fn audit_between(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&AuditEvent) -> bool,
    ) -> StoreResult<Vec<AuditEvent>> {
        let lo = keys::time(from).to_be_bytes();
        let hi = keys::time(to).saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self
            .t
            .audit
            .range(lo.as_slice()..hi.as_slice())
            .values()
            .rev()
            .take(scan)
        {
            let event: AuditEvent = dec("audit_time_id", &item.map_err(backend)?)?;
            if keep(&event) {
                out.push(event);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
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

    fn backup(&self, out: &mut dyn std::io::Write) -> StoreResult<crate::store::BackupSummary> {
        self.write_backup(out)
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
