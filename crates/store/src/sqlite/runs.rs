//! Runs, steps, leases, schedules and tokens in the sqlite state store.

use super::*;

impl SqliteStore {
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
}
