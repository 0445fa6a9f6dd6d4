use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::State;
use crate::auth::Caller;
use crate::domain::{AssignmentStatus, Id};
use crate::error::{AppError, AppResult};

/// `POST /projects/{id}/next`: the caller's next task, or 204 when nothing is left for them.
pub async fn next(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    match state.core.next(caller.0, id.into_inner()).await? {
        Some(handout) => Ok(HttpResponse::Ok().json(handout)),
        None => Ok(HttpResponse::NoContent().finish()),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
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
    let a = state
        .core
        .heartbeat(caller.0, id.into_inner(), body.into_inner().token)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": a.id, "expires_at": a.expires_at, "active_seconds": a.active_seconds,
    })))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    token: String,
    reason: Option<String>,
}

/// Ends a lease without an answer: `skipped` keeps the task away from the expert for good,
/// `released` puts it back in the queue for anyone.
async fn end(
    state: State,
    caller: Caller,
    id: Id,
    body: EndBody,
    status: AssignmentStatus,
) -> AppResult<HttpResponse> {
    let reason = match body.reason {
        Some(r) if r.len() > 2000 => {
            return Err(AppError::field("reason", "must be at most 2000 bytes"))
        }
        r => r.filter(|r| !r.trim().is_empty()),
    };
    state
        .core
        .end_without_answer(caller.0, id, body.token, status, reason)
        .await?;
    let word = if status == AssignmentStatus::Skipped {
        "skipped"
    } else {
        "released"
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": word })))
}

pub async fn skip(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<EndBody>,
) -> AppResult<HttpResponse> {
    end(
        state,
        caller,
        id.into_inner(),
        body.into_inner(),
        AssignmentStatus::Skipped,
    )
    .await
}

pub async fn release(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<EndBody>,
) -> AppResult<HttpResponse> {
    end(
        state,
        caller,
        id.into_inner(),
        body.into_inner(),
        AssignmentStatus::Released,
    )
    .await
}

#[derive(Deserialize, schemars::JsonSchema)]
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
    let done = state
        .core
        .submit(caller.0, id.into_inner(), token, answer)
        .await?;
    if done.replay {
        Ok(HttpResponse::Ok()
            .insert_header(("X-Assay-Replay", "true"))
            .json(done.submission))
    } else {
        Ok(HttpResponse::Created().json(done.submission))
    }
}
