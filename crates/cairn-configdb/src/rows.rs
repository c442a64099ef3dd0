//! Statements every table shares: one object by id, every object, deleting one by id.

use sqlx::FromRow;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::ConfigDb;
use crate::db::on_pool;
use crate::error::{Error, Result, delete_err, one_row};

/// A stored row type that both backends can read.
pub(crate) trait StoredRow: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

impl<R> StoredRow for R where R: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// The object `row` holds; [`Error::NotFound`] naming `what()` when a statement found no row.
pub(crate) fn found<R, T>(row: Option<R>, what: impl FnOnce() -> String) -> Result<T>
where
    T: TryFrom<R, Error = Error>,
{
    row.ok_or_else(|| Error::NotFound { what: what() })?.try_into()
}

impl ConfigDb {
    /// The object `select` (a query with `$1` for the id) returns for `id`; [`Error::NotFound`]
    /// names it "`what` `id`".
    pub(crate) async fn get_by_id<R: StoredRow, T: TryFrom<R, Error = Error>>(
        &self,
        select: &'static str,
        id: i64,
        what: &str,
    ) -> Result<T> {
        let row: Option<R> = on_pool!(self, |pool| sqlx::query_as(select)
            .bind(id)
            .fetch_optional(pool)
            .await?);
        found(row, || format!("{what} {id}"))
    }

    /// Every object `select` (a query without parameters) returns, in its order.
    pub(crate) async fn get_all<R: StoredRow, T: TryFrom<R, Error = Error>>(
        &self,
        select: &'static str,
    ) -> Result<Vec<T>> {
        let rows: Vec<R> = on_pool!(self, |pool| sqlx::query_as(select).fetch_all(pool).await?);
        rows.into_iter().map(T::try_from).collect()
    }

    /// Runs `delete` (a statement with `$1` for the id) for `id`: [`Error::NotFound`] when it
    /// removed nothing, [`Error::Conflict`] when the object is still referenced.
    pub(crate) async fn delete_by_id(&self, delete: &'static str, id: i64, what: &str) -> Result<()> {
        let affected = on_pool!(self, |pool| sqlx::query(delete)
            .bind(id)
            .execute(pool)
            .await
            .map_err(delete_err(format!("{what} {id}")))?
            .rows_affected());
        one_row(affected, || format!("{what} {id}"))
    }
}
