//! The QA queue: reviewers' leases, verdicts and final answers; experts' own verdicts.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::State;
use crate::auth::Caller;
use crate::domain::Id;
use crate::error::AppResult;
use crate::review::VerdictBody;
use crate::services::blocking;

/// `POST /projects/{id}/qa/next`: the reviewer's QA item, or 204 when none waits for them.
pub async fn next(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    match state.core.qa_next(caller.0, id.into_inner()).await? {
        Some(item) => Ok(HttpResponse::Ok().json(item)),
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
    let id = id.into_inner();
    let expires_at = state
        .core
        .qa_heartbeat(caller.0, id, body.into_inner().token)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "expires_at": expires_at })))
}

pub async fn release(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<TokenBody>,
) -> AppResult<HttpResponse> {
    state
        .core
        .qa_release(caller.0, id.into_inner(), body.into_inner().token)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "released" })))
}

/// 201 with what the verdict did; a retry returns 200 with the first result.
pub async fn verdict(
    state: State,
    caller: Caller,
    id: web::Path<Id>,
    body: web::Json<VerdictBody>,
) -> AppResult<HttpResponse> {
    let (result, replay) = state
        .core
        .qa_verdict(caller.0, id.into_inner(), body.into_inner())
        .await?;
    if replay {
        Ok(HttpResponse::Ok()
            .insert_header(("X-Assay-Replay", "true"))
            .json(result))
    } else {
        Ok(HttpResponse::Created().json(result))
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// Milliseconds since the epoch; the last 30 days by default.
    since: Option<i64>,
}

/// `GET /me/submissions`: the caller's own submissions with their QA verdicts and reasons.
pub async fn my_submissions(
    state: State,
    caller: Caller,
    query: web::Query<Since>,
) -> AppResult<HttpResponse> {
    let since = query
        .since
        .unwrap_or_else(|| crate::now_ms() - 30 * 24 * 3600 * 1000);
    let (st, me) = (state.clone(), caller.0.id);
    let subs = blocking(move || Ok(st.store().expert_submissions_since(me, since)?)).await?;
    let out: Vec<_> = subs
        .into_iter()
        .rev()
        .map(|s| {
            serde_json::json!({
                "id": s.id, "task_id": s.task_id, "project_id": s.project_id,
                "submitted_at": s.submitted_at, "active_seconds": s.active_seconds,
                "answer": s.answer,
                "verdict": s.qa.as_ref().map(|q| q.verdict),
                "reason": s.qa.as_ref().and_then(|q| q.reason.clone()),
                "fixed_answer": s.qa.as_ref().and_then(|q| q.fixed_answer.clone()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(out))
}
