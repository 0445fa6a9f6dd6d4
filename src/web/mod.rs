//! The HTTP layer: the JSON API, request ids, security headers, and extractor configuration that
//! routes every malformed request through the one error type.

pub mod api;
pub mod body_deadline;
pub mod client;
pub mod error;
pub mod openapi;
pub mod pages;
pub mod request_id;

use actix_web::middleware::DefaultHeaders;
use actix_web::web::{JsonConfig, PathConfig, QueryConfig};

use crate::error::{AppError, ErrorCode};

pub fn json_config(limit: usize) -> JsonConfig {
    JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let e = match &err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => {
                    AppError::PayloadTooLarge(format!("{} KiB", limit / 1024))
                }
                E::ContentType => AppError::bad_request(
                    ErrorCode::UnsupportedMediaType,
                    "the body must be JSON with Content-Type: application/json",
                ),
                E::Deserialize(e) => AppError::bad_request(ErrorCode::InvalidJson, e.to_string()),
                E::Payload(e) => body_deadline::body_error(e),
                other => AppError::bad_request(ErrorCode::InvalidJson, other.to_string()),
            };
            e.into()
        })
}

pub fn query_config() -> QueryConfig {
    QueryConfig::default().error_handler(|err, _req| {
        AppError::bad_request(ErrorCode::InvalidQuery, err.to_string()).into()
    })
}

pub fn path_config() -> PathConfig {
    PathConfig::default().error_handler(|err, _req| {
        AppError::bad_request(ErrorCode::InvalidPath, err.to_string()).into()
    })
}

/// Headers every response carries.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ))
}
