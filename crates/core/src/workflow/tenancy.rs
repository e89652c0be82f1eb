//! Tenants sharing tables: a tenant column, on an entity or a whole
//! system, keeps each tenant's rows apart in one database.

use super::{ConnectorKind, EntityDef, Errors, SystemDef, Workflow};
use crate::ids::TenantId;
use crate::record::Side;

/// What a definition cannot ask of an API side: a tenant column (an API
/// keeps tenants apart by its credentials or URL, and syncd would neither
/// filter nor set it), or `last_write_wins` on a collection without update
/// times (it could never tell which side changed last).
pub(super) fn check_sides(
    errors: &mut Errors<'_>,
    source: &SystemDef,
    target: &SystemDef,
    entities: &[EntityDef],
) {
    for (system, side) in [(source, Side::Source), (target, Side::Target)] {
        if system.connector != ConnectorKind::Http {
            continue;
        }
        if system.tenant_column.is_some() {
            errors.push(
                None,
                Some(&format!("systems.{}.tenant_column", system.name)),
                "an HTTP system keeps tenants apart by its URL or credentials: a tenant column is a setting of SQL \
                 systems",
            );
        }
        for e in entities {
            if e.own_tenant_column(side).is_some() {
                errors.push(
                    Some(e.name.as_str()),
                    Some("tenant_column"),
                    format!(
                        "the {} side is HTTP system `{}`: a tenant column is a setting of SQL tables",
                        side.as_str(),
                        system.name
                    ),
                );
            }
        }
    }
}

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

    /// Whether every table on both sides keeps tenants' rows apart (a
    /// tenant column), so that tenants the definition does not name may
    /// share its systems.
    pub fn tenants_kept_apart(&self) -> bool {
        let anyone = TenantId::from("");
        self.entities.iter().all(|e| {
            [Side::Source, Side::Target]
                .into_iter()
                .all(|side| self.tenant_filter(&anyone, e, side).is_some())
        })
    }

    /// `last_write_wins` (for any tenant, or none) on an entity whose
    /// collection on an API keeps no update times: it could not tell which
    /// side changed last, and would always take the other side's value.
    pub(super) fn last_write_without_times(&self) -> Vec<super::DefinitionError> {
        let mut found = Vec::new();
        let no_tenant = TenantId::from("");
        for e in &self.entities {
            let untimed = [&self.source, &self.target].into_iter().find(|s| {
                s.http
                    .as_ref()
                    .and_then(|h| h.resources.get(e.name.as_str()))
                    .is_some_and(|r| r.updated_field.is_none())
            });
            let Some(system) = untimed else { continue };
            let lww = std::iter::once(&no_tenant)
                .chain(self.tenants.keys())
                .any(|t| self.strategy_for(t, e.name.as_str()) == crate::conflict::Strategy::LastWriteWins);
            if lww {
                found.push(super::DefinitionError {
                    file: self.file.clone(),
                    entity: Some(e.name.to_string()),
                    field: Some("strategy".into()),
                    reason: format!(
                        "last_write_wins cannot tell which side changed last: system `{}` keeps no update times \
                         for this collection (`updated_field = \"\"`); choose another strategy",
                        system.name
                    ),
                });
            }
        }
        found
    }

    /// Whether every entity's table on `system` keeps tenants apart by a
    /// tenant column, so that tenants may share it.
    pub(super) fn filters_by_tenant(&self, system: &SystemDef) -> bool {
        if system.connector != ConnectorKind::Sql {
            return false;
        }
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

    #[test]
    fn an_api_side_takes_no_tenant_column_nor_last_write_wins_without_times() {
        let text = |system_extra: &str, collection_extra: &str, strategy: &str| {
            format!(
                r#"name = "api"
source = "shop"
target = "api"
strategy = "{strategy}"

[systems.shop]
connector = "sql"
url = "sqlite://shop.db"

[systems.api]
connector = "http"
url = "http://127.0.0.1:1"
{system_extra}
entities.account = {{ path = "/accounts"{collection_extra} }}

[[entities]]
name = "account"
table = "accounts"
"#
            )
        };
        let refused = |t: String| {
            Workflow::parse("api.toml", &t)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        let said = refused(text("tenant_column = \"tenant_id\"", "", "source_wins"));
        assert!(said.contains("systems.api.tenant_column"), "{said}");
        let said = refused(text("", ", updated_field = \"\"", "last_write_wins"));
        assert!(said.contains("last_write_wins cannot tell"), "{said}");
        assert_eq!(refused(text("", ", updated_field = \"\"", "source_wins")), "");
        assert_eq!(
            refused(text("", "", "last_write_wins")),
            "",
            "with update times it can tell"
        );
    }
}
