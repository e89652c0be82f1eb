//! Statements both backends run as they are: written once here and
//! expanded into `impl PgStore` and `impl SqliteStore`, where each is
//! type-checked against its own database. They use `$n` parameters (SQLite
//! reads them too), `CAST($n AS TEXT) IS NULL` for an optional filter,
//! ids bound through [`Dialect::id`](crate::rows::Dialect::id) and rows
//! read through [`Cols`](crate::rows::Cols). What a database does its own
//! way (arrays, bulk inserts, locking) stays in `postgres.rs` and
//! `sqlite.rs`.

mod runs;

pub(crate) use runs::run_statements;

macro_rules! shared_statements {
    ($conn:ty) => {
        pub(super) async fn migrate(&self) -> Result<(), StoreError> {
            MIGRATOR.run(&self.pool).await?;
            Ok(())
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
            Ok(cursor.map(|c| crate::rows::nul_restored(c.0)))
        }

        /// Fails a page's commit unless `lease` is still held and its run
        /// has not ended (read so that both stay so until the commit: a
        /// cancel waits for a commit in flight, and no commit of the run
        /// lands after it), naming who took the lease over if anyone did.
        async fn hold_lease(conn: &mut $conn, lease: &Lease, now: DateTime<Utc>) -> Result<(), StoreError> {
            let held: Option<String> = sqlx::query_scalar(&format!(
                "SELECT r.state FROM run_leases l JOIN runs r ON r.id = l.run_id AND r.tenant_id = l.tenant_id \
                 WHERE l.run_id = $1 AND l.worker_id = $2 AND l.expires_at > $3{}",
                Self::LOCK_SHARE
            ))
            .bind(<Self as crate::rows::Dialect>::id_of(lease.run_id))
            .bind(&lease.worker_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(state) = held {
                let state: RunState = state
                    .parse()
                    .map_err(|reason| StoreError::Corrupt { table: "runs", reason })?;
                if !state.is_active() {
                    return Err(StoreError::RunEnded {
                        run_id: lease.run_id,
                        state,
                    });
                }
                return Ok(());
            }
            // Taken over, or only expired: the message says which.
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT worker_id FROM run_leases WHERE run_id = $1 AND worker_id <> $2 AND expires_at > $3",
            )
            .bind(<Self as crate::rows::Dialect>::id_of(lease.run_id))
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

        /// The start of a page's commit: the reservation it settles is
        /// deleted (the commit fails if it is gone), the one it makes kept.
        async fn settle_and_reserve(
            &self,
            conn: &mut $conn,
            page: &crate::PageCommit,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            if let Some(id) = page.settles {
                let settled = sqlx::query("DELETE FROM reservations WHERE id = $1")
                    .bind(self.id(id))
                    .execute(&mut *conn)
                    .await?;
                if settled.rows_affected() == 0 {
                    return Err(StoreError::ReservationGone { id });
                }
            }
            if let Some(r) = &page.reserve {
                sqlx::query(Self::INSERT_RESERVATION)
                    .bind(self.id(r.id))
                    .bind(r.scope.tenant_id.as_str())
                    .bind(r.scope.integration_id.as_str())
                    .bind(r.scope.entity_type.as_str())
                    .bind(r.rows_json())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }

        /// A new run's row (its steps are inserted by the backend).
        async fn insert_run(&self, conn: &mut $conn, run: &RunRow) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO runs (id, tenant_id, integration_id, state, plan, trigger, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(self.id(run.id))
            .bind(run.tenant_id.as_str())
            .bind(run.integration_id.as_str())
            .bind(run.state.as_str())
            .bind(Json(&run.plan))
            .bind(&run.trigger)
            .bind(run.created_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// The end of a page's commit: the reconciliation it finished, where
        /// the change scan stands, and the step's checkpoint.
        async fn finish_page(&self, conn: &mut $conn, page: &crate::PageCommit, now: DateTime<Utc>) -> Result<(), StoreError> {
            if let Some(scope) = &page.reconciled {
                sqlx::query(
                    "INSERT INTO reconciles (tenant_id, integration_id, entity_type, reconciled_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, integration_id, entity_type) \
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
                Self::write_sync_cursor(&mut *conn, c, now).await?;
            }
            if let Some(cp) = &page.checkpoint {
                self.write_checkpoint(&mut *conn, cp, now).await?;
            }
            Ok(())
        }

        /// Where a change scan stands, with a page's commit.
        async fn write_sync_cursor(conn: &mut $conn, c: &crate::SyncCursor, now: DateTime<Utc>) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO sync_cursors (tenant_id, integration_id, entity_type, side, cursor, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, integration_id, entity_type, side) \
                 DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
            )
            .bind(c.scope.tenant_id.as_str())
            .bind(c.scope.integration_id.as_str())
            .bind(c.scope.entity_type.as_str())
            .bind(c.side.as_str())
            .bind(Json(crate::rows::nul_safe(&c.cursor)))
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// A step's checkpoint, with a page's commit: only from a state the
        /// core allows the checkpoint's state from (a done step is final).
        async fn write_checkpoint(
            &self,
            conn: &mut $conn,
            cp: &StepCheckpoint,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            let written = sqlx::query(&format!(
                "INSERT INTO steps (run_id, tenant_id, stage, entity_type, direction, state, cursor, counters, \
                     error, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (run_id, entity_type, direction, tenant_id) DO UPDATE SET state = excluded.state, \
                     cursor = excluded.cursor, counters = excluded.counters, error = excluded.error, \
                     updated_at = excluded.updated_at \
                 WHERE steps.state IN ({})",
                crate::step_states_before(crate::checkpoint_event(cp.state))
            ))
            .bind(self.id(cp.run_id))
            .bind(cp.tenant_id.as_str())
            .bind(cp.stage as i32)
            .bind(cp.entity_type.as_str())
            .bind(cp.direction.as_str())
            .bind(cp.state.as_str())
            .bind(cp.cursor.as_ref().map(|c| Json(crate::rows::nul_safe(c))))
            .bind(Json(&cp.counters))
            .bind(cp.error.as_deref())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if written.rows_affected() != 1 {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM steps WHERE run_id = $1 AND entity_type = $2 AND direction = $3")
                        .bind(self.id(cp.run_id))
                        .bind(cp.entity_type.as_str())
                        .bind(cp.direction.as_str())
                        .fetch_optional(&mut *conn)
                        .await?;
                return Err(crate::step_changed(cp.run_id, (&cp.entity_type, cp.direction), cp.state, state));
            }
            Ok(())
        }

        pub(super) async fn unsettled_mappings(
            &self,
            scope: &EntityScope,
            after: Option<Uuid>,
            limit: u32,
        ) -> Result<Vec<IdMapping>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(&format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings \
                 WHERE {} AND status <> 'mapped' AND status IN ('pending', 'failed') \
                   AND (CAST($2 AS TEXT) IS NULL OR id > $2) \
                 ORDER BY id LIMIT $3",
                Self::in_scope("$1")
            ))
            .bind(key)
            .bind(after.map(|a| self.id(a)))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(mapping_from_row).collect()
        }

        pub(super) async fn refused_before(
            &self,
            scope: &EntityScope,
            before: DateTime<Utc>,
            after: Option<Uuid>,
            limit: u32,
        ) -> Result<Vec<IdMapping>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(&format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings \
                 WHERE {} AND status = 'mapped' AND last_error IS NOT NULL AND updated_at < $4 \
                   AND (CAST($2 AS TEXT) IS NULL OR id > $2) \
                 ORDER BY id LIMIT $3",
                Self::in_scope("$1")
            ))
            .bind(key)
            .bind(after.map(|a| self.id(a)))
            .bind(limit as i64)
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(mapping_from_row).collect()
        }

        /// Whether `scope` holds nothing yet and nothing else may write
        /// to it: no mapping (each has an id on at least one side, so the
        /// two partial id indexes see them all), no reservation, no pending
        /// conflict, and no live lease of a run of the integration other
        /// than `run_id` (a second guard: an ended run's worker, which may
        /// hold its lease a little longer, has its commits refused).
        pub(super) async fn scope_is_empty(&self, scope: &EntityScope, run_id: Uuid) -> Result<bool, StoreError> {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM reservations \
                                WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3) \
                     OR EXISTS (SELECT 1 FROM conflicts WHERE tenant_id = $1 AND integration_id = $2 \
                                AND entity_type = $3 AND status = 'pending') \
                     OR EXISTS (SELECT 1 FROM run_leases l JOIN runs r ON r.id = l.run_id \
                                WHERE l.tenant_id = $1 AND r.tenant_id = $1 AND r.integration_id = $2 \
                                AND l.run_id <> $4 AND l.expires_at > $5)",
            )
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(<Self as crate::rows::Dialect>::id_of(run_id))
            .bind(Utc::now())
            .fetch_one(&self.pool)
            .await?;
            if held {
                return Ok(false);
            }
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(true);
            };
            let mapped: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM id_mappings WHERE {s} AND source_id IS NOT NULL) \
                     OR EXISTS (SELECT 1 FROM id_mappings WHERE {s} AND target_id IS NOT NULL)",
                s = Self::in_scope("$1")
            ))
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
            Ok(!mapped)
        }

        pub(super) async fn mappings_with_status(
            &self,
            scope: &EntityScope,
            status: MappingStatus,
            with_error: bool,
            limit: u32,
        ) -> Result<Vec<IdMapping>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(&format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings WHERE {} AND status = $2 \
                 AND ($4 OR last_error IS NOT NULL) ORDER BY updated_at, id LIMIT $3",
                Self::in_scope("$1")
            ))
            .bind(key)
            .bind(status.as_str())
            .bind(limit as i64)
            .bind(status != MappingStatus::Mapped || !with_error)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(mapping_from_row).collect()
        }

        pub(crate) async fn mapped_ids_page(
            &self,
            scope: &EntityScope,
            side: Side,
            after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<crate::MappedId>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            // The column is one of two fixed names, never built from input.
            let column = match side {
                Side::Source => "source_id",
                Side::Target => "target_id",
            };
            let rows = sqlx::query(&format!(
                "SELECT id, {column} FROM id_mappings \
                 WHERE {} AND {column} IS NOT NULL AND (CAST($2 AS TEXT) IS NULL OR {column} > $2) \
                   AND status = 'mapped' \
                 ORDER BY {column} LIMIT $3",
                Self::in_scope("$1")
            ))
            .bind(key)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            use crate::rows::Cols;
            rows.iter()
                .map(|row| {
                    Ok(crate::MappedId {
                        mapping_id: row.uuid("id", "id_mappings")?,
                        record_id: row.text(column)?,
                    })
                })
                .collect()
        }

        pub(crate) async fn unverified_page(
            &self,
            scope: &EntityScope,
            before: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<IdMapping>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            let rows = sqlx::query(&format!(
                "SELECT {MAPPING_COLUMNS} FROM id_mappings \
                 WHERE {} AND status = 'mapped' AND updated_at < $2 \
                 ORDER BY updated_at, id LIMIT $3",
                Self::in_scope("$1")
            ))
            .bind(key)
            .bind(before)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(mapping_from_row).collect()
        }

        pub(crate) async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(0);
            };
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM id_mappings WHERE {} AND status = 'mapped'",
                Self::in_scope("$1")
            ))
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
            Ok(n as u64)
        }

        pub(super) async fn fetch_mappings(
            &self,
            scope: &EntityScope,
            side: Side,
            ids: &[String],
            with_base: bool,
        ) -> Result<Vec<IdMapping>, StoreError> {
            let Some(key) = self.scope_key(scope).await? else {
                return Ok(Vec::new());
            };
            let column = match side {
                Side::Source => "source_id",
                Side::Target => "target_id",
            };
            let rows = sqlx::query(&Self::mappings_by_ids(column, with_base))
                .bind(key)
                .bind(self.texts(ids))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(mapping_from_row).collect()
        }

        pub(super) async fn mapping_counts(
            &self,
            tenant: &TenantId,
            integration: &IntegrationId,
        ) -> Result<Vec<(String, MappingStatus, u64)>, StoreError> {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(Self::MAPPING_COUNTS)
                .bind(tenant.as_str())
                .bind(integration.as_str())
                .fetch_all(&self.pool)
                .await?;
            rows.into_iter()
                .map(|(e, s, n)| Ok((e, s.parse().map_err(|e| crate::rows::corrupt("id_mappings", e))?, n as u64)))
                .collect()
        }

        pub(super) async fn mapped_entity_types(
            &self,
            tenant: &TenantId,
            integration: &IntegrationId,
        ) -> Result<Vec<String>, StoreError> {
            Ok(sqlx::query_scalar(Self::MAPPED_ENTITY_TYPES)
                .bind(tenant.as_str())
                .bind(integration.as_str())
                .fetch_all(&self.pool)
                .await?)
        }

        pub(crate) async fn candidates_page(
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
                 WHERE c.tenant_id = $1 AND c.run_id = $2 AND c.entity_type = $3 \
                   AND (CAST($4 AS TEXT) IS NULL OR c.mapping_id > $4) \
                 ORDER BY c.mapping_id LIMIT $5"
            ))
            .bind(tenant.as_str())
            .bind(self.id(run_id))
            .bind(entity.as_str())
            .bind(after.map(|a| self.id(a)))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            use crate::rows::Cols;
            rows.iter()
                .map(|row| Ok((mapping_from_row(row)?, row.parsed("gone", "delete_candidates")?)))
                .collect()
        }

        /// Records a reviewer's decision on a pending conflict; `false` when
        /// it is no longer pending. The last decision of a run is announced
        /// to the workers in the same transaction (where the database can).
        pub(crate) async fn resolve_conflict(
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
            .bind(self.id(c.id))
            .bind(c.tenant_id.as_str())
            .execute(&mut *tx)
            .await?;
            if let (1, Some(run_id)) = (done.rows_affected(), c.run_id) {
                Self::announce_if_decided(&mut tx, c, run_id).await?;
            }
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn insert_token(&self, t: &crate::TokenInfo, hash: &str) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO api_tokens (id, tenant_id, admin, token_hash, created_at, prefix, expires_at, holder) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(self.id(t.id))
            .bind(&t.tenant)
            .bind(t.admin)
            .bind(hash)
            .bind(t.created_at)
            .bind(&t.prefix)
            .bind(t.expires_at)
            .bind(t.holder.as_deref())
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub(crate) async fn tokens(&self, hash: Option<&str>) -> Result<Vec<crate::TokenInfo>, StoreError> {
            let rows: Vec<crate::TokenRow> = sqlx::query_as(
                "SELECT CAST(id AS TEXT), prefix, tenant_id, admin, created_at, expires_at, revoked_at, last_used_at, \
                 holder FROM api_tokens WHERE CAST($1 AS TEXT) IS NULL OR token_hash = $1 ORDER BY created_at, id",
            )
            .bind(hash)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(crate::TokenInfo::from_row).collect())
        }

        pub(crate) async fn set_token_time(&self, id: Uuid, revoked: bool, at: DateTime<Utc>) -> Result<(), StoreError> {
            let column = if revoked { "revoked_at" } else { "last_used_at" };
            sqlx::query(&format!("UPDATE api_tokens SET {column} = $2 WHERE id = $1"))
                .bind(self.id(id))
                .bind(at)
                .execute(&self.pool)
                .await?;
            Ok(())
        }
    };
}

pub(crate) use shared_statements;
