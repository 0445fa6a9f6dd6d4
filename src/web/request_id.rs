//! A request id for every request: returned in `X-Request-Id`, put in every error body, and
//! attached to the request's tracing span so the log and the client can be matched.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, or `-` outside a request.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The caller's own `X-Request-Id` when it is a sane one (1–64 of `A-Za-z0-9-_.:`), so a
/// request can be followed through a proxy; a fresh id otherwise.
fn request_id(req: &ServiceRequest) -> String {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    given.map_or_else(new_id, str::to_owned)
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request_id(&req);
    let metrics = req
        .app_data::<actix_web::web::Data<crate::app::AppState>>()
        .map(|s| s.metrics.clone());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.path());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let mut res = REQUEST_ID
        .scope(id.clone(), next.call(req).instrument(span.clone()))
        .await?;
    if let Some(m) = metrics {
        let pattern = res.request().match_pattern();
        m.observe_route(
            &method,
            pattern.as_deref(),
            res.status().as_u16(),
            started.elapsed().as_micros() as u64,
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    span.in_scope(|| {
        tracing::debug!(
            status = res.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "done"
        )
    });
    Ok(res)
}
