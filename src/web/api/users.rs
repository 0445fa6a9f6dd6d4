use actix_web::{web, HttpResponse};

use super::State;
use crate::auth::{Admin, Caller};
use crate::domain::{Id, UserView};
use crate::error::{AppError, AppResult};
use crate::services::{blocking, users};

pub async fn list(state: State, _admin: Admin) -> AppResult<HttpResponse> {
    let st = state.clone();
    let all = blocking(move || Ok(st.store().users()?)).await?;
    Ok(HttpResponse::Ok().json(all.iter().map(UserView::from).collect::<Vec<_>>()))
}

pub async fn create(
    state: State,
    admin: Admin,
    body: web::Json<users::NewUser>,
) -> AppResult<HttpResponse> {
    let user = users::create(&state.core, admin.0.id, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(UserView::from(&user)))
}

/// An admin may read anyone; a member only themselves.
pub async fn get(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    if !caller.is_admin() && caller.0.id != id {
        return Err(AppError::Forbidden("you may only read your own account"));
    }
    let st = state.clone();
    let user = blocking(move || st.store().user(id)?.ok_or(AppError::NotFound("user"))).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

pub async fn update(
    state: State,
    admin: Admin,
    id: web::Path<Id>,
    body: web::Json<users::UserPatch>,
) -> AppResult<HttpResponse> {
    let user = users::update(&state.core, admin.0.id, id.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

pub async fn revoke(state: State, admin: Admin, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let user = users::revoke(&state.core, admin.0.id, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}
