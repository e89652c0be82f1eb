//! The SQLite backend, the embedded default: WAL mode, JSON and timestamps
//! as text, uuids as hyphenated text. SQLite runs in process, so a page's
//! statements inside one transaction cost no round trips; batch reads still
//! go in one query through `json_each`.

use super::{
    ConflictFilter, Decided, Lease, MappedId, PageCommit, RunFilter, RunHold, RunRow, Schedule, StoreError,
    duplicate_or, held_mappings, lost_race,
};
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
use syncd_core::record::{Fields, Record, Side};
use syncd_core::run::{PlannedStep, RunState, StepCheckpoint};
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A SQLite database file holding syncd's state.
pub struct SqliteStore {
    pool: SqlitePool,
}

const MAPPING_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
     idempotency_key, last_error, attempts, version, created_at, updated_at";

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

/// Fencing: the write lock is ours (the transaction began IMMEDIATE), so the
/// lease cannot move until we commit; fails when it is not ours.
async fn hold_lease(
    conn: &mut sqlx::SqliteConnection,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let held: Option<String> = sqlx::query_scalar(
        "SELECT run_id FROM run_leases WHERE run_id = ?1 AND worker_id = ?2 AND expires_at > ?3",
    )
    .bind(lease.run_id.to_string())
    .bind(&lease.worker_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => {
            // Taken over, or only expired: the message says which.
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT worker_id FROM run_leases WHERE run_id = ?1 AND worker_id <> ?2 AND expires_at > ?3",
            )
            .bind(lease.run_id.to_string())
            .bind(&lease.worker_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            Err(StoreError::LeaseLost {
                run_id: lease.run_id,
                worker_id: lease.worker_id.clone(),
                holder,
            })
        }
    }
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

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn fetch_mappings(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<Vec<IdMapping>, StoreError> {
        let sql = match side {
            Side::Source => format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings WHERE tenant_id = ?1 AND integration_id = ?2 \
                 AND entity_type = ?3 AND source_id IN (SELECT value FROM json_each(?4))"
            ),
            Side::Target => format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings WHERE tenant_id = ?1 AND integration_id = ?2 \
                 AND entity_type = ?3 AND target_id IN (SELECT value FROM json_each(?4))"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(Json(ids))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(super) async fn commit_page(
        &self,
        decided: &[Decided],
        page: &PageCommit,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // BEGIN IMMEDIATE takes the write lock up front, so two writers
        // queue instead of failing on lock upgrade.
        let mut tx = ImmediateTx::begin(&self.pool).await?;
        let conn: &mut sqlx::SqliteConnection = &mut tx.conn;
        let result = async {
            if let Some(lease) = &page.lease {
                hold_lease(&mut *conn, lease, now).await?;
            }
            if let Some(id) = page.settles {
                let settled = sqlx::query("DELETE FROM reservations WHERE id = ?1")
                    .bind(id.to_string())
                    .execute(&mut *conn)
                    .await?;
                if settled.rows_affected() == 0 {
                    return Err(StoreError::ReservationGone { id });
                }
            }
            if let Some(r) = &page.reserve {
                sqlx::query(
                    "INSERT INTO reservations (id, tenant_id, integration_id, entity_type, mappings, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(r.id.to_string())
                .bind(r.scope.tenant_id.as_str())
                .bind(r.scope.integration_id.as_str())
                .bind(r.scope.entity_type.as_str())
                .bind(r.rows_json())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
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
            for id in &page.applied_conflicts {
                sqlx::query("UPDATE conflicts SET applied_at = ?1 WHERE id = ?2")
                    .bind(now)
                    .bind(id.to_string())
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
            if let Some(scope) = &page.reconciled {
                sqlx::query(
                    "INSERT INTO reconciles (tenant_id, integration_id, entity_type, reconciled_at) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant_id, integration_id, entity_type) \
                     DO UPDATE SET reconciled_at = excluded.reconciled_at",
                )
                .bind(scope.tenant_id.as_str())
                .bind(scope.integration_id.as_str())
                .bind(scope.entity_type.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            if let Some(c) = &page.sync_cursor {
                sqlx::query(
                    "INSERT INTO sync_cursors (tenant_id, integration_id, entity_type, side, cursor, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (tenant_id, integration_id, entity_type, side) \
                     DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                )
                .bind(c.scope.tenant_id.as_str())
                .bind(c.scope.integration_id.as_str())
                .bind(c.scope.entity_type.as_str())
                .bind(c.side.as_str())
                .bind(Json(&c.cursor))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            if let Some(cp) = &page.checkpoint {
                sqlx::query(
                    "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, cursor, \
                         counters, error, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                     ON CONFLICT (run_id, entity_type, direction) DO UPDATE SET state = excluded.state, \
                         cursor = excluded.cursor, counters = excluded.counters, error = excluded.error, \
                         updated_at = excluded.updated_at",
                )
                .bind(cp.run_id.to_string())
                .bind(cp.tenant_id.as_str())
                .bind(cp.stage as i64)
                .bind(cp.entity_type.as_str())
                .bind(cp.direction.as_str())
                .bind(cp.state.as_str())
                .bind(cp.cursor.as_ref().map(Json))
                .bind(Json(&cp.counters))
                .bind(cp.error.as_deref())
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
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
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = ImmediateTx::begin(&self.pool).await?;
        let conn: &mut sqlx::SqliteConnection = &mut tx.conn;
        let result = async {
            hold_lease(&mut *conn, lease, now).await?;
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

    pub(super) async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error \
             FROM steps WHERE run_id = ?1 ORDER BY stage, entity_type, direction DESC",
        )
        .bind(run_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StepCheckpoint {
                    run_id: uuid_of(row, "run_id", "steps")?,
                    tenant_id: TenantId(row.try_get("tenant_id")?),
                    stage: row.try_get::<i64, _>("stage")? as u32,
                    entity_type: row.try_get::<String, _>("entity_type")?.into(),
                    direction: row
                        .try_get::<String, _>("direction")?
                        .parse()
                        .map_err(|e| corrupt("steps", e))?,
                    state: row
                        .try_get::<String, _>("state")?
                        .parse()
                        .map_err(|e| corrupt("steps", e))?,
                    cursor: row
                        .try_get::<Option<Json<serde_json::Value>>, _>("cursor")?
                        .map(|c| c.0),
                    counters: row.try_get::<Json<_>, _>("counters")?.0,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    pub(super) async fn load_conflicts(
        &self,
        tenant: Option<&TenantId>,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts \
             WHERE (?1 IS NULL OR tenant_id = ?1) AND id IN (SELECT value FROM json_each(?2)) \
             ORDER BY created_at, id"
        ))
        .bind(tenant.map(TenantId::as_str))
        .bind(Json(&ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conflict_from_row).collect()
    }

    pub(super) async fn pending_conflicts_of_run(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM conflicts WHERE tenant_id = ?1 AND run_id = ?2 AND status = 'pending'",
        )
        .bind(tenant.as_str())
        .bind(run_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    pub(super) async fn list_conflicts(&self, f: &ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts \
             WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR status = ?2) \
               AND (?3 IS NULL OR entity_type = ?3) AND (?4 IS NULL OR run_id = ?4) \
             ORDER BY created_at, id LIMIT ?5"
        ))
        .bind(f.tenant.as_ref().map(TenantId::as_str))
        .bind(f.status.map(ConflictStatus::as_str))
        .bind(f.entity_type.as_deref())
        .bind(f.run_id.map(|r| r.to_string()))
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conflict_from_row).collect()
    }

    pub(super) async fn unapplied_resolutions(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE run_id = ?1 AND status = 'resolved' \
               AND resolved_by <> 'system' AND applied_at IS NULL ORDER BY resolved_at, id"
        ))
        .bind(run_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conflict_from_row).collect()
    }

    pub(super) async fn resolve_conflict(
        &self,
        c: &ConflictRecord,
        resolution: &Fields,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolution = ?1, resolved_by = ?2, resolved_at = ?3 \
             WHERE id = ?4 AND tenant_id = ?5 AND status = 'pending'",
        )
        .bind(Json(resolution))
        .bind(by)
        .bind(now)
        .bind(c.id.to_string())
        .bind(c.tenant_id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn open_conflicts(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let sql = match side {
            Side::Source => {
                "SELECT source_id FROM conflicts WHERE tenant_id = ?1 AND integration_id = ?2 \
                 AND entity_type = ?3 AND status = 'pending' AND source_id IN (SELECT value FROM json_each(?4))"
            }
            Side::Target => {
                "SELECT target_id FROM conflicts WHERE tenant_id = ?1 AND integration_id = ?2 \
                 AND entity_type = ?3 AND status = 'pending' AND target_id IN (SELECT value FROM json_each(?4))"
            }
        };
        let found: Vec<String> = sqlx::query_scalar(sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(Json(ids))
            .fetch_all(&self.pool)
            .await?;
        Ok(found.into_iter().collect())
    }

    pub(super) async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (id, tenant_id, integration_id, state, plan, trigger, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )
        .bind(run.id.to_string())
        .bind(run.tenant_id.as_str())
        .bind(run.integration_id.as_str())
        .bind(run.state.as_str())
        .bind(Json(&run.plan))
        .bind(&run.trigger)
        .bind(run.created_at)
        .execute(&mut *tx)
        .await?;
        for step in steps {
            sqlx::query(
                "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
            )
            .bind(run.id.to_string())
            .bind(run.tenant_id.as_str())
            .bind(step.stage as i64)
            .bind(step.entity_type.as_str())
            .bind(step.direction.as_str())
            .bind(run.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn load_run(
        &self,
        tenant: Option<&TenantId>,
        id: Uuid,
    ) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
        ))
        .bind(id.to_string())
        .bind(tenant.map(TenantId::as_str))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub(super) async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR integration_id = ?2) \
               AND (?3 IS NULL OR state = ?3) \
             ORDER BY created_at DESC, id LIMIT ?4"
        ))
        .bind(f.tenant.as_ref().map(TenantId::as_str))
        .bind(f.integration.as_ref().map(IntegrationId::as_str))
        .bind(f.state.map(RunState::as_str))
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub(super) async fn set_run_state(
        &self,
        run: &RunRow,
        to: RunState,
        error: Option<&str>,
        now: DateTime<Utc>,
        finished: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET state = ?1, error = COALESCE(?2, error), updated_at = ?3, finished_at = ?4 \
             WHERE id = ?5 AND tenant_id = ?6 AND state = ?7",
        )
        .bind(to.as_str())
        .bind(error)
        .bind(now)
        .bind(finished)
        .bind(run.id.to_string())
        .bind(run.tenant_id.as_str())
        .bind(run.state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn claim_lease(
        &self,
        run: &RunRow,
        worker: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO run_leases (run_id, tenant_id, worker_id, expires_at, heartbeat_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (run_id) DO UPDATE SET worker_id = excluded.worker_id, \
                 expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at \
             WHERE run_leases.expires_at <= ?5 OR run_leases.worker_id = excluded.worker_id",
        )
        .bind(run.id.to_string())
        .bind(run.tenant_id.as_str())
        .bind(worker)
        .bind(expires)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn heartbeat(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE run_leases SET expires_at = ?1, heartbeat_at = ?2 \
             WHERE run_id = ?3 AND worker_id = ?4 AND expires_at > ?2",
        )
        .bind(expires)
        .bind(now)
        .bind(lease.run_id.to_string())
        .bind(&lease.worker_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM run_leases WHERE run_id = ?1 AND worker_id = ?2")
            .bind(lease.run_id.to_string())
            .bind(&lease.worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn lease_holder(
        &self,
        run_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT worker_id, expires_at FROM run_leases WHERE run_id = ?1 AND expires_at > ?2",
        )
        .bind(run_id.to_string())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn load_sync_cursor(
        &self,
        scope: &EntityScope,
        side: Side,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let cursor: Option<Json<serde_json::Value>> = sqlx::query_scalar(
            "SELECT cursor FROM sync_cursors \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND side = ?4",
        )
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .bind(side.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(cursor.map(|c| c.0))
    }

    pub(super) async fn ensure_schedule(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
        cron: &str,
        first: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO schedules (tenant_id, integration_id, cron, next_fire_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant_id, integration_id) DO UPDATE SET cron = EXCLUDED.cron, \
                 next_fire_at = EXCLUDED.next_fire_at WHERE schedules.cron <> EXCLUDED.cron",
        )
        .bind(tenant.as_str())
        .bind(integration.as_str())
        .bind(cron)
        .bind(first)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT tenant_id, integration_id, cron, next_fire_at FROM schedules WHERE next_fire_at <= ?1 \
             ORDER BY next_fire_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(t, i, cron, next_fire_at)| Schedule {
                tenant_id: TenantId(t),
                integration_id: IntegrationId(i),
                cron,
                next_fire_at,
            })
            .collect())
    }

    pub(super) async fn fire_schedule(&self, s: &Schedule, next: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE schedules SET next_fire_at = ?1 \
             WHERE tenant_id = ?2 AND integration_id = ?3 AND next_fire_at = ?4",
        )
        .bind(next)
        .bind(s.tenant_id.as_str())
        .bind(s.integration_id.as_str())
        .bind(s.next_fire_at)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        let fired = sqlx::query(
            "INSERT INTO schedule_fires (tenant_id, integration_id, fire_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(s.tenant_id.as_str())
        .bind(s.integration_id.as_str())
        .bind(s.next_fire_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(fired.rows_affected() == 1)
    }

    pub(super) async fn set_fire_run(&self, s: &Schedule, run_id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedule_fires SET run_id = ?1 WHERE tenant_id = ?2 AND integration_id = ?3 AND fire_at = ?4",
        )
        .bind(run_id.to_string())
        .bind(s.tenant_id.as_str())
        .bind(s.integration_id.as_str())
        .bind(s.next_fire_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn runs_to_execute(
        &self,
        integrations: &[&str],
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs r \
             WHERE (r.state IN ('planned', 'running') \
                    OR (r.state = 'suspended' AND NOT EXISTS (SELECT 1 FROM conflicts c \
                        WHERE c.tenant_id = r.tenant_id AND c.run_id = r.id AND c.status = 'pending'))) \
               AND r.integration_id IN (SELECT value FROM json_each(?3)) \
               AND NOT EXISTS (SELECT 1 FROM run_leases l WHERE l.run_id = r.id AND l.expires_at > ?1) \
               AND NOT EXISTS (SELECT 1 FROM run_holds h \
                   WHERE h.tenant_id = r.tenant_id AND h.run_id = r.id AND h.confirmed_at IS NULL) \
             ORDER BY r.created_at LIMIT ?2"
        ))
        .bind(now)
        .bind(limit as i64)
        .bind(Json(integrations))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub(super) async fn insert_token(&self, t: &super::TokenInfo, hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant_id, admin, token_hash, created_at, prefix, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(t.id.to_string())
        .bind(&t.tenant)
        .bind(t.admin)
        .bind(hash)
        .bind(t.created_at)
        .bind(&t.prefix)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn tokens(&self, hash: Option<&str>) -> Result<Vec<super::TokenInfo>, StoreError> {
        let rows: Vec<super::TokenRow> = sqlx::query_as(
            "SELECT id, prefix, tenant_id, admin, created_at, expires_at, revoked_at, last_used_at \
             FROM api_tokens WHERE ?1 IS NULL OR token_hash = ?1 ORDER BY created_at, id",
        )
        .bind(hash)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(super::TokenInfo::from_row).collect())
    }

    pub(super) async fn set_token_time(
        &self,
        id: Uuid,
        revoked: bool,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let column = if revoked { "revoked_at" } else { "last_used_at" };
        sqlx::query(&format!("UPDATE api_tokens SET {column} = ?2 WHERE id = ?1"))
            .bind(id.to_string())
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn unsettled_mappings(
        &self,
        scope: &EntityScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 \
               AND status <> 'mapped' AND status IN ('pending', 'failed') \
               AND (?4 IS NULL OR id > ?4) \
             ORDER BY id LIMIT ?5"
        ))
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .bind(after.map(|a| a.to_string()))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(super) async fn mappings_with_status(
        &self,
        scope: &EntityScope,
        status: MappingStatus,
        with_error: bool,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND status = ?4 \
             AND (?6 OR last_error IS NOT NULL) ORDER BY updated_at, id LIMIT ?5"
        ))
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .bind(status.as_str())
        .bind(limit as i64)
        .bind(status != MappingStatus::Mapped || !with_error)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(super) async fn mapping_counts(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Vec<(String, MappingStatus, u64)>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT entity_type, status, count(*) FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 GROUP BY entity_type, status ORDER BY 1, 2",
        )
        .bind(tenant.as_str())
        .bind(integration.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(e, s, n)| Ok((e, s.parse().map_err(|e| corrupt("id_mappings", e))?, n as u64)))
            .collect()
    }
}

const CONFLICT_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, run_id, source_record, \
     target_record, base, conflicting_fields, strategy_applied, resolution, status, resolved_by, created_at, \
     resolved_at";

fn conflict_from_row(row: &SqliteRow) -> Result<ConflictRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let strategy: String = row.try_get("strategy_applied")?;
    let run_id: Option<String> = row.try_get("run_id")?;
    Ok(ConflictRecord {
        id: uuid_of(row, "id", "conflicts")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        integration_id: IntegrationId(row.try_get("integration_id")?),
        entity_type: row.try_get::<String, _>("entity_type")?.into(),
        run_id: run_id
            .map(|r| Uuid::parse_str(&r).map_err(|e| corrupt("conflicts", e)))
            .transpose()?,
        source_record: row.try_get::<Json<Record>, _>("source_record")?.0,
        target_record: row.try_get::<Json<Record>, _>("target_record")?.0,
        base: row.try_get::<Option<Json<Fields>>, _>("base")?.map(|b| b.0),
        conflicting_fields: row.try_get::<Json<Vec<String>>, _>("conflicting_fields")?.0,
        strategy_applied: strategy.parse().map_err(|e: String| corrupt("conflicts", e))?,
        resolution: row.try_get::<Option<Json<Fields>>, _>("resolution")?.map(|r| r.0),
        status: status.parse().map_err(|e: String| corrupt("conflicts", e))?,
        resolved_by: row.try_get("resolved_by")?,
        created_at: row.try_get("created_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

impl SqliteStore {
    pub(super) async fn mapped_ids_page(
        &self,
        scope: &EntityScope,
        side: Side,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MappedId>, StoreError> {
        // One fixed text per side: the column is never built from input.
        let sql = match side {
            Side::Source => {
                "SELECT id, source_id FROM id_mappings \
                 WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND source_id IS NOT NULL \
                   AND (?4 IS NULL OR source_id > ?4) AND status = 'mapped' \
                 ORDER BY source_id LIMIT ?5"
            }
            Side::Target => {
                "SELECT id, target_id FROM id_mappings \
                 WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND target_id IS NOT NULL \
                   AND (?4 IS NULL OR target_id > ?4) AND status = 'mapped' \
                 ORDER BY target_id LIMIT ?5"
            }
        };
        let rows: Vec<(String, String)> = sqlx::query_as(sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(mapping_id, record_id)| {
                Ok(MappedId {
                    mapping_id: mapping_id.parse().map_err(|e| corrupt("id_mappings", e))?,
                    record_id,
                })
            })
            .collect()
    }

    pub(super) async fn unverified_page(
        &self,
        scope: &EntityScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND status = 'mapped' \
               AND updated_at < ?4 \
             ORDER BY updated_at, id LIMIT ?5"
        ))
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(super) async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND status = 'mapped'",
        )
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    pub(super) async fn last_reconciled(
        &self,
        scope: &EntityScope,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT reconciled_at FROM reconciles \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3",
        )
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn count_candidates(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delete_candidates WHERE tenant_id = ?1 AND run_id = ?2 AND entity_type = ?3",
        )
        .bind(tenant.as_str())
        .bind(run_id.to_string())
        .bind(entity.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    pub(super) async fn candidates_page(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(IdMapping, Gone)>, StoreError> {
        let columns = MAPPING_COLUMNS
            .split(", ")
            .map(|c| format!("m.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {columns}, c.gone AS gone FROM delete_candidates c \
             JOIN id_mappings m ON m.id = c.mapping_id AND m.tenant_id = c.tenant_id \
             WHERE c.tenant_id = ?1 AND c.run_id = ?2 AND c.entity_type = ?3 \
               AND (?4 IS NULL OR c.mapping_id > ?4) \
             ORDER BY c.mapping_id LIMIT ?5"
        ))
        .bind(tenant.as_str())
        .bind(run_id.to_string())
        .bind(entity.as_str())
        .bind(after.map(|a| a.to_string()))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let gone: String = row.try_get("gone")?;
                Ok((
                    mapping_from_row(row)?,
                    gone.parse().map_err(|e| corrupt("delete_candidates", e))?,
                ))
            })
            .collect()
    }

    pub(super) async fn add_hold(&self, h: &RunHold) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR IGNORE INTO run_holds \
                 (tenant_id, run_id, entity_type, count, mapped, delete_limit, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(h.tenant_id.as_str())
        .bind(h.run_id.to_string())
        .bind(&h.entity_type)
        .bind(h.count as i64)
        .bind(h.mapped as i64)
        .bind(h.limit as i64)
        .bind(h.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn run_holds(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
    ) -> Result<Vec<RunHold>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {HOLD_COLUMNS} FROM run_holds WHERE run_id = ?1 AND (?2 IS NULL OR tenant_id = ?2) \
             ORDER BY created_at, entity_type"
        ))
        .bind(run_id.to_string())
        .bind(tenant.map(TenantId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(hold_from_row).collect()
    }

    pub(super) async fn confirm_deletes(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<RunHold>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE run_holds SET confirmed_by = ?3, confirmed_at = ?4 \
             WHERE run_id = ?1 AND (?2 IS NULL OR tenant_id = ?2) AND confirmed_at IS NULL \
             RETURNING {HOLD_COLUMNS}"
        ))
        .bind(run_id.to_string())
        .bind(tenant.map(TenantId::as_str))
        .bind(by)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(hold_from_row).collect()
    }
}

const HOLD_COLUMNS: &str =
    "run_id, tenant_id, entity_type, count, mapped, delete_limit, confirmed_by, confirmed_at, created_at";

fn hold_from_row(row: &SqliteRow) -> Result<RunHold, StoreError> {
    Ok(RunHold {
        run_id: uuid_of(row, "run_id", "run_holds")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        entity_type: row.try_get("entity_type")?,
        count: row.try_get::<i64, _>("count")? as u64,
        mapped: row.try_get::<i64, _>("mapped")? as u64,
        limit: row.try_get::<i64, _>("delete_limit")? as u64,
        confirmed_by: row.try_get("confirmed_by")?,
        confirmed_at: row.try_get("confirmed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

const RUN_COLUMNS: &str =
    "id, tenant_id, integration_id, state, plan, trigger, error, created_at, updated_at, finished_at";

fn run_from_row(row: &SqliteRow) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: uuid_of(row, "id", "runs")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        integration_id: IntegrationId(row.try_get("integration_id")?),
        state: row
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e: String| corrupt("runs", e))?,
        plan: row.try_get::<Json<serde_json::Value>, _>("plan")?.0,
        trigger: row.try_get("trigger")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}
