//! Group commit. Writers that need durability wait after their write has committed; one flush
//! covers every writer that asked before it began, so many writers share one flush. Flushes
//! never overlap (sled's `flush_async` deadlocks with many callers, sled issue 1308).
//!
//! Two ways to wait: [`GroupFlusher::wait`] (async) hands the flush to the flusher thread;
//! [`GroupFlusher::wait_blocking`] (a plain thread, the submit committer) runs the flush itself
//! when none is running, so a lone submission costs no hand-over to another thread and back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Duration;

use tokio::sync::watch;

/// Progress of the flushes: every ticket at or below `done` is durable, unless `failed` says
/// the flush that should have covered it failed.
#[derive(Debug, Clone, Default)]
struct Progress {
    done: u64,
    failed: Option<(u64, String)>,
}

/// After a flush that several writers shared, the flusher thread waits this long for more
/// writers to join: fewer flushes (each seals and syncs a log buffer) for half a millisecond of
/// latency (+1–7 % loops/s at 32 experts, within this machine's noise). A lone writer never waits.
const GATHER: Duration = Duration::from_micros(500);

type FlushFn = dyn Fn() -> Result<(), String> + Send + Sync;

struct Inner {
    flush: Box<FlushFn>,
    /// The last ticket handed out; the condvar wakes the flusher thread.
    requested: (Mutex<u64>, Condvar),
    /// Held while a flush runs: one at a time.
    running: Mutex<()>,
    /// Progress for plain threads, and the same for async waiters.
    settled: (Mutex<Progress>, Condvar),
    progress: watch::Sender<Progress>,
    flushes: AtomicU64,
}

const POISONED: &str = "flusher lock poisoned";

impl Inner {
    fn take_ticket(&self, wake_thread: bool) -> Result<u64, String> {
        let (lock, cvar) = &self.requested;
        let mut guard = lock.lock().map_err(|_| POISONED.to_owned())?;
        *guard += 1;
        if wake_thread {
            cvar.notify_one();
        }
        Ok(*guard)
    }

    fn done(&self) -> Result<u64, String> {
        let progress = self.settled.0.lock().map_err(|_| POISONED.to_owned())?;
        Ok(progress.done)
    }

    /// Runs one flush; the caller holds `running`. Every ticket up to the target read here was
    /// taken after its write committed, so this one flush makes all of them durable.
    fn flush_locked(&self) -> Result<(), String> {
        let target = *self.requested.0.lock().map_err(|_| POISONED.to_owned())?;
        if target <= self.done()? {
            return Ok(());
        }
        let result = (self.flush)();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let progress = Progress {
            done: target,
            failed: result.err().map(|e| (target, e)),
        };
        {
            let (lock, cvar) = &self.settled;
            let mut settled = lock.lock().map_err(|_| POISONED.to_owned())?;
            *settled = progress.clone();
            cvar.notify_all();
        }
        self.progress.send_replace(progress);
        Ok(())
    }

    /// The flusher thread: flushes whenever a ticket is beyond the last flush.
    fn run_thread(&self) {
        let mut last_was_shared = false;
        loop {
            let Ok(done) = self.done() else { return };
            {
                let (lock, cvar) = &self.requested;
                let Ok(mut guard) = lock.lock() else { return };
                while *guard <= done {
                    guard = match cvar.wait(guard) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
            }
            if last_was_shared {
                std::thread::sleep(GATHER);
            }
            let Ok(_running) = self.running.lock() else {
                return;
            };
            let Ok(before) = self.done() else { return };
            if self.flush_locked().is_err() {
                return;
            }
            let Ok(after) = self.done() else { return };
            last_was_shared = after - before > 1;
        }
    }
}

pub struct GroupFlusher {
    inner: Arc<Inner>,
}

impl GroupFlusher {
    /// Starts the flusher thread; `flush` is the store's own flush.
    pub fn start(
        flush: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (progress, _) = watch::channel(Progress::default());
        let inner = Arc::new(Inner {
            flush: Box::new(flush),
            requested: (Mutex::new(0), Condvar::new()),
            running: Mutex::new(()),
            settled: (Mutex::new(Progress::default()), Condvar::new()),
            progress,
            flushes: AtomicU64::new(0),
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("assay-flush".into())
            .spawn(move || thread.run_thread())?;
        Ok(Self { inner })
    }

    /// The error of the latest flush, if it failed (storage is failing now).
    pub fn last_failure(&self) -> Option<String> {
        self.inner
            .progress
            .borrow()
            .failed
            .as_ref()
            .map(|(_, e)| e.clone())
    }

    /// Flushes run, and writes they made durable (each wait is one): their ratio is how well
    /// writers share flushes.
    pub fn counts(&self) -> (u64, u64) {
        let waits = self.inner.requested.0.lock().map(|g| *g).unwrap_or(0);
        (self.inner.flushes.load(Ordering::Relaxed), waits)
    }

    /// [`GroupFlusher::wait`] for a plain thread: flushes here when no flush is running, else
    /// waits for the running one (and flushes again if that one began before this call).
    pub fn wait_blocking(&self) -> Result<(), String> {
        let inner = &*self.inner;
        let ticket = inner.take_ticket(false)?;
        loop {
            {
                let (lock, cvar) = &inner.settled;
                let progress = lock.lock().map_err(|_| POISONED.to_owned())?;
                if progress.done >= ticket {
                    return match &progress.failed {
                        Some((target, e)) if *target >= ticket => Err(e.clone()),
                        _ => Ok(()),
                    };
                }
                match inner.running.try_lock() {
                    Ok(running) => {
                        drop(progress);
                        inner.flush_locked()?;
                        drop(running);
                        continue;
                    }
                    Err(TryLockError::Poisoned(_)) => return Err(POISONED.to_owned()),
                    // A flush is running: its end is published under `settled`, which this
                    // thread holds until it waits, so the wake-up cannot be missed.
                    Err(TryLockError::WouldBlock) => {
                        drop(cvar.wait(progress).map_err(|_| POISONED.to_owned())?);
                    }
                }
            }
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn wait(&self) -> Result<(), String> {
        let ticket = self.inner.take_ticket(true)?;
        let mut rx = self.inner.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.done >= ticket)
            .await
            .map_err(|_| "the flusher stopped".to_owned())?
            .clone();
        match progress.failed {
            Some((target, e)) if target >= ticket => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_flushes() {
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let flusher = Arc::new(
            GroupFlusher::start(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                Ok(())
            })
            .unwrap(),
        );
        let mut handles = Vec::new();
        for _ in 0..64 {
            let f = flusher.clone();
            handles.push(tokio::spawn(async move { f.wait().await }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!(
            (1..64).contains(&n),
            "64 waiters should share flushes, got {n}"
        );
        assert_eq!(flusher.counts(), (n, 64));
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_waiters() {
        let flusher = Arc::new(GroupFlusher::start(|| Err("disk gone".to_owned())).unwrap());
        assert_eq!(flusher.wait().await, Err("disk gone".to_owned()));
        let f = flusher.clone();
        let blocking = std::thread::spawn(move || f.wait_blocking())
            .join()
            .unwrap();
        assert_eq!(blocking, Err("disk gone".to_owned()));
    }

    /// A plain thread that finds no flush running flushes itself; many plain and async waiters
    /// at once are all answered, sharing flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_waiters_flush_on_their_own_thread_and_share() {
        let ran_on = Arc::new(Mutex::new(Vec::<String>::new()));
        let flushes = Arc::new(AtomicU64::new(0));
        let (names, counter) = (ran_on.clone(), flushes.clone());
        let flusher = Arc::new(
            GroupFlusher::start(move || {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                names.lock().unwrap().push(name);
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(3));
                Ok(())
            })
            .unwrap(),
        );
        // Alone: flushed by the caller itself, not handed to the flusher thread.
        let f = flusher.clone();
        std::thread::Builder::new()
            .name("lone-writer".into())
            .spawn(move || f.wait_blocking())
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(*ran_on.lock().unwrap(), vec!["lone-writer".to_owned()]);

        // Many plain and async waiters at once: each covered, flushes shared.
        let before = flushes.load(Ordering::SeqCst);
        let mut threads = Vec::new();
        for i in 0..16 {
            let f = flusher.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{i}"))
                    .spawn(move || f.wait_blocking())
                    .unwrap(),
            );
        }
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let f = flusher.clone();
            tasks.push(tokio::spawn(async move { f.wait().await }));
        }
        for t in threads {
            t.join().unwrap().unwrap();
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let shared = flushes.load(Ordering::SeqCst) - before;
        assert!(
            (1..32).contains(&shared),
            "32 waiters took {shared} flushes"
        );
        assert_eq!(flusher.counts(), (before + shared, 33));
    }
}
