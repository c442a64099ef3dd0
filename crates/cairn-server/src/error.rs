//! Errors of the server's services, free of HTTP.
//!
//! A service (logins, restore folders, the job manager…) says what kind of refusal or failure
//! happened and names the object and the cause; the HTTP layer ([`crate::http::error`]) turns the
//! kind into a status code. A failure of the server itself keeps its cause apart from the message
//! a client may see: the cause is logged, never answered.

use cairn_api::checks::Invalid;

use crate::runner::RunError;

/// What kind of refusal or failure a [`ServiceError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller is not logged in, or the credentials are wrong.
    Unauthorized,
    /// The caller may not do this (role too low, a path outside what it may name).
    Forbidden,
    /// No such object.
    NotFound,
    /// The current state does not allow it (running, name taken, stale version).
    Conflict,
    /// Well-formed but invalid input.
    Invalid,
    /// Too many attempts: try again after the given seconds.
    TooMany {
        /// Seconds until the next attempt may succeed.
        retry_after: u64,
    },
    /// The server failed.
    Internal,
}

/// A refusal or failure of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// What kind it is.
    pub kind: ErrorKind,
    /// What went wrong, naming the object and the cause (shown to the caller).
    pub message: String,
    /// A machine-readable reason (`role_too_low`, `totp_required`…), if any.
    pub code: Option<&'static str>,
    /// The cause of an [`ErrorKind::Internal`] failure: logged, never shown.
    pub detail: Option<String>,
}

impl ServiceError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
            code: None,
            detail: None,
        }
    }

    /// The same error with a machine-readable `code`.
    pub fn with_code(mut self, code: &'static str) -> ServiceError {
        self.code = Some(code);
        self
    }

    /// Not logged in, or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::Unauthorized, message)
    }

    /// Not allowed to the caller.
    pub fn forbidden(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::Forbidden, message)
    }

    /// No such object.
    pub fn not_found(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::NotFound, message)
    }

    /// Not allowed in the current state.
    pub fn conflict(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::Conflict, message)
    }

    /// Invalid input.
    pub fn invalid(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::Invalid, message)
    }

    /// Too many attempts; the next may succeed after `seconds` (at least 1).
    pub fn too_many(message: impl Into<String>, seconds: u64) -> ServiceError {
        ServiceError::new(
            ErrorKind::TooMany {
                retry_after: seconds.max(1),
            },
            message,
        )
    }

    /// The server failed: the caller sees `public`, the log gets `detail` too.
    pub fn internal(public: impl Into<String>, detail: impl std::fmt::Display) -> ServiceError {
        let mut e = ServiceError::new(ErrorKind::Internal, public);
        e.detail = Some(detail.to_string());
        e
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

/// Results of services.
pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<cairn_configdb::Error> for ServiceError {
    fn from(e: cairn_configdb::Error) -> ServiceError {
        use cairn_configdb::Error;
        match e {
            Error::NotFound { .. } => ServiceError::not_found(e.to_string()),
            Error::Conflict { what } => ServiceError::conflict(what),
            Error::Duplicate { .. } => ServiceError::conflict(e.to_string()),
            Error::Invalid { .. } => ServiceError::invalid(e.to_string()),
            Error::Database(_) | Error::Migration(_) => {
                ServiceError::internal("the configuration database failed (see the server log)", e)
            }
        }
    }
}

impl From<RunError> for ServiceError {
    fn from(e: RunError) -> ServiceError {
        match e {
            RunError::NotFound(_) => ServiceError::not_found(e.to_string()),
            RunError::AlreadyRunning { .. } => ServiceError::conflict(e.to_string()),
            RunError::Invalid(_) => ServiceError::invalid(e.to_string()),
            RunError::Db(db) => db.into(),
        }
    }
}

impl From<Invalid> for ServiceError {
    fn from(e: Invalid) -> ServiceError {
        ServiceError::invalid(e.0)
    }
}

impl From<tokio::task::JoinError> for ServiceError {
    fn from(e: tokio::task::JoinError) -> ServiceError {
        ServiceError::internal("a background operation of the server failed (see the server log)", e)
    }
}
