//! The audit log for admins: filtered reads (JSON or CSV) and the hash chain's check.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::State;
use crate::auth::Admin;
use crate::domain::AuditEvent;
use crate::error::{AppError, AppResult};
use crate::services::blocking;

/// Events looked at for one filtered read at most (the newest first).
const SCAN: usize = 200_000;

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub limit: Option<usize>,
    /// A user id.
    pub actor: Option<u64>,
    /// An action name (`task.view`) or its first part (`task`).
    pub action: Option<String>,
    /// An object (`task:12`) or its prefix (`task:`).
    pub object: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// `json` (default) or `csv`.
    #[schemars(extend("enum" = ["json", "csv"]))]
    pub format: Option<String>,
}

impl AuditQuery {
    fn admits(&self, e: &AuditEvent) -> bool {
        let action = serde_json::to_value(e.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.actor.is_none_or(|a| e.actor == Some(a))
            && self
                .action
                .as_deref()
                .is_none_or(|want| action == want || action.split('.').next() == Some(want))
            && self
                .object
                .as_deref()
                .is_none_or(|o| e.object.starts_with(o))
    }
}

/// Filtered events, newest first.
pub async fn query(state: &State, q: AuditQuery) -> AppResult<(Vec<AuditEvent>, AuditQuery)> {
    for (field, value) in [("action", &q.action), ("object", &q.object)] {
        if value.as_ref().is_some_and(|v| v.len() > 200) {
            return Err(AppError::field(field, "must be at most 200 bytes"));
        }
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let st = state.clone();
    blocking(move || {
        let events = st.store().audit_between(
            q.from.unwrap_or(0),
            q.to.unwrap_or(i64::MAX / 2),
            limit,
            SCAN,
            &|e| q.admits(e),
        )?;
        Ok((events, q))
    })
    .await
}

/// `GET /audit?actor=&action=&object=&from=&to=&limit=&format=json|csv` (admins).
pub async fn recent(
    state: State,
    _admin: Admin,
    q: web::Query<AuditQuery>,
) -> AppResult<HttpResponse> {
    let q = q.into_inner();
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(AppError::field("format", "must be json or csv")),
    };
    let (events, _) = query(&state, q).await?;
    if !csv {
        return Ok(HttpResponse::Ok().json(events));
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"assay-audit.csv\"",
        ))
        .body(to_csv(&events)))
}

/// One row per event: at (ms), actor, action, object, detail (JSON). Cells are quoted, and a
/// cell that a spreadsheet would read as a formula is prefixed with `'`.
pub fn to_csv(events: &[AuditEvent]) -> String {
    fn cell(s: &str) -> String {
        let guarded = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}")
        } else {
            s.to_owned()
        };
        format!("\"{}\"", guarded.replace('"', "\"\""))
    }
    let mut out = String::from("at,actor,action,object,detail\n");
    for e in events {
        let action = serde_json::to_value(e.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let actor = e.actor.map(|a| a.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            e.at,
            cell(&actor),
            cell(&action),
            cell(&e.object),
            cell(&e.detail.to_string())
        ));
    }
    out
}

/// `GET /audit/verify` (admins): checks the whole chain as the sealer has built it (events of
/// the last seconds are not sealed yet).
pub async fn verify(state: State, _admin: Admin) -> AppResult<HttpResponse> {
    let st = state.clone();
    let check = blocking(move || Ok(st.store().verify_audit()?)).await?;
    Ok(HttpResponse::Ok().json(check))
}
