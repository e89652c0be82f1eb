//! Deletes through the store: reconciliation pages, delete candidates and the mass-deletion brake's holds.

use super::*;

impl Store {
    /// Up to `limit` `mapped` mappings of `scope` whose record id on `side`
    /// comes after `after`, in that id's order, as ids only: a
    /// reconciliation pass walks the ID map with these, once a side, never
    /// holding more than a page.
    pub async fn mapped_ids_page(
        &self,
        scope: &EntityScope,
        side: Side,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MappedId>, StoreError> {
        on_backend!(self, b => b.mapped_ids_page(scope, side, after, limit).await)
    }

    /// Up to `limit` `mapped` mappings of `scope` last verified before
    /// `before`, the longest unverified first.
    pub async fn unverified_page(
        &self,
        scope: &EntityScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        on_backend!(self, b => b.unverified_page(scope, before, limit).await)
    }

    /// How many mappings of `scope` are `mapped`.
    pub async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
        on_backend!(self, b => b.count_mapped(scope).await)
    }

    /// When `scope` was last reconciled.
    pub async fn last_reconciled(&self, scope: &EntityScope) -> Result<Option<DateTime<Utc>>, StoreError> {
        on_backend!(self, b => b.last_reconciled(scope).await)
    }

    /// How many delete candidates `run` recorded for `entity`.
    pub async fn count_candidates(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
    ) -> Result<u64, StoreError> {
        on_backend!(self, b => b.count_candidates(tenant, run_id, entity).await)
    }

    /// The delete candidates of `run` for `entity` with mapping ids after
    /// `after`, in mapping-id order, with their mappings as they are now.
    pub async fn candidates_page(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(IdMapping, Gone)>, StoreError> {
        on_backend!(self, b => b.candidates_page(tenant, run_id, entity, after, limit).await)
    }

    /// Records that `hold` stops its run (kept if already there).
    pub async fn add_hold(&self, hold: &RunHold) -> Result<(), StoreError> {
        on_backend!(self, b => b.add_hold(hold).await)
    }

    /// The brake holds of `run_id`, confirmed or not.
    pub async fn run_holds(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
    ) -> Result<Vec<RunHold>, StoreError> {
        on_backend!(self, b => b.run_holds(tenant, run_id).await)
    }

    /// Confirms every unconfirmed hold of `run_id` as `by`; returns the
    /// holds confirmed (none when the run was not held). The worker then
    /// resumes the run like any other suspended one.
    pub async fn confirm_deletes(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
        by: &str,
    ) -> Result<Vec<RunHold>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.confirm_deletes(tenant, run_id, by, now).await)
    }
}
