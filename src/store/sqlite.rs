//! The SQLite backend, the embedded default: WAL mode, JSON and timestamps
//! as text, uuids as hyphenated text. SQLite runs in process, so a page's
//! statements inside one transaction cost no round trips; batch reads still
//! go in one query through `json_each`.

use super::{Decided, StoreError, duplicate_or, lost_race};
use crate::conflict::{ConflictRecord, ConflictStatus};
use crate::ids::{EntityScope, IntegrationId, TenantId};
use crate::mapping::{IdMapping, MappingStatus};
use crate::record::{Fields, Record, Side};
use crate::run::{StepCheckpoint, StepDirection};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, types::Json};
use std::str::FromStr;
use std::time::Duration;
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

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
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
        conflicts: &[ConflictRecord],
        checkpoint: Option<&StepCheckpoint>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // BEGIN IMMEDIATE takes the write lock up front, so two writers
        // queue instead of failing on lock upgrade.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            for d in decided {
                let m = &d.next;
                match d.read_version {
                    None => {
                        sqlx::query(
                            "INSERT INTO id_mappings (id, tenant_id, integration_id, entity_type, source_id, \
                                 target_id, status, base, idempotency_key, last_error, attempts, version, \
                                 created_at, updated_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                        )
                        .bind(m.id.to_string())
                        .bind(m.tenant_id.as_str())
                        .bind(m.integration_id.as_str())
                        .bind(m.entity_type.as_str())
                        .bind(m.source_id.as_deref())
                        .bind(m.target_id.as_deref())
                        .bind(m.status.as_str())
                        .bind(m.base.as_ref().map(Json))
                        .bind(m.idempotency_key.as_deref())
                        .bind(m.last_error.as_deref())
                        .bind(m.attempts as i64)
                        .bind(m.version as i64)
                        .bind(m.created_at)
                        .bind(m.updated_at)
                        .execute(&mut *conn)
                        .await
                        .map_err(duplicate_or)?;
                    }
                    Some(read) => {
                        let done = sqlx::query(
                            "UPDATE id_mappings SET source_id = ?1, target_id = ?2, status = ?3, base = ?4, \
                                 idempotency_key = ?5, last_error = ?6, attempts = ?7, version = ?8, \
                                 updated_at = ?9 \
                             WHERE id = ?10 AND tenant_id = ?11 AND version = ?12",
                        )
                        .bind(m.source_id.as_deref())
                        .bind(m.target_id.as_deref())
                        .bind(m.status.as_str())
                        .bind(m.base.as_ref().map(Json))
                        .bind(m.idempotency_key.as_deref())
                        .bind(m.last_error.as_deref())
                        .bind(m.attempts as i64)
                        .bind(m.version as i64)
                        .bind(m.updated_at)
                        .bind(m.id.to_string())
                        .bind(m.tenant_id.as_str())
                        .bind(read as i64)
                        .execute(&mut *conn)
                        .await
                        .map_err(duplicate_or)?;
                        if done.rows_affected() != 1 {
                            let actual: Option<String> =
                                sqlx::query_scalar("SELECT status FROM id_mappings WHERE id = ?1")
                                    .bind(m.id.to_string())
                                    .fetch_optional(&mut *conn)
                                    .await?;
                            let actual = actual.and_then(|s| s.parse::<MappingStatus>().ok());
                            return Err(lost_race(m, read, actual));
                        }
                    }
                }
            }
            for c in conflicts {
                sqlx::query(
                    "INSERT INTO conflicts (id, tenant_id, integration_id, entity_type, source_id, target_id, \
                         source_record, target_record, base, conflicting_fields, strategy_applied, resolution, \
                         status, resolved_by, created_at, resolved_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
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
                .execute(&mut *conn)
                .await?;
            }
            if let Some(cp) = checkpoint {
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
        match result {
            Ok(()) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(())
            }
            Err(e) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                Err(e)
            }
        }
    }

    pub(super) async fn load_checkpoint(
        &self,
        run_id: Uuid,
        entity_type: &str,
        direction: StepDirection,
    ) -> Result<Option<StepCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error \
             FROM steps WHERE run_id = ?1 AND entity_type = ?2 AND direction = ?3",
        )
        .bind(run_id.to_string())
        .bind(entity_type)
        .bind(direction.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StepCheckpoint {
            run_id: uuid_of(&row, "run_id", "steps")?,
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
        }))
    }

    pub(super) async fn load_conflicts(
        &self,
        tenant: &TenantId,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(
            "SELECT id, tenant_id, integration_id, entity_type, source_record, target_record, base, \
                 conflicting_fields, strategy_applied, resolution, status, resolved_by, created_at, resolved_at \
             FROM conflicts WHERE tenant_id = ?1 AND id IN (SELECT value FROM json_each(?2)) \
             ORDER BY created_at, id",
        )
        .bind(tenant.as_str())
        .bind(Json(&ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let strategy: String = row.try_get("strategy_applied")?;
                Ok(ConflictRecord {
                    id: uuid_of(row, "id", "conflicts")?,
                    tenant_id: TenantId(row.try_get("tenant_id")?),
                    integration_id: IntegrationId(row.try_get("integration_id")?),
                    entity_type: row.try_get::<String, _>("entity_type")?.into(),
                    source_record: row.try_get::<Json<Record>, _>("source_record")?.0,
                    target_record: row.try_get::<Json<Record>, _>("target_record")?.0,
                    base: row.try_get::<Option<Json<Fields>>, _>("base")?.map(|b| b.0),
                    conflicting_fields: row.try_get::<Json<Vec<String>>, _>("conflicting_fields")?.0,
                    strategy_applied: strategy.parse().map_err(|e: String| corrupt("conflicts", e))?,
                    resolution: row.try_get::<Option<Json<Fields>>, _>("resolution")?.map(|r| r.0),
                    status: match status.as_str() {
                        "pending" => ConflictStatus::Pending,
                        "resolved" => ConflictStatus::Resolved,
                        other => return Err(corrupt("conflicts", format!("unknown status `{other}`"))),
                    },
                    resolved_by: row.try_get("resolved_by")?,
                    created_at: row.try_get("created_at")?,
                    resolved_at: row.try_get("resolved_at")?,
                })
            })
            .collect()
    }

    pub(super) async fn insert_run(
        &self,
        id: Uuid,
        (tenant, integration): (&TenantId, &IntegrationId),
        plan: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runs (id, tenant_id, integration_id, state, plan, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 'planned', ?4, ?5, ?5)",
        )
        .bind(id.to_string())
        .bind(tenant.as_str())
        .bind(integration.as_str())
        .bind(Json(plan))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
