//! The one pool of threads for blocking work (sled, Rhai, argon2). With a thread pool per HTTP
//! worker (tokio's default) dozens of threads compete for two cores and throughput drops by a
//! fifth; a few hot threads and a queue do better. Like the tokio runtime itself it is an
//! executor, set once at start-up, not application state.

use std::sync::OnceLock;

use crate::error::{AppError, AppResult};

static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Sizes the blocking pool; call once before serving. Later calls have no effect.
pub fn init(threads: usize) -> std::io::Result<()> {
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
