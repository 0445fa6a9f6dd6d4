//! The plugin registry's archive, over the store and the audit log.

use std::sync::{mpsc, Arc, Mutex};

use crate::domain::{AuditAction, AuditEvent, PluginKind, PluginVersion};
use crate::scripting::registry::VersionArchive;
use crate::scripting::ScriptError;
use crate::store::Store;

pub struct StoreArchive {
    pub store: Arc<dyn Store>,
    /// Plugins whose new version went live (kind, name, version), for the core to retry the
    /// tasks their older versions quarantined.
    pub went_live: Mutex<mpsc::Sender<(PluginKind, String, String)>>,
}

impl VersionArchive for StoreArchive {
    fn record(&self, version: &PluginVersion) -> Result<(), String> {
        self.store
            .put_plugin_version(version)
            .and_then(|_| {
                self.store
                    .set_served_plugin(version.kind, &version.name, &version.hash)
            })
            .and_then(|_| self.store.flush())
            .map_err(|e| e.to_string())
    }

    fn version(&self, hash: &str) -> Result<Option<PluginVersion>, String> {
        self.store.plugin_version(hash).map_err(|e| e.to_string())
    }

    fn last_served(&self, kind: PluginKind, name: &str) -> Result<Option<PluginVersion>, String> {
        match self.store.served_plugin(kind, name) {
            Ok(Some(hash)) => self.version(&hash),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn versions(&self, kind: PluginKind, name: &str) -> Result<Vec<PluginVersion>, String> {
        self.store
            .plugin_versions(kind, name)
            .map_err(|e| e.to_string())
    }

    fn loaded(&self, kind: PluginKind, name: &str, outcome: Result<&str, (&str, &ScriptError)>) {
        if let Ok(hash) = &outcome {
            if let Ok(live) = self.went_live.lock() {
                let _ = live.send((kind, name.to_owned(), (*hash).to_owned()));
            }
        }
        let (action, detail) = match outcome {
            Ok(hash) => (
                AuditAction::PluginLoad,
                serde_json::json!({"version": hash}),
            ),
            Err((hash, e)) => (
                AuditAction::PluginLoadFailed,
                serde_json::json!({"attempted": hash, "error": e.to_string()}),
            ),
        };
        let event = AuditEvent {
            at: crate::now_ms(),
            actor: None,
            action,
            object: format!("{}:{name}", kind.as_str()),
            detail,
        };
        if let Err(e) = self.store.append_audit(&event) {
            tracing::error!(error = %e, "could not audit a plugin load");
        }
    }
}
