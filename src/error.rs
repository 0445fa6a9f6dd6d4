//! The errors every layer below the web shares: one enum, each failure with a stable
//! [`ErrorCode`] and a message that is safe to show. Statuses and response bodies are the web
//! layer's business (`web::error`); causes that must not reach a client go to the log.

use serde::Serialize;

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

/// A script failure, with enough detail to find and fix it.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ScriptError {
    pub plugin: String,
    /// The entry point that was running, or `None` while compiling / loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
    /// The call ran past its wall-clock or operation budget.
    pub timed_out: bool,
}

impl ScriptError {
    /// What an expert is told: which plugin and entry point failed and what kind of failure,
    /// without the script's own words, its file path or its source position (the plugin's
    /// details are for admins and leads, in the log and the plugin status).
    pub fn redacted(&self) -> ScriptError {
        let text = self.message.to_ascii_lowercase();
        let summary = if self.timed_out {
            "the script ran past its time limit"
        } else if text.contains("memory limit") {
            "the script ran past its memory limit"
        } else if text.contains("size limit") || text.contains("too large") {
            "the script ran past a size limit"
        } else {
            "the script failed"
        };
        ScriptError {
            plugin: self.plugin.clone(),
            function: self.function.clone(),
            file: String::new(),
            line: None,
            column: None,
            message: format!("{summary}; a lead or admin can see the details"),
            timed_out: self.timed_out,
        }
    }
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin `{}`", self.plugin)?;
        if let Some(function) = &self.function {
            write!(f, " in `{function}`")?;
        }
        if !self.file.is_empty() {
            write!(f, " at {}", self.file)?;
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The stable machine-readable codes clients match on. Adding one is an API change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidField,
    InvalidAnswer,
    InvalidImport,
    EmptyImport,
    InvalidBody,
    InvalidJson,
    InvalidQuery,
    InvalidPath,
    UnsupportedMediaType,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    InvalidLeaseToken,
    ForeignLease,
    LeaseUnknown,
    LeaseExpired,
    LeaseEnded,
    AlreadyReviewed,
    LastAdmin,
    TooManyRequests,
    ScriptTimeout,
    ScriptError,
    PluginUnavailable,
    StorageFull,
    StorageReopening,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidField => "invalid_field",
            Self::InvalidAnswer => "invalid_answer",
            Self::InvalidImport => "invalid_import",
            Self::EmptyImport => "empty_import",
            Self::InvalidBody => "invalid_body",
            Self::InvalidJson => "invalid_json",
            Self::InvalidQuery => "invalid_query",
            Self::InvalidPath => "invalid_path",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AlreadyExists => "already_exists",
            Self::InvalidLeaseToken => "invalid_lease_token",
            Self::ForeignLease => "foreign_lease",
            Self::LeaseUnknown => "lease_unknown",
            Self::LeaseExpired => "lease_expired",
            Self::LeaseEnded => "lease_ended",
            Self::AlreadyReviewed => "already_reviewed",
            Self::LastAdmin => "last_admin",
            Self::TooManyRequests => "too_many_requests",
            Self::ScriptTimeout => "script_timeout",
            Self::ScriptError => "script_error",
            Self::PluginUnavailable => "plugin_unavailable",
            Self::StorageFull => "storage_full",
            Self::StorageReopening => "storage_reopening",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
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
    /// The path exists, with other methods (named).
    #[error("this path takes {0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("too many attempts, try again later")]
    TooManyRequests,
    /// The body passed its limit (said with its unit: "2048 KiB").
    #[error("the request body is larger than the {0} limit")]
    PayloadTooLarge(String),
    /// The body did not arrive in time (see `web::body_deadline`).
    #[error("the request body arrived too slowly; send it again faster")]
    RequestTimeout,
    #[error("{0}")]
    Script(ScriptError),
    #[error("plugin `{name}` is not loaded: {reason}")]
    PluginUnavailable { name: String, reason: String },
    /// The disk holding the data is full: nothing was saved.
    #[error("the server's storage is full, so nothing was saved; try again once space is freed")]
    StorageFull(String),
    /// The store stopped taking writes until it is reopened, which the storage watchdog does
    /// by itself: the request is to be sent again in a moment (what it asked for is not lost:
    /// a submission already on its way is completed by the reopen, and the retry finds it).
    #[error("the server is reopening its storage; send the request again in a moment")]
    StorageReopening(String),
    /// Storage, I/O and other failures of the server itself. The cause is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

/// The latest storage failure the process saw: storage state of the process, like its pools,
/// not of any one request. Set wherever a disk-full error is classified, cleared by the storage
/// watchdog once writes work again.
pub mod storage_health {
    use std::sync::Mutex;

    static FAILURE: Mutex<Option<String>> = Mutex::new(None);

    pub fn failed(cause: &str) {
        let cause = crate::text::truncate(cause, 512).to_owned();
        *FAILURE.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
    }

    pub fn recovered() {
        *FAILURE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn failure() -> Option<String> {
        FAILURE.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether an I/O error's text says the disk (or the quota) is full: ENOSPC, EDQUOT.
pub fn is_disk_full(text: &str) -> bool {
    text.contains("os error 28") || text.contains("os error 122") || text.contains("No space left")
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField(FieldError::new(field, message))
    }
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }
    /// A storage failure: `StorageFull` when the disk is full (noted for `/healthz` and the
    /// storage watchdog), else `Internal`.
    pub fn storage(cause: impl std::fmt::Display) -> Self {
        let cause = cause.to_string();
        if is_disk_full(&cause) {
            storage_health::failed(&cause);
            Self::StorageFull(cause)
        } else {
            Self::Internal(cause)
        }
    }

    /// Whether the server, not the client, is at fault.
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            Self::Script(_)
                | Self::PluginUnavailable { .. }
                | Self::StorageFull(_)
                | Self::StorageReopening(_)
                | Self::Internal(_)
        )
    }

    /// Logs the error with its request id: causes of server errors at error level, refusals at
    /// debug level (they are the client's business).
    pub fn log(&self, request_id: &str) {
        match self {
            Self::Internal(cause) | Self::StorageFull(cause) | Self::StorageReopening(cause) => {
                tracing::error!(request_id = %request_id, cause = %cause, "request failed")
            }
            Self::Script(e) => {
                tracing::warn!(request_id = %request_id, error = %e, "script failed")
            }
            _ if self.is_server_error() => {
                tracing::error!(request_id = %request_id, error = %self, "request failed")
            }
            _ => tracing::debug!(request_id = %request_id, code = %self.code(), "request refused"),
        }
    }

    /// The stable machine-readable code clients can match on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest { code, .. } | Self::Conflict { code, .. } => *code,
            Self::InvalidField(_) => ErrorCode::InvalidField,
            Self::InvalidAnswer(_) => ErrorCode::InvalidAnswer,
            Self::ImportRejected { .. } => ErrorCode::InvalidImport,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            Self::TooManyRequests => ErrorCode::TooManyRequests,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::RequestTimeout => ErrorCode::RequestTimeout,
            Self::Script(e) if e.timed_out => ErrorCode::ScriptTimeout,
            Self::Script(_) => ErrorCode::ScriptError,
            Self::PluginUnavailable { .. } => ErrorCode::PluginUnavailable,
            Self::StorageFull(_) => ErrorCode::StorageFull,
            Self::StorageReopening(_) => ErrorCode::StorageReopening,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(what) => {
                AppError::conflict(ErrorCode::AlreadyExists, format!("{what} already exists"))
            }
            // A full disk stays a full disk: nothing is completed until space is freed.
            crate::store::StoreError::Reopening(cause) if !is_disk_full(&cause) => {
                AppError::StorageReopening(cause)
            }
            other => AppError::storage(other),
        }
    }
}

impl From<ScriptError> for AppError {
    fn from(e: ScriptError) -> Self {
        AppError::Script(e)
    }
}
