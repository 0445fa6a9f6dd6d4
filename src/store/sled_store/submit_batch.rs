//! Submit batches: one sled transaction per batch, made durable by the submit log
//! (`submit_log.rs`), and applied again at open when the log holds a batch sled lost.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::submit_log::{Record, CHECKPOINT_BYTES};
use super::tx::*;
use super::SledStore;
use crate::domain::*;
use crate::store::{keys, StoreError, StoreResult, SubmissionWrite};

/// The number of the last submit batch whose transaction is in sled (`meta`).
const SUBMIT_LOG_SEQ: &[u8] = b"submit_log_seq";

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

/// A member's submission and audit event as stored (JSON).
type Encoded = (Vec<u8>, Vec<u8>);

fn encode(members: &[Member]) -> StoreResult<Vec<Encoded>> {
    members
        .iter()
        .map(|m| Ok((enc(&m.submission)?, enc(&m.audit)?)))
        .collect()
}

/// The batch's log record: the members as JSON (read back as `Vec<Member>`), with the
/// submission and audit encodings the transaction writes spliced in rather than made again.
fn log_payload(members: &[Member], encoded: &[Encoded]) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.iter().map(|(s, a)| s.len() + a.len() + 512).sum());
    out.push(b'[');
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
    out.push(b']');
    Ok(out)
}

impl SledStore {
    pub(super) fn commit_submit_batch(
        &self,
        batch: Vec<SubmissionWrite>,
    ) -> StoreResult<Vec<Submission>> {
        let _writing = self.writing();
        // Ids and encodings are made before the transaction: its closure may run more than once.
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
        // Encoded once, before the log is locked, for the transaction and the log; the log is
        // locked across the transaction, so batches reach sled and the log in the same order.
        let encoded = encode(&members)?;
        let payload = log_payload(&members, &encoded)?;
        let mut log = self.submit_log.lock();
        let seq = log.next_seq;
        self.apply_submit_batch(&members, &encoded, seq, false)?;
        log.next_seq += 1;
        if let Err(e) = log.append(seq, &payload) {
            // Committed in sled but not logged: the next sync flushes sled instead.
            log.broken = true;
            tracing::error!(error = %e, "could not append to the submit log; flushing instead");
        }
        Ok(members.into_iter().map(|m| m.submission).collect())
    }

    /// Writes a batch in one transaction, with its number. `replaying`: applied again from the
    /// log at open, where an assignment's record may be missing or stale (leases are not
    /// flushed), and the batch was accepted already.
    fn apply_submit_batch(
        &self,
        members: &[Member],
        encoded: &[Encoded],
        seq: u64,
        replaying: bool,
    ) -> StoreResult<()> {
        let firsts = self.segment_firsts(members.iter().map(|m| m.status.task_id))?;
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
            &t.meta,
        ];
        trees[..]
            .transaction(|trees| {
                let [submissions, by_task, by_expert, by_project, assignments, leases, statuses, queue, counters, audit, meta] =
                    trees.as_slice()
                else {
                    return Err(abort(backend("transaction view has the wrong shape")));
                };
                let mut deltas = CounterDeltas::default();
                for (m, (submission_bytes, audit_bytes)) in members.iter().zip(encoded) {
                    if replaying {
                        leases.remove(&keys::id(m.ended.id))?;
                        tx_put(assignments, &keys::id(m.ended.id), &m.ended)?;
                    } else {
                        tx_end_assignment(assignments, leases, &m.ended)?;
                    }
                    let sub = &m.submission;
                    submissions.insert(&keys::id(sub.id), submission_bytes.as_slice())?;
                    by_task.insert(&keys::pair(sub.task_id, sub.id), &[])?;
                    by_expert.insert(&keys::pair(sub.expert_id, sub.id), &[])?;
                    by_project.insert(&keys::pair(sub.project_id, sub.id), &[])?;
                    let key = keys::id(m.status.task_id);
                    let old = Self::tx_old_status(statuses, m.status.task_id, &firsts)?;
                    tx_put(statuses, &key, &m.status)?;
                    tx_transition_counted(&mut deltas, queue, &m.status, old.map(|s| s.state))?;
                    deltas.add(sub.project_id, "submissions", 1);
                    deltas.add(sub.project_id, &hour_counter(sub.submitted_at), 1);
                    audit.insert(m.audit_key.as_slice(), audit_bytes.as_slice())?;
                }
                meta.insert(SUBMIT_LOG_SEQ, &seq.to_be_bytes())?;
                deltas.apply(counters)
            })
            .map_err(from_tx)
    }

    /// Makes every batch committed so far durable: one fdatasync of the log, or, when the log
    /// is due to be emptied (or an append failed), `flush` (the shared flush of sled) first.
    pub(super) fn sync_submit_log(&self, flush: &dyn Fn() -> StoreResult<()>) -> StoreResult<()> {
        let mut log = self.submit_log.lock();
        if log.broken || log.len() > CHECKPOINT_BYTES {
            // The log stays locked: no batch can be committed between the flush and the clear.
            flush()?;
            return log.clear();
        }
        log.sync(self.sync_file.is_some())
    }

    /// At open: applies every batch the log holds that sled does not have, then flushes sled
    /// and empties the log.
    pub(super) fn replay_submit_log(&self, records: Vec<Record>) -> StoreResult<()> {
        let applied = self
            .t
            .meta
            .get(SUBMIT_LOG_SEQ)
            .map_err(backend)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut replayed = 0;
        for (seq, payload) in &records {
            if *seq <= applied {
                continue;
            }
            let members: Vec<Member> =
                serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
                    tree: "submit log",
                    message: format!("batch {seq}: {e}"),
                })?;
            self.apply_submit_batch(&members, &encode(&members)?, *seq, true)?;
            replayed += members.len();
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
        if !records.is_empty() {
            super::super::Store::flush(self)?;
            log.clear()?;
        }
        let last = records.last().map_or(0, |(seq, _)| *seq);
        log.next_seq = applied.max(last) + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let payload = log_payload(&members, &encoded).unwrap();
        let back: Vec<Member> = serde_json::from_slice(&payload).unwrap();
        assert_eq!(encode(&back).unwrap(), encoded);
        assert_eq!(
            back.iter().map(|m| m.audit_key.clone()).collect::<Vec<_>>(),
            vec![vec![1, 0, 255], vec![2, 0, 255]]
        );
        assert_eq!(
            serde_json::to_value(&back[0].ended).unwrap(),
            serde_json::to_value(&ended).unwrap()
        );
    }
}
