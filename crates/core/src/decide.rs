//! What a page of records means for the other side, decided without I/O.
//!
//! A sync step reads a page of records from one side. The executor gathers
//! what deciding them needs (their mappings, open conflicts, the other
//! side's current records, the translations of their references) into a
//! [`Page`], calls [`decide_page`], and performs the [`Decision`]: the
//! creates with their keys, the updates of each side, the conflicts, the
//! mapping changes and the delete candidates, with the page's counters.
//! Everything here is a function of its inputs, `now` and the ids it is
//! given: the same page decides the same way, with or without a database.

use crate::conflict::{self, ConflictRecord, ConflictStatus, Outcome, Strategy};
use crate::deletes::{DeleteCandidate, Gone, OnTargetDelete};
use crate::ids::{EntityScope, TenantId};
use crate::mapping::{IdMapping, MappingChange, MappingStatus, MappingWrite};
use crate::record::{BadRow, Direction, Fields, Record, Side};
use crate::references::{RefMaps, References, Rewritten, id_on};
use crate::run::{StepCounters, StepDirection};
use crate::workflow::EntityDef;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// The namespace of the deterministic ids of created records.
pub const CREATE_NAMESPACE: Uuid = Uuid::from_u128(0x7b6f_59c1_2d1e_4a8e_9a3f_5e0c_8d21_b4a7);

/// The prefix of the idempotency keys of a step's creates: it tells which
/// direction's step owns a pending create.
pub fn key_prefix(direction: StepDirection) -> &'static str {
    match direction {
        StepDirection::Forward => "fwd:",
        StepDirection::Backward => "bwd:",
        StepDirection::Delete => "del:",
    }
}

/// What a store cannot keep of a record (too large, a NUL character), as
/// the reason its record fails; `what` names the record in that reason.
pub type Keepable<'a> = &'a (dyn Fn(&dyn Fn() -> String, &Fields) -> Option<String> + Sync);

/// A sync step, as far as its pages' decisions go.
pub struct Step<'a> {
    pub integration: &'a str,
    pub tenant: &'a TenantId,
    pub run_id: Uuid,
    pub scope: &'a EntityScope,
    pub direction: StepDirection,
    /// The side the step reads changes from.
    pub read: Side,
    pub def: &'a EntityDef,
    pub refs: &'a References,
    pub strategy: Strategy,
    /// Which way the integration syncs.
    pub sync: Direction,
    /// Whether the side written creates records under an id syncd gives
    /// (text ids), so that it can be reserved before the create.
    pub write_text_ids: bool,
}

/// One page, with everything its decision reads.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub records: Vec<Record>,
    /// Rows that could not be read as records.
    pub bad: Vec<BadRow>,
    /// Ids of rows marked deleted.
    pub deleted: Vec<String>,
    /// The mappings of the deleted rows, by their id on the side read.
    pub deleted_mappings: HashMap<String, IdMapping>,
    /// Ids of records with a conflict waiting for a reviewer.
    pub open: HashSet<String>,
    /// The mappings of the records and bad rows, by id on the side read.
    pub mappings: HashMap<String, IdMapping>,
    /// Translations of the records' references, from the side read.
    pub read_maps: RefMaps,
    /// Translations of the target records' references (the page's own when
    /// the step reads the target, the counterparts' otherwise).
    pub target_maps: RefMaps,
    /// The current records on the side written, by id.
    pub counterparts: HashMap<String, Record>,
    /// Ids on the side written that a create of this page would take
    /// ([`Step::create_key`]) but that the ID map gives another record
    /// already, with that mapping's id: a record deleted, and its id later
    /// reused on the side read for a new one. Created under that id, the
    /// new record would be written over the other's.
    pub held: HashMap<String, Uuid>,
    /// Records on the side written that exist but cannot be read, with why.
    pub unreadable: HashMap<String, String>,
    /// The step's last pass: a record still waiting for a reference fails
    /// with the reason instead of waiting on.
    pub last_pass: bool,
    /// The step's patch pass: a self-reference this step writes that is
    /// still not mapped will not be in this run (its parent would have been
    /// created by this step's scan), so its record fails instead of being
    /// written without it again.
    pub patching: bool,
    pub now: DateTime<Utc>,
}

/// A record to create in the side a step writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Create {
    pub record: Record,
    /// Its fields with references in the write side's ids.
    pub fields: Fields,
    /// The base to record once created, in source ids.
    pub base: Fields,
    /// The existing pending, failed or stale mapping, if any.
    pub mapping: Option<IdMapping>,
    pub key: String,
    /// The id a text-id record is created under (derived from `key`).
    pub id: Uuid,
}

/// An update bound for the target, before its references are translated.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetUpdate {
    pub id: String,
    /// The new fields, references in source ids.
    pub fields: Fields,
    /// The target's current fields, in its own ids.
    pub current: Fields,
    /// The same, references in source ids.
    pub current_in_source_ids: Fields,
    /// The page's confirm transition of this record (an index into
    /// [`Decision::confirms`]), whose base follows what is really written.
    pub confirm: Option<usize>,
}

/// What a page decided, to be performed by the executor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub counters: StepCounters,
    /// Mapping changes the page's final transaction commits (failures,
    /// refusals).
    pub mappings: Vec<MappingWrite>,
    pub conflicts: Vec<ConflictRecord>,
    /// Mappings found gone on one side, for the delete step.
    pub candidates: Vec<DeleteCandidate>,
    /// Pending mappings to reserve before any create.
    pub reserve: Vec<MappingWrite>,
    pub creates: Vec<Create>,
    /// (source id, fields) of the updates of the source.
    pub updates_source: Vec<(String, Fields)>,
    pub updates_target: Vec<TargetUpdate>,
    /// Confirm transitions of the updated and unchanged records.
    pub confirms: Vec<MappingWrite>,
    /// Decided in the step's patch pass (see [`Page::patching`]): an
    /// update whose self-reference is still not mapped fails its record.
    pub patching: bool,
}

impl Step<'_> {
    /// The side the step writes.
    pub fn write(&self) -> Side {
        self.read.other()
    }

    /// The key and id of creating the record read as `read_id`: the same
    /// for every attempt, so that a repeat after a crash is recognised.
    /// Derived from the record, not only kept in its reservation: a state
    /// store restored from a backup (or failed over to a replica that
    /// lacks the last commits) has lost the mappings and reservations of
    /// what was created since, and a text id that is the same on the next
    /// attempt turns those creates into upserts instead of duplicates.
    /// (Time-ordered ids would make a first load's index inserts cheaper;
    /// `BENCHMARKS.md` has what they gave and why they are not used.)
    pub fn create_key(&self, read_id: &str) -> (String, Uuid) {
        self.key_named(&self.create_name(read_id))
    }

    /// What a create's id is derived from: the integration, tenant, entity
    /// type and direction, and the id read.
    fn create_name(&self, read_id: &str) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{read_id}",
            self.integration,
            self.tenant,
            self.scope.entity_type,
            self.direction.as_str()
        )
    }

    /// The key and id derived from `name`: the id a UUIDv5 of it, the key
    /// that id behind the direction's prefix.
    fn key_named(&self, name: &str) -> (String, Uuid) {
        let id = Uuid::new_v5(&CREATE_NAMESPACE, name.as_bytes());
        (format!("{}{id}", key_prefix(self.direction)), id)
    }

    /// The key and id of creating the record read as `read_id` when the id
    /// [`Self::create_key`] derives is held by another record, mapped by
    /// `other` (an earlier record of that id, deleted since, was created
    /// under it): derived from both, so a repeat finds the same one.
    pub fn create_key_past(&self, read_id: &str, other: Uuid) -> (String, Uuid) {
        self.key_named(&format!("{}\u{1f}past\u{1f}{other}", self.create_name(read_id)))
    }

    /// The key and id of creating `stale`'s record anew: derived from the
    /// mapping and its version, so the new record gets a new id and a repeat
    /// after a crash (the key is kept in the pending mapping) the same one.
    pub fn recreate_key(&self, stale: &IdMapping) -> (String, Uuid) {
        self.key_named(&format!("recreate\u{1f}{}\u{1f}{}", stale.id, stale.version))
    }

    /// A mapping found gone on `gone`'s side, for the delete step.
    pub fn candidate(&self, mapping_id: Uuid, gone: Gone) -> DeleteCandidate {
        DeleteCandidate {
            run_id: self.run_id,
            tenant_id: self.tenant.clone(),
            entity_type: self.scope.entity_type.clone(),
            mapping_id,
            gone,
        }
    }

    /// A pending mapping for the record read as `read_id`.
    pub fn new_mapping(&self, id: Uuid, read_id: &str, key: String, now: DateTime<Utc>) -> IdMapping {
        let (source_id, target_id) = match self.read {
            Side::Source => (Some(read_id.to_owned()), None),
            Side::Target => (None, Some(read_id.to_owned())),
        };
        IdMapping::reserve(id, self.scope.clone(), source_id, target_id, key, now)
    }

    /// A new mapping that failed at once, with `error`.
    fn failed_mapping(
        &self,
        id: Uuid,
        read_id: &str,
        key: String,
        error: String,
        now: DateTime<Utc>,
    ) -> IdMapping {
        let mut m = self.new_mapping(id, read_id, key, now);
        m.apply(MappingChange::Fail { error }, now)
            .expect("pending -> failed");
        m
    }
}

/// The ids on the side written of the records of `records` whose mapping
/// links them to a record there: the counterparts a page reads.
pub fn counterpart_ids<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    mappings: &HashMap<String, IdMapping>,
    write: Side,
) -> Vec<String> {
    records
        .into_iter()
        .filter_map(|r| mappings.get(&r.id))
        .filter(|m| m.status == MappingStatus::Mapped || m.status == MappingStatus::Stale)
        .filter_map(|m| id_on(m, write).map(str::to_owned))
        .collect()
}

/// Why a record whose self-reference `field` (holding `id`, on the side
/// read) is still not mapped in the step's patch pass fails.
pub fn unsynced_parent(field: &str, entity: &str, id: Option<&Value>) -> String {
    let id = id.and_then(crate::references::id_text).unwrap_or_default();
    format!("missing parent: {field} references {entity} `{id}`, which has not been synced")
}

/// Decides a page of a sync step: see the [module](self) documentation.
/// `keepable` says what the state store cannot keep; `new_id` gives the ids
/// of new mappings and conflict records.
pub fn decide_page(
    step: &Step<'_>,
    page: Page,
    keepable: Keepable<'_>,
    new_id: &mut dyn FnMut() -> Uuid,
) -> Decision {
    let Page {
        records,
        bad,
        deleted,
        deleted_mappings,
        open,
        mut mappings,
        read_maps,
        target_maps,
        counterparts,
        held,
        unreadable,
        last_pass,
        patching,
        now,
    } = page;
    let read = step.read;
    let write = step.write();
    let refs = step.refs;
    let mut d = Decision {
        patching,
        ..Decision::default()
    };
    let counters = &mut d.counters;
    counters.read += (records.len() + bad.len() + deleted.len()) as u64;
    // Sized for the page up front: these hold whole records, and growing
    // them copies each into fresh memory.
    d.reserve.reserve(records.len());
    d.confirms.reserve(records.len());

    // Rows marked deleted: a mapped one is a deletion for the run's delete
    // step to act on (after the brake has counted them all).
    counters.skipped += deleted.len() as u64;
    d.candidates.extend(
        deleted
            .iter()
            .filter_map(|id| deleted_mappings.get(id))
            .filter(|m| m.status == MappingStatus::Mapped)
            .map(|m| step.candidate(m.id, Gone::on(read))),
    );

    // Records with an open conflict wait for their reviewer.
    let before = records.len();
    let records: Vec<Record> = records.into_iter().filter(|r| !open.contains(&r.id)).collect();
    counters.skipped += (before - records.len()) as u64;

    // Rows that cannot be read fail alone.
    for b in bad {
        counters.failed += 1;
        match mappings.remove(&b.id) {
            None if !b.id.is_empty() => {
                let key = step.create_key(&b.id).0;
                d.mappings.push(MappingWrite::Insert(step.failed_mapping(
                    new_id(),
                    &b.id,
                    key,
                    b.reason,
                    now,
                )));
            }
            Some(m) if m.status == MappingStatus::Pending => d.mappings.push(MappingWrite::Transition {
                current: m,
                change: MappingChange::Fail { error: b.reason },
            }),
            // A synced record that can no longer be read keeps its mapping
            // and base; `last_error` says why it was not synced.
            Some(m) if m.status == MappingStatus::Mapped => d.mappings.push(MappingWrite::Transition {
                current: m,
                change: MappingChange::Refuse { error: b.reason },
            }),
            _ => {}
        }
    }

    // A target record in source ids, or `None` when one of its references
    // points at a record not synced (yet): comparing it then would read
    // that reference as empty.
    let source_space = |r: &Record| -> Option<Record> {
        let rewritten = refs.rewrite(&target_maps, Side::Target, &r.fields);
        (rewritten.deferred.is_empty() && rewritten.missing.is_empty()).then(|| Record {
            fields: rewritten.fields,
            ..r.clone()
        })
    };
    let entity = &step.scope.entity_type;
    let policy = &step.def.deletes;
    for record in records {
        let mapping = mappings.remove(&record.id);
        // A stale mapping whose record shows up in the scan. When both
        // records exist again (a source deleted and restored, its target
        // kept or archived; a target restored by hand), they are re-linked.
        // A record back after both were deleted (the one gone first, or the
        // one syncd deleted after it), or a source whose target went under
        // `recreate`, is created anew on the other side. Otherwise
        // (`unlink`, the kept or archived target of a deleted source
        // edited) the mapping stays stale and nothing is written.
        let mut relink = false;
        if let Some(m) = mapping.as_ref().filter(|m| m.status == MappingStatus::Stale) {
            // (A counterpart that cannot be read exists: it fails below.)
            let counterpart = id_on(m, write)
                .is_some_and(|id| counterparts.contains_key(id) || unreadable.contains_key(id));
            let gone = Gone::of(m).unwrap_or(Gone::Target);
            let both = Gone::both_deleted(m);
            let recreate = match (read, gone) {
                (Side::Source, Gone::Source) => !counterpart,
                (Side::Source, Gone::Target) => {
                    policy.on_target_delete == OnTargetDelete::Recreate || (!counterpart && both)
                }
                // A target record back (restored, undeleted, or its id
                // inserted again) after both were deleted: created anew in
                // the source, as a source record back is in the target.
                (Side::Target, _) => !counterpart && both,
            };
            if counterpart {
                relink = true;
            } else if !recreate {
                counters.skipped += 1;
                continue;
            }
        }
        match mapping {
            Some(m) if m.status == MappingStatus::Mapped || relink => {
                // Refuses the record's change, keeping its mapping and base.
                let refuse = |d: &mut Vec<MappingWrite>, m: IdMapping, error: String| {
                    if m.status == MappingStatus::Mapped {
                        d.push(MappingWrite::Transition {
                            change: MappingChange::Refuse { error },
                            current: m,
                        });
                    }
                };
                if let Some(why) = id_on(&m, write).and_then(|id| unreadable.get(id)) {
                    counters.failed += 1;
                    refuse(&mut d.mappings, m, why.clone());
                    continue;
                }
                let Some(other) = id_on(&m, write).and_then(|id| counterparts.get(id)) else {
                    // Gone from the other side: the delete step acts on it
                    // by the entity's policy, after the brake.
                    d.candidates.push(step.candidate(m.id, Gone::on(write)));
                    counters.skipped += 1;
                    continue;
                };
                let translated = match read {
                    Side::Source => source_space(other).map(|t| (record.clone(), t)),
                    Side::Target => source_space(&record).map(|t| (other.clone(), t)),
                };
                let Some((source, target)) = translated else {
                    if !last_pass {
                        // Left for the patch pass, once the referenced
                        // record is mapped.
                        counters.postponed += 1;
                        continue;
                    }
                    // Still not: the record waits no more, and says why.
                    let held = match read {
                        Side::Source => &other.fields,
                        Side::Target => &record.fields,
                    };
                    let rewritten = refs.rewrite(&target_maps, Side::Target, held);
                    let why = rewritten
                        .missing
                        .into_iter()
                        .map(|(_, why)| why)
                        .chain(
                            rewritten
                                .deferred
                                .iter()
                                .map(|f| format!("missing parent: {f} references a record not synced yet")),
                        )
                        .next()
                        .unwrap_or_default();
                    counters.failed += 1;
                    refuse(
                        &mut d.mappings,
                        m,
                        format!("the target record cannot be compared: {why}"),
                    );
                    continue;
                };
                let (source, target) = (refs.record_ids_as_text(source), refs.record_ids_as_text(target));
                let base_as_text = m.base.as_ref().and_then(|b| refs.ids_as_text(b));
                let base = base_as_text.as_ref().or(m.base.as_ref());
                let resolution =
                    conflict::resolve(base, &source, &target, step.sync, step.strategy, &step.def.merge);
                let conflict_id = match resolution.strategy_applied {
                    Some(_) => new_id(),
                    None => Uuid::nil(),
                };
                let conflict = ConflictRecord::from_resolution(
                    conflict_id,
                    step.scope.clone(),
                    base,
                    &source,
                    &target,
                    &resolution,
                    now,
                );
                // What the store cannot keep (a base or conflict too large,
                // a NUL in PostgreSQL) fails the record alone, before
                // anything is written.
                let kept = |what: &str, fields: &Fields| {
                    keepable(&|| format!("{what} of {entity} `{}`", record.id), fields)
                };
                let unkeepable = match &conflict {
                    Some(c) => kept("the source record", &c.source_record.fields)
                        .or_else(|| kept("the target record", &c.target_record.fields)),
                    None => None,
                }
                .or_else(|| match &resolution.outcome {
                    Outcome::Write(w) => kept("the base snapshot", &w.base),
                    _ => None,
                });
                if let Some(error) = unkeepable {
                    counters.failed += 1;
                    refuse(&mut d.mappings, m, error);
                    continue;
                }
                if let Some(mut c) = conflict {
                    c.run_id = Some(step.run_id);
                    match c.status {
                        ConflictStatus::Pending => counters.parked += 1,
                        ConflictStatus::Resolved => counters.conflicts += 1,
                    }
                    d.conflicts.push(c);
                }
                let Outcome::Write(writes) = resolution.outcome else {
                    continue;
                };

                // A mapping that keeps an error (an update refused, a parent
                // missing) is confirmed once the two agree, which clears it.
                if writes.is_noop() && base == Some(&writes.base) && !relink && m.last_error.is_none() {
                    counters.unchanged += 1;
                    continue;
                }
                if !writes.to_target.is_empty() {
                    let mut fields = target.fields.clone();
                    fields.extend(writes.to_target.clone());
                    let current = match read {
                        Side::Source => other.fields.clone(),
                        Side::Target => record.fields.clone(),
                    };
                    d.updates_target.push(TargetUpdate {
                        id: id_on(&m, Side::Target).unwrap_or_default().to_owned(),
                        fields,
                        current,
                        current_in_source_ids: target.fields.clone(),
                        confirm: Some(d.confirms.len()),
                    });
                }
                if !writes.to_source.is_empty() {
                    let mut fields = source.fields.clone();
                    fields.extend(writes.to_source.clone());
                    let current = match read {
                        Side::Source => &record.fields,
                        Side::Target => &other.fields,
                    };
                    refs.ids_typed_for(Side::Source, &mut fields, current);
                    d.updates_source
                        .push((id_on(&m, Side::Source).unwrap_or_default().to_owned(), fields));
                }
                if writes.is_noop() {
                    counters.unchanged += 1;
                } else {
                    counters.updated += 1;
                }
                d.confirms.push(MappingWrite::Transition {
                    change: MappingChange::Confirm {
                        source_id: id_on(&m, Side::Source).unwrap_or_default().to_owned(),
                        target_id: id_on(&m, Side::Target).unwrap_or_default().to_owned(),
                        base: writes.base,
                    },
                    current: m,
                });
            }
            Some(m)
                if m.idempotency_key
                    .as_deref()
                    .is_some_and(|k| !k.starts_with(key_prefix(step.direction))) =>
            {
                // A create of the other direction that is not settled yet:
                // that step's retry pass owns it.
                counters.skipped += 1;
            }
            mapping => {
                // New, pending (a create that may have happened) or failed
                // (a retry): create in the write side.
                let Rewritten {
                    fields,
                    deferred,
                    missing,
                } = refs.rewrite(&read_maps, read, &record.fields);
                let (key, id) = match &mapping {
                    // A repeat: the key (and id) the first attempt used.
                    Some(m) if m.status == MappingStatus::Pending => m
                        .idempotency_key
                        .as_deref()
                        .and_then(|k| Some((k.to_owned(), k.get(4..)?.parse().ok()?)))
                        .unwrap_or_else(|| step.create_key(&record.id)),
                    // Created anew: a new id, not the one that was deleted.
                    Some(m) if m.status == MappingStatus::Stale => step.recreate_key(m),
                    _ => {
                        let (key, id) = step.create_key(&record.id);
                        match held.get(&id.to_string()) {
                            Some(other) if step.write_text_ids => step.create_key_past(&record.id, *other),
                            _ => (key, id),
                        }
                    }
                };
                let oversized = || {
                    let base = match read {
                        Side::Source => &record.fields,
                        Side::Target => &fields,
                    };
                    keepable(&|| format!("the base snapshot of {entity} `{}`", record.id), base)
                };
                // In the patch pass a self-reference still not mapped will
                // not be: written empty it would say the record has no parent.
                let unresolved = || {
                    let field = deferred.first().filter(|_| patching)?;
                    Some(unsynced_parent(field, entity.as_str(), record.fields.get(field)))
                };
                if let Some(reason) = missing
                    .into_iter()
                    .next()
                    .map(|(_, why)| why)
                    .or_else(unresolved)
                    .or_else(oversized)
                {
                    counters.failed += 1;
                    match mapping {
                        None => d.mappings.push(MappingWrite::Insert(step.failed_mapping(
                            new_id(),
                            &record.id,
                            key,
                            reason,
                            now,
                        ))),
                        Some(m) if m.status == MappingStatus::Pending => {
                            d.mappings.push(MappingWrite::Transition {
                                current: m,
                                change: MappingChange::Fail { error: reason },
                            })
                        }
                        Some(_) => {}
                    }
                    continue;
                }
                // The base is in source ids: the source record itself, or
                // what is written to the source.
                let mut base = match read {
                    Side::Source => record.fields.clone(),
                    Side::Target => fields.clone(),
                };
                for f in &deferred {
                    base.insert(f.clone(), Value::Null);
                }
                if !deferred.is_empty() {
                    counters.deferred += 1;
                }
                match &mapping {
                    None => {
                        let mut m = step.new_mapping(new_id(), &record.id, key.clone(), now);
                        // A text-id record is created under a known id:
                        // reserve it now, so confirming changes less.
                        if step.write_text_ids {
                            let id = id.to_string();
                            match write {
                                Side::Target => m.target_id = Some(id),
                                Side::Source => m.source_id = Some(id),
                            }
                        }
                        d.reserve.push(MappingWrite::Insert(m))
                    }
                    Some(m) if m.status == MappingStatus::Failed || m.status == MappingStatus::Stale => {
                        d.reserve.push(MappingWrite::Transition {
                            current: m.clone(),
                            change: MappingChange::Reserve {
                                idempotency_key: key.clone(),
                            },
                        })
                    }
                    _ => {}
                }
                d.creates.push(Create {
                    record,
                    fields,
                    base,
                    mapping,
                    key,
                    id,
                });
            }
        }
    }
    d
}

/// What a reviewer's decision on a parked conflict does, now that the
/// records may have changed since it was parked.
#[derive(Clone, Debug, PartialEq)]
pub enum Review {
    /// The records changed since and now conflict in a field the reviewer
    /// did not decide, or changed in a field they did decide: parked again
    /// with the current records.
    Repark(ConflictRecord),
    /// The decided values, written to the sides that need them, and the new
    /// base confirmed.
    Apply {
        to_target: Option<TargetUpdate>,
        /// (source id, fields) of the update of the source.
        to_source: Option<(String, Fields)>,
        confirm: MappingWrite,
    },
}

/// Decides how the decision on `c` applies to the records as they are now:
/// `source`, and `target` in its own ids and (`target_in_source_ids`)
/// with its references in source ids. `mapping` is the pair's mapping.
#[allow(clippy::too_many_arguments)]
pub fn decide_review(
    c: &ConflictRecord,
    mapping: IdMapping,
    source: &Record,
    target: &Record,
    target_in_source_ids: &Record,
    refs: &References,
    sync: Direction,
    new_id: &mut dyn FnMut() -> Uuid,
    now: DateTime<Utc>,
) -> Review {
    let target_in_source_ids = refs.record_ids_as_text(target_in_source_ids.clone());
    let source_as_text = refs.record_ids_as_text(source.clone());
    let base_as_text = c.base.as_ref().and_then(|b| refs.ids_as_text(b));
    let base = base_as_text.as_ref().or(c.base.as_ref());
    // A decided field either side changed since it was parked: the
    // reviewer decided between values one of the systems no longer holds
    // (taking the source's would undo its later edit), so the decision
    // goes back to them with the records as they are now.
    let null = Value::Null;
    let held = |fields: &Fields, name: &str| fields.get(name).unwrap_or(&null).clone();
    let moved: Vec<String> = match &c.resolution {
        Some(decided) => decided
            .keys()
            .filter(|f| {
                !crate::value::same(
                    &held(&source_as_text.fields, f),
                    &held(&c.source_record.fields, f),
                ) || !crate::value::same(
                    &held(&target_in_source_ids.fields, f),
                    &held(&c.target_record.fields, f),
                )
            })
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    // A moved field both sides now hold alike was settled by those edits:
    // it keeps that value, and leaves the decision; the rest of the
    // decision still applies.
    let (agreed, moved): (Vec<String>, Vec<String>) = moved.into_iter().partition(|f| {
        crate::value::same(
            &held(&source_as_text.fields, f),
            &held(&target_in_source_ids.fields, f),
        )
    });
    let decision = conflict::ReviewDecision::Values(
        c.resolution
            .iter()
            .flatten()
            .filter(|(f, _)| !agreed.contains(f))
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect(),
    );
    let applied = match moved.is_empty() {
        true => conflict::apply_review(base, &source_as_text, &target_in_source_ids, sync, &decision).ok(),
        false => None,
    };
    let writes = match applied {
        Some(writes) => writes,
        None => {
            let changes = conflict::detect(base, &source_as_text.fields, &target_in_source_ids.fields);
            let mut conflicting = changes.conflicting;
            for f in moved {
                if !conflicting.contains(&f) {
                    conflicting.push(f);
                }
            }
            conflicting.sort();
            return Review::Repark(ConflictRecord {
                id: new_id(),
                source_record: source_as_text,
                target_record: target_in_source_ids,
                conflicting_fields: conflicting,
                strategy_applied: Strategy::Manual,
                resolution: None,
                status: ConflictStatus::Pending,
                resolved_by: None,
                created_at: now,
                resolved_at: None,
                outcome: None,
                ..c.clone()
            });
        }
    };
    let to_target = (!writes.to_target.is_empty()).then(|| {
        let mut fields = target_in_source_ids.fields.clone();
        fields.extend(writes.to_target.clone());
        TargetUpdate {
            id: target.id.clone(),
            fields,
            current: target.fields.clone(),
            current_in_source_ids: target_in_source_ids.fields.clone(),
            confirm: None,
        }
    });
    let to_source = (!writes.to_source.is_empty()).then(|| {
        let mut fields = source_as_text.fields.clone();
        fields.extend(writes.to_source.clone());
        refs.ids_typed_for(Side::Source, &mut fields, &source.fields);
        (source.id.clone(), fields)
    });
    Review::Apply {
        to_target,
        to_source,
        confirm: MappingWrite::Transition {
            change: MappingChange::Confirm {
                source_id: source.id.clone(),
                target_id: target.id.clone(),
                base: writes.base,
            },
            current: mapping,
        },
    }
}

#[cfg(test)]
mod tests;
