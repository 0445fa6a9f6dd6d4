//! Importing tasks, and re-routing them when a router changes.
//!
//! Importing: an upload is spooled to a file in the data folder, read once to check every
//! record (and route it), and read again to write the tasks in batches, so memory stays flat
//! whatever the file size. Any bad record rejects the whole upload before anything is written.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use std::sync::Arc;

use super::ReviewCore;
use crate::domain::{AuditAction, BrokenTask, Id, NewTask, Project, Routing, TaskState};
use crate::error::{AppError, AppResult, ErrorCode, RecordError};
use crate::import::{read_records, RawRecord};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::scripting::{router, rubric, PluginKind};

const BATCH: usize = 1000;
const MAX_REPORTED: usize = 100;

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RerouteReport {
    pub rerouted: u64,
    pub completed: u64,
    pub router_version: String,
}

#[derive(Debug, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ImportReport {
    /// Records in the upload.
    pub records: u64,
    /// Tasks created.
    pub imported: u64,
    /// Records skipped because their `external_id` was imported before.
    pub duplicates: u64,
}

/// What pass 2 of an import did.
#[derive(Default)]
struct Staged {
    /// Records skipped because their `external_id` was in the project already.
    duplicates: u64,
    /// Time spent in the store's writes (the rest of the pass is reading and parsing).
    store: std::time::Duration,
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

impl ReviewCore {
    /// Imports a spooled upload into a project (blocking).
    pub fn import_file(
        &self,
        project: &Project,
        path: &Path,
        actor: Id,
    ) -> AppResult<ImportReport> {
        let st = self;
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
                    Err(e) => {
                        let mut what = format!("record {}", pos.record);
                        if let Some(line) = pos.line {
                            what.push_str(&format!(", line {line}"));
                        }
                        if let Some(x) = &r.external_id {
                            what.push_str(&format!(", external_id {x:?}"));
                        }
                        script_error = Some(e.about(what));
                    }
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
                ErrorCode::EmptyImport,
                "the upload holds no records",
            ));
        }

        let checked_ms = started.elapsed().as_millis() as u64;

        // Pass 2: write in batches, in upload order, staged: nothing shows until all of it
        // is written and published in one step; a failure (or a crash) leaves nothing.
        let import = st.store.begin_import(project.id)?;
        let mut created = Vec::new();
        let written = self.write_staged(project, import, path, routings, &mut created);
        let (report, store_ms) = match written {
            Ok(staged) => {
                let duplicates = staged.duplicates;
                st.store
                    .publish_import(project.id, import, created.len() as u64)?;
                let q = st.queue.project(project.id);
                let mut queue = Queue::lock(&q);
                for status in created.drain(..) {
                    queue.set_status(status);
                }
                let report = ImportReport {
                    records,
                    imported: records - duplicates,
                    duplicates,
                };
                (report, staged.store.as_millis() as u64)
            }
            Err(e) => {
                if let Err(cleanup) = st.store.abandon_import(import) {
                    // Start-up removes it then.
                    tracing::warn!(error = %cleanup, "cannot remove a failed import yet");
                }
                return Err(e);
            }
        };
        drop(created);
        Metrics::count(&st.metrics.imports);
        st.metrics
            .imported_tasks
            .fetch_add(report.imported, std::sync::atomic::Ordering::Relaxed);
        crate::memory::give_back();
        tracing::info!(
            project = project.id,
            records = report.records,
            imported = report.imported,
            checked_ms,
            store_ms,
            ms = started.elapsed().as_millis() as u64,
            "import written"
        );
        st.audit(
        Some(actor),
        AuditAction::TasksImport,
        format!("project:{}", project.id),
        serde_json::json!({"records": report.records, "imported": report.imported, "duplicates": report.duplicates}),
    );
        Ok(report)
    }

    /// Pass 2 of an import: writes the checked records under `import`, collecting the created
    /// statuses.
    fn write_staged(
        &self,
        project: &Project,
        import: Id,
        path: &Path,
        routings: Vec<Routing>,
        created: &mut Vec<crate::domain::TaskStatus>,
    ) -> AppResult<Staged> {
        let mut routings = routings.into_iter();
        let mut batch = Vec::with_capacity(BATCH);
        let mut staged = Staged::default();
        let mut failure = None;
        let mut write = |batch: &mut Vec<NewTask>| -> AppResult<()> {
            if !batch.is_empty() {
                let writing = std::time::Instant::now();
                let written = self
                    .store
                    .import_tasks(project.id, import, std::mem::take(batch))?;
                staged.store += writing.elapsed();
                staged.duplicates += written.duplicates;
                created.extend(written.created);
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
                if let Err(e) = write(&mut batch) {
                    failure = Some(e);
                }
            }
        })
        .map_err(|f| AppError::internal(f.message))?;
        if let Some(e) = failure {
            return Err(e);
        }
        write(&mut batch)?;
        Ok(staged)
    }

    /// Applies the project's current router to every open task. Progress (who has reviewed, who
    /// skipped) is kept; only pool, overlap, priority and estimate change. A task whose new
    /// overlap is already met completes.
    pub async fn reroute(self: &Arc<Self>, actor: Id, project: Id) -> AppResult<RerouteReport> {
        self.ready().await;
        let st = self.clone();
        let report = self.in_project(project, move || {
        let project = st.store.project(project)?.ok_or(AppError::NotFound("project"))?;
        let plugin = st.registry.current(PluginKind::Router, &project.router)?;
        let q = st.queue.project(project.id);
        let open: Vec<Id> = {
            let queue = Queue::lock(&q);
            queue.open_tasks()
        };
        // Route every open task first, without the lock (scripts may be slow): a failure
        // names its task and changes nothing.
        let mut decided = Vec::with_capacity(open.len());
        for &id in &open {
            let Some(task) = st.store.task(id)? else { continue };
            let routing = router::route(&st.registry.engine, &plugin, &project, &rubric::task_value(&task))
                .map_err(|e| e.about(task_label(&task)))?;
            decided.push((id, routing));
        }
        // Then apply it all at once to the tasks' current status (leases and reviews may have
        // moved meanwhile), in one transaction under the lock.
        let mut report = RerouteReport { rerouted: 0, completed: 0, router_version: plugin.hash.clone() };
        let mut queue = Queue::lock(&q);
        let mut changed = Vec::with_capacity(decided.len());
        for (id, routing) in decided {
            let Some(slot) = queue.slot(id) else { continue };
            let mut status = slot.status.clone();
            status.pool = routing.pool;
            status.reviews = routing.reviews;
            status.priority = routing.priority;
            status.estimate_minutes = routing.estimate_minutes;
            status.router_version = routing.router_version;
            if status.done_by.len() >= status.reviews as usize {
                status.state = TaskState::Complete;
                report.completed += 1;
            }
            changed.push(status);
        }
        st.store.put_task_statuses(&changed)?;
        report.rerouted = changed.len() as u64;
        for status in changed {
            queue.set_status(status);
        }
        drop(queue);
        st.audit(Some(actor), AuditAction::ProjectReroute, format!("project:{}", project.id), serde_json::json!({"rerouted": report.rerouted, "router_version": report.router_version}));
        Ok(report)
    })
    .await?;
        self.durable().await?;
        Ok(report)
    }
}

impl ReviewCore {
    /// A project's quarantined tasks, with why each was set aside.
    pub fn broken_tasks(&self, project: Id) -> AppResult<Vec<BrokenTask>> {
        Ok(self.store.broken_tasks(project)?)
    }

    /// Puts quarantined tasks back in the queue (all of the project's when `tasks` is `None`);
    /// returns how many. All or none.
    pub fn retry_broken(
        &self,
        actor: Option<Id>,
        project: Id,
        tasks: Option<&[Id]>,
    ) -> AppResult<usize> {
        let q = self.queue.project(project);
        let mut queue = Queue::lock(&q);
        let reopened = self.store.reopen_broken(project, tasks)?;
        for status in &reopened {
            queue.set_status(status.clone());
        }
        drop(queue);
        if !reopened.is_empty() {
            let ids: Vec<Id> = reopened.iter().map(|s| s.task_id).collect();
            self.audit(
                actor,
                AuditAction::TaskRetry,
                format!("project:{project}"),
                serde_json::json!({"tasks": ids}),
            );
        }
        Ok(reopened.len())
    }
}

/// How an error names a task: its id, and its external id when it has one.
fn task_label(task: &crate::domain::Task) -> String {
    match &task.external_id {
        Some(x) => format!("task {} (external_id {x:?})", task.id),
        None => format!("task {}", task.id),
    }
}

/// Removes upload files an interrupted import left in `data/spool` (a running import's file is
/// removed when it ends; a killed process leaves it).
pub(super) fn clean_spool(data: &Path) {
    let Ok(entries) = std::fs::read_dir(data.join("spool")) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a spooled upload");
        }
    }
}
