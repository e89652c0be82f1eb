//! Reviewers' resolutions of parked conflicts, written to both systems.

use super::*;
use syncd_core::conflict::{ConflictRecord, ConflictStatus};
use syncd_core::deletes::Gone;

impl Job {
    /// Writes the resolutions reviewers gave to conflicts of `run` to both
    /// systems, and records the new base; and those of an earlier run of
    /// the integration that ended (a cancelled run leaves its conflicts
    /// to be decided, and their records wait for that decision).
    pub(super) async fn apply_resolutions(&self, run: &RunRow, lease: &Lease) -> Result<(), RunError> {
        let resolved = self.store.unapplied_resolutions(run).await?;
        for c in resolved {
            let mut wrote = false;
            match self.apply_resolution(lease, &c, &mut wrote).await {
                // An ended run's decision a system refuses, on a record it
                // cannot read or that has a newer conflict waiting: it stays
                // to be applied by a later run, and does not stop this one
                // (which would stop every run of the integration after it).
                // (Not once a system holds part of it: that stops the run,
                // as for a run's own decision, rather than leave the two
                // sides apart while it goes on.)
                Err(e @ (RunError::Connector(_) | RunError::Store(StoreError::Duplicate { .. })))
                    if c.run_id != Some(run.id) && !e.is_transient() && !wrote =>
                {
                    tracing::warn!(conflict = %c.id, error = %e,
                        "the decision on a conflict of an ended run cannot be applied yet; a later run tries again");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Applies the decision on conflict `c` (see [`Self::apply_resolutions`]).
    async fn apply_resolution(
        &self,
        lease: &Lease,
        c: &ConflictRecord,
        wrote: &mut bool,
    ) -> Result<(), RunError> {
        let Some(tables) = self.entities.get(c.entity_type.as_str()) else {
            return Ok(());
        };
        let scope = self.scope(c.entity_type.as_str());
        let mapping = self
            .store
            .lookup_current(&scope, Side::Source, std::slice::from_ref(&c.source_record.id))
            .await?
            .remove(&c.source_record.id);
        // What became of the decision, for the reviewer: said on each way
        // out below.
        let not_synced = match &mapping {
            Some(m) => format!(
                "not applied: the record is no longer synced (its mapping is {})",
                m.status.as_str()
            ),
            None => "not applied: the record is no longer synced (it has no mapping)".to_owned(),
        };
        let mut commit = PageCommit {
            applied_conflicts: vec![(c.id, not_synced)],
            lease: Some(lease.clone()),
            ..Default::default()
        };
        let outcome = |commit: &mut PageCommit, said: String| commit.applied_conflicts[0].1 = said;
        if let Some(m) = mapping.filter(|m| m.status == MappingStatus::Mapped) {
            let source = self
                .source
                .read_by_ids(&tables.source, std::slice::from_ref(&c.source_record.id))
                .await?;
            let target = self
                .target
                .read_by_ids(&tables.target, std::slice::from_ref(&c.target_record.id))
                .await?;
            // A record that exists but cannot be read (a value its
            // side cannot hold) stops the run with the reason; the
            // decision stays, to be applied once the record is fixed.
            if let Some((connector, bad)) = source
                .bad
                .first()
                .map(|b| (&self.source, b))
                .or(target.bad.first().map(|b| (&self.target, b)))
            {
                return Err(ConnectorError::Config {
                        system: connector.system().to_owned(),
                        reason: format!(
                            "the decision of conflict {} cannot be applied: {} (fix the record, then resume the run)",
                            c.id, bad.reason
                        ),
                    }
                    .into());
            }
            // One side gone since (deleted, or marked deleted): the
            // decision is moot, and the record was left for it by the
            // delete steps in between; this run's delete step removes it.
            let gone = match (source.records.is_empty(), target.records.is_empty()) {
                (true, false) => Some(Side::Source),
                (false, true) => Some(Side::Target),
                (true, true) => {
                    outcome(
                        &mut commit,
                        "not applied: the record is gone from both sides since".into(),
                    );
                    None
                }
                (false, false) => None,
            };
            if let Some(side) = gone {
                tracing::warn!(conflict = %c.id, side = side.as_str(),
                    "the decision is not applied: its record is gone from one side since; the run's delete step acts on it");
                outcome(
                    &mut commit,
                    format!(
                        "not applied: the record is gone from the {} since; the delete step acts on it",
                        side.as_str()
                    ),
                );
                // And, should this run's delete steps be done already (a
                // suspended run resumed), the next run's refused pass finds
                // it gone.
                commit.mappings.push(MappingWrite::Transition {
                    current: m.clone(),
                    change: MappingChange::Refuse {
                        error: format!(
                            "gone from the {} while its conflict waited for review: removed by the delete step",
                            side.as_str()
                        ),
                    },
                });
                commit.candidates.push(syncd_core::deletes::DeleteCandidate {
                    run_id: lease.run_id,
                    tenant_id: self.tenant.clone(),
                    entity_type: c.entity_type.clone(),
                    mapping_id: m.id,
                    gone: Gone::on(side),
                });
            }
            if let (Some(source), Some(target)) = (source.records.first(), target.records.first()) {
                let maps = self
                    .reference_maps(tables, Side::Target, &[&target.fields])
                    .await?;
                let target_in_source_ids = Record {
                    fields: tables.refs.rewrite(&maps, Side::Target, &target.fields).fields,
                    ..target.clone()
                };
                let review = decide::decide_review(
                    c,
                    m,
                    source,
                    target,
                    &target_in_source_ids,
                    &tables.refs,
                    self.workflow.direction,
                    &mut Uuid::now_v7,
                    Utc::now(),
                );
                match review {
                    decide::Review::Repark(again) => {
                        tracing::warn!(conflict = %c.id, "the decision is not applied: a decided field changed on a side \
                            since the conflict was parked; parked again with the values both hold now");
                        outcome(
                            &mut commit,
                            format!(
                                "not applied: a decided field changed on a side since the conflict was parked; \
                                 parked again as conflict {}",
                                again.id
                            ),
                        );
                        commit.conflicts.push(again);
                    }
                    decide::Review::Apply {
                        to_target,
                        to_source,
                        confirm,
                    } => {
                        let now = Utc::now();
                        let (written, decided) = match to_target {
                            Some(update) => (
                                self.to_target_ids(tables, std::slice::from_ref(&update)).await?,
                                update.fields,
                            ),
                            None => (Vec::new(), Fields::new()),
                        };
                        // A decided reference the target cannot be given
                        // (its record is not synced): written, it would
                        // keep the target's old one under a base that
                        // says the new one.
                        let unwritable = written.iter().find_map(|w| {
                            w.missing.clone().or_else(|| {
                                w.kept.first().map(|f| {
                                    decide::unsynced_parent(f, c.entity_type.as_str(), decided.get(f))
                                })
                            })
                        });
                        let target_updates: Vec<(String, Fields)> =
                            written.into_iter().map(|w| (w.id, w.fields)).collect();
                        // Neither side is written unless both can hold
                        // the decision: one written and the other
                        // refusing would leave the two apart. Such a
                        // decision goes back to the reviewer.
                        let cannot = unwritable
                            .or_else(|| {
                                target_updates
                                    .iter()
                                    .find_map(|(_, f)| self.target.cannot_hold(&tables.target, f))
                            })
                            .or_else(|| {
                                to_source
                                    .iter()
                                    .find_map(|(_, f)| self.source.cannot_hold(&tables.source, f))
                            });
                        if let Some(why) = cannot {
                            tracing::warn!(conflict = %c.id, reason = %why, "the decision cannot be written; parked again for review");
                            let again = Uuid::now_v7();
                            outcome(
                                &mut commit,
                                format!("not applied: {why}; parked again as conflict {again}"),
                            );
                            // As a record changed since is parked again:
                            // under the conflict's run, ids as text.
                            commit.conflicts.push(ConflictRecord {
                                id: again,
                                source_record: tables.refs.record_ids_as_text(source.clone()),
                                target_record: tables.refs.record_ids_as_text(target_in_source_ids.clone()),
                                resolution: None,
                                status: ConflictStatus::Pending,
                                resolved_by: None,
                                created_at: now,
                                resolved_at: None,
                                outcome: None,
                                ..c.clone()
                            });
                            self.store.commit_page(commit).await?;
                            return Ok(());
                        }
                        if !target_updates.is_empty() {
                            let refused = self.target.update(&tables.target, &target_updates, now).await?;
                            refused_resolution(&self.target, c.entity_type.as_str(), refused)?;
                            *wrote = true;
                        }
                        let wrote_source = to_source.is_some();
                        if let Some(update) = to_source {
                            let refused = self.source.update(&tables.source, &[update], now).await?;
                            refused_resolution(&self.source, c.entity_type.as_str(), refused)?;
                            *wrote = true;
                        }
                        // As after a page's writes: the decision is not
                        // recorded if a column it wrote changed type under
                        // it (the database converted what it was given).
                        if !target_updates.is_empty() {
                            self.target.still_bound(&tables.target).await?;
                        }
                        if wrote_source {
                            self.source.still_bound(&tables.source).await?;
                        }
                        commit.mappings.push(confirm);
                        outcome(&mut commit, "applied".into());
                    }
                }
            }
        }
        self.store.commit_page(commit).await?;
        Ok(())
    }
}

/// A reviewer's resolution the system refused to store: the run stops with
/// the system's reason (the conflict stays resolved and is applied again).
pub(super) fn refused_resolution(
    connector: &Connector,
    entity: &str,
    refused: Vec<(String, String)>,
) -> Result<(), RunError> {
    match refused.into_iter().next() {
        None => Ok(()),
        Some((id, reason)) => Err(ConnectorError::Http {
            system: connector.system().to_owned(),
            request: format!("update of {entity} `{id}`"),
            detail: format!("the resolution was refused: {reason}"),
        }
        .into()),
    }
}
