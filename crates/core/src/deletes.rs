//! What the engine does when records disappear: per entity type policies,
//! the mass-deletion brake, and how a mapping remembers why it went stale.
//!
//! Pure: the executor finds the deletions (soft-delete columns during the
//! change scan, a reconciliation pass over the ID map) and acts on them in
//! reverse stage order; this module only decides.

use crate::mapping::IdMapping;
use crate::record::Side;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// When the source record of a mapped pair is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnSourceDelete {
    /// Delete the target record too.
    #[default]
    Delete,
    /// Set the target's archive column and keep the record.
    Archive,
    /// Leave the target record alone.
    Ignore,
}

/// When the target record of a mapped pair is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnTargetDelete {
    /// Create it anew from the source record, once.
    Recreate,
    /// Leave the mapping `stale`, listed for operators.
    #[default]
    Unlink,
    /// Delete the source record too (bidirectional integrations only).
    Propagate,
}

impl FromStr for OnSourceDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delete" => Ok(OnSourceDelete::Delete),
            "archive" => Ok(OnSourceDelete::Archive),
            "ignore" => Ok(OnSourceDelete::Ignore),
            _ => Err(format!(
                "unknown policy `{s}` (expected delete, archive or ignore)"
            )),
        }
    }
}

impl FromStr for OnTargetDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "recreate" => Ok(OnTargetDelete::Recreate),
            "unlink" => Ok(OnTargetDelete::Unlink),
            "propagate" => Ok(OnTargetDelete::Propagate),
            _ => Err(format!(
                "unknown policy `{s}` (expected recreate, unlink or propagate)"
            )),
        }
    }
}

/// Past how many deletions (or stale marks) in one step the engine stops
/// and asks an operator: `percent` of the entity's mapped records or `max`,
/// whichever is smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteBrake {
    pub percent: u32,
    pub max: u64,
}

impl Default for DeleteBrake {
    fn default() -> Self {
        DeleteBrake {
            percent: 10,
            max: 500,
        }
    }
}

impl DeleteBrake {
    /// How many of `mapped` records one step may delete without asking.
    pub fn limit(&self, mapped: u64) -> u64 {
        (mapped * u64::from(self.percent) / 100).min(self.max)
    }

    /// Whether `count` deletions out of `mapped` need an operator.
    pub fn holds(&self, count: u64, mapped: u64) -> bool {
        count > self.limit(mapped)
    }
}

/// One entity type's delete handling, from its definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletePolicy {
    /// Soft-delete column of the source table: a row whose value there is
    /// set (not NULL, `false` or `0`) counts as deleted.
    pub source_deleted_column: Option<String>,
    /// The same for the target table.
    pub target_deleted_column: Option<String>,
    pub on_source_delete: OnSourceDelete,
    /// The target column `archive` sets (to `true`, or the time for a
    /// timestamp column).
    pub archive_column: Option<String>,
    pub on_target_delete: OnTargetDelete,
    /// How often a run checks every mapped record for hard deletes; `None`
    /// never (soft-delete columns are still seen by every run).
    pub reconcile_every: Option<Duration>,
    /// Mapped records not verified for this long are read back from both
    /// systems, a page per run, when no reconciliation is due; `None` never.
    pub verify_after: Option<Duration>,
    pub brake: DeleteBrake,
}

impl DeletePolicy {
    /// The soft-delete column of `side`'s table.
    pub fn deleted_column(&self, side: Side) -> Option<&str> {
        match side {
            Side::Source => self.source_deleted_column.as_deref(),
            Side::Target => self.target_deleted_column.as_deref(),
        }
    }
}

/// Parses an interval such as `250ms`, `30s`, `15m`, `12h` or `1d`.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("`{s}` is not an interval (expected a number and ms, s, m, h or d, e.g. `1d`)")
    })?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{s}` is not an interval (expected a number and ms, s, m, h or d, e.g. `1d`)"
            ));
        }
    };
    Ok(Duration::from_millis(n * millis))
}

/// Whether a soft-delete column's value marks its row deleted.
pub fn is_deleted_mark(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !matches!(s.as_str(), "" | "0" | "false" | "f"),
        _ => true,
    }
}

/// What the delete step did when it deleted the other record too: the
/// end of a stale mapping's reason ([`Gone::reason`]).
const BOTH_BY_SOURCE: &str = "target deleted";
const BOTH_BY_TARGET: &str = "source deleted too";

/// Why a mapping is `stale`: which side's record went, and what the engine
/// did about it. Kept at the start of the mapping's `last_error`, so that the
/// reason operators read is also what later runs decide by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The source record was deleted; the mapping is a tombstone keeping
    /// both ids, so the record is re-linked if it comes back.
    Source,
    /// The target record is gone.
    Target,
}

impl Gone {
    const SOURCE: &'static str = "source record deleted";
    const TARGET: &'static str = "target record gone";

    /// A record gone from `side`.
    pub fn on(side: Side) -> Gone {
        match side {
            Side::Source => Gone::Source,
            Side::Target => Gone::Target,
        }
    }

    /// The reason to store: the marker, then what was done.
    pub fn reason(self, done: &str) -> String {
        let head = match self {
            Gone::Source => Self::SOURCE,
            Gone::Target => Self::TARGET,
        };
        format!("{head}: {done}")
    }

    /// Whether `mapping` is stale because both of its records were
    /// deleted: one gone, and syncd deleted the other after it (`delete`
    /// of a deleted source's target, `propagate` of a gone target to its
    /// source). Either record back is then a record anew.
    pub fn both_deleted(mapping: &IdMapping) -> bool {
        let reason = mapping.last_error.as_deref();
        reason == Some(Gone::Source.reason(BOTH_BY_SOURCE).as_str())
            || reason == Some(Gone::Target.reason(BOTH_BY_TARGET).as_str())
    }

    /// Why `mapping` is stale, if it says.
    pub fn of(mapping: &IdMapping) -> Option<Gone> {
        let reason = mapping.last_error.as_deref()?;
        if reason.starts_with(Self::SOURCE) {
            Some(Gone::Source)
        } else if reason.starts_with(Self::TARGET) {
            Some(Gone::Target)
        } else {
            None
        }
    }
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Gone::Source => "source",
            Gone::Target => "target",
        })
    }
}

impl FromStr for Gone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source" => Ok(Gone::Source),
            "target" => Ok(Gone::Target),
            _ => Err(format!("unknown side `{s}`")),
        }
    }
}

/// A mapping a run found gone on one side, before anything is done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteCandidate {
    pub run_id: uuid::Uuid,
    pub tenant_id: crate::ids::TenantId,
    pub entity_type: crate::ids::EntityType,
    pub mapping_id: uuid::Uuid,
    pub gone: Gone,
}

/// What a page of a delete step does, decided from its candidates, the
/// ids still present on each side, and the entity's policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Removals {
    pub delete_target: Vec<String>,
    pub archive_target: Vec<String>,
    pub delete_source: Vec<String>,
    /// Source ids whose target is created anew (through the sync path).
    pub recreate: Vec<String>,
    /// The mappings marked stale, with what was done in their reason.
    pub transitions: Vec<crate::mapping::MappingWrite>,
    pub deleted: u64,
    pub archived: u64,
    pub stale: u64,
}

/// Decides a page of delete candidates (their mappings as they are now):
/// a record gone from the source is deleted, archived or left in the
/// target, one gone from the target is unlinked, deleted from the source
/// or created anew, by `policy`. A pair found on both sides again is left
/// alone; a candidate already acted on before a crash is not acted on
/// twice (only a re-create not finished yet is taken up again).
pub fn decide_removals(
    page: Vec<IdMapping>,
    sources: &std::collections::HashSet<String>,
    targets: &std::collections::HashSet<String>,
    policy: &DeletePolicy,
) -> Removals {
    use crate::mapping::{MappingChange, MappingStatus, MappingWrite};
    let mut r = Removals::default();
    for m in page {
        let source_id = m.source_id.clone().unwrap_or_default();
        let target_id = m.target_id.clone().unwrap_or_default();
        if m.status != MappingStatus::Mapped {
            let recreating = m.status == MappingStatus::Pending
                || (m.status == MappingStatus::Stale && Gone::of(&m) == Some(Gone::Target));
            if recreating && policy.on_target_delete == OnTargetDelete::Recreate {
                r.recreate.push(source_id);
            }
            continue;
        }
        let (has_source, has_target) = (sources.contains(&source_id), targets.contains(&target_id));
        let (gone, done) = match (has_source, has_target) {
            (true, true) => continue, // back again: nothing to do
            (false, _) => match policy.on_source_delete {
                OnSourceDelete::Delete => {
                    if has_target {
                        r.delete_target.push(target_id);
                    }
                    r.deleted += 1;
                    (Gone::Source, BOTH_BY_SOURCE)
                }
                OnSourceDelete::Archive => {
                    if has_target {
                        r.archive_target.push(target_id);
                    }
                    r.archived += 1;
                    (Gone::Source, "target archived")
                }
                OnSourceDelete::Ignore => {
                    r.stale += 1;
                    (Gone::Source, "target kept")
                }
            },
            (true, false) => match policy.on_target_delete {
                OnTargetDelete::Unlink => {
                    r.stale += 1;
                    (Gone::Target, "unlinked, kept for operators")
                }
                OnTargetDelete::Propagate => {
                    r.delete_source.push(source_id);
                    r.deleted += 1;
                    (Gone::Target, BOTH_BY_TARGET)
                }
                OnTargetDelete::Recreate => {
                    r.recreate.push(source_id);
                    (Gone::Target, "re-created")
                }
            },
        };
        r.transitions.push(MappingWrite::Transition {
            current: m,
            change: MappingChange::MarkStale {
                reason: gone.reason(done),
            },
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_brake_takes_the_smaller_of_percent_and_max() {
        let brake = DeleteBrake::default();
        assert_eq!(brake.limit(1_000), 100);
        assert_eq!(brake.limit(10_000), 500);
        assert_eq!(brake.limit(5), 0);
        assert!(!brake.holds(100, 1_000));
        assert!(brake.holds(101, 1_000));
        assert!(brake.holds(501, 1_000_000));
        assert!(!brake.holds(0, 0));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_interval("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("15m"), Ok(Duration::from_secs(900)));
        assert!(
            parse_interval("1w")
                .unwrap_err()
                .contains("`1w` is not an interval")
        );
        assert!(parse_interval("d").is_err());
    }

    #[test]
    fn deleted_marks() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(""),
            json!("0"),
            json!("false"),
        ] {
            assert!(!is_deleted_mark(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("2026-01-01T00:00:00Z"), json!("t")] {
            assert!(is_deleted_mark(&v), "{v}");
        }
    }

    fn mapped(s: &str, t: &str) -> IdMapping {
        use crate::mapping::MappingChange;
        let now = chrono::Utc::now();
        let scope = crate::ids::EntityScope::new("t", "i", "account");
        let mut m = IdMapping::reserve(
            uuid::Uuid::new_v4(),
            scope,
            Some(s.into()),
            None,
            "fwd:k".into(),
            now,
        );
        m.apply(
            MappingChange::Confirm {
                source_id: s.into(),
                target_id: t.into(),
                base: Default::default(),
            },
            now,
        )
        .unwrap();
        m
    }

    fn present(ids: &[&str]) -> std::collections::HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn removals_follow_the_policy_for_each_side_gone() {
        let page = || vec![mapped("s1", "t1"), mapped("s2", "t2"), mapped("s3", "t3")];
        // s1 gone from the source, t2 from the target, s3/t3 back on both.
        let (sources, targets) = (present(&["s2", "s3"]), present(&["t1", "t3"]));
        let default = decide_removals(page(), &sources, &targets, &DeletePolicy::default());
        assert_eq!(default.delete_target, vec!["t1".to_owned()]);
        assert!(default.delete_source.is_empty() && default.recreate.is_empty());
        assert_eq!(
            (default.deleted, default.stale),
            (1, 1),
            "t2's mapping is unlinked"
        );
        assert_eq!(
            default.transitions.len(),
            2,
            "the pair back on both sides is left alone"
        );

        let policy = DeletePolicy {
            on_source_delete: OnSourceDelete::Archive,
            on_target_delete: OnTargetDelete::Propagate,
            ..DeletePolicy::default()
        };
        let r = decide_removals(page(), &sources, &targets, &policy);
        assert_eq!(
            (r.archive_target, r.delete_source),
            (vec!["t1".to_owned()], vec!["s2".to_owned()])
        );
        assert_eq!((r.archived, r.deleted), (1, 1));

        let policy = DeletePolicy {
            on_source_delete: OnSourceDelete::Ignore,
            on_target_delete: OnTargetDelete::Recreate,
            ..DeletePolicy::default()
        };
        let r = decide_removals(page(), &sources, &targets, &policy);
        assert!(r.delete_target.is_empty() && r.archive_target.is_empty());
        assert_eq!(r.recreate, vec!["s2".to_owned()]);
        assert_eq!(r.stale, 1);
    }

    #[test]
    fn a_candidate_acted_on_before_a_crash_is_not_acted_on_again() {
        use crate::mapping::MappingChange;
        let mut m = mapped("s1", "t1");
        m.apply(
            MappingChange::MarkStale {
                reason: Gone::Source.reason(BOTH_BY_SOURCE),
            },
            chrono::Utc::now(),
        )
        .unwrap();
        let r = decide_removals(
            vec![m.clone()],
            &present(&[]),
            &present(&[]),
            &DeletePolicy::default(),
        );
        assert_eq!(r, Removals::default());
        // A re-create the crash interrupted is taken up again.
        let mut gone = mapped("s2", "t2");
        gone.apply(
            MappingChange::MarkStale {
                reason: Gone::Target.reason("re-created"),
            },
            chrono::Utc::now(),
        )
        .unwrap();
        let policy = DeletePolicy {
            on_target_delete: OnTargetDelete::Recreate,
            ..DeletePolicy::default()
        };
        let r = decide_removals(vec![gone], &present(&["s2"]), &present(&[]), &policy);
        assert_eq!(r.recreate, vec!["s2".to_owned()]);
        assert!(r.transitions.is_empty());
    }
}
