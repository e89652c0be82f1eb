//! Identifier newtypes.
//!
//! Tenants, integrations and entity types are all strings in the outside
//! world; wrapping each in its own type means a tenant id can never be handed
//! to a function that wanted an integration id. The wrappers are transparent
//! in serde so definitions and JSON payloads keep their plain-string form.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as the string stored and shown to users.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// One customer. Every row of state carries it; nothing crosses tenants.
    TenantId
);
string_id!(
    /// One sync definition between a source and a target system.
    IntegrationId
);
string_id!(
    /// A common-data-model entity type: `account`, `order_line`, ...
    EntityType
);

/// The scope of one entity type's state: mappings, conflicts and steps are
/// always read and written within one tenant, integration and entity type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntityScope {
    pub tenant_id: TenantId,
    pub integration_id: IntegrationId,
    pub entity_type: EntityType,
}

impl EntityScope {
    /// The scope of `entity_type` in `integration_id` for `tenant_id`.
    pub fn new(
        tenant_id: impl Into<TenantId>,
        integration_id: impl Into<IntegrationId>,
        entity_type: impl Into<EntityType>,
    ) -> EntityScope {
        EntityScope {
            tenant_id: tenant_id.into(),
            integration_id: integration_id.into(),
            entity_type: entity_type.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listings align their columns with `{:<N}`: ids and names honour it.
    #[test]
    fn ids_and_names_fill_the_width_they_are_given() {
        assert_eq!(format!("[{:<8}]", TenantId::from("acme")), "[acme    ]");
        assert_eq!(format!("[{:>8}]", EntityType::from("order")), "[   order]");
        assert_eq!(
            format!("[{:<12}]", crate::conflict::Strategy::Merge),
            "[merge       ]"
        );
        assert_eq!(format!("[{:<9}]", crate::run::RunState::Failed), "[failed   ]");
        assert_eq!(
            format!("[{:<8}]", crate::mapping::MappingStatus::Stale),
            "[stale   ]"
        );
    }
}
