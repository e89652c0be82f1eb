//! Conflicts in the postgres state store.

use super::*;

impl PgStore {
    /// Wakes the workers when `c` was the last pending conflict of `run_id`;
    /// PostgreSQL delivers the notification only if the decision commits.
    pub(crate) async fn announce_if_decided(
        conn: &mut sqlx::PgConnection,
        c: &ConflictRecord,
        run_id: Uuid,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT pg_notify($1, concat(current_schema(), ' ', $2::text)) WHERE NOT EXISTS \
             (SELECT 1 FROM conflicts WHERE tenant_id = $3 AND run_id = $2 AND status = 'pending')",
        )
        .bind(RESUME_CHANNEL)
        .bind(run_id)
        .bind(c.tenant_id.as_str())
        .execute(conn)
        .await?;
        Ok(())
    }
}
