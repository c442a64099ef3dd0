//! Errors of the configuration database.

use sqlx::error::ErrorKind;

/// Result of configuration database operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, naming the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist (API: 404).
    #[error("{what} not found")]
    NotFound {
        /// The object, e.g. `job 7`.
        what: String,
    },
    /// The object was changed by someone else since it was read, or is still in use (API: 409).
    #[error("conflict: {what}")]
    Conflict {
        /// The object and the reason, e.g. `job 7 was changed by someone else; reload it`.
        what: String,
    },
    /// An object with the same unique name already exists (API: 409).
    #[error("{what} already exists")]
    Duplicate {
        /// The object, e.g. `job "nightly"`.
        what: String,
    },
    /// A value is out of range or a stored value cannot be read back (API: 400).
    #[error("invalid {what}")]
    Invalid {
        /// The value and why it is invalid.
        what: String,
    },
    /// The database failed (connection, I/O, SQL).
    #[error("configuration database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("configuration database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<cairn_api::UnknownName> for Error {
    fn from(e: cairn_api::UnknownName) -> Error {
        Error::Invalid { what: e.to_string() }
    }
}

/// Maps errors of an insert or update of `what`.
pub(crate) fn write_err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        let what = what.into();
        match db_kind(&e) {
            Some(ErrorKind::UniqueViolation) => Error::Duplicate { what },
            Some(ErrorKind::ForeignKeyViolation) => Error::NotFound {
                what: format!("an object referenced by {what}"),
            },
            Some(ErrorKind::CheckViolation | ErrorKind::NotNullViolation) => Error::Invalid {
                what: format!("{what}: a value is out of range"),
            },
            _ => Error::Database(e),
        }
    }
}

/// Maps errors of a delete of `what`: a foreign key that still points to it is a conflict.
pub(crate) fn delete_err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| match db_kind(&e) {
        Some(ErrorKind::ForeignKeyViolation) => Error::Conflict {
            what: format!("{} is still in use", what.into()),
        },
        _ => Error::Database(e),
    }
}

fn db_kind(e: &sqlx::Error) -> Option<ErrorKind> {
    match e {
        // SQLite reports an `ON DELETE RESTRICT` violation as SQLITE_CONSTRAINT_TRIGGER, which sqlx
        // does not classify; its message is the foreign key one.
        sqlx::Error::Database(d) if d.message().contains("FOREIGN KEY constraint failed") => {
            Some(ErrorKind::ForeignKeyViolation)
        }
        sqlx::Error::Database(d) => Some(d.kind()),
        _ => None,
    }
}

/// `NotFound` for `what` unless exactly one row was affected.
pub(crate) fn one_row(affected: u64, what: impl FnOnce() -> String) -> Result<()> {
    if affected == 0 {
        Err(Error::NotFound { what: what() })
    } else {
        Ok(())
    }
}
