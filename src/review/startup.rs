//! Start-up: the hand-out index is loaded in the background, so the server answers at once and
//! whatever needs the index waits for it. It comes from the snapshot a clean stop wrote when
//! that snapshot matches the store (see `snapshot.rs`), and from a scan of the store otherwise.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::snapshot::{self, Snapshot};
use super::ReviewCore;
use crate::domain::{Assignment, Id};
use crate::queue::{Built, Lease, Queue};
use crate::store::{Store, StoreError};

pub fn snapshot_path(data: &Path) -> PathBuf {
    data.join("queue.snapshot")
}

/// A snapshot read and built into an index, waiting for the store's word.
pub struct BuiltSnapshot {
    mark: u64,
    built: Built,
    open: usize,
    leases: usize,
}

/// Starts reading the snapshot file and building the index from it, while the store opens
/// (which takes about as long).
pub fn read_snapshot(data: &Path) -> std::io::Result<JoinHandle<Result<BuiltSnapshot, String>>> {
    let path = snapshot_path(data);
    std::thread::Builder::new()
        .name("assay-snapshot".into())
        .spawn(move || {
            if !path.exists() {
                return Err("there is none".into());
            }
            let read = snapshot::read(&path);
            // Whatever it held, it is used at most once: the mark it matched is consumed now.
            let _ = std::fs::remove_file(&path);
            let Snapshot { mark, open, leases } = read?;
            let (open_count, lease_count) = (open.len(), leases.len());
            Ok(BuiltSnapshot {
                mark,
                built: Built::new(open, leases),
                open: open_count,
                leases: lease_count,
            })
        })
}

/// Fills the index on a thread of its own: from the snapshot when its mark is the one the
/// store held (`mark`), else by a scan. The store is unusable if this fails (or panics), and
/// requests would wait for the index forever, so the process stops, as it would had opening
/// the store failed.
pub fn spawn_load(
    core: &Arc<ReviewCore>,
    opened: std::time::Instant,
    mark: Option<u64>,
    snapshot: JoinHandle<Result<BuiltSnapshot, String>>,
    resumed: Vec<Assignment>,
) -> std::io::Result<()> {
    let (store, queue, metrics) = (core.store.clone(), core.queue.clone(), core.metrics.clone());
    std::thread::Builder::new()
        .name("assay-queue-load".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let started = std::time::Instant::now();
                let read = snapshot
                    .join()
                    .unwrap_or_else(|_| Err("reading it panicked".into()));
                let loaded = match (read, mark) {
                    (Ok(snap), Some(mark)) if snap.mark == mark => {
                        let (open, leases) = (snap.open, snap.leases);
                        queue.install(snap.built);
                        metrics.queue_from_snapshot.store(1, Ordering::Relaxed);
                        tracing::info!(
                            open_tasks = open,
                            active_leases = leases,
                            ms = started.elapsed().as_millis() as u64,
                            "queue loaded from the snapshot of the last clean stop"
                        );
                        Ok(())
                    }
                    (read, _) => {
                        let why = match read {
                            Ok(_) => "it does not match the store (not written by the last stop)".into(),
                            Err(e) => e,
                        };
                        tracing::info!(reason = %why, "no usable queue snapshot; scanning the store");
                        scan(&*store, &queue)
                    }
                };
                // Leases the downtime extended: a snapshot holds their old expiry.
                for a in &resumed {
                    Queue::lock(&queue.project(a.project_id)).add_lease(a.task_id, Lease::from(a));
                }
                // From the start of the core, as the snapshot is built while the store opens.
                let ms = opened.elapsed().as_millis() as u64;
                metrics.queue_load_ms.store(ms, Ordering::Relaxed);
                loaded
            }));
            let message = match outcome {
                Ok(Ok(())) => {
                    crate::memory::give_back();
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the loading thread panicked".to_owned(),
            };
            tracing::error!(error = %message, "cannot load the queue");
            eprintln!("error: cannot load the queue: {message}");
            std::process::exit(1);
        })
        .map(drop)
}

fn scan(store: &dyn Store, queue: &Queue) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let open = store.open_tasks()?;
    let active = store.active_assignments()?;
    let (open_count, active_count) = (open.len(), active.len());
    let read_ms = started.elapsed().as_millis() as u64;
    queue.load(open, active);
    tracing::info!(
        open_tasks = open_count,
        active_leases = active_count,
        read_ms,
        ms = started.elapsed().as_millis() as u64,
        "queue loaded by a scan"
    );
    Ok(())
}

/// Writes the index as a snapshot and marks the store with it; the last thing a clean stop
/// does. Nothing may change the store afterwards.
pub fn save_snapshot(core: &ReviewCore) {
    if !core.queue.is_loaded() {
        return; // stopped before the index was whole: the next start scans
    }
    let started = std::time::Instant::now();
    let (open, leases) = core.queue.contents();
    let snap = Snapshot {
        mark: rand::random(),
        open,
        leases,
    };
    let path = snapshot_path(&core.config.storage.data);
    let saved = snapshot::write(&path, &snap)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            core.store
                .set_snapshot_mark(snap.mark)
                .map_err(|e| e.to_string())
        });
    match saved {
        Ok(()) => tracing::info!(
            open_tasks = snap.open.len(),
            ms = started.elapsed().as_millis() as u64,
            "queue snapshot written"
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(error = %e, "could not write the queue snapshot; the next start scans");
        }
    }
}

/// Leases do not run out while the server is down: every lease still live when it was last
/// known up (`alive_at`) gets the downtime back, up to one lease length of its project. Runs
/// before the hand-out index loads; returns the leases it extended, for the index to follow
/// (a snapshot holds their old expiry).
pub fn resume_leases(store: &dyn Store) -> Result<Vec<Assignment>, String> {
    let now = crate::now_ms();
    let Some(alive_at) = store.alive_at().map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    let downtime = now - alive_at;
    if downtime <= 0 {
        return Ok(Vec::new());
    }
    let lease_ms: std::collections::HashMap<Id, i64> = store
        .projects()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| (p.id, p.lease_seconds as i64 * 1000))
        .collect();
    let mut extended = Vec::new();
    for mut a in store.active_assignments().map_err(|e| e.to_string())? {
        if a.expires_at <= alive_at {
            continue; // it had run out before the server went down
        }
        let cap = lease_ms.get(&a.project_id).copied().unwrap_or(0);
        a.expires_at += downtime.min(cap);
        store.put_assignment(&a).map_err(|e| e.to_string())?;
        extended.push(a);
    }
    if !extended.is_empty() {
        tracing::info!(
            leases = extended.len(),
            downtime_ms = downtime,
            "leases extended by the downtime"
        );
    }
    store.set_alive_at(now).map_err(|e| e.to_string())?;
    Ok(extended)
}
