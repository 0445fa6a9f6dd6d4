use actix_web::{web, HttpResponse};

use super::State;
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::scripting::PluginKind;
use crate::services::{blocking, projects};

/// Every plugin with its kind, current version and status; its file and last error only for
/// admins and leads.
pub async fn list(state: State, caller: Caller) -> AppResult<HttpResponse> {
    let mut statuses = state.registry.statuses();
    if !projects::oversees_any(&state.core, &caller.0).await? {
        for status in &mut statuses {
            status.file = String::new();
            status.last_error = None;
        }
    }
    Ok(HttpResponse::Ok().json(statuses))
}

/// Plugin sources hold what experts must not see (gold patterns, grading, tests).
async fn oversee(state: &State, caller: &Caller) -> AppResult<()> {
    if projects::oversees_any(&state.core, &caller.0).await? {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "plugin versions are for admins and leads",
        ))
    }
}

fn kind(s: &str) -> AppResult<PluginKind> {
    match s {
        "rubric" | "rubrics" => Ok(PluginKind::Rubric),
        "router" | "routers" | "plugins" => Ok(PluginKind::Router),
        _ => Err(AppError::NotFound("plugin kind")),
    }
}

/// `GET /plugins/{kind}/{name}/versions`: every stored version, oldest first, without source.
pub async fn versions(
    state: State,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    oversee(&state, &caller).await?;
    let (k, name) = path.into_inner();
    let k = kind(&k)?;
    let current = state
        .registry
        .current(k, &name)
        .ok()
        .map(|p| p.hash.clone());
    let st = state.clone();
    let list = blocking(move || Ok(st.store().plugin_versions(k, &name)?)).await?;
    let out: Vec<_> = list
        .into_iter()
        .map(|v| {
            serde_json::json!({
                "hash": v.hash, "kind": v.kind, "name": v.name, "first_seen_at": v.first_seen_at,
                "current": current.as_deref() == Some(v.hash.as_str()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /plugins/{kind}/{name}/versions/{hash}`: one version with its source.
pub async fn version(
    state: State,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> AppResult<HttpResponse> {
    oversee(&state, &caller).await?;
    let (k, name, hash) = path.into_inner();
    let k = kind(&k)?;
    let st = state.clone();
    let v = blocking(move || Ok(st.store().plugin_version(&hash)?)).await?;
    match v {
        Some(v) if v.kind == k && v.name == name => Ok(HttpResponse::Ok().json(v)),
        _ => Err(AppError::NotFound("plugin version")),
    }
}
