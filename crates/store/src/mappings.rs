//! The ID map through the store: lookups (cache first), page commits decided by the core's mapping lifecycle, reservations, and what the store cannot keep.

use super::*;
use std::sync::Arc;

impl Store {
    /// The mappings of `ids` (ids on `side`) within `scope`, by id. Ids with
    /// no mapping are absent. Reads the cache first, then the database for
    /// what the cache did not have (one query), and fills the cache.
    pub async fn lookup(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashMap<String, IdMapping>, StoreError> {
        Ok(self
            .lookup_shared(scope, side, ids)
            .await?
            .into_iter()
            .map(|(id, m)| (id, Arc::unwrap_or_clone(m)))
            .collect())
    }

    /// Empties the in-process mapping cache (see
    /// [`MappingCache::forget_local`]).
    pub fn forget_local_cache(&self) {
        self.cache.forget_local();
    }

    /// The mappings of `ids` as the database holds them now (one query),
    /// which then refresh the cache: for what a decision rests on (a
    /// page's records, a reviewer's decision). A cached entry can be older
    /// than the database: another process (a worker with its own
    /// in-process cache, a `syncd run`, one with another Redis prefix)
    /// changed the mapping, an update was lost while Redis was away, or
    /// the store was restored from a backup. Acting on it would skip a
    /// record that is mapped, or settle a conflict on an old base.
    pub async fn lookup_current(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashMap<String, IdMapping>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        self.load_into(scope, side, ids, true, &mut found).await?;
        Ok(found
            .into_iter()
            .map(|(id, m)| (id, Arc::unwrap_or_clone(m)))
            .collect())
    }

    /// [`Store::lookup`], the mappings shared with the cache rather than
    /// copied out of it: for readers that only look (reference
    /// translation reads a parent's status and id, not its base).
    pub async fn lookup_shared(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashMap<String, Arc<IdMapping>>, StoreError> {
        self.lookup_cached_first(scope, side, ids, true).await
    }

    /// The mappings of `ids` for what links records (reference
    /// translation reads each parent's status and ids): from the cache
    /// as they are, and what the cache does not hold from the database
    /// without its base snapshot (`base` is `None`), which is then not
    /// cached, so that no reader that needs the base is ever handed one
    /// without it.
    pub async fn lookup_links(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashMap<String, Arc<IdMapping>>, StoreError> {
        self.lookup_cached_first(scope, side, ids, false).await
    }

    async fn lookup_cached_first(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
        with_base: bool,
    ) -> Result<HashMap<String, Arc<IdMapping>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        let cached = if self.cache.is_enabled() {
            self.cache.get_many(&self.cache.keys(scope, side, ids)).await
        } else {
            None
        };
        let mut not_cached = Vec::new();
        let to_load: &[String] = match cached {
            Some(cached) => {
                for (id, hit) in ids.iter().zip(cached) {
                    match hit {
                        Some(m) => {
                            found.insert(id.clone(), m);
                        }
                        None => not_cached.push(id.clone()),
                    }
                }
                &not_cached
            }
            None => ids,
        };
        if to_load.is_empty() {
            return Ok(found);
        }
        self.load_into(scope, side, to_load, with_base, &mut found)
            .await?;
        Ok(found)
    }

    /// Reads the mappings of `ids` from the database into `found`, by
    /// their id on `side`; those read with their base refresh the cache.
    async fn load_into(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
        with_base: bool,
        found: &mut HashMap<String, Arc<IdMapping>>,
    ) -> Result<(), StoreError> {
        // No mapping holds an id with a NUL (PostgreSQL cannot keep one, so
        // no store takes one): not asked for, which PostgreSQL would refuse.
        let storable: Vec<String>;
        let ids = if ids.iter().any(|id| id.contains('\0')) {
            storable = ids.iter().filter(|id| !id.contains('\0')).cloned().collect();
            &storable[..]
        } else {
            ids
        };
        if ids.is_empty() {
            return Ok(());
        }
        let loaded: Vec<Arc<IdMapping>> =
            on_backend!(self, b => b.fetch_mappings(scope, side, ids, with_base).await?)
                .into_iter()
                .map(Arc::new)
                .collect();
        if with_base && self.cache.is_enabled() {
            self.cache.put_many(&loaded).await;
        }
        for m in loaded {
            let id = match side {
                Side::Source => m.source_id.clone(),
                Side::Target => m.target_id.clone(),
            };
            if let Some(id) = id {
                found.insert(id, m);
            }
        }
        Ok(())
    }

    /// Why the store cannot keep `fields` (a record's base snapshot, or
    /// the values of a conflict, named by `what`): over the size limit, or
    /// (PostgreSQL's `jsonb`) text holding a NUL character. Checked before
    /// the record is written, so that it fails alone.
    pub fn unkeepable(
        &self,
        what: impl FnOnce() -> String,
        fields: &syncd_core::record::Fields,
    ) -> Option<String> {
        if matches!(self.backend, Backend::Postgres(_))
            && let Some((field, _)) = fields.iter().find(|(k, v)| k.contains('\0') || holds_nul(v))
        {
            return Some(format!(
                "{}: field `{}` holds text with a NUL character, which the PostgreSQL state store cannot keep",
                what(),
                field.escape_debug()
            ));
        }
        // Most records are far below the limit: a bound that holds for any
        // JSON text of them (each byte escaped to at most six) spares
        // writing them out. (A conflict keeps a record's id and time too.)
        if json_bound(fields) + 128 <= self.max_snapshot_bytes {
            return None;
        }
        self.check_size(what, fields).err().map(|e| e.to_string())
    }

    pub(super) fn check_size(
        &self,
        what: impl FnOnce() -> String,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let mut counter = ByteCount(0);
        let bytes = match serde_json::to_writer(&mut counter, value) {
            Ok(()) => counter.0,
            Err(_) => usize::MAX,
        };
        if bytes > self.max_snapshot_bytes {
            return Err(StoreError::TooLarge {
                what: what(),
                bytes,
                limit: self.max_snapshot_bytes,
            });
        }
        Ok(())
    }

    /// Runs every mapping write through the core and checks sizes; nothing
    /// is written if any of them is refused.
    pub(super) fn decide(
        &self,
        writes: Vec<MappingWrite>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Decided>, StoreError> {
        writes
            .into_iter()
            .map(|w| {
                let decided = match w {
                    MappingWrite::Insert(mut m) => {
                        // A mapping is born pending; one whose first attempt
                        // failed in the same page is inserted as failed.
                        if !matches!(m.status, MappingStatus::Pending | MappingStatus::Failed) {
                            return Err(StoreError::NotPending {
                                entity_type: m.entity_type.to_string(),
                                record: record_name(&m),
                                status: m.status,
                            });
                        }
                        m.version = 1;
                        Decided {
                            next: m,
                            read_version: None,
                        }
                    }
                    MappingWrite::Transition { current, change } => {
                        let read_version = current.version;
                        Decided {
                            next: applied(current, change, now)?,
                            read_version: Some(read_version),
                        }
                    }
                    MappingWrite::Settle { held, change } => Decided {
                        next: applied(held, change, now)?,
                        read_version: None,
                    },
                };
                if let Some(base) = &decided.next.base {
                    self.check_size(
                        || {
                            format!(
                                "base snapshot of {} `{}`",
                                decided.next.entity_type,
                                record_name(&decided.next)
                            )
                        },
                        base,
                    )?;
                }
                Ok(decided)
            })
            .collect()
    }

    /// Commits one page: mapping writes, conflict records and the step
    /// checkpoint in one transaction, then updates the cache. Returns the
    /// mappings as stored (shared with the cache, not copied). On any error
    /// nothing of the page is written.
    pub async fn commit_page(&self, page: PageCommit) -> Result<Vec<Arc<IdMapping>>, StoreError> {
        Ok(self.commit(page).await?.0)
    }

    /// [`Store::commit_page`], giving the page back without its mappings.
    pub(super) async fn commit(
        &self,
        mut page: PageCommit,
    ) -> Result<(Vec<Arc<IdMapping>>, PageCommit), StoreError> {
        let now = Utc::now();
        let decided = self.decide(std::mem::take(&mut page.mappings), now)?;
        for c in &page.conflicts {
            self.check_size(
                || {
                    format!(
                        "source record of {} `{}` in conflict {}",
                        c.entity_type, c.source_record.id, c.id
                    )
                },
                &c.source_record,
            )?;
            self.check_size(
                || {
                    format!(
                        "target record of {} `{}` in conflict {}",
                        c.entity_type, c.target_record.id, c.id
                    )
                },
                &c.target_record,
            )?;
        }
        // The entries go before the commit and come back after it: a commit
        // that lands while its cache update never runs (the future dropped
        // or the process killed in between) must not leave the cache with
        // the versions it replaced, which the next attempt would read and
        // then fail to update ("changed concurrently").
        if self.cache.is_enabled() {
            let next: Vec<&IdMapping> = decided.iter().map(|d| &d.next).collect();
            let keys: Vec<String> = self
                .cache
                .keys_of_each(&next)
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            self.cache.delete_many(&keys).await;
        }
        on_backend!(self, b => b.commit_page(PageWrite {
            decided: &decided,
            page: &page,
            now
        })
        .await?);
        let stored: Vec<Arc<IdMapping>> = decided.into_iter().map(|d| Arc::new(d.next)).collect();
        if self.cache.is_enabled() {
            self.cache.put_many(&stored).await;
        }
        Ok((stored, page))
    }

    /// Reserves the mappings of a page's creates before their records are
    /// written. New mappings (`Insert`, `pending` with no base) are held
    /// in one reservation row, not written to the ID map: the page's commit
    /// inserts them as they end (`MappingWrite::Settle`) and deletes the
    /// row, so a created record costs the ID map one row write, not two.
    /// Transitions (retries of failed or stale mappings) and any other
    /// insert are written as usual. A reservation left by a page that never committed (a crash)
    /// becomes `pending` mappings at the next start of a step of its scope
    /// ([`Store::settle_leftovers`]), which the step's retry pass then
    /// finishes like any other. Returns the reservation (if any mapping is
    /// held) and the mappings as stored.
    pub async fn reserve(
        &self,
        scope: &EntityScope,
        writes: Vec<MappingWrite>,
        lease: &Lease,
    ) -> Result<(Option<Reservation>, Vec<IdMapping>), StoreError> {
        let (new, others): (Vec<MappingWrite>, Vec<MappingWrite>) = writes
            .into_iter()
            .partition(|w| matches!(w, MappingWrite::Insert(m) if Reservation::can_hold(m)));
        let held: Vec<IdMapping> = self
            .decide(new, Utc::now())?
            .into_iter()
            .map(|d| d.next)
            .collect();
        let reservation = (!held.is_empty()).then(|| Reservation {
            id: Uuid::now_v7(),
            scope: scope.clone(),
            held,
        });
        let (stored, page) = self
            .commit(PageCommit {
                mappings: others,
                lease: Some(lease.clone()),
                reserve: reservation,
                ..Default::default()
            })
            .await?;
        Ok((
            page.reserve,
            stored.into_iter().map(Arc::unwrap_or_clone).collect(),
        ))
    }

    /// Turns the reservations of `scope` that no page settled (their page
    /// never committed) into `pending` mappings, skipping any whose source
    /// or target id has a mapping by now. Returns how many were added.
    pub async fn settle_leftovers(&self, scope: &EntityScope, lease: &Lease) -> Result<u64, StoreError> {
        on_backend!(self, b => b.settle_leftovers(scope, lease).await)
    }

    /// Whether `scope` holds nothing yet (no mapping, no reservation, no
    /// pending conflict) and no run of the integration but `run_id` holds
    /// a live lease. A step of `run_id` that finds its scope empty knows
    /// that the only mappings it can meet are those of records it decided
    /// itself (one run of an integration at a time, its steps of one
    /// entity type one after the other), so it need not look up the others.
    pub async fn scope_is_empty(&self, scope: &EntityScope, run_id: Uuid) -> Result<bool, StoreError> {
        on_backend!(self, b => b.scope_is_empty(scope, run_id).await)
    }

    /// The checkpoint of one step, if it has committed a page.
    pub async fn load_checkpoint(
        &self,
        run_id: Uuid,
        entity_type: &str,
        direction: StepDirection,
    ) -> Result<Option<StepCheckpoint>, StoreError> {
        Ok(self
            .load_steps(run_id)
            .await?
            .into_iter()
            .find(|s| s.entity_type.as_str() == entity_type && s.direction == direction))
    }

    /// Pending or failed mappings of `scope` after `after` (by id), for the
    /// retry pass at the start of a step.
    pub async fn unsettled_mappings(
        &self,
        scope: &EntityScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        on_backend!(self, b => b.unsettled_mappings(scope, after, limit).await)
    }

    /// `mapped` mappings of `scope` with a `last_error` (a change a system
    /// refused, a reference that could not be written) last written before
    /// `before`, after `after` (by id): for the pass after a step's scan,
    /// which reads their records again until they are written. `before`
    /// is the run's start, so that what the run itself decided is left.
    pub async fn refused_before(
        &self,
        scope: &EntityScope,
        before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        on_backend!(self, b => b.refused_before(scope, before, after, limit).await)
    }

    /// The mapping of one record, for operators: from the ID map, or else
    /// the `pending` one a reservation holds (see [`Store::reserve`]).
    pub async fn find_mapping(
        &self,
        scope: &EntityScope,
        side: Side,
        id: &str,
    ) -> Result<Option<IdMapping>, StoreError> {
        if let Some(m) = self
            .lookup_current(scope, side, &[id.to_owned()])
            .await?
            .remove(id)
        {
            return Ok(Some(m));
        }
        let rows = on_backend!(self, b => b.reservations(scope).await)?;
        let on_side = |m: &IdMapping| match side {
            Side::Source => m.source_id.as_deref() == Some(id),
            Side::Target => m.target_id.as_deref() == Some(id),
        };
        Ok(held_mappings(scope, &rows)?.into_iter().find(on_side))
    }

    /// Mappings of `scope` with `status`, for operators. `pending` ones
    /// include those a reservation still holds (a page in flight, or one a
    /// crash left until a step of the scope starts again).
    pub async fn mappings_with_status(
        &self,
        scope: &EntityScope,
        status: MappingStatus,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        let mut found = on_backend!(self, b => b.mappings_with_status(scope, status, false, limit).await)?;
        if status == MappingStatus::Pending && found.len() < limit as usize {
            let rows = on_backend!(self, b => b.reservations(scope).await)?;
            let held = held_mappings(scope, &rows)?;
            found.extend(held.into_iter().take(limit as usize - found.len()));
        }
        Ok(found)
    }

    /// Up to `limit` `mapped` mappings of `scope` whose last change was not
    /// written (`last_error` says why: a value the other side cannot hold,
    /// a refusal), for operators: synced records that are out of step.
    pub async fn refused_mappings(
        &self,
        scope: &EntityScope,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        on_backend!(self, b => b.mappings_with_status(scope, MappingStatus::Mapped, true, limit).await)
    }

    /// Counts mappings of `tenant` and `integration` by entity type and status.
    /// The entity types of `tenant`'s `integration` that hold a mapping
    /// in this store (an index lookup an entity type, not a count).
    pub async fn mapped_entity_types(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Vec<String>, StoreError> {
        on_backend!(self, b => b.mapped_entity_types(tenant, integration).await)
    }

    pub async fn mapping_counts(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Vec<(String, MappingStatus, u64)>, StoreError> {
        on_backend!(self, b => b.mapping_counts(tenant, integration).await)
    }
}

/// Whether `v` holds a NUL character in a string or a key.
pub(super) fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(holds_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A bound on the size of the JSON text of `fields`: names and strings
/// escaped to six bytes each at most, numbers as written, and a few bytes
/// of punctuation a value.
pub(super) fn json_bound(fields: &syncd_core::record::Fields) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Null | serde_json::Value::Bool(_) => 5,
            serde_json::Value::Number(n) => n.as_str().len(),
            serde_json::Value::String(s) => 6 * s.len() + 2,
            serde_json::Value::Array(a) => 2 + a.iter().map(|v| value(v) + 1).sum::<usize>(),
            serde_json::Value::Object(o) => {
                2 + o.iter().map(|(k, v)| 6 * k.len() + 4 + value(v)).sum::<usize>()
            }
        }
    }
    2 + fields
        .iter()
        .map(|(k, v)| 6 * k.len() + 4 + value(v))
        .sum::<usize>()
}

/// How a mapping is named in messages: its source id, else its target id.
pub(super) fn record_name(m: &IdMapping) -> String {
    m.source_id
        .as_deref()
        .or(m.target_id.as_deref())
        .unwrap_or("?")
        .to_owned()
}

/// `mapping` after `change`, one version on, or the core's refusal.
pub(super) fn applied(
    mut mapping: IdMapping,
    change: MappingChange,
    now: DateTime<Utc>,
) -> Result<IdMapping, StoreError> {
    // `apply` leaves the mapping as it was when it refuses.
    if let Err(source) = mapping.apply(change, now) {
        return Err(StoreError::Transition {
            entity_type: mapping.entity_type.to_string(),
            record: record_name(&mapping),
            source,
        });
    }
    mapping.version += 1;
    Ok(mapping)
}
