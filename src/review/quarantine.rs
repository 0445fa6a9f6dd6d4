//! Quarantine: a task that fails on its own — its form (`criteria`), the router's `pick`, or
//! its page — is set aside in state `Broken` with the error, so the expert gets the next task
//! instead of the same failure again. Admins list and retry broken tasks; a new version of what
//! failed (rubric, router, page templates) retries them by itself.
//!
//! A task is blamed only on evidence: for `pick`, the call must fail with the task alone among
//! the candidates and succeed without it, so a router that fails for every task (a plain bug)
//! quarantines nothing and the project is served in queue order instead.

use std::sync::Arc;

use serde_json::Value;

use super::{blocking, ReviewCore};
use crate::domain::*;
use crate::error::{AppError, AppResult, ScriptError};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::scripting::{router, Plugin, PluginKind};
use crate::store::StoreError;

/// The longest error kept with a quarantined task.
const MAX_ERROR_BYTES: usize = 2048;

/// Tasks one `pick` may blame before the project falls back to queue order.
const MAX_BLAMED_PER_PICK: usize = 3;

/// What failed, and for which task.
pub(super) struct Failure<'a> {
    pub task_id: Id,
    pub project_id: Id,
    pub stage: BrokenStage,
    pub error: String,
    /// The rubric (name, version) the task was being served under.
    pub rubric: (&'a str, &'a str),
    /// The router whose `pick` failed, for stage `pick`.
    pub router: Option<&'a Plugin>,
}

impl ReviewCore {
    /// Quarantines a task, ending the lease it was served under (`lease`). Without a lease the
    /// task is left alone while another expert holds it (their answer must stay possible);
    /// returns whether it was set aside.
    pub(super) fn quarantine(
        &self,
        failure: Failure<'_>,
        lease: Option<&Assignment>,
    ) -> AppResult<bool> {
        let q = self.queue.project(failure.project_id);
        let mut queue = Queue::lock(&q);
        let now = crate::now_ms();
        let slot = queue.slot(failure.task_id);
        let held_by_others = slot.is_some_and(|s| {
            s.leases
                .iter()
                .any(|l| l.expires_at > now && Some(l.assignment_id) != lease.map(|a| a.id))
        });
        if held_by_others && lease.is_none() {
            return Ok(false);
        }
        let mut status = match slot {
            Some(slot) => slot.status.clone(),
            None => self
                .store
                .task_status(failure.task_id)?
                .ok_or(AppError::NotFound("task"))?,
        };
        status.state = TaskState::Broken;
        let ended = lease.map(|a| Assignment {
            status: AssignmentStatus::Released,
            reason: Some("task quarantined".into()),
            ..a.clone()
        });
        let broken = BrokenTask {
            task_id: failure.task_id,
            project_id: failure.project_id,
            error: crate::text::truncate(&failure.error, MAX_ERROR_BYTES).to_owned(),
            stage: failure.stage,
            rubric: failure.rubric.0.to_owned(),
            rubric_version: failure.rubric.1.to_owned(),
            router: failure.router.map(|r| (r.name.clone(), r.hash.clone())),
            at: crate::now_ms(),
        };
        match self.store.quarantine(ended.as_ref(), &status, &broken) {
            Ok(()) => {}
            // Ended meanwhile (expiry): the task goes back to the queue as it would anyway.
            Err(StoreError::AssignmentEnded(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if let Some(a) = lease {
            queue.remove_lease(a.task_id, a.id);
        }
        queue.set_status(status);
        drop(queue);
        Metrics::count(&self.metrics.quarantined);
        self.audit(
            None,
            AuditAction::TaskQuarantine,
            format!("task:{}", broken.task_id),
            serde_json::json!({
                "error": broken.error, "stage": broken.stage,
                "rubric_version": broken.rubric_version, "router": broken.router,
            }),
        );
        Ok(true)
    }

    /// Calls the router's `pick` over `candidates` (built from `window`); when it throws, finds
    /// the tasks it throws on by halving the candidates, quarantines them once a pick without
    /// them succeeds, and returns that pick. `Err` when no task can be blamed.
    pub(super) fn pick_blaming_tasks(
        &self,
        router: &Plugin,
        rubric: &Plugin,
        expert: &Value,
        window: &[Id],
        candidates: &[Value],
        project: Id,
    ) -> Result<Option<Id>, ScriptError> {
        let call = |members: &[usize]| {
            let list = members.iter().map(|&i| candidates[i].clone()).collect();
            router::pick(&self.registry.engine, router, expert, &Value::Array(list))
                .map(|chosen| chosen.map(|i| members[i]))
        };
        let mut members: Vec<usize> = (0..candidates.len()).collect();
        let mut blamed: Vec<(usize, ScriptError)> = Vec::new();
        loop {
            match call(&members) {
                Ok(chosen) => {
                    for (i, error) in blamed {
                        let failure = Failure {
                            task_id: window[i],
                            project_id: project,
                            stage: BrokenStage::Pick,
                            error: error.to_string(),
                            rubric: (&rubric.name, &rubric.hash),
                            router: Some(router),
                        };
                        if let Err(e) = self.quarantine(failure, None) {
                            tracing::warn!(error = %e, "cannot quarantine a task pick fails on");
                        }
                    }
                    return Ok(chosen.map(|i| window[i]));
                }
                // Only a script that threw is bisected: a time-out would cost its whole
                // budget again for every half.
                Err(e)
                    if !e.timed_out && members.len() > 1 && blamed.len() < MAX_BLAMED_PER_PICK =>
                {
                    let Some(culprit) = failing_alone(&members, |m| call(m).is_err()) else {
                        return Err(e);
                    };
                    members.retain(|&m| m != culprit);
                    blamed.push((culprit, e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets aside the task of an expert's live lease whose page could not be rendered, ending
    /// the lease; the expert's next request is served another task.
    pub async fn set_aside_unrenderable(
        self: &Arc<Self>,
        user: User,
        project: Id,
        assignment: Id,
        error: String,
    ) -> AppResult<()> {
        let core = self.clone();
        blocking(move || {
            let Some(a) = core.store.assignment(assignment)? else {
                return Ok(());
            };
            if a.expert_id != user.id
                || a.project_id != project
                || a.status != AssignmentStatus::Active
            {
                return Ok(());
            }
            let failure = Failure {
                task_id: a.task_id,
                project_id: project,
                stage: BrokenStage::Render,
                error,
                rubric: (&a.rubric, &a.rubric_version),
                router: None,
            };
            core.quarantine(failure, Some(&a)).map(|_| ())
        })
        .await
    }

    /// Retries, in every project using `name`, the tasks that a `kind` plugin broke under
    /// another version than `version`: a rubric's broken forms, a router's failed picks.
    pub(super) fn retry_for_new_version(
        &self,
        kind: PluginKind,
        name: &str,
        version: &str,
    ) -> AppResult<usize> {
        self.retry_where(|project, b| match (kind, b.stage) {
            (PluginKind::Rubric, BrokenStage::Form) => {
                project.rubric == name && b.rubric_version != version
            }
            (PluginKind::Router, BrokenStage::Pick) => {
                project.router == name && b.router.as_ref().is_some_and(|(_, v)| v != version)
            }
            _ => false,
        })
    }

    /// Retries every task whose page failed to render: called when the page templates change.
    pub fn retry_unrenderable(&self) -> AppResult<usize> {
        self.retry_where(|_, b| b.stage == BrokenStage::Render)
    }

    fn retry_where(&self, retry: impl Fn(&Project, &BrokenTask) -> bool) -> AppResult<usize> {
        let mut reopened = 0;
        for project in self.store.projects()? {
            let chosen: Vec<Id> = self
                .store
                .broken_tasks(project.id)?
                .into_iter()
                .filter(|b| retry(&project, b))
                .map(|b| b.task_id)
                .collect();
            if !chosen.is_empty() {
                reopened += self.retry_broken(None, project.id, Some(&chosen))?;
            }
        }
        Ok(reopened)
    }
}

/// The one member that makes `fails` true on its own, found by halving `members` (on which it
/// fails); `None` when every half passes (the failure needs several members together).
fn failing_alone(members: &[usize], fails: impl Fn(&[usize]) -> bool) -> Option<usize> {
    let mut range = members;
    while range.len() > 1 {
        let (left, right) = range.split_at(range.len() / 2);
        range = if fails(left) {
            left
        } else if fails(right) {
            right
        } else {
            return None;
        };
    }
    range.first().copied()
}

/// Each new rubric or router version that goes live gets another try at the tasks older
/// versions broke. Runs on its own thread, after the hand-out index has loaded.
pub(super) fn spawn_retry_on_new_versions(
    core: &Arc<ReviewCore>,
    live: std::sync::mpsc::Receiver<(PluginKind, String, String)>,
) -> std::io::Result<()> {
    let core = Arc::downgrade(core);
    std::thread::Builder::new()
        .name("assay-retrier".into())
        .spawn(move || {
            while let Ok((kind, name, version)) = live.recv() {
                let Some(core) = core.upgrade() else { return };
                while !core.is_ready() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                match core.retry_for_new_version(kind, &name, &version) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        plugin = name,
                        version,
                        tasks = n,
                        "quarantined tasks retried"
                    ),
                    Err(e) => {
                        tracing::warn!(plugin = name, error = %e, "cannot retry quarantined tasks")
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::failing_alone;

    #[test]
    fn the_failing_member_is_found_by_halving() {
        let members: Vec<usize> = (0..32).collect();
        for bad in [0, 7, 31] {
            assert_eq!(failing_alone(&members, |m| m.contains(&bad)), Some(bad));
        }
        // A failure that needs two members together blames neither.
        let pair = |m: &[usize]| m.contains(&3) && m.contains(&20);
        assert_eq!(failing_alone(&members, pair), None);
    }
}
