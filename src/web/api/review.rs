use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::State;
use crate::auth::Caller;
use crate::domain::{AssignmentStatus, Id};
use crate::error::{AppError, AppResult};
use crate::services::review;

/// `POST /projects/{id}/next`: the caller's next task, or 204 when nothing is left for them.
pub async fn next(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    match review::next(&state, caller.0, id.into_inner()).await? {
        Some(handout) => Ok(HttpResponse::Ok().json(handout)),
        None => Ok(HttpResponse::NoContent().finish()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    token: String,
}

pub async fn heartbeat(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<TokenBody>,
) -> AppResult<HttpResponse> {
    let a = review::heartbeat(&state, caller.0, id.into_inner(), body.into_inner().token).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": a.id, "expires_at": a.expires_at, "active_seconds": a.active_seconds,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    token: String,
    reason: Option<String>,
}

fn reason(r: Option<String>) -> AppResult<Option<String>> {
    match r {
        Some(r) if r.len() > 2000 => Err(AppError::field("reason", "must be at most 2000 bytes")),
        r => Ok(r.filter(|r| !r.trim().is_empty())),
    }
}

pub async fn skip(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<EndBody>,
) -> AppResult<HttpResponse> {
    let EndBody { token, reason: r } = body.into_inner();
    review::finish_without_answer(
        &state,
        caller.0,
        id.into_inner(),
        token,
        AssignmentStatus::Skipped,
        reason(r)?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "skipped"})))
}

pub async fn release(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<EndBody>,
) -> AppResult<HttpResponse> {
    let EndBody { token, reason: r } = body.into_inner();
    review::finish_without_answer(
        &state,
        caller.0,
        id.into_inner(),
        token,
        AssignmentStatus::Released,
        reason(r)?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "released"})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    token: String,
    answer: Value,
}

/// 201 with the stored submission; a retry of the same assignment returns 200 with the first.
pub async fn submit(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<SubmitBody>,
) -> AppResult<HttpResponse> {
    let SubmitBody { token, answer } = body.into_inner();
    let done = review::submit(&state, caller.0, id.into_inner(), token, answer).await?;
    if done.replay {
        Ok(HttpResponse::Ok()
            .insert_header(("X-Assay-Replay", "true"))
            .json(done.submission))
    } else {
        Ok(HttpResponse::Created().json(done.submission))
    }
}
