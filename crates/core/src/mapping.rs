//! The ID map: which record in the target system is which record in the
//! source system, and where each link is in its lifecycle.
//!
//! This module decides; it never stores. [`MappingStatus::transition`] is the
//! one place that says which status changes are allowed, and
//! [`IdMapping::apply`] is the one place that says what a change does to a
//! mapping row. The stores persist what these functions return (with a
//! conditional update on the old status), so a transition the core refuses
//! can never reach the database.

use crate::ids::{EntityScope, EntityType, IntegrationId, TenantId};
use crate::record::Fields;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Where a mapping is in its lifecycle.
///
/// `pending` is reserved before the target write and carries the idempotency
/// key; `mapped` links two live records; `failed` holds the last error until a
/// retry; `stale` means the target record is gone or was not verified for too
/// long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingStatus {
    Pending,
    Mapped,
    Failed,
    Stale,
}

impl MappingStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [MappingStatus; 4] = [
        MappingStatus::Pending,
        MappingStatus::Mapped,
        MappingStatus::Failed,
        MappingStatus::Stale,
    ];

    /// The name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            MappingStatus::Pending => "pending",
            MappingStatus::Mapped => "mapped",
            MappingStatus::Failed => "failed",
            MappingStatus::Stale => "stale",
        }
    }

    /// Decides whether a mapping may move from `self` to `to`.
    ///
    /// Allowed: `pending→mapped`, `pending→failed`, `mapped→mapped`
    /// (re-verified), `mapped→stale`, `stale→pending`, `stale→mapped`,
    /// `failed→pending`. Every other pair is refused.
    pub fn transition(self, to: MappingStatus) -> Result<MappingStatus, TransitionError> {
        use MappingStatus::*;
        match (self, to) {
            (Pending, Mapped)
            | (Pending, Failed)
            | (Mapped, Mapped)
            | (Mapped, Stale)
            | (Stale, Pending)
            | (Stale, Mapped)
            | (Failed, Pending) => Ok(to),
            _ => Err(TransitionError { from: self, to }),
        }
    }
}

impl fmt::Display for MappingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for MappingStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MappingStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A status name that is not one of `pending`, `mapped`, `failed`, `stale`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mapping status `{0}` (expected pending, mapped, failed or stale)")]
pub struct UnknownStatus(pub String);

/// A refused status change; names both ends so the log says what was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mapping transition {from} -> {to} is not allowed")]
pub struct TransitionError {
    pub from: MappingStatus,
    pub to: MappingStatus,
}

/// One link between a record of the source system and a record of the
/// target system, for one tenant, integration and entity type.
///
/// Either id may be unknown while the mapping is `pending`: a record that is
/// about to be created in the target has no target id yet, and in a
/// bidirectional sync a record born in the target has no source id yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdMapping {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub integration_id: IntegrationId,
    pub entity_type: EntityType,
    pub source_id: Option<String>,
    pub target_id: Option<String>,
    pub status: MappingStatus,
    /// CDM values both sides agreed on at the last successful sync.
    pub base: Option<Fields>,
    /// Key sent with the create that this pending mapping reserved, so a
    /// repeated create after a crash is recognised by the target.
    pub idempotency_key: Option<String>,
    pub last_error: Option<String>,
    /// Writes tried since the mapping was last `mapped`.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When the link was last written or verified.
    pub updated_at: DateTime<Utc>,
    /// Bumped by the store on every write (0 before the first); lets the
    /// cache refuse an entry older than the one it holds.
    pub version: u64,
}

/// What a sync step wants to do to a mapping. Each change implies a target
/// status; [`IdMapping::apply`] checks it against the lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum MappingChange {
    /// Reserve the mapping before writing the other side (`→ pending`).
    Reserve { idempotency_key: String },
    /// Both records exist and agree on `base` (`→ mapped`).
    Confirm {
        source_id: String,
        target_id: String,
        base: Fields,
    },
    /// The write failed; kept for a retry (`→ failed`).
    Fail { error: String },
    /// The target record is gone or too old to trust (`→ stale`).
    MarkStale { reason: String },
    /// The other system refused to take an update (`mapped → mapped`): the
    /// base stays what both last agreed on, so the difference is written
    /// again by the next run's refused pass (after its scan), and
    /// `last_error` says why.
    Refuse { error: String },
}

impl MappingChange {
    /// The status this change moves a mapping to.
    pub fn target_status(&self) -> MappingStatus {
        match self {
            MappingChange::Reserve { .. } => MappingStatus::Pending,
            MappingChange::Confirm { .. } | MappingChange::Refuse { .. } => MappingStatus::Mapped,
            MappingChange::Fail { .. } => MappingStatus::Failed,
            MappingChange::MarkStale { .. } => MappingStatus::Stale,
        }
    }
}

impl IdMapping {
    /// The tenant, integration and entity type this mapping belongs to.
    pub fn scope(&self) -> EntityScope {
        EntityScope {
            tenant_id: self.tenant_id.clone(),
            integration_id: self.integration_id.clone(),
            entity_type: self.entity_type.clone(),
        }
    }

    /// A new mapping reserved before its first write: the only way a mapping
    /// comes into existence is as `pending`.
    pub fn reserve(
        id: Uuid,
        scope: EntityScope,
        source_id: Option<String>,
        target_id: Option<String>,
        idempotency_key: String,
        now: DateTime<Utc>,
    ) -> IdMapping {
        IdMapping {
            id,
            tenant_id: scope.tenant_id,
            integration_id: scope.integration_id,
            entity_type: scope.entity_type,
            source_id,
            target_id,
            status: MappingStatus::Pending,
            base: None,
            idempotency_key: Some(idempotency_key),
            last_error: None,
            attempts: 1,
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    /// Applies `change` at time `now`, or refuses it without touching `self`.
    pub fn apply(&mut self, change: MappingChange, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.status = self.status.transition(change.target_status())?;
        self.updated_at = now;
        match change {
            MappingChange::Reserve { idempotency_key } => {
                self.idempotency_key = Some(idempotency_key);
                self.attempts += 1;
            }
            MappingChange::Confirm {
                source_id,
                target_id,
                base,
            } => {
                self.source_id = Some(source_id);
                self.target_id = Some(target_id);
                self.base = Some(base);
                self.idempotency_key = None;
                self.last_error = None;
                self.attempts = 0;
            }
            MappingChange::Fail { error } => self.last_error = Some(error),
            MappingChange::MarkStale { reason } => self.last_error = Some(reason),
            MappingChange::Refuse { error } => self.last_error = Some(error),
        }
        Ok(())
    }
}

/// One change to the ID map within a page.
#[derive(Clone, Debug, PartialEq)]
pub enum MappingWrite {
    /// A mapping seen for the first time; must be `pending`.
    Insert(IdMapping),
    /// Apply `change` to a mapping as it was read (its status and version
    /// are what the database must still hold).
    Transition {
        current: IdMapping,
        change: MappingChange,
    },
    /// Apply `change` to a mapping held by a reservation (see
    /// [`Store::reserve`]): not in the ID map yet, so the result is
    /// inserted. The page settles the reservation in the same commit.
    Settle { held: IdMapping, change: MappingChange },
}

#[cfg(test)]
mod tests {
    use super::*;
    use MappingStatus::*;

    /// The lifecycle of MISSION §2, written out pair by pair so that a change
    /// to `transition` has to change this table too.
    #[test]
    fn all_sixteen_pairs() {
        let allowed = [
            (Pending, Mapped),
            (Pending, Failed),
            (Mapped, Mapped),
            (Mapped, Stale),
            (Stale, Pending),
            (Stale, Mapped),
            (Failed, Pending),
        ];
        let mut checked = 0;
        for from in MappingStatus::ALL {
            for to in MappingStatus::ALL {
                let result = from.transition(to);
                if allowed.contains(&(from, to)) {
                    assert_eq!(result, Ok(to), "{from} -> {to} should be allowed");
                } else {
                    let err = result.expect_err("refused pair");
                    assert_eq!(err, TransitionError { from, to });
                    let msg = err.to_string();
                    assert!(msg.contains(from.as_str()) && msg.contains(to.as_str()), "{msg}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 16);
    }

    #[test]
    fn status_names_round_trip() {
        for status in MappingStatus::ALL {
            assert_eq!(status.as_str().parse::<MappingStatus>(), Ok(status));
        }
        assert_eq!(
            "done".parse::<MappingStatus>().unwrap_err().to_string(),
            "unknown mapping status `done` (expected pending, mapped, failed or stale)"
        );
    }

    fn pending() -> IdMapping {
        IdMapping::reserve(
            Uuid::nil(),
            EntityScope::new("t1", "crm-to-erp", "account"),
            Some("a-1".into()),
            None,
            "key-1".into(),
            DateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn confirm_records_ids_and_base_and_clears_the_key() {
        let mut m = pending();
        let base: Fields = serde_json::from_str(r#"{"name":"Acme"}"#).unwrap();
        let later = DateTime::UNIX_EPOCH + chrono::Duration::seconds(5);
        m.apply(
            MappingChange::Confirm {
                source_id: "a-1".into(),
                target_id: "T-9".into(),
                base: base.clone(),
            },
            later,
        )
        .unwrap();
        assert_eq!(m.status, Mapped);
        assert_eq!(m.target_id.as_deref(), Some("T-9"));
        assert_eq!(m.base, Some(base));
        assert_eq!(m.idempotency_key, None);
        assert_eq!(m.attempts, 0);
        assert_eq!(m.updated_at, later);
        assert_eq!(m.created_at, DateTime::UNIX_EPOCH);
    }

    #[test]
    fn a_refused_change_leaves_the_mapping_untouched() {
        let mut m = pending();
        let before = m.clone();
        let err = m
            .apply(
                MappingChange::MarkStale {
                    reason: "gone".into(),
                },
                DateTime::UNIX_EPOCH,
            )
            .unwrap_err();
        assert_eq!(
            err,
            TransitionError {
                from: Pending,
                to: Stale
            }
        );
        assert_eq!(m, before);
    }

    #[test]
    fn failed_then_retried_counts_attempts() {
        let mut m = pending();
        m.apply(
            MappingChange::Fail {
                error: "422: name required".into(),
            },
            DateTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(m.last_error.as_deref(), Some("422: name required"));
        m.apply(
            MappingChange::Reserve {
                idempotency_key: "key-2".into(),
            },
            DateTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!((m.status, m.attempts), (Pending, 2));
        assert_eq!(m.idempotency_key.as_deref(), Some("key-2"));
    }
}
