//! Submit, second half: the committer. Checked submissions queue here; one thread takes
//! whatever has queued up (up to [`MAX_BATCH`]) and commits it as one batch (a submission that
//! finds the committer idle is committed by the thread that checked it, as a batch of one):
//!
//! 1. take the commit gates and lock the indexes of the batch's projects (in id order);
//! 2. re-check each member against the index, and against the members before it (two reviews
//!    of one task in a batch build on each other's task status);
//! 3. let go of the indexes (the gates stay) and write every member that passed as one batch
//!    (see `store/sled_store/submit_batch.rs`: the batch's submit log record is written first
//!    and synced on another thread while sled is written); hand-outs go on meanwhile;
//! 4. lock the indexes again, mirror what committed, and unlock;
//! 5. wait until it is durable (the store's submit log: one write and one fdatasync, see
//!    `store/sled_store/submit_log.rs`), then answer each member.
//!
//! While one batch is made durable the next one gathers, so batches grow with the load: one
//! write and one sync serve them all. If the store refuses the batch (a lease was ended behind
//! the index's back), nothing of it was written: each member is then re-checked and committed
//! on its own, so one bad member costs only its own answer. A batch the store failed to write
//! part-way fails all its members: the store completes it from its log at the next open, and
//! writing a member again now would store it twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::lease::lease_error;
use super::submit::Submitted;
use crate::domain::*;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::metrics::Metrics;
use crate::queue::{ProjectQueue, Queue};
use crate::scripting::router;
use crate::store::flush::GroupFlusher;
use crate::store::{Store, StoreError, SubmissionWrite};

/// Most submissions committed in one transaction.
const MAX_BATCH: usize = 256;

/// A checked submission waiting to be committed.
pub struct Pending {
    pub assignment: Assignment,
    /// The assignment was not in the store (lost in a crash): only its signed token vouches
    /// for it, so it is accepted only while the task has room.
    pub recovered: bool,
    /// The submission to store (its id is assigned when it is written).
    pub submission: Submission,
    pub decision: router::Decision,
    /// Drawn for QA by the project's `qa_rate`.
    pub sampled: bool,
}

pub(super) type Reply = oneshot::Sender<AppResult<Submitted>>;

pub struct Committer {
    sender: Mutex<Option<mpsc::Sender<(Pending, Reply)>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    batcher: Arc<Batcher>,
}

impl Committer {
    pub fn start(
        store: Arc<dyn Store>,
        queue: Arc<Queue>,
        flusher: Arc<GroupFlusher>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<(Pending, Reply)>();
        let batcher = Arc::new(Batcher {
            store,
            queue,
            flusher,
            metrics,
            committing: parking_lot::Mutex::new(()),
            queued: AtomicUsize::new(0),
        });
        let b = batcher.clone();
        let thread = std::thread::Builder::new()
            .name("assay-commit".into())
            .spawn(move || {
                // Block for the first member, then take whatever else has arrived meanwhile.
                while let Ok(first) = receiver.recv() {
                    let _one_batch_at_a_time = b.committing.lock();
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match receiver.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    b.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                    b.run(batch);
                }
            })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            batcher,
        })
    }

    /// Commits a checked submission; `reply` is answered once it is committed and durable (or
    /// at once with an error when the committer has stopped). Called from the thread that
    /// checked it, so the request is woken once, with the answer.
    ///
    /// When no batch is committing and none is gathering, the calling thread commits the
    /// member itself: waking the committer thread for a batch of one would cost a sleeping
    /// thread's wake-up on the path of every answer under light load. Otherwise the member
    /// joins the batch that gathers for the committer thread.
    pub fn enqueue(&self, pending: Pending, reply: Reply) {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = sender.as_ref() else {
            let _ = reply.send(Err(AppError::internal("the committer has stopped")));
            return;
        };
        let idle = self.batcher.queued.load(Ordering::Acquire) == 0;
        // Taken while the sender is held, so `stop` (which takes the sender first) waits for it.
        if let Some(_alone) = idle.then(|| self.batcher.committing.try_lock()).flatten() {
            drop(sender);
            self.batcher.run(vec![(pending, reply)]);
            return;
        }
        self.batcher.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(refused) = s.send((pending, reply)) {
            self.batcher.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = refused
                .0
                 .1
                .send(Err(AppError::internal("the committer has stopped")));
        }
    }

    /// Hands members to the committer thread so that they are committed as one batch.
    #[cfg(test)]
    pub fn enqueue_together(&self, members: Vec<(Pending, Reply)>) {
        let _gathering = self.batcher.committing.lock();
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        for member in members {
            self.batcher.queued.fetch_add(1, Ordering::AcqRel);
            if let Some(s) = sender.as_ref() {
                let _ = s.send(member);
            }
        }
    }

    /// Commits what is queued, then stops the thread. Later submits fail.
    pub fn stop(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        // A batch a submitting thread was committing itself ends before this returns.
        drop(self.batcher.committing.lock());
    }
}

/// A member the re-check let through, with what it will write.
struct Accepted {
    pending: Pending,
    write: SubmissionWrite,
    reply: Reply,
}

/// What the re-check decided for one member.
#[allow(clippy::large_enum_variant)] // one short-lived value per member
enum Verdict {
    Accept(Box<SubmissionWrite>),
    /// Answered already: stored by an earlier call, or refused.
    Done(AppResult<Submitted>),
    /// The same assignment is already in this batch (a client retry racing the first call).
    Repeat,
}

/// The submission a submitted assignment has.
pub(super) fn existing(store: &dyn Store, a: &Assignment) -> AppResult<Submitted> {
    let sid = a
        .submission_id
        .ok_or_else(|| AppError::internal("submitted assignment without submission"))?;
    let submission = store
        .submission(a.project_id, sid)?
        .ok_or(AppError::NotFound("submission"))?;
    Ok(Submitted {
        submission,
        replay: true,
    })
}

/// Why a lease can no longer take an answer, from its stored record.
fn ended_lease(store: &dyn Store, stored: Option<Assignment>) -> AppResult<Submitted> {
    match stored {
        Some(a) if a.status == AssignmentStatus::Submitted => existing(store, &a),
        Some(a)
            if a.status == AssignmentStatus::Active || a.status == AssignmentStatus::Expired =>
        {
            Err(lease_error(
                ErrorCode::LeaseExpired,
                "the lease has expired; ask for the next task",
            ))
        }
        _ => Err(lease_error(
            ErrorCode::LeaseEnded,
            "the lease ended before the answer arrived",
        )),
    }
}

struct Batcher {
    store: Arc<dyn Store>,
    queue: Arc<Queue>,
    flusher: Arc<GroupFlusher>,
    metrics: Arc<Metrics>,
    /// Held while a batch commits: one batch at a time, by the committer thread or by a
    /// submitting thread that found it idle.
    committing: parking_lot::Mutex<()>,
    /// Members sent to the committer thread and not yet taken into a batch.
    queued: AtomicUsize,
}

impl Batcher {
    /// Commits one batch; the caller holds `committing`.
    fn run(&self, batch: Vec<(Pending, Reply)>) {
        Metrics::count(&self.metrics.commit_batches);
        self.metrics
            .commit_members
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // A panic must not take the committer down with it: the members of that batch get an
        // error (their reply senders are dropped), the next batch runs.
        let run = std::panic::AssertUnwindSafe(|| self.commit(batch));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a submit batch panicked; its members were answered with an error");
        }
    }

    fn commit(&self, batch: Vec<(Pending, Reply)>) {
        let mut projects: Vec<Id> = batch.iter().map(|(p, _)| p.assignment.project_id).collect();
        projects.sort_unstable();
        projects.dedup();
        let handles: Vec<_> = projects.iter().map(|p| self.queue.project(*p)).collect();
        // Gates, then indexes, each in id order, as every other multi-project locker must. The
        // gates are held to the mirror; the indexes are let go while the batch is written, so
        // hand-outs in these projects need not wait for the writes (see `queue`'s notes).
        let gates: Vec<_> = handles.iter().map(Queue::gate).collect();
        let mut guards: Vec<_> = handles.iter().map(Queue::lock_index).collect();
        let locked = by_project(&projects, &mut guards);

        let now = crate::now_ms();
        let mut overlay: HashMap<Id, TaskStatus> = HashMap::new();
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut repeats: Vec<(Id, Reply)> = Vec::new();
        for (pending, reply) in batch {
            let Some(queue) = locked.get(&pending.assignment.project_id) else {
                let _ = reply.send(Err(AppError::internal("project queue not locked")));
                continue;
            };
            let repeat = accepted
                .iter()
                .any(|a| a.pending.assignment.id == pending.assignment.id);
            let verdict = if repeat {
                Verdict::Repeat
            } else {
                self.recheck(queue, &overlay, &pending, now)
            };
            match verdict {
                Verdict::Accept(write) => {
                    let write = *write;
                    overlay.insert(write.status.task_id, write.status.clone());
                    accepted.push(Accepted {
                        pending,
                        write,
                        reply,
                    });
                }
                Verdict::Done(result) => {
                    let _ = reply.send(result);
                }
                Verdict::Repeat => repeats.push((pending.assignment.id, reply)),
            }
        }

        let writes: Vec<SubmissionWrite> = accepted.iter().map(|a| a.write.clone()).collect();
        drop(locked);
        drop(guards);
        let committed = if writes.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.commit_submissions(writes)
        };
        let mut guards: Vec<_> = handles.iter().map(Queue::lock_index).collect();
        let mut locked = by_project(&projects, &mut guards);
        let mut answers: Vec<(Reply, AppResult<Submitted>)> = Vec::with_capacity(accepted.len());
        match committed {
            Ok(stored) => {
                for (member, submission) in accepted.into_iter().zip(stored) {
                    if let Some(queue) = locked.get_mut(&member.write.assignment.project_id) {
                        mirror(queue, &member.write);
                    }
                    let done = Submitted {
                        submission,
                        replay: false,
                    };
                    answers.push((member.reply, Ok(done)));
                }
            }
            Err(StoreError::AssignmentEnded(_)) => {
                tracing::warn!(
                    members = accepted.len(),
                    "a lease of a submit batch had ended; committing its members one by one"
                );
                // Nothing was written and the index is unchanged: each member is checked and
                // committed again on its own, against the index as the earlier ones leave it.
                for member in accepted {
                    let result = self.commit_alone(&mut locked, &member.pending, now);
                    answers.push((member.reply, result));
                }
            }
            Err(e) => {
                // The store failed, possibly part-way: what it wrote is completed from its log
                // at the next open, so no member is written again now (that would store it twice).
                tracing::error!(error = %e, members = accepted.len(), "a submit batch failed");
                for member in accepted {
                    answers.push((member.reply, Err(AppError::from(e.clone()))));
                }
            }
        }
        drop(locked);
        drop(guards);
        drop(gates);
        // A repeat answers like a retry after the first call: with what the store now holds.
        for (aid, reply) in repeats {
            let result = self
                .store
                .assignment(aid)
                .map_err(AppError::from)
                .and_then(|stored| ended_lease(&*self.store, stored));
            answers.push((reply, result));
        }
        // Acknowledged only once durable; a failed flush fails every answer that waited on it
        // (a retry then finds the submission if it did reach the disk).
        let waiting = answers.iter().filter(|(_, r)| r.is_ok()).count() as u64;
        let flushed = if waiting > 0 {
            // When the store flushes instead (its log is due to be emptied), the flusher counts
            // that flush and this thread's wait; only the other answers are added here.
            let flushed_instead = std::cell::Cell::new(false);
            let flush = || {
                flushed_instead.set(true);
                self.flusher.wait_blocking().map_err(StoreError::Backend)
            };
            let synced = self.store.sync_submissions(&flush);
            if !flushed_instead.get() {
                Metrics::count(&self.metrics.durable_syncs);
            }
            self.metrics.durable_synced_writes.fetch_add(
                waiting - u64::from(flushed_instead.get()),
                Ordering::Relaxed,
            );
            synced.map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        for (reply, result) in answers {
            let result = match (&flushed, result) {
                (Err(e), Ok(_)) => Err(AppError::storage(format!("flush failed: {e}"))),
                (_, result) => result,
            };
            let _ = reply.send(result);
        }
    }

    /// Checks one member under the lock: the lease still stands (or, for a lease lost in a
    /// crash, the task still has room), the expert has not reviewed the task, and the task is
    /// still open. `overlay` holds the task statuses earlier members of the batch will write.
    fn recheck(
        &self,
        queue: &ProjectQueue,
        overlay: &HashMap<Id, TaskStatus>,
        pending: &Pending,
        now: i64,
    ) -> Verdict {
        let a = &pending.assignment;
        let slot = queue.slot(a.task_id);
        let own_lease = slot.is_some_and(|s| {
            s.leases
                .iter()
                .any(|l| l.assignment_id == a.id && l.expires_at > now)
        });
        if !own_lease && !pending.recovered {
            // Ended, expired or submitted since the first half: the record says which.
            return Verdict::Done(
                self.store
                    .assignment(a.id)
                    .map_err(AppError::from)
                    .and_then(|stored| ended_lease(&*self.store, stored)),
            );
        }
        let status = match (overlay.get(&a.task_id), slot) {
            (Some(s), _) => s.clone(),
            (None, Some(slot)) => slot.status.clone(),
            (None, None) => match self.store.task_status(a.task_id) {
                Ok(Some(s)) => s,
                Ok(None) => return Verdict::Done(Err(AppError::NotFound("task"))),
                Err(e) => return Verdict::Done(Err(e.into())),
            },
        };
        if status.done_by.contains(&a.expert_id) {
            return Verdict::Done(Err(lease_error(
                ErrorCode::AlreadyReviewed,
                "you have already reviewed this task",
            )));
        }
        let others = slot.map_or(0, |s| {
            s.leases
                .iter()
                .filter(|l| l.assignment_id != a.id && l.expires_at > now)
                .count()
        }) + status.done_by.len();
        if status.state != TaskState::Open
            || (pending.recovered && others >= status.reviews as usize)
        {
            return Verdict::Done(Err(lease_error(
                ErrorCode::LeaseExpired,
                "the task no longer needs this review",
            )));
        }
        let prior_state = status.state;
        let mut new_status = status;
        new_status.done_by.push(a.expert_id);
        pending.decision.apply(&mut new_status, pending.sampled);
        Verdict::Accept(Box::new(SubmissionWrite {
            audit: AuditEvent {
                at: now,
                actor: Some(a.expert_id),
                action: AuditAction::TaskSubmit,
                object: format!("task:{}", a.task_id),
                detail: serde_json::json!({"assignment": a.id}),
            },
            submission: pending.submission.clone(),
            assignment: pending.assignment.clone(),
            status: new_status,
            prior_state: Some(prior_state),
        }))
    }

    /// Commits one member of a failed batch by itself.
    fn commit_alone(
        &self,
        locked: &mut HashMap<Id, &mut ProjectQueue>,
        pending: &Pending,
        now: i64,
    ) -> AppResult<Submitted> {
        let queue = locked
            .get_mut(&pending.assignment.project_id)
            .ok_or_else(|| AppError::internal("project queue not locked"))?;
        // The index holds every member committed so far, so no overlay is needed.
        let write = match self.recheck(queue, &HashMap::new(), pending, now) {
            Verdict::Accept(write) => *write,
            Verdict::Done(result) => return result,
            Verdict::Repeat => return Err(AppError::internal("a repeat cannot be re-checked")),
        };
        match self.store.commit_submission(write.clone()) {
            Ok(submission) => {
                mirror(queue, &write);
                Ok(Submitted {
                    submission,
                    replay: false,
                })
            }
            Err(StoreError::AssignmentEnded(stored)) => {
                // The store ended this lease behind the index's back: mirror that.
                queue.remove_lease(stored.task_id, stored.id);
                ended_lease(&*self.store, Some(stored))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The locked indexes by project (`guards` in the order of `projects`).
fn by_project<'a>(
    projects: &[Id],
    guards: &'a mut [std::sync::MutexGuard<'_, ProjectQueue>],
) -> HashMap<Id, &'a mut ProjectQueue> {
    projects
        .iter()
        .copied()
        .zip(guards.iter_mut().map(|g| &mut **g))
        .collect()
}

/// Mirrors a committed submission into the index: its lease ends, its task takes the new status.
fn mirror(queue: &mut ProjectQueue, write: &SubmissionWrite) {
    queue.remove_lease(write.status.task_id, write.assignment.id);
    queue.set_status(write.status.clone());
}
