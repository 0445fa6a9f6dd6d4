//! Extractors: a handler that takes `Caller` or `Admin` never runs for a request that lacks the
//! right token. The token comes from the `Authorization: Bearer` header, or from the pages'
//! session cookie — then a write must also carry the page's CSRF token in `X-CSRF-Token`, so
//! another site cannot make the browser act for the user.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::app::AppState;
use crate::domain::{GlobalRole, User};
use crate::error::AppError;

/// Any signed-in, active user.
pub struct Caller(pub User);

/// A signed-in admin.
pub struct Admin(pub User);

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.0.role == GlobalRole::Admin
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// The session token of a request: Bearer first, else the cookie (with its CSRF check).
pub fn session_token(state: &AppState, req: &HttpRequest) -> Result<String, AppError> {
    if let Some(token) = bearer(req) {
        return Ok(token);
    }
    let cookie = req
        .cookie(crate::web::api::auth::SESSION_COOKIE)
        .map(|c| c.value().to_owned())
        .ok_or(AppError::Unauthorized("a Bearer token is required"))?;
    let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
    if !safe {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.keys.check_csrf(&cookie, sent) {
            return Err(AppError::Forbidden(
                "a cookie session needs a valid X-CSRF-Token header for this request",
            ));
        }
    }
    Ok(cookie)
}

/// The active user a session token belongs to.
pub async fn user_for_token(state: &AppState, token: &str) -> Result<User, AppError> {
    let claims = state
        .keys
        .verify_session(token)
        .ok_or(AppError::Unauthorized("the token is invalid or expired"))?;
    if state.revoked.contains(&claims.sid) {
        return Err(AppError::Unauthorized("this session was signed out"));
    }
    // Users are cached in memory: the common case needs no trip to the blocking pool.
    let user = match state.store().cached_user(claims.sub) {
        Some(user) => user,
        None => {
            let store = state.store().clone();
            crate::review::blocking(move || Ok(store.user(claims.sub)?))
                .await?
                .ok_or(AppError::Unauthorized("the token's user no longer exists"))?
        }
    };
    if !user.active {
        return Err(AppError::Unauthorized("this account is deactivated"));
    }
    if user.token_generation != claims.gen {
        return Err(AppError::Unauthorized("the token was revoked"));
    }
    Ok(user)
}

/// The application state, for extractors (handlers take it as `web::Data` directly).
pub fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AppError::internal("application state missing"))
}

async fn authenticate(req: HttpRequest) -> Result<User, AppError> {
    let state = state_of(&req)?;
    let token = session_token(&state, &req)?;
    user_for_token(&state, &token).await
}

impl FromRequest for Caller {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, AppError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authenticate(req).await.map(Caller) })
    }
}

impl FromRequest for Admin {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, AppError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let user = authenticate(req).await?;
            if user.role != GlobalRole::Admin {
                return Err(AppError::Forbidden("this needs an admin"));
            }
            Ok(Admin(user))
        })
    }
}
