//! Reconciliation pages, delete candidates and brake holds in the sqlite state store.

use super::*;

impl SqliteStore {
    pub(crate) async fn mapped_ids_page(
        &self,
        scope: &EntityScope,
        side: Side,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MappedId>, StoreError> {
        // One fixed text per side: the column is never built from input.
        let sql = match side {
            Side::Source => {
                "SELECT id, source_id FROM id_mappings \
                 WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND source_id IS NOT NULL \
                   AND (?4 IS NULL OR source_id > ?4) AND status = 'mapped' \
                 ORDER BY source_id LIMIT ?5"
            }
            Side::Target => {
                "SELECT id, target_id FROM id_mappings \
                 WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND target_id IS NOT NULL \
                   AND (?4 IS NULL OR target_id > ?4) AND status = 'mapped' \
                 ORDER BY target_id LIMIT ?5"
            }
        };
        let rows: Vec<(String, String)> = sqlx::query_as(sql)
            .bind(scope.tenant_id.as_str())
            .bind(scope.integration_id.as_str())
            .bind(scope.entity_type.as_str())
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(mapping_id, record_id)| {
                Ok(MappedId {
                    mapping_id: mapping_id.parse().map_err(|e| corrupt("id_mappings", e))?,
                    record_id,
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
        let rows = sqlx::query(&format!(
            "SELECT {MAPPING_COLUMNS} FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND status = 'mapped' \
               AND updated_at < ?4 \
             ORDER BY updated_at, id LIMIT ?5"
        ))
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping_from_row).collect()
    }

    pub(crate) async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM id_mappings \
             WHERE tenant_id = ?1 AND integration_id = ?2 AND entity_type = ?3 AND status = 'mapped'",
        )
        .bind(scope.tenant_id.as_str())
        .bind(scope.integration_id.as_str())
        .bind(scope.entity_type.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
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
             WHERE c.tenant_id = ?1 AND c.run_id = ?2 AND c.entity_type = ?3 \
               AND (?4 IS NULL OR c.mapping_id > ?4) \
             ORDER BY c.mapping_id LIMIT ?5"
        ))
        .bind(tenant.as_str())
        .bind(run_id.to_string())
        .bind(entity.as_str())
        .bind(after.map(|a| a.to_string()))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let gone: String = row.try_get("gone")?;
                Ok((
                    mapping_from_row(row)?,
                    gone.parse().map_err(|e| corrupt("delete_candidates", e))?,
                ))
            })
            .collect()
    }
}
