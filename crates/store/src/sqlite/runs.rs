//! Runs, steps, leases, schedules and tokens in the sqlite state store.

use super::*;

impl SqliteStore {
    pub(crate) async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_run(&mut tx, run).await?;
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
}
