//! The PostgreSQL backend: `jsonb`, `timestamptz`, `uuid`, batched writes
//! through `UNNEST`, one transaction per page.

use super::{Decided, StoreError, duplicate_or, lost_race};
use crate::conflict::{ConflictRecord, ConflictStatus};
use crate::ids::{EntityScope, IntegrationId, TenantId};
use crate::mapping::{IdMapping, MappingStatus};
use crate::record::{Fields, Record, Side};
use crate::run::{StepCheckpoint, StepDirection};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, types::Json};
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL database holding syncd's state.
pub struct PgStore {
    pool: PgPool,
}

const MAPPING_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
     idempotency_key, last_error, attempts, version, created_at, updated_at";

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

fn mapping_from_row(row: &PgRow) -> Result<IdMapping, StoreError> {
    let status: String = row.try_get("status")?;
    let base: Option<Json<Fields>> = row.try_get("base")?;
    Ok(IdMapping {
        id: row.try_get("id")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        integration_id: IntegrationId(row.try_get("integration_id")?),
        entity_type: row.try_get::<String, _>("entity_type")?.into(),
        source_id: row.try_get("source_id")?,
        target_id: row.try_get("target_id")?,
        status: status.parse().map_err(|e| corrupt("id_mappings", e))?,
        base: base.map(|b| b.0),
        idempotency_key: row.try_get("idempotency_key")?,
        last_error: row.try_get("last_error")?,
        attempts: row.try_get::<i32, _>("attempts")? as u32,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get::<i64, _>("version")? as u64,
    })
}

impl PgStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
        Ok(PgStore { pool })
    }

    /// Wraps an existing pool.
    pub fn new(pool: PgPool) -> PgStore {
        PgStore { pool }
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
                "SELECT {MAPPING_COLUMNS} FROM id_mappings \
                 WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3 AND source_id = ANY($4)"
            ),
            Side::Target => format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings \
                 WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3 AND target_id = ANY($4)"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(ids)
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
        let mut tx = self.pool.begin().await?;
        let (inserts, updates): (Vec<&Decided>, Vec<&Decided>) =
            decided.iter().partition(|d| d.read_version.is_none());
        if !inserts.is_empty() {
            let cols = MappingColumns::of(inserts.iter().map(|d| &d.next));
            sqlx::query(
                "INSERT INTO id_mappings (id, tenant_id, integration_id, entity_type, source_id, target_id, \
                     status, base, idempotency_key, last_error, attempts, version, created_at, updated_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::int4[], $12::int8[], \
                     $13::timestamptz[], $14::timestamptz[])",
            )
            .bind(&cols.id)
            .bind(&cols.tenant_id)
            .bind(&cols.integration_id)
            .bind(&cols.entity_type)
            .bind(&cols.source_id)
            .bind(&cols.target_id)
            .bind(&cols.status)
            .bind(&cols.base)
            .bind(&cols.idempotency_key)
            .bind(&cols.last_error)
            .bind(&cols.attempts)
            .bind(&cols.version)
            .bind(&cols.created_at)
            .bind(&cols.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(duplicate_or)?;
        }
        if !updates.is_empty() {
            let cols = MappingColumns::of(updates.iter().map(|d| &d.next));
            let read: Vec<i64> = updates
                .iter()
                .map(|d| d.read_version.unwrap_or_default() as i64)
                .collect();
            let updated: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE id_mappings AS m SET source_id = u.source_id, target_id = u.target_id, \
                     status = u.status, base = u.base, idempotency_key = u.idempotency_key, \
                     last_error = u.last_error, attempts = u.attempts, version = u.version, \
                     updated_at = u.updated_at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], \
                     $7::text[], $8::text[], $9::int4[], $10::int8[], $11::timestamptz[], $12::int8[]) \
                     AS u(id, tenant_id, source_id, target_id, status, base, idempotency_key, last_error, \
                          attempts, version, updated_at, read_version) \
                 WHERE m.id = u.id AND m.tenant_id = u.tenant_id AND m.version = u.read_version \
                 RETURNING m.id",
            )
            .bind(&cols.id)
            .bind(&cols.tenant_id)
            .bind(&cols.source_id)
            .bind(&cols.target_id)
            .bind(&cols.status)
            .bind(&cols.base)
            .bind(&cols.idempotency_key)
            .bind(&cols.last_error)
            .bind(&cols.attempts)
            .bind(&cols.version)
            .bind(&cols.updated_at)
            .bind(&read)
            .fetch_all(&mut *tx)
            .await
            .map_err(duplicate_or)?;
            if updated.len() != updates.len() {
                let lost = updates
                    .iter()
                    .find(|d| !updated.contains(&d.next.id))
                    .expect("a row was not updated");
                tx.rollback().await?;
                let actual: Option<String> =
                    sqlx::query_scalar("SELECT status FROM id_mappings WHERE id = $1")
                        .bind(lost.next.id)
                        .fetch_optional(&self.pool)
                        .await?;
                let actual = actual.and_then(|s| s.parse::<MappingStatus>().ok());
                return Err(lost_race(
                    &lost.next,
                    lost.read_version.unwrap_or_default(),
                    actual,
                ));
            }
        }
        if !conflicts.is_empty() {
            insert_conflicts(&mut tx, conflicts).await?;
        }
        if let Some(cp) = checkpoint {
            sqlx::query(
                "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, \
                     error, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (run_id, entity_type, direction) DO UPDATE SET state = EXCLUDED.state, \
                     cursor = EXCLUDED.cursor, counters = EXCLUDED.counters, error = EXCLUDED.error, \
                     updated_at = EXCLUDED.updated_at",
            )
            .bind(cp.run_id)
            .bind(cp.tenant_id.as_str())
            .bind(cp.stage as i32)
            .bind(cp.entity_type.as_str())
            .bind(cp.direction.as_str())
            .bind(cp.state.as_str())
            .bind(cp.cursor.as_ref().map(Json))
            .bind(Json(&cp.counters))
            .bind(cp.error.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn load_checkpoint(
        &self,
        run_id: Uuid,
        entity_type: &str,
        direction: StepDirection,
    ) -> Result<Option<StepCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error \
             FROM steps WHERE run_id = $1 AND entity_type = $2 AND direction = $3",
        )
        .bind(run_id)
        .bind(entity_type)
        .bind(direction.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StepCheckpoint {
            run_id: row.try_get("run_id")?,
            tenant_id: TenantId(row.try_get("tenant_id")?),
            stage: row.try_get::<i32, _>("stage")? as u32,
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
        let rows = sqlx::query(
            "SELECT id, tenant_id, integration_id, entity_type, source_record, target_record, base, \
                 conflicting_fields, strategy_applied, resolution, status, resolved_by, created_at, resolved_at \
             FROM conflicts WHERE tenant_id = $1 AND id = ANY($2) ORDER BY created_at, id",
        )
        .bind(tenant.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let strategy: String = row.try_get("strategy_applied")?;
                Ok(ConflictRecord {
                    id: row.try_get("id")?,
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
             VALUES ($1, $2, $3, 'planned', $4, $5, $5)",
        )
        .bind(id)
        .bind(tenant.as_str())
        .bind(integration.as_str())
        .bind(Json(plan))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Inserts conflict records in one statement.
async fn insert_conflicts(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conflicts: &[ConflictRecord],
) -> Result<(), StoreError> {
    let id: Vec<Uuid> = conflicts.iter().map(|c| c.id).collect();
    let tenant: Vec<&str> = conflicts.iter().map(|c| c.tenant_id.as_str()).collect();
    let integration: Vec<&str> = conflicts.iter().map(|c| c.integration_id.as_str()).collect();
    let entity: Vec<&str> = conflicts.iter().map(|c| c.entity_type.as_str()).collect();
    let source_id: Vec<&str> = conflicts.iter().map(|c| c.source_record.id.as_str()).collect();
    let target_id: Vec<&str> = conflicts.iter().map(|c| c.target_record.id.as_str()).collect();
    let source: Vec<Json<&Record>> = conflicts.iter().map(|c| Json(&c.source_record)).collect();
    let target: Vec<Json<&Record>> = conflicts.iter().map(|c| Json(&c.target_record)).collect();
    let base: Vec<Option<Json<&Fields>>> = conflicts.iter().map(|c| c.base.as_ref().map(Json)).collect();
    let fields: Vec<Json<&Vec<String>>> = conflicts.iter().map(|c| Json(&c.conflicting_fields)).collect();
    let strategy: Vec<&str> = conflicts.iter().map(|c| c.strategy_applied.as_str()).collect();
    let resolution: Vec<Option<Json<&Fields>>> = conflicts
        .iter()
        .map(|c| c.resolution.as_ref().map(Json))
        .collect();
    let status: Vec<&str> = conflicts.iter().map(|c| c.status.as_str()).collect();
    let resolved_by: Vec<Option<&str>> = conflicts.iter().map(|c| c.resolved_by.as_deref()).collect();
    let created_at: Vec<DateTime<Utc>> = conflicts.iter().map(|c| c.created_at).collect();
    let resolved_at: Vec<Option<DateTime<Utc>>> = conflicts.iter().map(|c| c.resolved_at).collect();
    sqlx::query(
        "INSERT INTO conflicts (id, tenant_id, integration_id, entity_type, source_id, target_id, source_record, \
             target_record, base, conflicting_fields, strategy_applied, resolution, status, resolved_by, \
             created_at, resolved_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::text[], $12::jsonb[], $13::text[], \
             $14::text[], $15::timestamptz[], $16::timestamptz[])",
    )
    .bind(&id)
    .bind(&tenant)
    .bind(&integration)
    .bind(&entity)
    .bind(&source_id)
    .bind(&target_id)
    .bind(&source)
    .bind(&target)
    .bind(&base)
    .bind(&fields)
    .bind(&strategy)
    .bind(&resolution)
    .bind(&status)
    .bind(&resolved_by)
    .bind(&created_at)
    .bind(&resolved_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Mapping rows as column arrays, for `UNNEST`.
struct MappingColumns<'a> {
    id: Vec<Uuid>,
    tenant_id: Vec<&'a str>,
    integration_id: Vec<&'a str>,
    entity_type: Vec<&'a str>,
    source_id: Vec<Option<&'a str>>,
    target_id: Vec<Option<&'a str>>,
    status: Vec<&'static str>,
    base: Vec<Option<Json<&'a Fields>>>,
    idempotency_key: Vec<Option<&'a str>>,
    last_error: Vec<Option<&'a str>>,
    attempts: Vec<i32>,
    version: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
}

impl<'a> MappingColumns<'a> {
    fn of(rows: impl Iterator<Item = &'a IdMapping>) -> MappingColumns<'a> {
        let mut c = MappingColumns {
            id: vec![],
            tenant_id: vec![],
            integration_id: vec![],
            entity_type: vec![],
            source_id: vec![],
            target_id: vec![],
            status: vec![],
            base: vec![],
            idempotency_key: vec![],
            last_error: vec![],
            attempts: vec![],
            version: vec![],
            created_at: vec![],
            updated_at: vec![],
        };
        for m in rows {
            c.id.push(m.id);
            c.tenant_id.push(m.tenant_id.as_str());
            c.integration_id.push(m.integration_id.as_str());
            c.entity_type.push(m.entity_type.as_str());
            c.source_id.push(m.source_id.as_deref());
            c.target_id.push(m.target_id.as_deref());
            c.status.push(m.status.as_str());
            c.base.push(m.base.as_ref().map(Json));
            c.idempotency_key.push(m.idempotency_key.as_deref());
            c.last_error.push(m.last_error.as_deref());
            c.attempts.push(m.attempts as i32);
            c.version.push(m.version as i64);
            c.created_at.push(m.created_at);
            c.updated_at.push(m.updated_at);
        }
        c
    }
}
