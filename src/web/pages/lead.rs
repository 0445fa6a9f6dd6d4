//! Pages for those who oversee a project (leads and admins): submissions, each beside its task
//! as the expert saw it (the rubric version the expert was served), and the project's stats.

use actix_web::web;
use serde::Deserialize;
use serde_json::json;

use super::view::{answer_view, response_labels, task_view};
use super::{page, PageResult, Session};
use crate::app::AppState;
use crate::domain::Id;
use crate::error::AppError;
use crate::scripting::{rubric, PluginKind};
use crate::services::{blocking, projects};

const PAGE: usize = 20;

#[derive(Deserialize)]
pub struct PageQuery {
    after: Option<Id>,
}

async fn overseen(
    state: &AppState,
    session: &Session,
    id: Id,
) -> Result<crate::domain::Project, AppError> {
    let (project, access) = projects::access(&state.core, &session.user, id).await?;
    if !access.can_oversee() {
        return Err(AppError::Forbidden("this page is for the project's leads"));
    }
    Ok(project)
}

pub async fn submissions(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<Id>,
    q: web::Query<PageQuery>,
) -> PageResult {
    let project = overseen(&state, &session, id.into_inner()).await?;
    let st = state.clone();
    let (pid, after) = (project.id, q.after);
    let items = state.in_project(pid, move || {
        let subs = st.store().submissions_page(pid, after, PAGE)?;
        let mut out = Vec::with_capacity(subs.len());
        for s in &subs {
            let Some(task) = st.store().task(s.task_id)? else {
                continue;
            };
            let expert = st
                .store()
                .cached_user(s.expert_id)
                .or(st.store().user(s.expert_id)?)
                .map(|u| u.username)
                .unwrap_or_else(|| format!("user {}", s.expert_id));
            // The form as this expert saw it: the rubric version recorded with the answer.
            let criteria = st
                .registry
                .version(PluginKind::Rubric, &s.rubric, &s.rubric_version)
                .and_then(|r| {
                    Ok(rubric::criteria(&st.registry.engine, &r, &rubric::task_value(&task))?)
                });
            let (answer, rubric_error) = match criteria {
                Ok(c) => (
                    json!({ "labels": response_labels(&c), "fields": answer_view(&c, &task.data, &s.answer) }),
                    None,
                ),
                Err(e) => (json!({ "labels": [], "fields": [] }), Some(e.to_string())),
            };
            let labels: Vec<String> = answer["labels"]
                .as_array()
                .map(|l| l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            out.push(json!({
                "id": s.id, "task_id": s.task_id, "external_id": task.external_id,
                "expert": expert, "submitted_at": s.submitted_at, "active_seconds": s.active_seconds,
                "rubric": s.rubric, "rubric_version": &s.rubric_version[..s.rubric_version.len().min(12)],
                "scores": s.scores, "has_scores": s.scores.as_object().is_some_and(|m| !m.is_empty()),
                "task": task_view(&task.data, &labels),
                "fields": answer["fields"], "rubric_error": rubric_error, "raw": s.answer,
            }));
        }
        let next = (subs.len() == PAGE).then(|| subs.last().map(|s| s.id)).flatten();
        Ok((out, next))
    })
    .await?;
    let data = json!({
        "project": { "id": project.id, "name": project.name },
        "submissions": items.0, "next_after": items.1, "first_page": q.after.is_none(),
    });
    page(
        &state,
        Some(&session),
        "submissions",
        &format!("Submissions · {}", project.name),
        data,
    )
}

pub async fn stats(state: web::Data<AppState>, session: Session, id: web::Path<Id>) -> PageResult {
    let project = overseen(&state, &session, id.into_inner()).await?;
    let st = state.clone();
    let pid = project.id;
    let (counts, hourly, first_hour, per_expert, rejections) = blocking(move || {
        let counts = st.store().project_counts(pid)?;
        let this_hour = crate::now_ms().div_euclid(3_600_000);
        let first = this_hour - 23;
        Ok((
            counts,
            st.store().submissions_per_hour(pid, first, 24)?,
            first,
            qa_per_expert(&st, pid)?,
            recent_rejections(&st, pid)?,
        ))
    })
    .await?;
    let peak = hourly.iter().copied().max().unwrap_or(0).max(1);
    let last_24h: u64 = hourly.iter().sum();
    let hours: Vec<_> = hourly
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = (first_hour + i as i64) * 3_600_000;
            json!({ "at": at, "count": n, "peak": peak })
        })
        .rev() // newest hour first
        .collect();
    let pct = |n: u64| {
        if counts.tasks == 0 {
            0.0
        } else {
            (n as f64 * 1000.0 / counts.tasks as f64).round() / 10.0
        }
    };
    let data = json!({
        "project": { "id": project.id, "name": project.name, "reviews_per_task": project.reviews_per_task },
        "counts": counts,
        "states": [
            { "name": "open", "count": counts.open, "pct": pct(counts.open) },
            { "name": "in QA", "count": counts.in_qa, "pct": pct(counts.in_qa) },
            { "name": "complete", "count": counts.complete, "pct": pct(counts.complete) },
            { "name": "archived", "count": counts.archived, "pct": pct(counts.archived) },
        ],
        "hours": hours, "last_24h": last_24h,
        "qa": { "waiting": counts.in_qa, "accepted": counts.accepted, "rejected": counts.rejected,
                "fixed": counts.fixed, "adjudicated": counts.adjudicated,
                "per_expert": per_expert, "rejections": rejections },
        "per_hour": format!("{:.1}", last_24h as f64 / 24.0),
    });
    page(
        &state,
        Some(&session),
        "stats",
        &format!("Stats · {}", project.name),
        data,
    )
}

/// Accept / reject / fix counts on each member's submissions (kept counters, no scan).
fn qa_per_expert(st: &AppState, project: Id) -> crate::error::AppResult<Vec<serde_json::Value>> {
    use crate::domain::Verdict;
    use crate::review::qa::expert_counter;
    let mut out = Vec::new();
    for (uid, _) in st.store().members(project)? {
        let count = |v| st.store().project_counter(project, &expert_counter(v, uid));
        let (a, r, f) = (
            count(Verdict::Accept)?,
            count(Verdict::Reject)?,
            count(Verdict::Fix)?,
        );
        if a + r + f == 0 {
            continue;
        }
        let name = st
            .store()
            .user(uid)?
            .map_or_else(|| format!("user {uid}"), |u| u.username);
        out.push(json!({ "expert": name, "accepted": a, "rejected": r, "fixed": f }));
    }
    Ok(out)
}

/// The latest rejections in the project, from the audit log's recent events.
fn recent_rejections(
    st: &AppState,
    project: Id,
) -> crate::error::AppResult<Vec<serde_json::Value>> {
    let events = st.store().recent_audit(2000)?;
    Ok(events
        .into_iter()
        .filter(|e| {
            e.action == crate::domain::AuditAction::QaVerdict
                && e.detail["project"] == project
                && e.detail["verdict"] == "reject"
        })
        .take(20)
        .map(|e| {
            json!({ "at": e.at, "object": e.object, "task": e.detail["task"],
                    "reason": e.detail["reason"] })
        })
        .collect())
}
