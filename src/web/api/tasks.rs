use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::State;
use crate::auth::{Admin, Caller};
use crate::domain::AuditAction;
use crate::domain::Id;
use crate::error::{AppError, AppResult};
use crate::services::{blocking, projects};

/// `POST /projects/{id}/tasks`: the body is the upload itself (JSON array, JSON Lines or a
/// Label Studio task list). It is spooled to disk while it arrives, then imported.
pub async fn import(
    state: State,
    admin: Admin,
    id: web::Path<Id>,
    mut body: web::Payload,
) -> AppResult<HttpResponse> {
    let (project, _) = projects::access(&state.core, &admin.0, id.into_inner()).await?;
    let limit = state.config.server.max_import_mb * 1024 * 1024;
    let spool_dir = state.config.storage.data.join("spool");
    let spool = blocking(move || {
        std::fs::create_dir_all(&spool_dir).map_err(AppError::storage)?;
        tempfile::NamedTempFile::new_in(&spool_dir).map_err(AppError::storage)
    })
    .await?;
    let (file, path) = spool.into_parts();
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| crate::web::body_deadline::body_error(&e))?;
        received += chunk.len() as u64;
        if received > limit {
            let limit = format!("{} MiB", state.config.server.max_import_mb);
            return Err(AppError::PayloadTooLarge(limit));
        }
        writer.write_all(&chunk).await.map_err(AppError::storage)?;
    }
    writer.flush().await.map_err(AppError::storage)?;
    state.ready().await;
    let st = state.clone();
    let actor = admin.0.id;
    let report = state
        .in_project(project.id, move || {
            let report = st.import_file(&project, &path, actor);
            drop(path); // removes the spool file
            report
        })
        .await?;
    state.durable().await?;
    Ok(HttpResponse::Created().json(report))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Page {
    after: Option<Id>,
    limit: Option<usize>,
}

/// Tasks of a project with their progress (leads and admins).
pub async fn list(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    page: web::Query<Page>,
) -> AppResult<HttpResponse> {
    let (project, access) = projects::access(&state.core, &caller.0, id.into_inner()).await?;
    if !access.can_oversee() {
        return Err(AppError::Forbidden(
            "only leads and admins list a project's tasks",
        ));
    }
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let after = page.after;
    let st = state.clone();
    let items = blocking(move || {
        let tasks = st.store().tasks_page(project.id, after, limit)?;
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            let status = st.store().task_status(t.id)?;
            out.push(serde_json::json!({"task": t, "status": status}));
        }
        Ok(out)
    })
    .await?;
    Ok(HttpResponse::Ok().json(items))
}

/// One task. Leads and admins see any task of their project; an expert only a task they hold or
/// have worked on.
pub async fn get(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    state.ready().await;
    let st = state.clone();
    let user = caller.0;
    let body = blocking(move || {
        let task = st.store().task(id)?.ok_or(AppError::NotFound("task"))?;
        let (_, access) = projects::access_blocking(&st, &user, task.project_id)?;
        let status = st.store().task_status(id)?.ok_or(AppError::NotFound("task"))?;
        st.audit(Some(user.id), AuditAction::TaskView, format!("task:{id}"), serde_json::Value::Null);
        if !access.can_oversee() {
            let worked_on = status.done_by.contains(&user.id)
                || st.holds(user.id, task.project_id, id);
            if !worked_on {
                return Err(AppError::Forbidden("you have not been assigned this task"));
            }
            return Ok(serde_json::json!({"task": {"id": task.id, "external_id": task.external_id, "data": task.data}}));
        }
        Ok(serde_json::json!({"task": task, "status": status}))
    })
    .await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Submissions of a task: leads and admins see all; an expert only their own (blind review).
pub async fn submissions(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    let st = state.clone();
    let user = caller.0;
    let list = blocking(move || {
        let task = st.store().task(id)?.ok_or(AppError::NotFound("task"))?;
        let (_, access) = projects::access_blocking(&st, &user, task.project_id)?;
        let mut subs = st.store().submissions_for_task(id)?;
        if !access.can_oversee() {
            subs.retain(|s| s.expert_id == user.id);
        }
        Ok(subs)
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// `GET /projects/{id}/broken`: quarantined tasks and why (leads and admins).
pub async fn broken(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let project = overseen(&state, &caller, id.into_inner()).await?;
    let st = state.clone();
    let list = blocking(move || st.broken_tasks(project)).await?;
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBroken {
    /// Task ids; all of the project's quarantined tasks when left out.
    tasks: Option<Vec<Id>>,
}

/// `POST /projects/{id}/broken/retry`: puts quarantined tasks back in the queue, all or none.
pub async fn retry_broken(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Bytes,
) -> AppResult<HttpResponse> {
    let project = overseen(&state, &caller, id.into_inner()).await?;
    // An empty body retries everything; anything else must say which tasks.
    let tasks = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<RetryBroken>(&body)
            .map_err(|e| {
                AppError::bad_request(crate::error::ErrorCode::InvalidBody, e.to_string())
            })?
            .tasks
    };
    if tasks.as_ref().is_some_and(|t| t.len() > MAX_RETRY) {
        return Err(AppError::field(
            "tasks",
            format!("at most {MAX_RETRY} task ids at once; leave it out to retry all"),
        ));
    }
    let (st, actor) = (state.clone(), caller.0.id);
    let reopened =
        blocking(move || st.retry_broken(Some(actor), project, tasks.as_deref())).await?;
    state.durable().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "reopened": reopened })))
}

/// Most task ids one retry may name.
const MAX_RETRY: usize = 10_000;

/// The project, when the caller may oversee it (a lead of it, or an admin).
async fn overseen(state: &State, caller: &Caller, project: Id) -> AppResult<Id> {
    let (project, access) = projects::access(&state.core, &caller.0, project).await?;
    if !access.can_oversee() {
        return Err(AppError::Forbidden("only the project's leads and admins"));
    }
    Ok(project.id)
}
