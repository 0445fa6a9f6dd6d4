//! The one pool of threads for blocking work (sled, Rhai, argon2), with admission so no kind
//! of work waits behind another:
//!
//! - storage work (sled reads and writes that run no script) needs no permit;
//! - work that runs Rhai (hand-out, submit checks, imports, reroutes) holds one of
//!   `script_threads` permits, and its project's permit (`ProjectGates`: at most
//!   `script_threads_per_project` at once), so a rubric that always runs into its time limit
//!   slows its own project only;
//! - argon2 (logins, password changes) holds one of `hashing_threads` permits, so anonymous
//!   logins cost no one else time.
//!
//! The pool has `blocking_threads + script_threads + hashing_threads` threads, so however many
//! scripts and hashes are running, `blocking_threads` threads are left for storage work. Waiting
//! for a permit holds no thread.
//!
//! The threads take jobs from one queue. Handing a job to a thread is most of what a short job
//! costs (a loop's next and submit are two such hand-offs each way), and waking a sleeping
//! thread is the dear part of it, so a thread that finishes a job looks for the next one for a
//! moment before it sleeps. Like the async runtime itself the pool is an executor, set once at
//! start-up, not application state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::domain::Id;
use crate::error::{AppError, AppResult};

type Job = Box<dyn FnOnce() + Send>;

/// How long a thread that ran out of jobs keeps looking before it sleeps.
const LINGER: Duration = Duration::from_micros(50);

/// How long one thread keeps looking when no other is working: under light load the next job
/// comes a client's round trip after the last one, and a thread still looking takes it without
/// the wake-up (on a virtual machine, an interrupt to another CPU: tens of microseconds). Only
/// one thread, and only while the pool is idle, so that under load no looker takes CPU from
/// the work.
const LONG_LINGER: Duration = Duration::from_micros(300);

/// A fixed set of threads and their job queue.
struct Workers {
    queue: parking_lot::Mutex<VecDeque<Job>>,
    wake: parking_lot::Condvar,
    /// Threads waiting on `wake` (changed under the queue's lock).
    sleeping: AtomicUsize,
    /// Threads looking for their next job before they sleep: raised before a thread's first
    /// look at the queue, lowered under the queue's lock as it takes a job or gives up.
    lingering: AtomicUsize,
    /// A thread is looking for [`LONG_LINGER`].
    long_lingerer: AtomicBool,
    /// The pool's size: a thread neither sleeping nor lingering is running a job.
    threads: usize,
}

impl Workers {
    fn start(name: &str, threads: usize) -> std::io::Result<Arc<Self>> {
        let workers = Arc::new(Self {
            queue: parking_lot::Mutex::new(VecDeque::new()),
            wake: parking_lot::Condvar::new(),
            sleeping: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            long_lingerer: AtomicBool::new(false),
            threads: threads.max(1),
        });
        for i in 0..workers.threads {
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
        let mut queue = self.queue.lock();
        queue.push_back(job);
        // Each lingering thread will look at the queue again and take one job; a sleeper is
        // woken only for the jobs beyond those (waking one is the dear part). A thread counts
        // itself as lingering before it looks and stops under this lock, and counts itself
        // asleep under it, so no job is left without a thread to take it.
        let wake = queue.len() > self.lingering.load(Ordering::Acquire)
            && self.sleeping.load(Ordering::Acquire) > 0;
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }

    /// No thread is running a job (each is asleep or looking for one).
    fn pool_idle(&self) -> bool {
        self.sleeping.load(Ordering::Acquire) + self.lingering.load(Ordering::Acquire)
            >= self.threads
    }

    fn next_job(&self) -> Job {
        self.lingering.fetch_add(1, Ordering::AcqRel);
        let lingering = Instant::now();
        let mut long = false;
        loop {
            let mut queue = self.queue.lock();
            let job = queue.pop_front();
            let looked = lingering.elapsed();
            if job.is_none() && !long && looked >= LINGER && self.pool_idle() {
                long = !self.long_lingerer.swap(true, Ordering::AcqRel);
            }
            if job.is_some() || looked >= if long { LONG_LINGER } else { LINGER } {
                if long {
                    self.long_lingerer.store(false, Ordering::Release);
                }
                // Stops lingering under the lock it takes its job (or gives up) under.
                self.lingering.fetch_sub(1, Ordering::AcqRel);
                if let Some(job) = job {
                    return job;
                }
                loop {
                    self.sleeping.fetch_add(1, Ordering::AcqRel);
                    self.wake.wait(&mut queue);
                    self.sleeping.fetch_sub(1, Ordering::AcqRel);
                    if let Some(job) = queue.pop_front() {
                        return job;
                    }
                }
            }
            drop(queue);
            std::thread::yield_now();
        }
    }
}

struct Pool {
    workers: Arc<Workers>,
    /// Permits for work that runs scripts.
    scripts: Semaphore,
    /// Permits for password hashing.
    hashing: Semaphore,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Sizes the pool; call once before serving. Later calls have no effect.
pub fn init(config: &ServerConfig) -> std::io::Result<()> {
    if POOL.get().is_none() {
        let scripts = config.script_threads.max(1);
        let hashing = config.hashing_threads.max(1);
        let threads = config.blocking_threads.max(1) + scripts + hashing;
        let pool = Pool {
            workers: Workers::start("assay-blocking", threads)?,
            scripts: Semaphore::new(scripts),
            hashing: Semaphore::new(hashing),
        };
        let _ = POOL.set(pool);
    }
    Ok(())
}

/// Which permit a job needs before it may take a thread.
#[derive(Clone, Copy)]
enum Admission {
    Storage,
    Script,
    Hashing,
}

/// Waits (holding no thread) for `admission`'s permit, then queues `job` with the caller's
/// tracing span; the permit is held until the job ends. A panic in the job is caught: whatever
/// the job was to send is dropped, so its caller learns that it failed.
async fn start<F>(admission: Admission, job: F) -> AppResult<()>
where
    F: FnOnce() + Send + 'static,
{
    let span = tracing::Span::current();
    let job = move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| span.in_scope(job)));
    };
    let Some(pool) = POOL.get() else {
        drop(tokio::task::spawn_blocking(job));
        return Ok(());
    };
    let permits = match admission {
        Admission::Storage => None,
        Admission::Script => Some(&pool.scripts),
        Admission::Hashing => Some(&pool.hashing),
    };
    let admitted = match permits {
        Some(permits) => Some(
            permits
                .acquire()
                .await
                .map_err(|_| AppError::internal("pool closed"))?,
        ),
        None => None,
    };
    pool.workers.run(Box::new(move || {
        let _admitted = admitted;
        job();
    }));
    Ok(())
}

/// Runs `f` on the pool and waits for its result.
async fn run_on<R, F>(admission: Admission, f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    start(admission, move || {
        let _ = done.send(f());
    })
    .await?;
    result
        .await
        .unwrap_or_else(|_| Err(AppError::internal("blocking task panicked")))
}

/// Starts work that may call scripts and answers through a channel of its own, so the caller
/// is woken once, by that answer, not also when the job ends. Returns once the job is queued;
/// the job holds the project's permit (and a script permit) until it ends.
pub async fn scripted_detached<F>(permit: OwnedSemaphorePermit, f: F) -> AppResult<()>
where
    F: FnOnce() + Send + 'static,
{
    start(Admission::Script, move || {
        let _project = permit;
        f();
    })
    .await
}

/// Runs storage work.
pub async fn blocking<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(Admission::Storage, f).await
}

/// Runs work that may call scripts; the caller holds its project's permit.
pub async fn scripted<R, F>(_permit: &OwnedSemaphorePermit, f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(Admission::Script, f).await
}

/// Runs password hashing.
pub async fn hashing<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    run_on(Admission::Hashing, f).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Jobs pushed while one thread lingers each get a thread: the first job waits for the
    /// second, which a pool that counted on the lingering thread for both would never run.
    #[test]
    fn jobs_beyond_the_lingering_threads_wake_a_sleeper() {
        let workers = Workers::start("test-pool", 2).expect("threads");
        for _ in 0..200 {
            // Both threads asleep, then one wakes for a quick job and lingers after it.
            std::thread::sleep(Duration::from_millis(1));
            let (quick_done, quick) = mpsc::channel::<()>();
            workers.run(Box::new(move || {
                let _ = quick_done.send(());
            }));
            quick
                .recv_timeout(Duration::from_secs(30))
                .expect("quick job");
            let (ran_second, wait_second) = mpsc::channel::<()>();
            let (done, finished) = mpsc::channel::<bool>();
            workers.run(Box::new(move || {
                let _ = done.send(wait_second.recv_timeout(Duration::from_secs(5)).is_ok());
            }));
            workers.run(Box::new(move || {
                let _ = ran_second.send(());
            }));
            assert_eq!(finished.recv_timeout(Duration::from_secs(30)), Ok(true));
        }
    }

    #[test]
    fn many_pushers_lose_no_job() {
        let workers = Workers::start("test-pool", 3).expect("threads");
        let (done, finished) = mpsc::channel::<()>();
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let workers = workers.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let done = done.clone();
                        workers.run(Box::new(move || {
                            let _ = done.send(());
                        }));
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().expect("pusher");
        }
        for _ in 0..8_000 {
            assert!(finished.recv_timeout(Duration::from_secs(30)).is_ok());
        }
    }
}
