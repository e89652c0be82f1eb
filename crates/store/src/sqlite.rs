//! The SQLite backend, the embedded default: WAL mode, JSON and timestamps
//! as text, uuids as hyphenated text. SQLite runs in process, so a page's
//! statements inside one transaction cost no round trips; batch reads still
//! go in one query through `json_each`.

mod removals;
mod reviews;
mod runs;

use super::{Decided, Lease, RunHold, RunRow, StoreError, duplicate_or, held_mappings, lost_race};
use crate::rows::{Dialect, MAPPING_COLUMNS};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, Sqlite, types::Json};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;
use syncd_core::conflict::{ConflictRecord, ConflictStatus};
use syncd_core::deletes::Gone;
use syncd_core::ids::{EntityScope, EntityType, IntegrationId, TenantId};
use syncd_core::mapping::{IdMapping, MappingStatus};
use syncd_core::record::{Fields, Side};
use syncd_core::run::{PlannedStep, RunState, StepCheckpoint};
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite database file holding syncd's state.
pub struct SqliteStore {
    pool: SqlitePool,
}

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

fn uuid_of(row: &SqliteRow, column: &str, table: &'static str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| corrupt(table, format!("{column}: {e}")))
}

/// A mapping as a JSON row for `json_each`, in the column formats the rest
/// of this backend reads (timestamps as sqlx writes them).
fn mapping_json(m: &IdMapping, read_version: Option<u64>) -> serde_json::Value {
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    serde_json::json!({
        "id": m.id.to_string(),
        "tenant_id": m.tenant_id.as_str(),
        "integration_id": m.integration_id.as_str(),
        "entity_type": m.entity_type.as_str(),
        "source_id": m.source_id,
        "target_id": m.target_id,
        "status": m.status.as_str(),
        "base": m.base,
        "idempotency_key": m.idempotency_key,
        "last_error": m.last_error,
        "attempts": m.attempts,
        "version": m.version,
        "created_at": time(m.created_at),
        "updated_at": time(m.updated_at),
        "read_version": read_version,
    })
}

/// `value ->> '$.a', value ->> '$.b', ...` for a column list; `base` keeps
/// its JSON text with `->`.
fn json_columns(columns: &str) -> String {
    columns
        .split(',')
        .map(str::trim)
        .map(|c| match c {
            "base" => "nullif(value -> '$.base', 'null')".to_owned(),
            c => format!("value ->> '$.{c}'"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn mapping_from_row(row: &SqliteRow) -> Result<IdMapping, StoreError> {
    let status: String = row.try_get("status")?;
    let base: Option<Json<Fields>> = row.try_get("base")?;
    Ok(IdMapping {
        id: uuid_of(row, "id", "id_mappings")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        integration_id: IntegrationId(row.try_get("integration_id")?),
        entity_type: row.try_get::<String, _>("entity_type")?.into(),
        source_id: row.try_get("source_id")?,
        target_id: row.try_get("target_id")?,
        status: status.parse().map_err(|e| corrupt("id_mappings", e))?,
        base: base.map(|b| b.0),
        idempotency_key: row.try_get("idempotency_key")?,
        last_error: row.try_get("last_error")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

/// The reservation rows of `scope`: id, held mappings, time.
async fn reservations_of(
    conn: &mut sqlx::SqliteConnection,
    scope: &EntityScope,
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, StoreError> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, mappings, created_at FROM reservations \
         WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 ORDER BY id",
    )
    .bind(scope.tenant_id.as_str())
    .bind(scope.integration_id.as_str())
    .bind(scope.entity_type.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, json, at)| {
            Ok((
                Uuid::parse_str(&id).map_err(|e| corrupt("reservations", e))?,
                json,
                at,
            ))
        })
        .collect()
}

/// Inserts `rows` into the ID map in one statement; `or` is empty or
/// `OR IGNORE`. Returns the number of rows inserted.
async fn insert_mappings<'a>(
    conn: &mut sqlx::SqliteConnection,
    rows: impl Iterator<Item = &'a IdMapping>,
    or: &str,
) -> Result<u64, StoreError> {
    let rows: Vec<serde_json::Value> = rows.map(|m| mapping_json(m, None)).collect();
    let done = sqlx::query(&format!(
        "INSERT {or} INTO id_mappings ({MAPPING_COLUMNS}) SELECT {} FROM json_each(?1)",
        json_columns(MAPPING_COLUMNS)
    ))
    .bind(Json(&rows))
    .execute(&mut *conn)
    .await
    .map_err(duplicate_or)?;
    Ok(done.rows_affected())
}

/// A write transaction opened with `BEGIN IMMEDIATE` on a pooled connection.
///
/// When it is dropped unfinished (the future holding it was cancelled, e.g.
/// a run stopped at a timeout or on shutdown), the connection is closed,
/// which rolls the transaction back, instead of going back to the pool still
/// inside it and holding the database's write lock: every other writer would
/// then fail with "database is locked". sqlx's own `Transaction` does not
/// cover this with a custom BEGIN: sqlx-sqlite 0.8.6 awaits once more after
/// the BEGIN before the `Transaction` exists.
struct ImmediateTx {
    conn: PoolConnection<Sqlite>,
    finished: bool,
}

impl ImmediateTx {
    async fn begin(pool: &SqlitePool) -> Result<ImmediateTx, sqlx::Error> {
        let mut tx = ImmediateTx {
            conn: pool.acquire().await?,
            finished: false,
        };
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *tx.conn).await?;
        Ok(tx)
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`.
    async fn finish(mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(statement).execute(&mut *self.conn).await?;
        self.finished = true;
        Ok(())
    }

    /// Commits when the work inside it succeeded, else rolls back; returns
    /// the work's result.
    async fn end<T>(self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.finish("COMMIT").await?;
                Ok(value)
            }
            Err(e) => {
                self.finish("ROLLBACK").await?;
                Err(e)
            }
        }
    }
}

impl Drop for ImmediateTx {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

impl SqliteStore {
    crate::shared::run_statements!();
    crate::shared::shared_statements!(sqlx::SqliteConnection);
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a crash of the process (the case the
            // engine is built for); only an OS crash can lose the last commits.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool })
    }

    pub(super) async fn commit_page(&self, w: super::PageWrite<'_>) -> Result<(), StoreError> {
        let super::PageWrite { decided, page, now } = w;
        // BEGIN IMMEDIATE takes the write lock up front, so two writers
        // queue instead of failing on lock upgrade.
        let mut tx = ImmediateTx::begin(&self.pool).await?;
        let conn: &mut sqlx::SqliteConnection = &mut tx.conn;
        let result = async {
            if let Some(lease) = &page.lease {
                Self::hold_lease(&mut *conn, lease, now).await?;
            }
            self.settle_and_reserve(&mut *conn, page, now).await?;
            // One statement per kind of write: SQLite is in process, but each
            // statement still crosses to sqlx's worker thread and back.
            let (inserts, updates): (Vec<&Decided>, Vec<&Decided>) =
                decided.iter().partition(|d| d.read_version.is_none());
            if !inserts.is_empty() {
                insert_mappings(&mut *conn, inserts.iter().map(|d| &d.next), "").await?;
            }
            if !updates.is_empty() {
                let rows: Vec<serde_json::Value> =
                    updates.iter().map(|d| mapping_json(&d.next, d.read_version)).collect();
                let updated: Vec<String> = sqlx::query_scalar(
                    "UPDATE id_mappings SET source_id = u.source_id, target_id = u.target_id, status = u.status, \
                         base = u.base, idempotency_key = u.idempotency_key, last_error = u.last_error, \
                         attempts = u.attempts, version = u.version, updated_at = u.updated_at \
                     FROM (SELECT value ->> '$.id' AS id, value ->> '$.tenant_id' AS tenant_id, \
                             value ->> '$.source_id' AS source_id, value ->> '$.target_id' AS target_id, \
                             value ->> '$.status' AS status, nullif(value -> '$.base', 'null') AS base, \
                             value ->> '$.idempotency_key' AS idempotency_key, \
                             value ->> '$.last_error' AS last_error, value ->> '$.attempts' AS attempts, \
                             value ->> '$.version' AS version, value ->> '$.updated_at' AS updated_at, \
                             value ->> '$.read_version' AS read_version FROM json_each(?1)) AS u \
                     WHERE id_mappings.id = u.id AND id_mappings.tenant_id = u.tenant_id \
                       AND id_mappings.version = u.read_version \
                     RETURNING id_mappings.id",
                )
                .bind(Json(&rows))
                .fetch_all(&mut *conn)
                .await
                .map_err(duplicate_or)?;
                if updated.len() != updates.len() {
                    let lost = updates
                        .iter()
                        .find(|d| !updated.contains(&d.next.id.to_string()))
                        .expect("a row was not updated");
                    let actual: Option<String> = sqlx::query_scalar("SELECT status FROM id_mappings WHERE id = ?1")
                        .bind(lost.next.id.to_string())
                        .fetch_optional(&mut *conn)
                        .await?;
                    let actual = actual.and_then(|s| s.parse::<MappingStatus>().ok());
                    return Err(lost_race(&lost.next, lost.read_version.unwrap_or_default(), actual));
                }
            }
            for c in &page.conflicts {
                sqlx::query(
                    "INSERT INTO conflicts (id, tenant_id, integration_id, entity_type, source_id, target_id, \
                         source_record, target_record, base, conflicting_fields, strategy_applied, resolution, \
                         status, resolved_by, created_at, resolved_at, run_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                )
                .bind(c.id.to_string())
                .bind(c.tenant_id.as_str())
                .bind(c.integration_id.as_str())
                .bind(c.entity_type.as_str())
                .bind(&c.source_record.id)
                .bind(&c.target_record.id)
                .bind(Json(&c.source_record))
                .bind(Json(&c.target_record))
                .bind(c.base.as_ref().map(Json))
                .bind(Json(&c.conflicting_fields))
                .bind(c.strategy_applied.as_str())
                .bind(c.resolution.as_ref().map(Json))
                .bind(c.status.as_str())
                .bind(c.resolved_by.as_deref())
                .bind(c.created_at)
                .bind(c.resolved_at)
                .bind(c.run_id.map(|r| r.to_string()))
                .execute(&mut *conn)
                .await?;
            }
            for (id, outcome) in &page.applied_conflicts {
                sqlx::query("UPDATE conflicts SET applied_at = ?1, outcome = ?3 WHERE id = ?2")
                    .bind(now)
                    .bind(id.to_string())
                    .bind(outcome)
                    .execute(&mut *conn)
                    .await?;
            }
            if !page.candidates.is_empty() {
                let rows: Vec<serde_json::Value> = page
                    .candidates
                    .iter()
                    .map(|c| {
                        serde_json::json!([
                            c.tenant_id.as_str(),
                            c.run_id.to_string(),
                            c.entity_type.as_str(),
                            c.mapping_id.to_string(),
                            c.gone.to_string()
                        ])
                    })
                    .collect();
                sqlx::query(
                    "INSERT OR IGNORE INTO delete_candidates \
                         (tenant_id, run_id, entity_type, mapping_id, gone, created_at) \
                     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, ?2 \
                     FROM json_each(?1)",
                )
                .bind(Json(&rows))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            self.finish_page(&mut *conn, page, now).await?;
            Ok::<(), StoreError>(())
        }
        .await;
        tx.end(result).await
    }

    /// The reservation rows of `scope` (see [`super::held_mappings`]).
    pub(super) async fn reservations(
        &self,
        scope: &EntityScope,
    ) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        reservations_of(&mut conn, scope).await
    }

    /// See [`super::Store::settle_leftovers`].
    pub(super) async fn settle_leftovers(
        &self,
        scope: &EntityScope,
        lease: &Lease,
    ) -> Result<u64, StoreError> {
        let mut tx = ImmediateTx::begin(&self.pool).await?;
        let conn: &mut sqlx::SqliteConnection = &mut tx.conn;
        let result = async {
            Self::hold_lease(&mut *conn, lease, Utc::now()).await?;
            let rows = reservations_of(&mut *conn, scope).await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let held = held_mappings(scope, &rows)?;
            let added = insert_mappings(&mut *conn, held.iter(), "OR IGNORE").await?;
            let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
            super::skipped_held(scope, &ids, held.len() as u64, added);
            sqlx::query("DELETE FROM reservations WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(Json(&ids))
                .execute(&mut *conn)
                .await?;
            Ok::<u64, StoreError>(added)
        }
        .await;
        tx.end(result).await
    }
}

impl SqliteStore {}
