//! Importing tasks. An upload is spooled to a file in the data folder, read once to check every
//! record (and route it), and read again to write the tasks in batches, so memory stays flat
//! whatever the file size. Any bad record rejects the whole upload before anything is written.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use super::audit;
use crate::app::AppState;
use crate::domain::{Id, NewTask, Project, Routing};
use crate::error::{AppError, AppResult, RecordError};
use crate::import::{read_records, RawRecord};
use crate::queue::Queue;
use crate::scripting::{router, PluginKind};

const BATCH: usize = 1000;
const MAX_REPORTED: usize = 100;

#[derive(Debug, Serialize, PartialEq)]
pub struct ImportReport {
    /// Records in the upload.
    pub records: u64,
    /// Tasks created.
    pub imported: u64,
    /// Records skipped because their `external_id` was imported before.
    pub duplicates: u64,
}

fn open(path: &Path) -> AppResult<BufReader<File>> {
    File::open(path)
        .map(|f| BufReader::with_capacity(256 * 1024, f))
        .map_err(AppError::internal)
}

fn task_json(r: &RawRecord) -> serde_json::Value {
    serde_json::json!({
        "id": null, "external_id": r.external_id, "data": r.data, "meta": r.meta,
        "is_gold": r.gold.is_some(),
    })
}

/// Imports a spooled upload into a project (blocking).
pub fn import_file(
    st: &AppState,
    project: &Project,
    path: &Path,
    actor: Id,
) -> AppResult<ImportReport> {
    let router = st.registry.current(PluginKind::Router, &project.router)?;
    let engine = &st.registry.engine;
    let started = std::time::Instant::now();

    // Pass 1: check and route every record.
    let mut errors: Vec<RecordError> = Vec::new();
    let mut bad = 0u64;
    let mut routings: Vec<Routing> = Vec::new();
    let mut script_error = None;
    let records = read_records(open(path)?, &mut |pos, rec| {
        if script_error.is_some() {
            return;
        }
        match rec {
            Ok(r) => match router::route(engine, &router, project, &task_json(&r)) {
                Ok(routing) => routings.push(routing),
                Err(e) => script_error = Some(e),
            },
            Err(message) => {
                bad += 1;
                if errors.len() < MAX_REPORTED {
                    errors.push(RecordError {
                        record: pos.record,
                        line: pos.line,
                        message,
                    });
                }
            }
        }
    })
    .map_err(|f| {
        let record = errors.len() as u64 + routings.len() as u64 + 1;
        let mut errors = errors.clone();
        errors.truncate(MAX_REPORTED - 1);
        errors.push(RecordError {
            record,
            line: f.line,
            message: f.message,
        });
        AppError::ImportRejected {
            bad: bad + 1,
            errors,
        }
    })?;
    if let Some(e) = script_error {
        return Err(e.into());
    }
    if bad > 0 {
        return Err(AppError::ImportRejected { bad, errors });
    }
    if records == 0 {
        return Err(AppError::bad_request(
            "empty_import",
            "the upload holds no records",
        ));
    }

    let checked_ms = started.elapsed().as_millis() as u64;

    // Pass 2: write in batches, in upload order.
    let mut report = ImportReport {
        records,
        imported: 0,
        duplicates: 0,
    };
    let mut routings = routings.into_iter();
    let mut batch = Vec::with_capacity(BATCH);
    let mut failure = None;
    let q = st.queue.project(project.id);
    let flush_batch = |batch: &mut Vec<NewTask>, report: &mut ImportReport| -> AppResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let written = st.store.import_tasks(project.id, std::mem::take(batch))?;
        report.imported += written.created.len() as u64;
        report.duplicates += written.duplicates;
        let mut queue = Queue::lock(&q);
        for status in written.created {
            queue.set_status(status);
        }
        Ok(())
    };
    read_records(open(path)?, &mut |_, rec| {
        if failure.is_some() {
            return;
        }
        let (Ok(r), Some(routing)) = (rec, routings.next()) else {
            failure = Some(AppError::internal(
                "the spooled upload changed between passes",
            ));
            return;
        };
        batch.push(NewTask {
            external_id: r.external_id,
            data: r.data,
            meta: r.meta,
            gold: r.gold,
            routing,
        });
        if batch.len() >= BATCH {
            if let Err(e) = flush_batch(&mut batch, &mut report) {
                failure = Some(e);
            }
        }
    })
    .map_err(|f| AppError::internal(f.message))?;
    if let Some(e) = failure {
        return Err(e);
    }
    flush_batch(&mut batch, &mut report)?;
    crate::memory::give_back();
    tracing::info!(
        project = project.id,
        records = report.records,
        imported = report.imported,
        checked_ms,
        ms = started.elapsed().as_millis() as u64,
        "import written"
    );
    audit(
        st,
        Some(actor),
        "tasks.import",
        format!("project:{}", project.id),
        serde_json::json!({"records": report.records, "imported": report.imported, "duplicates": report.duplicates}),
    );
    Ok(report)
}
