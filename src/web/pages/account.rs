//! Login and logout. The login form is a plain HTML form (it works without JavaScript); its
//! CSRF token is bound to a random pre-login cookie. After login the browser goes back to the
//! page it was sent away from (`next`), so an expired session costs the expert nothing.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::session::{safe_next, session_cookie, LOGIN_CSRF_COOKIE};
use super::{page, PageResult, Session};
use crate::app::AppState;
use crate::error::AppError;
use crate::services::users;
use crate::web::api::auth::SESSION_COOKIE;
use crate::web::client;

type State = web::Data<AppState>;

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_seed(req: &HttpRequest) -> (String, bool) {
    match req.cookie(LOGIN_CSRF_COOKIE) {
        Some(c) if c.value().len() >= 32 => (c.value().to_owned(), false),
        _ => (hex::encode(rand::random::<[u8; 16]>()), true),
    }
}

fn render_login(
    state: &AppState,
    req: &HttpRequest,
    next: &str,
    username: &str,
    error: Option<&str>,
    status: actix_web::http::StatusCode,
) -> PageResult {
    let (seed, fresh) = login_seed(req);
    let data = serde_json::json!({
        "next": safe_next(next), "username": username, "error": error,
        "csrf": state.keys.csrf(&seed),
    });
    let mut res = page(state, None, "login", "Sign in", data)?;
    *res.status_mut() = status;
    if fresh {
        let cookie = Cookie::build(LOGIN_CSRF_COOKIE, seed)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .finish();
        res.add_cookie(&cookie).map_err(AppError::internal)?;
    }
    Ok(res)
}

pub async fn login_page(state: State, req: HttpRequest, q: web::Query<NextQuery>) -> PageResult {
    let next = q.next.as_deref().unwrap_or("/");
    render_login(
        &state,
        &req,
        next,
        "",
        None,
        actix_web::http::StatusCode::OK,
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    _csrf: String,
}

pub async fn login(state: State, req: HttpRequest, form: web::Form<LoginForm>) -> PageResult {
    use actix_web::http::StatusCode;
    let form = form.into_inner();
    let seed = req
        .cookie(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if seed.is_empty() || !state.keys.check_csrf(&seed, &form._csrf) {
        let msg = "The form expired. Please sign in again.";
        return render_login(
            &state,
            &req,
            &form.next,
            &form.username,
            Some(msg),
            StatusCode::FORBIDDEN,
        );
    }
    let address = client::address(&req, &state.config.server.trusted_proxies);
    let login = users::login(&state.core, form.username.clone(), form.password, address);
    match login.await {
        Ok((_, token, _)) => Ok(HttpResponse::SeeOther()
            .cookie(session_cookie(
                token,
                state.keys.session_seconds,
                client::secure_cookie(&req, &state.config),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::LOCATION, safe_next(&form.next).to_owned()))
            .finish()),
        Err(AppError::TooManyRequests) => render_login(
            &state,
            &req,
            &form.next,
            &form.username,
            Some("Too many attempts. Wait a few minutes and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(AppError::Unauthorized(_)) => render_login(
            &state,
            &req,
            &form.next,
            &form.username,
            Some("Wrong username or password."),
            StatusCode::UNAUTHORIZED,
        ),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    _csrf: String,
}

impl CsrfForm {
    pub fn csrf(&self) -> &str {
        &self._csrf
    }
}

/// Ends the browser's session for good (other sessions stay; an admin can revoke them all).
pub async fn logout(state: State, session: Session, form: web::Form<CsrfForm>) -> PageResult {
    session.check_form(&state, &form._csrf)?;
    users::logout(&state.core, &session.user, session.token()).await?;
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((header::LOCATION, "/login"))
        .finish())
}
