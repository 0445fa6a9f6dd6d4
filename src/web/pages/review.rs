//! The review page: the expert's current lease in a project (or a new one), with the task
//! rendered by its conventions and a form built from the rubric's criteria. The page's script
//! talks to the JSON API for heartbeats, submit, skip and release.
//!
//! A GET only shows: the lease the expert already holds, or a "start" form. Taking a lease is
//! a POST with the form's CSRF token, so a link or an image pointing at the page (task content
//! included) can never take a lease on someone's behalf.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::account::CsrfForm;
use super::view::{criteria_view, response_labels, task_view};
use super::{page, PageError, PageResult, Session};
use crate::app::AppState;
use crate::domain::{Id, Project};
use crate::error::AppError;
use crate::review::Handout;
use crate::services::projects;

pub async fn review(state: web::Data<AppState>, session: Session, id: web::Path<Id>) -> PageResult {
    let (project, _) = projects::access(&state.core, &session.user, id.into_inner()).await?;
    let Some(handout) = state.core.current(session.user.clone(), project.id).await? else {
        return start_page(&state, &session, &project, None);
    };
    match review_page(&state, &session, &project, &handout) {
        Ok(page) => Ok(page),
        // A GET changes nothing: the start form's POST sets the task aside and serves the next.
        Err(_) => start_page(
            &state,
            &session,
            &project,
            Some("The task you hold could not be shown. Continuing sets it aside for an administrator and hands you the next one."),
        ),
    }
}

fn start_page(
    state: &AppState,
    session: &Session,
    project: &Project,
    problem: Option<&str>,
) -> PageResult {
    let data = json!({
        "project": { "id": project.id, "name": project.name },
        "problem": problem,
    });
    page(
        state,
        Some(session),
        "start_review",
        "Start reviewing",
        data,
    )
}

/// The review page for a held lease.
fn review_page(
    state: &AppState,
    session: &Session,
    project: &Project,
    handout: &Handout,
) -> PageResult {
    let labels = response_labels(&handout.criteria);
    let content = handout.task.content();
    let lease_seconds = project.lease_seconds;
    let data = json!({
        "project": { "id": project.id, "name": project.name },
        "instructions": if handout.instructions.trim().is_empty() { None } else { Some(&handout.instructions) },
        "assignment": {
            "id": handout.assignment.id,
            "token": handout.assignment.token,
            "expires_at": handout.assignment.expires_at,
            "served_at": handout.assignment.served_at,
            "rubric_version": handout.assignment.rubric_version,
        },
        "task": {
            "id": handout.task.id,
            "external_id": handout.task.external_id,
            "view": task_view(&content, &labels),
        },
        "criteria": criteria_view(&handout.criteria, &content),
        "lease_seconds": lease_seconds,
        // Heartbeats well inside the lease; active time stops counting after this idle gap.
        "heartbeat_seconds": (lease_seconds / 3).clamp(5, 30),
        "idle_seconds": state.config.queue.idle_cutoff_seconds,
        "server_now": crate::now_ms(),
    });
    page(
        state,
        Some(session),
        "review",
        &format!("Review · {}", project.name),
        data,
    )
}

/// Takes the next lease (or keeps the held one) and shows it through the GET, so a reload
/// never posts again.
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
        "review",
        |core, user, project| {
            let (state, session) = (state.clone(), session.clone());
            Box::pin(async move {
                // A task whose page cannot be rendered (a template that fails on its content)
                // is set aside like one whose form fails, and the next one is tried.
                for _ in 0..MAX_UNRENDERABLE_PER_START {
                    let Some(handout) = core.next(user.clone(), project.id).await? else {
                        return Ok(false);
                    };
                    let rendered = review_page(&state, &session, &project, &handout)
                        .map(|_| ())
                        .map_err(|e| match e {
                            // The template's own words, for the admin who reads the quarantine.
                            PageError::App(AppError::Internal(cause)) => cause,
                            other => other.to_string(),
                        });
                    match rendered {
                        Ok(()) => return Ok(true),
                        Err(e) => {
                            let error = format!("the review page could not be rendered: {e}");
                            tracing::warn!(task = handout.task.id, %error, "task set aside");
                            core.set_aside_unrenderable(
                                user.clone(),
                                project.id,
                                handout.assignment.id,
                                error,
                            )
                            .await?;
                        }
                    }
                }
                Err(AppError::internal(
                    "the review page could not be rendered for several tasks in a row",
                ))
            })
        },
    )
    .await
}

/// Tasks one start may set aside for a failed render before it answers with the error.
const MAX_UNRENDERABLE_PER_START: usize = 3;

/// What a start form does, for reviews and QA alike: checks the form's CSRF token and the
/// project, runs `take` on the project (true when something was taken or is held), then sends
/// the browser to `/p/{id}/{page}` by a GET, or shows "nothing waiting".
pub(super) async fn take_then_show<F>(
    state: &web::Data<AppState>,
    session: &Session,
    id: Id,
    csrf: &str,
    page_name: &str,
    take: F,
) -> PageResult
where
    F: FnOnce(
        std::sync::Arc<crate::review::ReviewCore>,
        crate::domain::User,
        Project,
    ) -> futures_util::future::BoxFuture<'static, crate::error::AppResult<bool>>,
{
    session.check_form(state, csrf)?;
    let (project, _) = projects::access(&state.core, &session.user, id).await?;
    let (pid, name) = (project.id, project.name.clone());
    if !take(state.core.clone(), session.user.clone(), project).await? {
        let data = json!({ "project": { "id": pid, "name": name } });
        return page(
            state,
            Some(session),
            "nothing_left",
            "Nothing waiting",
            data,
        );
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("/p/{pid}/{page_name}")))
        .finish())
}
