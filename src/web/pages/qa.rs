//! The reviewer's QA page and the expert's "My work". Like the review page, a GET only shows
//! (the held QA item, or a start form) and taking an item is a POST. The page's script talks
//! to the JSON API: `y` accepts, `n` rejects (with a reason), `e` fixes (the rubric's form,
//! pre-filled with the answer, with a diff against the original); an adjudication starts the
//! final answer's form from one of the answers (`1`–`9`) or writes it fresh.

use actix_web::web;
use serde_json::json;

use super::account::CsrfForm;
use super::review::take_then_show;
use super::view::{answer_view, criteria_view, response_labels, task_view};
use super::{page, PageResult, Session};
use crate::app::AppState;
use crate::domain::{Id, QaKind};
use crate::services::{blocking, projects};

pub async fn qa(state: web::Data<AppState>, session: Session, id: web::Path<Id>) -> PageResult {
    let (project, _) = projects::access(&state.core, &session.user, id.into_inner()).await?;
    let Some(item) = state
        .core
        .qa_current(session.user.clone(), project.id)
        .await?
    else {
        let data = json!({ "project": { "id": project.id, "name": project.name },
            "start_url": format!("/p/{}/qa", project.id), "what": "a QA item" });
        return page(&state, Some(&session), "start_review", "Start QA", data);
    };
    let labels = response_labels(&item.criteria);
    let content = item.task.content();
    let submissions: Vec<_> = item
        .submissions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "n": i + 1, "id": s.id, "expert": s.expert,
                "fields": answer_view(&item.criteria, &content, &s.answer),
                "answer_json": serde_json::to_string_pretty(&s.answer).unwrap_or_default(),
                "active_seconds": s.active_seconds,
            })
        })
        .collect();
    let data = json!({
        "project": { "id": project.id, "name": project.name },
        "adjudicate": item.kind == QaKind::Adjudicate,
        "assignment": item.assignment,
        "task": { "id": item.task.id, "external_id": item.task.external_id,
                  "view": task_view(&content, &labels) },
        "submissions": submissions,
        // The rubric's form, for fixes and final answers.
        "criteria": criteria_view(&item.criteria, &content),
        "instructions": if item.instructions.trim().is_empty() { None } else { Some(&item.instructions) },
    });
    let title = if item.kind == QaKind::Adjudicate {
        "Adjudicate"
    } else {
        "QA"
    };
    page(
        &state,
        Some(&session),
        "qa",
        &format!("{title} · {}", project.name),
        data,
    )
}

/// Takes the next QA item (or keeps the held one) and shows it through the GET.
pub async fn start(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<Id>,
    form: web::Form<CsrfForm>,
) -> PageResult {
    take_then_show(
        &state,
        &session,
        id.into_inner(),
        form.csrf(),
        "qa",
        |core, user, p| Box::pin(async move { Ok(core.qa_next(user, p.id).await?.is_some()) }),
    )
    .await
}

/// The expert's own submissions of the last 30 days, with verdicts and reasons.
pub async fn my_work(state: web::Data<AppState>, session: Session) -> PageResult {
    let (st, me) = (state.clone(), session.user.id);
    let since = crate::now_ms() - 30 * 24 * 3600 * 1000;
    let subs = blocking(move || Ok(st.store().expert_submissions_since(me, since)?)).await?;
    let rows: Vec<_> = subs
        .iter()
        .rev()
        .take(500)
        .map(|s| {
            let qa = s.qa.as_ref();
            json!({
                "id": s.id, "task_id": s.task_id, "project_id": s.project_id,
                "submitted_at": s.submitted_at, "active_seconds": s.active_seconds,
                "verdict": qa.map(|q| q.verdict), "reason": qa.and_then(|q| q.reason.clone()),
                "fixed": qa.is_some_and(|q| q.fixed_answer.is_some()),
            })
        })
        .collect();
    let data = json!({ "submissions": rows });
    page(&state, Some(&session), "my_work", "My work", data)
}
