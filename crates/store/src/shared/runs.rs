//! Statements about runs, steps, leases, schedules, conflicts and brake
//! holds that both backends run as they are (see [`super`]).

macro_rules! run_statements {
    () => {
        pub(crate) async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM steps WHERE run_id = $1 ORDER BY stage, entity_type, direction DESC",
                crate::rows::STEP_COLUMNS
            ))
            .bind(self.id(run_id))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::step).collect()
        }

        pub(crate) async fn load_run(&self, tenant: Option<&TenantId>, id: Uuid) -> Result<Option<RunRow>, StoreError> {
            let row = sqlx::query(&format!(
                "SELECT {} FROM runs WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2)",
                crate::rows::RUN_COLUMNS
            ))
            .bind(self.id(id))
            .bind(tenant.map(TenantId::as_str))
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(crate::rows::run).transpose()
        }

        pub(crate) async fn list_runs(&self, f: &crate::RunFilter) -> Result<Vec<RunRow>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM runs \
                 WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1) \
                   AND (CAST($2 AS TEXT) IS NULL OR integration_id = $2) \
                   AND (CAST($3 AS TEXT) IS NULL OR state = $3) \
                   AND (CAST($5 AS TEXT) IS NULL OR CAST(id AS TEXT) LIKE $5) \
                 ORDER BY created_at DESC, id LIMIT $4",
                crate::rows::RUN_COLUMNS
            ))
            .bind(f.tenant.as_ref().map(TenantId::as_str))
            .bind(f.integration.as_ref().map(IntegrationId::as_str))
            .bind(f.state.map(RunState::as_str))
            .bind(f.limit as i64)
            .bind(f.id_prefix.as_deref().map(crate::rows::starts_with))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::run).collect()
        }

        /// Moves `step` of `run` to `to` while `lease` is held, if it is in
        /// one of the states listed (SQL) in `before` (its row is inserted
        /// if the run's plan gained the step since it was created);
        /// otherwise returns the state it is in.
        pub(crate) async fn set_step_state(
            &self,
            run: &RunRow,
            step: &PlannedStep,
            lease: &Lease,
            to: syncd_core::run::StepState,
            before: &str,
            now: DateTime<Utc>,
        ) -> Result<Option<String>, StoreError> {
            let mut tx = self.pool.begin().await?;
            Self::hold_lease(&mut tx, lease, now).await?;
            let moved = sqlx::query(&format!(
                "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (run_id, entity_type, direction, tenant_id) \
                 DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at \
                 WHERE steps.state IN ({before})"
            ))
            .bind(self.id(run.id))
            .bind(run.tenant_id.as_str())
            .bind(step.stage as i32)
            .bind(step.entity_type.as_str())
            .bind(step.direction.as_str())
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(None);
            }
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM steps WHERE run_id = $1 AND entity_type = $2 AND direction = $3")
                    .bind(self.id(run.id))
                    .bind(step.entity_type.as_str())
                    .bind(step.direction.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            Ok(Some(state.unwrap_or_else(|| "missing".into())))
        }

        pub(crate) async fn set_run_state(&self, run: &RunRow, c: &crate::RunChange<'_>) -> Result<bool, StoreError> {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "UPDATE runs SET state = $1, \
                     error = CASE WHEN $1 = 'succeeded' THEN NULL ELSE COALESCE($2, error) END, \
                     updated_at = $3, finished_at = $4 \
                 WHERE id = $5 AND tenant_id = $6 AND state = $7",
            )
            .bind(c.to.as_str())
            .bind(c.error)
            .bind(c.now)
            .bind(c.finished)
            .bind(self.id(run.id))
            .bind(run.tenant_id.as_str())
            .bind(run.state.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            if let Some(event) = c.steps {
                sqlx::query(&format!(
                    "UPDATE steps SET state = $1, error = CASE WHEN $1 = 'failed' THEN $2 END, updated_at = $3 \
                     WHERE run_id = $4 AND tenant_id = $5 AND state IN ({})",
                    crate::step_states_before(event)
                ))
                .bind(event.target().as_str())
                .bind(c.error)
                .bind(c.now)
                .bind(self.id(run.id))
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
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (run_id, tenant_id) DO UPDATE SET worker_id = excluded.worker_id, \
                     expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at \
                 WHERE run_leases.expires_at <= $5 OR run_leases.worker_id = excluded.worker_id",
            )
            .bind(self.id(run.id))
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
                "UPDATE run_leases SET expires_at = $1, heartbeat_at = $2 \
                 WHERE run_id = $3 AND worker_id = $4 AND expires_at > $2",
            )
            .bind(expires)
            .bind(now)
            .bind(self.id(lease.run_id))
            .bind(&lease.worker_id)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
            sqlx::query("DELETE FROM run_leases WHERE run_id = $1 AND worker_id = $2")
                .bind(self.id(lease.run_id))
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
            Ok(
                sqlx::query_as("SELECT worker_id, expires_at FROM run_leases WHERE run_id = $1 AND expires_at > $2")
                    .bind(self.id(run_id))
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        }

        pub(crate) async fn ensure_schedule(
            &self,
            tenant: &TenantId,
            integration: &IntegrationId,
            cron: &str,
            first: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO schedules (tenant_id, integration_id, cron, next_fire_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant_id, integration_id) DO UPDATE SET cron = excluded.cron, \
                     next_fire_at = excluded.next_fire_at WHERE schedules.cron <> excluded.cron",
            )
            .bind(tenant.as_str())
            .bind(integration.as_str())
            .bind(cron)
            .bind(first)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<crate::Schedule>, StoreError> {
            let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT tenant_id, integration_id, cron, next_fire_at FROM schedules WHERE next_fire_at <= $1 \
                 ORDER BY next_fire_at",
            )
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
            Ok(crate::Schedule::from_rows(rows))
        }

        pub(crate) async fn list_schedules(
            &self,
            tenant: Option<&TenantId>,
        ) -> Result<Vec<crate::Schedule>, StoreError> {
            let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT tenant_id, integration_id, cron, next_fire_at FROM schedules \
                 WHERE CAST($1 AS TEXT) IS NULL OR tenant_id = $1 ORDER BY next_fire_at, tenant_id, integration_id",
            )
            .bind(tenant.map(TenantId::as_str))
            .fetch_all(&self.pool)
            .await?;
            Ok(crate::Schedule::from_rows(rows))
        }

        pub(crate) async fn fire_schedule(&self, s: &crate::Schedule, next: DateTime<Utc>) -> Result<bool, StoreError> {
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

        pub(crate) async fn set_fire_run(&self, s: &crate::Schedule, run_id: Uuid) -> Result<(), StoreError> {
            sqlx::query(
                "UPDATE schedule_fires SET run_id = $1 WHERE tenant_id = $2 AND integration_id = $3 AND fire_at = $4",
            )
            .bind(self.id(run_id))
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
            let integrations: Vec<String> = integrations.iter().map(|i| i.to_string()).collect();
            let rows = sqlx::query(&format!(
                "SELECT {} FROM runs r \
                 WHERE (r.state IN ('planned', 'running') \
                        OR (r.state = 'suspended' AND NOT EXISTS (SELECT 1 FROM conflicts c \
                            WHERE c.tenant_id = r.tenant_id AND c.run_id = r.id AND c.status = 'pending'))) \
                   AND r.integration_id {} \
                   AND NOT EXISTS (SELECT 1 FROM run_leases l WHERE l.run_id = r.id AND l.expires_at > $1) \
                   AND NOT EXISTS (SELECT 1 FROM run_holds h \
                       WHERE h.tenant_id = r.tenant_id AND h.run_id = r.id AND h.confirmed_at IS NULL) \
                 ORDER BY r.created_at LIMIT $2",
                crate::rows::RUN_COLUMNS,
                Self::in_list("$3")
            ))
            .bind(now)
            .bind(limit as i64)
            .bind(self.texts(&integrations))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::run).collect()
        }

        pub(crate) async fn load_conflicts(
            &self,
            tenant: Option<&TenantId>,
            ids: &[Uuid],
        ) -> Result<Vec<ConflictRecord>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM conflicts \
                 WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1) AND id {} ORDER BY created_at, id",
                crate::rows::CONFLICT_COLUMNS,
                Self::in_list("$2")
            ))
            .bind(tenant.map(TenantId::as_str))
            .bind(self.ids(ids))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::conflict).collect()
        }

        pub(crate) async fn runs_by_state(&self, tenant: Option<&TenantId>) -> Result<Vec<(String, u64)>, StoreError> {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, count(*) FROM runs WHERE CAST($1 AS TEXT) IS NULL OR tenant_id = $1 GROUP BY state",
            )
            .bind(tenant.map(TenantId::as_str))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(|(s, n)| (s, n as u64)).collect())
        }

        pub(crate) async fn run_ends(&self) -> Result<Vec<crate::RunEnds>, StoreError> {
            let rows: Vec<(String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT tenant_id, integration_id, \
                        MAX(CASE WHEN state = 'succeeded' THEN finished_at END), \
                        MAX(CASE WHEN state = 'failed' THEN finished_at END) \
                 FROM runs GROUP BY tenant_id, integration_id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(tenant, integration, succeeded, failed)| crate::RunEnds {
                    tenant: tenant.into(),
                    integration,
                    succeeded,
                    failed,
                })
                .collect())
        }

        pub(crate) async fn pending_conflicts(&self, tenant: Option<&TenantId>) -> Result<u64, StoreError> {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM conflicts WHERE status = 'pending' \
                 AND (CAST($1 AS TEXT) IS NULL OR tenant_id = $1)",
            )
            .bind(tenant.map(TenantId::as_str))
            .fetch_one(&self.pool)
            .await?;
            Ok(n as u64)
        }

        pub(crate) async fn pending_conflicts_of_run(&self, tenant: &TenantId, run_id: Uuid) -> Result<u64, StoreError> {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM conflicts WHERE tenant_id = $1 AND run_id = $2 AND status = 'pending'",
            )
            .bind(tenant.as_str())
            .bind(self.id(run_id))
            .fetch_one(&self.pool)
            .await?;
            Ok(n as u64)
        }

        pub(crate) async fn list_conflicts(&self, f: &crate::ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM conflicts \
                 WHERE (CAST($1 AS TEXT) IS NULL OR tenant_id = $1) AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
                   AND (CAST($3 AS TEXT) IS NULL OR entity_type = $3) AND (CAST($4 AS TEXT) IS NULL OR run_id = $4) \
                   AND (CAST($6 AS TEXT) IS NULL OR CAST(id AS TEXT) LIKE $6) \
                 ORDER BY CASE WHEN CAST($2 AS TEXT) = 'resolved' THEN resolved_at END DESC, created_at, id LIMIT $5",
                crate::rows::CONFLICT_COLUMNS
            ))
            .bind(f.tenant.as_ref().map(TenantId::as_str))
            .bind(f.status.map(ConflictStatus::as_str))
            .bind(f.entity_type.as_deref())
            .bind(f.run_id.map(|r| self.id(r)))
            .bind(f.limit as i64)
            .bind(f.id_prefix.as_deref().map(crate::rows::starts_with))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::conflict).collect()
        }

        pub(crate) async fn unapplied_resolutions(&self, run: &RunRow) -> Result<Vec<ConflictRecord>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM conflicts c WHERE c.tenant_id = $2 AND c.integration_id = $3 \
                   AND c.status = 'resolved' AND c.resolved_by <> 'system' AND c.applied_at IS NULL \
                   AND (c.run_id = $1 OR c.run_id IS NULL OR NOT EXISTS (SELECT 1 FROM runs r \
                       WHERE r.id = c.run_id AND r.tenant_id = c.tenant_id \
                         AND r.state IN ('planned', 'running', 'suspended'))) \
                 ORDER BY c.resolved_at, c.id",
                crate::rows::CONFLICT_COLUMNS
            ))
            .bind(self.id(run.id))
            .bind(run.tenant_id.as_str())
            .bind(run.integration_id.as_str())
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::conflict).collect()
        }

        pub(crate) async fn open_conflicts(
            &self,
            scope: &EntityScope,
            side: Side,
            ids: &[String],
        ) -> Result<HashSet<String>, StoreError> {
            let column = match side {
                Side::Source => "source_id",
                Side::Target => "target_id",
            };
            // Two halves, each answered by its partial index (an `OR` of
            // the two states would read every conflict kept as history).
            let found: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT {column} FROM conflicts WHERE tenant_id = $1 AND integration_id = $2 \
                 AND entity_type = $3 AND {column} {list} AND status = 'pending' \
                 UNION ALL \
                 SELECT {column} FROM conflicts WHERE tenant_id = $1 AND integration_id = $2 \
                 AND entity_type = $3 AND {column} {list} \
                 AND status = 'resolved' AND resolved_by <> 'system' AND applied_at IS NULL",
                list = Self::in_list("$4")
            ))
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(self.texts(ids))
            .fetch_all(&self.pool)
            .await?;
            Ok(found.into_iter().collect())
        }

        pub(crate) async fn last_reconciled(&self, scope: &EntityScope) -> Result<Option<DateTime<Utc>>, StoreError> {
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

        pub(crate) async fn count_candidates(
            &self,
            tenant: &TenantId,
            run_id: Uuid,
            entity: &EntityType,
        ) -> Result<u64, StoreError> {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM delete_candidates WHERE tenant_id = $1 AND run_id = $2 AND entity_type = $3",
            )
            .bind(tenant.as_str())
            .bind(self.id(run_id))
            .bind(entity.as_str())
            .fetch_one(&self.pool)
            .await?;
            Ok(n as u64)
        }

        pub(crate) async fn add_hold(&self, h: &RunHold) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO run_holds (tenant_id, run_id, entity_type, count, mapped, delete_limit, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(h.tenant_id.as_str())
            .bind(self.id(h.run_id))
            .bind(&h.entity_type)
            .bind(h.count as i64)
            .bind(h.mapped as i64)
            .bind(h.limit as i64)
            .bind(h.created_at)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn run_holds(&self, tenant: Option<&TenantId>, run_id: Uuid) -> Result<Vec<RunHold>, StoreError> {
            let rows = sqlx::query(&format!(
                "SELECT {} FROM run_holds WHERE run_id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2) \
                 ORDER BY created_at, entity_type",
                crate::rows::HOLD_COLUMNS
            ))
            .bind(self.id(run_id))
            .bind(tenant.map(TenantId::as_str))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::hold).collect()
        }

        pub(crate) async fn confirm_deletes(
            &self,
            tenant: Option<&TenantId>,
            run_id: Uuid,
            by: &str,
            now: DateTime<Utc>,
        ) -> Result<Vec<RunHold>, StoreError> {
            let rows = sqlx::query(&format!(
                "UPDATE run_holds SET confirmed_by = $3, confirmed_at = $4 \
                 WHERE run_id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant_id = $2) AND confirmed_at IS NULL \
                 RETURNING {}",
                crate::rows::HOLD_COLUMNS
            ))
            .bind(self.id(run_id))
            .bind(tenant.map(TenantId::as_str))
            .bind(by)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(crate::rows::hold).collect()
        }
    };
}

pub(crate) use run_statements;
