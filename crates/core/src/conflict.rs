//! Three-way conflict detection and the five resolution strategies.
//!
//! A field has *changed* on a side when its value differs from the base
//! snapshot (the values both sides agreed on at the last sync). A field
//! *conflicts* when both sides changed it and their new values differ. With
//! no base (two records linked for the first time) every field whose values
//! differ counts as changed on both sides, so it conflicts.
//!
//! Strategies settle only the conflicting fields; a change that only one
//! side made is never lost:
//!
//! | strategy          | a conflicting field takes the value of            |
//! |-------------------|---------------------------------------------------|
//! | `source_wins`     | the source                                        |
//! | `target_wins`     | the target                                        |
//! | `last_write_wins` | the record modified last (tie: source)            |
//! | `merge`           | the per-field rule: `newer` (default), `source`, `target` |
//! | `manual`          | nobody: the record is parked for a reviewer       |
//!
//! In a one-way integration nothing is written to the source; the base then
//! follows the source record, so a value the target keeps (by `target_wins`,
//! or by a change only the target made) is not reported again next run.
//!
//! Everything here is pure: records in, decisions out.

use crate::ids::{EntityScope, EntityType, IntegrationId, TenantId};
use crate::record::{Direction, Fields, Record, Side};
use crate::value::same;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// How conflicting fields of one entity type are settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    SourceWins,
    TargetWins,
    LastWriteWins,
    Merge,
    Manual,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 5] = [
        Strategy::SourceWins,
        Strategy::TargetWins,
        Strategy::LastWriteWins,
        Strategy::Merge,
        Strategy::Manual,
    ];

    /// Used when neither the tenant nor the integration says otherwise.
    pub const ENGINE_DEFAULT: Strategy = Strategy::SourceWins;

    /// The name used in definitions, the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::SourceWins => "source_wins",
            Strategy::TargetWins => "target_wins",
            Strategy::LastWriteWins => "last_write_wins",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    /// Parses a strategy name; the error lists the names that exist.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{s}` (expected one of: {})",
                    Strategy::ALL.map(Strategy::as_str).join(", ")
                )
            })
    }
}

/// How `merge` settles one conflicting field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRule {
    /// The record modified last wins (tie: source).
    #[default]
    Newer,
    Source,
    Target,
}

impl FromStr for FieldRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "newer" => Ok(FieldRule::Newer),
            "source" => Ok(FieldRule::Source),
            "target" => Ok(FieldRule::Target),
            _ => Err(format!(
                "unknown merge rule `{s}` (expected one of: newer, source, target)"
            )),
        }
    }
}

/// Per-field rules for `merge`; fields not named use [`FieldRule::Newer`].
pub type MergeRules = BTreeMap<String, FieldRule>;

/// Which fields each side changed since the base, and which of them conflict.
/// Each list is sorted by field name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub source_changed: Vec<String>,
    pub target_changed: Vec<String>,
    pub conflicting: Vec<String>,
}

impl Changes {
    /// True when neither side changed anything: there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.source_changed.is_empty() && self.target_changed.is_empty()
    }
}

fn field<'a>(fields: &'a Fields, name: &str) -> &'a Value {
    fields.get(name).unwrap_or(&Value::Null)
}

fn field_names<'a>(base: Option<&'a Fields>, source: &'a Fields, target: &'a Fields) -> BTreeSet<&'a str> {
    source
        .keys()
        .chain(target.keys())
        .chain(base.into_iter().flat_map(|b| b.keys()))
        .map(String::as_str)
        .collect()
}

/// Three-way comparison of `source` and `target` against `base`.
pub fn detect(base: Option<&Fields>, source: &Fields, target: &Fields) -> Changes {
    let mut changes = Changes::default();
    for name in field_names(base, source, target) {
        let (s, t) = (field(source, name), field(target, name));
        let (source_changed, target_changed) = match base {
            Some(base) => (!same(s, field(base, name)), !same(t, field(base, name))),
            None => {
                let differ = !same(s, t);
                (differ, differ)
            }
        };
        if source_changed {
            changes.source_changed.push(name.to_owned());
        }
        if target_changed {
            changes.target_changed.push(name.to_owned());
        }
        if source_changed && target_changed && !same(s, t) {
            changes.conflicting.push(name.to_owned());
        }
    }
    changes
}

/// What to write so that both systems (or, one-way, the target) hold the
/// settled values, and the base to remember for the next run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Writes {
    /// Fields to update in the target; empty means no write.
    pub to_target: Fields,
    /// Fields to update in the source; always empty one-way.
    pub to_source: Fields,
    /// The new base snapshot.
    pub base: Fields,
    /// The value each conflicting field was settled to.
    pub settled: Fields,
}

impl Writes {
    /// True when neither system needs a write.
    pub fn is_noop(&self) -> bool {
        self.to_target.is_empty() && self.to_source.is_empty()
    }
}

/// The decision for one pair of records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Write(Writes),
    /// Manual strategy with conflicting fields: write nothing, ask a human.
    Park,
}

/// Everything the engine concluded about one pair of records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub changes: Changes,
    /// The strategy that settled the conflicting fields, if there were any.
    pub strategy_applied: Option<Strategy>,
    pub outcome: Outcome,
}

/// The side whose record was modified last; a tie goes to the source.
fn newer(source: &Record, target: &Record) -> Side {
    if target.modified_at > source.modified_at {
        Side::Target
    } else {
        Side::Source
    }
}

/// Builds the writes once each conflicting field has a value: `overrides`
/// (a reviewer's values) first, then `pick` for conflicting fields, then the
/// side that changed the field.
fn settle(
    base: Option<&Fields>,
    source: &Fields,
    target: &Fields,
    direction: Direction,
    changes: &Changes,
    overrides: &Fields,
    mut pick: impl FnMut(&str) -> Value,
) -> Writes {
    let mut writes = Writes {
        to_target: Fields::new(),
        to_source: Fields::new(),
        base: Fields::new(),
        settled: Fields::new(),
    };
    for name in field_names(base, source, target) {
        let (s, t) = (field(source, name), field(target, name));
        let conflicting = changes.conflicting.iter().any(|c| c == name);
        let merged = if let Some(value) = overrides.get(name) {
            value.clone()
        } else if conflicting {
            pick(name)
        } else if changes.source_changed.iter().any(|c| c == name) {
            s.clone()
        } else if changes.target_changed.iter().any(|c| c == name) {
            t.clone()
        } else {
            s.clone()
        };
        if conflicting {
            writes.settled.insert(name.to_owned(), merged.clone());
        }
        if !same(&merged, t) {
            writes.to_target.insert(name.to_owned(), merged.clone());
        }
        match direction {
            Direction::Bidirectional => {
                if !same(&merged, s) {
                    writes.to_source.insert(name.to_owned(), merged.clone());
                }
                writes.base.insert(name.to_owned(), merged);
            }
            Direction::OneWay => {
                writes.base.insert(name.to_owned(), s.clone());
            }
        }
    }
    writes
}

/// Compares a linked pair of records and decides what to write.
pub fn resolve(
    base: Option<&Fields>,
    source: &Record,
    target: &Record,
    direction: Direction,
    strategy: Strategy,
    rules: &MergeRules,
) -> Resolution {
    let changes = detect(base, &source.fields, &target.fields);
    if changes.conflicting.is_empty() {
        let writes = settle(
            base,
            &source.fields,
            &target.fields,
            direction,
            &changes,
            &Fields::new(),
            |_| unreachable!("no conflicting field to pick"),
        );
        return Resolution {
            changes,
            strategy_applied: None,
            outcome: Outcome::Write(writes),
        };
    }
    let winner_of = |name: &str| match strategy {
        Strategy::SourceWins => Side::Source,
        Strategy::TargetWins => Side::Target,
        Strategy::LastWriteWins => newer(source, target),
        Strategy::Merge => match rules.get(name).copied().unwrap_or_default() {
            FieldRule::Newer => newer(source, target),
            FieldRule::Source => Side::Source,
            FieldRule::Target => Side::Target,
        },
        Strategy::Manual => unreachable!("manual conflicts are parked"),
    };
    let outcome = if strategy == Strategy::Manual {
        Outcome::Park
    } else {
        Outcome::Write(settle(
            base,
            &source.fields,
            &target.fields,
            direction,
            &changes,
            &Fields::new(),
            |name| {
                let side = match winner_of(name) {
                    Side::Source => &source.fields,
                    Side::Target => &target.fields,
                };
                field(side, name).clone()
            },
        ))
    };
    Resolution {
        changes,
        strategy_applied: Some(strategy),
        outcome,
    }
}

/// A reviewer's answer to a parked conflict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "values", rename_all = "snake_case")]
pub enum ReviewDecision {
    TakeSource,
    TakeTarget,
    /// Values for fields of the record; every conflicting field must be given.
    Values(Fields),
}

/// A review decision that cannot be applied to the records it is for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("no value given for conflicting field `{field}`")]
    MissingField { field: String },
    #[error("field `{field}` is not a field of this record")]
    UnknownField { field: String },
    /// `held` says what the records hold there, e.g. "both records hold
    /// a number there (e.g. 99.99)".
    #[error("field `{field}`: {given} is {kind}, and {held}")]
    WrongKind {
        field: String,
        given: String,
        kind: &'static str,
        held: String,
    },
}

/// What kind of JSON value `v` is, with its article.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a document",
    }
}

/// Applies a reviewer's decision: conflicting fields take the decided
/// values, changes only one side made are kept as for every strategy, and
/// given values (which may also correct fields that did not conflict)
/// override whatever else the field would hold.
pub fn apply_review(
    base: Option<&Fields>,
    source: &Record,
    target: &Record,
    direction: Direction,
    decision: &ReviewDecision,
) -> Result<Writes, ReviewError> {
    let changes = detect(base, &source.fields, &target.fields);
    if let ReviewDecision::Values(values) = decision {
        let known = field_names(base, &source.fields, &target.fields);
        if let Some(unknown) = values.keys().find(|k| !known.contains(k.as_str())) {
            return Err(ReviewError::UnknownField {
                field: unknown.clone(),
            });
        }
        if let Some(missing) = changes.conflicting.iter().find(|c| !values.contains_key(*c)) {
            return Err(ReviewError::MissingField {
                field: missing.clone(),
            });
        }
    }
    let no_overrides = Fields::new();
    let overrides = match decision {
        ReviewDecision::Values(values) => values,
        _ => &no_overrides,
    };
    Ok(settle(
        base,
        &source.fields,
        &target.fields,
        direction,
        &changes,
        overrides,
        |name| match decision {
            ReviewDecision::TakeTarget => field(&target.fields, name).clone(),
            _ => field(&source.fields, name).clone(),
        },
    ))
}

/// Whether a conflict still waits for a reviewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    Pending,
    Resolved,
}

impl ConflictStatus {
    /// `pending` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictStatus::Pending => "pending",
            ConflictStatus::Resolved => "resolved",
        }
    }
}

impl FromStr for ConflictStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(ConflictStatus::Pending),
            "resolved" => Ok(ConflictStatus::Resolved),
            _ => Err(format!(
                "unknown conflict status `{s}` (expected pending or resolved)"
            )),
        }
    }
}

/// Who settles automatic conflicts, in `resolved_by`.
pub const SYSTEM: &str = "system";

/// The record of one detected conflict (MISSION §4). Automatic ones are
/// born resolved by [`SYSTEM`]; manual ones stay pending until a reviewer
/// decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub integration_id: IntegrationId,
    pub entity_type: EntityType,
    /// The run that found it, if a run did.
    pub run_id: Option<Uuid>,
    pub source_record: Record,
    pub target_record: Record,
    /// The base the conflict was detected against, kept so that a later
    /// review decision is applied exactly as the engine would have.
    pub base: Option<Fields>,
    pub conflicting_fields: Vec<String>,
    pub strategy_applied: Strategy,
    /// The settled values of the conflicting fields; `None` while pending.
    pub resolution: Option<Fields>,
    pub status: ConflictStatus,
    /// `system`, or the reviewer's user id.
    pub resolved_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// What became of a reviewer's decision once a run took it up:
    /// `applied`, or why it was not (`parked again as conflict …`, its
    /// record gone from a side, no longer synced). `None` until then.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// Where a conflict was found: the scope every conflict record carries.
pub type ConflictScope = EntityScope;

impl ConflictRecord {
    /// The record of `resolution`, or `None` when nothing conflicted.
    pub fn from_resolution(
        id: Uuid,
        scope: ConflictScope,
        base: Option<&Fields>,
        source: &Record,
        target: &Record,
        resolution: &Resolution,
        now: DateTime<Utc>,
    ) -> Option<ConflictRecord> {
        let strategy = resolution.strategy_applied?;
        let (settled, status, resolved_by, resolved_at) = match &resolution.outcome {
            Outcome::Write(writes) => (
                Some(writes.settled.clone()),
                ConflictStatus::Resolved,
                Some(SYSTEM.to_owned()),
                Some(now),
            ),
            Outcome::Park => (None, ConflictStatus::Pending, None, None),
        };
        Some(ConflictRecord {
            id,
            tenant_id: scope.tenant_id,
            integration_id: scope.integration_id,
            entity_type: scope.entity_type,
            run_id: None,
            source_record: source.clone(),
            target_record: target.clone(),
            base: base.cloned(),
            conflicting_fields: resolution.changes.conflicting.clone(),
            strategy_applied: strategy,
            resolution: settled,
            status,
            resolved_by,
            created_at: now,
            resolved_at,
            outcome: None,
        })
    }
}

/// The values a decision gives the conflicting fields (and any field the
/// reviewer set), checked against the records.
pub fn decided_values(c: &ConflictRecord, decision: &ReviewDecision) -> Result<Fields, String> {
    let writes = apply_review(
        c.base.as_ref(),
        &c.source_record,
        &c.target_record,
        Direction::Bidirectional,
        decision,
    )
    .map_err(|e| format!("conflict {}: {e}", c.id))?;
    let mut values = writes.settled;
    if let ReviewDecision::Values(given) = decision {
        for (name, v) in given {
            let (s, t) = (
                field(&c.source_record.fields, name),
                field(&c.target_record.fields, name),
            );
            check_kind(name, v, s, t).map_err(|e| format!("conflict {}: {e}", c.id))?;
        }
        values.extend(given.clone());
    }
    Ok(values)
}

/// Refuses a given value of another kind than the records hold in that
/// field (text for a number, say): a system would refuse it, or store it
/// as another value, only once the decision is written. The kind is that
/// of whichever side holds a value, so a field NULL in the source is
/// still held to the target's kind; when the two hold values of two
/// kinds, either is fine. NULL is always a choice.
fn check_kind(name: &str, given: &Value, source: &Value, target: &Value) -> Result<(), ReviewError> {
    let kind = json_kind(given);
    let held = match (source, target) {
        _ if given.is_null() => return Ok(()),
        (Value::Null, Value::Null) => return Ok(()),
        (held, Value::Null) | (Value::Null, held) if kind != json_kind(held) => {
            let (side, other) = if source.is_null() {
                ("target", "source")
            } else {
                ("source", "target")
            };
            format!(
                "the {side} record holds {} there ({}; the {other} holds NULL)",
                json_kind(held),
                excerpt(held)
            )
        }
        (Value::Null, _) | (_, Value::Null) => return Ok(()),
        (s, t) if json_kind(s) == json_kind(t) && kind != json_kind(s) => {
            format!("both records hold {} there (e.g. {})", json_kind(s), excerpt(s))
        }
        (s, t) if kind != json_kind(s) && kind != json_kind(t) => format!(
            "the records hold {} ({}) and {} ({}) there",
            json_kind(s),
            excerpt(s),
            json_kind(t),
            excerpt(t)
        ),
        _ => return Ok(()),
    };
    Err(ReviewError::WrongKind {
        field: name.to_owned(),
        given: excerpt(given),
        kind,
        held,
    })
}

/// `v` as JSON, cut after 60 characters (a value may be a page long).
fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A conflict of one field, `f`, that the source holds as `source`
    /// and the target as `target` (`null`: SQL NULL).
    fn conflict(source: Value, target: Value) -> ConflictRecord {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let record = |id: &str, v: Value| Record {
            id: id.into(),
            modified_at: at,
            fields: [("f".to_owned(), v)].into_iter().collect(),
        };
        let (source, target) = (record("s-1", source), record("t-1", target));
        let resolution = resolve(
            None,
            &source,
            &target,
            Direction::Bidirectional,
            Strategy::Manual,
            &MergeRules::new(),
        );
        let scope = ConflictScope::new("acme", "crm-to-erp", "account");
        ConflictRecord::from_resolution(Uuid::nil(), scope, None, &source, &target, &resolution, at)
            .expect("the two values differ")
    }

    /// What deciding `given` for `f` answers: `Ok` with the value kept, or
    /// the reason it is refused.
    fn check(source: Value, target: Value, given: Value) -> Result<Value, String> {
        let c = conflict(source, target);
        let values = [("f".to_owned(), given)].into_iter().collect();
        decided_values(&c, &ReviewDecision::Values(values)).map(|v| v["f"].clone())
    }

    const REFUSED: &str = "conflict 00000000-0000-0000-0000-000000000000: field `f`: ";

    #[test]
    fn a_decided_value_is_held_to_the_kind_of_whichever_side_holds_one() {
        // The source NULL: the target's kind decides.
        assert_eq!(
            check(json!(null), json!("erp-title"), json!("1.50")),
            Ok(json!("1.50"))
        );
        assert_eq!(
            check(json!(null), json!("erp-title"), json!(1.50)).unwrap_err(),
            format!(
                "{REFUSED}1.5 is a number, and the target record holds text there \
                 (\"erp-title\"; the source holds NULL)"
            )
        );
        // The target NULL: the source's.
        assert_eq!(check(json!(7), json!(null), json!(8)), Ok(json!(8)));
        assert_eq!(
            check(json!(7), json!(null), json!("8")).unwrap_err(),
            format!(
                "{REFUSED}\"8\" is text, and the source record holds a number there (7; the target holds NULL)"
            )
        );
        // Both of one kind.
        assert_eq!(check(json!("a"), json!("b"), json!("")), Ok(json!("")));
        assert_eq!(
            check(json!("a"), json!("b"), json!(true)).unwrap_err(),
            format!("{REFUSED}true is a boolean, and both records hold text there (e.g. \"a\")")
        );
        // Two kinds: either is fine, a third is not.
        assert_eq!(check(json!(5), json!("5"), json!(6)), Ok(json!(6)));
        assert_eq!(check(json!(5), json!("5"), json!("six")), Ok(json!("six")));
        assert_eq!(
            check(json!(5), json!("5"), json!(false)).unwrap_err(),
            format!("{REFUSED}false is a boolean, and the records hold a number (5) and text (\"5\") there")
        );
        // NULL is always a choice.
        for (s, t) in [
            (json!(null), json!("x")),
            (json!(1), json!(null)),
            (json!("a"), json!("b")),
        ] {
            assert_eq!(check(s, t, json!(null)), Ok(json!(null)));
        }
    }

    #[test]
    fn a_refusal_quotes_a_long_value_shortened() {
        let long = "x".repeat(50_000);
        let why = check(json!(null), json!(long), json!(1)).unwrap_err();
        assert_eq!(
            why,
            format!(
                "{REFUSED}1 is a number, and the target record holds text there (\"{}…; the source holds NULL)",
                "x".repeat(59)
            )
        );
    }
}
