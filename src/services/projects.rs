//! Projects, membership and the access rules every project-scoped request goes through.

use serde::Deserialize;

use super::{blocking, Core, ReviewCore};
use crate::domain::{AuditAction, GlobalRole, Id, Project, ProjectRole, User};
use crate::error::{AppError, AppResult};
use crate::scripting::PluginKind;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectInput {
    pub name: String,
    #[serde(default)]
    pub instructions: String,
    pub rubric: String,
    #[serde(default = "default_router")]
    pub router: String,
    #[serde(default = "one")]
    pub reviews_per_task: u32,
    pub lease_seconds: Option<u64>,
    pub estimate_minutes: Option<f64>,
    #[serde(default)]
    pub qa_rate: f64,
    #[serde(default = "yes")]
    pub qa_blind: bool,
}

fn yes() -> bool {
    true
}

fn default_router() -> String {
    "fixed_overlap".into()
}
fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub instructions: Option<String>,
    pub rubric: Option<String>,
    pub router: Option<String>,
    pub reviews_per_task: Option<u32>,
    pub lease_seconds: Option<u64>,
    pub estimate_minutes: Option<f64>,
    pub qa_rate: Option<f64>,
    pub qa_blind: Option<bool>,
}

fn check(state: &Core, p: &Project) -> AppResult<()> {
    if p.name.trim().is_empty() || p.name.len() > 200 {
        return Err(AppError::field("name", "must be 1-200 characters"));
    }
    if p.name.chars().any(char::is_control) {
        return Err(AppError::field(
            "name",
            "must not contain control characters (NUL, line breaks, tabs…)",
        ));
    }
    if p.instructions.len() > 200_000 {
        return Err(AppError::field(
            "instructions",
            "must be at most 200000 bytes",
        ));
    }
    if !state.registry.exists(PluginKind::Rubric, &p.rubric) {
        return Err(AppError::field(
            "rubric",
            format!("no rubric named `{}` is installed", p.rubric),
        ));
    }
    if !state.registry.exists(PluginKind::Router, &p.router) {
        return Err(AppError::field(
            "router",
            format!("no router named `{}` is installed", p.router),
        ));
    }
    if !(1..=1000).contains(&p.reviews_per_task) {
        return Err(AppError::field(
            "reviews_per_task",
            "must be from 1 to 1000",
        ));
    }
    if !(1..=7 * 24 * 3600).contains(&p.lease_seconds) {
        return Err(AppError::field("lease_seconds", "must be from 1 to 604800"));
    }
    if p.estimate_minutes
        .is_some_and(|m| !(0.0..=10_000.0).contains(&m))
    {
        return Err(AppError::field(
            "estimate_minutes",
            "must be from 0 to 10000",
        ));
    }
    if !(0.0..=1.0).contains(&p.qa_rate) {
        return Err(AppError::field("qa_rate", "must be from 0.0 to 1.0"));
    }
    Ok(())
}

pub async fn create(state: &Core, actor: Id, input: ProjectInput) -> AppResult<Project> {
    let now = crate::now_ms();
    let project = Project {
        id: 0,
        name: input.name,
        instructions: input.instructions,
        rubric: input.rubric,
        router: input.router,
        reviews_per_task: input.reviews_per_task,
        lease_seconds: input
            .lease_seconds
            .unwrap_or(state.config.queue.lease_seconds),
        estimate_minutes: input.estimate_minutes,
        qa_rate: input.qa_rate,
        qa_blind: input.qa_blind,
        created_at: now,
        updated_at: now,
    };
    check(state, &project)?;
    let st = state.clone();
    let project = blocking(move || {
        let p = st.store().create_project(project)?;
        st.audit(
            Some(actor),
            AuditAction::ProjectCreate,
            format!("project:{}", p.id),
            serde_json::json!({"name": p.name}),
        );
        Ok(p)
    })
    .await?;
    state.durable().await?;
    Ok(project)
}

pub async fn update(state: &Core, actor: Id, id: Id, patch: ProjectPatch) -> AppResult<Project> {
    let st = state.clone();
    let project = blocking(move || {
        let mut p = st
            .store()
            .project(id)?
            .ok_or(AppError::NotFound("project"))?;
        let before = p.clone();
        if let Some(v) = patch.name {
            p.name = v;
        }
        if let Some(v) = patch.instructions {
            p.instructions = v;
        }
        if let Some(v) = patch.rubric {
            p.rubric = v;
        }
        if let Some(v) = patch.router {
            p.router = v;
        }
        if let Some(v) = patch.reviews_per_task {
            p.reviews_per_task = v;
        }
        if let Some(v) = patch.lease_seconds {
            p.lease_seconds = v;
        }
        if patch.estimate_minutes.is_some() {
            p.estimate_minutes = patch.estimate_minutes;
        }
        if let Some(v) = patch.qa_rate {
            p.qa_rate = v;
        }
        if let Some(v) = patch.qa_blind {
            p.qa_blind = v;
        }
        p.updated_at = crate::now_ms();
        check(&st, &p)?;
        st.store().update_project(&p)?;
        st.audit(
            Some(actor),
            AuditAction::ProjectUpdate,
            format!("project:{id}"),
            crate::domain::audit_changes(&before, &p, &[]),
        );
        Ok(p)
    })
    .await?;
    state.durable().await?;
    Ok(project)
}

/// What a user may do in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Member(ProjectRole),
}

impl Access {
    /// Leads and admins may see every task and answer of the project.
    pub fn can_oversee(self) -> bool {
        matches!(self, Access::Admin | Access::Member(ProjectRole::Lead))
    }
}

/// Loads a project and the caller's access to it; a non-member is refused.
pub fn access_blocking(
    state: &ReviewCore,
    user: &User,
    project: Id,
) -> AppResult<(Project, Access)> {
    let p = state
        .store()
        .project(project)?
        .ok_or(AppError::NotFound("project"))?;
    if user.role == GlobalRole::Admin {
        return Ok((p, Access::Admin));
    }
    match state.store().member_role(project, user.id)? {
        Some(role) => Ok((p, Access::Member(role))),
        None => Err(AppError::Forbidden("you are not a member of this project")),
    }
}

/// Whether the user is an admin or leads at least one project.
pub async fn oversees_any(state: &Core, user: &User) -> AppResult<bool> {
    if user.role == GlobalRole::Admin {
        return Ok(true);
    }
    let (st, uid) = (state.clone(), user.id);
    blocking(move || {
        Ok(st
            .store()
            .memberships(uid)?
            .iter()
            .any(|(_, role)| *role == ProjectRole::Lead))
    })
    .await
}

pub async fn access(state: &Core, user: &User, project: Id) -> AppResult<(Project, Access)> {
    let (st, user) = (state.clone(), user.clone());
    blocking(move || access_blocking(&st, &user, project)).await
}

pub async fn set_member(
    state: &Core,
    actor: Id,
    project: Id,
    user: Id,
    role: Option<ProjectRole>,
) -> AppResult<()> {
    let st = state.clone();
    blocking(move || {
        st.store()
            .project(project)?
            .ok_or(AppError::NotFound("project"))?;
        st.store().user(user)?.ok_or(AppError::NotFound("user"))?;
        let before = st.store().member_role(project, user)?;
        st.store().set_member(project, user, role)?;
        st.audit(
            Some(actor),
            AuditAction::ProjectMember,
            format!("project:{project}"),
            serde_json::json!({"user": user, "role": {"before": before, "after": role}}),
        );
        Ok(())
    })
    .await?;
    state.durable().await
}

/// Projects visible to a user: all for an admin, their memberships otherwise.
pub async fn visible(state: &Core, user: &User) -> AppResult<Vec<(Project, Option<ProjectRole>)>> {
    let (st, user) = (state.clone(), user.clone());
    blocking(move || {
        if user.role == GlobalRole::Admin {
            return Ok(st
                .store()
                .projects()?
                .into_iter()
                .map(|p| (p, None))
                .collect());
        }
        let mut out = Vec::new();
        for (id, role) in st.store().memberships(user.id)? {
            if let Some(p) = st.store().project(id)? {
                out.push((p, Some(role)));
            }
        }
        Ok(out)
    })
    .await
}
