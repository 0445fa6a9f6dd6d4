use actix_web::{web, HttpResponse};
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::State;
use crate::auth::Caller;
use crate::domain::AuditAction;
use crate::domain::Id;
use crate::error::{AppError, AppResult};
use crate::services::projects;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    format: Option<String>,
}

/// `GET /projects/{id}/export?format=jsonl`: every submission, streamed (leads and admins).
pub async fn export(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    q: web::Query<ExportQuery>,
) -> AppResult<HttpResponse> {
    let (project, access) = projects::access(&state.core, &caller.0, id.into_inner()).await?;
    if !access.can_oversee() {
        return Err(AppError::Forbidden(
            "only leads and admins export a project",
        ));
    }
    let name = q.format.clone().unwrap_or_else(|| "jsonl".to_owned());
    let format = crate::export::Format::parse(&name)?;
    if format != crate::export::Format::Jsonl {
        crate::export::check(&state, &project, format)?;
    }
    let logged = name.clone();
    let st = state.get_ref().clone();
    let actor = caller.0.id;
    let pid = project.id;
    crate::services::blocking(move || {
        st.audit(
            Some(actor),
            AuditAction::Export,
            format!("project:{pid}"),
            serde_json::json!({"format": logged}),
        );
        Ok(())
    })
    .await?;
    let rx = crate::export::start(state.get_ref().clone(), project.clone(), format);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"project-{}-{name}.jsonl\"",
                project.id
            ),
        ))
        .streaming(ReceiverStream::new(rx)))
}
