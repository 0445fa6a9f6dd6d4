use actix_web::HttpResponse;

use super::State;
use crate::auth::Caller;

/// Every plugin with its kind, current version, status and last error.
pub async fn list(state: State, _caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(state.registry.statuses())
}
