//! How a domain error reaches a client: its HTTP status and one body shape for every error
//! (`code`, `message`, `request_id`, and the field, record or script details where there are).

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;

use crate::error::{AppError, ScriptError};

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    script: Option<&'a ScriptError>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::InvalidField(_) => StatusCode::BAD_REQUEST,
            Self::InvalidAnswer(_) | Self::ImportRejected { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::StorageReopening(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Script(_) | Self::PluginUnavailable { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Self::StorageReopening(_) = self {
            // The watchdog reopens the store within a few seconds.
            response.insert_header((actix_web::http::header::RETRY_AFTER, "2"));
        }
        response.json(error_body(self))
    }
}

/// The one body of every error (logged once, here): also the trailer record of an export that
/// fails after it began streaming.
pub fn error_body(error: &AppError) -> serde_json::Value {
    let request_id = crate::web::request_id::current();
    error.log(&request_id);
    let errors = match error {
        AppError::InvalidAnswer(list) => serde_json::to_value(list).ok(),
        AppError::InvalidField(e) => serde_json::to_value([e]).ok(),
        AppError::ImportRejected { errors, .. } => serde_json::to_value(errors).ok(),
        _ => None,
    };
    let script = match error {
        AppError::Script(e) => Some(e),
        _ => None,
    };
    serde_json::to_value(ErrorBody {
        code: error.code().as_str(),
        message: error.to_string(),
        request_id,
        errors,
        script,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    /// A store waiting for its reopen answers 503 with its own code and a hint when to retry:
    /// the client is to send the request again, not to report a failure.
    #[test]
    fn a_store_waiting_to_be_reopened_answers_503_with_a_retry_hint() {
        let error = AppError::from(crate::store::StoreError::Reopening("batch 7".into()));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let body = response.into_body().try_into_bytes().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "storage_reopening");
        assert!(!body["message"].as_str().unwrap().contains("batch 7"));
        // Unless the write failed for a full disk, which frees no space by reopening.
        let full = crate::store::StoreError::Reopening("batch 8 (No space left on device)".into());
        let response = AppError::from(full).error_response();
        assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
    }
}
