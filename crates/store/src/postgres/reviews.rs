//! Conflicts in the postgres state store.

use super::*;

impl PgStore {
    pub(crate) async fn load_conflicts(
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

    pub(crate) async fn pending_conflicts_of_run(
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

    pub(crate) async fn list_conflicts(&self, f: &ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
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

    pub(crate) async fn unapplied_resolutions(
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

    pub(crate) async fn open_conflicts(
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
}
