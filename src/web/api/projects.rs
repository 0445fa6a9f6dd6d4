use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::State;
use crate::auth::{Admin, Caller};
use crate::domain::{Id, Project, ProjectRole};
use crate::error::AppResult;
use crate::services::{blocking, projects};

#[derive(Serialize, schemars::JsonSchema)]
pub struct ProjectView {
    #[serde(flatten)]
    project: Project,
    /// The caller's role in the project (`None` for admins who are not members).
    my_role: Option<ProjectRole>,
}

pub async fn list(state: State, caller: Caller) -> AppResult<HttpResponse> {
    let visible = projects::visible(&state.core, &caller.0).await?;
    let views: Vec<_> = visible
        .into_iter()
        .map(|(project, my_role)| ProjectView { project, my_role })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

pub async fn create(
    state: State,
    admin: Admin,
    body: web::Json<projects::ProjectInput>,
) -> AppResult<HttpResponse> {
    let project = projects::create(&state.core, admin.0.id, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(project))
}

pub async fn get(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let (project, access) = projects::access(&state.core, &caller.0, id.into_inner()).await?;
    let my_role = match access {
        projects::Access::Member(role) => Some(role),
        projects::Access::Admin => None,
    };
    Ok(HttpResponse::Ok().json(ProjectView { project, my_role }))
}

pub async fn update(
    state: State,
    admin: Admin,
    id: web::Path<Id>,
    body: web::Json<projects::ProjectPatch>,
) -> AppResult<HttpResponse> {
    let project =
        projects::update(&state.core, admin.0.id, id.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(project))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    role: ProjectRole,
}

pub async fn set_member(
    state: State,
    admin: Admin,
    path: web::Path<(Id, Id)>,
    body: web::Json<MemberInput>,
) -> AppResult<HttpResponse> {
    let (project, user) = path.into_inner();
    projects::set_member(&state.core, admin.0.id, project, user, Some(body.role)).await?;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({"project_id": project, "user_id": user, "role": body.role})))
}

pub async fn remove_member(
    state: State,
    admin: Admin,
    path: web::Path<(Id, Id)>,
) -> AppResult<HttpResponse> {
    let (project, user) = path.into_inner();
    projects::set_member(&state.core, admin.0.id, project, user, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn members(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let (project, access) = projects::access(&state.core, &caller.0, id.into_inner()).await?;
    if !access.can_oversee() {
        return Err(crate::error::AppError::Forbidden(
            "only leads and admins see the member list",
        ));
    }
    let st = state.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for (uid, role) in st.store().members(project.id)? {
            let username = st
                .store()
                .user(uid)?
                .map(|u| u.username)
                .unwrap_or_default();
            out.push(serde_json::json!({"user_id": uid, "username": username, "role": role}));
        }
        Ok(out)
    })
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

pub async fn stats(state: State, caller: Caller, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let (project, _) = projects::access(&state.core, &caller.0, id.into_inner()).await?;
    let st = state.clone();
    let counts = blocking(move || Ok(st.store().project_counts(project.id)?)).await?;
    Ok(HttpResponse::Ok().json(counts))
}

/// `POST /projects/{id}/reroute`: apply the project's current router to its open tasks.
pub async fn reroute(state: State, admin: Admin, id: web::Path<Id>) -> AppResult<HttpResponse> {
    let report = state.core.reroute(admin.0.id, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(report))
}
