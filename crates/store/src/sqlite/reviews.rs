//! Conflicts in the sqlite state store.

use super::*;

impl SqliteStore {
    pub(crate) async fn resolve_conflict(
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
}
