//! A step's pages: read, decided (by `syncd_core::decide`), written and
//! committed, with the change scan's pages overlapping.

use super::*;

/// The time `StepCtx::retried` keeps for a row the retry pass could not
/// read (a value no field can hold): the scan skips it while it still
/// cannot be read.
const UNREADABLE: chrono::DateTime<Utc> = chrono::DateTime::<Utc>::MIN_UTC;

impl Job {
    /// The pages of a step, each read, decided, written and committed in
    /// turn. In the change scan three pages overlap: while page N is
    /// written, page N + 1 is read and decided, and the commit of page
    /// N - 1 runs (see `InFlight`). A page that holds a record of a page
    /// before it still being written or committed waits for those first,
    /// so that it finds the mapping as that page leaves it; so do the
    /// retry and patch passes and a step whose records refer to each other.
    pub(super) async fn page_loop(
        &self,
        ctx: &StepCtx<'_>,
        state: &mut StepProgress,
        counters: &mut StepCounters,
        in_flight: &mut Option<InFlight>,
        progress: &mut (dyn FnMut(&StepCounters) + Send),
    ) -> Result<(), RunError> {
        let sequential = ctx.tables.refs.refer_to_itself();
        // The next page, read (and decided, unless it had to wait) while the
        // page before was written.
        let mut next: Option<(ReadPage, Option<Decided>)> = None;
        loop {
            let (mut page, decided) = match next.take() {
                // Read while the page before was written: the stop check
                // (shutdown, lost lease, cancellation) comes before its
                // writes, as for any page.
                Some(n) => {
                    self.check_not_cancelled(ctx).await?;
                    n
                }
                None => {
                    if state.phase != Phase::Scan || sequential {
                        land(in_flight, progress).await?;
                    }
                    self.check_not_cancelled(ctx).await?;
                    match self.read_page(ctx, state).await? {
                        Some(page) => (page, None),
                        None => return Ok(()),
                    }
                }
            };
            let (writes, mut delta) = match decided {
                Some(d) => d,
                None => {
                    if in_flight.as_ref().is_some_and(|f| !f.ids.is_disjoint(&page.ids)) {
                        land(in_flight, progress).await?;
                    }
                    self.decide(ctx, &mut page).await?
                }
            };
            let overlap = page.phase == Phase::Scan && !page.scan_done && !sequential;
            let (written, read_next) = if overlap {
                let write = self.write_page(ctx, writes, &mut delta);
                let ahead = async {
                    let Some(mut after) = self.read_page(ctx, state).await? else {
                        return Ok(None);
                    };
                    let busy = |ids: &HashSet<String>| !ids.is_disjoint(&after.ids);
                    if busy(&page.ids) || in_flight.as_ref().is_some_and(|f| busy(&f.ids)) {
                        return Ok(Some((after, None)));
                    }
                    let decided = self.decide(ctx, &mut after).await?;
                    Ok::<_, RunError>(Some((after, Some(decided))))
                };
                tokio::join!(write, ahead)
            } else {
                (self.write_page(ctx, writes, &mut delta).await, Ok(None))
            };
            // A page whose writes are done is committed even when reading
            // the next one failed.
            let mut commit = written?;
            *counters += delta;
            let mut after = page.progress;
            // Decided once the last page is written: it may defer too.
            if page.scan_done {
                after.phase = after.phase.on(PhaseEvent::Scanned {
                    waiting: counters.deferred > 0 || counters.postponed > 0,
                });
                state.phase = after.phase;
            }
            let done = after.phase == Phase::Done;
            commit.checkpoint = Some(StepCheckpoint {
                run_id: ctx.run_id,
                tenant_id: self.tenant.clone(),
                stage: ctx.step.stage,
                entity_type: ctx.step.entity_type.clone(),
                direction: ctx.step.direction,
                state: after.phase.step_event().target(),
                cursor: Some(serde_json::to_value(&after).expect("progress serializes")),
                counters: *counters,
                error: None,
            });
            commit.sync_cursor = page.sync_cursor;
            commit.lease = Some(ctx.lease.clone());
            land(in_flight, progress).await?;
            *in_flight = Some(InFlight::start(&self.store, commit, page.ids, *counters));
            next = read_next?;
            if done {
                return Ok(());
            }
        }
    }

    /// Decides a page read by `read_page`, with counters of its own.
    pub(super) async fn decide(&self, ctx: &StepCtx<'_>, page: &mut ReadPage) -> Result<Decided, RunError> {
        let mut delta = StepCounters::default();
        let (mut records, mut bad, deleted) = (
            std::mem::take(&mut page.records),
            std::mem::take(&mut page.bad),
            std::mem::take(&mut page.deleted),
        );
        // An id with a NUL cannot be kept in the ID map (PostgreSQL holds
        // no NUL, and no store takes one): the row fails, unrecorded, its id
        // escaped in the reason.
        if records.iter().any(|r| r.id.contains('\0')) || bad.iter().any(|b| b.id.contains('\0')) {
            let (nul, kept): (Vec<Record>, Vec<Record>) =
                records.into_iter().partition(|r| r.id.contains('\0'));
            records = kept;
            let read_binding = self.binding(ctx.tables, ctx.read);
            let unkeepable = |id: &str, reason: Option<String>| BadRow {
                id: String::new(),
                reason: format!(
                    "system `{}`, table `{}`, row {id:?}: its id holds a NUL character, which the state store \
                     cannot keep; the row cannot be synced{}",
                    read_binding.system,
                    read_binding.table,
                    reason.map(|r| format!(" ({r})")).unwrap_or_default()
                ),
            };
            let mut rows = Vec::with_capacity(bad.len() + nul.len());
            for b in bad {
                rows.push(if b.id.contains('\0') {
                    unkeepable(&b.id, Some(b.reason))
                } else {
                    b
                });
            }
            rows.extend(nul.iter().map(|r| unkeepable(&r.id, None)));
            bad = rows;
        }
        // Read again by the scan, unchanged since the retry pass decided
        // it (or still unreadable, as the retry pass failed it): read, and
        // skipped, not counted twice.
        if page.phase == Phase::Scan || page.phase == Phase::Untimed {
            let retried = ctx.retried.lock().expect("retried records");
            if !retried.is_empty() {
                let before = records.len() + bad.len();
                records.retain(|r| retried.get(&r.id) != Some(&r.modified_at));
                bad.retain(|b| retried.get(&b.id) != Some(&UNREADABLE));
                let again = (before - records.len() - bad.len()) as u64;
                delta.read += again;
                delta.skipped += again;
            }
        }
        // The last look a record gets in this run: the patch pass of the
        // step after which no other reads its entity (in a bidirectional
        // integration the backward step reads what the forward step
        // could not compare).
        // (Refused records, read again after the patch pass, are decided
        // as it decides: nothing follows them in this step either.)
        let patching = matches!(page.phase, Phase::Patch | Phase::Refused);
        let last_pass = patching
            && (ctx.step.direction == StepDirection::Backward
                || self.workflow.direction == Direction::OneWay);
        let mut writes = self
            .decide_page(ctx, records, bad, deleted, (last_pass, patching), &mut delta)
            .await?;
        let (settled, gone) = std::mem::take(&mut page.settled);
        writes.commit.mappings.extend(settled);
        writes.commit.candidates.extend(gone);
        Ok((writes, delta))
    }

    /// Reads the step's next page (`None` once the step is done) and moves
    /// `state` past it.
    pub(super) async fn read_page(
        &self,
        ctx: &StepCtx<'_>,
        state: &mut StepProgress,
    ) -> Result<Option<ReadPage>, RunError> {
        let read_binding = self.binding(ctx.tables, ctx.read);
        let reader = self.connector(ctx.read);
        let page_size = self.options.page_size;
        // Rows without a change time, read by id on every run; a table
        // without such rows goes on to the scan in the same page.
        let mut untimed = None;
        let mut settled = (Vec::new(), Vec::new());
        if state.phase == Phase::Untimed {
            let page = reader
                .read_untimed(read_binding, state.untimed.as_ref(), page_size)
                .await?;
            if let Some(next) = &page.next {
                state.untimed = Some(next.id.clone());
            }
            let n = page.records.len() + page.bad.len() + page.deleted.len();
            if n > 0 {
                tracing::warn!(
                    system = reader.system(),
                    table = %read_binding.table,
                    rows = n,
                    "rows without a time in `updated_at` (NULL, or one no scan can pass): read on every run, \
                     their changes found by comparing values"
                );
                untimed = Some(page);
            } else {
                state.phase = state.phase.on(PhaseEvent::ReadUntimed { last: page.done });
            }
        }
        let phase = state.phase;
        let mut sync_cursor = None;
        let mut scan_done = false;
        let (records, bad, deleted) = match state.phase {
            Phase::Retry => {
                let unsettled = self
                    .store
                    .unsettled_mappings(&ctx.scope, state.retry_after, page_size)
                    .await?;
                state.retry_after = unsettled.last().map(|m| m.id);
                state.phase = state.phase.on(PhaseEvent::Retried {
                    last: unsettled.len() < page_size as usize,
                });
                let prefix = key_prefix(ctx.step.direction);
                let ids: Vec<String> = unsettled
                    .iter()
                    .filter(|m| {
                        m.idempotency_key
                            .as_deref()
                            .is_some_and(|k| k.starts_with(prefix))
                    })
                    .filter_map(|m| id_on(m, ctx.read).map(str::to_owned))
                    .collect();
                let found = reader.read_by_ids(read_binding, &ids).await?;
                let present = found.found_ids();
                let gone: Vec<&IdMapping> = unsettled
                    .iter()
                    .filter(|m| m.status == MappingStatus::Pending)
                    .filter(|m| {
                        m.idempotency_key
                            .as_deref()
                            .is_some_and(|k| k.starts_with(prefix))
                    })
                    .filter(|m| id_on(m, ctx.read).is_some_and(|id| !present.contains(id)))
                    .collect();
                settled = self.settle_gone_creates(ctx, &gone).await?;
                // A row that could not be read is kept as read at no time.
                ctx.retried.lock().expect("retried records").extend(
                    found
                        .records
                        .iter()
                        .map(|r| (r.id.clone(), r.modified_at))
                        .chain(found.bad.iter().map(|b| (b.id.clone(), UNREADABLE))),
                );
                (found.records, found.bad, Vec::new())
            }
            Phase::Untimed => {
                let page = untimed.expect("an untimed page with rows");
                state.phase = state.phase.on(PhaseEvent::ReadUntimed { last: page.done });
                (page.records, page.bad, page.deleted)
            }
            Phase::Scan => {
                if state.scan.is_none() && state.scan_start.is_none() {
                    let saved = self.store.load_sync_cursor(&ctx.scope, ctx.read).await?;
                    // A field synced since the cursor was saved (added to
                    // the definition, or to a table) is in no record synced
                    // before: the scan starts over once, so that every
                    // record gets it, not only those that change later.
                    let fields = synced_fields(ctx);
                    let widened = saved
                        .as_ref()
                        .and_then(|c| c.get(CURSOR_FIELDS))
                        .is_some_and(|was| *was != fields);
                    if widened {
                        tracing::info!(
                            entity = %ctx.step.entity_type,
                            table = %read_binding.table,
                            "the fields synced changed since the last run: every record is read again"
                        );
                    }
                    // A cursor an earlier version saved on a row without a
                    // time it can read (NULL, `infinity`, `now`, a year
                    // past 9999: such rows are read apart now), or as text
                    // where the table's times are Unix seconds, would end
                    // every scan there: the scan starts over once instead.
                    let seconds = read_binding
                        .stamp_like
                        .as_deref()
                        .is_some_and(|s| s.parse::<i64>().is_ok());
                    let sql = reader.finds_keys_at_once();
                    state.scan = saved
                        .filter(|_| !widened)
                        .and_then(|c| serde_json::from_value::<Cursor>(c).ok())
                        .filter(|c| !(c.updated_at.is_null() || c.updated_at == "infinity"))
                        .filter(|c| !(sql && left_behind(&c.updated_at, seconds)));
                    state.scan_start = state.scan.clone();
                }
                // A row stamped before this read may still be hidden by a
                // transaction that commits after it: the cursor the next run
                // starts from is no later than the system's lookback before
                // this read, so that run reads that stretch again.
                // A second more, for times kept to the second: the bound's
                // own second may hold rows of smaller id than the cursor's.
                // (`0s` turns the lookback off.)
                let lookback = self.workflow.system_on(ctx.read).lookback;
                let margin = if lookback.is_zero() { 0 } else { 1 };
                let bound = Utc::now() - lookback - chrono::Duration::seconds(margin);
                let page = reader
                    .read_changes(read_binding, state.scan.as_ref(), page_size)
                    .await?;
                // Rows ordered as the table cannot promise (times that do not
                // compare as they read) would have the scan read the same
                // page for ever: stopped, saying where.
                // (A SQL keyset is strict; an API's listing may hand back its
                // position by design, and a page that ends the scan cannot
                // loop.)
                let read_any = !(page.records.is_empty() && page.bad.is_empty() && page.deleted.is_empty());
                if reader.finds_keys_at_once()
                    && !page.done
                    && read_any
                    && page.next.is_some()
                    && page.next == state.scan
                {
                    return Err(ConnectorError::Config {
                        system: reader.system().to_owned(),
                        reason: format!(
                            "the change scan of table `{}` does not move past {:?}: its rows do not order by \
                             (updated_at, id) as they compare",
                            read_binding.table,
                            page.next.as_ref().map(|c| (&c.updated_at, &c.id))
                        ),
                    }
                    .into());
                }
                if let Some(next) = &page.next {
                    state.scan = Some(next.clone());
                    let mut saved = next.clone();
                    if let Some(earlier) = syncd_core::value::no_later_than(&saved.updated_at, bound) {
                        saved.updated_at = earlier;
                    }
                    let mut cursor = serde_json::to_value(&saved).expect("cursors serialize");
                    cursor[CURSOR_FIELDS] = synced_fields(ctx);
                    sync_cursor = Some(SyncCursor {
                        scope: ctx.scope.clone(),
                        side: ctx.read,
                        cursor,
                    });
                }
                scan_done = page.done;
                (page.records, page.bad, page.deleted)
            }
            // The scanned window again, then the rows without a time (read
            // by id, as the untimed pass read them).
            Phase::Patch if !state.patch_untimed => {
                let from = state.patch.clone().or_else(|| state.scan_start.clone());
                let page = reader
                    .read_changes(read_binding, from.as_ref(), page_size)
                    .await?;
                if page.next.is_some() {
                    state.patch = page.next.clone();
                }
                state.patch_untimed = page.done;
                (page.records, page.bad, Vec::new())
            }
            Phase::Patch => {
                let page = reader
                    .read_untimed(read_binding, state.patch_untimed_after.as_ref(), page_size)
                    .await?;
                if let Some(next) = &page.next {
                    state.patch_untimed_after = Some(next.id.clone());
                }
                state.phase = state.phase.on(PhaseEvent::Patched { last: page.done });
                (page.records, page.bad, Vec::new())
            }
            // Synced records whose last change was refused (by a system,
            // or for a reference not synced) before this run: read again
            // until they are written or agree again.
            Phase::Refused => {
                let refused = self
                    .store
                    .refused_before(&ctx.scope, ctx.run_started, state.refused_after, page_size)
                    .await?;
                state.refused_after = refused.last().map(|m| m.id).or(state.refused_after);
                state.phase = state.phase.on(PhaseEvent::ReadRefused {
                    last: refused.len() < page_size as usize,
                });
                let ids: Vec<String> = refused
                    .iter()
                    .filter_map(|m| id_on(m, ctx.read).map(str::to_owned))
                    .collect();
                let found = reader.read_by_ids(read_binding, &ids).await?;
                // Not there any more (deleted, or marked deleted): gone
                // from the side read, for the delete step, as the scan
                // finds a row marked deleted. (A SQL table answers by id
                // as it holds them; an API's record may echo its id in
                // another form, and is left to reconciliation.)
                let present = found.found_ids();
                let gone: Vec<String> = match reader.finds_keys_at_once() {
                    true => ids
                        .iter()
                        .filter(|id| !present.contains(id.as_str()))
                        .cloned()
                        .collect(),
                    false => Vec::new(),
                };
                (found.records, found.bad, gone)
            }
            Phase::Done => return Ok(None),
        };
        let ids: HashSet<String> = records
            .iter()
            .map(|r| &r.id)
            .chain(bad.iter().map(|b| &b.id))
            .chain(&deleted)
            .cloned()
            .collect();
        Ok(Some(ReadPage {
            records,
            bad,
            deleted,
            ids,
            settled,
            sync_cursor,
            scan_done,
            phase,
            progress: state.clone(),
        }))
    }

    /// Settles the pending creates of `gone`, whose records the retry pass
    /// did not find on the side read (deleted after a crash between the
    /// create and its commit): each was left pending on every run after,
    /// while the side written may hold the record it created. One the side
    /// written holds is mapped (its base what that side holds) and handed
    /// to the delete step as gone from the side read, which acts on it by
    /// the entity's policy; one it does not hold was never created and
    /// fails, saying so.
    async fn settle_gone_creates(
        &self,
        ctx: &StepCtx<'_>,
        gone: &[&IdMapping],
    ) -> Result<(Vec<MappingWrite>, Vec<syncd_core::deletes::DeleteCandidate>), RunError> {
        let (mut writes, mut candidates) = (Vec::new(), Vec::new());
        if gone.is_empty() {
            return Ok((writes, candidates));
        }
        let (read, write) = (ctx.read, ctx.write());
        let binding = self.binding(ctx.tables, write);
        let connector = self.connector(write);
        // The id each create has on the side written: given (text ids), or
        // found by its key (ids the system assigns).
        let written: HashMap<Uuid, String> = match binding.id_kind {
            IdKind::Text => gone
                .iter()
                .filter_map(|m| id_on(m, write).map(|id| (m.id, id.to_owned())))
                .collect(),
            IdKind::Assigned => {
                let keys: Vec<String> = gone.iter().filter_map(|m| m.idempotency_key.clone()).collect();
                let found = connector.find_by_keys(binding, &keys).await?;
                gone.iter()
                    .filter_map(|m| {
                        let key = m.idempotency_key.as_ref()?;
                        found.get(key).map(|id| (m.id, id.clone()))
                    })
                    .collect()
            }
        };
        let ids: Vec<String> = written.values().cloned().collect();
        let found = connector.read_by_ids(binding, &ids).await?;
        let unreadable: HashSet<&str> = found.bad.iter().map(|b| b.id.as_str()).collect();
        let held: HashMap<&str, &Record> = found.records.iter().map(|r| (r.id.as_str(), r)).collect();
        let step = self.decision_step(ctx);
        for m in gone {
            let id = written.get(&m.id).map(String::as_str);
            if id.is_some_and(|id| unreadable.contains(id)) {
                // Held, but not readable: left pending, as before.
                continue;
            }
            let Some(record) = id.and_then(|id| held.get(id)) else {
                writes.push(MappingWrite::Transition {
                    current: (*m).clone(),
                    change: MappingChange::Fail {
                        error: format!(
                            "the {} record is gone since this create was tried, and the {} holds no record it \
                             created: there is nothing to create",
                            read.as_str(),
                            write.as_str()
                        ),
                    },
                });
                continue;
            };
            let base = match write {
                Side::Source => record.fields.clone(),
                Side::Target => {
                    let maps = self
                        .reference_maps(ctx.tables, Side::Target, &[&record.fields])
                        .await?;
                    ctx.tables
                        .refs
                        .rewrite(&maps, Side::Target, &record.fields)
                        .fields
                }
            };
            let read_id = id_on(m, read).unwrap_or_default().to_owned();
            let (source_id, target_id) = match read {
                Side::Source => (read_id, record.id.clone()),
                Side::Target => (record.id.clone(), read_id),
            };
            writes.push(MappingWrite::Transition {
                current: (*m).clone(),
                change: MappingChange::Confirm {
                    source_id,
                    target_id,
                    base,
                },
            });
            candidates.push(step.candidate(m.id, syncd_core::deletes::Gone::on(read)));
        }
        Ok((writes, candidates))
    }

    /// The mappings of the records of `entity` whose ids on `from` are
    /// `ids`, by id: for their status and ids, as read without their base
    /// snapshots (`Store::lookup_links`).
    pub(super) async fn translate(
        &self,
        entity: &str,
        from: Side,
        ids: Vec<String>,
    ) -> Result<HashMap<String, Arc<IdMapping>>, RunError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self.store.lookup_links(&self.scope(entity), from, &ids).await?)
    }

    /// Translation tables for reference values of `records`, from `from`.
    pub(super) async fn reference_maps(
        &self,
        tables: &EntityTables,
        from: Side,
        records: &[&Fields],
    ) -> Result<syncd_core::references::RefMaps, RunError> {
        // One lookup per referenced entity type, all at once.
        let lookups = tables
            .refs
            .values(records)
            .into_iter()
            .map(|(entity, ids)| async move {
                let found = self.translate(&entity, from, ids).await?;
                Ok::<_, RunError>((entity, found))
            });
        Ok(futures_util::future::try_join_all(lookups)
            .await?
            .into_iter()
            .collect())
    }

    /// Processes one page of records read from `ctx.read`; performs the
    /// writes and returns what the page's final transaction must commit.
    pub(super) async fn process_page(
        &self,
        ctx: &StepCtx<'_>,
        records: Vec<Record>,
        bad: Vec<BadRow>,
        deleted: Vec<String>,
        counters: &mut StepCounters,
    ) -> Result<PageCommit, RunError> {
        let writes = self
            .decide_page(ctx, records, bad, deleted, (false, false), counters)
            .await?;
        self.write_page(ctx, writes, counters).await
    }

    /// The first half of a page: reads what the records' decisions need
    /// (mappings, open conflicts, references, counterparts) and decides
    /// them. Writes nothing, so it can run while the page before is written.
    /// In the step's last pass a record still waiting for a reference
    /// fails with the reason instead of waiting on; in its patch pass, one
    /// whose self-reference is still not mapped (`(last_pass, patching)`;
    /// see `decide::Page`).
    pub(super) async fn decide_page(
        &self,
        ctx: &StepCtx<'_>,
        records: Vec<Record>,
        bad: Vec<BadRow>,
        deleted: Vec<String>,
        (last_pass, patching): (bool, bool),
        counters: &mut StepCounters,
    ) -> Result<PageWrites, RunError> {
        let now = Utc::now();
        let read = ctx.read;
        let write = ctx.write();
        let tables = ctx.tables;
        for b in &bad {
            tracing::warn!(id = %b.id, reason = %b.reason, "bad row");
        }
        // Open conflicts, mappings, the mappings of rows marked deleted and
        // the translation of the records' references are independent
        // reads: they go together.
        // A step that began on an empty scope asks only about the ids it
        // has decided before; it has decided these now.
        let (ids, all_ids, deleted_ids) = {
            let mut seen = ctx.seen.as_ref().map(|s| s.lock().expect("seen ids"));
            let mut asked = |id: &&String| seen.as_mut().is_none_or(|s| s.insert(id));
            let ids: Vec<String> = records
                .iter()
                .map(|r| &r.id)
                .filter(&mut asked)
                .cloned()
                .collect();
            let mut all_ids = ids.clone();
            all_ids.extend(bad.iter().map(|b| &b.id).filter(&mut asked).cloned());
            let deleted_ids: Vec<String> = deleted.iter().filter(&mut asked).cloned().collect();
            (ids, all_ids, deleted_ids)
        };
        let read_fields: Vec<&Fields> = records.iter().map(|r| &r.fields).collect();
        let (open, mappings, deleted_mappings, read_maps) = tokio::try_join!(
            async {
                Ok::<_, RunError>(match ids.is_empty() {
                    true => HashSet::new(),
                    false => self.store.open_conflicts(&ctx.scope, read, &ids).await?,
                })
            },
            async {
                Ok::<_, RunError>(match all_ids.is_empty() {
                    true => HashMap::new(),
                    false => self.store.lookup_current(&ctx.scope, read, &all_ids).await?,
                })
            },
            async {
                Ok::<_, RunError>(match deleted_ids.is_empty() {
                    true => HashMap::new(),
                    false => self.store.lookup_current(&ctx.scope, read, &deleted_ids).await?,
                })
            },
            self.reference_maps(tables, read, &read_fields),
        )?;

        // Counterparts of mapped records (records waiting for a reviewer
        // aside), by their id on the write side.
        let deciding = records.iter().filter(|r| !open.contains(&r.id));
        let counterpart_ids = decide::counterpart_ids(deciding, &mappings, write);
        let found = self
            .connector(write)
            .read_by_ids(self.binding(tables, write), &counterpart_ids)
            .await?;
        let counterparts: HashMap<String, Record> =
            found.records.into_iter().map(|r| (r.id.clone(), r)).collect();
        // Counterparts that exist but cannot be read: not gone, unreadable.
        let unreadable: HashMap<String, String> = found.bad.into_iter().map(|b| (b.id, b.reason)).collect();
        // Target records' references into source ids (the space records
        // are compared and based in).
        let target_maps = match read {
            Side::Target => read_maps.clone(),
            Side::Source => {
                let target_records: Vec<&Fields> = counterparts.values().map(|r| &r.fields).collect();
                self.reference_maps(tables, Side::Target, &target_records).await?
            }
        };

        // The ids the creates of this page would take on the side written,
        // asked of the ID map: one an earlier record was created under
        // (its id since deleted and reused for a new one) is another's.
        // (Not in a step that began on an empty scope: no mapping but its
        // own decisions' can hold one.)
        let step = self.decision_step(ctx);
        let held = match ctx.seen.is_none() && step.write_text_ids {
            false => HashMap::new(),
            true => {
                let derived: HashMap<String, &str> = records
                    .iter()
                    .filter(|r| !open.contains(&r.id))
                    .filter(|r| {
                        mappings
                            .get(&r.id)
                            .is_none_or(|m| m.status == MappingStatus::Failed)
                    })
                    .map(|r| (step.create_key(&r.id).1.to_string(), r.id.as_str()))
                    .collect();
                match derived.is_empty() {
                    true => HashMap::new(),
                    false => {
                        let ids: Vec<String> = derived.keys().cloned().collect();
                        self.store
                            .lookup_current(&ctx.scope, write, &ids)
                            .await?
                            .into_iter()
                            .filter(|(id, m)| id_on(m, read) != Some(derived[id]))
                            .map(|(id, m)| (id, m.id))
                            .collect()
                    }
                }
            }
        };

        let page = decide::Page {
            records,
            bad,
            deleted,
            deleted_mappings,
            open,
            mappings,
            read_maps,
            target_maps,
            counterparts,
            held,
            unreadable,
            last_pass,
            patching,
            now,
        };
        let keepable = |what: &dyn Fn() -> String, fields: &Fields| self.store.unkeepable(what, fields);
        let d = decide::decide_page(&step, page, &keepable, &mut Uuid::now_v7);
        *counters += d.counters;
        Ok(PageWrites {
            now,
            commit: PageCommit {
                mappings: d.mappings,
                conflicts: d.conflicts,
                candidates: d.candidates,
                ..PageCommit::default()
            },
            reserve: d.reserve,
            actions: d.creates,
            updates_source: d.updates_source,
            updates_target: d.updates_target,
            confirms: d.confirms,
            patching: d.patching,
        })
    }

    /// The step `ctx` as the page decisions see it.
    pub(super) fn decision_step<'a>(&'a self, ctx: &'a StepCtx<'_>) -> decide::Step<'a> {
        decide::Step {
            integration: self.workflow.name.as_str(),
            tenant: &self.tenant,
            run_id: ctx.run_id,
            scope: &ctx.scope,
            direction: ctx.step.direction,
            read: ctx.read,
            def: &ctx.tables.def,
            refs: &ctx.tables.refs,
            strategy: self
                .workflow
                .strategy_for(&self.tenant, ctx.step.entity_type.as_str()),
            sync: self.workflow.direction,
            write_text_ids: self.binding(ctx.tables, ctx.write()).id_kind == IdKind::Text,
        }
    }
}

/// Where a saved sync cursor keeps the fields synced when it was saved.
const CURSOR_FIELDS: &str = "fields";

/// The fields a step syncs, as `field=read column>write column` in field
/// order: what a saved cursor is compared with.
fn synced_fields(ctx: &StepCtx<'_>) -> serde_json::Value {
    let (read, write) = match ctx.read {
        syncd_core::record::Side::Source => (&ctx.tables.source, &ctx.tables.target),
        syncd_core::record::Side::Target => (&ctx.tables.target, &ctx.tables.source),
    };
    let column = |b: &syncd_connect::TableBinding, cdm: &str| {
        b.fields
            .iter()
            .find(|f| f.cdm == cdm)
            .map(|f| f.column.clone())
            .unwrap_or_default()
    };
    serde_json::Value::from(
        read.fields
            .iter()
            .map(|f| format!("{}={}>{}", f.cdm, f.column, column(write, &f.cdm)))
            .collect::<Vec<_>>(),
    )
}

/// Whether a SQL scan's saved `updated_at` is one the scan no longer
/// reaches (see `sql::time_condition`): text that does not start as a date
/// does (`now`, a year past 9999), or text where the table's times are
/// Unix seconds (`seconds`), which orders after every number.
fn left_behind(at: &serde_json::Value, seconds: bool) -> bool {
    let Some(text) = at.as_str() else {
        return false;
    };
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let dated =
        digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-') && digits(8..10);
    seconds || !dated
}
