//! Quality review: the QA queue and its verdicts, state changes of the core like submit.
//!
//! A task waits in QA (`TaskState::InQa`) when the router's `on_submit` says `qa` or
//! `adjudicate`, or when a completing submission is drawn by the project's `qa_rate`. Reviewers
//! (and leads, and admins) lease such tasks one at a time, exactly like reviews: the QA side of
//! the project's queue is changed under the project lock, never two reviewers hold one task,
//! an expired lease frees it, and nobody gets a task they answered. A verdict is written in one
//! transaction (submissions' QA records, the task's status, the final answer, the audit, and
//! the result a retry gets back) and acknowledged once durable.
//!
//! QA leases live in memory: a restart frees them all, and a verdict that arrives with a valid
//! signed token afterwards is still taken if no one else holds the task.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::lease::{lease_error, TaskView};
use super::ReviewCore;
use crate::auth::tokens::QaClaims;
use crate::domain::*;
use crate::error::{AppError, AppResult, ErrorCode, FieldError};
use crate::queue::{QaLease, Queue};
use crate::scripting::rubric::{self, Checked, Criterion};
use crate::scripting::{router, PluginKind};
use crate::services::projects::{access_blocking, Access};
use crate::store::{StoreError, VerdictWrite};

/// The longest reason a reviewer may give.
const MAX_REASON: usize = 2000;

/// Whether the submission with this key (its assignment id) is drawn for QA at `rate`: a fixed
/// draw per key, so a retry or a replay decides the same.
pub fn sampled(key: Id, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    // splitmix64: spreads consecutive ids evenly over [0, 1).
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// A QA item handed to a reviewer.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct QaHandout {
    pub kind: QaKind,
    pub assignment: QaAssignment,
    pub task: TaskView,
    pub submissions: Vec<QaSubmission>,
    /// The rubric's criteria (their shape: "Rubric plugins" in the README).
    #[schemars(with = "Vec<serde_json::Value>")]
    pub criteria: Arc<[Criterion]>,
    pub instructions: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct QaAssignment {
    pub id: Id,
    pub token: String,
    pub expires_at: i64,
}

/// A submission as a reviewer sees it; the author only when the project is not blind.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct QaSubmission {
    pub id: Id,
    pub answer: Value,
    pub scores: Value,
    pub active_seconds: f64,
    pub rubric_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaRecord>,
}

/// `POST /qa/{id}/verdict`: verdicts for a QA item, or the final answer for adjudication.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    pub token: String,
    #[serde(default)]
    pub verdicts: Option<Vec<VerdictItem>>,
    #[serde(default, rename = "final")]
    pub final_answer: Option<Value>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictItem {
    pub submission: Id,
    pub verdict: Verdict,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub answer: Option<Value>,
}

/// The kept counter of one verdict on one expert's submissions in a project.
pub fn expert_counter(verdict: Verdict, expert: Id) -> String {
    let name = match verdict {
        Verdict::Accept => "accepted",
        Verdict::Reject => "rejected",
        Verdict::Fix => "fixed",
    };
    format!("{name}_by_{expert}")
}

/// The submissions a QA item asks about: those that count and have no verdict yet (all that
/// count, when a router sent the task back for another round).
fn unchecked(subs: &[Submission]) -> Vec<Id> {
    let open: Vec<Id> = subs
        .iter()
        .filter(|s| s.counts() && s.qa.is_none())
        .map(|s| s.id)
        .collect();
    if open.is_empty() {
        subs.iter().filter(|s| s.counts()).map(|s| s.id).collect()
    } else {
        open
    }
}

fn may_check(access: Access) -> AppResult<()> {
    match access {
        Access::Admin => Ok(()),
        Access::Member(role) if role.checks_quality() => Ok(()),
        Access::Member(_) => Err(AppError::Forbidden(
            "QA is for the project's reviewers and leads",
        )),
    }
}

impl ReviewCore {
    /// Hands the reviewer their current QA item in the project, or the next free one.
    pub async fn qa_next(
        self: &Arc<Self>,
        user: User,
        project: Id,
    ) -> AppResult<Option<QaHandout>> {
        self.qa_serve(user, project, true).await
    }

    /// The reviewer's held QA item, without taking a new one (for a page shown by a GET).
    pub async fn qa_current(
        self: &Arc<Self>,
        user: User,
        project: Id,
    ) -> AppResult<Option<QaHandout>> {
        self.qa_serve(user, project, false).await
    }

    async fn qa_serve(
        self: &Arc<Self>,
        user: User,
        project: Id,
        take_new: bool,
    ) -> AppResult<Option<QaHandout>> {
        self.ready().await;
        let (core, who) = (self.clone(), user.clone());
        let result = self
            .in_project(project, move || {
                core.qa_next_blocking(&who, project, take_new)
            })
            .await;
        self.as_seen_by(&user, project, result).await
    }

    fn qa_next_blocking(
        &self,
        user: &User,
        project: Id,
        take_new: bool,
    ) -> AppResult<Option<QaHandout>> {
        let (project, access) = access_blocking(self, user, project)?;
        may_check(access)?;
        let now = crate::now_ms();
        let q = self.queue.project(project.id);
        let (task_id, lease, status) = {
            let mut queue = Queue::lock(&q);
            let held = queue
                .qa
                .held_by(user.id, now)
                .map(|(task, lease)| (task, lease.clone()));
            let (task, lease) = match held {
                Some(held) => held,
                None if !take_new => return Ok(None),
                None => {
                    let free = queue.qa.first_free(now, |s| {
                        !s.done_by.contains(&user.id) && !s.skipped_by.contains(&user.id)
                    });
                    let Some(task) = free else {
                        return Ok(None);
                    };
                    let lease = QaLease {
                        id: self.store.new_id()?,
                        reviewer: user.id,
                        expires_at: now + project.lease_seconds as i64 * 1000,
                    };
                    queue.qa.lease_task(task, lease.clone());
                    (task, lease)
                }
            };
            let status = queue
                .qa
                .status(task)
                .cloned()
                .ok_or_else(|| AppError::internal("QA item without status"))?;
            (task, lease, status)
        };
        let task = self
            .store
            .task(task_id)?
            .ok_or(AppError::NotFound("task"))?;
        let subs = self.store.submissions_for_task(task_id)?;
        let kind = status.qa.unwrap_or(QaKind::Qa);
        let shown: Vec<&Submission> = match kind {
            QaKind::Qa => {
                let ids = unchecked(&subs);
                subs.iter().filter(|s| ids.contains(&s.id)).collect()
            }
            QaKind::Adjudicate => subs.iter().filter(|s| s.counts()).collect(),
        };
        let rubric = self.rubric_for(&project, shown.last().copied())?;
        let criteria = self.registry.criteria(&rubric, &task)?;
        let mut submissions = Vec::with_capacity(shown.len());
        for s in shown {
            let expert = if project.qa_blind {
                None
            } else {
                self.store.user(s.expert_id)?.map(|u| u.username)
            };
            submissions.push(QaSubmission {
                id: s.id,
                answer: s.answer.clone(),
                scores: s.scores.clone(),
                active_seconds: s.active_seconds,
                rubric_version: s.rubric_version.clone(),
                expert,
                qa: s.qa.clone(),
            });
        }
        let token = self
            .keys
            .qa_lease(user.id, lease.id, task_id, project.id, now / 1000)
            .map_err(AppError::internal)?;
        self.audit(
            Some(user.id),
            if take_new {
                AuditAction::QaLease
            } else {
                AuditAction::TaskView
            },
            format!("task:{task_id}"),
            json!({"lease": lease.id, "kind": kind}),
        );
        Ok(Some(QaHandout {
            kind,
            assignment: QaAssignment {
                id: lease.id,
                token,
                expires_at: lease.expires_at,
            },
            task: TaskView::of(task)?,
            submissions,
            criteria,
            instructions: project.instructions,
        }))
    }

    /// The rubric a submission was made with (the project's current one without it).
    fn rubric_for(
        &self,
        project: &Project,
        sub: Option<&Submission>,
    ) -> AppResult<Arc<crate::scripting::Plugin>> {
        match sub {
            Some(s) => self
                .registry
                .version(PluginKind::Rubric, &s.rubric, &s.rubric_version),
            None => self.registry.current(PluginKind::Rubric, &project.rubric),
        }
    }

    /// Checks a QA token against the path, the caller and their role now; with the token's
    /// project, read for that check.
    fn qa_claims(&self, user: &User, id: Id, token: &str) -> AppResult<(QaClaims, Project)> {
        let claims = self
            .keys
            .verify_qa(token)
            .ok_or_else(|| lease_error(ErrorCode::InvalidLeaseToken, "the QA token is invalid"))?;
        if claims.aid != id || claims.sub != user.id {
            return Err(lease_error(
                ErrorCode::ForeignLease,
                "this QA lease belongs to someone else",
            ));
        }
        let (project, access) = access_blocking(self, user, claims.pid)?;
        may_check(access)?;
        Ok((claims, project))
    }

    /// Extends a QA lease; returns its new expiry.
    pub async fn qa_heartbeat(
        self: &Arc<Self>,
        user: User,
        id: Id,
        token: String,
    ) -> AppResult<i64> {
        self.ready().await;
        let core = self.clone();
        super::blocking(move || {
            let (claims, project) = core.qa_claims(&user, id, &token)?;
            let q = core.queue.project(claims.pid);
            let mut queue = Queue::lock(&q);
            let now = crate::now_ms();
            match queue.qa.lease(claims.tid, now) {
                Some(l) if l.id == id => {
                    let lease = QaLease {
                        expires_at: now + project.lease_seconds as i64 * 1000,
                        ..l.clone()
                    };
                    let expires_at = lease.expires_at;
                    queue.qa.lease_task(claims.tid, lease);
                    Ok(expires_at)
                }
                _ => Err(lease_error(
                    ErrorCode::LeaseExpired,
                    "the QA lease has expired; ask for the next item",
                )),
            }
        })
        .await
    }

    /// Gives a QA item back to the queue.
    pub async fn qa_release(self: &Arc<Self>, user: User, id: Id, token: String) -> AppResult<()> {
        self.ready().await;
        let core = self.clone();
        super::blocking(move || {
            let (claims, _) = core.qa_claims(&user, id, &token)?;
            let q = core.queue.project(claims.pid);
            let mut queue = Queue::lock(&q);
            match queue.qa.lease(claims.tid, crate::now_ms()) {
                Some(l) if l.id == id => {
                    queue.qa.end_lease(claims.tid, id);
                    Ok(())
                }
                _ => Err(lease_error(
                    ErrorCode::LeaseEnded,
                    "the QA lease has already ended",
                )),
            }
        })
        .await
    }

    /// Records a verdict (or a final answer) for a QA item. A retry gets the first result
    /// (`true`: this is a replay).
    pub async fn qa_verdict(
        self: &Arc<Self>,
        user: User,
        id: Id,
        body: VerdictBody,
    ) -> AppResult<(Value, bool)> {
        self.ready().await;
        let project = self.keys.verify_qa(&body.token).map_or(0, |c| c.pid);
        let (core, who) = (self.clone(), user.clone());
        let result = self
            .in_project(project, move || core.qa_verdict_blocking(&who, id, body))
            .await;
        let result = self.as_seen_by(&user, project, result).await?;
        self.durable().await?;
        Ok(result)
    }

    fn qa_verdict_blocking(
        &self,
        user: &User,
        id: Id,
        body: VerdictBody,
    ) -> AppResult<(Value, bool)> {
        let (claims, project) = self.qa_claims(user, id, &body.token)?;
        if let Some(first) = self.store.qa_result(id)? {
            return Ok((first, true));
        }
        let now = crate::now_ms();
        let status = self.qa_item(&claims, now)?;
        let task = self
            .store
            .task(claims.tid)?
            .ok_or(AppError::NotFound("task"))?;
        let subs = self.store.submissions_for_task(task.id)?;
        let kind = status.qa.unwrap_or(QaKind::Qa);
        let mut write = match kind {
            QaKind::Qa => {
                let items = body.verdicts.ok_or_else(|| {
                    AppError::field("verdicts", "a QA item needs a verdict on each submission")
                })?;
                self.judge(&project, &task, status, subs, &items, user, now)?
            }
            QaKind::Adjudicate => {
                let answer = body.final_answer.ok_or_else(|| {
                    AppError::field("final", "an adjudication needs the final answer")
                })?;
                self.adjudicate(&project, &task, status, &subs, answer, user, now)?
            }
        };
        write.lease = id;
        // Written under the project lock, after checking again that the lease still stands,
        // then mirrored into the queue: the same rule as every other state change.
        let q = self.queue.project(claims.pid);
        let mut queue = Queue::lock(&q);
        self.qa_item_locked(&queue, &claims, now)?;
        match self.store.commit_verdict(&write) {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let first = self.store.qa_result(id)?;
                return first
                    .map(|first| (first, true))
                    .ok_or_else(|| AppError::internal("verdict conflict without a result"));
            }
            Err(e) => return Err(e.into()),
        }
        let task = write.status.task_id;
        queue.set_status(write.status);
        queue.qa.end_lease(task, id);
        Ok((write.result, false))
    }

    /// The status of the QA item a token names, if the token's holder may still answer it.
    fn qa_item(&self, claims: &QaClaims, now: i64) -> AppResult<TaskStatus> {
        let q = self.queue.project(claims.pid);
        let queue = Queue::lock(&q);
        self.qa_item_locked(&queue, claims, now)
    }

    fn qa_item_locked(
        &self,
        queue: &crate::queue::ProjectQueue,
        claims: &QaClaims,
        now: i64,
    ) -> AppResult<TaskStatus> {
        let status = queue.qa.status(claims.tid).cloned().ok_or_else(|| {
            lease_error(ErrorCode::LeaseEnded, "the task is no longer waiting in QA")
        })?;
        match queue.qa.lease(claims.tid, now) {
            Some(l) if l.id != claims.aid => Err(lease_error(
                ErrorCode::LeaseExpired,
                "the QA lease has expired and another reviewer has the task",
            )),
            // Held, or free (expired, or lost in a restart) with no one else on it.
            _ => Ok(status),
        }
    }

    /// Verdicts on a QA item's submissions, and what they do to the task.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        project: &Project,
        task: &Task,
        mut status: TaskStatus,
        mut subs: Vec<Submission>,
        items: &[VerdictItem],
        user: &User,
        now: i64,
    ) -> AppResult<VerdictWrite> {
        let asked = unchecked(&subs);
        let mut given: Vec<Id> = items.iter().map(|i| i.submission).collect();
        given.sort_unstable();
        let mut wanted = asked.clone();
        wanted.sort_unstable();
        if given != wanted {
            return Err(AppError::field(
                "verdicts",
                format!("give exactly one verdict for each of the submissions {asked:?}"),
            ));
        }
        let router_plugin = self.registry.current(PluginKind::Router, &project.router)?;
        let task_json = rubric::task_value(task);
        let mut errors = Vec::new();
        let mut decision = router::Decision::Default;
        let mut audit = Vec::new();
        let mut counts: Vec<(String, i64)> = Vec::new();
        let mut changed = Vec::new();
        let mut shown = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(sub) = subs.iter_mut().find(|s| s.id == item.submission) else {
                continue;
            };
            let reason = item
                .reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty());
            if reason.is_some_and(|r| r.len() > MAX_REASON) {
                errors.push(FieldError::new(
                    format!("verdicts[{i}].reason"),
                    format!("must be at most {MAX_REASON} bytes"),
                ));
                continue;
            }
            let mut record = QaRecord {
                verdict: item.verdict,
                reason: reason.map(str::to_owned),
                reviewer: user.id,
                fixed_answer: None,
                fixed_scores: None,
                at: now,
            };
            match item.verdict {
                Verdict::Accept => counts.push(("accepted".into(), 1)),
                Verdict::Reject => {
                    if reason.is_none() {
                        errors.push(FieldError::new(
                            format!("verdicts[{i}].reason"),
                            "a rejection needs a reason the author will see",
                        ));
                        continue;
                    }
                    // It stops counting: the task needs one more review, from someone else.
                    status.done_by.retain(|e| *e != sub.expert_id);
                    if !status.skipped_by.contains(&sub.expert_id) {
                        status.skipped_by.push(sub.expert_id);
                    }
                    counts.push(("rejected".into(), 1));
                }
                Verdict::Fix => {
                    let Some(answer) = &item.answer else {
                        errors.push(FieldError::new(
                            format!("verdicts[{i}].answer"),
                            "a fix needs the corrected answer",
                        ));
                        continue;
                    };
                    // Checked and scored under the rubric version the submission was made with.
                    let rubric = self.registry.version(
                        PluginKind::Rubric,
                        &sub.rubric,
                        &sub.rubric_version,
                    )?;
                    let criteria = self.registry.criteria(&rubric, task)?;
                    match rubric::check_answer_with(
                        &self.registry.engine,
                        &rubric,
                        Some(task),
                        &criteria,
                        answer,
                    )? {
                        Checked::Valid { scores } => {
                            record.fixed_answer = Some(answer.clone());
                            record.fixed_scores = Some(scores);
                        }
                        Checked::Invalid(list) => {
                            errors.extend(list.into_iter().map(|e| {
                                FieldError::new(
                                    format!("verdicts[{i}].answer.{}", e.field),
                                    e.message,
                                )
                            }));
                            continue;
                        }
                    }
                    counts.push(("fixed".into(), 1));
                }
            }
            let verdict_json = json!({"verdict": record.verdict, "reason": record.reason,
                "fixed_answer": record.fixed_answer});
            let sub_json = json!({"id": sub.id, "expert_id": sub.expert_id,
                "answer": sub.answer, "scores": sub.scores});
            let said = router::on_verdict(
                &self.registry.engine,
                &router_plugin,
                &task_json,
                &sub_json,
                &verdict_json,
            )?;
            if said != router::Decision::Default {
                decision = said;
            }
            // Per author too, for the lead's view of each expert.
            counts.push((expert_counter(record.verdict, sub.expert_id), 1));
            audit.push(AuditEvent {
                at: now,
                actor: Some(user.id),
                action: AuditAction::QaVerdict,
                object: format!("submission:{}", sub.id),
                detail: json!({"project": project.id, "task": task.id, "author": sub.expert_id,
                    "verdict": record.verdict, "reason": record.reason,
                    "fixed": record.fixed_answer.is_some()}),
            });
            shown.push(json!({"submission": sub.id, "verdict": record.verdict}));
            sub.qa = Some(record);
            changed.push(sub.clone());
        }
        if !errors.is_empty() {
            return Err(AppError::InvalidAnswer(errors));
        }
        // By default a rejection reopens the task (it lacks a counting review now) and
        // otherwise it completes; the router's `on_verdict` may say otherwise.
        decision.apply(&mut status, false);
        let result = json!({"task": task.id, "kind": QaKind::Qa, "state": status.state,
            "verdicts": shown});
        Ok(VerdictWrite {
            lease: 0,
            submissions: changed,
            status,
            final_answer: None,
            result,
            audit,
            counts,
        })
    }

    /// The final answer of an adjudicated task.
    #[allow(clippy::too_many_arguments)]
    fn adjudicate(
        &self,
        project: &Project,
        task: &Task,
        mut status: TaskStatus,
        subs: &[Submission],
        answer: Value,
        user: &User,
        now: i64,
    ) -> AppResult<VerdictWrite> {
        let latest = subs
            .iter()
            .filter(|s| s.counts())
            .max_by_key(|s| s.submitted_at);
        let rubric = self.rubric_for(project, latest)?;
        let criteria = self.registry.criteria(&rubric, task)?;
        let scores = match rubric::check_answer_with(
            &self.registry.engine,
            &rubric,
            Some(task),
            &criteria,
            &answer,
        )? {
            Checked::Valid { scores } => scores,
            Checked::Invalid(list) => {
                return Err(AppError::InvalidAnswer(
                    list.into_iter()
                        .map(|e| FieldError::new(format!("final.{}", e.field), e.message))
                        .collect(),
                ))
            }
        };
        status.qa = None;
        status.state = TaskState::Complete;
        let audit = vec![AuditEvent {
            at: now,
            actor: Some(user.id),
            action: AuditAction::QaFinal,
            object: format!("task:{}", task.id),
            detail: json!({"submissions": subs.iter().map(|s| s.id).collect::<Vec<_>>()}),
        }];
        let result = json!({"task": task.id, "kind": QaKind::Adjudicate, "state": status.state,
            "final": answer});
        Ok(VerdictWrite {
            lease: 0,
            submissions: Vec::new(),
            status,
            final_answer: Some(FinalAnswer {
                task_id: task.id,
                answer,
                scores,
                reviewer: user.id,
                rubric_version: rubric.hash.clone(),
                at: now,
            }),
            result,
            audit,
            counts: Vec::new(),
        })
    }
}
