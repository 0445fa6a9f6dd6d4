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

/// No route took the request: 405 with `Allow` when the path exists with other methods, else
/// 404.
pub async fn not_found(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    let path = req.path().strip_prefix("/api/v1").unwrap_or(req.path());
    let allowed: Vec<String> = crate::app::API_ROUTES
        .iter()
        .filter(|(_, pattern)| path_matches(pattern, path))
        .map(|(method, _)| method.to_uppercase())
        .collect();
    if allowed.is_empty() {
        return AppError::NotFound("route").error_response();
    }
    let allow = allowed.join(", ");
    let mut res = AppError::MethodNotAllowed(allow.clone()).error_response();
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allow) {
        res.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    res
}

/// Whether `path` fits a route pattern (`{name}` takes one segment).
fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b || (a.starts_with('{') && !b.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Shorthand for the shared state in handler signatures.
pub type State = actix_web::web::Data<crate::app::AppState>;
