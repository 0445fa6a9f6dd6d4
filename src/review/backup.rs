//! Online backup: a consistent copy of the store, taken while the server serves.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use super::{blocking, ReviewCore};
use crate::domain::{AuditAction, Id};
use crate::error::{AppError, AppResult};
use crate::store::BackupSummary;

impl ReviewCore {
    /// Writes a backup to a file in the spool folder that only the returned handle reaches
    /// (nothing is left behind, whatever happens next), rewound for reading. Writers wait
    /// for the copy; readers do not.
    pub async fn backup(self: &Arc<Self>, actor: Id) -> AppResult<(std::fs::File, BackupSummary)> {
        let core = self.clone();
        blocking(move || {
            let spool = core.config.storage.data.join("spool");
            std::fs::create_dir_all(&spool).map_err(AppError::storage)?;
            let path = spool.join(format!("backup-{:016x}.part", rand::random::<u64>()));
            let mut file = std::fs::OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(AppError::storage)?;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot unlink the backup spool file");
            }
            let started = std::time::Instant::now();
            let summary = core.store.backup(&mut file)?;
            file.seek(SeekFrom::Start(0)).map_err(AppError::storage)?;
            tracing::info!(
                bytes = summary.bytes,
                entries = summary.entries,
                ms = started.elapsed().as_millis() as u64,
                "backup taken"
            );
            core.audit(
                Some(actor),
                AuditAction::Backup,
                "backup".into(),
                serde_json::json!({
                    "bytes": summary.bytes, "entries": summary.entries, "sha256": summary.sha256,
                    "schema_version": summary.header.schema_version,
                }),
            );
            Ok((file, summary))
        })
        .await
    }
}
