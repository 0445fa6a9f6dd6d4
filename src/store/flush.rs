//! Group commit. Writers that need durability call [`GroupFlusher::wait`] after their write has
//! committed; one dedicated thread runs `flush()` and wakes every writer whose commit the flush
//! covered. Many writers share one flush, and sled's `flush_async` is never called concurrently
//! (it deadlocks with many callers, sled issue 1308).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Progress of the flusher: every ticket at or below `done` is durable, unless `failed` says the
/// flush that should have covered it failed.
#[derive(Debug, Clone, Default)]
struct Progress {
    done: u64,
    failed: Option<(u64, String)>,
}

/// After a flush that several writers shared, the next one waits this long for more writers to
/// join: fewer flushes (each seals and syncs a log buffer) for half a millisecond of latency
/// (+1–7 % loops/s at 32 experts, within this machine's noise). A lone writer never waits.
const GATHER: Duration = Duration::from_micros(500);

pub struct GroupFlusher {
    requested: Arc<(Mutex<u64>, Condvar)>,
    progress: watch::Receiver<Progress>,
    /// The same progress for threads that wait without a runtime ([`GroupFlusher::wait_blocking`]).
    settled: Arc<(Mutex<Progress>, Condvar)>,
    flushes: Arc<AtomicU64>,
}

impl GroupFlusher {
    /// Starts the flusher thread; `flush` is the store's own flush.
    pub fn start(flush: impl Fn() -> Result<(), String> + Send + 'static) -> std::io::Result<Self> {
        let requested = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (tx, progress) = watch::channel(Progress::default());
        let shared = requested.clone();
        let flushes = Arc::new(AtomicU64::new(0));
        let counted = flushes.clone();
        let settled = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let settled_writer = settled.clone();
        std::thread::Builder::new()
            .name("assay-flush".into())
            .spawn(move || {
                let mut done = 0u64;
                let mut last_was_shared = false;
                loop {
                    let (lock, cvar) = &*shared;
                    {
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
                    let Ok(target) = lock.lock().map(|guard| *guard) else {
                        return;
                    };
                    last_was_shared = target - done > 1;
                    // Every ticket up to `target` was taken after its write committed, so this one
                    // flush makes all of them durable.
                    let result = flush();
                    counted.fetch_add(1, Ordering::Relaxed);
                    done = target;
                    let progress = Progress {
                        done,
                        failed: result.err().map(|e| (target, e)),
                    };
                    {
                        let (lock, cvar) = &*settled_writer;
                        if let Ok(mut p) = lock.lock() {
                            *p = progress.clone();
                        }
                        cvar.notify_all();
                    }
                    let stop = tx.send(progress).is_err();
                    if stop {
                        return;
                    }
                }
            })?;
        Ok(Self {
            requested,
            progress,
            settled,
            flushes,
        })
    }

    /// The error of the latest flush, if it failed (storage is failing now).
    pub fn last_failure(&self) -> Option<String> {
        self.progress
            .borrow()
            .failed
            .as_ref()
            .map(|(_, e)| e.clone())
    }

    /// Flushes run, and writes they made durable (each `wait` is one): their ratio is how well
    /// writers share flushes.
    pub fn counts(&self) -> (u64, u64) {
        let waits = self.requested.0.lock().map(|g| *g).unwrap_or(0);
        (self.flushes.load(Ordering::Relaxed), waits)
    }

    /// Asks for a flush covering everything written so far; returns its ticket.
    fn request(&self) -> Result<u64, String> {
        let (lock, cvar) = &*self.requested;
        let mut guard = lock
            .lock()
            .map_err(|_| "flusher lock poisoned".to_owned())?;
        *guard += 1;
        cvar.notify_one();
        Ok(*guard)
    }

    /// [`GroupFlusher::wait`] for a plain thread (the submit committer).
    pub fn wait_blocking(&self) -> Result<(), String> {
        let ticket = self.request()?;
        let (lock, cvar) = &*self.settled;
        let mut progress = lock
            .lock()
            .map_err(|_| "flusher lock poisoned".to_owned())?;
        while progress.done < ticket {
            progress = cvar
                .wait(progress)
                .map_err(|_| "flusher lock poisoned".to_owned())?;
        }
        match &progress.failed {
            Some((target, e)) if *target >= ticket => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn wait(&self) -> Result<(), String> {
        let ticket = self.request()?;
        let mut rx = self.progress.clone();
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
        let flusher = GroupFlusher::start(|| Err("disk gone".to_owned())).unwrap();
        assert_eq!(flusher.wait().await, Err("disk gone".to_owned()));
    }
}
