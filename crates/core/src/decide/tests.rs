//! The page decision, branch by branch, with no database: each test builds
//! a page as the executor would gather it and checks what is decided.

use super::*;
use crate::conflict::Strategy;
use crate::deletes::OnTargetDelete;
use crate::workflow::Workflow;
use chrono::TimeZone;
use serde_json::json;

const DEFINITION: &str = r#"
name = "crm-to-erp"
direction = "bidirectional"
strategy = "manual"
source = "crm"
target = "erp"

[systems.crm]
connector = "sql"
url = "sqlite://crm.db"

[systems.erp]
connector = "sql"
url = "sqlite://erp.db"

[[entities]]
name = "account"
table = "accounts"

[entities.fields]
name = "name"
parent_id = { source = "parent_id", target = "parent_id", references = "account" }

[[entities]]
name = "contact"
table = "contacts"

[entities.fields]
email = "email"
account_id = { source = "account_id", target = "account_id", references = "account" }
"#;

fn t(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 6, 12, minute, 0).unwrap()
}

fn fields(v: serde_json::Value) -> Fields {
    v.as_object().unwrap().clone()
}

fn record(id: &str, v: serde_json::Value, minute: u32) -> Record {
    Record {
        id: id.into(),
        fields: fields(v),
        modified_at: t(minute),
    }
}

/// One entity type's step, with its definition and references.
struct Fixture {
    def: EntityDef,
    refs: References,
    scope: EntityScope,
    tenant: TenantId,
    strategy: Strategy,
    read: Side,
    direction: StepDirection,
    text_ids: bool,
}

impl Fixture {
    fn new(entity: &str) -> Fixture {
        let wf = Workflow::parse("t.toml", DEFINITION).expect("the definition parses");
        let def = wf
            .entities
            .iter()
            .find(|e| e.name.as_str() == entity)
            .unwrap()
            .clone();
        let fields = def
            .fields
            .iter()
            .filter_map(|f| f.references.as_ref().map(|r| (f.cdm.clone(), r.to_string())))
            .collect();
        Fixture {
            refs: References {
                entity: entity.into(),
                fields,
                numeric: HashMap::new(),
            },
            def,
            scope: EntityScope::new("acme", "crm-to-erp", entity),
            tenant: TenantId::from("acme"),
            strategy: Strategy::Manual,
            read: Side::Source,
            direction: StepDirection::Forward,
            text_ids: false,
        }
    }

    fn backward(mut self) -> Fixture {
        self.read = Side::Target;
        self.direction = StepDirection::Backward;
        self
    }

    fn step(&self) -> Step<'_> {
        Step {
            integration: "crm-to-erp",
            tenant: &self.tenant,
            run_id: Uuid::from_u128(1),
            scope: &self.scope,
            direction: self.direction,
            read: self.read,
            def: &self.def,
            refs: &self.refs,
            strategy: self.strategy,
            sync: Direction::Bidirectional,
            write_text_ids: self.text_ids,
        }
    }

    fn decide(&self, page: Page) -> Decision {
        self.decide_keeping(page, &|_, _| None)
    }

    fn decide_keeping(&self, page: Page, keepable: Keepable<'_>) -> Decision {
        let mut n = 100;
        let d = decide_page(&self.step(), page, keepable, &mut || {
            n += 1;
            Uuid::from_u128(n)
        });
        assert_accounted(&d);
        d
    }

    /// A mapping of source `s` and target `t` with `base`.
    fn mapped(&self, s: &str, t_id: &str, base: serde_json::Value) -> IdMapping {
        let mut m = IdMapping::reserve(
            Uuid::from_u128(7),
            self.scope.clone(),
            Some(s.into()),
            None,
            "fwd:key".into(),
            t(0),
        );
        m.apply(
            MappingChange::Confirm {
                source_id: s.into(),
                target_id: t_id.into(),
                base: fields(base),
            },
            t(0),
        )
        .unwrap();
        m
    }
}

/// Every record read has exactly one outcome, or is a create (counted as
/// created, or failed, once it is written).
fn assert_accounted(d: &Decision) {
    let outcomes = d.counters.outcomes() + d.creates.len() as u64;
    assert_eq!(
        d.counters.read,
        outcomes,
        "{:?}, {} creates",
        d.counters,
        d.creates.len()
    );
}

fn page(records: Vec<Record>) -> Page {
    Page {
        records,
        now: t(30),
        ..Page::default()
    }
}

fn by_id(pairs: Vec<(&str, IdMapping)>) -> HashMap<String, IdMapping> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn counterparts(records: Vec<Record>) -> HashMap<String, Record> {
    records.into_iter().map(|r| (r.id.clone(), r)).collect()
}

#[test]
fn a_new_record_is_created_under_a_key_that_is_the_same_every_time() {
    let f = Fixture::new("contact");
    let read = record("c1", json!({"email": "a@x", "account_id": null}), 1);
    let d = f.decide(page(vec![read.clone()]));
    assert_eq!(
        d.counters.created, 0,
        "created is counted once the write succeeds"
    );
    assert_eq!(d.creates.len(), 1);
    let c = &d.creates[0];
    assert!(c.key.starts_with("fwd:"), "{}", c.key);
    assert_eq!(c.key, format!("fwd:{}", c.id));
    assert_eq!(
        c.base, read.fields,
        "the base of a forward create is the source record"
    );
    assert!(
        matches!(&d.reserve[..], [MappingWrite::Insert(m)] if m.status == MappingStatus::Pending
        && m.idempotency_key.as_deref() == Some(c.key.as_str()) && m.source_id.as_deref() == Some("c1"))
    );
    // The same page decided again (a repeat after a crash) creates under the
    // same key; another tenant's record of the same id does not.
    let again = f.decide(page(vec![read.clone()]));
    assert_eq!(again.creates[0].key, c.key);
    let mut other = Fixture::new("contact");
    other.tenant = TenantId::from("globex");
    assert_ne!(other.decide(page(vec![read])).creates[0].key, c.key);
}

#[test]
fn a_text_id_target_gets_its_id_reserved_before_the_create() {
    let mut f = Fixture::new("contact");
    f.text_ids = true;
    let d = f.decide(page(vec![record("c1", json!({"email": "a@x"}), 1)]));
    let id = d.creates[0].id.to_string();
    assert!(
        matches!(&d.reserve[..], [MappingWrite::Insert(m)] if m.target_id.as_deref() == Some(id.as_str()))
    );
}

#[test]
fn a_pending_create_is_repeated_with_the_key_of_its_first_attempt() {
    let f = Fixture::new("contact");
    let key = "fwd:0191e0b6-0000-7000-8000-000000000001".to_owned();
    let pending = IdMapping::reserve(
        Uuid::from_u128(9),
        f.scope.clone(),
        Some("c1".into()),
        None,
        key.clone(),
        t(0),
    );
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", pending)]),
        ..page(vec![record("c1", json!({"email": "a@x"}), 1)])
    });
    assert_eq!(d.creates[0].key, key);
    assert_eq!(d.creates[0].id, Uuid::parse_str(&key[4..]).unwrap());
    assert!(d.reserve.is_empty(), "a pending mapping is already reserved");
}

#[test]
fn the_other_directions_unsettled_create_is_left_to_its_step() {
    let f = Fixture::new("contact");
    let theirs = IdMapping::reserve(
        Uuid::from_u128(9),
        f.scope.clone(),
        Some("c1".into()),
        None,
        "bwd:x".into(),
        t(0),
    );
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", theirs)]),
        ..page(vec![record("c1", json!({"email": "a@x"}), 1)])
    });
    assert_eq!(d.counters.skipped, 1);
    assert!(d.creates.is_empty() && d.reserve.is_empty());
}

#[test]
fn a_reference_to_a_record_not_synced_fails_the_record_with_the_reason() {
    let f = Fixture::new("contact");
    let d = f.decide(page(vec![record(
        "c1",
        json!({"email": "a@x", "account_id": "a9"}),
        1,
    )]));
    assert_eq!(d.counters.failed, 1);
    assert!(d.creates.is_empty());
    let [MappingWrite::Insert(m)] = &d.mappings[..] else {
        panic!("{:?}", d.mappings)
    };
    assert_eq!(m.status, MappingStatus::Failed);
    let error = m.last_error.as_deref().unwrap();
    assert!(
        error.contains("account_id references account `a9`, which has not been synced"),
        "{error}"
    );
}

#[test]
fn a_self_reference_not_created_yet_is_written_empty_and_deferred() {
    let f = Fixture::new("account");
    let d = f.decide(page(vec![record(
        "a2",
        json!({"name": "Child", "parent_id": "a1"}),
        1,
    )]));
    assert_eq!(d.counters.deferred, 1);
    assert_eq!(d.creates[0].fields["parent_id"], Value::Null);
    assert_eq!(
        d.creates[0].base["parent_id"],
        Value::Null,
        "the base says what was written"
    );
}

#[test]
fn references_are_translated_to_the_ids_of_the_side_written() {
    let f = Fixture::new("contact");
    let parent = f.mapped("a1", "71", json!({}));
    let mut read_maps = RefMaps::new();
    read_maps.insert(
        "account".into(),
        by_id(vec![("a1", parent)])
            .into_iter()
            .map(|(k, m)| (k, std::sync::Arc::new(m)))
            .collect(),
    );
    let d = f.decide(Page {
        read_maps,
        ..page(vec![record("c1", json!({"email": "a@x", "account_id": "a1"}), 1)])
    });
    assert_eq!(d.creates[0].fields["account_id"], json!("71"));
    assert_eq!(
        d.creates[0].base["account_id"],
        json!("a1"),
        "bases are in source ids"
    );
}

#[test]
fn a_record_in_step_with_its_counterpart_writes_nothing() {
    let f = Fixture::new("contact");
    let base = json!({"email": "a@x"});
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", f.mapped("c1", "t1", base.clone()))]),
        counterparts: counterparts(vec![record("t1", base.clone(), 0)]),
        ..page(vec![record("c1", base, 0)])
    });
    assert_eq!(d.counters.unchanged, 1);
    assert!(d.updates_target.is_empty() && d.updates_source.is_empty() && d.confirms.is_empty());
}

#[test]
fn a_source_change_updates_the_target_and_confirms_the_new_base() {
    let f = Fixture::new("contact");
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", f.mapped("c1", "t1", json!({"email": "a@x"})))]),
        counterparts: counterparts(vec![record("t1", json!({"email": "a@x"}), 0)]),
        ..page(vec![record("c1", json!({"email": "b@x"}), 5)])
    });
    assert_eq!(d.counters.updated, 1);
    let [u] = &d.updates_target[..] else { panic!() };
    assert_eq!((u.id.as_str(), &u.fields["email"]), ("t1", &json!("b@x")));
    assert_eq!(u.confirm, Some(0));
    let [
        MappingWrite::Transition {
            change: MappingChange::Confirm { base, target_id, .. },
            ..
        },
    ] = &d.confirms[..]
    else {
        panic!("{:?}", d.confirms)
    };
    assert_eq!((target_id.as_str(), &base["email"]), ("t1", &json!("b@x")));
}

#[test]
fn a_target_change_read_backward_updates_the_source() {
    let f = Fixture::new("contact").backward();
    let d = f.decide(Page {
        mappings: by_id(vec![("t1", f.mapped("c1", "t1", json!({"email": "a@x"})))]),
        counterparts: counterparts(vec![record("c1", json!({"email": "a@x"}), 0)]),
        ..page(vec![record("t1", json!({"email": "t@x"}), 5)])
    });
    assert_eq!(d.counters.updated, 1);
    assert_eq!(
        d.updates_source,
        vec![("c1".to_owned(), fields(json!({"email": "t@x"})))]
    );
}

#[test]
fn both_sides_changed_park_a_conflict_under_manual_and_settle_under_source_wins() {
    let mut f = Fixture::new("contact");
    let page_of = |f: &Fixture| Page {
        mappings: by_id(vec![("c1", f.mapped("c1", "t1", json!({"email": "a@x"})))]),
        counterparts: counterparts(vec![record("t1", json!({"email": "t@x"}), 4)]),
        ..page(vec![record("c1", json!({"email": "s@x"}), 5)])
    };
    let d = f.decide(page_of(&f));
    assert_eq!(d.counters.parked, 1);
    let [c] = &d.conflicts[..] else { panic!() };
    assert_eq!(c.status, ConflictStatus::Pending);
    assert_eq!(c.run_id, Some(Uuid::from_u128(1)));
    assert!(
        d.updates_target.is_empty() && d.confirms.is_empty(),
        "nothing written while it waits"
    );

    f.strategy = Strategy::SourceWins;
    let d = f.decide(page_of(&f));
    assert_eq!((d.counters.conflicts, d.counters.updated), (1, 1));
    assert_eq!(d.conflicts[0].status, ConflictStatus::Resolved);
    assert_eq!(d.updates_target[0].fields["email"], json!("s@x"));
}

#[test]
fn a_record_waiting_for_a_reviewer_is_skipped() {
    let f = Fixture::new("contact");
    let d = f.decide(Page {
        open: HashSet::from(["c1".to_owned()]),
        ..page(vec![
            record("c1", json!({"email": "s@x"}), 5),
            record("c2", json!({"email": "n@x"}), 5),
        ])
    });
    assert_eq!(d.counters.skipped, 1);
    assert_eq!(d.creates.len(), 1);
    assert_eq!(d.creates[0].record.id, "c2");
}

#[test]
fn a_counterpart_gone_is_a_candidate_for_the_delete_step() {
    let f = Fixture::new("contact");
    let m = f.mapped("c1", "t1", json!({"email": "a@x"}));
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", m.clone())]),
        ..page(vec![record("c1", json!({"email": "b@x"}), 5)])
    });
    assert_eq!(d.counters.skipped, 1);
    assert_eq!(d.candidates, vec![f.step().candidate(m.id, Gone::Target)]);
}

#[test]
fn an_unreadable_counterpart_fails_the_record_not_deletes_it() {
    let f = Fixture::new("contact");
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", f.mapped("c1", "t1", json!({"email": "a@x"})))]),
        unreadable: HashMap::from([("t1".to_owned(), "invalid UTF-8 in `email`".to_owned())]),
        ..page(vec![record("c1", json!({"email": "b@x"}), 5)])
    });
    assert_eq!(d.counters.failed, 1);
    assert!(d.candidates.is_empty());
    assert!(
        matches!(&d.mappings[..], [MappingWrite::Transition { change: MappingChange::Refuse { error }, .. }]
        if error.contains("invalid UTF-8"))
    );
}

#[test]
fn rows_that_cannot_be_read_fail_alone() {
    let f = Fixture::new("contact");
    let d = f.decide(Page {
        bad: vec![BadRow {
            id: "c3".into(),
            reason: "invalid UTF-8 in `email`".into(),
        }],
        ..page(vec![record("c1", json!({"email": "a@x"}), 1)])
    });
    assert_eq!((d.counters.failed, d.creates.len()), (1, 1));
    assert!(matches!(&d.mappings[..], [MappingWrite::Insert(m)]
        if m.status == MappingStatus::Failed && m.source_id.as_deref() == Some("c3")));
}

#[test]
fn a_mapped_row_marked_deleted_is_a_candidate() {
    let f = Fixture::new("contact");
    let m = f.mapped("c1", "t1", json!({}));
    let d = f.decide(Page {
        deleted: vec!["c1".into(), "c2".into()],
        deleted_mappings: by_id(vec![("c1", m.clone())]),
        ..page(vec![])
    });
    assert_eq!((d.counters.read, d.counters.skipped), (2, 2));
    assert_eq!(d.candidates, vec![f.step().candidate(m.id, Gone::Source)]);
}

/// A mapping gone stale on `gone`'s side.
fn stale(f: &Fixture, gone: Gone) -> IdMapping {
    let mut m = f.mapped("c1", "t1", json!({"email": "a@x"}));
    m.apply(
        MappingChange::MarkStale {
            reason: gone.reason("kept"),
        },
        t(1),
    )
    .unwrap();
    m
}

#[test]
fn a_restored_source_whose_target_was_kept_is_relinked() {
    let f = Fixture::new("contact");
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", stale(&f, Gone::Source))]),
        counterparts: counterparts(vec![record("t1", json!({"email": "a@x"}), 0)]),
        ..page(vec![record("c1", json!({"email": "a@x"}), 5)])
    });
    assert!(d.creates.is_empty());
    assert_eq!(d.confirms.len(), 1, "the link is confirmed again");
}

#[test]
fn a_source_edited_after_its_target_was_deleted_is_recreated_only_under_recreate() {
    let mut f = Fixture::new("contact");
    let page_of = |f: &Fixture| Page {
        mappings: by_id(vec![("c1", stale(f, Gone::Target))]),
        ..page(vec![record("c1", json!({"email": "b@x"}), 5)])
    };
    let d = f.decide(page_of(&f));
    assert_eq!(d.counters.skipped, 1);
    assert!(d.creates.is_empty());

    f.def.deletes.on_target_delete = OnTargetDelete::Recreate;
    let d = f.decide(page_of(&f));
    let m = stale(&f, Gone::Target);
    assert_eq!(
        d.creates[0].key,
        f.step().recreate_key(&m).0,
        "a new id, not the deleted one's"
    );
    assert_ne!(d.creates[0].key, f.step().create_key("c1").0);
    assert!(matches!(
        &d.reserve[..],
        [MappingWrite::Transition {
            change: MappingChange::Reserve { .. },
            ..
        }]
    ));
}

#[test]
fn a_target_referencing_a_record_not_synced_waits_for_the_patch_pass_then_fails() {
    let f = Fixture::new("contact");
    let page_of = |last_pass| Page {
        mappings: by_id(vec![(
            "c1",
            f.mapped("c1", "t1", json!({"email": "a@x", "account_id": null})),
        )]),
        counterparts: counterparts(vec![record("t1", json!({"email": "a@x", "account_id": "77"}), 0)]),
        last_pass,
        ..page(vec![record("c1", json!({"email": "b@x", "account_id": null}), 5)])
    };
    let d = f.decide(page_of(false));
    assert_eq!(d.counters.postponed, 1);
    assert!(d.mappings.is_empty());
    let d = f.decide(page_of(true));
    assert_eq!(d.counters.failed, 1);
    assert!(
        matches!(&d.mappings[..], [MappingWrite::Transition { change: MappingChange::Refuse { error }, .. }]
        if error.contains("cannot be compared") && error.contains("account `77`"))
    );
}

#[test]
fn what_the_store_cannot_keep_fails_its_record_before_anything_is_written() {
    let f = Fixture::new("contact");
    let refuse_big = |what: &dyn Fn() -> String, fields: &Fields| {
        (fields
            .get("email")
            .and_then(Value::as_str)
            .is_some_and(|e| e.len() > 10))
        .then(|| format!("{} is too large", what()))
    };
    let d = f.decide_keeping(
        Page {
            mappings: by_id(vec![("c1", f.mapped("c1", "t1", json!({"email": "a@x"})))]),
            counterparts: counterparts(vec![record("t1", json!({"email": "a@x"}), 0)]),
            ..page(vec![
                record("c1", json!({"email": "a-very-long@x"}), 5),
                record("c2", json!({"email": "another-long@x"}), 5),
            ])
        },
        &refuse_big,
    );
    assert_eq!(d.counters.failed, 2);
    assert!(d.updates_target.is_empty() && d.creates.is_empty() && d.confirms.is_empty());
    let errors: Vec<String> = d
        .mappings
        .iter()
        .map(|w| match w {
            MappingWrite::Insert(m) => m.last_error.clone().unwrap(),
            MappingWrite::Transition {
                change: MappingChange::Refuse { error },
                ..
            } => error.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        [
            "the base snapshot of contact `c1` is too large",
            "the base snapshot of contact `c2` is too large"
        ]
    );
}

mod against_the_oracle {
    //! Random pages against the convergence oracle (the pure conflict
    //! engine on each pair of records): whatever the mix of new, mapped,
    //! gone, waiting and bad records, the page decides each mapped record
    //! as `conflict::resolve` does, creates each new one with its source
    //! as base, accounts for every record once, and decides the same page
    //! the same way twice.

    use super::*;
    use crate::conflict::Strategy as Resolve;
    use proptest::prelude::{Just, Strategy, prop_assert, prop_assert_eq, prop_oneof, proptest};

    /// One record of a generated page.
    #[derive(Clone, Debug)]
    enum Case {
        New,
        /// A mapped record: the base, the source's and the target's values.
        Mapped {
            base: u8,
            source: u8,
            target: u8,
        },
        /// Mapped, its counterpart gone.
        Gone,
        /// Waiting for a reviewer.
        Waiting,
    }

    fn case() -> impl Strategy<Value = Case> {
        prop_oneof![
            Just(Case::New),
            (0u8..3, 0u8..3, 0u8..3).prop_map(|(base, source, target)| Case::Mapped { base, source, target }),
            Just(Case::Gone),
            Just(Case::Waiting),
        ]
    }

    fn strategy() -> impl Strategy<Value = Resolve> {
        proptest::sample::select(Resolve::ALL.to_vec())
    }

    fn value(v: u8) -> serde_json::Value {
        json!({"email": format!("v{v}@x")})
    }

    proptest! {
        #[test]
        fn a_page_decides_every_record_as_the_oracle_does(
            cases in proptest::collection::vec(case(), 0..25),
            strategy in strategy(),
            bad in 0usize..3,
        ) {
            let mut f = Fixture::new("contact");
            f.strategy = strategy;
            let mut page = page(Vec::new());
            for (i, case) in cases.iter().enumerate() {
                let (s, t_id) = (format!("c{i}"), format!("t{i}"));
                match *case {
                    Case::New => page.records.push(record(&s, value(0), 9)),
                    Case::Mapped { base, source, target } => {
                        page.records.push(record(&s, value(source), 9));
                        page.mappings.insert(s.clone(), f.mapped(&s, &t_id, value(base)));
                        page.counterparts.insert(t_id.clone(), record(&t_id, value(target), 8));
                    }
                    Case::Gone => {
                        page.records.push(record(&s, value(1), 9));
                        page.mappings.insert(s.clone(), f.mapped(&s, &t_id, value(0)));
                    }
                    Case::Waiting => {
                        page.records.push(record(&s, value(1), 9));
                        page.open.insert(s);
                    }
                }
            }
            for i in 0..bad {
                page.bad.push(BadRow { id: format!("b{i}"), reason: "unreadable".into() });
            }
            let d = f.decide(page.clone());
            prop_assert_eq!(&f.decide(page.clone()), &d, "the same page decides the same way");

            let mut expected = StepCounters { read: (cases.len() + bad) as u64, failed: bad as u64, ..Default::default() };
            for (i, case) in cases.iter().enumerate() {
                let (s, t_id) = (format!("c{i}"), format!("t{i}"));
                let updated_target = d.updates_target.iter().find(|u| u.id == t_id);
                let confirmed = d.confirms.iter().find_map(|w| match w {
                    MappingWrite::Transition { current, change: MappingChange::Confirm { base, .. } }
                        if current.source_id.as_deref() == Some(s.as_str()) => Some(base),
                    _ => None,
                });
                let created = d.creates.iter().find(|c| c.record.id == s);
                match *case {
                    Case::New => {
                        let c = created.expect("a new record is created");
                        prop_assert_eq!(&c.base, &fields(value(0)));
                    }
                    Case::Gone => {
                        expected.skipped += 1;
                        let m = &page.mappings[&s];
                        prop_assert!(d.candidates.contains(&f.step().candidate(m.id, Gone::Target)));
                    }
                    Case::Waiting => expected.skipped += 1,
                    Case::Mapped { .. } => {
                        let m = &page.mappings[&s];
                        let source = &page.records[i];
                        let target = &page.counterparts[&t_id];
                        let oracle = conflict::resolve(
                            m.base.as_ref(), source, target, Direction::Bidirectional, strategy, &f.def.merge,
                        );
                        let parked = d.conflicts.iter().any(|c| c.source_record.id == s && c.status == ConflictStatus::Pending);
                        match oracle.outcome {
                            Outcome::Park => {
                                expected.parked += 1;
                                prop_assert!(parked);
                                prop_assert!(updated_target.is_none() && confirmed.is_none());
                            }
                            Outcome::Write(w) => {
                                prop_assert!(!parked);
                                if oracle.strategy_applied.is_some() {
                                    expected.conflicts += 1;
                                }
                                if w.is_noop() && m.base.as_ref() == Some(&w.base) {
                                    expected.unchanged += 1;
                                    prop_assert!(confirmed.is_none());
                                    continue;
                                }
                                if w.is_noop() { expected.unchanged += 1 } else { expected.updated += 1 }
                                prop_assert_eq!(confirmed, Some(&w.base));
                                match updated_target {
                                    Some(u) => {
                                        let mut want = target.fields.clone();
                                        want.extend(w.to_target.clone());
                                        prop_assert_eq!(&u.fields, &want);
                                    }
                                    None => prop_assert!(w.to_target.is_empty()),
                                }
                                let to_source = d.updates_source.iter().find(|(id, _)| *id == s);
                                prop_assert_eq!(to_source.is_some(), !w.to_source.is_empty());
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(d.counters, expected);
        }
    }
}

/// A conflict parked under `manual` over `email`, as `decide_page` parks it.
fn parked(f: &Fixture) -> (ConflictRecord, IdMapping) {
    let m = f.mapped("c1", "t1", json!({"email": "a@x", "account_id": null}));
    let d = f.decide(Page {
        mappings: by_id(vec![("c1", m.clone())]),
        counterparts: counterparts(vec![record("t1", json!({"email": "t@x", "account_id": null}), 4)]),
        ..page(vec![record("c1", json!({"email": "s@x", "account_id": null}), 5)])
    });
    (d.conflicts[0].clone(), m)
}

#[test]
fn a_reviewers_decision_is_written_to_both_sides_with_the_new_base() {
    let f = Fixture::new("contact");
    let (mut c, m) = parked(&f);
    c.resolution = Some(fields(json!({"email": "r@x"})));
    let source = record("c1", json!({"email": "s@x", "account_id": null}), 5);
    let target = record("t1", json!({"email": "t@x", "account_id": null}), 4);
    let review = decide_review(
        &c,
        m,
        &source,
        &target,
        &target,
        &f.refs,
        Direction::Bidirectional,
        &mut Uuid::new_v4,
        t(40),
    );
    let Review::Apply {
        to_target,
        to_source,
        confirm,
    } = review
    else {
        panic!("{review:?}")
    };
    assert_eq!(to_target.unwrap().fields["email"], json!("r@x"));
    assert_eq!(
        to_source.unwrap(),
        (
            "c1".to_owned(),
            fields(json!({"email": "r@x", "account_id": null}))
        )
    );
    let MappingWrite::Transition {
        change: MappingChange::Confirm { base, .. },
        ..
    } = confirm
    else {
        panic!()
    };
    assert_eq!(base["email"], json!("r@x"));
}

#[test]
fn a_record_changed_since_review_in_an_undecided_field_is_parked_again() {
    let f = Fixture::new("contact");
    let (mut c, m) = parked(&f);
    c.resolution = Some(fields(json!({"email": "r@x"})));
    // Both sides changed `account_id` since, differently.
    let source = record("c1", json!({"email": "s@x", "account_id": "a1"}), 6);
    let target = record("t1", json!({"email": "t@x", "account_id": "a2"}), 6);
    let review = decide_review(
        &c,
        m,
        &source,
        &target,
        &target,
        &f.refs,
        Direction::Bidirectional,
        &mut || Uuid::from_u128(5),
        t(40),
    );
    let Review::Repark(again) = review else {
        panic!("{review:?}")
    };
    assert_eq!(again.id, Uuid::from_u128(5));
    assert_eq!(again.status, ConflictStatus::Pending);
    assert!(
        again.conflicting_fields.contains(&"account_id".to_owned()),
        "{:?}",
        again.conflicting_fields
    );
    assert_eq!(again.source_record.fields["account_id"], json!("a1"));
    assert_eq!(again.resolution, None);
}

/// The reviewer took the source's `s@x`; the source then changed it again
/// (or the target did): applying the decision would write a value one side
/// no longer holds over its later edit, so it goes back to the reviewer.
#[test]
fn a_decided_field_changed_since_it_was_parked_goes_back_to_the_reviewer() {
    let f = Fixture::new("contact");
    for (source_email, target_email) in [("later@x", "t@x"), ("s@x", "later@x")] {
        let (mut c, m) = parked(&f);
        c.resolution = Some(fields(json!({"email": "s@x"})));
        let source = record("c1", json!({"email": source_email, "account_id": null}), 6);
        let target = record("t1", json!({"email": target_email, "account_id": null}), 6);
        let review = decide_review(
            &c,
            m,
            &source,
            &target,
            &target,
            &f.refs,
            Direction::Bidirectional,
            &mut || Uuid::from_u128(7),
            t(40),
        );
        let Review::Repark(again) = review else {
            panic!("{source_email} {target_email}: {review:?}")
        };
        assert_eq!(again.conflicting_fields, ["email"]);
        assert_eq!(again.source_record.fields["email"], json!(source_email));
        assert_eq!(again.target_record.fields["email"], json!(target_email));
        assert_eq!(again.resolution, None);
    }
    // Unchanged since: applied.
    let (mut c, m) = parked(&f);
    c.resolution = Some(fields(json!({"email": "s@x"})));
    let source = record("c1", json!({"email": "s@x", "account_id": null}), 5);
    let target = record("t1", json!({"email": "t@x", "account_id": null}), 4);
    let review = decide_review(
        &c,
        m,
        &source,
        &target,
        &target,
        &f.refs,
        Direction::Bidirectional,
        &mut Uuid::new_v4,
        t(40),
    );
    assert!(matches!(review, Review::Apply { .. }), "{review:?}");
}

/// Both sides changed the decided field since, to the same value: those
/// edits settled it, and the rest of the decision applies.
#[test]
fn a_decided_field_both_sides_now_hold_alike_is_left_as_they_hold_it() {
    let f = Fixture::new("contact");
    let (mut c, m) = parked(&f);
    c.resolution = Some(fields(json!({"email": "s@x"})));
    let source = record("c1", json!({"email": "same@x", "account_id": null}), 6);
    let target = record("t1", json!({"email": "same@x", "account_id": null}), 6);
    let review = decide_review(
        &c,
        m,
        &source,
        &target,
        &target,
        &f.refs,
        Direction::Bidirectional,
        &mut Uuid::new_v4,
        t(40),
    );
    let Review::Apply {
        to_target,
        to_source,
        confirm,
    } = review
    else {
        panic!("{review:?}")
    };
    assert!(to_target.is_none() && to_source.is_none(), "nothing to write");
    let MappingWrite::Transition {
        change: MappingChange::Confirm { base, .. },
        ..
    } = confirm
    else {
        panic!()
    };
    assert_eq!(base["email"], json!("same@x"));
}
