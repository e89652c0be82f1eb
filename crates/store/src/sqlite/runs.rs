//! Runs, steps, leases, schedules and tokens in the sqlite state store.

use super::*;

impl SqliteStore {
    pub(crate) async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
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

    pub(crate) async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
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

    pub(crate) async fn load_run(
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

    pub(crate) async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
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

    /// Moves `step` of `run` to `to` if it is in one of the states listed
    /// (SQL) in `before`; otherwise returns the state it is in (or
    /// `missing`).
    pub(crate) async fn set_step_state(
        &self,
        run: &RunRow,
        step: &PlannedStep,
        to: syncd_core::run::StepState,
        before: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let moved = sqlx::query(&format!(
            "UPDATE steps SET state = ?1, updated_at = ?2 \
             WHERE run_id = ?3 AND tenant_id = ?4 AND entity_type = ?5 AND direction = ?6 \
               AND state IN ({before})"
        ))
        .bind(to.as_str())
        .bind(now)
        .bind(run.id.to_string())
        .bind(run.tenant_id.as_str())
        .bind(step.entity_type.as_str())
        .bind(step.direction.as_str())
        .execute(&self.pool)
        .await?;
        if moved.rows_affected() == 1 {
            return Ok(None);
        }
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM steps WHERE run_id = ?1 AND entity_type = ?2 AND direction = ?3",
        )
        .bind(run.id.to_string())
        .bind(step.entity_type.as_str())
        .bind(step.direction.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(Some(state.unwrap_or_else(|| "missing".into())))
    }

    pub(crate) async fn set_run_state(
        &self,
        run: &RunRow,
        c: &crate::RunChange<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = ?1, error = COALESCE(?2, error), updated_at = ?3, finished_at = ?4 \
             WHERE id = ?5 AND tenant_id = ?6 AND state = ?7",
        )
        .bind(c.to.as_str())
        .bind(c.error)
        .bind(c.now)
        .bind(c.finished)
        .bind(run.id.to_string())
        .bind(run.tenant_id.as_str())
        .bind(run.state.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(event) = c.steps {
            sqlx::query(&format!(
                "UPDATE steps SET state = ?1, error = CASE WHEN ?1 = 'failed' THEN ?2 END, updated_at = ?3 \
                 WHERE run_id = ?4 AND tenant_id = ?5 AND state IN ({})",
                crate::step_states_before(event)
            ))
            .bind(event.target().as_str())
            .bind(c.error)
            .bind(c.now)
            .bind(run.id.to_string())
            .bind(run.tenant_id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(crate) async fn claim_lease(
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

    pub(crate) async fn heartbeat(
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

    pub(crate) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM run_leases WHERE run_id = ?1 AND worker_id = ?2")
            .bind(lease.run_id.to_string())
            .bind(&lease.worker_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn lease_holder(
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

    pub(crate) async fn ensure_schedule(
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

    pub(crate) async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, StoreError> {
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

    pub(crate) async fn fire_schedule(&self, s: &Schedule, next: DateTime<Utc>) -> Result<bool, StoreError> {
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

    pub(crate) async fn set_fire_run(&self, s: &Schedule, run_id: Uuid) -> Result<(), StoreError> {
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

    pub(crate) async fn runs_to_execute(
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

    pub(crate) async fn insert_token(&self, t: &crate::TokenInfo, hash: &str) -> Result<(), StoreError> {
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

    pub(crate) async fn tokens(&self, hash: Option<&str>) -> Result<Vec<crate::TokenInfo>, StoreError> {
        let rows: Vec<crate::TokenRow> = sqlx::query_as(
            "SELECT id, prefix, tenant_id, admin, created_at, expires_at, revoked_at, last_used_at \
             FROM api_tokens WHERE ?1 IS NULL OR token_hash = ?1 ORDER BY created_at, id",
        )
        .bind(hash)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(crate::TokenInfo::from_row).collect())
    }

    pub(crate) async fn set_token_time(
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
}

pub(super) fn run_from_row(row: &SqliteRow) -> Result<RunRow, StoreError> {
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
