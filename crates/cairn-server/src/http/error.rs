//! API errors: a status code and `{"error": "<message>"}`; a service's [`ServiceError`]
//! becomes one by its kind.
//!
//! Clients see what they did wrong (401, 403, 404, 409, 422, 429, 400) with a message naming the
//! object and the cause, and for some a machine-readable `code` (`totp_required`,
//! `totp_setup_required`, `login_locked`). Every answer of 500 or more is logged with its cause
//! when it is sent (the client gets a short message without the server's internals).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use cairn_api::checks::Invalid;

use crate::error::{ErrorKind, ServiceError};
use crate::runner::RunError;
pub use cairn_api::error::ErrorBody;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The message in `{"error": …}`.
    pub message: String,
    /// The machine-readable reason in `{"code": …}`, if any.
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
    /// The cause of a server failure: logged, never sent.
    detail: Option<String>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code: None,
            retry_after: None,
            detail: None,
        }
    }

    /// The same error with a machine-readable `code`.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// 400: the request cannot be read.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 429: too many attempts; try again after `seconds` (see [`ServiceError::too_many`]).
    pub fn too_many(message: impl Into<String>, seconds: u64) -> ApiError {
        ServiceError::too_many(message, seconds).into()
    }

    /// 401: no, an unknown or an expired token (or a failed login).
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ServiceError::unauthorized(message).into()
    }

    /// 403: the caller's role is too low.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ServiceError::forbidden(message).into()
    }

    /// 404: no such object.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ServiceError::not_found(message).into()
    }

    /// 409: a conflict with the current state (stale version, running, name taken).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ServiceError::conflict(message).into()
    }

    /// 422: well-formed but invalid input.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ServiceError::invalid(message).into()
    }

    /// 500: the server failed. `detail` is logged when the error is answered; the client gets
    /// `public`.
    pub fn internal(public: impl Into<String>, detail: impl std::fmt::Display) -> ApiError {
        ServiceError::internal(public, detail).into()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!("answered {self}");
        }
        let message = crate::http::audit_trail::ErrorMessage(self.message.clone());
        let body = ErrorBody {
            error: self.message,
            code: self.code.map(str::to_owned),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        response.extensions_mut().insert(message);
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let status = match e.kind {
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.message,
            code: e.code,
            retry_after: match e.kind {
                ErrorKind::TooMany { retry_after } => Some(retry_after),
                _ => None,
            },
            detail: e.detail,
        }
    }
}

/// Errors the services' own error type already classifies.
macro_rules! through_service_error {
    ($($from:ty),*) => {$(
        impl From<$from> for ApiError {
            fn from(e: $from) -> ApiError {
                ServiceError::from(e).into()
            }
        }
    )*};
}

through_service_error!(cairn_configdb::Error, RunError, Invalid, tokio::task::JoinError);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let message = match &rejection {
            JsonRejection::JsonSyntaxError(_) => {
                format!("malformed JSON in the request body: {}", rejection.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => {
                "the request body must be JSON with `Content-Type: application/json`".to_owned()
            }
            _ => rejection.body_text(),
        };
        ApiError::new(status, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
    }
}

/// Result of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
