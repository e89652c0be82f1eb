//! The delete step of one entity type: find what is gone, count it against
//! the mass-deletion brake, then act on it by the entity's policy.
//!
//! Runs after every sync step, in reverse stage order, so a child's records
//! go before their parents and a target with real foreign keys never refuses
//! a delete the plan could have ordered. Three phases, each checkpointed:
//!
//! 1. *Reconcile* (when due by `reconcile_every`): a merge of the ID map
//!    with each system's keys, one side after the other. The `mapped`
//!    mappings' ids are read a page at a time in that side's id order, and
//!    the system answers which of them still exist with one range scan of
//!    its key over the page's span (sequential, not one index descent an
//!    id). Mappings whose record is gone become delete candidates; one gone
//!    on both sides stays a source candidate, found first. Soft-deleted rows
//!    and counterparts found missing while syncing were recorded as
//!    candidates by the sync steps already. Nothing is held in memory but a
//!    page of ids.
//! 2. *Brake*: the candidates are counted before anything is touched; past
//!    the brake's limit the run suspends, naming the entity and the count,
//!    until an operator confirms.
//! 3. *Act*: candidates a page at a time, each checked again (a record that
//!    came back is left alone), then deleted, archived, marked stale or
//!    created anew, with the page's mapping transitions and checkpoint in
//!    one transaction. Target writes are idempotent (deleting a deleted row
//!    is nothing; a re-create reuses the key kept in its pending mapping),
//!    so a page done twice after a crash ends as if done once.

use super::{Job, RunError, StepCtx};
use crate::run::{PlannedStep, StepCheckpoint, StepCounters, StepDirection, StepState};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use syncd_core::deletes::{Gone, Removals, decide_removals};
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus};
use syncd_core::record::Side;
use syncd_store::{DeleteCandidate, MappingWrite, PageCommit, RunHold};
use uuid::Uuid;

/// A reconciliation page holds this many sync pages of mappings: it reads
/// ids only, so a larger page costs little memory and saves round trips and
/// per-page bookkeeping.
const RECONCILE_PAGE_FACTOR: u32 = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DeletePhase {
    #[default]
    Start,
    /// Mappings in source-id order against the source's ids.
    Reconcile,
    /// Mappings in target-id order against the target's ids.
    ReconcileTargets,
    Verify,
    Brake,
    Act,
    Done,
}

/// The delete step's cursor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DeleteProgress {
    phase: DeletePhase,
    /// Last source id the reconciliation pass checked.
    reconcile_after: Option<String>,
    /// Last target id the reconciliation pass checked.
    #[serde(default)]
    reconcile_target_after: Option<String>,
    /// Last candidate (mapping id) acted on.
    act_after: Option<Uuid>,
}

impl Job {
    pub(super) async fn execute_delete_step(
        &self,
        ctx: &StepCtx<'_>,
        checkpoint: Option<&StepCheckpoint>,
        progress: &mut (dyn FnMut(&StepCounters) + Send),
    ) -> Result<(), RunError> {
        let mut counters = checkpoint.map(|c| c.counters).unwrap_or_default();
        let mut state: DeleteProgress = checkpoint
            .and_then(|c| c.cursor.clone())
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let policy = &ctx.tables.def.deletes;
        let page_size = self.options.page_size;
        loop {
            self.check_not_cancelled(ctx).await?;
            let mut commit = PageCommit::default();
            match state.phase {
                DeletePhase::Start => {
                    let last = self.store.last_reconciled(&ctx.scope).await?;
                    state.phase = if policy.verify_after.is_some() {
                        DeletePhase::Verify
                    } else {
                        DeletePhase::Brake
                    };
                    match (policy.reconcile_every, last) {
                        (Some(every), Some(last)) => {
                            let due = Utc::now()
                                .signed_duration_since(last)
                                .to_std()
                                .unwrap_or_default()
                                >= every;
                            if due {
                                state.phase = DeletePhase::Reconcile;
                            }
                        }
                        // The first run only starts the clock: it has just
                        // written (or checked) every record it maps.
                        (Some(_), None) => commit.reconciled = Some(ctx.scope.clone()),
                        (None, _) => {}
                    }
                }
                DeletePhase::Reconcile | DeletePhase::ReconcileTargets => {
                    let (side, after) = match state.phase {
                        DeletePhase::Reconcile => (Side::Source, &mut state.reconcile_after),
                        _ => (Side::Target, &mut state.reconcile_target_after),
                    };
                    let limit = page_size.saturating_mul(RECONCILE_PAGE_FACTOR);
                    let page = self
                        .store
                        .mapped_ids_page(&ctx.scope, side, after.as_deref(), limit)
                        .await?;
                    *after = page.last().map(|m| m.record_id.clone());
                    if (page.len() as u32) < limit {
                        state.phase = match side {
                            Side::Source => DeletePhase::ReconcileTargets,
                            Side::Target => {
                                commit.reconciled = Some(ctx.scope.clone());
                                DeletePhase::Brake
                            }
                        };
                    }
                    // Each mapping is checked on both sides, counted once.
                    if side == Side::Source {
                        counters.read += page.len() as u64;
                    }
                    let ids: Vec<String> = page.iter().map(|m| m.record_id.clone()).collect();
                    let present = self
                        .connector(side)
                        .present_in_key_order(self.binding(ctx.tables, side), &ids)
                        .await?;
                    for m in page.into_iter().filter(|m| !present.contains(&m.record_id)) {
                        // A mapping gone on both sides was recorded by the
                        // source pass; the target pass's candidate is ignored.
                        commit
                            .candidates
                            .push(self.candidate(ctx, m.mapping_id, Gone::on(side)));
                    }
                }
                DeletePhase::Verify => {
                    // One page a run of the records verified longest ago:
                    // both still there → verified now; one gone → a
                    // candidate like any other.
                    state.phase = DeletePhase::Brake;
                    let after = policy.verify_after.unwrap_or_default();
                    let before =
                        Utc::now() - chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
                    let page = self.store.unverified_page(&ctx.scope, before, page_size).await?;
                    counters.read += page.len() as u64;
                    let (sources, targets) = self.present(ctx, &page).await?;
                    for m in page {
                        let has_source = m.source_id.as_ref().is_some_and(|id| sources.contains(id));
                        let has_target = m.target_id.as_ref().is_some_and(|id| targets.contains(id));
                        if has_source && has_target {
                            // Verified, and still out of step when it was:
                            // the error stays for the refused pass of the
                            // next run (a confirm would clear it).
                            let change = match &m.last_error {
                                Some(error) => MappingChange::Refuse { error: error.clone() },
                                None => MappingChange::Confirm {
                                    source_id: m.source_id.clone().unwrap_or_default(),
                                    target_id: m.target_id.clone().unwrap_or_default(),
                                    base: m.base.clone().unwrap_or_default(),
                                },
                            };
                            commit
                                .mappings
                                .push(MappingWrite::Transition { current: m, change });
                            continue;
                        }
                        let gone = if has_source { Gone::Target } else { Gone::Source };
                        commit.candidates.push(self.candidate(ctx, m.id, gone));
                    }
                }
                DeletePhase::Brake => {
                    let entity = &ctx.step.entity_type;
                    let count = self
                        .store
                        .count_candidates(&self.tenant, ctx.run_id, entity)
                        .await?;
                    state.phase = if count == 0 {
                        DeletePhase::Done
                    } else {
                        DeletePhase::Act
                    };
                    let mapped = if count > 0 {
                        self.store.count_mapped(&ctx.scope).await?
                    } else {
                        0
                    };
                    if count > 0 && policy.brake.holds(count, mapped) {
                        let holds = self.store.run_holds(Some(&self.tenant), ctx.run_id).await?;
                        let confirmed = holds
                            .iter()
                            .any(|h| h.entity_type == entity.as_str() && h.confirmed_at.is_some());
                        if !confirmed {
                            let hold = RunHold {
                                run_id: ctx.run_id,
                                tenant_id: self.tenant.clone(),
                                entity_type: entity.to_string(),
                                count,
                                mapped,
                                limit: policy.brake.limit(mapped),
                                confirmed_by: None,
                                confirmed_at: None,
                                created_at: Utc::now(),
                            };
                            self.store.add_hold(&hold).await?;
                            return Err(RunError::Held { hold: Box::new(hold) });
                        }
                    }
                }
                DeletePhase::Act => {
                    let page = self
                        .store
                        .candidates_page(
                            &self.tenant,
                            ctx.run_id,
                            &ctx.step.entity_type,
                            state.act_after,
                            page_size,
                        )
                        .await?;
                    if page.is_empty() {
                        state.phase = DeletePhase::Done;
                    } else {
                        // Checkpointed only once the page is fully done: a
                        // crash in between does the page again.
                        let next = page.last().map(|(m, _)| m.id);
                        self.act(ctx, page, &mut counters, &state).await?;
                        state.act_after = next;
                    }
                }
                DeletePhase::Done => break,
            }
            commit.checkpoint = Some(self.delete_checkpoint(ctx, &state, counters));
            commit.lease = Some(ctx.lease.clone());
            self.store.commit_page(commit).await?;
            progress(&counters);
        }
        Ok(())
    }

    /// Mapping `mapping_id` of this step's entity, found gone on one side.
    pub(super) fn candidate(&self, ctx: &StepCtx<'_>, mapping_id: Uuid, gone: Gone) -> DeleteCandidate {
        self.decision_step(ctx).candidate(mapping_id, gone)
    }

    fn delete_checkpoint(
        &self,
        ctx: &StepCtx<'_>,
        state: &DeleteProgress,
        counters: StepCounters,
    ) -> StepCheckpoint {
        StepCheckpoint {
            run_id: ctx.run_id,
            tenant_id: self.tenant.clone(),
            stage: ctx.step.stage,
            entity_type: ctx.step.entity_type.clone(),
            direction: ctx.step.direction,
            state: if state.phase == DeletePhase::Done {
                StepState::Done
            } else {
                StepState::Running
            },
            cursor: Some(serde_json::to_value(state).expect("progress serializes")),
            counters,
            error: None,
        }
    }

    /// Which of the source and target ids of `mappings` still exist.
    async fn present(
        &self,
        ctx: &StepCtx<'_>,
        mappings: &[IdMapping],
    ) -> Result<(HashSet<String>, HashSet<String>), RunError> {
        let ids = |side: Side| -> Vec<String> {
            mappings
                .iter()
                .filter_map(|m| match side {
                    Side::Source => m.source_id.clone(),
                    Side::Target => m.target_id.clone(),
                })
                .collect()
        };
        let sources = self
            .connector(Side::Source)
            .present(&ctx.tables.source, &ids(Side::Source))
            .await?;
        let targets = self
            .connector(Side::Target)
            .present(&ctx.tables.target, &ids(Side::Target))
            .await?;
        Ok((sources, targets))
    }

    /// Acts on one page of candidates by the entity's policy.
    async fn act(
        &self,
        ctx: &StepCtx<'_>,
        page: Vec<(IdMapping, Gone)>,
        counters: &mut StepCounters,
        state: &DeleteProgress,
    ) -> Result<(), RunError> {
        let policy = &ctx.tables.def.deletes;
        let now = Utc::now();
        // A record whose conflict waits for a reviewer waits with it, its
        // removal too: found again by a run after the decision.
        let sources: Vec<String> = page.iter().filter_map(|(m, _)| m.source_id.clone()).collect();
        let waiting = match sources.is_empty() {
            true => HashSet::new(),
            false => {
                self.store
                    .open_conflicts(&ctx.scope, Side::Source, &sources)
                    .await?
            }
        };
        let candidates = page.len();
        let page: Vec<(IdMapping, Gone)> = page
            .into_iter()
            .filter(|(m, _)| {
                let wait = m.source_id.as_ref().is_some_and(|id| waiting.contains(id));
                if wait {
                    tracing::warn!(mapping = %m.id, source_id = ?m.source_id,
                        "not removed: its record waits for the review of a conflict");
                }
                !wait
            })
            .collect();
        counters.skipped += (candidates - page.len()) as u64;
        let still_mapped: Vec<IdMapping> = page
            .iter()
            .filter(|(m, _)| m.status == MappingStatus::Mapped)
            .map(|(m, _)| m.clone())
            .collect();
        let (sources, targets) = self.present(ctx, &still_mapped).await?;
        let pairs = page.into_iter().map(|(m, _)| m).collect();
        let Removals {
            delete_target,
            archive_target,
            delete_source,
            recreate,
            transitions,
            deleted,
            archived,
            stale,
        } = decide_removals(pairs, &sources, &targets, policy);
        counters.deleted += deleted;
        counters.archived += archived;
        counters.stale += stale;
        self.target.delete(&ctx.tables.target, &delete_target).await?;
        if let Some(column) = &policy.archive_column {
            self.target
                .archive(&ctx.tables.target, &archive_target, column, now)
                .await?;
        }
        self.source.delete(&ctx.tables.source, &delete_source).await?;
        // The transitions, with the checkpoint still before this page.
        self.store
            .commit_page(PageCommit {
                mappings: transitions,
                checkpoint: Some(self.delete_checkpoint(ctx, state, *counters)),
                lease: Some(ctx.lease.clone()),
                ..Default::default()
            })
            .await?;
        if !recreate.is_empty() {
            // Through the sync path: stale → pending under a new key, create,
            // confirm `mapped` with the new id.
            let step = PlannedStep {
                direction: StepDirection::Forward,
                ..ctx.step.clone()
            };
            let forward = StepCtx {
                step: &step,
                read: Side::Source,
                scope: ctx.scope.clone(),
                lease: ctx.lease.clone(),
                lost: ctx.lost.clone(),
                halt: ctx.halt.clone(),
                seen: None,
                retried: Default::default(),
                ..*ctx
            };
            let found = self.source.read_by_ids(&ctx.tables.source, &recreate).await?;
            let mut done = StepCounters::default();
            let mut commit = self
                .process_page(&forward, found.records, found.bad, Vec::new(), &mut done)
                .await?;
            counters.recreated += done.created;
            counters.failed += done.failed;
            commit.checkpoint = Some(self.delete_checkpoint(ctx, state, *counters));
            commit.lease = Some(ctx.lease.clone());
            self.store.commit_page(commit).await?;
        }
        Ok(())
    }
}
