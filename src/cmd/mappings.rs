//! `syncd mappings lookup|list`: where a record went, and which links are
//! failed or stale.

use super::{Access, CmdResult, open_store, runtime};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::{IdMapping, MappingStatus};
use syncd_core::record::Side;
use syncd_store::Store;

/// One entity type of one integration, for the tenant of `--tenant` or of
/// the token.
pub struct Scope {
    pub access: Access,
    pub integration: String,
    pub entity: String,
}

impl Scope {
    async fn resolve(self, store: &Store) -> Result<EntityScope, String> {
        let tenant = self
            .access
            .confine(store)
            .await?
            .ok_or_else(|| "error: name the tenant: --tenant T, or a tenant's --token".to_owned())?;
        Ok(EntityScope::new(tenant, self.integration, self.entity))
    }
}

fn print(mappings: &[IdMapping]) {
    println!(
        "{:<24} {:<38} {:<8} {:<8} last error",
        "source id", "target id", "status", "attempts"
    );
    for m in mappings {
        println!(
            "{:<24} {:<38} {:<8} {:<8} {}",
            m.source_id.as_deref().unwrap_or("-"),
            m.target_id.as_deref().unwrap_or("-"),
            m.status,
            m.attempts,
            m.last_error.as_deref().unwrap_or("")
        );
    }
}

/// Prints the mapping of one record, found by its id on `side`.
pub fn lookup(scope: Scope, side: Side, id: &str) -> CmdResult {
    runtime()?.block_on(async {
        let store = open_store().await?;
        let scope = scope.resolve(&store).await?;
        let found = store
            .find_mapping(&scope, side, id)
            .await
            .map_err(|e| format!("error: {e}"))?;
        match found {
            Some(m) => {
                print(std::slice::from_ref(&m));
                Ok(())
            }
            None => {
                // An entity type this store holds nothing of (a plural, a
                // typo) is said so, with those it holds.
                let entities = store
                    .mapped_entity_types(&scope.tenant_id, &scope.integration_id)
                    .await
                    .map_err(|e| format!("error: {e}"))?;
                let unknown = match entities.iter().any(|e| e.as_str() == scope.entity_type.as_str()) {
                    true => String::new(),
                    false => format!(
                        " (this store holds no mapping of entity `{}` there at all; it holds some of: {})",
                        scope.entity_type,
                        match entities.is_empty() {
                            true => "none".to_owned(),
                            false => entities.join(", "),
                        }
                    ),
                };
                Err(format!(
                    "no mapping for {} id `{id}` of {} in integration `{}` for tenant `{}`{unknown}",
                    side.as_str(),
                    scope.entity_type,
                    scope.integration_id,
                    scope.tenant_id
                ))
            }
        }
    })
}

/// Prints mappings with `status`, with their reasons.
pub fn list(scope: Scope, status: &str, limit: u32) -> CmdResult {
    let status: MappingStatus = status.parse().map_err(|e| format!("error: --status: {e}"))?;
    runtime()?.block_on(async {
        let store = open_store().await?;
        let scope = scope.resolve(&store).await?;
        let mut list = store
            .mappings_with_status(&scope, status, limit)
            .await
            .map_err(|e| format!("error: {e}"))?;
        // Failed records include those synced before whose last change
        // could not be written: they are `mapped`, with the reason.
        if status == MappingStatus::Failed && list.len() < limit as usize {
            list.extend(
                store
                    .refused_mappings(&scope, limit - list.len() as u32)
                    .await
                    .map_err(|e| format!("error: {e}"))?,
            );
        }
        print(&list);
        // An empty table must not read as an empty ID map: say which
        // mappings were asked for.
        if list.is_empty() {
            eprintln!(
                "(no {status} mappings of `{}`; --status pending, mapped, failed or stale lists others)",
                scope.entity_type
            );
        }
        if list.len() >= limit as usize {
            // An operator counting failures must not take a page for all.
            eprintln!("(the first {limit}; there may be more: --limit N lists more)");
        }
        Ok(())
    })
}
