//! The PostgreSQL backend: `jsonb`, `timestamptz`, `uuid`, batched writes
//! through `UNNEST`, one transaction per page.

mod removals;
mod reviews;
mod runs;

use super::{
    Decided, Lease, RESUME_CHANNEL, RunHold, RunRow, StoreError, duplicate_or, held_mappings, lost_race,
};
use crate::rows::{Dialect, MAPPING_COLUMNS};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, types::Json};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use syncd_core::conflict::{ConflictRecord, ConflictStatus};
use syncd_core::deletes::Gone;
use syncd_core::ids::{EntityScope, EntityType, IntegrationId, TenantId};
use syncd_core::mapping::{IdMapping, MappingStatus};
use syncd_core::record::{Fields, Record, Side};
use syncd_core::run::{PlannedStep, RunState, StepCheckpoint};
use uuid::Uuid;

pub use syncd_core::sql::CUSTOM_PLANS;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A PostgreSQL database holding syncd's state.
pub struct PgStore {
    pool: PgPool,
    /// The number of each scope of the ID map (`mapping_scopes`), once
    /// known: numbers are never reused or changed.
    scopes: Mutex<HashMap<EntityScope, i32>>,
}

fn corrupt(table: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

/// Decodes a row of [`MAPPING_COLUMNS`], by position: lookups decode
/// thousands of rows a page, and a by-name lookup per column showed up.
fn mapping_from_row(row: &PgRow) -> Result<IdMapping, StoreError> {
    let status: &str = row.try_get(6)?;
    let base: Option<Json<Fields>> = row.try_get(7)?;
    Ok(IdMapping {
        id: row.try_get(0)?,
        tenant_id: TenantId(row.try_get(1)?),
        integration_id: IntegrationId(row.try_get(2)?),
        entity_type: row.try_get::<String, _>(3)?.into(),
        source_id: row.try_get(4)?,
        target_id: row.try_get(5)?,
        status: status.parse().map_err(|e| corrupt("id_mappings", e))?,
        base: base.map(|b| b.0),
        idempotency_key: row.try_get(8)?,
        last_error: row.try_get(9)?,
        attempts: row.try_get::<i32, _>(10)? as u32,
        version: row.try_get::<i64, _>(11)? as u64,
        created_at: row.try_get(12)?,
        updated_at: row.try_get(13)?,
    })
}

impl PgStore {
    crate::shared::run_statements!();
    crate::shared::shared_statements!(sqlx::PgConnection);
}

impl PgStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.options([CUSTOM_PLANS]);
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
        {
            // The pool tried until its timeout and kept no reason: one
            // connection of its own says why (refused, no such host, a
            // password).
            Err(sqlx::Error::PoolTimedOut) => {
                use sqlx::Connection;
                let once = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    sqlx::PgConnection::connect_with(&options),
                );
                Err(once
                    .await
                    .ok()
                    .and_then(Result::err)
                    .unwrap_or(sqlx::Error::PoolTimedOut))
            }
            other => other,
        }?;
        Ok(PgStore::new(pool))
    }

    /// The search path, when it names no schema that exists (where the
    /// migration would create the tables).
    pub(crate) async fn search_path_without_schema(&self) -> Result<Option<String>, StoreError> {
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&self.pool)
            .await?;
        match schema {
            Some(_) => Ok(None),
            None => Ok(Some(
                sqlx::query_scalar("SHOW search_path")
                    .fetch_one(&self.pool)
                    .await?,
            )),
        }
    }

    /// Wraps an existing pool.
    pub fn new(pool: PgPool) -> PgStore {
        PgStore {
            pool,
            scopes: Mutex::default(),
        }
    }

    /// The number that stands for `scope` in the ID map's indexes
    /// (migration 0007). `None` when no mapping of the scope was ever
    /// written, unless `register`, which numbers a new scope. Registering
    /// commits on its own: a number must never be cached from a transaction
    /// that may still roll back.
    pub(crate) async fn scope_number(
        &self,
        scope: &EntityScope,
        register: bool,
    ) -> Result<Option<i32>, StoreError> {
        if let Some(n) = self.scopes.lock().expect("scope numbers").get(scope) {
            return Ok(Some(*n));
        }
        let mut n: Option<i32> = sqlx::query_scalar(
            "SELECT id FROM mapping_scopes WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3",
        )
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .fetch_optional(&self.pool)
        .await?;
        if n.is_none() && register {
            // `DO UPDATE`, not `DO NOTHING`: a row another session inserts
            // at the same moment is returned too.
            n = Some(
                sqlx::query_scalar(
                    "INSERT INTO mapping_scopes (tenant_id, integration_id, entity_type) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id, integration_id, entity_type) \
                     DO UPDATE SET tenant_id = EXCLUDED.tenant_id RETURNING id",
                )
                .bind(scope.tenant_id.as_str())
                .bind(scope.integration_id.as_str())
                .bind(scope.entity_type.as_str())
                .fetch_one(&self.pool)
                .await?,
            );
        }
        if let Some(n) = n {
            self.scopes
                .lock()
                .expect("scope numbers")
                .insert(scope.clone(), n);
        }
        Ok(n)
    }

    /// The scope number of each of `rows`, found once per run of rows of
    /// one scope (a page's rows share one).
    async fn scope_numbers(&self, rows: &[&IdMapping]) -> Result<Vec<i32>, StoreError> {
        let mut scopes: Vec<i32> = Vec::with_capacity(rows.len());
        let mut last: Option<(&IdMapping, i32)> = None;
        for m in rows.iter().copied() {
            let number = match last {
                Some((l, n))
                    if l.entity_type == m.entity_type
                        && l.integration_id == m.integration_id
                        && l.tenant_id == m.tenant_id =>
                {
                    n
                }
                _ => self
                    .scope_number(&m.scope(), true)
                    .await?
                    .expect("a registered scope has a number"),
            };
            last = Some((m, number));
            scopes.push(number);
        }
        Ok(scopes)
    }

    /// The reservation rows of `scope` (see [`super::held_mappings`]).
    pub(super) async fn reservations(
        &self,
        scope: &EntityScope,
    ) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, StoreError> {
        reservations_of(&mut *self.pool.acquire().await?, scope, "").await
    }

    /// See [`super::Store::settle_leftovers`].
    pub(super) async fn settle_leftovers(
        &self,
        scope: &EntityScope,
        lease: &Lease,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::hold_lease(&mut tx, lease, Utc::now()).await?;
        let rows = reservations_of(&mut tx, scope, " FOR UPDATE").await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let held = held_mappings(scope, &rows)?;
        let held: Vec<&IdMapping> = held.iter().collect();
        let scopes = self.scope_numbers(&held).await?;
        let added = insert_mappings(&mut tx, &held, &scopes, "ON CONFLICT DO NOTHING").await?;
        let ids: Vec<Uuid> = rows.iter().map(|(id, _, _)| *id).collect();
        super::skipped_held(scope, &ids, held.len() as u64, added);
        sqlx::query("DELETE FROM reservations WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(added)
    }

    pub(super) async fn commit_page(&self, w: super::PageWrite<'_>) -> Result<(), StoreError> {
        let super::PageWrite { decided, page, now } = w;
        let (inserts, updates): (Vec<&Decided>, Vec<&Decided>) =
            decided.iter().partition(|d| d.read_version.is_none());
        let inserts: Vec<&IdMapping> = inserts.into_iter().map(|d| &d.next).collect();
        let scopes = self.scope_numbers(&inserts).await?;
        let mut tx = self.pool.begin().await?;
        if let Some(lease) = &page.lease {
            Self::hold_lease(&mut tx, lease, now).await?;
        }
        self.settle_and_reserve(&mut tx, page, now).await?;
        if !inserts.is_empty() {
            insert_mappings(&mut tx, &inserts, &scopes, "").await?;
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
                 WHERE m.id = ANY($1) AND m.id = u.id AND m.tenant_id = u.tenant_id \
                   AND m.version = u.read_version \
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
        if !page.conflicts.is_empty() {
            insert_conflicts(&mut tx, &page.conflicts).await?;
        }
        if !page.applied_conflicts.is_empty() {
            let (ids, outcomes): (Vec<Uuid>, Vec<&str>) = page
                .applied_conflicts
                .iter()
                .map(|(id, o)| (*id, o.as_str()))
                .unzip();
            sqlx::query(
                "UPDATE conflicts c SET applied_at = $1, outcome = u.outcome \
                 FROM UNNEST($2::uuid[], $3::text[]) AS u(id, outcome) WHERE c.id = u.id",
            )
            .bind(now)
            .bind(&ids)
            .bind(&outcomes)
            .execute(&mut *tx)
            .await?;
        }
        if !page.candidates.is_empty() {
            let c = &page.candidates;
            sqlx::query(
                "INSERT INTO delete_candidates (tenant_id, run_id, entity_type, mapping_id, gone, created_at) \
                 SELECT t, r, e, m, g, $6 FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::text[]) \
                     AS u(t, r, e, m, g) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(c.iter().map(|c| c.tenant_id.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.run_id).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.entity_type.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.mapping_id).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.gone.to_string()).collect::<Vec<_>>())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        self.finish_page(&mut tx, page, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl PgStore {}

/// Inserts conflict records in one statement.
async fn insert_conflicts(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    conflicts: &[ConflictRecord],
) -> Result<(), StoreError> {
    let id: Vec<Uuid> = conflicts.iter().map(|c| c.id).collect();
    let run_id: Vec<Option<Uuid>> = conflicts.iter().map(|c| c.run_id).collect();
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
             created_at, resolved_at, run_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::text[], $12::jsonb[], $13::text[], \
             $14::text[], $15::timestamptz[], $16::timestamptz[], $17::uuid[])",
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
    .bind(&run_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The reservation rows of `scope`: id, held mappings, time; `lock` ends
/// the statement (empty, or `FOR UPDATE`).
async fn reservations_of(
    conn: &mut sqlx::PgConnection,
    scope: &EntityScope,
    lock: &str,
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT id, mappings::text, created_at FROM reservations \
         WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3 ORDER BY id{lock}"
    ))
    .bind(scope.tenant_id.as_str())
    .bind(scope.integration_id.as_str())
    .bind(scope.entity_type.as_str())
    .fetch_all(&mut *conn)
    .await?)
}

/// Inserts `rows` into the ID map, each with its scope number; `on_conflict`
/// ends the statement (empty, or `ON CONFLICT DO NOTHING`). Returns the
/// number of rows inserted.
async fn insert_mappings(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[&IdMapping],
    scopes: &[i32],
    on_conflict: &str,
) -> Result<u64, StoreError> {
    let cols = MappingColumns::of(rows.iter().copied());
    let done = sqlx::query(&format!(
        "INSERT INTO id_mappings (id, tenant_id, integration_id, entity_type, source_id, target_id, \
             status, base, idempotency_key, last_error, attempts, version, created_at, updated_at, scope) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::int4[], $12::int8[], \
             $13::timestamptz[], $14::timestamptz[], $15::int4[]) {on_conflict}"
    ))
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
    .bind(scopes)
    .execute(&mut **tx)
    .await
    .map_err(duplicate_or)?;
    Ok(done.rows_affected())
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
