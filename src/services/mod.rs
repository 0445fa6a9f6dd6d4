//! Business rules, free of HTTP. Each function takes the state and typed input and returns a
//! typed result or an [`AppError`]. Blocking work (sled, Rhai, argon2) runs through [`blocking`].

pub mod imports;
pub mod projects;
pub mod review;
pub mod routing;
pub mod users;

use std::sync::OnceLock;

use crate::app::AppState;
use crate::domain::{AuditEvent, Id};
use crate::error::{AppError, AppResult};

/// The threads that run blocking work (sled, Rhai, argon2). One small pool for the process:
/// with a thread pool per HTTP worker (tokio's default) dozens of threads compete for two cores
/// and throughput drops by a fifth; a few hot threads and a queue do better. Like the tokio
/// runtime itself it is an executor, set once at start-up, not application state.
static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Sizes the blocking pool; call once before serving. Later calls have no effect.
pub fn init_pool(threads: usize) -> std::io::Result<()> {
    if POOL.get().is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(threads.max(1))
            .thread_name("assay-blocking")
            .build()?;
        let _ = POOL.set(runtime);
    }
    Ok(())
}

/// Runs blocking work on the blocking pool, keeping the caller's tracing span.
pub async fn blocking<R, F>(f: F) -> AppResult<R>
where
    F: FnOnce() -> AppResult<R> + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    let task = move || span.in_scope(f);
    let handle = match POOL.get() {
        Some(pool) => pool.spawn_blocking(task),
        None => tokio::task::spawn_blocking(task),
    };
    handle
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
