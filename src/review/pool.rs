//! The pools of threads for blocking work, one per kind so no kind waits behind another:
//!
//! - `blocking`: storage work (sled reads and writes that run no script);
//! - `scripted`: work that runs Rhai (hand-out, submit checks, imports, reroutes). A project
//!   holds at most `script_threads_per_project` of these at once (its `ProjectGates` permit),
//!   so a rubric that always runs into its time limit slows its own project only;
//! - `hashing`: argon2 (logins, password changes), so anonymous logins cost no one else time.
//!
//! Each pool is a fixed set of threads taking jobs from one queue. Handing a job to a thread is
//! most of what a short job costs (a loop's next and submit are two such hand-offs each way), and
//! waking a sleeping thread is the dear part of it, so a thread that finishes a job looks for the
//! next one for a moment before it sleeps. Like the async runtime itself they are executors, set
//! once at start-up, not application state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::domain::Id;
use crate::error::{AppError, AppResult};

type Job = Box<dyn FnOnce() + Send>;

/// How long a thread that ran out of jobs keeps looking before it sleeps.
const LINGER: Duration = Duration::from_micros(50);

/// A fixed set of threads and their job queue.
struct Workers {
    queue: parking_lot::Mutex<VecDeque<Job>>,
    wake: parking_lot::Condvar,
    /// Threads waiting on `wake` (changed under the queue's lock).
    sleeping: AtomicUsize,
}

impl Workers {
    fn start(name: &str, threads: usize) -> std::io::Result<Arc<Self>> {
        let workers = Arc::new(Self {
            queue: parking_lot::Mutex::new(VecDeque::new()),
            wake: parking_lot::Condvar::new(),
            sleeping: AtomicUsize::new(0),
        });
        for i in 0..threads.max(1) {
            let w = workers.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = w.next_job();
                    job();
                })?;
        }
        Ok(workers)
    }

    fn run(&self, job: Job) {
        self.queue.lock().push_back(job);
        // A sleeper counted itself under the lock the job was pushed under: none is missed.
        if self.sleeping.load(Ordering::Acquire) > 0 {
            self.wake.notify_one();
        }
    }

    fn next_job(&self) -> Job {
        let lingering = Instant::now();
        while lingering.elapsed() < LINGER {
            if let Some(job) = self.queue.lock().pop_front() {
                return job;
            }
            std::thread::yield_now();
        }
        let mut queue = self.queue.lock();
        loop {
            if let Some(job) = queue.pop_front() {
                return job;
            }
            self.sleeping.fetch_add(1, Ordering::AcqRel);
            self.wake.wait(&mut queue);
            self.sleeping.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Pools {
    storage: Arc<Workers>,
    scripts: Arc<Workers>,
    hashing: Arc<Workers>,
}

static POOLS: OnceLock<Pools> = OnceLock::new();

/// Sizes the pools; call once before serving. Later calls have no effect.
pub fn init(config: &ServerConfig) -> std::io::Result<()> {
    if POOLS.get().is_none() {
        let pools = Pools {
            storage: Workers::start("assay-blocking", config.blocking_threads)?,
            scripts: Workers::start("assay-scripts", config.script_threads)?,
            hashing: Workers::start("assay-hashing", config.hashing_threads)?,
        };
        let _ = POOLS.set(pools);
    }
    Ok(())
}

async fn run_on<R, F>(pick: fn(&Pools) -> &Workers, f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    // The caller's tracing span goes along.
    let span = tracing::Span::current();
    let task = move || span.in_scope(f);
    let Some(pools) = POOLS.get() else {
        return tokio::task::spawn_blocking(task)
            .await
            .map_err(|e| AppError::internal(format!("blocking task failed: {e}")))?;
    };
    let (done, result) = tokio::sync::oneshot::channel();
    pick(pools).run(Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
        let _ = done.send(outcome);
    }));
    match result.await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(AppError::internal("blocking task panicked")),
        Err(_) => Err(AppError::internal("blocking task was dropped")),
    }
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
