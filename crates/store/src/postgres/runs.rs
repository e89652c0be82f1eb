//! Runs, steps, leases, schedules and tokens in the postgres state store.

use super::*;

impl PgStore {
    /// Announces on [`RESUME_CHANNEL`] that `run_id` may be resumed.
    pub(crate) async fn notify_resume(&self, run_id: Uuid) -> Result<(), StoreError> {
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
    pub(crate) async fn listen_for_resumes(
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

    pub(crate) async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_run(&mut tx, run).await?;
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
}
