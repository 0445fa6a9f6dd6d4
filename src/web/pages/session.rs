//! Who is looking at a page. Pages authenticate with the session cookie set at login; a
//! missing, expired or revoked session sends the browser to the login page with the place it
//! was going to kept in `next`. Every form carries a CSRF token bound to the session (or, before
//! login, to a random pre-session cookie).

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{dev::Payload, FromRequest, HttpRequest, HttpResponse, ResponseError};

use crate::app::AppState;
use crate::auth::extract::{state_of, user_for_token};
use crate::domain::{GlobalRole, User};
use crate::error::AppError;
use crate::web::api::auth::SESSION_COOKIE;

/// Pre-login cookie that the login form's CSRF token is bound to.
pub const LOGIN_CSRF_COOKIE: &str = "assay_login";

/// A signed-in user on a page, with the CSRF token for the forms it renders.
#[derive(Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
    token: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.user.role == GlobalRole::Admin
    }

    /// The session token (for ending the session).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Checks the CSRF token a plain HTML form sent.
    pub fn check_form(&self, state: &AppState, sent: &str) -> Result<(), PageError> {
        if state.keys.check_csrf(&self.token, sent) {
            Ok(())
        } else {
            Err(PageError::App(AppError::Forbidden(
                "the form's CSRF token is missing or stale; reload the page",
            )))
        }
    }
}

/// Why a page was not rendered.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in (or the session ended): go to the login page, then come back to `next`.
    Login {
        next: String,
    },
    App(AppError),
}

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        PageError::App(e)
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::Login { next } => write!(f, "sign-in needed for {next}"),
            PageError::App(e) => e.fmt(f),
        }
    }
}

/// Only local paths may be a `next`: never another site.
pub fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\");
    if local && !next.chars().any(char::is_control) {
        next
    } else {
        "/"
    }
}

pub fn login_url(next: &str) -> String {
    let mut url = String::from("/login?next=");
    for b in safe_next(next).bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            PageError::Login { .. } => StatusCode::SEE_OTHER,
            PageError::App(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            PageError::Login { next } => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, login_url(next)))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish(),
            PageError::App(e) => {
                // Logged as the API would; shown as a plain page (no template, so it always works).
                let request_id = crate::web::request_id::current();
                e.log(&request_id);
                let status = e.status_code();
                let body = format!(
                    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} · Assay</title>\
                     <link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main class=\"narrow\">\
                     <h1>{status}</h1><p class=\"error-message\" data-code=\"{code}\">{message}</p>\
                     <p class=\"muted\">Request {rid}</p><p><a href=\"/\">Back to your projects</a></p></main></body></html>",
                    status = status.as_u16(),
                    code = e.code(),
                    message = handlebars::html_escape(&e.to_string()),
                    rid = handlebars::html_escape(&request_id),
                );
                HttpResponse::build(status)
                    .content_type("text/html; charset=utf-8")
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .body(body)
            }
        }
    }
}

impl FromRequest for Session {
    type Error = PageError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, PageError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state_of(&req)?;
            let next = if req.method() == actix_web::http::Method::GET {
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into())
            } else {
                // After a form post the page to return to is the one the form was on.
                req.headers()
                    .get(header::REFERER)
                    .and_then(|r| r.to_str().ok())
                    .and_then(|r| r.split_once("://").map(|(_, rest)| rest))
                    .and_then(|rest| rest.find('/').map(|i| rest[i..].to_owned()))
                    .unwrap_or_else(|| "/".into())
            };
            let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
                return Err(PageError::Login { next });
            };
            match user_for_token(&state, &token).await {
                Ok(user) => Ok(Session {
                    csrf: state.keys.csrf(&token),
                    user,
                    token,
                }),
                Err(AppError::Unauthorized(_)) => Err(PageError::Login { next }),
                Err(e) => Err(PageError::App(e)),
            }
        })
    }
}

/// The session cookie, set at login (page or API) and cleared at logout.
pub fn session_cookie(token: String, max_age_seconds: i64, secure: bool) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age_seconds))
        .finish()
}
