//! Tenants sharing tables: a tenant column, on an entity or a whole
//! system, keeps each tenant's rows apart in one database.

use super::{EntityDef, SystemDef, Workflow};
use crate::ids::TenantId;
use crate::record::Side;

impl EntityDef {
    /// The tenant column of the entity's table on `side`, if it names one.
    pub fn own_tenant_column(&self, side: Side) -> Option<&str> {
        match side {
            Side::Source => self.tenant_column.0.as_deref(),
            Side::Target => self.tenant_column.1.as_deref(),
        }
    }
}

impl Workflow {
    /// The system on `side`.
    pub fn system_on(&self, side: Side) -> &SystemDef {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// The column and value that keep `tenant`'s rows of `entity` apart on
    /// `side`: the entity's tenant column (else its system's), and the
    /// tenant's value for that system (else the tenant's name). `None` when
    /// the table is not shared by tenants.
    pub fn tenant_filter(
        &self,
        tenant: &TenantId,
        entity: &EntityDef,
        side: Side,
    ) -> Option<(String, String)> {
        let system = self.system_on(side);
        let column = entity
            .own_tenant_column(side)
            .or(system.tenant_column.as_deref())?;
        let value = self
            .tenants
            .get(tenant)
            .and_then(|t| t.tenant_values.get(&system.name))
            .cloned()
            .unwrap_or_else(|| tenant.to_string());
        Some((column.to_owned(), value))
    }

    /// Whether every entity's table on `system` keeps tenants apart by a
    /// tenant column, so that tenants may share it.
    pub(super) fn filters_by_tenant(&self, system: &SystemDef) -> bool {
        let side = if std::ptr::eq(system, &self.source) {
            Side::Source
        } else {
            Side::Target
        };
        !self.entities.is_empty()
            && self.entities.iter().all(|e| {
                e.own_tenant_column(side)
                    .or(system.tenant_column.as_deref())
                    .is_some()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(extra_system: &str, extra_entity: &str) -> Workflow {
        let text = format!(
            r#"name = "shared"
source = "shop"
target = "erp"

[systems.shop]
connector = "sql"
url = "postgres://db/shop"
{extra_system}

[systems.erp]
connector = "sql"
url = "sqlite://erp.db"

[[entities]]
name = "account"
table = "accounts"
{extra_entity}

[tenants.acme]
tenant_values = {{ shop = "A-1" }}
urls = {{ erp = "sqlite://acme.db" }}

[tenants.globex]
urls = {{ erp = "sqlite://globex.db" }}
"#
        );
        Workflow::parse("shared.toml", &text).unwrap()
    }

    #[test]
    fn a_tenant_column_keeps_tenants_apart_on_a_shared_database() {
        let env = |_: &str| None;
        let bare = workflow("", "");
        assert_eq!(bare.shared_systems(env).len(), 1, "one database for both");
        let entity = &bare.entities[0];
        assert_eq!(bare.tenant_filter(&"acme".into(), entity, Side::Source), None);

        for wf in [
            workflow("tenant_column = \"tenant_id\"", ""),
            workflow("", "tenant_column = { source = \"tenant_id\" }"),
        ] {
            assert!(wf.shared_systems(env).is_empty(), "{:?}", wf.shared_systems(env));
            let entity = &wf.entities[0];
            assert_eq!(
                wf.tenant_filter(&"acme".into(), entity, Side::Source),
                Some(("tenant_id".into(), "A-1".into()))
            );
            assert_eq!(
                wf.tenant_filter(&"globex".into(), entity, Side::Source),
                Some(("tenant_id".into(), "globex".into())),
                "the tenant's name when no value is given"
            );
            assert_eq!(wf.tenant_filter(&"acme".into(), entity, Side::Target), None);
        }
    }
}
