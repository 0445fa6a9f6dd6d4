//! The pools of threads for blocking work, one per kind so no kind waits behind another:
//!
//! - `blocking`: storage work (sled reads and writes that run no script);
//! - `scripted`: work that runs Rhai (hand-out, submit checks, imports, reroutes). A project
//!   holds at most `script_threads_per_project` of these at once (its `ProjectGates` permit),
//!   so a rubric that always runs into its time limit slows its own project only;
//! - `hashing`: argon2 (logins, password changes), so anonymous logins cost no one else time.
//!
//! With a thread pool per HTTP worker (tokio's default) dozens of threads compete for two cores
//! and throughput drops by a fifth; a few hot threads and a queue do better. Like the tokio
//! runtime itself they are executors, set once at start-up, not application state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::domain::Id;
use crate::error::{AppError, AppResult};

struct Pools {
    storage: tokio::runtime::Runtime,
    scripts: tokio::runtime::Runtime,
    hashing: tokio::runtime::Runtime,
}

static POOLS: OnceLock<Pools> = OnceLock::new();

fn pool(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(threads.max(1))
        .thread_name(name)
        .build()
}

/// Sizes the pools; call once before serving. Later calls have no effect.
pub fn init(config: &ServerConfig) -> std::io::Result<()> {
    if POOLS.get().is_none() {
        let pools = Pools {
            storage: pool("assay-blocking", config.blocking_threads)?,
            scripts: pool("assay-scripts", config.script_threads)?,
            hashing: pool("assay-hashing", config.hashing_threads)?,
        };
        let _ = POOLS.set(pools);
    }
    Ok(())
}

async fn run_on<R, F>(pick: fn(&Pools) -> &tokio::runtime::Runtime, f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    // The caller's tracing span goes along.
    let span = tracing::Span::current();
    let task = move || span.in_scope(f);
    let handle = match POOLS.get() {
        Some(pools) => pick(pools).spawn_blocking(task),
        None => tokio::task::spawn_blocking(task),
    };
    handle
        .await
        .map_err(|e| AppError::internal(format!("blocking task failed: {e}")))?
}

/// Runs storage work on the storage pool.
pub async fn blocking<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(|p| &p.storage, f).await
}

/// Runs work that may call scripts on the script pool; the caller holds its project's permit.
pub async fn scripted<R, F>(_permit: &OwnedSemaphorePermit, f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(|p| &p.scripts, f).await
}

/// Runs password hashing on its own pool.
pub async fn hashing<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(|p| &p.hashing, f).await
}

/// One semaphore per project: how many script-pool threads it may hold at once.
pub struct ProjectGates {
    per_project: usize,
    gates: Mutex<HashMap<Id, Arc<Semaphore>>>,
}

impl ProjectGates {
    pub fn new(per_project: usize) -> Self {
        Self {
            per_project: per_project.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Waits (without holding a thread) until the project may run one more script-pool job.
    pub async fn enter(&self, project: Id) -> AppResult<OwnedSemaphorePermit> {
        let gate = {
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            gates
                .entry(project)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_project)))
                .clone()
        };
        gate.acquire_owned()
            .await
            .map_err(|_| AppError::internal("project gate closed"))
    }
}
