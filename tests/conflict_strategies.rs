//! The five conflict strategies, case by case (MISSION §4).
//!
//! Every strategy runs the same table of scenarios through
//! [`syncd_core::conflict::resolve`]; the table of one strategy is one snapshot
//! under `snapshots/`, so a reviewer reads a whole strategy at once. The
//! properties users rely on whatever the strategy (no echo on the next run,
//! a change only one side made is never lost, manual writes nothing) are
//! asserted directly, and checked on random records with proptest.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use serde::Serialize;
use serde_json::{Value, json};
use syncd_core::conflict::{
    self, ConflictRecord, ConflictScope, ConflictStatus, FieldRule, MergeRules, Outcome, Resolution,
    ReviewDecision, ReviewError, Strategy, Writes,
};
use syncd_core::ids::{EntityType, IntegrationId, TenantId};
use syncd_core::record::{Direction, Fields, Record};
use syncd_core::workflow::Workflow;
use uuid::Uuid;

// --- building records ---------------------------------------------------------

/// Fields from a JSON object literal.
fn fields(value: Value) -> Fields {
    match value {
        Value::Object(map) => map,
        other => panic!("fields must be a JSON object, got {other}"),
    }
}

/// 2024-05-01 at `hh:mm` UTC.
fn at(hhmm: &str) -> DateTime<Utc> {
    let (h, m) = hhmm.split_once(':').expect("hh:mm");
    Utc.with_ymd_and_hms(2024, 5, 1, h.parse().unwrap(), m.parse().unwrap(), 0)
        .unwrap()
}

fn record(id: &str, value: Value, hhmm: &str) -> Record {
    Record {
        id: id.to_owned(),
        fields: fields(value),
        modified_at: at(hhmm),
    }
}

/// `record` with `writes` applied, as the system would hold it afterwards.
fn written(record: &Record, writes: &Fields) -> Record {
    let mut after = record.clone();
    for (name, value) in writes {
        after.fields.insert(name.clone(), value.clone());
    }
    after
}

fn value<'a>(fields: &'a Fields, name: &str) -> &'a Value {
    fields.get(name).unwrap_or(&Value::Null)
}

fn writes_of(resolution: &Resolution) -> &Writes {
    match &resolution.outcome {
        Outcome::Write(writes) => writes,
        Outcome::Park => panic!("expected writes, the record was parked: {resolution:?}"),
    }
}

fn no_rules() -> MergeRules {
    MergeRules::new()
}

/// Runs `f` with snapshots stored in the repository's top-level `snapshots/`.
fn in_snapshots(description: &str, f: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_description(description);
    settings.bind(f);
}

// --- the scenario table ---------------------------------------------------------

/// A pair of linked records and the base they last agreed on.
struct Scenario {
    name: &'static str,
    base: Option<Value>,
    source: (Value, &'static str),
    target: (Value, &'static str),
    /// Also run one-way (every scenario runs bidirectionally).
    one_way: bool,
}

fn scenarios() -> Vec<Scenario> {
    let base = || json!({"name": "Acme", "industry": "retail"});
    let s = |name: &'static str, base: Option<Value>, source, target, one_way| Scenario {
        name,
        base,
        source,
        target,
        one_way,
    };
    vec![
        s(
            "nothing_changed",
            Some(base()),
            (base(), "10:00"),
            (base(), "10:00"),
            false,
        ),
        s(
            "only_source_changed",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (base(), "10:00"),
            true,
        ),
        s(
            "only_target_changed",
            Some(base()),
            (base(), "10:00"),
            (json!({"name": "Acme", "industry": "wholesale"}), "10:05"),
            true,
        ),
        s(
            "different_fields_changed",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (json!({"name": "Acme", "industry": "wholesale"}), "10:10"),
            false,
        ),
        s(
            "same_field_target_newer",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (json!({"name": "ACME Inc", "industry": "retail"}), "10:10"),
            true,
        ),
        s(
            "same_field_source_newer",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:10"),
            (json!({"name": "ACME Inc", "industry": "retail"}), "10:05"),
            false,
        ),
        s(
            "same_field_equal_timestamps",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (json!({"name": "ACME Inc", "industry": "retail"}), "10:05"),
            false,
        ),
        s(
            "same_field_same_value",
            Some(base()),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:10"),
            false,
        ),
        s(
            "conflict_and_one_sided_changes",
            Some(json!({"name": "Acme", "industry": "retail", "phone": "555-0100"})),
            (
                json!({"name": "Acme Corp", "industry": "wholesale", "phone": "555-0100"}),
                "10:05",
            ),
            (
                json!({"name": "ACME Inc", "industry": "retail", "phone": "555-0199"}),
                "10:10",
            ),
            true,
        ),
        s(
            "no_base_records_differ",
            None,
            (json!({"name": "Acme Corp", "industry": "retail"}), "10:05"),
            (json!({"name": "ACME Inc", "industry": "retail"}), "10:10"),
            true,
        ),
        s(
            "no_base_records_equal",
            None,
            (base(), "10:05"),
            (base(), "10:10"),
            false,
        ),
        s(
            "no_base_target_lacks_field",
            None,
            (
                json!({"name": "Acme", "industry": "retail", "phone": "555-0100"}),
                "10:05",
            ),
            (base(), "10:10"),
            false,
        ),
    ]
}

/// One row of a strategy's snapshot: the inputs, compactly, and what
/// `resolve` decided.
#[derive(Serialize)]
struct Case {
    case: &'static str,
    direction: Direction,
    base: String,
    source: String,
    target: String,
    got: Resolution,
}

/// `{industry: retail, name: Acme}`: fields on one line, strings unquoted.
fn show(fields: &Fields) -> String {
    let shown: Vec<String> = fields
        .iter()
        .map(|(name, v)| match v {
            Value::String(s) => format!("{name}: {s}"),
            other => format!("{name}: {other}"),
        })
        .collect();
    format!("{{{}}}", shown.join(", "))
}

fn run(scenario: &Scenario, direction: Direction, strategy: Strategy, rules: &MergeRules) -> Case {
    let base = scenario.base.clone().map(fields);
    let source = record("s-1", scenario.source.0.clone(), scenario.source.1);
    let target = record("t-1", scenario.target.0.clone(), scenario.target.1);
    let got = conflict::resolve(base.as_ref(), &source, &target, direction, strategy, rules);
    Case {
        case: scenario.name,
        direction,
        base: base.as_ref().map_or_else(|| "none (first sync)".to_owned(), show),
        source: format!("{} at {}", show(&source.fields), scenario.source.1),
        target: format!("{} at {}", show(&target.fields), scenario.target.1),
        got,
    }
}

/// Every scenario, bidirectional, then the one-way ones.
fn table(strategy: Strategy, rules: &MergeRules) -> Vec<Case> {
    let all = scenarios();
    let both = all
        .iter()
        .map(|s| run(s, Direction::Bidirectional, strategy, rules));
    let one_way = all
        .iter()
        .filter(|s| s.one_way)
        .map(|s| run(s, Direction::OneWay, strategy, rules));
    both.chain(one_way).collect()
}

/// Snapshots the table of `strategy` as `conflict_strategies__<name>.snap`.
fn check(strategy: Strategy, rules: &MergeRules, name: &str, description: &str) {
    let table = table(strategy, rules);
    in_snapshots(description, || insta::assert_yaml_snapshot!(name, table));
}

#[test]
fn source_wins() {
    check(
        Strategy::SourceWins,
        &no_rules(),
        "source_wins",
        "source_wins: a conflicting field takes the source's value; one-sided changes are kept",
    );
}

#[test]
fn target_wins() {
    check(
        Strategy::TargetWins,
        &no_rules(),
        "target_wins",
        "target_wins: a conflicting field keeps the target's value; one-sided changes are kept",
    );
}

#[test]
fn last_write_wins() {
    check(
        Strategy::LastWriteWins,
        &no_rules(),
        "last_write_wins",
        "last_write_wins: a conflicting field takes the value of the record modified last (tie: source)",
    );
}

#[test]
fn merge() {
    check(
        Strategy::Merge,
        &no_rules(),
        "merge",
        "merge without rules: every conflicting field goes to the newer side (tie: source)",
    );
}

#[test]
fn manual() {
    check(
        Strategy::Manual,
        &no_rules(),
        "manual",
        "manual: a record with a conflicting field is parked and nothing is written",
    );
}

#[test]
fn merge_with_field_rules() {
    // `name` is pinned to the target; `industry` has no rule, so it goes to
    // the newer side.
    let rules: MergeRules = [("name".to_owned(), FieldRule::Target)].into();
    let base = || json!({"name": "Acme", "industry": "retail", "phone": "555-0100"});
    let both_changed = |source_at, target_at, one_way| Scenario {
        name: "",
        base: Some(base()),
        source: (
            json!({"name": "Acme Corp", "industry": "wholesale", "phone": "555-0100"}),
            source_at,
        ),
        target: (
            json!({"name": "ACME Inc", "industry": "services", "phone": "555-0199"}),
            target_at,
        ),
        one_way,
    };
    let cases = [
        ("source_newer", both_changed("10:10", "10:05", false)),
        ("target_newer", both_changed("10:05", "10:10", false)),
        ("source_newer", both_changed("10:10", "10:05", true)),
    ];
    let table: Vec<Case> = cases
        .into_iter()
        .map(|(name, mut scenario)| {
            scenario.name = name;
            let direction = if scenario.one_way {
                Direction::OneWay
            } else {
                Direction::Bidirectional
            };
            run(&scenario, direction, Strategy::Merge, &rules)
        })
        .collect();

    // The pinned field goes to the target whichever side is newer.
    for case in &table {
        assert_eq!(
            writes_of(&case.got).settled["name"],
            json!("ACME Inc"),
            "{}",
            case.case
        );
    }
    in_snapshots(
        "merge with rules {name = target}: name always keeps the target's value, \
         industry goes to the newer side, phone (changed by the target only) is kept",
        || insta::assert_yaml_snapshot!("merge_with_field_rules", table),
    );
}

// --- properties users rely on -------------------------------------------------------

/// Resolving again with the new base and the records as written must write
/// nothing and report no conflict (no echo loops).
fn assert_no_echo(base: Option<&Fields>, source: &Record, target: &Record, direction: Direction, w: &Writes) {
    let source_after = written(source, &w.to_source);
    let target_after = written(target, &w.to_target);
    for strategy in Strategy::ALL {
        let again = conflict::resolve(
            Some(&w.base),
            &source_after,
            &target_after,
            direction,
            strategy,
            &no_rules(),
        );
        assert_eq!(
            again.strategy_applied, None,
            "conflict reported again ({strategy}, base {base:?}): {again:?}"
        );
        let again = writes_of(&again);
        assert!(
            again.is_noop(),
            "echo write ({strategy}, base {base:?}): {again:?}"
        );
        if direction == Direction::Bidirectional {
            assert_eq!(again.base, w.base, "the base moved without a change ({strategy})");
        }
    }
}

#[test]
fn a_second_run_with_nothing_new_writes_nothing() {
    for scenario in scenarios() {
        for direction in [Direction::Bidirectional, Direction::OneWay] {
            for strategy in Strategy::ALL {
                if strategy == Strategy::Manual {
                    continue;
                }
                let base = scenario.base.clone().map(fields);
                let source = record("s-1", scenario.source.0.clone(), scenario.source.1);
                let target = record("t-1", scenario.target.0.clone(), scenario.target.1);
                let got =
                    conflict::resolve(base.as_ref(), &source, &target, direction, strategy, &no_rules());
                assert_no_echo(base.as_ref(), &source, &target, direction, writes_of(&got));
            }
        }
    }
}

#[test]
fn one_way_never_writes_to_the_source_and_the_base_follows_it() {
    for scenario in scenarios() {
        for strategy in Strategy::ALL {
            let base = scenario.base.clone().map(fields);
            let source = record("s-1", scenario.source.0.clone(), scenario.source.1);
            let target = record("t-1", scenario.target.0.clone(), scenario.target.1);
            let got = conflict::resolve(
                base.as_ref(),
                &source,
                &target,
                Direction::OneWay,
                strategy,
                &no_rules(),
            );
            if let Outcome::Write(w) = &got.outcome {
                assert!(w.to_source.is_empty(), "{} {strategy}: {w:?}", scenario.name);
                for (name, v) in &w.base {
                    assert_eq!(v, value(&source.fields, name), "{} {strategy}", scenario.name);
                }
            }
        }
    }
}

#[test]
fn manual_parks_only_records_with_a_conflict_and_writes_nothing() {
    let base = fields(json!({"name": "Acme", "industry": "retail"}));
    let source = record("s-1", json!({"name": "Acme Corp", "industry": "retail"}), "10:05");
    let target = record(
        "t-1",
        json!({"name": "ACME Inc", "industry": "wholesale"}),
        "10:10",
    );
    let got = conflict::resolve(
        Some(&base),
        &source,
        &target,
        Direction::Bidirectional,
        Strategy::Manual,
        &no_rules(),
    );
    assert_eq!(got.outcome, Outcome::Park);
    assert_eq!(got.strategy_applied, Some(Strategy::Manual));
    assert_eq!(got.changes.conflicting, ["name"]);

    // Without a conflict, manual syncs one-sided changes like any strategy.
    let target = record("t-1", json!({"name": "Acme", "industry": "wholesale"}), "10:10");
    let got = conflict::resolve(
        Some(&base),
        &source,
        &target,
        Direction::Bidirectional,
        Strategy::Manual,
        &no_rules(),
    );
    assert_eq!(got.strategy_applied, None);
    let w = writes_of(&got);
    assert_eq!(w.to_target, fields(json!({"name": "Acme Corp"})));
    assert_eq!(w.to_source, fields(json!({"industry": "wholesale"})));
}

/// The parked record of `conflict_and_one_sided_changes`.
fn parked() -> (Fields, Record, Record) {
    (
        fields(json!({"name": "Acme", "industry": "retail", "phone": "555-0100"})),
        record(
            "s-1",
            json!({"name": "Acme Corp", "industry": "wholesale", "phone": "555-0100"}),
            "10:05",
        ),
        record(
            "t-1",
            json!({"name": "ACME Inc", "industry": "retail", "phone": "555-0199"}),
            "10:10",
        ),
    )
}

#[test]
fn a_review_settles_the_conflict_and_keeps_one_sided_changes() {
    let (base, source, target) = parked();
    let review = |decision: &ReviewDecision| {
        conflict::apply_review(Some(&base), &source, &target, Direction::Bidirectional, decision).unwrap()
    };

    let w = review(&ReviewDecision::TakeSource);
    assert_eq!(
        w.base,
        fields(json!({"name": "Acme Corp", "industry": "wholesale", "phone": "555-0199"}))
    );
    assert_eq!(w.settled, fields(json!({"name": "Acme Corp"})));
    assert_no_echo(Some(&base), &source, &target, Direction::Bidirectional, &w);

    let w = review(&ReviewDecision::TakeTarget);
    assert_eq!(
        w.base,
        fields(json!({"name": "ACME Inc", "industry": "wholesale", "phone": "555-0199"}))
    );
    assert_eq!(w.to_target, fields(json!({"industry": "wholesale"})));
    assert_eq!(
        w.to_source,
        fields(json!({"name": "ACME Inc", "phone": "555-0199"}))
    );
    assert_no_echo(Some(&base), &source, &target, Direction::Bidirectional, &w);

    // Supplied values may also correct a field that did not conflict.
    let w = review(&ReviewDecision::Values(fields(
        json!({"name": "Acme Corporation", "phone": "555-0123"}),
    )));
    assert_eq!(
        w.base,
        fields(json!({"name": "Acme Corporation", "industry": "wholesale", "phone": "555-0123"}))
    );
    assert_eq!(w.settled, fields(json!({"name": "Acme Corporation"})));
    assert_no_echo(Some(&base), &source, &target, Direction::Bidirectional, &w);

    // One-way, a review writes only to the target.
    let w = conflict::apply_review(
        Some(&base),
        &source,
        &target,
        Direction::OneWay,
        &ReviewDecision::TakeSource,
    )
    .unwrap();
    assert!(w.to_source.is_empty());
    assert_eq!(
        w.to_target,
        fields(json!({"name": "Acme Corp", "industry": "wholesale"}))
    );
    assert_no_echo(Some(&base), &source, &target, Direction::OneWay, &w);
}

#[test]
fn a_review_must_name_every_conflicting_field_and_only_fields_of_the_record() {
    let (base, source, target) = parked();
    let review = |values: Value| {
        conflict::apply_review(
            Some(&base),
            &source,
            &target,
            Direction::Bidirectional,
            &ReviewDecision::Values(fields(values)),
        )
    };

    let missing = review(json!({"industry": "retail"})).unwrap_err();
    assert_eq!(missing, ReviewError::MissingField { field: "name".into() });
    assert_eq!(missing.to_string(), "no value given for conflicting field `name`");

    let unknown = review(json!({"name": "Acme", "nmae": "Acme"})).unwrap_err();
    assert_eq!(unknown, ReviewError::UnknownField { field: "nmae".into() });
    assert_eq!(unknown.to_string(), "field `nmae` is not a field of this record");
}

/// A reviewer's value of another kind than both records hold in that
/// field (text for a number) is refused when it is given, naming the
/// field, rather than written to one system and refused by the other.
#[test]
fn a_decided_value_of_another_kind_than_the_records_hold_is_refused() {
    let base = fields(json!({"name": "Acme", "price": 10.5}));
    let source = record("s-1", json!({"name": "Acme S", "price": 99.99}), "10:05");
    let target = record("t-1", json!({"name": "Acme T", "price": 10.5}), "10:10");
    let resolution = conflict::resolve(
        Some(&base),
        &source,
        &target,
        Direction::Bidirectional,
        Strategy::Manual,
        &no_rules(),
    );
    let c = ConflictRecord::from_resolution(
        Uuid::from_u128(9),
        scope(),
        Some(&base),
        &source,
        &target,
        &resolution,
        at("10:15"),
    )
    .expect("a conflict was detected");
    let decide = |values: Value| conflict::decided_values(&c, &ReviewDecision::Values(fields(values)));
    let why = decide(json!({"name": "Acme", "price": "abc"})).unwrap_err();
    assert!(
        why.ends_with("field `price`: \"abc\" is text, and both records hold a number there (e.g. 99.99)"),
        "{why}"
    );
    assert!(decide(json!({"name": "Acme", "price": 88.8})).is_ok());
    assert!(
        decide(json!({"name": "Acme", "price": null})).is_ok(),
        "emptied on purpose"
    );
    assert!(decide(json!({"name": 5})).is_err());
}

// --- conflict records -----------------------------------------------------------------

fn scope() -> ConflictScope {
    ConflictScope {
        tenant_id: TenantId::from("acme"),
        integration_id: IntegrationId::from("crm-to-erp"),
        entity_type: EntityType::from("account"),
    }
}

#[test]
fn automatic_conflicts_are_recorded_resolved_by_system() {
    let (base, source, target) = parked();
    let now = at("10:15");
    let id = Uuid::from_u128(7);
    let resolution = conflict::resolve(
        Some(&base),
        &source,
        &target,
        Direction::Bidirectional,
        Strategy::LastWriteWins,
        &no_rules(),
    );
    let rec = ConflictRecord::from_resolution(id, scope(), Some(&base), &source, &target, &resolution, now)
        .expect("a conflict was detected");
    assert_eq!(rec.id, id);
    assert_eq!(
        (
            rec.tenant_id.as_str(),
            rec.integration_id.as_str(),
            rec.entity_type.as_str()
        ),
        ("acme", "crm-to-erp", "account")
    );
    assert_eq!(rec.source_record, source);
    assert_eq!(rec.target_record, target);
    assert_eq!(rec.base, Some(base));
    assert_eq!(rec.conflicting_fields, ["name"]);
    assert_eq!(rec.strategy_applied, Strategy::LastWriteWins);
    assert_eq!(rec.resolution, Some(fields(json!({"name": "ACME Inc"}))));
    assert_eq!(rec.status, ConflictStatus::Resolved);
    assert_eq!(rec.resolved_by.as_deref(), Some("system"));
    assert_eq!(rec.created_at, now);
    assert_eq!(rec.resolved_at, Some(now));
}

#[test]
fn manual_conflicts_are_recorded_pending() {
    let (base, source, target) = parked();
    let now = at("10:15");
    let resolution = conflict::resolve(
        Some(&base),
        &source,
        &target,
        Direction::Bidirectional,
        Strategy::Manual,
        &no_rules(),
    );
    let rec = ConflictRecord::from_resolution(
        Uuid::from_u128(8),
        scope(),
        Some(&base),
        &source,
        &target,
        &resolution,
        now,
    )
    .expect("a conflict was detected");
    assert_eq!(rec.strategy_applied, Strategy::Manual);
    assert_eq!(rec.conflicting_fields, ["name"]);
    assert_eq!(rec.status, ConflictStatus::Pending);
    assert_eq!(rec.resolution, None);
    assert_eq!(rec.resolved_by, None);
    assert_eq!(rec.resolved_at, None);
    assert_eq!(rec.created_at, now);
    assert_eq!(rec.base, Some(base));
}

#[test]
fn no_conflict_no_record() {
    // Both sides changed, but different fields: not a conflict.
    let base = fields(json!({"name": "Acme", "industry": "retail"}));
    let source = record("s-1", json!({"name": "Acme Corp", "industry": "retail"}), "10:05");
    let target = record("t-1", json!({"name": "Acme", "industry": "wholesale"}), "10:10");
    for strategy in Strategy::ALL {
        let resolution = conflict::resolve(
            Some(&base),
            &source,
            &target,
            Direction::Bidirectional,
            strategy,
            &no_rules(),
        );
        let rec = ConflictRecord::from_resolution(
            Uuid::from_u128(9),
            scope(),
            Some(&base),
            &source,
            &target,
            &resolution,
            at("10:15"),
        );
        assert_eq!(rec, None, "{strategy}");
    }
}

// --- which strategy applies -------------------------------------------------------------

const PRECEDENCE: &str = r#"
name = "crm-to-erp"
strategy = "merge"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"

[systems.erp]
connector = "sql"

[[entities]]
name = "account"
table = "accounts"
strategy = "target_wins"

[[entities]]
name = "contact"
table = "contacts"

[[entities]]
name = "product"
table = "products"
strategy = "source_wins"

[tenants.acme]
strategy = "last_write_wins"
strategies = { account = "manual" }

[tenants.globex]
strategies = { contact = "source_wins" }

[tenants.initech]
"#;

#[test]
fn strategy_precedence() {
    let wf = Workflow::parse("precedence.toml", PRECEDENCE).unwrap();
    let strategy = |tenant: &str, entity: &str| wf.strategy_for(&TenantId::from(tenant), entity);
    // The tenant's override for the entity beats everything.
    assert_eq!(strategy("acme", "account"), Strategy::Manual);
    assert_eq!(strategy("globex", "contact"), Strategy::SourceWins);
    // Then the tenant's own default, also over the entity's setting.
    assert_eq!(strategy("acme", "contact"), Strategy::LastWriteWins);
    assert_eq!(strategy("acme", "product"), Strategy::LastWriteWins);
    // Then the entity's setting.
    assert_eq!(strategy("globex", "account"), Strategy::TargetWins);
    assert_eq!(strategy("initech", "account"), Strategy::TargetWins);
    assert_eq!(strategy("nobody", "account"), Strategy::TargetWins);
    // Then the integration default.
    assert_eq!(strategy("initech", "contact"), Strategy::Merge);
    assert_eq!(strategy("nobody", "contact"), Strategy::Merge);

    // Then the engine default.
    let bare = PRECEDENCE.replacen("strategy = \"merge\"\n", "", 1);
    let wf = Workflow::parse("precedence.toml", &bare).unwrap();
    assert_eq!(wf.strategy, None);
    assert_eq!(
        wf.strategy_for(&TenantId::from("initech"), "contact"),
        Strategy::ENGINE_DEFAULT
    );
    assert_eq!(Strategy::ENGINE_DEFAULT, Strategy::SourceWins);
    assert_eq!(
        wf.strategy_for(&TenantId::from("initech"), "account"),
        Strategy::TargetWins
    );
}

// --- on random records --------------------------------------------------------------------

/// Field values from a small domain, so that sides often agree or collide.
fn small_fields() -> impl proptest::strategy::Strategy<Value = Fields> {
    proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c")],
        prop_oneof![Just(Value::Null), (0..3u8).prop_map(Value::from)],
        0..=3,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn any_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    proptest::sample::select(Strategy::ALL.to_vec())
}

fn any_direction() -> impl proptest::strategy::Strategy<Value = Direction> {
    prop_oneof![Just(Direction::OneWay), Just(Direction::Bidirectional)]
}

proptest! {
    #[test]
    fn no_echo_and_no_lost_one_sided_change(
        base in proptest::option::of(small_fields()),
        source in small_fields(),
        target in small_fields(),
        (source_at, target_at) in (0..3u32, 0..3u32),
        strategy in any_strategy(),
        direction in any_direction(),
        take_target in any::<bool>(),
    ) {
        let minute = |m: u32| format!("10:0{m}");
        let source = Record { id: "s".into(), fields: source, modified_at: at(&minute(source_at)) };
        let target = Record { id: "t".into(), fields: target, modified_at: at(&minute(target_at)) };
        let rules = no_rules();
        let got = conflict::resolve(base.as_ref(), &source, &target, direction, strategy, &rules);
        prop_assert_eq!(got.strategy_applied.is_some(), !got.changes.conflicting.is_empty());
        let w = match &got.outcome {
            Outcome::Write(w) => w.clone(),
            Outcome::Park => {
                prop_assert_eq!(strategy, Strategy::Manual);
                let decision = if take_target { ReviewDecision::TakeTarget } else { ReviewDecision::TakeSource };
                conflict::apply_review(base.as_ref(), &source, &target, direction, &decision).unwrap()
            }
        };
        if direction == Direction::OneWay {
            prop_assert!(w.to_source.is_empty());
        }
        let source_after = written(&source, &w.to_source);
        let target_after = written(&target, &w.to_target);
        // A change only one side made reaches the other side (one-way: only
        // source changes travel, and the target keeps its own).
        for name in &got.changes.source_changed {
            if !got.changes.target_changed.contains(name) {
                prop_assert_eq!(value(&target_after.fields, name), value(&source.fields, name));
            }
        }
        for name in &got.changes.target_changed {
            if !got.changes.source_changed.contains(name) {
                prop_assert_eq!(value(&target_after.fields, name), value(&target.fields, name));
                if direction == Direction::Bidirectional {
                    prop_assert_eq!(value(&source_after.fields, name), value(&target.fields, name));
                }
            }
        }
        // Bidirectional, both sides end up equal to the new base.
        if direction == Direction::Bidirectional {
            for (name, v) in &w.base {
                prop_assert_eq!(value(&source_after.fields, name), v);
                prop_assert_eq!(value(&target_after.fields, name), v);
            }
        }
        // The next run, with nothing new, writes nothing and finds no conflict.
        let again = conflict::resolve(Some(&w.base), &source_after, &target_after, direction, strategy, &rules);
        prop_assert_eq!(again.strategy_applied, None);
        prop_assert!(writes_of(&again).is_noop(), "echo: {:?}", again);
    }
}
