//! The PostgreSQL backend: `jsonb`, `timestamptz`, `uuid`, batched writes
//! through `UNNEST`, one transaction per page.

use super::{
    ConflictFilter, Decided, Lease, MappedId, PageCommit, RESUME_CHANNEL, RunFilter, RunHold, RunRow,
    Schedule, StoreError, duplicate_or, held_mappings, lost_race,
};
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

const MAPPING_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
     idempotency_key, last_error, attempts, version, created_at, updated_at";

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
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.options([CUSTOM_PLANS]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Ok(PgStore::new(pool))
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
    async fn scope_number(&self, scope: &EntityScope, register: bool) -> Result<Option<i32>, StoreError> {
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
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, lease, now).await?;
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
        // One index probe per id (a nested loop over the ids): with
        // `id = ANY($4)` the planner, on statistics older than a large first
        // sync, scanned the scope's whole index prefix instead (migration 0002).
        let column = match side {
            Side::Source => "source_id",
            Side::Target => "target_id",
        };
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT m.* FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL \
             (SELECT {MAPPING_COLUMNS} FROM id_mappings WHERE scope = $1 AND {column} = k.key OFFSET 0) AS m"
        );
        let rows = sqlx::query(&sql)
            .bind(number)
            .bind(ids)
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
        let (inserts, updates): (Vec<&Decided>, Vec<&Decided>) =
            decided.iter().partition(|d| d.read_version.is_none());
        let inserts: Vec<&IdMapping> = inserts.into_iter().map(|d| &d.next).collect();
        let scopes = self.scope_numbers(&inserts).await?;
        let mut tx = self.pool.begin().await?;
        if let Some(lease) = &page.lease {
            hold_lease(&mut tx, lease, now).await?;
        }
        if let Some(id) = page.settles {
            let settled = sqlx::query("DELETE FROM reservations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if settled.rows_affected() == 0 {
                return Err(StoreError::ReservationGone { id });
            }
        }
        if let Some(r) = &page.reserve {
            sqlx::query(
                "INSERT INTO reservations (id, tenant_id, integration_id, entity_type, mappings, created_at) \
                 VALUES ($1, $2, $3, $4, $5::json, $6)",
            )
            .bind(r.id)
            .bind(r.scope.tenant_id.as_str())
            .bind(r.scope.integration_id.as_str())
            .bind(r.scope.entity_type.as_str())
            .bind(r.rows_json())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
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
            sqlx::query("UPDATE conflicts SET applied_at = $1 WHERE id = ANY($2)")
                .bind(now)
                .bind(&page.applied_conflicts)
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
        if let Some(scope) = &page.reconciled {
            sqlx::query(
                "INSERT INTO reconciles (tenant_id, integration_id, entity_type, reconciled_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, integration_id, entity_type) \
                 DO UPDATE SET reconciled_at = EXCLUDED.reconciled_at",
            )
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(c) = &page.sync_cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (tenant_id, integration_id, entity_type, side, cursor, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, integration_id, entity_type, side) \
                 DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = EXCLUDED.updated_at",
            )
            .bind(c.scope.tenant_id.as_str())
            .bind(c.scope.integration_id.as_str())
            .bind(c.scope.entity_type.as_str())
            .bind(c.side.as_str())
            .bind(Json(&c.cursor))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(cp) = &page.checkpoint {
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

    pub(super) async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, error \
             FROM steps WHERE run_id = $1 ORDER BY stage, entity_type, direction DESC",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StepCheckpoint {
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
                })
            })
            .collect()
    }

    pub(super) async fn load_conflicts(
        &self,
        tenant: Option<&TenantId>,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND id = ANY($2) ORDER BY created_at, id"
        ))
        .bind(tenant.map(TenantId::as_str))
        .bind(ids)
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
            "SELECT count(*) FROM conflicts WHERE tenant_id = $1 AND run_id = $2 AND status = 'pending'",
        )
        .bind(tenant.as_str())
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    pub(super) async fn list_conflicts(&self, f: &ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR entity_type = $3) AND ($4::uuid IS NULL OR run_id = $4) \
             ORDER BY created_at, id LIMIT $5"
        ))
        .bind(f.tenant.as_ref().map(TenantId::as_str))
        .bind(f.status.map(ConflictStatus::as_str))
        .bind(f.entity_type.as_deref())
        .bind(f.run_id)
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
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE run_id = $1 AND status = 'resolved' \
               AND resolved_by <> 'system' AND applied_at IS NULL ORDER BY resolved_at, id"
        ))
        .bind(run_id)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolution = $1, resolved_by = $2, resolved_at = $3 \
             WHERE id = $4 AND tenant_id = $5 AND status = 'pending'",
        )
        .bind(Json(resolution))
        .bind(by)
        .bind(now)
        .bind(c.id)
        .bind(c.tenant_id.as_str())
        .execute(&mut *tx)
        .await?;
        // The last decision of a run wakes the workers; PostgreSQL delivers
        // the notification only if this transaction commits.
        if let (1, Some(run_id)) = (done.rows_affected(), c.run_id) {
            sqlx::query(
                "SELECT pg_notify($1, concat(current_schema(), ' ', $2::text)) WHERE NOT EXISTS \
                 (SELECT 1 FROM conflicts WHERE tenant_id = $3 AND run_id = $2 AND status = 'pending')",
            )
            .bind(RESUME_CHANNEL)
            .bind(run_id)
            .bind(c.tenant_id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Announces on [`RESUME_CHANNEL`] that `run_id` may be resumed.
    pub(super) async fn notify_resume(&self, run_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, concat(current_schema(), ' ', $2::text))")
            .bind(RESUME_CHANNEL)
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A listener on [`RESUME_CHANNEL`] with a connection of its own (named
    /// `application_name` in `pg_stat_activity`), so it holds no slot of the
    /// store's pool and outlives its closing; and the schema whose runs are
    /// this store's.
    pub(super) async fn listen_for_resumes(
        &self,
        application_name: &str,
    ) -> Result<(PgListener, String), StoreError> {
        let schema: String = sqlx::query_scalar("SELECT concat(current_schema(), '')")
            .fetch_one(&self.pool)
            .await?;
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(application_name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(RESUME_CHANNEL).await?;
        Ok((listener, schema))
    }

    pub(super) async fn open_conflicts(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let sql = match side {
            Side::Source => {
                "SELECT source_id FROM conflicts WHERE tenant_id = $1 AND integration_id = $2 \
                 AND entity_type = $3 AND status = 'pending' AND source_id = ANY($4)"
            }
            Side::Target => {
                "SELECT target_id FROM conflicts WHERE tenant_id = $1 AND integration_id = $2 \
                 AND entity_type = $3 AND status = 'pending' AND target_id = ANY($4)"
            }
        };
        let found: Vec<String> = sqlx::query_scalar(sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        Ok(found.into_iter().collect())
    }

    pub(super) async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (id, tenant_id, integration_id, state, plan, trigger, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(run.id)
        .bind(run.tenant_id.as_str())
        .bind(run.integration_id.as_str())
        .bind(run.state.as_str())
        .bind(Json(&run.plan))
        .bind(&run.trigger)
        .bind(run.created_at)
        .execute(&mut *tx)
        .await?;
        let stage: Vec<i32> = steps.iter().map(|s| s.stage as i32).collect();
        let entity: Vec<&str> = steps.iter().map(|s| s.entity_type.as_str()).collect();
        let direction: Vec<&str> = steps.iter().map(|s| s.direction.as_str()).collect();
        sqlx::query(
            "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, updated_at) \
             SELECT $1, $2, s.stage, s.entity_type, s.direction, 'pending', $3 \
             FROM UNNEST($4::int4[], $5::text[], $6::text[]) AS s(stage, entity_type, direction)",
        )
        .bind(run.id)
        .bind(run.tenant_id.as_str())
        .bind(run.created_at)
        .bind(&stage)
        .bind(&entity)
        .bind(&direction)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn load_run(
        &self,
        tenant: Option<&TenantId>,
        id: Uuid,
    ) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
        ))
        .bind(id)
        .bind(tenant.map(TenantId::as_str))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub(super) async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR integration_id = $2) \
               AND ($3::text IS NULL OR state = $3) \
             ORDER BY created_at DESC, id LIMIT $4"
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
            "UPDATE runs SET state = $1, error = COALESCE($2, error), updated_at = $3, finished_at = $4 \
             WHERE id = $5 AND tenant_id = $6 AND state = $7",
        )
        .bind(to.as_str())
        .bind(error)
        .bind(now)
        .bind(finished)
        .bind(run.id)
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
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (run_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, \
                 expires_at = EXCLUDED.expires_at, heartbeat_at = EXCLUDED.heartbeat_at \
             WHERE run_leases.expires_at <= $5 OR run_leases.worker_id = EXCLUDED.worker_id",
        )
        .bind(run.id)
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
            "UPDATE run_leases SET expires_at = $1, heartbeat_at = $2 \
             WHERE run_id = $3 AND worker_id = $4 AND expires_at > $2",
        )
        .bind(expires)
        .bind(now)
        .bind(lease.run_id)
        .bind(&lease.worker_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM run_leases WHERE run_id = $1 AND worker_id = $2")
            .bind(lease.run_id)
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
            "SELECT worker_id, expires_at FROM run_leases WHERE run_id = $1 AND expires_at > $2",
        )
        .bind(run_id)
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
             WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3 AND side = $4",
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
            "INSERT INTO schedules (tenant_id, integration_id, cron, next_fire_at) VALUES ($1, $2, $3, $4) \
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
            "SELECT tenant_id, integration_id, cron, next_fire_at FROM schedules WHERE next_fire_at <= $1 \
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
            "UPDATE schedules SET next_fire_at = $1 \
             WHERE tenant_id = $2 AND integration_id = $3 AND next_fire_at = $4",
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
            "INSERT INTO schedule_fires (tenant_id, integration_id, fire_at) VALUES ($1, $2, $3) \
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
            "UPDATE schedule_fires SET run_id = $1 WHERE tenant_id = $2 AND integration_id = $3 AND fire_at = $4",
        )
        .bind(run_id)
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
               AND r.integration_id = ANY($3) \
               AND NOT EXISTS (SELECT 1 FROM run_leases l WHERE l.run_id = r.id AND l.expires_at > $1) \
               AND NOT EXISTS (SELECT 1 FROM run_holds h \
                   WHERE h.tenant_id = r.tenant_id AND h.run_id = r.id AND h.confirmed_at IS NULL) \
             ORDER BY r.created_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit as i64)
        .bind(integrations)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub(super) async fn insert_token(&self, t: &super::TokenInfo, hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant_id, admin, token_hash, created_at, prefix, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id)
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
            "SELECT id::text, prefix, tenant_id, admin, created_at, expires_at, revoked_at, last_used_at \
             FROM api_tokens WHERE $1::text IS NULL OR token_hash = $1 ORDER BY created_at, id",
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
        sqlx::query(&format!("UPDATE api_tokens SET {column} = $2 WHERE id = $1"))
            .bind(id)
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
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE scope = $1 AND status <> 'mapped' AND status IN ('pending', 'failed') \
               AND ($2::uuid IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        ))
        .bind(number)
        .bind(after)
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
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings WHERE scope = $1 AND status = $2 \
             AND ($4 OR last_error IS NOT NULL) ORDER BY updated_at, id LIMIT $3"
        ))
        .bind(number)
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
            "SELECT s.entity_type, m.status, count(*) FROM mapping_scopes s JOIN id_mappings m ON m.scope = s.id \
             WHERE s.tenant_id = $1 AND s.integration_id = $2 GROUP BY 1, 2 ORDER BY 1, 2",
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

impl PgStore {
    pub(super) async fn mapped_ids_page(
        &self,
        scope: &EntityScope,
        side: Side,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MappedId>, StoreError> {
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(Vec::new());
        };
        // One fixed text per side: the column is never built from input.
        let sql = match side {
            Side::Source => {
                "SELECT id, source_id FROM id_mappings \
                 WHERE scope = $1 AND source_id IS NOT NULL AND ($2::text IS NULL OR source_id > $2) \
                   AND status = 'mapped' \
                 ORDER BY source_id LIMIT $3"
            }
            Side::Target => {
                "SELECT id, target_id FROM id_mappings \
                 WHERE scope = $1 AND target_id IS NOT NULL AND ($2::text IS NULL OR target_id > $2) \
                   AND status = 'mapped' \
                 ORDER BY target_id LIMIT $3"
            }
        };
        let rows: Vec<(Uuid, String)> = sqlx::query_as(sql)
            .bind(number)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(mapping_id, record_id)| MappedId {
                mapping_id,
                record_id,
            })
            .collect())
    }

    pub(super) async fn unverified_page(
        &self,
        scope: &EntityScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE scope = $1 AND status = 'mapped' AND updated_at < $2 \
             ORDER BY updated_at, id LIMIT $3"
        ))
        .bind(number)
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(super) async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
        let Some(number) = self.scope_number(scope, false).await? else {
            return Ok(0);
        };
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM id_mappings WHERE scope = $1 AND status = 'mapped'")
                .bind(number)
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
             WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3",
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
            "SELECT count(*) FROM delete_candidates WHERE tenant_id = $1 AND run_id = $2 AND entity_type = $3",
        )
        .bind(tenant.as_str())
        .bind(run_id)
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
            "SELECT {columns}, c.gone FROM delete_candidates c \
             JOIN id_mappings m ON m.id = c.mapping_id AND m.tenant_id = c.tenant_id \
             WHERE c.tenant_id = $1 AND c.run_id = $2 AND c.entity_type = $3 \
               AND ($4::uuid IS NULL OR c.mapping_id > $4) \
             ORDER BY c.mapping_id LIMIT $5"
        ))
        .bind(tenant.as_str())
        .bind(run_id)
        .bind(entity.as_str())
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let gone: &str = row.try_get(14)?;
                Ok((
                    mapping_from_row(row)?,
                    gone.parse().map_err(|e| corrupt("delete_candidates", e))?,
                ))
            })
            .collect()
    }

    pub(super) async fn add_hold(&self, h: &RunHold) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_holds (tenant_id, run_id, entity_type, count, mapped, delete_limit, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(h.tenant_id.as_str())
        .bind(h.run_id)
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
            "SELECT {HOLD_COLUMNS} FROM run_holds WHERE run_id = $1 AND ($2::text IS NULL OR tenant_id = $2) \
             ORDER BY created_at, entity_type"
        ))
        .bind(run_id)
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
            "UPDATE run_holds SET confirmed_by = $3, confirmed_at = $4 \
             WHERE run_id = $1 AND ($2::text IS NULL OR tenant_id = $2) AND confirmed_at IS NULL \
             RETURNING {HOLD_COLUMNS}"
        ))
        .bind(run_id)
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

fn hold_from_row(row: &PgRow) -> Result<RunHold, StoreError> {
    Ok(RunHold {
        run_id: row.try_get(0)?,
        tenant_id: TenantId(row.try_get(1)?),
        entity_type: row.try_get(2)?,
        count: row.try_get::<i64, _>(3)? as u64,
        mapped: row.try_get::<i64, _>(4)? as u64,
        limit: row.try_get::<i64, _>(5)? as u64,
        confirmed_by: row.try_get(6)?,
        confirmed_at: row.try_get(7)?,
        created_at: row.try_get(8)?,
    })
}

const CONFLICT_COLUMNS: &str = "id, tenant_id, integration_id, entity_type, run_id, source_record, \
     target_record, base, conflicting_fields, strategy_applied, resolution, status, resolved_by, created_at, \
     resolved_at";

fn conflict_from_row(row: &PgRow) -> Result<ConflictRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let strategy: String = row.try_get("strategy_applied")?;
    Ok(ConflictRecord {
        id: row.try_get("id")?,
        tenant_id: TenantId(row.try_get("tenant_id")?),
        integration_id: IntegrationId(row.try_get("integration_id")?),
        entity_type: row.try_get::<String, _>("entity_type")?.into(),
        run_id: row.try_get("run_id")?,
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

const RUN_COLUMNS: &str =
    "id, tenant_id, integration_id, state, plan, trigger, error, created_at, updated_at, finished_at";

fn run_from_row(row: &PgRow) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: row.try_get("id")?,
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

/// Fencing: locks our lease row for the transaction, or fails. A share
/// lock: it holds off a takeover (an update of the row) until we commit, and
/// the worker's own page commits, which overlap, do not wait for each other.
async fn hold_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &Lease,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let held: Option<Uuid> = sqlx::query_scalar(
        "SELECT run_id FROM run_leases WHERE run_id = $1 AND worker_id = $2 AND expires_at > $3 FOR SHARE",
    )
    .bind(lease.run_id)
    .bind(&lease.worker_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => {
            // Taken over, or only expired: the message says which.
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT worker_id FROM run_leases WHERE run_id = $1 AND worker_id <> $2 AND expires_at > $3",
            )
            .bind(lease.run_id)
            .bind(&lease.worker_id)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await?;
            Err(StoreError::LeaseLost {
                run_id: lease.run_id,
                worker_id: lease.worker_id.clone(),
                holder,
            })
        }
    }
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
