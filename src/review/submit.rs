//! Submit, first half: check the token and the lease, validate and score the answer with the
//! rubric version the task was served under, and ask the router what the answer means. This
//! runs on the blocking pool, many submits at once and without any lock; what passes goes to
//! the committer (`commit.rs`), which re-checks it under the project lock and stores it with
//! the others that arrived together. A rejected answer (422) never reaches the committer.

use std::sync::Arc;

use serde_json::Value;

use super::commit::Pending;
use super::lease::lease_error;
use super::ReviewCore;
use crate::domain::*;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::metrics::Metrics;
use crate::scripting::rubric::{self, Checked};
use crate::scripting::{router, Plugin, PluginKind};

/// What a submit produced: the stored submission and whether an earlier call stored it.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub submission: Submission,
    pub replay: bool,
}

/// The outcome of the first half.
pub(super) enum Prepared {
    /// The assignment already has its submission (a client retry).
    Stored(Box<Submitted>),
    Pending(Box<Pending>),
}

impl ReviewCore {
    /// Stores an answer for a lease. Answers only once the submission is durable; a retry of
    /// a stored one returns it (`replay`).
    pub async fn submit(
        self: &Arc<Self>,
        user: User,
        id: Id,
        token: String,
        answer: Value,
    ) -> AppResult<Submitted> {
        self.ready().await;
        let core = self.clone();
        // The project's share of the script permits; a bad token is refused inside, under any gate.
        let project = self.keys.verify_assignment(&token).map_or(0, |c| c.pid);
        let who = user.clone();
        // One channel answers the request, from whichever thread decides: the pool thread for
        // a refusal or a stored answer, the committer once the batch is durable. The request
        // is woken once, by that answer.
        let (reply, answered) = tokio::sync::oneshot::channel();
        self.in_project_detached(project, move || {
            match core.prepare_submit(&who, id, &token, answer) {
                Ok(Prepared::Pending(pending)) => core.committer.enqueue(*pending, reply),
                Ok(Prepared::Stored(done)) => drop(reply.send(Ok(*done))),
                Err(e) => drop(reply.send(Err(e))),
            }
        })
        .await?;
        let result = match answered.await {
            // A retry waits for the same guarantee as the first call: the submission on disk.
            Ok(Ok(done)) if done.replay => self.durable().await.map(|()| done),
            Ok(result) => result,
            Err(_) => Err(AppError::internal("the submit failed")),
        };
        let result = self.as_seen_by(&user, project, result).await;
        let counter = match &result {
            Ok(done) if done.replay => &self.metrics.submission_replays,
            Ok(_) => &self.metrics.submissions,
            Err(AppError::InvalidAnswer(_)) => &self.metrics.invalid_answers,
            Err(_) => return result,
        };
        Metrics::count(counter);
        result
    }

    pub(super) fn prepare_submit(
        &self,
        user: &User,
        id: Id,
        token: &str,
        answer: Value,
    ) -> AppResult<Prepared> {
        let (claims, project) = self.claims_for(user, id, token)?;
        let now = crate::now_ms();
        let stored = self.store.assignment(id)?;
        let recovered = stored.is_none();
        let a = match stored {
            Some(a) if a.status == AssignmentStatus::Submitted => {
                return super::commit::existing(&*self.store, &a)
                    .map(|s| Prepared::Stored(Box::new(s)))
            }
            Some(a) => a,
            // Lost in a crash before it reached the disk: the signed token vouches for it.
            None => claims.to_assignment(),
        };
        if a.fence != claims.fence {
            return Err(lease_error(
                ErrorCode::ForeignLease,
                "the token does not match this assignment",
            ));
        }
        if a.status != AssignmentStatus::Active && a.status != AssignmentStatus::Expired {
            return Err(lease_error(
                ErrorCode::LeaseEnded,
                "the lease was already ended",
            ));
        }
        if !recovered && (a.status == AssignmentStatus::Expired || a.expires_at <= now) {
            return Err(lease_error(
                ErrorCode::LeaseExpired,
                "the lease has expired; ask for the next task",
            ));
        }
        let rubric = self.served_rubric(&a)?;
        let router = self.registry.current(PluginKind::Router, &project.router)?;
        // The task is read (a copy of its content, decoded) only when something looks at it;
        // that it still exists is checked again when the submission is committed.
        let read_task = || -> AppResult<Task> {
            self.store
                .task(a.task_id)?
                .ok_or(AppError::NotFound("task"))
        };
        let mut task = match rubric.criteria_reads_task {
            true => Some(read_task()?),
            false => None,
        };
        let criteria = self
            .registry
            .criteria_of(&rubric, a.task_id, task.as_ref())?;
        let needed = rubric::checks_need_task(&rubric, &criteria)
            || router.has_fn("on_submit", 3)
            || (rubric.has_fn("grade", 2) && self.may_be_gold(&a));
        if task.is_none() && needed {
            task = Some(read_task()?);
        }
        let checked = rubric::check_answer_with(
            &self.registry.engine,
            &rubric,
            task.as_ref(),
            &criteria,
            &answer,
        )?;
        let scores = match checked {
            Checked::Valid { scores } => scores,
            Checked::Invalid(errors) => return Err(AppError::InvalidAnswer(errors)),
        };
        let decision = match &task {
            Some(task) => self.on_submit(&router, task, user, &answer, &scores)?,
            None => router::Decision::Default, // the router has no `on_submit`
        };
        let sampled = super::qa::sampled(a.id, project.qa_rate);
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
            active_seconds: self.idle_capped(&a, now),
            qa: None,
        };
        Ok(Prepared::Pending(Box::new(Pending {
            assignment: a,
            recovered,
            submission,
            decision,
            sampled,
        })))
    }

    /// Whether a task may be gold (its gold answer is then needed to grade the answer): as the
    /// hand-out index knows it, and `true` when the index no longer holds the task.
    fn may_be_gold(&self, a: &Assignment) -> bool {
        let q = self.queue.project(a.project_id);
        let index = crate::queue::Queue::lock_index(&q);
        index.slot(a.task_id).is_none_or(|slot| slot.status.gold)
    }

    /// Asks the project's current router what a new submission means for its task.
    fn on_submit(
        &self,
        plugin: &Plugin,
        task: &Task,
        user: &User,
        answer: &Value,
        scores: &Value,
    ) -> AppResult<router::Decision> {
        if !plugin.has_fn("on_submit", 3) {
            return Ok(router::Decision::Default);
        }
        let earlier = self.store.submissions_for_task(task.id)?;
        // Each earlier submission with its QA verdict (`()` when it has none yet).
        let view = |expert: Id, answer: &Value, scores: &Value, qa: Option<&QaRecord>| {
            serde_json::json!({"expert_id": expert, "answer": answer, "scores": scores,
                "verdict": qa.map(|q| q.verdict), "reason": qa.and_then(|q| q.reason.as_deref())})
        };
        let submission = view(user.id, answer, scores, None);
        let mut all: Vec<Value> = earlier
            .iter()
            .map(|s| view(s.expert_id, &s.answer, &s.scores, s.qa.as_ref()))
            .collect();
        all.push(submission.clone());
        Ok(router::on_submit(
            &self.registry.engine,
            plugin,
            &rubric::task_value(task),
            &submission,
            &Value::Array(all),
        )?)
    }
}
