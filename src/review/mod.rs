//! The review core: the one owner of every change to task, lease and submission state.
//!
//! [`ReviewCore`] holds the store, the in-memory hand-out index, the group flusher, the submit
//! committer and the plugin registry. Every state change of the review loop is one of its
//! methods — lease (`next`), heartbeat, skip, release, expire (`sweep`), submit, import,
//! reroute — and each keeps the rule that makes the loop exact: decide under the project's
//! queue lock, commit to the store, then mirror what committed into the index (still under the
//! lock). Nothing else writes that state; services and the web layer read through
//! [`ReviewCore::store`] and call these methods. The core knows nothing of HTTP or pages.
//!
//! The seam for a networked store is the [`Store`] trait plus this type: a store that can hand
//! out tasks itself would replace the index lookups in `lease.rs` with its own query.

mod archive;
mod backup;
mod commit;
mod lease;
pub mod pool;
pub mod qa;
mod quarantine;
mod snapshot;
mod startup;
mod submit;
mod tasks;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use lease::{AssignmentView, Handout, TaskView};
pub use pool::{blocking, hashing};
pub use qa::{QaHandout, VerdictBody};
pub use submit::Submitted;
pub use tasks::{ImportReport, RerouteReport};

use crate::auth::{Keys, LoginLimiter};
use crate::config::Config;
use crate::domain::{AuditAction, AuditEvent, GlobalRole, Id, ProjectRole, User};
use crate::error::{AppError, AppResult};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::scripting::{PluginKind, Registry, ScriptEngine};
use crate::store::flush::GroupFlusher;
use crate::store::{SledStore, Store};

pub struct ReviewCore {
    pub config: Arc<Config>,
    store: Arc<dyn Store>,
    flusher: Arc<GroupFlusher>,
    queue: Arc<Queue>,
    committer: commit::Committer,
    pub registry: Arc<Registry>,
    pub keys: Arc<Keys>,
    pub login_limiter: Arc<LoginLimiter>,
    /// Sessions ended by a logout.
    pub revoked: crate::auth::revoked::RevokedSessions,
    pub metrics: Arc<Metrics>,
    /// Each project's share of the script permits.
    gates: pool::ProjectGates,
    /// Set by `shutdown`: timers stop changing state.
    stopping: AtomicBool,
    /// When the core opened (ms).
    started_at: i64,
}

impl ReviewCore {
    /// Opens the store, loads the plugins, and starts loading the hand-out index (in the
    /// background: the core answers at once, and whatever needs the index waits for it).
    pub fn open(config: Config) -> Result<Arc<Self>, String> {
        let started = std::time::Instant::now();
        pool::init(&config.server).map_err(|e| format!("cannot start the thread pools: {e}"))?;
        let data = &config.storage.data;
        std::fs::create_dir_all(data)
            .map_err(|e| format!("cannot create data folder {}: {e}", data.display()))?;
        let snapshot = startup::read_snapshot(data)
            .map_err(|e| format!("cannot start reading the queue snapshot: {e}"))?;
        let sled = SledStore::open_with_cache(
            &data.join("db"),
            config.storage.fsync,
            config.storage.cache_mb,
        )
        .map_err(|e| e.to_string())?;
        let store: Arc<dyn Store> = Arc::new(sled);
        // Taken before anything can change the store: see `snapshot.rs`.
        let mark = store.take_snapshot_mark().map_err(|e| e.to_string())?;
        // What a crash left of imports: removed before the queue is read.
        let removed = store.clean_imports().map_err(|e| e.to_string())?;
        if removed > 0 {
            tracing::warn!(
                tasks = removed,
                "removed the tasks of an interrupted import"
            );
        }
        tasks::clean_spool(data);
        let resumed = startup::resume_leases(store.as_ref())?;
        let flush_store = store.clone();
        let flusher = GroupFlusher::start(move || flush_store.flush().map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot start the flusher: {e}"))?;
        let flusher = Arc::new(flusher);

        let (went_live, live_versions) = std::sync::mpsc::channel();
        let archive = Arc::new(archive::StoreArchive {
            store: store.clone(),
            went_live: std::sync::Mutex::new(went_live),
        });
        let registry = Arc::new(Registry::new(ScriptEngine::new(&config.scripting), archive));
        registry.load_dir(PluginKind::Rubric, &config.plugins.rubrics);
        registry.load_dir(PluginKind::Router, &config.plugins.plugins);

        let queue = Arc::new(Queue::loading());
        let secret = crate::auth::load_or_create_secret(&config.auth.secret, data)?;
        let keys = Keys::new(&secret, config.auth.session_hours);
        let login_limiter = LoginLimiter::new(&config.auth);
        let revoked = crate::auth::revoked::RevokedSessions::new(
            store.revoked_sessions().map_err(|e| e.to_string())?,
        );
        let metrics = Arc::new(Metrics::default());
        let committer = commit::Committer::start(
            store.clone(),
            queue.clone(),
            flusher.clone(),
            metrics.clone(),
        )
        .map_err(|e| format!("cannot start the committer: {e}"))?;
        let gates = pool::ProjectGates::new(config.server.script_threads_per_project);
        let core = Arc::new(Self {
            config: Arc::new(config),
            store,
            flusher,
            queue,
            committer,
            registry,
            keys: Arc::new(keys),
            login_limiter: Arc::new(login_limiter),
            revoked,
            gates,
            metrics,
            stopping: AtomicBool::new(false),
            started_at: crate::now_ms(),
        });
        startup::spawn_load(&core, started, mark, snapshot, resumed)
            .map_err(|e| format!("cannot start loading the queue: {e}"))?;
        quarantine::spawn_retry_on_new_versions(&core, live_versions)
            .map_err(|e| format!("cannot start the quarantine retrier: {e}"))?;
        Ok(core)
    }

    /// The store, for reads, and for the records the core does not own (users, projects,
    /// memberships, plugin versions). Task, lease and submission state changes go through the
    /// core's methods only.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs work for a project that may call its scripts: on the blocking pool, with a script
    /// permit and one of the project's own (waiting for a turn holds no thread).
    pub async fn in_project<R, F>(&self, project: Id, f: F) -> AppResult<R>
    where
        F: FnOnce() -> AppResult<R> + Send + 'static,
        R: Send + 'static,
    {
        let permit = self.gates.enter(project).await?;
        pool::scripted(&permit, f).await
    }

    /// Like [`in_project`](Self::in_project), for work that answers through a channel of its
    /// own: returns once the work is queued.
    pub(crate) async fn in_project_detached<F>(&self, project: Id, f: F) -> AppResult<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let permit = self.gates.enter(project).await?;
        pool::scripted_detached(permit, f).await
    }

    /// A result as `user` may see it: a script failure keeps its details for admins and the
    /// project's leads; an expert is told only what failed (see `ScriptError::redacted`).
    pub(crate) async fn as_seen_by<R>(
        &self,
        user: &User,
        project: Id,
        result: AppResult<R>,
    ) -> AppResult<R> {
        let Err(error @ (AppError::Script(_) | AppError::PluginUnavailable { .. })) = result else {
            return result;
        };
        let oversees = user.role == GlobalRole::Admin || {
            let (store, uid) = (self.store.clone(), user.id);
            let role = blocking(move || Ok(store.member_role(project, uid)?)).await;
            matches!(role, Ok(Some(ProjectRole::Lead)))
        };
        Err(match error {
            _ if oversees => error,
            AppError::Script(e) => AppError::Script(e.redacted()),
            AppError::PluginUnavailable { name, .. } => AppError::PluginUnavailable {
                name,
                reason: "it could not be loaded; a lead or admin can see why".into(),
            },
            other => other,
        })
    }

    /// Seals settled audit events into the hash chain once a second, and applies the
    /// retention once an hour.
    pub fn spawn_audit_sealer(self: &Arc<Self>) {
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = 0i64;
            loop {
                tick.tick().await;
                if core.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let c = core.clone();
                let result = blocking(move || {
                    let now = crate::now_ms();
                    // A moment's grace: events of running transactions land first.
                    c.store.seal_audit(now - 2_000)?;
                    let days = c.config.audit.retention_days;
                    if days > 0 && now - last_prune > 3_600_000 {
                        let removed = c.store.prune_audit(now - days as i64 * 86_400_000)?;
                        if removed > 0 {
                            tracing::info!(removed, "audit events past their retention removed");
                        }
                        return Ok(Some(now));
                    }
                    Ok(None)
                })
                .await;
                match result {
                    Ok(Some(at)) => last_prune = at,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "sealing the audit log failed"),
                }
            }
        });
    }

    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    /// Open tasks, tasks in QA and live leases per project, for `/metrics`.
    pub fn queue_depths(&self) -> Vec<crate::queue::Depth> {
        self.queue.depths(crate::now_ms())
    }

    /// Whether the hand-out index has loaded (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.queue.is_loaded()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits for the hand-out index without holding a thread.
    pub async fn ready(&self) {
        self.queue.loaded().await
    }

    /// Appends an audit event; a failure is logged, never shown to the caller.
    pub fn audit(
        &self,
        actor: Option<Id>,
        action: AuditAction,
        object: String,
        detail: serde_json::Value,
    ) {
        let event = AuditEvent {
            at: crate::now_ms(),
            actor,
            action,
            object,
            detail,
        };
        if let Err(e) = self.store.append_audit(&event) {
            tracing::error!(error = %e, ?action, "could not append audit event");
        }
    }

    /// Waits until everything written so far is durable (shared group flush).
    pub async fn durable(&self) -> AppResult<()> {
        self.flusher
            .wait()
            .await
            .map_err(|e| AppError::storage(format!("flush failed: {e}")))
    }

    /// Why storage is failing: the latest flush failed, or a write found the disk full
    /// (`/healthz`, the storage watchdog).
    pub fn storage_failure(&self) -> Option<String> {
        self.flusher
            .last_failure()
            .or_else(crate::error::storage_health::failure)
            .or_else(|| self.store.needs_reopen())
    }

    /// Writes and flushes once, now, from a plain thread: whether storage works again.
    pub fn storage_works(&self) -> bool {
        // A store that must be reopened does not work again by itself: the watchdog restarts.
        let works = self.store.needs_reopen().is_none()
            && self.store.set_alive_at(crate::now_ms()).is_ok()
            && self.flusher.wait_blocking().is_ok();
        if works {
            crate::error::storage_health::recovered();
        }
        works
    }

    /// Flushes run and durable writes they covered, for `/metrics`.
    pub fn flush_counts(&self) -> (u64, u64) {
        let (flushes, waits) = self.flusher.counts();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        (
            flushes + load(&self.metrics.durable_syncs),
            waits + load(&self.metrics.durable_synced_writes),
        )
    }

    /// How many tasks of a project wait for this expert, counting up to `cap` (blocking: it may
    /// wait for the start-up load).
    pub fn waiting_for(&self, user: &User, project: Id, cap: usize) -> usize {
        let q = self.queue.project(project);
        let waiting = Queue::lock(&q)
            .eligible(user.id, &user.skills, crate::now_ms(), cap)
            .len();
        waiting
    }

    /// Whether this expert holds a lease on the task now (blocking, like `waiting_for`).
    pub fn holds(&self, user: Id, project: Id, task: Id) -> bool {
        let q = self.queue.project(project);
        let queue = Queue::lock(&q);
        queue
            .slot(task)
            .is_some_and(|s| s.leases.iter().any(|l| l.expert_id == user))
    }

    /// Where the hand-out index and the store disagree (each difference in a line); empty when
    /// the index mirrors the store exactly. For tests and diagnosis: it reads every open task.
    pub fn index_mismatches(&self) -> Result<Vec<String>, AppError> {
        let mut stored = self.store.open_tasks()?;
        stored.sort_unstable_by_key(|s| (s.project_id, s.task_id));
        let mut stored_leases: Vec<(Id, Id, Id, Id, i64)> = self
            .store
            .active_assignments()?
            .iter()
            .map(|a| (a.project_id, a.task_id, a.id, a.expert_id, a.expires_at))
            .collect();
        stored_leases.sort_unstable();
        let (mut indexed, leases) = self.queue.contents();
        indexed.sort_unstable_by_key(|s| (s.project_id, s.task_id));
        let mut indexed_leases: Vec<(Id, Id, Id, Id, i64)> = leases
            .iter()
            .map(|(p, t, l)| (*p, *t, l.assignment_id, l.expert_id, l.expires_at))
            .collect();
        indexed_leases.sort_unstable();
        let mut out = Vec::new();
        if stored != indexed {
            out.push(format!(
                "open tasks differ: store {stored:?}, index {indexed:?}"
            ));
        }
        if stored_leases != indexed_leases {
            out.push(format!(
                "leases differ: store {stored_leases:?}, index {indexed_leases:?}"
            ));
        }
        Ok(out)
    }

    /// Rescans the plugin folders (after a file change).
    pub fn rescan_plugins(&self) {
        let plugins = &self.config.plugins;
        crate::scripting::watch::rescan_plugins(
            &self.registry,
            &[
                (PluginKind::Rubric, plugins.rubrics.clone()),
                (PluginKind::Router, plugins.plugins.clone()),
            ],
        );
    }

    /// Ends the core cleanly: pending submissions are committed and flushed, and the hand-out
    /// index is written as a snapshot so the next start need not scan.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.committer.stop();
        if let Err(e) = self.store.set_alive_at(crate::now_ms()) {
            tracing::warn!(error = %e, "cannot note the stop time");
        }
        // Everything written so far goes into the chain; its head is logged to be kept.
        match self
            .store
            .seal_audit(crate::now_ms() + 1)
            .and_then(|_| self.store.audit_head())
        {
            Ok((seq, hash)) => tracing::info!(seq, hash = %hash, "audit chain head"),
            Err(e) => tracing::warn!(error = %e, "cannot seal the audit log"),
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
            return;
        }
        startup::save_snapshot(self);
    }
}
