//! The submit log's sync thread: a batch's record is synced while its sled writes run.
//!
//! A batch appends its record to the submit log before it writes sled, and asks this thread to
//! fdatasync the log at once; the committer then writes the batch to sled and mirrors it into
//! the index, and waits for the sync only before it answers. A lone submission's answer then
//! waits for the longer of the two, not for both one after the other.
//!
//! Batches are numbered (the log's sequence numbers), and a sync covers every record appended
//! before it began: [`LogSync::request`] asks for the log to be durable up to a number,
//! [`LogSync::wait`] waits until it is. A failed sync is remembered: the log can no longer vouch
//! for what it holds (the kernel may have dropped the pages it failed to write), so the store
//! flushes sled instead until the log is next emptied ([`LogSync::reset`]).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::store::{StoreError, StoreResult};

/// How long a waiter looks for its sync to finish before it sleeps: about one fdatasync on a
/// fast disk. Under light load the sync is nearly done when the batch's writes end, and a
/// sleeping waiter would add a wake-up (tens of microseconds on a virtual machine) to the answer.
const SPIN: Duration = Duration::from_micros(300);

#[derive(Default)]
struct State {
    /// The highest batch number a sync was asked for.
    requested: u64,
    /// Every batch up to this one is durable.
    synced: u64,
    /// A sync failed; batches up to this number (and not synced before it) failed with it.
    failed: Option<(u64, String)>,
    stop: bool,
}

struct Shared {
    file: File,
    state: Mutex<State>,
    /// Wakes the sync thread.
    asked: Condvar,
    /// Wakes the waiters.
    done: Condvar,
    /// `State::synced`, for waiters that look without the lock.
    synced: AtomicU64,
}

pub(super) struct LogSync {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSync {
    /// Starts the thread; `file` is a handle of the log's file, `synced` the highest batch
    /// number already durable.
    pub fn start(file: File, synced: u64) -> StoreResult<Self> {
        let shared = Arc::new(Shared {
            file,
            state: Mutex::new(State {
                requested: synced,
                synced,
                ..State::default()
            }),
            asked: Condvar::new(),
            done: Condvar::new(),
            synced: AtomicU64::new(synced),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("assay-log-sync".into())
            .spawn(move || s.run())
            .map_err(|e| StoreError::Backend(format!("submit log sync thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for every record up to batch `seq` to be made durable; returns at once.
    pub fn request(&self, seq: u64) {
        self.shared.ask(&mut self.shared.state.lock(), seq);
    }

    /// Waits until batch `seq` is durable (asking for it if no one has).
    pub fn wait(&self, seq: u64) -> StoreResult<()> {
        let shared = &*self.shared;
        let looking = Instant::now();
        while shared.synced.load(Ordering::Acquire) < seq && looking.elapsed() < SPIN {
            std::thread::yield_now();
        }
        let mut state = shared.state.lock();
        shared.ask(&mut state, seq);
        loop {
            match &state.failed {
                Some((upto, e)) if seq <= *upto => {
                    return Err(StoreError::Backend(format!("submit log sync: {e}")));
                }
                _ if state.synced >= seq => return Ok(()),
                _ => shared.done.wait(&mut state),
            }
        }
    }

    /// A sync failed since the last [`LogSync::reset`].
    pub fn failed(&self) -> bool {
        self.shared.state.lock().failed.is_some()
    }

    /// Every batch up to `seq` was made durable another way (sled was flushed before the log
    /// was emptied): they count as synced, and an earlier failure is forgotten.
    pub fn reset(&self, seq: u64) {
        let mut state = self.shared.state.lock();
        state.failed = None;
        state.requested = state.requested.max(seq);
        state.synced = state.synced.max(seq);
        self.shared.synced.store(state.synced, Ordering::Release);
        self.shared.done.notify_all();
    }
}

impl Shared {
    /// Asks the thread for a sync up to `seq` unless one was already asked for.
    fn ask(&self, state: &mut State, seq: u64) {
        if seq > state.requested {
            state.requested = seq;
            self.asked.notify_one();
        }
    }

    fn run(&self) {
        let mut state = self.state.lock();
        loop {
            while state.requested <= state.synced && !state.stop {
                self.asked.wait(&mut state);
            }
            if state.requested <= state.synced {
                return; // stopped, nothing left to sync
            }
            // Every record up to `target` was appended before it was asked for.
            let target = state.requested;
            drop(state);
            let result = self.file.sync_data();
            state = self.state.lock();
            match result {
                Ok(()) => {
                    state.synced = state.synced.max(target);
                    self.synced.store(state.synced, Ordering::Release);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not sync the submit log");
                    // Nothing up to `target` counts as durable through the log any more.
                    state.failed = Some((target, e.to_string()));
                    state.synced = state.synced.max(target);
                }
            }
            self.done.notify_all();
        }
    }
}

impl Drop for LogSync {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.asked.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_once_its_batch_is_synced_and_later_batches_are_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("log")).unwrap();
        let sync = LogSync::start(file, 3).unwrap();
        // Already durable: no sync needed.
        sync.wait(2).unwrap();
        sync.request(4);
        sync.wait(4).unwrap();
        assert!(
            sync.shared.synced.load(Ordering::Acquire) >= 4,
            "returned before the sync"
        );
        // Never asked for: the wait asks.
        sync.wait(6).unwrap();
        assert!(
            sync.shared.synced.load(Ordering::Acquire) >= 6,
            "returned before the sync"
        );
        assert!(!sync.failed());
        sync.reset(9);
        sync.wait(9).unwrap();
    }

    /// A failed sync fails the batches it was to cover and is remembered until a reset; the
    /// batches before it stay durable.
    #[test]
    fn a_failed_sync_fails_its_batches_until_the_log_is_reset() {
        // fdatasync of a socket fails (EINVAL), as a sync of a failing disk would.
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(socket));
        let sync = LogSync::start(file, 2).unwrap();
        sync.wait(2).unwrap();
        let failed = sync.wait(3).unwrap_err();
        assert!(failed.to_string().contains("submit log sync"), "{failed}");
        assert!(sync.failed());
        sync.request(4);
        assert!(sync.wait(3).is_err(), "still failed for the same batch");
        // Sled was flushed and the log emptied: everything up to 5 is durable that way.
        sync.reset(5);
        assert!(!sync.failed());
        sync.wait(5).unwrap();
    }
}
