use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::State;
use crate::auth::Caller;
use crate::domain::UserView;
use crate::error::AppResult;
use crate::services::users;

pub const SESSION_COOKIE: &str = "assay_session";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

pub async fn login(state: State, body: web::Json<Login>) -> AppResult<HttpResponse> {
    let Login { username, password } = body.into_inner();
    let (user, token, exp) = users::login(&state.core, username, password).await?;
    let cookie =
        crate::web::pages::session::session_cookie(token.clone(), state.keys.session_seconds);
    Ok(HttpResponse::Ok().cookie(cookie).json(serde_json::json!({
        "token": token,
        "expires_at": exp,
        "user": UserView::from(&user),
    })))
}

pub async fn me(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(UserView::from(&caller.0))
}
