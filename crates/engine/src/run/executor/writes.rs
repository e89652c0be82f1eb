//! A page's writes: the reservation of its creates, then the creates and
//! updates in both systems, and what its commit records.

use super::*;
use syncd_core::conflict::ConflictStatus;

impl Job {
    /// The second half of a page: reserves the pending mappings of its
    /// creates, then creates and updates records in both systems, and
    /// returns what the page's final transaction must commit.
    pub(super) async fn write_page(
        &self,
        ctx: &StepCtx<'_>,
        writes: PageWrites,
        counters: &mut StepCounters,
    ) -> Result<PageCommit, RunError> {
        let PageWrites {
            now,
            mut commit,
            reserve,
            actions,
            updates_source,
            updates_target,
            mut confirms,
            patching,
        } = writes;
        let (read, write, tables) = (ctx.read, ctx.write(), ctx.tables);
        // Reserve pending mappings before writing anything. New ones are
        // held by the reservation (`held`), not in the ID map yet.
        let mut reserved: HashMap<String, (IdMapping, bool)> = HashMap::with_capacity(reserve.len());
        if !reserve.is_empty() {
            let (reservation, stored) = self.store.reserve(&ctx.scope, reserve, &ctx.lease).await?;
            let held = reservation.map(|r| {
                commit.settles = Some(r.id);
                r.held
            });
            for (m, held) in held
                .into_iter()
                .flatten()
                .map(|m| (m, true))
                .chain(stored.into_iter().map(|m| (m, false)))
            {
                if let Some(id) = id_on(&m, read) {
                    reserved.insert(id.to_owned(), (m, held));
                }
            }
        }

        // Creates: text ids are deterministic (a repeat upserts); integer-id
        // tables are searched for the key of an earlier attempt first.
        let write_binding = self.binding(tables, write);
        let mut creates: Vec<((IdMapping, bool), Record, Fields, bool)> = Vec::with_capacity(actions.len());
        let mut news: Vec<NewRecord> = Vec::with_capacity(actions.len());
        for action in actions {
            let Create {
                record,
                fields,
                base,
                mapping,
                key,
                id: uuid,
            } = action;
            let tried = mapping.is_some();
            let current = reserved
                .remove(&record.id)
                .or(mapping.map(|m| (m, false)))
                .expect("a create has a pending mapping");
            creates.push((current, record, base, tried));
            news.push(NewRecord {
                id: (write_binding.id_kind == IdKind::Text).then(|| uuid.to_string()),
                key,
                fields,
                tried,
            });
        }
        let creating = !news.is_empty();
        // A create into a table whose ids the system assigns is looked for
        // by its key first. In a SQL table every create is (one query a
        // page, through the idempotency column's index where it has one): a
        // state store restored from a backup has lost the mappings of what
        // was created since, and only the rows' keys still say which those
        // were. An API is searched a request a key, so only for a create
        // tried before (its mapping pending, failed or stale already); so
        // is a table in a step that began on an empty scope while no row of
        // the table held a key (`StepCtx::search_keys`).
        let existing = if write_binding.id_kind == IdKind::Assigned {
            let keys: Vec<String> = creates
                .iter()
                .zip(&news)
                .filter(|((_, _, _, tried), _)| ctx.search_keys || *tried)
                .map(|(_, n)| n.key.clone())
                .collect();
            self.connector(write).find_by_keys(write_binding, &keys).await?
        } else {
            HashMap::new()
        };
        // A row found by its key that the ID map already links to another
        // record is not taken over. (In a bidirectional integration whose
        // state store lost its mappings, the other direction's step may have
        // read that row as a new record, created a copy of it and mapped
        // the two.) That create fails alone, naming both.
        let taken: HashMap<String, String> = if existing.is_empty() {
            HashMap::new()
        } else {
            let found: Vec<String> = existing.values().cloned().collect();
            self.store
                .lookup_current(&ctx.scope, write, &found)
                .await?
                .into_iter()
                .map(|(id, m)| {
                    let other = id_on(&m, read).unwrap_or("(none yet)").to_owned();
                    (id, other)
                })
                .collect()
        };
        // The id of each create, in order.
        let no_id = || Err(format!("{} returned no id for the create", write.as_str()));
        let results: Vec<Result<String, String>> = if existing.is_empty() {
            let mut created = self.connector(write).create(write_binding, &news, now).await?;
            created.resize_with(news.len(), no_id);
            created
        } else {
            let to_create: Vec<NewRecord> = news
                .iter()
                .filter(|n| !existing.contains_key(&n.key))
                .cloned()
                .collect();
            let mut created = self
                .connector(write)
                .create(write_binding, &to_create, now)
                .await?
                .into_iter();
            // A record found is written with the values decided now: the
            // attempt that created it may have written older ones.
            let found: Vec<(String, Fields)> = news
                .iter()
                .filter_map(|n| existing.get(&n.key).map(|id| (id.clone(), n.fields.clone())))
                .filter(|(id, _)| !taken.contains_key(id))
                .collect();
            let refused: HashMap<String, String> = self
                .connector(write)
                .update(write_binding, &found, now)
                .await?
                .into_iter()
                .collect();
            news.iter()
                .map(|n| match existing.get(&n.key) {
                    Some(id) if taken.contains_key(id) => Err(format!(
                        "{} record {id} holds this record's create key, but is already mapped to {} record {}: \
                         one of the two is a copy of the other, made after the state store lost its mappings \
                         (remove the copy, or its mapping, and the next run links the other)",
                        write.as_str(),
                        read.as_str(),
                        taken[id]
                    )),
                    Some(id) => match refused.get(id) {
                        Some(why) => Err(format!(
                            "{} refused the update of record {id}, which an earlier attempt created: {why}",
                            write.as_str()
                        )),
                        None => Ok(id.clone()),
                    },
                    None => created.next().unwrap_or_else(no_id),
                })
                .collect()
        };
        for (((mapping, held), record, base, _), result) in creates.into_iter().zip(results) {
            let change = match result {
                Ok(new_id) => {
                    counters.created += 1;
                    let (source_id, target_id) = match read {
                        Side::Source => (record.id.clone(), new_id),
                        Side::Target => (new_id, record.id.clone()),
                    };
                    MappingChange::Confirm {
                        source_id,
                        target_id,
                        base,
                    }
                }
                Err(error) => {
                    counters.failed += 1;
                    MappingChange::Fail { error }
                }
            };
            confirms.push(if held {
                MappingWrite::Settle {
                    held: mapping,
                    change,
                }
            } else {
                MappingWrite::Transition {
                    current: mapping,
                    change,
                }
            });
        }

        let mut written = self.to_target_ids(tables, &updates_target).await?;
        // The source ids of the records whose source is written too.
        let mut source_written: HashSet<String> = updates_source.iter().map(|(id, _)| id.clone()).collect();
        // The base records what the target really holds: the kept value of
        // a self-reference not mapped yet (the step's patch pass writes it
        // once it is). In the patch pass a self-reference still not mapped
        // will not be in this run: nothing of the record is written (the
        // reference written empty would say it has no parent) and it fails,
        // saying why. So does an update whose reference to another entity
        // cannot be translated (its record failed, or was never synced), in
        // any pass, as a create would: written with the old reference, it
        // would be recorded as in step, and never written again. Its
        // mapping keeps the error, and each run reads it again after its
        // scan until the reference can be written.
        let mut unresolved = HashSet::new();
        for (update, w) in updates_target.iter().zip(&written) {
            let Some(confirm) = update.confirm.and_then(|i| confirms.get_mut(i)) else {
                continue;
            };
            let MappingWrite::Transition {
                current,
                change: MappingChange::Confirm { base, source_id, .. },
            } = confirm
            else {
                continue;
            };
            let refusal = w.missing.clone().or_else(|| {
                let field = w.deferred.first().filter(|_| patching)?;
                Some(decide::unsynced_parent(
                    field,
                    ctx.scope.entity_type.as_str(),
                    update.fields.get(field),
                ))
            });
            if let Some(error) = refusal {
                source_written.remove(source_id.as_str());
                *confirm = MappingWrite::Transition {
                    current: current.clone(),
                    change: MappingChange::Refuse { error },
                };
                unresolved.insert(w.id.clone());
                counters.updated = counters.updated.saturating_sub(1);
                counters.failed += 1;
                continue;
            }
            for field in &w.kept {
                let kept = update
                    .current_in_source_ids
                    .get(field)
                    .cloned()
                    .unwrap_or(Value::Null);
                base.insert(field.clone(), kept);
            }
            if !w.deferred.is_empty() {
                counters.deferred += 1;
            }
        }
        // A target write of what the target holds already (its change kept
        // back, as above) is not made: it would only move the record's
        // time, and the other direction would read it again. The record is
        // unchanged unless its source is written.
        for (update, w) in updates_target.iter().zip(&written) {
            if unresolved.contains(&w.id) || !w.fields.iter().all(|(k, v)| update.current.get(k) == Some(v)) {
                continue;
            }
            unresolved.insert(w.id.clone());
            let to_source = update
                .confirm
                .and_then(|i| confirms.get(i))
                .is_some_and(|c| match c {
                    MappingWrite::Transition {
                        change: MappingChange::Confirm { source_id, .. },
                        ..
                    } => source_written.contains(source_id.as_str()),
                    _ => false,
                });
            if !to_source {
                counters.updated = counters.updated.saturating_sub(1);
                counters.unchanged += 1;
            }
        }
        written.retain(|w| !unresolved.contains(&w.id));
        let target_updates: Vec<(String, Fields)> = written.into_iter().map(|w| (w.id, w.fields)).collect();
        // A record failed above has nothing written, on either side.
        let updates_source: Vec<(String, Fields)> = updates_source
            .into_iter()
            .filter(|(id, _)| source_written.contains(id))
            .collect();
        let wrote_target = !target_updates.is_empty() || (creating && write == Side::Target);
        let wrote_source = !updates_source.is_empty() || (creating && write == Side::Source);
        let refused_target = self.target.update(&tables.target, &target_updates, now).await?;
        let refused_source = self.source.update(&tables.source, &updates_source, now).await?;
        if !(refused_target.is_empty() && refused_source.is_empty()) {
            // A record the system refused keeps its mapping and its old
            // base, so the difference is written again by the next run's refused pass;
            // the mapping's `last_error` says why.
            for (id, reason) in refused_target.iter().chain(&refused_source) {
                tracing::warn!(record = %id, %reason, "update refused");
            }
            let reasons: HashMap<(Side, &str), &str> = refused_target
                .iter()
                .map(|(id, why)| ((Side::Target, id.as_str()), why.as_str()))
                .chain(
                    refused_source
                        .iter()
                        .map(|(id, why)| ((Side::Source, id.as_str()), why.as_str())),
                )
                .collect();
            let mut dropped = 0;
            for w in confirms.iter_mut() {
                let MappingWrite::Transition {
                    change:
                        MappingChange::Confirm {
                            source_id, target_id, ..
                        },
                    current,
                } = w
                else {
                    continue;
                };
                let why = reasons
                    .get(&(Side::Target, target_id.as_str()))
                    .map(|why| format!("{} refused the update: {why}", self.target.system()))
                    .or_else(|| {
                        reasons
                            .get(&(Side::Source, source_id.as_str()))
                            .map(|why| format!("{} refused the update: {why}", self.source.system()))
                    });
                if let Some(error) = why {
                    *w = MappingWrite::Transition {
                        current: current.clone(),
                        change: MappingChange::Refuse { error },
                    };
                    dropped += 1;
                }
            }
            counters.updated = counters.updated.saturating_sub(dropped);
            counters.failed += dropped;
        }
        // A conflict a strategy settled for a record then refused on both
        // sides (or not written at all) was not applied: not recorded (the
        // refused pass would record it again on every run until the record
        // is written). Once either side holds the settled values it is.
        let landed_source: HashSet<&str> = updates_source
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !refused_source.iter().any(|(r, _)| r == id))
            .collect();
        let landed_target: HashSet<&str> = target_updates
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !refused_target.iter().any(|(r, _)| r == id))
            .collect();
        let refused: HashSet<&str> = confirms
            .iter()
            .filter_map(|w| match w {
                MappingWrite::Transition {
                    current,
                    change: MappingChange::Refuse { .. },
                } => {
                    let written = current
                        .source_id
                        .as_deref()
                        .is_some_and(|id| landed_source.contains(id))
                        || current
                            .target_id
                            .as_deref()
                            .is_some_and(|id| landed_target.contains(id));
                    (!written).then_some(current.source_id.as_deref()).flatten()
                }
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            let before = commit.conflicts.len();
            commit.conflicts.retain(|c| {
                c.status != ConflictStatus::Resolved || !refused.contains(c.source_record.id.as_str())
            });
            let unapplied = (before - commit.conflicts.len()) as u64;
            counters.conflicts = counters.conflicts.saturating_sub(unapplied);
        }
        commit.mappings.extend(confirms);
        // Nothing of the page is recorded if a column it wrote changed
        // type under it (the database then converted what it was given).
        if wrote_target {
            self.target.still_bound(&tables.target).await?;
        }
        if wrote_source {
            self.source.still_bound(&tables.source).await?;
        }
        Ok(commit)
    }

    /// Rewrites updates bound for the target from source ids to target ids.
    /// A reference that cannot be translated keeps the target's current
    /// value rather than point nowhere or be emptied: a self-reference whose
    /// target is not mapped yet (deferred: the patch pass writes it once it
    /// is), or any other. Both are reported per update.
    pub(super) async fn to_target_ids(
        &self,
        tables: &EntityTables,
        updates: &[TargetUpdate],
    ) -> Result<Vec<TargetWrite>, RunError> {
        let fields: Vec<&Fields> = updates.iter().map(|u| &u.fields).collect();
        let maps = self.reference_maps(tables, Side::Source, &fields).await?;
        Ok(updates
            .iter()
            .map(|u| {
                let mut rewritten = tables.refs.rewrite(&maps, Side::Source, &u.fields);
                let mut kept = Vec::new();
                for field in &rewritten.deferred {
                    let current = u.current.get(field).cloned().unwrap_or(Value::Null);
                    rewritten.fields.insert(field.clone(), current);
                    kept.push(field.clone());
                }
                // Never written untranslated: kept as the target holds it
                // (a sync update then fails; see `write_page`).
                let mut missing = None;
                for (field, reason) in rewritten.missing {
                    tracing::warn!(target_id = %u.id, %reason, "reference not mapped: the update is not written, and fails naming it");
                    let current = u.current.get(&field).cloned().unwrap_or(Value::Null);
                    rewritten.fields.insert(field.clone(), current);
                    kept.push(field);
                    missing.get_or_insert(reason);
                }
                tables
                    .refs
                    .ids_typed_for(Side::Target, &mut rewritten.fields, &u.current);
                TargetWrite {
                    id: u.id.clone(),
                    fields: rewritten.fields,
                    deferred: rewritten.deferred,
                    kept,
                    missing,
                }
            })
            .collect())
    }
}
