//! Streamed exports. A blocking producer pages through the project's submissions (or tasks) in id
//! order and sends JSON Lines in chunks over a small bounded channel, so memory stays constant
//! whatever the project size and a slow client simply slows the producer down.
//!
//! Formats: `jsonl` (one line per submission, with its task and context), `records` (what the
//! rubric's `export_records(task, submissions)` returns), `dpo` (prompt/chosen/rejected from the
//! majority of a pairwise criterion), `sft` (chat `messages` ending in each expert rewrite).

use std::collections::HashMap;

use bytes::Bytes;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::domain::{FinalAnswer, Id, Project, Submission, Task, Verdict};
use crate::error::AppError;
use crate::scripting::rubric::{self, Kind};
use crate::scripting::{Plugin, PluginKind};

const PAGE: usize = 256;
const CHUNK: usize = 64 * 1024;
/// Recently read tasks kept while exporting (their reviews come close together).
const TASK_CACHE: usize = 64;

/// One exported line: a submission with its task and who made it. The JSON parts of the task
/// and the answer are copied through as stored text, never parsed into values and re-encoded.
#[derive(Serialize)]
struct Record<'a> {
    submission_id: Id,
    task_id: Id,
    external_id: &'a Option<Cow<'a, str>>,
    data: &'a RawValue,
    meta: Option<&'a RawValue>,
    answer: &'a RawValue,
    scores: &'a RawValue,
    expert_id: Id,
    expert: &'a str,
    rubric: &'a str,
    rubric_version: &'a str,
    router: &'a str,
    router_version: &'a str,
    served_at: i64,
    submitted_at: i64,
    active_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    qa: Option<&'a RawValue>,
    /// The task's adjudicated final answer.
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    final_answer: Option<&'a FinalAnswer>,
}

/// Which submissions an export holds, by their QA verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Include {
    /// Accepted or fixed.
    Accepted,
    Rejected,
    /// No verdict yet.
    Pending,
    All,
    /// Everything but rejected (when no `status` is given).
    NotRejected,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Result<Self, AppError> {
        match s {
            None => Ok(Include::NotRejected),
            Some("accepted") => Ok(Include::Accepted),
            Some("rejected") => Ok(Include::Rejected),
            Some("pending") => Ok(Include::Pending),
            Some("all") => Ok(Include::All),
            Some(other) => Err(AppError::field(
                "status",
                format!("unknown status `{other}`; available: accepted, rejected, pending, all"),
            )),
        }
    }

    fn admits(self, verdict: Option<Verdict>) -> bool {
        match self {
            Include::All => true,
            Include::NotRejected => verdict != Some(Verdict::Reject),
            Include::Accepted => matches!(verdict, Some(Verdict::Accept | Verdict::Fix)),
            Include::Rejected => verdict == Some(Verdict::Reject),
            Include::Pending => verdict.is_none(),
        }
    }
}

/// Just the verdict of a stored QA record.
#[derive(Deserialize)]
struct StoredVerdict {
    verdict: Verdict,
}

/// The parts of a stored [`Task`] an export line needs, borrowed from its JSON text.
#[derive(Deserialize)]
struct StoredTask<'a> {
    #[serde(borrow, default)]
    external_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

/// A stored [`Submission`], borrowed from its JSON text.
#[derive(Deserialize)]
struct StoredSubmission<'a> {
    id: Id,
    task_id: Id,
    expert_id: Id,
    #[serde(borrow)]
    answer: &'a RawValue,
    #[serde(borrow)]
    scores: &'a RawValue,
    #[serde(borrow)]
    rubric: Cow<'a, str>,
    #[serde(borrow)]
    rubric_version: Cow<'a, str>,
    #[serde(borrow)]
    router: Cow<'a, str>,
    #[serde(borrow)]
    router_version: Cow<'a, str>,
    served_at: i64,
    submitted_at: i64,
    active_seconds: f64,
    #[serde(borrow, default)]
    qa: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Jsonl,
    Records,
    Dpo,
    Sft,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, AppError> {
        match s {
            "jsonl" => Ok(Format::Jsonl),
            "records" => Ok(Format::Records),
            "dpo" => Ok(Format::Dpo),
            "sft" => Ok(Format::Sft),
            other => Err(AppError::field(
                "format",
                format!("unknown format `{other}`; available: jsonl, records, dpo, sft"),
            )),
        }
    }
}

/// Starts producing the export of a project; the receiver yields chunks of JSON Lines.
pub fn start(
    state: AppState,
    project: Project,
    format: Format,
    include: Include,
) -> mpsc::Receiver<Result<Bytes, AppError>> {
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut buf = Vec::with_capacity(CHUNK + 4096);
        let result = match format {
            Format::Jsonl => produce(&state, project.id, include, &mut buf, &tx),
            _ => produce_by_task(&state, &project, format, include, &mut buf, &tx),
        };
        // Whole records written before a failure still go out, then the failure.
        if !buf.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(buf)));
        }
        if let Err(e) = result {
            tracing::error!(error = %e, project = project.id, "export failed");
            // Before any output the client gets the error as the response; after, as the
            // export's last record.
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// Streams every submission as one JSON line; `buf` holds what is not sent yet.
fn produce(
    st: &AppState,
    project: Id,
    include: Include,
    buf: &mut Vec<u8>,
    tx: &mpsc::Sender<Result<Bytes, AppError>>,
) -> Result<(), AppError> {
    let mut names: HashMap<Id, String> = HashMap::new();
    let mut after = None;
    // Reviews of one task tend to be close together: a few recent tasks stay at hand.
    type Cached = (Id, Vec<u8>, Option<FinalAnswer>);
    let mut tasks: std::collections::VecDeque<Cached> = Default::default();
    let corrupt =
        |what: &str, e: serde_json::Error| AppError::internal(format!("stored {what}: {e}"));
    loop {
        let page = st.store().submissions_page_json(project, after, PAGE)?;
        if page.is_empty() {
            break;
        }
        for bytes in &page {
            let s: StoredSubmission =
                serde_json::from_slice(bytes).map_err(|e| corrupt("submission", e))?;
            after = Some(s.id);
            let verdict = match s.qa {
                Some(raw) => Some(
                    serde_json::from_str::<StoredVerdict>(raw.get())
                        .map_err(|e| corrupt("verdict", e))?
                        .verdict,
                ),
                None => None,
            };
            if !include.admits(verdict) {
                continue;
            }
            let at = match tasks.iter().position(|(id, _, _)| *id == s.task_id) {
                Some(at) => at,
                None => {
                    let Some(raw) = st.store().task_json(s.task_id)? else {
                        continue;
                    };
                    let final_answer = st.store().final_answer(s.task_id)?;
                    if tasks.len() == TASK_CACHE {
                        tasks.pop_front();
                    }
                    tasks.push_back((s.task_id, raw, final_answer));
                    tasks.len() - 1
                }
            };
            let Some((_, raw, final_answer)) = tasks.get(at) else {
                continue;
            };
            let task: StoredTask = serde_json::from_slice(raw).map_err(|e| corrupt("task", e))?;
            if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(s.expert_id) {
                let name = st.store().user(s.expert_id)?.map(|u| u.username);
                slot.insert(name.unwrap_or_default());
            }
            let record = Record {
                submission_id: s.id,
                task_id: s.task_id,
                external_id: &task.external_id,
                data: task.data,
                meta: task.meta,
                answer: s.answer,
                scores: s.scores,
                expert_id: s.expert_id,
                expert: names.get(&s.expert_id).map(String::as_str).unwrap_or(""),
                rubric: &s.rubric,
                rubric_version: &s.rubric_version,
                router: &s.router,
                router_version: &s.router_version,
                served_at: s.served_at,
                submitted_at: s.submitted_at,
                active_seconds: s.active_seconds,
                qa: s.qa,
                final_answer: final_answer.as_ref(),
            };
            serde_json::to_writer(&mut *buf, &record).map_err(AppError::internal)?;
            buf.push(b'\n');
            if !send_if_full(buf, tx) {
                return Ok(()); // the client went away
            }
        }
    }
    Ok(())
}

/// Checks that a project can be exported in a format, before any byte is sent.
pub fn check(
    st: &AppState,
    project: &Project,
    format: Format,
) -> Result<std::sync::Arc<Plugin>, AppError> {
    let plugin = st.registry.current(PluginKind::Rubric, &project.rubric)?;
    if format == Format::Records && !plugin.has_fn("export_records", 2) {
        return Err(AppError::field(
            "format",
            format!(
                "rubric `{}` defines no `export_records(task, submissions)`",
                plugin.name
            ),
        ));
    }
    Ok(plugin)
}

/// Sends `buf` once it is a chunk's worth; false when the client went away.
fn send_if_full(buf: &mut Vec<u8>, tx: &mpsc::Sender<Result<Bytes, AppError>>) -> bool {
    if buf.len() < CHUNK {
        return true;
    }
    let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK + 4096)));
    tx.blocking_send(Ok(chunk)).is_ok()
}

/// Task-level formats: every task with at least one submission becomes zero or more records.
fn produce_by_task(
    st: &AppState,
    project: &Project,
    format: Format,
    include: Include,
    buf: &mut Vec<u8>,
    tx: &mpsc::Sender<Result<Bytes, AppError>>,
) -> Result<(), AppError> {
    let plugin = check(st, project, format)?;
    let mut after = None;
    loop {
        let page = st.store().tasks_page(project.id, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for task in &page {
            let subs = standing(
                st.store().submissions_for_task(task.id)?,
                st.store().final_answer(task.id)?,
                include,
            );
            if subs.is_empty() {
                continue;
            }
            let records = match format {
                Format::Records => scripted_records(st, &plugin, task, &subs)?,
                Format::Dpo => dpo(st, &plugin, task, &subs)?,
                _ => sft(st, &plugin, task, &subs)?,
            };
            for r in records {
                serde_json::to_writer(&mut *buf, &r).map_err(AppError::internal)?;
                buf.push(b'\n');
            }
            if !send_if_full(buf, tx) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The answers a task-level format uses: the included submissions with a reviewer's fix in
/// place of the original; or, for an adjudicated task, its final answer alone.
fn standing(
    subs: Vec<Submission>,
    final_answer: Option<FinalAnswer>,
    include: Include,
) -> Vec<Submission> {
    let mut subs: Vec<Submission> = subs
        .into_iter()
        .filter(|s| include.admits(s.qa.as_ref().map(|q| q.verdict)))
        .map(|mut s| {
            if let Some(fixed) = s.qa.as_ref().and_then(|q| q.fixed_answer.clone()) {
                s.answer = fixed;
            }
            if let Some(scores) = s.qa.as_ref().and_then(|q| q.fixed_scores.clone()) {
                s.scores = scores;
            }
            s
        })
        .collect();
    if let (Some(f), Some(first)) = (final_answer, subs.first().cloned()) {
        subs = vec![Submission {
            id: 0,
            expert_id: f.reviewer,
            answer: f.answer,
            scores: f.scores,
            rubric_version: f.rubric_version,
            qa: None,
            ..first
        }];
    }
    subs
}

fn submissions_value(subs: &[Submission]) -> Value {
    Value::Array(
        subs.iter()
            .map(|s| serde_json::json!({"id": s.id, "expert_id": s.expert_id, "answer": s.answer, "scores": s.scores}))
            .collect(),
    )
}

fn scripted_records(
    st: &AppState,
    plugin: &Plugin,
    task: &Task,
    subs: &[Submission],
) -> Result<Vec<Value>, AppError> {
    let f = "export_records";
    let args = (
        rubric::to_dynamic(plugin, f, &rubric::task_value(task))?,
        rubric::to_dynamic(plugin, f, &submissions_value(subs))?,
    );
    let out = rubric::from_dynamic(plugin, f, &st.registry.engine.call(plugin, f, args)?)?;
    match out {
        Value::Array(records) => Ok(records),
        Value::Null => Ok(Vec::new()),
        _ => Err(crate::scripting::ScriptError::contract(
            plugin,
            f,
            "must return an array of records",
        )
        .into()),
    }
}

/// The prompt of a task: `prompt`, or the chat `messages` so far.
fn prompt_of(data: &Value) -> Value {
    data.get("prompt")
        .or_else(|| data.get("messages"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The text of `responses[i]`: a string, or an object's `text`.
fn response_text(data: &Value, i: usize) -> Option<Value> {
    let r = data.get("responses")?.get(i)?;
    match r {
        Value::String(_) => Some(r.clone()),
        _ => r.get("text").cloned(),
    }
}

fn first_criterion(
    st: &AppState,
    plugin: &Plugin,
    task: &Task,
    want: fn(&Kind) -> bool,
) -> Result<Option<String>, AppError> {
    let criteria = rubric::criteria(&st.registry.engine, plugin, &rubric::task_value(task))?;
    Ok(criteria.into_iter().find(|c| want(&c.kind)).map(|c| c.id))
}

/// Preference pairs: the majority pick of the first pairwise criterion; ties and split votes
/// give no pair.
fn dpo(
    st: &AppState,
    plugin: &Plugin,
    task: &Task,
    subs: &[Submission],
) -> Result<Vec<Value>, AppError> {
    let Some(id) = first_criterion(st, plugin, task, |k| matches!(k, Kind::Pairwise { .. }))?
    else {
        return Ok(Vec::new());
    };
    let (mut left, mut right, mut tie) = (0u64, 0u64, 0u64);
    for s in subs {
        match s
            .answer
            .get(&id)
            .and_then(|v| v.get("pick"))
            .and_then(Value::as_str)
        {
            Some("left") => left += 1,
            Some("right") => right += 1,
            Some("tie") => tie += 1,
            _ => {}
        }
    }
    let (Some(a), Some(b)) = (response_text(&task.data, 0), response_text(&task.data, 1)) else {
        return Ok(Vec::new());
    };
    let (chosen, rejected) = match left.cmp(&right) {
        std::cmp::Ordering::Greater => (a, b),
        std::cmp::Ordering::Less => (b, a),
        std::cmp::Ordering::Equal => return Ok(Vec::new()),
    };
    Ok(vec![serde_json::json!({
        "prompt": prompt_of(&task.data), "chosen": chosen, "rejected": rejected,
        "task_id": task.id, "external_id": task.external_id,
        "votes": {"left": left, "right": right, "tie": tie},
    })])
}

/// Supervised examples: the conversation, ending with each expert's rewrite.
fn sft(
    st: &AppState,
    plugin: &Plugin,
    task: &Task,
    subs: &[Submission],
) -> Result<Vec<Value>, AppError> {
    let Some(id) = first_criterion(st, plugin, task, |k| matches!(k, Kind::Rewrite { .. }))? else {
        return Ok(Vec::new());
    };
    let context: Vec<Value> = match prompt_of(&task.data) {
        Value::Array(messages) => messages,
        Value::Null => Vec::new(),
        prompt => vec![serde_json::json!({"role": "user", "content": prompt})],
    };
    let mut out = Vec::new();
    for s in subs {
        let Some(text) = s.answer.get(&id).and_then(Value::as_str) else {
            continue;
        };
        let mut messages = context.clone();
        messages.push(serde_json::json!({"role": "assistant", "content": text}));
        out.push(serde_json::json!({
            "messages": messages, "task_id": task.id, "external_id": task.external_id,
            "submission_id": s.id, "expert_id": s.expert_id,
        }));
    }
    Ok(out)
}
