use actix_web::HttpResponse;

use super::State;

/// Liveness: the process answers, and whether its storage works (503 `degraded` when the
/// latest flush failed, e.g. a full disk; the server recovers on its own once it works again).
pub async fn healthz(state: State) -> HttpResponse {
    match state.storage_failure() {
        None => HttpResponse::Ok().json(serde_json::json!({"status": "ok"})),
        Some(e) => {
            let storage = if crate::error::is_disk_full(&e) {
                "full"
            } else {
                "failing"
            };
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"status": "degraded", "storage": storage}))
        }
    }
}

/// Readiness: the hand-out index is loaded and the store answers a read. Anonymous and cheap:
/// it never writes or flushes (a flush per probe would let anyone make the disk work).
pub async fn readyz(state: State) -> HttpResponse {
    if !state.is_ready() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "loading"}));
    }
    let store = state.store().clone();
    match crate::review::blocking(move || Ok(store.user_count()?)).await {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(e) => {
            tracing::error!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "unavailable"}))
        }
    }
}

/// Prometheus text format: what an operator asks about.
pub async fn metrics(state: State, req: actix_web::HttpRequest) -> HttpResponse {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    // Behind a token when one is configured (`server.metrics_token`).
    let token = &state.config.server.metrics_token;
    if !token.is_empty() {
        let sent = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(sent.as_bytes(), token.as_bytes()) {
            return actix_web::ResponseError::error_response(
                &crate::error::AppError::Unauthorized(
                    "/metrics needs the metrics token (server.metrics_token) as a Bearer token",
                ),
            );
        }
    }
    let r = &state.registry;
    let statuses = r.statuses();
    let failing = statuses.iter().filter(|s| s.status == "error").count();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "assay_plugin_reloads_total",
        "counter",
        "Plugin versions swapped in while running.",
        r.reloads.load(Relaxed),
    );
    metric(
        "assay_plugin_reload_failures_total",
        "counter",
        "Plugin loads that failed (the previous version kept serving).",
        r.reload_failures.load(Relaxed),
    );
    metric(
        "assay_plugins_failing",
        "gauge",
        "Plugins whose last load failed.",
        failing as u64,
    );
    metric(
        "assay_plugins",
        "gauge",
        "Plugins known.",
        statuses.len() as u64,
    );
    metric(
        "assay_script_failures_total",
        "counter",
        "Script calls that failed or timed out.",
        r.engine.failures.load(Relaxed),
    );
    metric(
        "assay_script_prints_dropped_total",
        "counter",
        "Lines scripts printed over their rate limit (not logged).",
        r.engine.prints_dropped(),
    );
    let (flushes, waits) = state.flush_counts();
    metric(
        "assay_group_flushes_total",
        "counter",
        "Durability operations: flushes of the store and syncs of its submit log (each a write and, by default, an fdatasync).",
        flushes,
    );
    metric(
        "assay_durable_writes_total",
        "counter",
        "Writes that waited for one of them; divided by the flushes, writers per flush.",
        waits,
    );
    let _ = writeln!(
        out,
        "# HELP assay_build_info The running build.\n# TYPE assay_build_info gauge\nassay_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP assay_process_start_time_seconds When the process started, seconds since the epoch.\n# TYPE assay_process_start_time_seconds gauge\nassay_process_start_time_seconds {}",
        state.started_at() / 1000
    );
    let _ = writeln!(out, "# HELP assay_queue_open_tasks Tasks waiting for reviews, per project.\n# TYPE assay_queue_open_tasks gauge");
    let depths = state.queue_depths();
    for d in &depths {
        let _ = writeln!(
            out,
            "assay_queue_open_tasks{{project=\"{}\"}} {}",
            d.project, d.open
        );
    }
    let _ = writeln!(out, "# HELP assay_qa_waiting_tasks Tasks waiting in QA, per project.\n# TYPE assay_qa_waiting_tasks gauge");
    for d in &depths {
        let _ = writeln!(
            out,
            "assay_qa_waiting_tasks{{project=\"{}\"}} {}",
            d.project, d.qa
        );
    }
    let _ = writeln!(
        out,
        "# HELP assay_open_leases Live review leases, per project.\n# TYPE assay_open_leases gauge"
    );
    for d in &depths {
        let _ = writeln!(
            out,
            "assay_open_leases{{project=\"{}\"}} {}",
            d.project, d.leases
        );
    }
    state.metrics.render(&mut out);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// Compares without stopping at the first difference (the token's length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
