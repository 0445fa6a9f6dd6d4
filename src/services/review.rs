//! The review loop: hand out the next task under a lease, keep the lease alive, end it by skip,
//! release, expiry or submit. Exactness comes from one rule: every decision about a project's
//! tasks is taken while holding that project's queue lock, and the in-memory queue is changed
//! only after the store write that it mirrors has succeeded.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::projects::access_blocking;
use super::{audit, blocking, durable};
use crate::app::AppState;
use crate::auth::AssignmentClaims;
use crate::domain::*;
use crate::error::{AppError, AppResult};
use crate::metrics::Metrics;
use crate::queue::{Lease, Queue};
use crate::scripting::rubric::{self, Checked, Criterion};
use crate::scripting::{router, Plugin, PluginKind};
use crate::store::StoreError;

/// What `next` hands to the expert.
#[derive(Debug, Serialize)]
pub struct Handout {
    pub assignment: AssignmentView,
    pub task: TaskView,
    pub criteria: Vec<Criterion>,
    pub instructions: String,
}

#[derive(Debug, Serialize)]
pub struct AssignmentView {
    pub id: Id,
    pub token: String,
    pub expires_at: i64,
    pub served_at: i64,
    pub rubric_version: String,
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    pub id: Id,
    pub external_id: Option<String>,
    pub data: Value,
}

fn lease_error(code: &'static str, message: &str) -> AppError {
    AppError::conflict(code, message)
}

/// Checks an assignment token against the path and the caller.
fn claims_for(state: &AppState, user: &User, id: Id, token: &str) -> AppResult<AssignmentClaims> {
    let claims = state
        .keys
        .verify_assignment(token)
        .ok_or_else(|| lease_error("invalid_lease_token", "the assignment token is invalid"))?;
    if claims.aid != id || claims.sub != user.id {
        return Err(lease_error(
            "foreign_lease",
            "this assignment belongs to someone else",
        ));
    }
    Ok(claims)
}

/// Hands the expert their current lease in the project, or a new one; `None` when nothing is
/// left for them.
pub async fn next(state: &AppState, user: User, project: Id) -> AppResult<Option<Handout>> {
    state.queue.loaded().await;
    let st = state.clone();
    blocking(move || {
        let (project, _) = access_blocking(&st, &user, project)?;
        let now = crate::now_ms();
        let q = st.queue.project(project.id);
        let held = Queue::lock(&q).held_by(user.id, now);
        let held = match held {
            Some((_, aid)) => st
                .store
                .assignment(aid)?
                .filter(|a| a.status == AssignmentStatus::Active),
            None => None,
        };
        let assignment = match held {
            Some(a) => a,
            None => match lease_next(&st, &project, &user, now)? {
                Some(a) => a,
                None => return Ok(None),
            },
        };
        let task = st
            .store
            .task(assignment.task_id)?
            .ok_or(AppError::NotFound("task"))?;
        let criteria = st
            .registry
            .version(
                PluginKind::Rubric,
                &assignment.rubric,
                &assignment.rubric_version,
            )
            .and_then(|r| {
                Ok(rubric::criteria(
                    &st.registry.engine,
                    &r,
                    &rubric::task_value(&task),
                )?)
            });
        let criteria = match criteria {
            Ok(c) => c,
            Err(e) => {
                // The expert cannot work on a task whose form cannot be built: give it back.
                end_lease(
                    &st,
                    &user,
                    &assignment,
                    AssignmentStatus::Released,
                    Some("rubric error".into()),
                )?;
                return Err(e);
            }
        };
        let token = st
            .keys
            .assignment(&assignment)
            .map_err(AppError::internal)?;
        audit(
            &st,
            Some(user.id),
            "task.lease",
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
            task: TaskView {
                id: task.id,
                external_id: task.external_id,
                data: task.data,
            },
            criteria,
            instructions: project.instructions,
        }))
    })
    .await
}

/// Candidates a router's `pick` chooses among.
const PICK_WINDOW: usize = 32;

/// What a router's `pick` chose.
enum Choice {
    Task(Id),
    Nothing,
    Default,
}

/// Chooses a task (asking the router's `pick` when it has one) and leases it.
fn lease_next(
    st: &AppState,
    project: &Project,
    user: &User,
    now: i64,
) -> AppResult<Option<Assignment>> {
    let rubric = st.registry.current(PluginKind::Rubric, &project.rubric)?;
    let router = st.registry.current(PluginKind::Router, &project.router)?;
    let q = st.queue.project(project.id);
    // The script runs without the lock, so a slow `pick` never holds up other experts; its
    // choice is checked again under the lock below.
    let choice = if router.has_fn("pick", 2) {
        scripted_pick(st, &router, user, project.id, now)?
    } else {
        Choice::Default
    };
    let mut queue = Queue::lock(&q);
    if let Some((_, aid)) = queue.held_by(user.id, now) {
        // A concurrent `next` of the same expert leased meanwhile: answer with that lease.
        return Ok(st
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
        id: st.store.new_id()?,
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
    st.store.put_assignment(&a)?;
    queue.add_lease(task_id, Lease::from(&a));
    Metrics::count(&st.metrics.handouts);
    Ok(Some(a))
}

/// Calls `pick(expert, candidates)` over a window of the tasks this expert may take.
fn scripted_pick(
    st: &AppState,
    router: &Plugin,
    user: &User,
    project: Id,
    now: i64,
) -> AppResult<Choice> {
    let q = st.queue.project(project);
    let (window, handouts) = {
        let queue = Queue::lock(&q);
        let ids = queue.eligible(user.id, &user.skills, now, PICK_WINDOW);
        let statuses: Vec<TaskStatus> = ids
            .iter()
            .filter_map(|id| queue.slot(*id).map(|s| s.status.clone()))
            .collect();
        (statuses, queue.handouts(user.id))
    };
    if window.is_empty() {
        return Ok(Choice::Nothing);
    }
    let mut candidates = Vec::with_capacity(window.len());
    for status in &window {
        let Some(task) = st.store.task(status.task_id)? else {
            continue;
        };
        candidates.push(serde_json::json!({
            "id": task.id, "external_id": task.external_id, "meta": task.meta,
            "pool": status.pool, "priority": status.priority, "reviews": status.reviews,
            "done": status.done_by.len(), "is_gold": status.gold,
        }));
    }
    let expert = serde_json::json!({
        "id": user.id, "username": user.username, "skills": user.skills, "handouts": handouts,
    });
    Ok(
        match router::pick(
            &st.registry.engine,
            router,
            &expert,
            &Value::Array(candidates),
        )? {
            Some(i) => window
                .get(i)
                .map_or(Choice::Default, |s| Choice::Task(s.task_id)),
            None => Choice::Nothing,
        },
    )
}

/// Loads an assignment for a lease operation and checks that it is live and the caller's.
fn live_assignment(state: &AppState, claims: &AssignmentClaims, now: i64) -> AppResult<Assignment> {
    let a = state.store.assignment(claims.aid)?.ok_or_else(|| {
        lease_error(
            "lease_unknown",
            "this lease is not known (it may have expired)",
        )
    })?;
    if a.fence != claims.fence {
        return Err(lease_error(
            "foreign_lease",
            "the token does not match this assignment",
        ));
    }
    match a.status {
        AssignmentStatus::Active if a.expires_at > now => Ok(a),
        AssignmentStatus::Active | AssignmentStatus::Expired => Err(lease_error(
            "lease_expired",
            "the lease has expired; ask for the next task",
        )),
        _ => Err(lease_error("lease_ended", "the lease was already ended")),
    }
}

fn idle_capped(state: &AppState, a: &Assignment, now: i64) -> f64 {
    let gap = (now - a.last_seen_at).max(0) as f64 / 1000.0;
    a.active_seconds + gap.min(state.config.queue.idle_cutoff_seconds as f64)
}

/// Extends a lease and records active time.
pub async fn heartbeat(
    state: &AppState,
    user: User,
    id: Id,
    token: String,
) -> AppResult<Assignment> {
    state.queue.loaded().await;
    let st = state.clone();
    blocking(move || {
        let claims = claims_for(&st, &user, id, &token)?;
        let project = st
            .store
            .project(claims.pid)?
            .ok_or(AppError::NotFound("project"))?;
        let q = st.queue.project(claims.pid);
        let mut queue = Queue::lock(&q);
        let now = crate::now_ms();
        let mut a = live_assignment(&st, &claims, now)?;
        a.active_seconds = idle_capped(&st, &a, now);
        a.last_seen_at = now;
        a.expires_at = now + project.lease_seconds as i64 * 1000;
        st.store.put_assignment(&a)?;
        queue.add_lease(a.task_id, Lease::from(&a));
        Ok(a)
    })
    .await
}

/// Ends a lease without an answer. A skip also keeps the task away from this expert.
fn end_lease(
    st: &AppState,
    user: &User,
    a: &Assignment,
    status: AssignmentStatus,
    reason: Option<String>,
) -> AppResult<()> {
    let q = st.queue.project(a.project_id);
    let mut queue = Queue::lock(&q);
    let mut ended = a.clone();
    ended.status = status;
    ended.reason = reason;
    let mut task_status = None;
    if status == AssignmentStatus::Skipped {
        let mut s = match queue.slot(a.task_id) {
            Some(slot) => slot.status.clone(),
            None => st
                .store
                .task_status(a.task_id)?
                .ok_or(AppError::NotFound("task"))?,
        };
        if !s.skipped_by.contains(&user.id) {
            s.skipped_by.push(user.id);
        }
        task_status = Some(s);
    }
    match st.store.end_assignment(&ended, task_status.as_ref()) {
        Ok(()) => {}
        Err(StoreError::AssignmentEnded(_)) => {
            return Err(lease_error("lease_ended", "the lease was already ended"))
        }
        Err(e) => return Err(e.into()),
    }
    queue.remove_lease(a.task_id, a.id);
    if let Some(s) = task_status {
        queue.set_status(s);
    }
    Ok(())
}

pub async fn finish_without_answer(
    state: &AppState,
    user: User,
    id: Id,
    token: String,
    status: AssignmentStatus,
    reason: Option<String>,
) -> AppResult<()> {
    state.queue.loaded().await;
    let st = state.clone();
    blocking(move || {
        let claims = claims_for(&st, &user, id, &token)?;
        let a = live_assignment(&st, &claims, crate::now_ms())?;
        end_lease(&st, &user, &a, status, reason.clone())?;
        let action = if status == AssignmentStatus::Skipped {
            "task.skip"
        } else {
            "task.release"
        };
        audit(
            &st,
            Some(user.id),
            action,
            format!("task:{}", a.task_id),
            serde_json::json!({"assignment": id, "reason": reason}),
        );
        Ok(())
    })
    .await
}

/// What a submit produced: the stored submission and whether it was stored by an earlier call.
pub struct Submitted {
    pub submission: Submission,
    pub replay: bool,
}

pub async fn submit(
    state: &AppState,
    user: User,
    id: Id,
    token: String,
    answer: Value,
) -> AppResult<Submitted> {
    state.queue.loaded().await;
    let st = state.clone();
    let result = blocking(move || submit_blocking(&st, &user, id, &token, answer)).await;
    let counter = match &result {
        Ok(done) if done.replay => &state.metrics.submission_replays,
        Ok(_) => &state.metrics.submissions,
        Err(AppError::InvalidAnswer(_)) => &state.metrics.invalid_answers,
        Err(_) => return result,
    };
    Metrics::count(counter);
    let result = result?;
    // Acknowledge only once the submission is on disk; retries wait for the same guarantee.
    durable(state).await?;
    Ok(result)
}

fn existing(st: &AppState, a: &Assignment) -> AppResult<Submitted> {
    let sid = a
        .submission_id
        .ok_or_else(|| AppError::internal("submitted assignment without submission"))?;
    let submission = st
        .store
        .submission(sid)?
        .ok_or(AppError::NotFound("submission"))?;
    Ok(Submitted {
        submission,
        replay: true,
    })
}

fn submit_blocking(
    st: &AppState,
    user: &User,
    id: Id,
    token: &str,
    answer: Value,
) -> AppResult<Submitted> {
    let claims = claims_for(st, user, id, token)?;
    let now = crate::now_ms();
    // Phase 1, without the lock: find the assignment and check the answer (runs the rubric).
    let stored = st.store.assignment(id)?;
    let recovered = stored.is_none();
    let a = match stored {
        Some(a) if a.status == AssignmentStatus::Submitted => return existing(st, &a),
        Some(a) => a,
        // Lost in a crash before it reached the disk: the signed token vouches for it.
        None => claims.to_assignment(),
    };
    if a.fence != claims.fence {
        return Err(lease_error(
            "foreign_lease",
            "the token does not match this assignment",
        ));
    }
    if a.status != AssignmentStatus::Active && a.status != AssignmentStatus::Expired {
        return Err(lease_error("lease_ended", "the lease was already ended"));
    }
    if !recovered && (a.status == AssignmentStatus::Expired || a.expires_at <= now) {
        return Err(lease_error(
            "lease_expired",
            "the lease has expired; ask for the next task",
        ));
    }
    let task = st
        .store
        .task(a.task_id)?
        .ok_or(AppError::NotFound("task"))?;
    let rubric = st
        .registry
        .version(PluginKind::Rubric, &a.rubric, &a.rubric_version)?;
    let scores = match rubric::check_answer(&st.registry.engine, &rubric, &task, &answer)? {
        Checked::Valid { scores } => scores,
        Checked::Invalid(errors) => return Err(AppError::InvalidAnswer(errors)),
    };
    let decision = on_submit(st, &task, user, &answer, &scores)?;

    // Phase 2, under the project lock: re-check and commit.
    let q = st.queue.project(a.project_id);
    let mut queue = Queue::lock(&q);
    let now = crate::now_ms();
    match st.store.assignment(id)? {
        Some(cur) if cur.status == AssignmentStatus::Submitted => return existing(st, &cur),
        Some(cur) if cur.status != AssignmentStatus::Active => {
            let code = if cur.status == AssignmentStatus::Expired {
                "lease_expired"
            } else {
                "lease_ended"
            };
            return Err(lease_error(
                code,
                "the lease ended before the answer arrived",
            ));
        }
        Some(cur) if cur.expires_at <= now && !recovered => {
            return Err(lease_error(
                "lease_expired",
                "the lease has expired; ask for the next task",
            ));
        }
        _ => {}
    }
    let (status, taken_by_others) = match queue.slot(a.task_id) {
        Some(slot) => {
            let others = slot.taken(now)
                - usize::from(
                    slot.leases
                        .iter()
                        .any(|l| l.assignment_id == a.id && l.expires_at > now),
                );
            (slot.status.clone(), others)
        }
        None => {
            let s = st
                .store
                .task_status(a.task_id)?
                .ok_or(AppError::NotFound("task"))?;
            let done = s.done_by.len();
            (s, done)
        }
    };
    if status.done_by.contains(&user.id) {
        return Err(lease_error(
            "already_reviewed",
            "you have already reviewed this task",
        ));
    }
    if status.state != TaskState::Open || (recovered && taken_by_others >= status.reviews as usize)
    {
        return Err(lease_error(
            "lease_expired",
            "the task no longer needs this review",
        ));
    }
    let mut new_status = status.clone();
    new_status.done_by.push(user.id);
    decision.apply(&mut new_status);
    let submission = Submission {
        id: 0,
        task_id: a.task_id,
        project_id: a.project_id,
        assignment_id: a.id,
        expert_id: user.id,
        answer,
        scores,
        rubric: a.rubric.clone(),
        rubric_version: a.rubric_version.clone(),
        router: a.router.clone(),
        router_version: a.router_version.clone(),
        served_at: a.served_at,
        submitted_at: now,
        active_seconds: idle_capped(st, &a, now),
    };
    let submission = match st.store.commit_submission(submission, &a, &new_status) {
        Ok(s) => s,
        Err(StoreError::AssignmentEnded(cur)) => return existing(st, &cur),
        Err(e) => return Err(e.into()),
    };
    queue.remove_lease(a.task_id, a.id);
    queue.set_status(new_status);
    drop(queue);
    audit(
        st,
        Some(user.id),
        "task.submit",
        format!("task:{}", a.task_id),
        serde_json::json!({"submission": submission.id}),
    );
    Ok(Submitted {
        submission,
        replay: false,
    })
}

/// Asks the project's current router what a new submission means for its task.
fn on_submit(
    st: &AppState,
    task: &Task,
    user: &User,
    answer: &Value,
    scores: &Value,
) -> AppResult<router::Decision> {
    let project = st
        .store
        .project(task.project_id)?
        .ok_or(AppError::NotFound("project"))?;
    let plugin = st.registry.current(PluginKind::Router, &project.router)?;
    if !plugin.has_fn("on_submit", 3) {
        return Ok(router::Decision::Default);
    }
    let earlier = st.store.submissions_for_task(task.id)?;
    let view = |expert: Id, answer: &Value, scores: &Value| serde_json::json!({"expert_id": expert, "answer": answer, "scores": scores});
    let submission = view(user.id, answer, scores);
    let mut all: Vec<Value> = earlier
        .iter()
        .map(|s| view(s.expert_id, &s.answer, &s.scores))
        .collect();
    all.push(submission.clone());
    Ok(router::on_submit(
        &st.registry.engine,
        &plugin,
        &rubric::task_value(task),
        &submission,
        &Value::Array(all),
    )?)
}

/// Returns expired leases' tasks to the queue, on a timer.
pub fn spawn_sweeper(state: AppState) {
    let every = std::time::Duration::from_millis(state.config.queue.sweep_interval_ms);
    let state = Arc::new(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            state.queue.loaded().await;
            let st = state.clone();
            if let Err(e) = blocking(move || sweep(&st)).await {
                tracing::error!(error = %e, "lease sweep failed");
            }
        }
    });
}

/// Ends every lease whose time is up. Returns how many were ended.
pub fn sweep(st: &AppState) -> AppResult<usize> {
    let mut ended = 0;
    loop {
        let now = crate::now_ms();
        let batch = st.store.expired_assignments(now, 500)?;
        if batch.is_empty() {
            return Ok(ended);
        }
        let size = batch.len();
        for a in batch {
            let q = st.queue.project(a.project_id);
            let mut queue = Queue::lock(&q);
            // Re-read under the lock: a heartbeat may have extended it meanwhile.
            let Some(mut cur) = st.store.assignment(a.id)? else {
                continue;
            };
            if cur.status != AssignmentStatus::Active || cur.expires_at > now {
                continue;
            }
            cur.status = AssignmentStatus::Expired;
            match st.store.end_assignment(&cur, None) {
                Ok(()) | Err(StoreError::AssignmentEnded(_)) => {}
                Err(e) => return Err(e.into()),
            }
            queue.remove_lease(cur.task_id, cur.id);
            drop(queue);
            audit(
                st,
                Some(cur.expert_id),
                "lease.expire",
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
