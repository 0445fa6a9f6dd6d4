use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use super::State;
use crate::auth::Caller;
use crate::domain::AuditAction;
use crate::domain::Id;
use crate::error::{AppError, AppResult};
use crate::services::projects;
use crate::web::error::error_body;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    #[schemars(extend("enum" = ["jsonl", "records", "dpo", "sft"]))]
    format: Option<String>,
    /// By QA verdict: accepted, rejected, pending, all; everything but rejected by default.
    #[schemars(extend("enum" = ["accepted", "rejected", "pending", "all"]))]
    status: Option<String>,
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
    let include = crate::export::Include::parse(q.status.as_deref())?;
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
            serde_json::json!({"format": logged, "status": q.status}),
        );
        Ok(())
    })
    .await?;
    let mut rx = crate::export::start(state.get_ref().clone(), project.clone(), format, include);
    // A failure before the first chunk is an ordinary error response; one after it ends the
    // body with a trailer record `{"error": {...}}`, so a cut export never looks complete.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => return Err(e),
        None => None,
    };
    crate::metrics::Metrics::count(&state.metrics.exports);
    let rest = ReceiverStream::new(rx).map(|item| {
        Ok::<_, actix_web::Error>(match item {
            Ok(chunk) => chunk,
            Err(e) => {
                let mut line = serde_json::to_vec(&serde_json::json!({ "error": error_body(&e) }))
                    .unwrap_or_default();
                line.push(b'\n');
                bytes::Bytes::from(line)
            }
        })
    });
    let body = futures_util::stream::iter(first.map(Ok)).chain(rest);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((
            "Content-Disposition",
            format!(
                "attachment; filename=\"project-{}-{name}.jsonl\"",
                project.id
            ),
        ))
        .streaming(body))
}
