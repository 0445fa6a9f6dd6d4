use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::State;
use crate::auth::extract::session_token;
use crate::auth::Caller;
use crate::domain::UserView;
use crate::error::AppResult;
use crate::services::users;
use crate::web::client;

pub const SESSION_COOKIE: &str = "assay_session";

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

pub async fn login(
    state: State,
    req: HttpRequest,
    body: web::Json<Login>,
) -> AppResult<HttpResponse> {
    let Login { username, password } = body.into_inner();
    let address = client::address(&req, &state.config.server.trusted_proxies);
    let (user, token, exp) = users::login(&state.core, username, password, address).await?;
    let cookie = crate::web::pages::session::session_cookie(
        token.clone(),
        state.keys.session_seconds,
        client::secure_cookie(&req, &state.config),
    );
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        // A token in the body: no cache (browser or proxy) may keep it.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "token": token,
            "expires_at": exp,
            "user": UserView::from(&user),
        })))
}

/// Ends the calling session (the Bearer token or the cookie's) for good.
pub async fn logout(state: State, req: HttpRequest, caller: Caller) -> AppResult<HttpResponse> {
    let token = session_token(&state, &req)?;
    users::logout(&state.core, &caller.0, &token).await?;
    let mut gone = actix_web::cookie::Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .finish();
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}

pub async fn me(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(UserView::from(&caller.0))
}
