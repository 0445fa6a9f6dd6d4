//! Admin pages: projects (create, edit, members, import, export), users (create, skills, roles,
//! deactivate, revoke sessions) and plugins (status, versions, last error with line and
//! column, page templates). Their forms post JSON to the API through `app.js`.

use actix_web::web;
use serde_json::json;

use super::{page, PageResult, Session};
use crate::app::AppState;
use crate::domain::{Id, ProjectRole, UserView};
use crate::error::AppError;
use crate::scripting::PluginKind;
use crate::services::blocking;

type State = web::Data<AppState>;

fn admin_only(session: &Session) -> Result<(), AppError> {
    if session.is_admin() {
        Ok(())
    } else {
        Err(AppError::Forbidden("this page is for admins"))
    }
}

/// Installed plugin names of one kind, for the project forms' selects.
fn plugin_names(state: &AppState, kind: PluginKind) -> Vec<String> {
    let mut names: Vec<String> = state
        .registry
        .statuses()
        .into_iter()
        .filter(|s| s.kind == kind && s.version.is_some())
        .map(|s| s.name)
        .collect();
    names.sort();
    names
}

fn options(names: &[String], selected: &str) -> Vec<serde_json::Value> {
    names
        .iter()
        .map(|n| json!({ "name": n, "selected": n == selected }))
        .collect()
}

pub async fn projects(state: State, session: Session) -> PageResult {
    admin_only(&session)?;
    let st = state.clone();
    let list = blocking(move || {
        let mut out = Vec::new();
        for p in st.store().projects()? {
            let counts = st.store().project_counts(p.id)?;
            out.push(
                json!({ "id": p.id, "name": p.name, "rubric": p.rubric, "router": p.router,
                             "reviews_per_task": p.reviews_per_task, "counts": counts }),
            );
        }
        Ok(out)
    })
    .await?;
    let rubrics = plugin_names(&state, PluginKind::Rubric);
    let routers = plugin_names(&state, PluginKind::Router);
    let data = json!({
        "projects": list,
        "rubrics": options(&rubrics, rubrics.first().map(String::as_str).unwrap_or("")),
        "routers": options(&routers, "fixed_overlap"),
    });
    page(&state, Some(&session), "admin_projects", "Projects", data)
}

/// Quarantined tasks listed on a project's page (all of them through the API).
const BROKEN_SHOWN: usize = 50;

pub async fn project(state: State, session: Session, id: web::Path<Id>) -> PageResult {
    admin_only(&session)?;
    let st = state.clone();
    let id = id.into_inner();
    let (project, counts, members, others, broken) = blocking(move || {
        let project = st
            .store()
            .project(id)?
            .ok_or(AppError::NotFound("project"))?;
        let counts = st.store().project_counts(id)?;
        let mut members = Vec::new();
        let mut member_ids = Vec::new();
        for (uid, role) in st.store().members(id)? {
            member_ids.push(uid);
            if let Some(u) = st.store().user(uid)? {
                members.push(
                    json!({ "id": uid, "username": u.username, "active": u.active,
                    "role": if role == ProjectRole::Lead { "lead" } else { "expert" } }),
                );
            }
        }
        let others: Vec<_> = st
            .store()
            .users()?
            .into_iter()
            .filter(|u| u.active && !member_ids.contains(&u.id))
            .map(|u| json!({ "id": u.id, "username": u.username }))
            .collect();
        let mut broken = st.broken_tasks(id)?;
        broken.truncate(BROKEN_SHOWN);
        Ok((project, counts, members, others, broken))
    })
    .await?;
    let rubrics = plugin_names(&state, PluginKind::Rubric);
    let routers = plugin_names(&state, PluginKind::Router);
    let data = json!({
        "project": project, "counts": counts, "members": members, "candidates": others,
        "broken": broken,
        "has_candidates": !others.is_empty(),
        "rubrics": options(&rubrics, &project.rubric),
        "routers": options(&routers, &project.router),
        "formats": ["jsonl", "records", "dpo", "sft"],
    });
    page(
        &state,
        Some(&session),
        "admin_project",
        &format!("Project · {}", project.name),
        data,
    )
}

pub async fn users(state: State, session: Session) -> PageResult {
    admin_only(&session)?;
    let st = state.clone();
    let list = blocking(move || {
        Ok(st
            .store()
            .users()?
            .iter()
            .map(|u| {
                let mut v = json!(UserView::from(u));
                v["skills_text"] = json!(u.skills.join(", "));
                v["is_admin"] = json!(u.role == crate::domain::GlobalRole::Admin);
                v
            })
            .collect::<Vec<_>>())
    })
    .await?;
    page(
        &state,
        Some(&session),
        "admin_users",
        "Users",
        json!({ "users": list }),
    )
}

/// The audit log with filters (actor, action, object, time range) and a CSV download of the
/// same selection.
pub async fn audit(
    state: State,
    session: Session,
    req: actix_web::HttpRequest,
    q: web::Query<crate::web::api::audit::AuditQuery>,
) -> PageResult {
    admin_only(&session)?;
    let q = q.into_inner();
    let filters = json!({ "actor": q.actor, "action": q.action, "object": q.object,
        "from": q.from, "to": q.to });
    let (events, _) = crate::web::api::audit::query(&state, q).await?;
    let rows: Vec<_> = events
        .iter()
        .map(|e| {
            json!({ "at": e.at, "actor": e.actor, "action": e.action, "object": e.object,
            "detail": e.detail.to_string() })
        })
        .collect();
    let query = req.query_string();
    let csv = if query.is_empty() {
        "/api/v1/audit?format=csv".to_owned()
    } else {
        format!("/api/v1/audit?{query}&format=csv")
    };
    page(
        &state,
        Some(&session),
        "admin_audit",
        "Audit log",
        json!({ "events": rows, "filters": filters, "csv": csv }),
    )
}

pub async fn plugins(state: State, session: Session) -> PageResult {
    admin_only(&session)?;
    let mut statuses = state.registry.statuses();
    statuses.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
    let list: Vec<_> = statuses
        .iter()
        .map(|s| {
            json!({
                "kind": s.kind.as_str(), "name": s.name, "file": s.file, "status": s.status,
                "ok": s.status == "ok",
                "version": s.version.as_deref().map(|v| &v[..v.len().min(12)]),
                "loaded_at": s.loaded_at,
                "error": s.last_error.as_ref().map(|e| json!({
                    "message": e.message, "line": e.line, "column": e.column,
                    "function": e.function, "text": e.to_string(),
                })),
            })
        })
        .collect();
    let templates = state.templates.statuses();
    let data = json!({
        "plugins": list,
        "templates": templates,
        "reloads": state.registry.reloads.load(std::sync::atomic::Ordering::Relaxed),
        "failures": state.registry.reload_failures.load(std::sync::atomic::Ordering::Relaxed),
    });
    page(&state, Some(&session), "admin_plugins", "Plugins", data)
}

pub async fn plugin(
    state: State,
    session: Session,
    path: web::Path<(String, String)>,
) -> PageResult {
    admin_only(&session)?;
    let (kind, name) = path.into_inner();
    let kind = match kind.as_str() {
        "rubric" => PluginKind::Rubric,
        "router" => PluginKind::Router,
        _ => return Err(AppError::NotFound("plugin kind").into()),
    };
    let st = state.clone();
    let n = name.clone();
    let versions = blocking(move || Ok(st.store().plugin_versions(kind, &n)?)).await?;
    if versions.is_empty() {
        return Err(AppError::NotFound("plugin").into());
    }
    let current = state
        .registry
        .current(kind, &name)
        .ok()
        .map(|p| p.hash.clone());
    let list: Vec<_> = versions
        .iter()
        .rev()
        .map(|v| json!({
            "hash": v.hash, "short": &v.hash[..v.hash.len().min(12)], "first_seen_at": v.first_seen_at,
            "current": current.as_deref() == Some(v.hash.as_str()), "source": v.source,
        }))
        .collect();
    let data = json!({ "kind": kind.as_str(), "name": name, "versions": list });
    page(
        &state,
        Some(&session),
        "admin_plugin",
        &format!("Plugin · {name}"),
        data,
    )
}
