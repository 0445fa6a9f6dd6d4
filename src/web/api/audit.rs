use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::State;
use crate::auth::Admin;
use crate::error::AppResult;
use crate::services::blocking;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
}

/// The most recent audit events, newest first (admins).
pub async fn recent(
    state: State,
    _admin: Admin,
    q: web::Query<AuditQuery>,
) -> AppResult<HttpResponse> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let st = state.clone();
    let events = blocking(move || Ok(st.store().recent_audit(limit)?)).await?;
    Ok(HttpResponse::Ok().json(events))
}
