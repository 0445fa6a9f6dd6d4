//! Hot reload. A thread watches the plugin and template folders; after a burst of file-system
//! events has been quiet for the debounce time it calls `on_change`, which rescans the folders so
//! the registry (and the page templates) recompile whatever changed. Rescanning (rather than trusting each event's path) copes with in-place writes,
//! write-then-rename saves, editor temp files and events that arrive before a slow write ends.
//! Where a file system sends no events, `plugins.poll_ms` turns on polling instead.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{PluginKind, Registry};

pub struct WatchConfig {
    pub folders: Vec<PathBuf>,
    pub debounce: Duration,
    /// Poll on this interval instead of waiting for events.
    pub poll: Option<Duration>,
    /// Called after every quiet spell (or poll tick); it rescans whatever it owns.
    pub on_change: Box<dyn Fn() + Send>,
}

/// Rescans plugin folders, logging what was reloaded.
pub fn rescan_plugins(registry: &Registry, folders: &[(PluginKind, PathBuf)]) {
    for (kind, dir) in folders {
        let report = registry.rescan(*kind, dir);
        for name in &report.loaded {
            tracing::info!(kind = kind.as_str(), plugin = %name, "plugin reloaded");
        }
    }
}

/// Starts the watcher thread. It runs for the life of the process.
pub fn spawn(config: WatchConfig) -> std::io::Result<()> {
    std::thread::Builder::new().name("assay-watch".into()).spawn(move || {
        let on_change = &config.on_change;
        if let Some(every) = config.poll {
            poll(on_change, every);
            return;
        }
        let (tx, rx) = mpsc::channel();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "file-system events unavailable; polling every second");
                return poll(on_change, Duration::from_secs(1));
            }
        };
        for dir in &config.folders {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder");
            }
        }
        // Wait for an event, then for a quiet spell, then rescan.
        while rx.recv().is_ok() {
            while rx.recv_timeout(config.debounce).is_ok() {}
            on_change();
        }
    })?;
    Ok(())
}

fn poll(on_change: &dyn Fn(), every: Duration) {
    loop {
        std::thread::sleep(every);
        on_change();
    }
}
