//! Importing tasks, and re-routing them when a router changes.
//!
//! Importing: an upload is spooled to a file in the data folder and read once: every record is
//! checked, routed and written (staged) in batches, so memory stays flat whatever the file size.
//! Any bad record rejects the whole upload, and what was staged is removed.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::Serialize;

use std::sync::Arc;

use super::ReviewCore;
use crate::domain::{AuditAction, BrokenTask, Id, NewTask, Project, TaskState};
use crate::error::{AppError, AppResult, ErrorCode, RecordError};
use crate::import::{read_records, RawRecord};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::scripting::{router, rubric, Plugin, PluginKind};

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

/// What an import wrote.
#[derive(Default)]
struct Staged {
    /// Good records read.
    records: u64,
    /// Records skipped because their `external_id` was in the project already.
    duplicates: u64,
    /// Time spent in the store's writes (the rest is reading, parsing and routing).
    store: std::time::Duration,
}

fn open(path: &Path) -> AppResult<BufReader<File>> {
    File::open(path)
        .map(|f| BufReader::with_capacity(256 * 1024, f))
        .map_err(AppError::internal)
}

/// A record as the router sees it: only the fields its `route` may read are built.
fn routed_view(router: &Plugin, r: &RawRecord) -> serde_json::Value {
    let mut task = serde_json::Map::new();
    let mut put = |field: &str, value: &dyn Fn() -> serde_json::Value| {
        if router.route_reads(field) {
            task.insert(field.to_owned(), value());
        }
    };
    put("id", &|| serde_json::Value::Null);
    put("external_id", &|| r.external_id.clone().into());
    put("data", &|| r.data_value());
    put("meta", &|| r.meta.clone());
    put("is_gold", &|| r.gold.is_some().into());
    serde_json::Value::Object(task)
}

/// Routing decisions of one import, by what the router saw. A router is a pure function of
/// its argument (scripts reach no clock, randomness or outside state), so records that look
/// the same to it (often: the router reads one small field) are routed once.
#[derive(Default)]
struct RouteMemo {
    seen: std::collections::HashMap<String, crate::domain::Routing>,
}

impl RouteMemo {
    /// Views larger than this are routed each time (keying them would cost more than it saves).
    const MAX_KEY: usize = 512;
    const MAX_ENTRIES: usize = 4096;

    fn route(
        &mut self,
        engine: &crate::scripting::ScriptEngine,
        router: &Plugin,
        project: &Project,
        r: &RawRecord,
    ) -> Result<crate::domain::Routing, crate::scripting::ScriptError> {
        let view = routed_view(router, r);
        let key = serde_json::to_string(&view)
            .ok()
            .filter(|k| k.len() <= Self::MAX_KEY);
        if let Some(routing) = key.as_ref().and_then(|k| self.seen.get(k)) {
            return Ok(routing.clone());
        }
        let routing = router::route(engine, router, project, &view)?;
        if let Some(key) = key {
            if self.seen.len() < Self::MAX_ENTRIES {
                self.seen.insert(key, routing.clone());
            }
        }
        Ok(routing)
    }
}

impl ReviewCore {
    /// Imports a spooled upload into a project (blocking).
    ///
    /// One pass: every record is checked and routed, and written staged as it goes (in
    /// batches, so memory stays flat whatever the file size). Nothing shows until all of it
    /// is written and published in one step; a bad record, a router failure or a crash leaves
    /// nothing, and every bad record is named.
    pub fn import_file(
        &self,
        project: &Project,
        path: &Path,
        actor: Id,
    ) -> AppResult<ImportReport> {
        let started = std::time::Instant::now();
        let import = self.store.begin_import(project.id)?;
        let mut created = Vec::new();
        let written = self.write_staged(project, import, path, &mut created);
        let staged = match written {
            Ok(staged) => staged,
            Err(e) => {
                if let Err(cleanup) = self.store.abandon_import(import) {
                    // Start-up removes it then.
                    tracing::warn!(error = %cleanup, "cannot remove a failed import yet");
                }
                return Err(e);
            }
        };
        self.store
            .publish_import(project.id, import, created.len() as u64)?;
        {
            let q = self.queue.project(project.id);
            let mut queue = Queue::lock(&q);
            for status in created.drain(..) {
                queue.set_status(status);
            }
        }
        drop(created);
        let report = ImportReport {
            records: staged.records,
            imported: staged.records - staged.duplicates,
            duplicates: staged.duplicates,
        };
        Metrics::count(&self.metrics.imports);
        self.metrics
            .imported_tasks
            .fetch_add(report.imported, std::sync::atomic::Ordering::Relaxed);
        crate::memory::give_back();
        tracing::info!(
            project = project.id,
            records = report.records,
            imported = report.imported,
            store_ms = staged.store.as_millis() as u64,
            ms = started.elapsed().as_millis() as u64,
            "import written"
        );
        self.audit(
            Some(actor),
            AuditAction::TasksImport,
            format!("project:{}", project.id),
            serde_json::json!({"records": report.records, "imported": report.imported, "duplicates": report.duplicates}),
        );
        Ok(report)
    }

    /// Reads, checks, routes and writes every record under the staged `import`, collecting
    /// the created statuses. After the first bad record nothing more is written, but reading
    /// goes on to name the others.
    ///
    /// Reading and routing run here while a second thread writes the batches (a bounded
    /// channel between them keeps memory flat): the two halves cost about the same, so an
    /// import takes the time of one.
    fn write_staged(
        &self,
        project: &Project,
        import: Id,
        path: &Path,
        created: &mut Vec<crate::domain::TaskStatus>,
    ) -> AppResult<Staged> {
        let (batches, to_write) = std::sync::mpsc::sync_channel::<Vec<NewTask>>(4);
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("assay-import".into())
                .spawn_scoped(scope, move || -> AppResult<Staged> {
                    let mut written = Staged::default();
                    for batch in to_write {
                        let started = std::time::Instant::now();
                        let done = self.store.import_tasks(project.id, import, batch)?;
                        written.store += started.elapsed();
                        written.duplicates += done.duplicates;
                        created.extend(done.created);
                    }
                    Ok(written)
                })
                .map_err(AppError::internal)?;
            let read = self.read_and_route(project, path, batches);
            let written = writer
                .join()
                .map_err(|_| AppError::internal("the import writer panicked"))?;
            // A write failure ends the reading early: report it rather than what was read.
            let written = written?;
            let read = read?;
            Ok(Staged {
                records: read.records,
                duplicates: written.duplicates,
                store: written.store,
            })
        })
    }

    /// The reading half of an import: checks and routes every record, sending good ones to
    /// `batches` until a record is bad. Returns how many good records there were.
    fn read_and_route(
        &self,
        project: &Project,
        path: &Path,
        batches: std::sync::mpsc::SyncSender<Vec<NewTask>>,
    ) -> AppResult<Staged> {
        let router = self.registry.current(PluginKind::Router, &project.router)?;
        let engine = &self.registry.engine;
        let mut batch = Vec::with_capacity(BATCH);
        let mut staged = Staged::default();
        let mut errors: Vec<RecordError> = Vec::new();
        let mut bad = 0u64;
        let mut failure: Option<AppError> = None;
        let mut routes = RouteMemo::default();
        // The writer has stopped (it failed): its error is the one to report.
        let mut writer_gone = false;
        let read = read_records(open(path)?, &mut |pos, rec| {
            if failure.is_some() || writer_gone {
                return;
            }
            let r = match rec {
                Ok(r) => r,
                Err(message) => {
                    bad += 1;
                    if errors.len() < MAX_REPORTED {
                        errors.push(RecordError {
                            record: pos.record,
                            line: pos.line,
                            message,
                        });
                    }
                    return;
                }
            };
            staged.records += 1;
            let routing = match routes.route(engine, &router, project, &r) {
                Ok(routing) => routing,
                Err(e) => {
                    let mut what = format!("record {}", pos.record);
                    if let Some(line) = pos.line {
                        what.push_str(&format!(", line {line}"));
                    }
                    if let Some(x) = &r.external_id {
                        what.push_str(&format!(", external_id {x:?}"));
                    }
                    failure = Some(e.about(what).into());
                    return;
                }
            };
            if bad > 0 {
                return;
            }
            batch.push(NewTask {
                external_id: r.external_id,
                data: r.data,
                meta: r.meta,
                gold: r.gold,
                routing,
            });
            if batch.len() >= BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                writer_gone = batches.send(full).is_err();
            }
        });
        if writer_gone {
            return Ok(staged);
        }
        if let Err(f) = read {
            let record = staged.records + bad + 1;
            errors.truncate(MAX_REPORTED - 1);
            errors.push(RecordError {
                record,
                line: f.line,
                message: f.message,
            });
            return Err(AppError::ImportRejected {
                bad: bad + 1,
                errors,
            });
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if bad > 0 {
            return Err(AppError::ImportRejected { bad, errors });
        }
        if staged.records == 0 {
            return Err(AppError::bad_request(
                ErrorCode::EmptyImport,
                "the upload holds no records",
            ));
        }
        if !batch.is_empty() {
            // A send fails only when the writer failed; its error is reported then.
            let _ = batches.send(batch);
        }
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
