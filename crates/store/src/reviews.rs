//! Conflicts through the store: parked, listed, decided by reviewers and applied.

use super::*;

impl Store {
    /// Conflict records of `tenant` by id; other tenants' ids are absent.
    pub async fn load_conflicts(
        &self,
        tenant: &syncd_core::ids::TenantId,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.load_conflicts(Some(tenant), ids).await)
    }

    /// Which of `ids` (ids on `side`) have a conflict still open: pending,
    /// or decided by a reviewer and not yet applied (a run that met the
    /// record in between would park a second conflict on it, and the
    /// decision applied after would leave that one to be decided again).
    pub async fn open_conflicts(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        on_backend!(self, b => b.open_conflicts(scope, side, ids).await)
    }

    /// Conflicts matching `filter`, oldest first.
    pub async fn list_conflicts(&self, filter: &ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.list_conflicts(filter).await)
    }

    /// How many conflicts of `run_id` (a run of `tenant`) wait for a reviewer.
    pub async fn pending_conflicts_of_run(&self, tenant: &TenantId, run_id: Uuid) -> Result<u64, StoreError> {
        on_backend!(self, b => b.pending_conflicts_of_run(tenant, run_id).await)
    }

    /// One conflict; `tenant` restricts the lookup to that tenant's.
    pub async fn load_conflict(
        &self,
        tenant: Option<&TenantId>,
        id: Uuid,
    ) -> Result<Option<ConflictRecord>, StoreError> {
        Ok(on_backend!(self, b => b.load_conflicts(tenant, &[id]).await?).pop())
    }

    /// Records a reviewer's resolution of a pending conflict. On PostgreSQL
    /// the resolution that leaves its run no pending conflict announces the
    /// run on [`RESUME_CHANNEL`], in the same transaction.
    pub async fn resolve_conflict(
        &self,
        conflict: &ConflictRecord,
        resolution: &syncd_core::record::Fields,
        resolved_by: &str,
    ) -> Result<ConflictRecord, StoreError> {
        let now = Utc::now();
        if !on_backend!(self, b => b.resolve_conflict(conflict, resolution, resolved_by, now).await?) {
            return Err(StoreError::ConflictNotPending { id: conflict.id });
        }
        Ok(ConflictRecord {
            resolution: Some(resolution.clone()),
            status: ConflictStatus::Resolved,
            resolved_by: Some(resolved_by.to_owned()),
            resolved_at: Some(now),
            ..conflict.clone()
        })
    }

    /// Conflicts that a reviewer resolved and that are not yet written to
    /// the systems, for `run` to apply: its own, and those of its tenant
    /// and integration whose run has ended (cancelled, failed, succeeded)
    /// or is gone, which that run will never apply.
    pub async fn unapplied_resolutions(&self, run: &RunRow) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.unapplied_resolutions(run).await)
    }
}
