//! JSON API handlers: each parses typed input, calls one service, and maps the result.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod export;
pub mod health;
pub mod plugins;
pub mod projects;
pub mod qa;
pub mod review;
pub mod tasks;
pub mod users;

use crate::error::AppError;

pub async fn not_found() -> Result<actix_web::HttpResponse, AppError> {
    Err(AppError::NotFound("route"))
}

/// Shorthand for the shared state in handler signatures.
pub type State = actix_web::web::Data<crate::app::AppState>;
