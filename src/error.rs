//! One error type for the whole server: every failure has a stable machine code, an HTTP status
//! and a message that is safe to show. Causes that must not reach the client go to the log,
//! tagged with the request id that the client also receives.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;

use crate::scripting::ScriptError;

/// A problem with one field of a request or an answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem with one record of an import.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordError {
    /// 1-based position of the record in the upload.
    pub record: u64,
    /// 1-based line, where the format has lines (JSON Lines, or where the parser knows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("invalid field `{}`: {}", .0.field, .0.message)]
    InvalidField(FieldError),
    #[error("the answer is not valid")]
    InvalidAnswer(Vec<FieldError>),
    #[error("the import was rejected: {bad} invalid record(s), nothing was imported")]
    ImportRejected { bad: u64, errors: Vec<RecordError> },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("too many attempts, try again later")]
    TooManyRequests,
    #[error("the request body is larger than the {0} MiB limit")]
    PayloadTooLarge(u64),
    #[error("{0}")]
    Script(ScriptError),
    #[error("plugin `{name}` is not loaded: {reason}")]
    PluginUnavailable { name: String, reason: String },
    /// Storage, I/O and other failures of the server itself. The cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
    /// Logs the error with its request id: causes of server errors at error level, refusals at
    /// debug level (they are the client's business).
    pub fn log(&self, request_id: &str) {
        match self {
            Self::Internal(cause) => {
                tracing::error!(request_id = %request_id, cause = %cause, "request failed")
            }
            Self::Script(e) => {
                tracing::warn!(request_id = %request_id, error = %e, "script failed")
            }
            _ if self.status_code().is_server_error() => {
                tracing::error!(request_id = %request_id, error = %self, "request failed")
            }
            _ => tracing::debug!(request_id = %request_id, code = self.code(), "request refused"),
        }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField(FieldError::new(field, message))
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The stable machine-readable code clients can match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidAnswer(_) => "invalid_answer",
            Self::ImportRejected { .. } => "invalid_import",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict { code, .. } => code,
            Self::TooManyRequests => "too_many_requests",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Script(e) if e.timed_out => "script_timeout",
            Self::Script(_) => "script_error",
            Self::PluginUnavailable { .. } => "plugin_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

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
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Script(_) | Self::PluginUnavailable { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = crate::web::request_id::current();
        self.log(&request_id);
        let errors = match self {
            Self::InvalidAnswer(list) => serde_json::to_value(list).ok(),
            Self::InvalidField(e) => serde_json::to_value([e]).ok(),
            Self::ImportRejected { errors, .. } => serde_json::to_value(errors).ok(),
            _ => None,
        };
        let script = match self {
            Self::Script(e) => Some(e),
            _ => None,
        };
        HttpResponse::build(self.status_code()).json(ErrorBody {
            code: self.code(),
            message: self.to_string(),
            request_id,
            errors,
            script,
        })
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(what) => {
                AppError::conflict("already_exists", format!("{what} already exists"))
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<ScriptError> for AppError {
    fn from(e: ScriptError) -> Self {
        AppError::Script(e)
    }
}

impl From<actix_web::error::BlockingError> for AppError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        AppError::Internal(format!("blocking task failed: {e}"))
    }
}
