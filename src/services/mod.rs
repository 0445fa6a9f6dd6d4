//! Business rules, free of HTTP. Each function takes the state and typed input and returns a
//! typed result or an [`AppError`]. Blocking work (sled, Rhai, argon2) runs through [`blocking`].

pub mod imports;
pub mod projects;
pub mod review;
pub mod routing;
pub mod users;

use crate::app::AppState;
use crate::domain::{AuditEvent, Id};
use crate::error::{AppError, AppResult};

/// Runs blocking work on the blocking pool, keeping the caller's tracing span.
pub async fn blocking<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| AppError::internal(format!("blocking task failed: {e}")))?
}

/// Appends an audit event; a failure is logged, never shown to the caller.
pub fn audit(
    state: &AppState,
    actor: Option<Id>,
    action: &str,
    object: String,
    detail: serde_json::Value,
) {
    let event = AuditEvent {
        at: crate::now_ms(),
        actor,
        action: action.to_owned(),
        object,
        detail,
    };
    if let Err(e) = state.store.append_audit(&event) {
        tracing::error!(error = %e, action, "could not append audit event");
    }
}

/// Waits for everything written so far to be durable.
pub async fn durable(state: &AppState) -> AppResult<()> {
    state
        .flusher
        .wait()
        .await
        .map_err(|e| AppError::internal(format!("flush failed: {e}")))
}
