//! Leases: hand out the next task (`next`), keep a lease alive (`heartbeat`), end it without an
//! answer (skip, release) or by expiry (`sweep`). Every decision about a project's tasks is
//! taken under that project's queue lock, and the index changes only after the store write it
//! mirrors has succeeded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{blocking, ReviewCore};
use crate::auth::AssignmentClaims;
use crate::domain::*;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::metrics::Metrics;
use crate::queue::{Lease, Queue};
use crate::scripting::rubric::Criterion;
use crate::scripting::{Plugin, PluginKind};
use crate::services::projects::access_blocking;
use crate::store::StoreError;

/// What `next` hands to the expert.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Handout {
    pub assignment: AssignmentView,
    pub task: TaskView,
    /// The rubric's criteria (their shape: "Rubric plugins" in the README).
    #[schemars(with = "Vec<serde_json::Value>")]
    pub criteria: Arc<[Criterion]>,
    pub instructions: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct AssignmentView {
    pub id: Id,
    pub token: String,
    pub expires_at: i64,
    pub served_at: i64,
    pub rubric_version: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TaskView {
    pub id: Id,
    pub external_id: Option<String>,
    /// The task's content as stored: passed through, not decoded and encoded again.
    #[schemars(with = "Value")]
    pub data: Box<RawValue>,
}

impl TaskView {
    pub fn of(task: Task) -> AppResult<Self> {
        Ok(Self {
            id: task.id,
            external_id: task.external_id,
            data: serde_json::value::to_raw_value(&task.data).map_err(AppError::internal)?,
        })
    }

    /// From a task's stored encoding, reading only what the view shows (`meta` and `gold` are
    /// skipped unread).
    fn from_stored(id: Id, stored: &[u8]) -> AppResult<Self> {
        #[derive(Deserialize)]
        struct Stored<'a> {
            #[serde(default)]
            external_id: Option<String>,
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let view: Stored = decode_stored(stored)?;
        Ok(Self {
            id,
            external_id: view.external_id,
            data: view.data.to_owned(),
        })
    }

    /// The content as a value, for pages that render it (a raw value is valid JSON, so this
    /// parse cannot fail: content nested past serde_json's depth limit never got past import).
    pub fn content(&self) -> Value {
        serde_json::from_str(self.data.get()).unwrap_or(Value::Null)
    }
}

/// Decodes (part of) a stored task, failing as the store does on a damaged record.
fn decode_stored<'a, T: Deserialize<'a>>(stored: &'a [u8]) -> AppResult<T> {
    serde_json::from_slice(stored).map_err(|e| {
        AppError::from(StoreError::Corrupt {
            tree: "tasks_id",
            message: e.to_string(),
        })
    })
}

pub(super) fn lease_error(code: ErrorCode, message: &str) -> AppError {
    AppError::conflict(code, message)
}

/// Tasks one `next` may quarantine before it answers with the error.
const MAX_QUARANTINED_PER_NEXT: usize = 3;

/// Candidates a router's `pick` chooses among.
const PICK_WINDOW: usize = 32;

/// What a router's `pick` chose.
enum Choice {
    Task(Id),
    Nothing,
    Default,
}

impl ReviewCore {
    /// Checks an assignment token against the path and the caller; with the token's project,
    /// read for the membership check.
    pub(super) fn claims_for(
        &self,
        user: &User,
        id: Id,
        token: &str,
    ) -> AppResult<(AssignmentClaims, Project)> {
        let claims = self.keys.verify_assignment(token).ok_or_else(|| {
            lease_error(
                ErrorCode::InvalidLeaseToken,
                "the assignment token is invalid",
            )
        })?;
        if claims.aid != id || claims.sub != user.id {
            return Err(lease_error(
                ErrorCode::ForeignLease,
                "this assignment belongs to someone else",
            ));
        }
        // A signed token outlives a membership: whoever left the project (or was removed)
        // may no longer act on a lease taken before.
        let (project, _) = access_blocking(self, user, claims.pid)?;
        Ok((claims, project))
    }

    /// Hands the expert their current lease in the project, or a new one; `None` when nothing
    /// is left for them.
    pub async fn next(self: &Arc<Self>, user: User, project: Id) -> AppResult<Option<Handout>> {
        self.serve(user, project, true).await
    }

    /// The expert's live lease in the project, if any, without taking a new one or changing
    /// anything: what a page shown by a GET may render.
    pub async fn current(self: &Arc<Self>, user: User, project: Id) -> AppResult<Option<Handout>> {
        self.serve(user, project, false).await
    }

    async fn serve(
        self: &Arc<Self>,
        user: User,
        project: Id,
        take_new: bool,
    ) -> AppResult<Option<Handout>> {
        self.ready().await;
        let (core, who) = (self.clone(), user.clone());
        let result = self
            .in_project(project, move || core.next_blocking(&who, project, take_new))
            .await;
        self.as_seen_by(&user, project, result).await
    }

    /// `take_new`: lease a new task when none is held (and quarantine a task whose form
    /// fails); without it, only the held lease is shown and nothing is written but the audit
    /// record of the view.
    fn next_blocking(
        &self,
        user: &User,
        project: Id,
        take_new: bool,
    ) -> AppResult<Option<Handout>> {
        let (project, _) = access_blocking(self, user, project)?;
        let mut quarantined = 0;
        let mut last_error = None;
        let (assignment, task, criteria) = loop {
            let now = crate::now_ms();
            let Some(assignment) = self.held_or_new(&project, user, now, take_new)? else {
                // Nothing else to serve: say why the last task was set aside, not just "done".
                return match last_error {
                    Some(error) => Err(AppError::Script(error)),
                    None => Ok(None),
                };
            };
            let stored = self
                .store
                .task_json(assignment.task_id)?
                .ok_or(AppError::NotFound("task"))?;
            let rubric = match self.served_rubric(&assignment) {
                Ok(rubric) => rubric,
                Err(e) if !take_new => return Err(e),
                Err(e) => {
                    // No form without the rubric: give the task back for later.
                    let reason = Some("rubric unavailable".into());
                    self.end_lease(user, &assignment, AssignmentStatus::Released, reason)?;
                    return Err(e);
                }
            };
            // Decoded only for a rubric whose criteria depend on the task.
            let task: Option<Task> = match rubric.criteria_reads_task {
                true => Some(decode_stored(&stored)?),
                false => None,
            };
            match self
                .registry
                .criteria_of(&rubric, assignment.task_id, task.as_ref())
            {
                Ok(criteria) => {
                    let task = TaskView::from_stored(assignment.task_id, &stored)?;
                    break (assignment, task, criteria);
                }
                Err(error) if !take_new => return Err(error.into()),
                Err(error) => {
                    // This task's form cannot be built: set it aside and serve the next one, a
                    // few times at most per request (each failure may have taken the deadline).
                    let failure = super::quarantine::Failure {
                        task_id: assignment.task_id,
                        project_id: project.id,
                        stage: BrokenStage::Form,
                        error: error.to_string(),
                        rubric: (&assignment.rubric, &assignment.rubric_version),
                        router: None,
                    };
                    self.quarantine(failure, Some(&assignment))?;
                    quarantined += 1;
                    if quarantined == MAX_QUARANTINED_PER_NEXT {
                        return Err(error.into());
                    }
                    last_error = Some(error);
                }
            }
        };
        let token = self
            .keys
            .assignment(&assignment)
            .map_err(AppError::internal)?;
        self.audit(
            Some(user.id),
            if take_new {
                AuditAction::TaskLease
            } else {
                AuditAction::TaskView
            },
            format!("task:{}", task.id),
            serde_json::json!({"assignment": assignment.id}),
        );
        Ok(Some(Handout {
            assignment: AssignmentView {
                id: assignment.id,
                token,
                expires_at: assignment.expires_at,
                served_at: assignment.served_at,
                rubric_version: assignment.rubric_version.clone(),
            },
            task,
            criteria,
            instructions: project.instructions,
        }))
    }

    /// The expert's live lease in the project, or a new one.
    fn held_or_new(
        &self,
        project: &Project,
        user: &User,
        now: i64,
        take_new: bool,
    ) -> AppResult<Option<Assignment>> {
        let q = self.queue.project(project.id);
        let held = Queue::lock_index(&q).held_by(user.id, now);
        if let Some((_, aid)) = held {
            let live = self
                .store
                .assignment(aid)?
                .filter(|a| a.status == AssignmentStatus::Active);
            if live.is_some() || !take_new {
                return Ok(live);
            }
        }
        if !take_new {
            return Ok(None);
        }
        self.lease_next(project, user, now)
    }

    /// The rubric version a lease was served under (every answer is checked against it).
    pub(super) fn served_rubric(&self, a: &Assignment) -> AppResult<Arc<Plugin>> {
        self.registry
            .version(PluginKind::Rubric, &a.rubric, &a.rubric_version)
    }

    /// Chooses a task (asking the router's `pick` when it has one) and leases it.
    fn lease_next(
        &self,
        project: &Project,
        user: &User,
        now: i64,
    ) -> AppResult<Option<Assignment>> {
        let rubric = self.registry.current(PluginKind::Rubric, &project.rubric)?;
        let router = self.registry.current(PluginKind::Router, &project.router)?;
        let q = self.queue.project(project.id);
        // The script runs without the lock, so a slow `pick` never holds up other experts; its
        // choice is checked again under the lock below.
        let choice = if router.has_fn("pick", 2) {
            // A failing `pick` must not stall the project: the tasks it fails on are set
            // aside, and when no task is to blame the default order serves instead.
            match self.scripted_pick(&router, &rubric, user, project.id, now) {
                Err(AppError::Script(e)) => {
                    tracing::warn!(error = %e, "router pick failed; serving in queue order");
                    Choice::Default
                }
                other => other?,
            }
        } else {
            Choice::Default
        };
        // The index alone, without the commit gate: a hand-out only adds a lease to a task with
        // room, which a submit batch being written does not change (see `queue`'s notes).
        let mut queue = Queue::lock_index(&q);
        if let Some((_, aid)) = queue.held_by(user.id, now) {
            // A concurrent `next` of the same expert leased meanwhile: answer with that lease.
            return Ok(self
                .store
                .assignment(aid)?
                .filter(|a| a.status == AssignmentStatus::Active));
        }
        let task_id = match choice {
            Choice::Nothing => return Ok(None),
            Choice::Task(id) if queue.may_take(id, user.id, &user.skills, now) => id,
            _ => match queue.pick(user.id, &user.skills, now) {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        let a = Assignment {
            id: self.store.new_id()?,
            task_id,
            project_id: project.id,
            expert_id: user.id,
            status: AssignmentStatus::Active,
            served_at: now,
            expires_at: now + project.lease_seconds as i64 * 1000,
            last_seen_at: now,
            active_seconds: 0.0,
            fence: rand::random(),
            rubric: rubric.name.clone(),
            rubric_version: rubric.hash.clone(),
            router: router.name.clone(),
            router_version: router.hash.clone(),
            submission_id: None,
            reason: None,
        };
        // Not flushed: a lease lost in a crash only returns its task to the queue, and its signed
        // token still lets the expert submit while the task has room.
        self.store.put_assignment(&a)?;
        queue.add_lease(task_id, Lease::from(&a));
        Metrics::count(&self.metrics.handouts);
        Ok(Some(a))
    }

    /// Calls `pick(expert, candidates)` over a window of the tasks this expert may take.
    fn scripted_pick(
        &self,
        router: &Plugin,
        rubric: &Plugin,
        user: &User,
        project: Id,
        now: i64,
    ) -> AppResult<Choice> {
        let q = self.queue.project(project);
        let (window, handouts) = {
            let queue = Queue::lock_index(&q);
            let ids = queue.eligible(user.id, &user.skills, now, PICK_WINDOW);
            let statuses: Vec<TaskStatus> = ids
                .iter()
                .filter_map(|id| queue.slot(*id).map(|s| s.status.clone()))
                .collect();
            (statuses, queue.handouts(user.id))
        };
        let mut ids = Vec::with_capacity(window.len());
        let mut candidates = Vec::with_capacity(window.len());
        for status in &window {
            let Some(task) = self.store.task(status.task_id)? else {
                continue;
            };
            ids.push(task.id);
            candidates.push(serde_json::json!({
                "id": task.id, "external_id": task.external_id, "meta": task.meta,
                "pool": status.pool, "priority": status.priority, "reviews": status.reviews,
                "done": status.done_by.len(), "is_gold": status.gold,
            }));
        }
        if candidates.is_empty() {
            return Ok(Choice::Nothing);
        }
        let expert = serde_json::json!({
            "id": user.id, "username": user.username, "skills": user.skills, "handouts": handouts,
        });
        Ok(
            match self.pick_blaming_tasks(router, rubric, &expert, &ids, &candidates, project)? {
                Some(id) => Choice::Task(id),
                None => Choice::Nothing,
            },
        )
    }

    /// Loads an assignment for a lease operation and checks that it is live and the caller's.
    fn live_assignment(&self, claims: &AssignmentClaims, now: i64) -> AppResult<Assignment> {
        let a = self.store.assignment(claims.aid)?.ok_or_else(|| {
            lease_error(
                ErrorCode::LeaseUnknown,
                "this lease is not known (it may have expired)",
            )
        })?;
        if a.fence != claims.fence {
            return Err(lease_error(
                ErrorCode::ForeignLease,
                "the token does not match this assignment",
            ));
        }
        match a.status {
            AssignmentStatus::Active if a.expires_at > now => Ok(a),
            AssignmentStatus::Active | AssignmentStatus::Expired => Err(lease_error(
                ErrorCode::LeaseExpired,
                "the lease has expired; ask for the next task",
            )),
            _ => Err(lease_error(
                ErrorCode::LeaseEnded,
                "the lease was already ended",
            )),
        }
    }

    /// Active seconds of a lease up to `now`: the gap since the last sign of life counts only up
    /// to the idle cut-off.
    pub(super) fn idle_capped(&self, a: &Assignment, now: i64) -> f64 {
        let gap = (now - a.last_seen_at).max(0) as f64 / 1000.0;
        a.active_seconds + gap.min(self.config.queue.idle_cutoff_seconds as f64)
    }

    /// Extends a lease and records active time.
    pub async fn heartbeat(
        self: &Arc<Self>,
        user: User,
        id: Id,
        token: String,
    ) -> AppResult<Assignment> {
        self.ready().await;
        let core = self.clone();
        blocking(move || {
            let (claims, project) = core.claims_for(&user, id, &token)?;
            let q = core.queue.project(claims.pid);
            let mut queue = Queue::lock(&q);
            let now = crate::now_ms();
            let mut a = core.live_assignment(&claims, now)?;
            a.active_seconds = core.idle_capped(&a, now);
            a.last_seen_at = now;
            a.expires_at = now + project.lease_seconds as i64 * 1000;
            core.store.put_assignment(&a)?;
            queue.add_lease(a.task_id, Lease::from(&a));
            Ok(a)
        })
        .await
    }

    /// Ends a lease without an answer. A skip also keeps the task away from this expert.
    fn end_lease(
        &self,
        user: &User,
        a: &Assignment,
        status: AssignmentStatus,
        reason: Option<String>,
    ) -> AppResult<()> {
        let q = self.queue.project(a.project_id);
        let mut queue = Queue::lock(&q);
        let mut ended = a.clone();
        ended.status = status;
        ended.reason = reason;
        let mut task_status = None;
        if status == AssignmentStatus::Skipped {
            let mut s = match queue.slot(a.task_id) {
                Some(slot) => slot.status.clone(),
                None => self
                    .store
                    .task_status(a.task_id)?
                    .ok_or(AppError::NotFound("task"))?,
            };
            if !s.skipped_by.contains(&user.id) {
                s.skipped_by.push(user.id);
            }
            task_status = Some(s);
        }
        match self.store.end_assignment(&ended, task_status.as_ref()) {
            Ok(()) => {}
            Err(StoreError::AssignmentEnded(_)) => {
                return Err(lease_error(
                    ErrorCode::LeaseEnded,
                    "the lease was already ended",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        queue.remove_lease(a.task_id, a.id);
        if let Some(s) = task_status {
            queue.set_status(s);
        }
        Ok(())
    }

    /// Skips (never offered to this expert again) or releases (back to the queue) a lease.
    pub async fn end_without_answer(
        self: &Arc<Self>,
        user: User,
        id: Id,
        token: String,
        status: AssignmentStatus,
        reason: Option<String>,
    ) -> AppResult<()> {
        self.ready().await;
        let core = self.clone();
        blocking(move || {
            let (claims, _) = core.claims_for(&user, id, &token)?;
            let a = core.live_assignment(&claims, crate::now_ms())?;
            core.end_lease(&user, &a, status, reason.clone())?;
            let action = if status == AssignmentStatus::Skipped {
                AuditAction::TaskSkip
            } else {
                AuditAction::TaskRelease
            };
            core.audit(
                Some(user.id),
                action,
                format!("task:{}", a.task_id),
                serde_json::json!({"assignment": id, "reason": reason}),
            );
            Ok(())
        })
        .await
    }

    /// Returns expired leases' tasks to the queue, on a timer.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let every = std::time::Duration::from_millis(self.config.queue.sweep_interval_ms);
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                core.ready().await;
                if core.is_stopping() {
                    return;
                }
                let c = core.clone();
                if let Err(e) = blocking(move || c.sweep()).await {
                    tracing::error!(error = %e, "lease sweep failed");
                }
            }
        });
    }

    /// Ends every lease whose time is up (the expire transition). Returns how many were ended.
    pub fn sweep(&self) -> AppResult<usize> {
        // The last moment the server was known up, for the downtime grace after a restart,
        // and the leases live at that moment.
        self.store.set_alive_at(crate::now_ms())?;
        self.store.write_live_leases()?;
        let mut ended = 0;
        loop {
            if self.is_stopping() {
                return Ok(ended);
            }
            let now = crate::now_ms();
            let batch = self.store.expired_assignments(now, 500)?;
            if batch.is_empty() {
                return Ok(ended);
            }
            let size = batch.len();
            for a in batch {
                let q = self.queue.project(a.project_id);
                let mut queue = Queue::lock(&q);
                // Re-read under the lock: a heartbeat may have extended it meanwhile.
                let Some(mut cur) = self.store.assignment(a.id)? else {
                    continue;
                };
                if cur.status != AssignmentStatus::Active || cur.expires_at > now {
                    continue;
                }
                cur.status = AssignmentStatus::Expired;
                match self.store.end_assignment(&cur, None) {
                    Ok(()) | Err(StoreError::AssignmentEnded(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                queue.remove_lease(cur.task_id, cur.id);
                drop(queue);
                self.audit(
                    Some(cur.expert_id),
                    AuditAction::LeaseExpire,
                    format!("task:{}", cur.task_id),
                    serde_json::json!({"assignment": cur.id}),
                );
                ended += 1;
            }
            if size < 500 {
                return Ok(ended);
            }
        }
    }
}
