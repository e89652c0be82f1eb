//! Conflicts in the postgres state store.

use super::*;

impl PgStore {
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
}
