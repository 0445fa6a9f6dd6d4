//! Streamed exports. A blocking producer pages through the project's submissions in id order and
//! sends JSON Lines in chunks over a small bounded channel, so memory stays constant whatever the
//! project size and a slow client simply slows the producer down.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::domain::{Id, Submission, Task};
use crate::error::AppError;

const PAGE: usize = 256;
const CHUNK: usize = 64 * 1024;

/// One exported line: a submission with its task and who made it.
#[derive(Serialize)]
struct Record<'a> {
    submission_id: Id,
    task_id: Id,
    external_id: &'a Option<String>,
    data: &'a Value,
    meta: &'a Value,
    answer: &'a Value,
    scores: &'a Value,
    expert_id: Id,
    expert: &'a str,
    rubric: &'a str,
    rubric_version: &'a str,
    router: &'a str,
    router_version: &'a str,
    served_at: i64,
    submitted_at: i64,
    active_seconds: f64,
}

/// Starts producing the export of a project; the receiver yields chunks of JSON Lines.
pub fn jsonl(state: AppState, project: Id) -> mpsc::Receiver<Result<Bytes, AppError>> {
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        if let Err(e) = produce(&state, project, &tx) {
            tracing::error!(error = %e, project, "export failed");
            // The client sees a truncated body; the error is in the log.
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

fn produce(
    st: &AppState,
    project: Id,
    tx: &mpsc::Sender<Result<Bytes, AppError>>,
) -> Result<(), AppError> {
    let mut names: HashMap<Id, String> = HashMap::new();
    let mut after = None;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    let mut task_cache: Option<Task> = None;
    loop {
        let page: Vec<Submission> = st.store.submissions_page(project, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for s in &page {
            if task_cache.as_ref().is_none_or(|t| t.id != s.task_id) {
                task_cache = st.store.task(s.task_id)?;
            }
            let Some(task) = &task_cache else { continue };
            if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(s.expert_id) {
                let name = st.store.user(s.expert_id)?.map(|u| u.username);
                slot.insert(name.unwrap_or_default());
            }
            let record = Record {
                submission_id: s.id,
                task_id: s.task_id,
                external_id: &task.external_id,
                data: &task.data,
                meta: &task.meta,
                answer: &s.answer,
                scores: &s.scores,
                expert_id: s.expert_id,
                expert: names.get(&s.expert_id).map(String::as_str).unwrap_or(""),
                rubric: &s.rubric,
                rubric_version: &s.rubric_version,
                router: &s.router,
                router_version: &s.router_version,
                served_at: s.served_at,
                submitted_at: s.submitted_at,
                active_seconds: s.active_seconds,
            };
            serde_json::to_writer(&mut buf, &record).map_err(AppError::internal)?;
            buf.push(b'\n');
            if buf.len() >= CHUNK {
                let chunk = Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(CHUNK + 4096),
                ));
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
    }
    if !buf.is_empty() {
        let _ = tx.blocking_send(Ok(Bytes::from(buf)));
    }
    Ok(())
}
