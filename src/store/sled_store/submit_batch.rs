//! Submit batches: written without a sled transaction, made durable by the submit log
//! (`submit_log.rs`), and applied again at open when the log holds a batch sled lost.
//!
//! A sled transaction costs two extra log buffer writes and holds sled's global write lock
//! while it runs; a batch does not need one:
//!
//! - its checks are made under the project locks the committer holds, which every writer of
//!   assignments and task statuses also takes, so nothing changes between check and write;
//!   a batch whose check fails writes nothing;
//! - after a crash, sled recovers a prefix of its log (it stops at the first torn message).
//!   A batch writes its redo record (`submit_redo`: its number and its submit log record)
//!   first and its number (`meta/submit_log_seq`) last: when the number is there, so is the
//!   whole batch; when any part of the batch is there, so is its redo record, even after a
//!   power cut that lost the submit log's copy (not yet synced). At open, a batch sled does not
//!   wholly have is applied again from the submit log or the redo record, over whatever part
//!   of it sled kept. Records are written with the ids and encodings they first had, so
//!   writing them twice leaves them as once. Counters are not idempotent: the record carries
//!   the counter changes the batch made, and each counter stores the number of the last batch
//!   that changed it, so a change is added only to a counter that lacks it;
//! - a batch whose writes stop part-way while the process runs (a write fails or panics) is in
//!   sled in part, and a later batch's number would mark it as whole: the store then takes no
//!   more batches ([`Store::needs_reopen`]) until it is reopened, which completes it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::submit_log::{Record, CHECKPOINT_BYTES};
use super::tx::*;
use super::SledStore;
use crate::domain::*;
use crate::store::{keys, Store, StoreError, StoreResult, SubmissionWrite};

/// The number of the last submit batch wholly in sled (`meta`).
const SUBMIT_LOG_SEQ: &[u8] = b"submit_log_seq";
/// The key of the last batch's redo record (`submit_redo`).
const REDO_KEY: &[u8] = b"batch";

/// One member of a submit batch as written: ids assigned, so that applying it again writes
/// exactly the same records.
#[derive(Serialize, Deserialize)]
struct Member {
    submission: Submission,
    ended: Assignment,
    status: TaskStatus,
    audit_key: Vec<u8>,
    audit: AuditEvent,
}

/// The counter changes of a batch: project, counter name, change.
type Counts = Vec<(Id, String, i64)>;

/// A batch as the log holds it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Logged {
    /// With the counter changes it made.
    Counted {
        members: Vec<Member>,
        counts: Counts,
    },
    /// Written by schema version 8 in one transaction: wholly in sled or not at all, so its
    /// counter changes are worked out again from the statuses sled holds.
    Whole(Vec<Member>),
}

/// A member's submission and audit event as stored (JSON).
type Encoded = (Vec<u8>, Vec<u8>);

fn encode(members: &[Member]) -> StoreResult<Vec<Encoded>> {
    members
        .iter()
        .map(|m| Ok((enc(&m.submission)?, enc(&m.audit)?)))
        .collect()
}

/// The batch's log record (read back as [`Logged::Counted`]), with the submission and audit
/// encodings the writes use spliced in rather than made again.
fn log_payload(members: &[Member], encoded: &[Encoded], counts: &Counts) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.iter().map(|(s, a)| s.len() + a.len() + 512).sum());
    out.extend_from_slice(b"{\"members\":[");
    for (i, (m, (submission, audit))) in members.iter().zip(encoded).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"submission\":");
        out.extend_from_slice(submission);
        out.extend_from_slice(b",\"audit\":");
        out.extend_from_slice(audit);
        out.extend_from_slice(b",\"ended\":");
        serde_json::to_writer(&mut out, &m.ended).map_err(backend)?;
        out.extend_from_slice(b",\"status\":");
        serde_json::to_writer(&mut out, &m.status).map_err(backend)?;
        out.extend_from_slice(b",\"audit_key\":");
        serde_json::to_writer(&mut out, &m.audit_key).map_err(backend)?;
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"counts\":");
    serde_json::to_writer(&mut out, counts).map_err(backend)?;
    out.push(b'}');
    Ok(out)
}

pub(super) fn unfinished_error(seq: u64) -> StoreError {
    StoreError::Reopening(format!(
        "submit batch {seq} was written in part; the store takes no submissions until it is \
         reopened, which completes that batch"
    ))
}

/// A batch's writes under way: dropped before they are all in (an error returned, or a panic
/// unwinding), it marks the batch as written in part.
struct BatchWrites<'a> {
    unfinished: &'a AtomicU64,
    seq: u64,
}

impl Drop for BatchWrites<'_> {
    fn drop(&mut self) {
        self.unfinished.store(self.seq, Ordering::Release);
    }
}

impl SledStore {
    pub(super) fn commit_submit_batch(
        &self,
        batch: Vec<SubmissionWrite>,
    ) -> StoreResult<Vec<Submission>> {
        let _writing = self.writing();
        // Nothing is written unless every member's lease still stands: it has no ended record.
        for w in &batch {
            let key = keys::id(w.assignment.id);
            let Some(bytes) = self.t.assignments.get(key).map_err(backend)? else {
                continue;
            };
            if assignment_status("assignments_id", &bytes)? != AssignmentStatus::Active {
                return Err(StoreError::AssignmentEnded(dec("assignments_id", &bytes)?));
            }
        }
        let priors: Vec<Option<TaskState>> = batch.iter().map(|w| w.prior_state).collect();
        let mut members = Vec::with_capacity(batch.len());
        for w in batch {
            let mut submission = w.submission;
            submission.id = self.next_id()?;
            let mut ended = w.assignment;
            ended.status = AssignmentStatus::Submitted;
            ended.submission_id = Some(submission.id);
            let mut audit = w.audit;
            if let Some(detail) = audit.detail.as_object_mut() {
                detail.insert("submission".into(), submission.id.into());
            }
            members.push(Member {
                audit_key: keys::pair(keys::time(audit.at), self.next_id()?).to_vec(),
                audit,
                submission,
                ended,
                status: w.status,
            });
        }
        let counts = self.count_batch(&members, &priors)?;
        // Encoded once, before the log is locked, for the writes and the log; the log is
        // locked across the writes, so batches reach sled and the log in the same order.
        let encoded = encode(&members)?;
        let payload = log_payload(&members, &encoded, &counts)?;
        let mut log = self.submit_log.lock();
        if let Some(seq) = self.unfinished() {
            return Err(unfinished_error(seq));
        }
        let seq = log.next_seq;
        let mut redo = Vec::with_capacity(8 + payload.len());
        redo.extend_from_slice(&seq.to_be_bytes());
        redo.extend_from_slice(&payload);
        // Before any of the batch's writes (see the module notes); nothing is written if it fails.
        self.t.submit_redo.insert(REDO_KEY, redo).map_err(backend)?;
        log.next_seq += 1;
        // Logged before sled is written, and synced while it is (`log_sync.rs`). Once logged,
        // a batch the writes below fail to finish is completed from the log at the next open;
        // its members are answered with the error all the same.
        let logged = log.append(seq, &payload);
        match &logged {
            // In sled but not logged: the next sync flushes sled instead.
            Err(e) => {
                log.broken = true;
                tracing::error!(error = %e, "could not append to the submit log; flushing instead");
            }
            Ok(()) if self.sync_file.is_some() && log.len() <= CHECKPOINT_BYTES => {
                self.log_sync.request(seq);
            }
            Ok(()) => {} // made durable by a flush of sled (`sync_submit_log`)
        }
        let writing = BatchWrites {
            unfinished: &self.unfinished_batch,
            seq,
        };
        let written = self.write_submit_batch(&members, &encoded, &counts, seq, false);
        if written.is_ok() {
            std::mem::forget(writing);
        }
        if let Some(at) = members.iter().map(|m| m.audit.at).min() {
            self.audit_written(at);
        }
        if let Err(e) = written {
            tracing::error!(error = %e, batch = seq, "a submit batch was written in part; submits stop until the store is reopened");
            if logged.is_ok() && self.sync_file.is_some() {
                let _ = self.log_sync.wait(seq);
            }
            // Its redo record is in: the reopen completes it, and a retry then finds it stored.
            return Err(StoreError::Reopening(format!(
                "submit batch {seq} stopped part-way ({e}); it is completed when the store reopens"
            )));
        }
        Ok(members.into_iter().map(|m| m.submission).collect())
    }

    /// The submit batch written in part, if any (see `unfinished_batch`).
    pub(super) fn unfinished(&self) -> Option<u64> {
        Some(self.unfinished_batch.load(Ordering::Acquire)).filter(|seq| *seq != 0)
    }

    /// The counter changes a batch makes, from the task states before it: as `priors` gives
    /// them (by member, in order), else as sled holds them (members on one task build on each
    /// other).
    fn count_batch(&self, members: &[Member], priors: &[Option<TaskState>]) -> StoreResult<Counts> {
        let mut deltas = CounterDeltas::default();
        let mut written: std::collections::HashMap<Id, TaskState> = Default::default();
        for (i, m) in members.iter().enumerate() {
            let task = m.status.task_id;
            let from = match (priors.get(i).copied().flatten(), written.get(&task)) {
                (Some(prior), _) => Some(prior),
                (None, Some(state)) => Some(*state),
                (None, None) => self.task_status(task)?.map(|s| s.state),
            };
            count_transition(&mut deltas, &m.status, from);
            written.insert(task, m.status.state);
            let sub = &m.submission;
            deltas.add(sub.project_id, "submissions", 1);
            deltas.add(sub.project_id, &hour_counter(sub.submitted_at), 1);
        }
        Ok(deltas.into_vec())
    }

    /// Writes a batch, its number last. `replaying`: applied again from the log at open, over
    /// whatever part of it sled kept; a counter that holds the batch's change is left alone.
    fn write_submit_batch(
        &self,
        members: &[Member],
        encoded: &[Encoded],
        counts: &Counts,
        seq: u64,
        replaying: bool,
    ) -> StoreResult<()> {
        let t = &self.t;
        for (m, (submission_bytes, audit_bytes)) in members.iter().zip(encoded) {
            // The ended record before the live lease goes (as `put_assignment` ends one).
            let id = keys::id(m.ended.id);
            t.assignments.insert(id, enc(&m.ended)?).map_err(backend)?;
            self.live.end(m.ended.id);
            #[cfg(test)]
            if let Some((at, probe)) = tests::MID_BATCH.with(|hook| hook.get()) {
                if !replaying && members.iter().position(|x| std::ptr::eq(x, m)) == Some(at) {
                    probe(self)?;
                }
            }
            let sub = &m.submission;
            t.submissions
                .insert(
                    keys::pair(sub.project_id, sub.id),
                    submission_bytes.as_slice(),
                )
                .map_err(backend)?;
            for (index, owner) in [(&t.subs_task, sub.task_id), (&t.subs_expert, sub.expert_id)] {
                index
                    .insert(keys::pair(owner, sub.id), &keys::id(sub.project_id))
                    .map_err(backend)?;
            }
            t.taskstatus
                .insert(keys::id(m.status.task_id), enc(&m.status)?)
                .map_err(backend)?;
            match open_index_entry(&m.status) {
                (key, Some(entry)) => t.queue.insert(key, entry),
                (key, None) => t.queue.remove(key),
            }
            .map_err(backend)?;
            t.audit
                .insert(m.audit_key.as_slice(), audit_bytes.as_slice())
                .map_err(backend)?;
        }
        for (project, name, delta) in counts {
            let key = keys::with_suffix(*project, name.as_bytes());
            t.counters
                .update_and_fetch(key, |old| {
                    let counter = Counter::decode(old);
                    if replaying && counter.batch >= seq {
                        return old.map(<[u8]>::to_vec); // it has this batch's change already
                    }
                    Some(
                        Counter {
                            batch: seq,
                            ..counter.plus(*delta)
                        }
                        .encode(),
                    )
                })
                .map_err(backend)?;
        }
        t.meta
            .insert(SUBMIT_LOG_SEQ, &seq.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    /// Makes every batch committed so far durable: its log record synced (the sync began when
    /// it was appended), or, when the log is due to be emptied (or an append or a sync failed),
    /// `flush` (the shared flush of sled) first.
    pub(super) fn sync_submit_log(&self, flush: &dyn Fn() -> StoreResult<()>) -> StoreResult<()> {
        let mut log = self.submit_log.lock();
        let last = log.next_seq - 1;
        if log.broken || log.len() > CHECKPOINT_BYTES || self.log_sync.failed() {
            // The log stays locked: no batch can be committed between the flush and the clear.
            flush()?;
            if self.unfinished().is_some() {
                return Ok(()); // kept for the next open, which completes that batch
            }
            log.clear()?;
            self.log_sync.reset(last);
            return Ok(());
        }
        drop(log);
        if self.sync_file.is_none() {
            return Ok(()); // without fsync the write to the OS is all, as for sled's own flush
        }
        self.log_sync.wait(last)
    }

    /// Applies one logged batch again (at open).
    fn replay_batch(&self, seq: u64, payload: &[u8], source: &'static str) -> StoreResult<usize> {
        let logged: Logged = serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
            tree: source,
            message: format!("batch {seq}: {e}"),
        })?;
        let (members, counts) = match logged {
            Logged::Counted { members, counts } => (members, counts),
            Logged::Whole(members) => {
                let counts = self.count_batch(&members, &[])?;
                (members, counts)
            }
        };
        self.write_submit_batch(&members, &encode(&members)?, &counts, seq, true)?;
        Ok(members.len())
    }

    /// At open: applies again every batch sled does not wholly have (from the submit log, and
    /// the last one from its redo record when the log lost it), then flushes sled and empties
    /// the log.
    pub(super) fn replay_submit_log(&self, records: Vec<Record>) -> StoreResult<()> {
        let applied = self
            .t
            .meta
            .get(SUBMIT_LOG_SEQ)
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut replayed = 0;
        let mut last = applied;
        for (seq, payload) in &records {
            if *seq <= last {
                continue;
            }
            replayed += self.replay_batch(*seq, payload, "submit log")?;
            last = *seq;
        }
        let redo = self.t.submit_redo.get(REDO_KEY).map_err(backend)?;
        let redo = redo.as_deref().and_then(|r| {
            let seq = u64::from_be_bytes(r.get(..8)?.try_into().ok()?);
            Some((seq, &r[8..]))
        });
        if let Some((seq, payload)) = redo {
            if seq > last {
                replayed += self.replay_batch(seq, payload, "submit_redo")?;
                last = seq;
            }
        }
        if replayed > 0 {
            // The hand-out index saved at the last clean stop does not know these.
            self.t.meta.remove(b"snapshot_mark").map_err(backend)?;
            tracing::info!(
                submissions = replayed,
                "applied submissions from the submit log"
            );
        }
        let mut log = self.submit_log.lock();
        if !records.is_empty() || replayed > 0 {
            super::super::Store::flush(self)?;
            log.clear()?;
        }
        let logged = records.last().map_or(0, |(seq, _)| *seq);
        log.next_seq = last.max(logged) + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Called in the writes of a batch member; an error it returns is the write's.
    type Probe = fn(&SledStore) -> StoreResult<()>;

    thread_local! {
        /// Batches written on this thread call the probe in this member's writes.
        pub(super) static MID_BATCH: std::cell::Cell<Option<(usize, Probe)>> =
            const { std::cell::Cell::new(None) };
        /// What a probe saw, for the test to check that it ran.
        static PROBED: std::cell::Cell<Option<Option<String>>> =
            const { std::cell::Cell::new(None) };
    }

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    /// A leased task of one review in project `p`, and the write that submits it.
    fn leased_task(s: &SledStore, p: Id, expert: Id) -> SubmissionWrite {
        let task = NewTask {
            external_id: None,
            data: serde_json::value::to_raw_value(&serde_json::json!({"prompt": "x"})).unwrap(),
            meta: serde_json::json!({}),
            gold: None,
            routing: Routing {
                reviews: 1,
                ..Default::default()
            },
        };
        let mut status = s.import_batch(p, vec![task]).unwrap().created.remove(0);
        let id = s.new_id().unwrap();
        let assignment: Assignment = from_json(serde_json::json!({
            "id": id, "task_id": status.task_id, "project_id": p, "expert_id": expert,
            "status": "active", "served_at": 0, "expires_at": i64::MAX, "last_seen_at": 0,
            "active_seconds": 0.0, "fence": 7, "rubric": "r", "rubric_version": "v",
            "router": "q", "router_version": "w", "submission_id": null, "reason": null
        }));
        s.put_assignment(&assignment).unwrap();
        let submission: Submission = from_json(serde_json::json!({
            "id": 0, "task_id": status.task_id, "project_id": p, "assignment_id": id,
            "expert_id": expert, "answer": {"ok": true}, "scores": {}, "rubric": "r",
            "rubric_version": "v", "router": "q", "router_version": "w", "served_at": 0,
            "submitted_at": 1, "active_seconds": 1.0, "qa": null
        }));
        status.done_by.push(expert);
        status.state = TaskState::Complete;
        SubmissionWrite {
            submission,
            assignment,
            status,
            audit: AuditEvent {
                at: 1,
                actor: Some(expert),
                action: AuditAction::TaskSubmit,
                object: "task".into(),
                detail: serde_json::json!({"assignment": id}),
            },
            prior_state: None,
        }
    }

    /// The write's task is submitted whole: its lease ended with the submission, which the task
    /// lists, and the task's status is the one written.
    fn assert_whole(s: &SledStore, w: &SubmissionWrite, what: &str) {
        let a = s.assignment(w.assignment.id).unwrap().unwrap();
        assert_eq!(a.status, AssignmentStatus::Submitted, "{what}");
        let subs = s.submissions_for_task(w.status.task_id).unwrap();
        assert_eq!(subs.len(), 1, "{what}");
        assert_eq!(a.submission_id, Some(subs[0].id), "{what}");
        let status = s.task_status(w.status.task_id).unwrap().unwrap();
        assert_eq!(status, w.status, "{what}");
    }

    /// While a batch is being written the store works: `/healthz` and the storage watchdog
    /// ask `needs_reopen` at any moment, and a batch in flight must not read as one that stopped.
    #[test]
    fn a_batch_being_written_does_not_ask_for_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), true).unwrap();
        let p = s.create_project(test_project()).unwrap().id;
        let batch = vec![leased_task(&s, p, 1), leased_task(&s, p, 2)];
        MID_BATCH.with(|hook| {
            hook.set(Some((1, |s| {
                PROBED.with(|seen| seen.set(Some(s.needs_reopen())));
                Ok(())
            })))
        });
        let committed = s.commit_submissions(batch.clone());
        MID_BATCH.with(|hook| hook.set(None));
        assert_eq!(committed.unwrap().len(), 2);
        let mid_batch = PROBED.with(|seen| seen.take());
        assert_eq!(
            mid_batch,
            Some(None),
            "asked mid-batch (Some: the probe ran)"
        );
        assert_eq!(s.needs_reopen(), None, "asked after the batch");
        for (w, what) in batch.iter().zip(["first", "second"]) {
            assert_whole(&s, w, what);
        }
    }

    fn test_project() -> Project {
        from_json(serde_json::json!({
            "id": 0, "name": "p", "instructions": "", "rubric": "r", "router": "q",
            "reviews_per_task": 1, "lease_seconds": 60, "estimate_minutes": null,
            "qa_rate": 0.0, "qa_blind": true, "created_at": 0, "updated_at": 0
        }))
    }

    /// A batch that stops part-way (a panic between its writes) leaves sled holding part of it.
    /// No later batch may be written: its number would tell the next open that the first is
    /// whole, and the part would stay. The store refuses batches and asks to be reopened;
    /// reopening completes the batch from its log.
    #[test]
    fn a_batch_written_in_part_stops_submits_until_reopening_completes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, later) = {
            let s = SledStore::open(dir.path(), true).unwrap();
            let p = s.create_project(test_project()).unwrap().id;
            let (first, second, later) = (
                leased_task(&s, p, 1),
                leased_task(&s, p, 2),
                leased_task(&s, p, 3),
            );
            // As the sweeper's pass does: the live leases reach sled.
            s.write_live_leases().unwrap();
            assert_eq!(s.needs_reopen(), None);
            MID_BATCH.with(|hook| hook.set(Some((1, |_| panic!("a panic mid-batch (test)")))));
            let batch = vec![first.clone(), second.clone()];
            let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.commit_submissions(batch)
            }));
            MID_BATCH.with(|hook| hook.set(None));
            assert!(stopped.is_err(), "the batch did not stop");
            let reason = s.needs_reopen().expect("the store asks to be reopened");
            assert!(reason.contains("written in part"), "{reason}");
            match s.commit_submission(later.clone()) {
                Err(StoreError::Reopening(e)) => assert!(e.contains("written in part"), "{e}"),
                other => panic!("a batch after the part-written one: {other:?}"),
            }
            // Flushing empties no log that still holds the unfinished batch.
            s.sync_submissions(&|| Store::flush(&s)).unwrap();
            (first, second, later)
        };
        let s = SledStore::open(dir.path(), true).unwrap();
        assert_eq!(s.needs_reopen(), None);
        assert_whole(&s, &first, "the first member, completed at open");
        assert_whole(
            &s,
            &second,
            "the member the batch stopped in, completed at open",
        );
        let a = s.assignment(later.assignment.id).unwrap().unwrap();
        assert_eq!(
            a.status,
            AssignmentStatus::Active,
            "the refused batch wrote nothing"
        );
        s.commit_submission(later.clone()).unwrap();
        assert_whole(&s, &later, "a batch after reopening");
    }

    /// A batch whose write fails part-way (a sled error, not a panic) answers its members that
    /// the store is to be reopened, which a client takes as "send it again shortly": the
    /// reopen completes the batch, and the retry finds the submission stored.
    #[test]
    fn a_write_failing_mid_batch_answers_that_the_store_is_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = {
            let s = SledStore::open(dir.path(), true).unwrap();
            let p = s.create_project(test_project()).unwrap().id;
            let (first, second) = (leased_task(&s, p, 1), leased_task(&s, p, 2));
            MID_BATCH.with(|hook| {
                hook.set(Some((1, |_| {
                    Err(backend("a write failing mid-batch (test)"))
                })))
            });
            let failed = s.commit_submissions(vec![first.clone(), second.clone()]);
            MID_BATCH.with(|hook| hook.set(None));
            match failed {
                Err(StoreError::Reopening(e)) => {
                    assert!(e.contains("completed when the store reopens"), "{e}")
                }
                other => panic!("a batch whose write failed: {other:?}"),
            }
            assert!(s.needs_reopen().is_some());
            (first, second)
        };
        let s = SledStore::open(dir.path(), true).unwrap();
        assert_whole(&s, &first, "the first member, completed at open");
        assert_whole(
            &s,
            &second,
            "the member whose write failed, completed at open",
        );
    }

    /// The spliced log record reads back as the members it was made from.
    #[test]
    fn a_log_payload_reads_back_as_its_members() {
        let submission: Submission = serde_json::from_value(serde_json::json!({
            "id": 5, "task_id": 2, "project_id": 1, "assignment_id": 4, "expert_id": 3,
            "answer": {"choice": "a \"quoted\" answer"}, "scores": {}, "rubric": "r",
            "rubric_version": "v", "router": "q", "router_version": "w", "served_at": 1,
            "submitted_at": 2, "active_seconds": 1.5, "qa": null
        }))
        .unwrap();
        let ended: Assignment = serde_json::from_value(serde_json::json!({
            "id": 4, "task_id": 2, "project_id": 1, "expert_id": 3, "status": "submitted",
            "served_at": 1, "expires_at": 9, "last_seen_at": 1, "active_seconds": 1.5,
            "fence": 7, "rubric": "r", "rubric_version": "v", "router": "q",
            "router_version": "w", "submission_id": 5, "reason": null
        }))
        .unwrap();
        let member = |key: u8| Member {
            submission: submission.clone(),
            ended: ended.clone(),
            status: serde_json::from_value(serde_json::json!({
                "task_id": 2, "project_id": 1, "state": "complete", "reviews": 1, "done_by": [3]
            }))
            .unwrap(),
            audit_key: vec![key, 0, 255],
            audit: AuditEvent {
                at: 2,
                actor: Some(3),
                action: AuditAction::TaskSubmit,
                object: "task:2".into(),
                detail: serde_json::json!({"assignment": 4, "submission": 5}),
            },
        };
        let members = vec![member(1), member(2)];
        let encoded = encode(&members).unwrap();
        let counts = vec![(1, "submissions".to_owned(), 2), (1, "open".to_owned(), -1)];
        let payload = log_payload(&members, &encoded, &counts).unwrap();
        let Logged::Counted {
            members: back,
            counts: counts_back,
        } = serde_json::from_slice(&payload).unwrap()
        else {
            panic!("a new record reads back as one with counts");
        };
        assert_eq!(counts_back, counts);
        assert_eq!(encode(&back).unwrap(), encoded);
        assert_eq!(
            back.iter().map(|m| m.audit_key.clone()).collect::<Vec<_>>(),
            vec![vec![1, 0, 255], vec![2, 0, 255]]
        );
        assert_eq!(
            serde_json::to_value(&back[0].ended).unwrap(),
            serde_json::to_value(&ended).unwrap()
        );
        // A record schema version 8 wrote (the members alone) reads as a whole batch.
        let old = serde_json::to_vec(&members).unwrap();
        match serde_json::from_slice::<Logged>(&old).unwrap() {
            Logged::Whole(members) => assert_eq!(encode(&members).unwrap(), encoded),
            Logged::Counted { .. } => panic!("an old record has no counts"),
        }
    }
}
