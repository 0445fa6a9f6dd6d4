//! The expert's home: their projects with what is waiting for them, tasks done today, hours
//! (server-measured active time) this week and, when a rate is set, what that earned.

use actix_web::web;
use serde_json::json;

use super::{page, PageResult, Session};
use crate::app::AppState;
use crate::domain::ProjectRole;
use crate::services::{blocking, projects};

const DAY_MS: i64 = 86_400_000;
/// How far "waiting" counts before saying "100+".
const WAITING_CAP: usize = 100;

pub async fn home(state: web::Data<AppState>, session: Session) -> PageResult {
    let listed = projects::visible(&state.core, &session.user).await?;
    state.ready().await;
    let st = state.clone();
    let user = session.user.clone();
    let data = blocking(move || {
        let now = crate::now_ms();
        let today = now - now.rem_euclid(DAY_MS);
        // 1970-01-01 was a Thursday: weeks start on Monday, 00:00 UTC.
        let days_since_monday = (now.div_euclid(DAY_MS) + 3).rem_euclid(7);
        let week = today - days_since_monday * DAY_MS;
        let done = st.store().expert_submissions_since(user.id, week)?;
        let done_today = done.iter().filter(|s| s.submitted_at >= today).count();
        let seconds_week: f64 = done.iter().map(|s| s.active_seconds).sum();
        let earned = user.hourly_rate.map(|r| r * seconds_week / 3600.0);

        let mut projects = Vec::new();
        for (p, role) in listed {
            let waiting = st.waiting_for(&user, p.id, WAITING_CAP + 1);
            let done_here = done
                .iter()
                .filter(|s| s.project_id == p.id && s.submitted_at >= today)
                .count();
            let oversee = role.is_none() || role == Some(ProjectRole::Lead);
            projects.push(json!({
                "id": p.id, "name": p.name,
                "role": match role { Some(ProjectRole::Lead) => "lead", Some(ProjectRole::Expert) => "expert", Some(ProjectRole::Reviewer) => "reviewer", None => "admin" },
                "waiting": if waiting > WAITING_CAP { format!("{WAITING_CAP}+") } else { waiting.to_string() },
                "has_work": waiting > 0, "done_today": done_here, "oversee": oversee,
                "checks": role.is_none_or(|r| r.checks_quality()),
            }));
        }
        Ok(json!({
            "projects": projects,
            "done_today": done_today,
            "done_week": done.len(),
            "seconds_week": seconds_week,
            "earned": earned.map(|e| format!("{e:.2}")),
        }))
    })
    .await?;
    page(&state, Some(&session), "home", "Your projects", data)
}
