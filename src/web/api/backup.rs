//! `GET /admin/backup` (admins): a consistent backup of the whole database, streamed. The copy
//! is taken first (to a spool file, writers paused only for that), then sent at the client's
//! pace; its size and SHA-256 are in the headers, and the digest also ends the file.

use actix_web::HttpResponse;

use super::State;
use crate::auth::Admin;
use crate::error::AppResult;

pub async fn backup(state: State, admin: Admin) -> AppResult<HttpResponse> {
    let (file, summary) = state.core.backup(admin.0.id).await?;
    let body =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 16);
    let name = format!("assay-backup-{}.bin", summary.header.created_at);
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header(("X-Assay-Backup-Sha256", summary.sha256.clone()))
        .insert_header((
            "X-Assay-Schema-Version",
            summary.header.schema_version.to_string(),
        ))
        .no_chunking(summary.bytes)
        .streaming(body))
}
