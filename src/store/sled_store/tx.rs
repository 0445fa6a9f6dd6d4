//! Helpers for sled transactions: encoding, kept counters and task state transitions. Every
//! closure that uses them is pure (sled may run it more than once).

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::super::queue_codec;
use super::super::{StoreError, StoreResult};
use crate::domain::*;
use crate::store::keys;

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

pub(super) fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(backend)
}

pub(super) fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

/// A stored assignment's status, decoded alone (the whole record is decoded only when needed).
pub(super) fn assignment_status(tree: &'static str, bytes: &[u8]) -> StoreResult<AssignmentStatus> {
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        status: AssignmentStatus,
    }
    dec::<StatusOnly>(tree, bytes).map(|s| s.status)
}

/// Read a JSON value inside a transaction.
pub(super) fn tx_get<T: DeserializeOwned>(
    tree: &TransactionalTree,
    name: &'static str,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => dec(name, &bytes).map(Some).map_err(abort),
        None => Ok(None),
    }
}

pub(super) fn tx_put<T: Serialize>(
    tree: &TransactionalTree,
    key: &[u8],
    value: &T,
) -> TxResult<()> {
    tree.insert(key, enc(value).map_err(abort)?)?;
    Ok(())
}

/// A kept counter as stored: its value, and the number of the last submit batch that added to
/// it (0 when none did). Submit batches are written without a transaction, so after a crash a
/// batch may be applied again over a part of itself; the number says whether this counter
/// already holds the batch's change (`submit_batch.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counter {
    pub value: u64,
    pub batch: u64,
}

impl Counter {
    /// Reads `value: u64 BE` optionally followed by `batch: u64 BE` (older databases and
    /// counters no batch touched have the value alone).
    pub(super) fn decode(bytes: Option<&[u8]>) -> Self {
        let at = |i: usize| {
            bytes
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes)
        };
        Self {
            value: at(0),
            batch: at(8),
        }
    }

    pub(super) fn encode(self) -> Vec<u8> {
        let mut out = self.value.to_be_bytes().to_vec();
        if self.batch > 0 {
            out.extend_from_slice(&self.batch.to_be_bytes());
        }
        out
    }

    /// The counter with `delta` added (never below zero).
    pub(super) fn plus(self, delta: i64) -> Self {
        Self {
            value: (self.value as i64 + delta).max(0) as u64,
            ..self
        }
    }
}

/// Add `delta` to a kept counter inside a transaction (keeping its batch number).
pub(super) fn tx_count(
    counters: &TransactionalTree,
    project: Id,
    name: &str,
    delta: i64,
) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let key = keys::with_suffix(project, name.as_bytes());
    let current = Counter::decode(counters.get(&key)?.as_deref());
    counters.insert(key, current.plus(delta).encode())?;
    Ok(())
}

/// Name of the per-project counter of submissions in the hour holding `ms`.
pub(super) fn hour_counter(ms: i64) -> String {
    format!("submitted_hour_{:012}", ms.div_euclid(3_600_000))
}

pub(super) fn state_counter(state: TaskState) -> &'static str {
    match state {
        TaskState::Open => "open",
        TaskState::InQa => "in_qa",
        TaskState::Complete => "complete",
        TaskState::Archived => "archived",
        TaskState::Broken => "broken",
    }
}

/// Counter changes gathered over a transaction and written once each at its end: a batch of
/// submissions touches the same few counters many times.
#[derive(Default)]
pub(super) struct CounterDeltas(std::collections::BTreeMap<(Id, String), i64>);

impl CounterDeltas {
    pub(super) fn add(&mut self, project: Id, name: &str, delta: i64) {
        *self.0.entry((project, name.to_owned())).or_default() += delta;
    }

    pub(super) fn apply(self, counters: &TransactionalTree) -> TxResult<()> {
        for ((project, name), delta) in self.0 {
            tx_count(counters, project, &name, delta)?;
        }
        Ok(())
    }

    /// The changes, leaving out those that cancelled out.
    pub(super) fn into_vec(self) -> Vec<(Id, String, i64)> {
        self.0
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .map(|((project, name), delta)| (project, name, delta))
            .collect()
    }
}

/// The counter changes of a task moving from `from` to its status's state.
pub(super) fn count_transition(
    deltas: &mut CounterDeltas,
    status: &TaskStatus,
    from: Option<TaskState>,
) {
    if from != Some(status.state) {
        if let Some(from) = from {
            deltas.add(status.project_id, state_counter(from), -1);
        }
        deltas.add(status.project_id, state_counter(status.state), 1);
    }
}

/// The open-task index entry of a task: its key, and its value while the task is open or
/// waiting in QA (`None`: the entry goes). The index carries the status itself, so rebuilding
/// the in-memory queue at start-up is one sequential scan instead of a random read per task;
/// the QA queue is built from the same scan.
pub(super) fn open_index_entry(status: &TaskStatus) -> ([u8; 16], Option<Vec<u8>>) {
    let key = keys::pair(status.project_id, status.task_id);
    let open = matches!(status.state, TaskState::Open | TaskState::InQa);
    (key, open.then(|| queue_codec::encode(status)))
}

/// Moves a task between states: counters and the open-queue index.
pub(super) fn tx_transition(
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
pub(super) fn tx_transition_counted(
    deltas: &mut CounterDeltas,
    queue: &TransactionalTree,
    status: &TaskStatus,
    from: Option<TaskState>,
) -> TxResult<()> {
    count_transition(deltas, status, from);
    match open_index_entry(status) {
        (key, Some(entry)) => queue.insert(&key, entry)?,
        (key, None) => queue.remove(&key)?,
    };
    Ok(())
}

/// Ends an active assignment: writes its ended record, or aborts with `AssignmentEnded` when
/// it has one already. The caller drops the live lease from memory once the transaction
/// commits (`live_leases.rs`).
pub(super) fn tx_end_assignment(
    assignments: &TransactionalTree,
    ended: &Assignment,
) -> TxResult<()> {
    let id = keys::id(ended.id);
    if let Some(old) = tx_get::<Assignment>(assignments, "assignments_id", &id)? {
        if old.status != AssignmentStatus::Active {
            return Err(abort(StoreError::AssignmentEnded(old)));
        }
    }
    tx_put(assignments, &id, ended)
}
