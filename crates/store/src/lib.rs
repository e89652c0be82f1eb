//! Durable state: ID mappings, conflicts, runs, steps and schedules.
//!
//! Two backends with their own SQL behind one type: PostgreSQL for
//! production and SQLite as the embedded default, picked from one URL.
//! Mapping lookups read through the [`MappingCache`]; every write goes to the
//! database first, in one transaction per page, and only then to the cache.
//!
//! The store never decides a mapping transition: [`MappingWrite`]s are run
//! through [`IdMapping::apply`] before anything is written, and the database
//! update is conditional on the version that was read, so a transition that
//! lost a race aborts its whole page instead of overwriting the winner.

pub mod cache;
mod postgres;
mod sqlite;

use crate::cache::MappingCache;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use syncd_core::conflict::{ConflictRecord, ConflictStatus};
use syncd_core::deletes::Gone;
use syncd_core::ids::{EntityScope, EntityType, IntegrationId, TenantId};
use syncd_core::mapping::{IdMapping, MappingChange, MappingStatus, TransitionError};
use syncd_core::record::Side;
use syncd_core::run::StepCheckpoint;
use syncd_core::run::{PlannedStep, ResumeRefused, RunEvent, RunState, RunTransitionError, StepDirection};
use uuid::Uuid;

pub use syncd_core::deletes::DeleteCandidate;
pub use syncd_core::mapping::MappingWrite;

pub use postgres::{CUSTOM_PLANS, PgStore};
pub use sqlite::SqliteStore;

/// Default database when `SYNCD_DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://syncd.db";

/// Default bound on one stored JSON document (base snapshot or record).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;

/// Errors of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{}` (expected postgres://... or sqlite://...)", syncd_core::redact::redacted(.0))]
    UnsupportedUrl(String),
    /// The core refused a transition, or a concurrent writer got there first
    /// and the transition is not allowed from the state it left.
    #[error("{entity_type} mapping `{record}`: {source}")]
    Transition {
        entity_type: String,
        record: String,
        #[source]
        source: TransitionError,
    },
    /// A concurrent writer changed the mapping since it was read.
    #[error(
        "{entity_type} mapping `{record}` was changed concurrently (read version {read}); reload and retry"
    )]
    Concurrent {
        entity_type: String,
        record: String,
        read: u64,
    },
    /// A source or target id that already has a mapping in its scope.
    #[error("a mapping with the same source or target id already exists in this scope ({detail})")]
    Duplicate { detail: String },
    #[error("new {entity_type} mapping `{record}` must start as pending (or failed), not {status}")]
    NotPending {
        entity_type: String,
        record: String,
        status: MappingStatus,
    },
    #[error("`{name}` names more than one token: name it by its id (`syncd tokens list`)")]
    AmbiguousToken { name: String },
    #[error(
        "{what} is {bytes} bytes, over the limit of {limit} bytes (set SYNCD_MAX_SNAPSHOT_BYTES to change it)"
    )]
    TooLarge {
        what: String,
        bytes: usize,
        limit: usize,
    },
    #[error("corrupt {table} row: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("tenant `{tenant}` already has an active run {run_id} of integration `{integration}`")]
    ActiveRun {
        tenant: String,
        integration: String,
        run_id: Uuid,
    },
    #[error("run {run_id}: {source}")]
    RunTransition {
        run_id: Uuid,
        #[source]
        source: RunTransitionError,
    },
    #[error("run {run_id} changed state concurrently (it is no longer {expected})")]
    RunChanged { run_id: Uuid, expected: RunState },
    #[error("run {run_id}: this worker ({worker_id}) {}", match holder {
        Some(other) => format!("lost its lease: worker `{other}` took the run over and goes on with it"),
        None => "let its lease expire (the state store was out of reach, or the process paused, for longer than \
                 the lease); the run goes on from its last checkpoint with the next `syncd run`, `syncd runs \
                 resume` or worker".to_owned(),
    })]
    LeaseLost {
        run_id: Uuid,
        worker_id: String,
        /// The worker that holds the lease now, if another one does.
        holder: Option<String>,
    },
    #[error("conflict {id} is not pending (already resolved, or not this tenant's)")]
    ConflictNotPending { id: Uuid },
    /// The reservation a page was to settle is no longer there: a step
    /// start elsewhere turned it into `pending` mappings (see
    /// `Store::reserve`). Only a second process under the same worker id
    /// gets past the lease fence to see this.
    #[error(
        "reservation {id} was already turned into pending mappings by another process \
         (two workers with one worker id?); this page is not committed, the next run finishes it"
    )]
    ReservationGone { id: Uuid },
    #[error("run {run_id} cannot be resumed: {source}")]
    NotResumable {
        run_id: Uuid,
        #[source]
        source: ResumeRefused,
    },
}

/// The PostgreSQL notification channel on which a run that may be resumed
/// is announced, by the resolution that decides a suspended run's last
/// conflict and by an operator's resume. The payload is `SCHEMA RUN_ID`:
/// channels are per database, and a store hears only its own schema's runs.
pub const RESUME_CHANNEL: &str = "syncd_resume";

/// What a [`ResumeListener`] heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeSignal {
    /// A run of this store may be resumed (its id, as announced).
    Run(String),
    /// The connection was lost and is back; announcements made meanwhile
    /// are lost, so look for work.
    Reconnected,
}

/// A subscription to [`RESUME_CHANNEL`] (PostgreSQL only).
pub struct ResumeListener {
    listener: sqlx::postgres::PgListener,
    schema: String,
}

impl ResumeListener {
    /// Waits for the next announcement of this store's schema. A lost
    /// connection is re-established (and re-subscribed) before
    /// [`ResumeSignal::Reconnected`] is returned; an error means it could
    /// not be.
    pub async fn recv(&mut self) -> Result<ResumeSignal, StoreError> {
        loop {
            let Some(n) = self.listener.try_recv().await? else {
                return Ok(ResumeSignal::Reconnected);
            };
            if let Some((schema, run)) = n.payload().split_once(' ')
                && schema == self.schema
            {
                return Ok(ResumeSignal::Run(run.to_owned()));
            }
        }
    }
}

/// How to reach the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `postgres://...` or `sqlite://...`.
    pub database_url: String,
    /// Largest JSON document (snapshot, record) accepted, in bytes.
    pub max_snapshot_bytes: usize,
}

impl StoreConfig {
    /// `SYNCD_DATABASE_URL` (default `sqlite://syncd.db`) and
    /// `SYNCD_MAX_SNAPSHOT_BYTES` (default 16 MiB).
    pub fn from_env() -> StoreConfig {
        StoreConfig {
            database_url: std::env::var("SYNCD_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into()),
            max_snapshot_bytes: std::env::var("SYNCD_MAX_SNAPSHOT_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_SNAPSHOT_BYTES),
        }
    }

    /// A config for `database_url` with default limits.
    pub fn new(database_url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            database_url: database_url.into(),
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
        }
    }
}

/// Pending mappings a page reserved before it created their records,
/// kept as one row of their own rather than as rows of the ID map (see
/// [`Store::reserve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub id: Uuid,
    pub scope: EntityScope,
    pub held: Vec<IdMapping>,
}

/// Everything one page of a step commits, atomically.
#[derive(Clone, Debug, Default)]
pub struct PageCommit {
    pub mappings: Vec<MappingWrite>,
    pub conflicts: Vec<ConflictRecord>,
    pub checkpoint: Option<StepCheckpoint>,
    /// Where the next run's change scan starts.
    pub sync_cursor: Option<SyncCursor>,
    /// When set, the page commits only while this lease is held: a worker
    /// that lost its lease cannot write over the one that took the run over.
    pub lease: Option<Lease>,
    /// Resolved conflicts whose resolution this page wrote to both systems.
    pub applied_conflicts: Vec<Uuid>,
    /// Mappings found gone on one side, to be acted on by the run's delete
    /// pass (recorded again harmlessly when a page is done twice).
    pub candidates: Vec<DeleteCandidate>,
    /// An entity type whose reconciliation pass this page finished.
    pub reconciled: Option<EntityScope>,
    /// A reservation to write (with the page's other writes).
    pub reserve: Option<Reservation>,
    /// The reservation whose held mappings this page settles: it is
    /// deleted, or the commit fails if it is gone.
    pub settles: Option<Uuid>,
}

/// A `mapped` mapping as a reconciliation pass reads it: the mapping's id
/// and one side's record id, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedId {
    pub mapping_id: Uuid,
    pub record_id: String,
}

/// A run held by the mass-deletion brake for one entity type.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunHold {
    pub run_id: Uuid,
    pub tenant_id: TenantId,
    pub entity_type: String,
    /// Records the step would delete or mark stale.
    pub count: u64,
    /// The entity's mapped records when it was counted.
    pub mapped: u64,
    /// How many it could have acted on without asking.
    pub limit: u64,
    pub confirmed_by: Option<String>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl RunHold {
    /// What an operator reads: which entity, how many, and what to do.
    pub fn reason(&self) -> String {
        format!(
            "mass deletion held: {} of {} mapped `{}` records would be deleted or marked stale \
             (limit {}); nothing was deleted. Confirm with `syncd runs confirm-deletes {}` or cancel the run",
            self.count, self.mapped, self.entity_type, self.limit, self.run_id
        )
    }
}

/// The change-scan position of one entity type in one system.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncCursor {
    pub scope: EntityScope,
    pub side: Side,
    pub cursor: serde_json::Value,
}

/// A worker's claim on a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub run_id: Uuid,
    pub worker_id: String,
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub integration_id: IntegrationId,
    pub state: RunState,
    /// The plan and steps the run executes (JSON of the run module's plan).
    pub plan: serde_json::Value,
    /// `manual`, `schedule` or `resume`: what started it.
    pub trigger: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Who an API token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Every tenant.
    Admin,
    /// One tenant only.
    Tenant(TenantId),
}

impl Principal {
    /// The tenant every query must be filtered by; `None` for admins.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t),
        }
    }

    /// The tenant a request that names `asked` (or no tenant) is confined
    /// to: a tenant principal's own, an admin's choice (`None`: every
    /// tenant). A tenant principal naming another tenant is refused.
    pub fn confine(&self, asked: Option<TenantId>) -> Result<Option<TenantId>, OtherTenant> {
        match (self, asked) {
            (Principal::Admin, asked) => Ok(asked),
            (Principal::Tenant(own), None) => Ok(Some(own.clone())),
            (Principal::Tenant(own), Some(asked)) if asked == *own => Ok(Some(asked)),
            (Principal::Tenant(_), Some(asked)) => Err(OtherTenant(asked)),
        }
    }
}

/// A tenant that a tenant-scoped principal asked for and may not see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tenant `{0}` is not the token's tenant")]
pub struct OtherTenant(pub TenantId);

/// The SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A schedule as stored: the tick it fires next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub tenant_id: TenantId,
    pub integration_id: IntegrationId,
    pub cron: String,
    pub next_fire_at: DateTime<Utc>,
}

/// Filters for listing runs.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub tenant: Option<TenantId>,
    pub integration: Option<IntegrationId>,
    pub state: Option<RunState>,
    pub limit: u32,
}

/// Filters for listing conflicts.
#[derive(Clone, Debug, Default)]
pub struct ConflictFilter {
    pub tenant: Option<TenantId>,
    pub status: Option<ConflictStatus>,
    pub entity_type: Option<String>,
    pub run_id: Option<Uuid>,
    pub limit: u32,
}

/// A mapping write after the core has decided it.
pub(crate) struct Decided {
    pub(crate) next: IdMapping,
    /// `None` for inserts; the version read for transitions.
    pub(crate) read_version: Option<u64>,
}

/// Calls the same method on whichever backend the store has.
macro_rules! on_backend {
    ($store:expr, $b:ident => $call:expr) => {
        match &$store.backend {
            Backend::Postgres($b) => $call,
            Backend::Sqlite($b) => $call,
        }
    };
}

pub(crate) enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// The durable store and its mapping cache.
pub struct Store {
    backend: Backend,
    cache: MappingCache,
    max_snapshot_bytes: usize,
}

impl Store {
    /// Connects to the database the config names and applies migrations.
    pub async fn connect(config: &StoreConfig, cache: MappingCache) -> Result<Store, StoreError> {
        let url = config.database_url.as_str();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(PgStore::connect(url).await?)
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite(SqliteStore::connect(url).await?)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        Store::with_backend(backend, cache, config.max_snapshot_bytes).await
    }

    /// A store on an existing PostgreSQL pool (e.g. one bound to a schema).
    pub async fn postgres(
        pool: sqlx::PgPool,
        cache: MappingCache,
        max_snapshot_bytes: usize,
    ) -> Result<Store, StoreError> {
        Store::with_backend(Backend::Postgres(PgStore::new(pool)), cache, max_snapshot_bytes).await
    }

    async fn with_backend(
        backend: Backend,
        cache: MappingCache,
        max_snapshot_bytes: usize,
    ) -> Result<Store, StoreError> {
        let store = Store {
            backend,
            cache,
            max_snapshot_bytes,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; safe to repeat.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        on_backend!(self, b => b.migrate().await)
    }

    /// The mapping cache, for its counters.
    pub fn cache(&self) -> &MappingCache {
        &self.cache
    }

    /// `postgres` or `sqlite`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// The mappings of `ids` (ids on `side`) within `scope`, by id. Ids with
    /// no mapping are absent. Reads the cache first, then the database for
    /// what the cache did not have (one query), and fills the cache.
    pub async fn lookup(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashMap<String, IdMapping>, StoreError> {
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
        let loaded = on_backend!(self, b => b.fetch_mappings(scope, side, to_load).await?);
        if self.cache.is_enabled() {
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
        Ok(found)
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

    fn check_size(
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
    fn decide(&self, writes: Vec<MappingWrite>, now: DateTime<Utc>) -> Result<Vec<Decided>, StoreError> {
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
    /// mappings as stored. On any error nothing of the page is written.
    pub async fn commit_page(&self, page: PageCommit) -> Result<Vec<IdMapping>, StoreError> {
        Ok(self.commit(page).await?.0)
    }

    /// [`Store::commit_page`], giving the page back without its mappings.
    async fn commit(&self, mut page: PageCommit) -> Result<(Vec<IdMapping>, PageCommit), StoreError> {
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
            let keys: Vec<String> = decided.iter().flat_map(|d| self.cache.keys_of(&d.next)).collect();
            self.cache.delete_many(&keys).await;
        }
        on_backend!(self, b => b.commit_page(&decided, &page, now).await?);
        let stored: Vec<IdMapping> = decided.into_iter().map(|d| d.next).collect();
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
        Ok((page.reserve, stored))
    }

    /// Turns the reservations of `scope` that no page settled (their page
    /// never committed) into `pending` mappings, skipping any whose source
    /// or target id has a mapping by now. Returns how many were added.
    pub async fn settle_leftovers(&self, scope: &EntityScope, lease: &Lease) -> Result<u64, StoreError> {
        on_backend!(self, b => b.settle_leftovers(scope, lease, Utc::now()).await)
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

    /// Conflict records of `tenant` by id; other tenants' ids are absent.
    pub async fn load_conflicts(
        &self,
        tenant: &syncd_core::ids::TenantId,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.load_conflicts(Some(tenant), ids).await)
    }

    /// Every step checkpoint of a run, in plan order.
    pub async fn load_steps(&self, run_id: Uuid) -> Result<Vec<StepCheckpoint>, StoreError> {
        on_backend!(self, b => b.load_steps(run_id).await)
    }

    /// Inserts a `planned` run and its steps (as `pending`). Refused with
    /// [`StoreError::ActiveRun`] when the tenant already has an active run of
    /// the integration.
    pub async fn create_run(&self, run: &RunRow, steps: &[PlannedStep]) -> Result<(), StoreError> {
        match on_backend!(self, b => b.create_run(run, steps).await) {
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                let active = self.active_run(&run.tenant_id, &run.integration_id).await?;
                Err(StoreError::ActiveRun {
                    tenant: run.tenant_id.to_string(),
                    integration: run.integration_id.to_string(),
                    run_id: active.map(|r| r.id).unwrap_or_default(),
                })
            }
            other => other,
        }
    }

    /// The planned, running or suspended run of `integration` for `tenant`.
    pub async fn active_run(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Option<RunRow>, StoreError> {
        let filter = RunFilter {
            tenant: Some(tenant.clone()),
            integration: Some(integration.clone()),
            limit: 10,
            ..Default::default()
        };
        Ok(self
            .list_runs(&filter)
            .await?
            .into_iter()
            .find(|r| r.state.is_active()))
    }

    /// One run; `tenant` restricts the lookup to that tenant's runs.
    pub async fn load_run(&self, tenant: Option<&TenantId>, id: Uuid) -> Result<Option<RunRow>, StoreError> {
        on_backend!(self, b => b.load_run(tenant, id).await)
    }

    /// Runs matching `filter`, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        on_backend!(self, b => b.list_runs(filter).await)
    }

    /// Moves `run` (as read) by `event`: the core decides, the update is
    /// conditional on the state that was read.
    pub async fn transition_run(
        &self,
        run: &RunRow,
        event: RunEvent,
        error: Option<&str>,
    ) -> Result<RunRow, StoreError> {
        let to = run.state.on(event).map_err(|source| StoreError::RunTransition {
            run_id: run.id,
            source,
        })?;
        let now = Utc::now();
        let finished = (!to.is_active()).then_some(now);
        let moved = on_backend!(self, b => b.set_run_state(run, to, error, now, finished).await?);
        if !moved {
            return Err(StoreError::RunChanged {
                run_id: run.id,
                expected: run.state,
            });
        }
        Ok(RunRow {
            state: to,
            error: error.map(str::to_owned).or_else(|| run.error.clone()),
            updated_at: now,
            finished_at: finished,
            ..run.clone()
        })
    }

    /// Claims `run` for `worker_id` for `ttl`, unless another worker holds
    /// an unexpired lease. Returns whether the lease is now ours.
    pub async fn claim_lease(
        &self,
        run: &RunRow,
        worker_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        on_backend!(self, b => b.claim_lease(run, worker_id, now, expires).await)
    }

    /// Extends a held lease; `false` means it was lost.
    pub async fn heartbeat(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        on_backend!(self, b => b.heartbeat(lease, now, expires).await)
    }

    /// Gives a lease up, so another worker may continue at once.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        on_backend!(self, b => b.release_lease(lease).await)
    }

    /// The worker holding an unexpired lease on `run_id`, and until when.
    pub async fn lease_holder(&self, run_id: Uuid) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.lease_holder(run_id, now).await)
    }

    /// Where the change scan of `scope` on `side` stopped last time.
    pub async fn load_sync_cursor(
        &self,
        scope: &EntityScope,
        side: Side,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        on_backend!(self, b => b.load_sync_cursor(scope, side).await)
    }

    /// Which of `ids` (ids on `side`) have a pending conflict.
    pub async fn open_conflicts(
        &self,
        scope: &EntityScope,
        side: Side,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        on_backend!(self, b => b.open_conflicts(scope, side, ids).await)
    }

    /// Conflicts matching `filter`, oldest first.
    pub async fn list_conflicts(&self, filter: &ConflictFilter) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.list_conflicts(filter).await)
    }

    /// How many conflicts of `run_id` (a run of `tenant`) wait for a reviewer.
    pub async fn pending_conflicts_of_run(&self, tenant: &TenantId, run_id: Uuid) -> Result<u64, StoreError> {
        on_backend!(self, b => b.pending_conflicts_of_run(tenant, run_id).await)
    }

    /// One conflict; `tenant` restricts the lookup to that tenant's.
    pub async fn load_conflict(
        &self,
        tenant: Option<&TenantId>,
        id: Uuid,
    ) -> Result<Option<ConflictRecord>, StoreError> {
        Ok(on_backend!(self, b => b.load_conflicts(tenant, &[id]).await?).pop())
    }

    /// Records a reviewer's resolution of a pending conflict. On PostgreSQL
    /// the resolution that leaves its run no pending conflict announces the
    /// run on [`RESUME_CHANNEL`], in the same transaction.
    pub async fn resolve_conflict(
        &self,
        conflict: &ConflictRecord,
        resolution: &syncd_core::record::Fields,
        resolved_by: &str,
    ) -> Result<ConflictRecord, StoreError> {
        let now = Utc::now();
        if !on_backend!(self, b => b.resolve_conflict(conflict, resolution, resolved_by, now).await?) {
            return Err(StoreError::ConflictNotPending { id: conflict.id });
        }
        Ok(ConflictRecord {
            resolution: Some(resolution.clone()),
            status: ConflictStatus::Resolved,
            resolved_by: Some(resolved_by.to_owned()),
            resolved_at: Some(now),
            ..conflict.clone()
        })
    }

    /// Whether an operator may resume `run` now: the core decides
    /// ([`syncd_core::run::may_resume`]) from its pending conflicts and lease.
    pub async fn check_resume(&self, run: &RunRow) -> Result<(), StoreError> {
        let pending = self.pending_conflicts_of_run(&run.tenant_id, run.id).await?;
        let holder = self.lease_holder(run.id).await?;
        let newer = match run.state {
            RunState::Failed => self
                .list_runs(&RunFilter {
                    tenant: Some(run.tenant_id.clone()),
                    integration: Some(run.integration_id.clone()),
                    state: None,
                    limit: 1,
                })
                .await?
                .into_iter()
                .next()
                .map(|latest| latest.id)
                .filter(|latest| *latest != run.id),
            _ => None,
        };
        syncd_core::run::may_resume(
            run.state,
            pending,
            holder.as_ref().map(|(w, _)| w.as_str()),
            newer,
        )
        .map_err(|source| StoreError::NotResumable {
            run_id: run.id,
            source,
        })
    }

    /// Records `error` on `run` without changing its state: why a run
    /// that waits (planned) could not start yet.
    pub async fn note_run_error(&self, run: &RunRow, error: &str) -> Result<(), StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.set_run_state(run, run.state, Some(error), now, run.finished_at).await)?;
        Ok(())
    }

    /// A failed run made active again (`running`, with its checkpoints), for
    /// a resume; any other run as it is.
    pub async fn reopen(&self, run: &RunRow) -> Result<RunRow, StoreError> {
        match run.state {
            RunState::Failed => self.transition_run(run, RunEvent::Resume, None).await,
            _ => Ok(run.clone()),
        }
    }

    /// An operator's resume, carried out by a worker: checks that `run` may
    /// be resumed, then wakes the workers listening on [`RESUME_CHANNEL`]
    /// (on SQLite workers find it when they next poll). The worker makes the
    /// transition when it claims the run.
    pub async fn request_resume(&self, run: &RunRow) -> Result<(), StoreError> {
        self.check_resume(run).await?;
        self.reopen(run).await?;
        if let Backend::Postgres(b) = &self.backend {
            b.notify_resume(run.id).await?;
        }
        Ok(())
    }

    /// Subscribes to [`RESUME_CHANNEL`] on a connection of its own, named
    /// `application_name`; `None` on SQLite, which has no notifications.
    pub async fn listen_for_resumes(
        &self,
        application_name: &str,
    ) -> Option<Result<ResumeListener, StoreError>> {
        match &self.backend {
            Backend::Postgres(b) => Some(
                b.listen_for_resumes(application_name)
                    .await
                    .map(|(listener, schema)| ResumeListener { listener, schema }),
            ),
            Backend::Sqlite(_) => None,
        }
    }

    /// Conflicts of `run_id` that a reviewer resolved and that are not yet
    /// written to the systems.
    pub async fn unapplied_resolutions(&self, run_id: Uuid) -> Result<Vec<ConflictRecord>, StoreError> {
        on_backend!(self, b => b.unapplied_resolutions(run_id).await)
    }

    /// Creates an API token for `principal` and returns it; only its hash
    /// is stored, so this is the one time it can be read.
    pub async fn create_token(&self, principal: &Principal) -> Result<String, StoreError> {
        Ok(self.create_token_until(principal, None).await?.0)
    }

    /// [`create_token`](Self::create_token), valid until `expires_at` when
    /// given; answers the token and what is stored of it.
    pub async fn create_token_until(
        &self,
        principal: &Principal,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(String, TokenInfo), StoreError> {
        let token = format!("syncd_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let info = TokenInfo {
            id: Uuid::new_v4(),
            prefix: token[..TOKEN_PREFIX_LEN].to_owned(),
            tenant: principal.tenant().map(TenantId::as_str).unwrap_or("").to_owned(),
            admin: matches!(principal, Principal::Admin),
            created_at: Utc::now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        on_backend!(self, b => b.insert_token(&info, &token_hash(&token)).await)?;
        Ok((token, info))
    }

    /// What `token` may do: the principal it speaks for, or why it may not
    /// (unknown, revoked, expired). Notes its use, at most once a minute.
    pub async fn authenticate(&self, token: &str) -> Result<TokenCheck, StoreError> {
        let found = on_backend!(self, b => b.tokens(Some(&token_hash(token))).await)?;
        let Some(t) = found.into_iter().next() else {
            return Ok(TokenCheck::Unknown);
        };
        let now = Utc::now();
        if let Some(at) = t.revoked_at {
            return Ok(TokenCheck::Revoked { prefix: t.prefix, at });
        }
        if let Some(at) = t.expires_at.filter(|at| *at <= now) {
            return Ok(TokenCheck::Expired { prefix: t.prefix, at });
        }
        if t.last_used_at
            .is_none_or(|at| now - at > chrono::Duration::minutes(1))
        {
            // Noting the use is a courtesy to operators: failing to write it
            // must not refuse a valid token.
            if let Err(e) = on_backend!(self, b => b.set_token_time(t.id, false, now).await) {
                tracing::warn!(error = %e, "could not note a token's use");
            }
        }
        Ok(TokenCheck::Valid(match t.admin {
            true => Principal::Admin,
            false => Principal::Tenant(TenantId(t.tenant)),
        }))
    }

    /// Every token, oldest first, as stored: never the secret.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        on_backend!(self, b => b.tokens(None).await)
    }

    /// Revokes the token named by its prefix (or id): refused at once
    /// afterwards. `None` when no token has that name.
    pub async fn revoke_token(&self, name: &str) -> Result<Option<TokenInfo>, StoreError> {
        let name = name.trim();
        let mut matching: Vec<TokenInfo> = self
            .list_tokens()
            .await?
            .into_iter()
            .filter(|t| (!t.prefix.is_empty() && t.prefix == name) || t.id.to_string() == name)
            .collect();
        let Some(mut t) = matching.pop() else {
            return Ok(None);
        };
        if !matching.is_empty() {
            return Err(StoreError::AmbiguousToken {
                name: name.to_owned(),
            });
        }
        let now = Utc::now();
        if t.revoked_at.is_none() {
            on_backend!(self, b => b.set_token_time(t.id, true, now).await)?;
            t.revoked_at = Some(now);
        }
        Ok(Some(t))
    }

    /// Records `cron` as the schedule of `integration` for `tenant`. A new
    /// schedule, or one whose expression changed, next fires at `first`.
    pub async fn ensure_schedule(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
        cron: &str,
        first: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_backend!(self, b => b.ensure_schedule(tenant, integration, cron, first).await)
    }

    /// Schedules whose next fire time is at or before `now`.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, StoreError> {
        on_backend!(self, b => b.due_schedules(now).await)
    }

    /// Fires the tick `due` of a schedule and moves it on to `next`, unless
    /// another scheduler already did: `false` then. The tick is recorded in
    /// `schedule_fires`, whose key makes each tick fire at most once.
    pub async fn fire_schedule(&self, schedule: &Schedule, next: DateTime<Utc>) -> Result<bool, StoreError> {
        on_backend!(self, b => b.fire_schedule(schedule, next).await)
    }

    /// Links a fired tick to the run it started.
    pub async fn set_fire_run(&self, schedule: &Schedule, run_id: Uuid) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_fire_run(schedule, run_id).await)
    }

    /// Runs of `integrations` a worker may execute now: planned or running
    /// runs that no live lease holds, and suspended runs whose conflicts are
    /// all decided and that no unconfirmed mass-deletion hold stops.
    pub async fn runs_to_execute(
        &self,
        integrations: &[&str],
        limit: u32,
    ) -> Result<Vec<RunRow>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.runs_to_execute(integrations, now, limit).await)
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

    /// The mapping of one record, for operators: from the ID map, or else
    /// the `pending` one a reservation holds (see [`Store::reserve`]).
    pub async fn find_mapping(
        &self,
        scope: &EntityScope,
        side: Side,
        id: &str,
    ) -> Result<Option<IdMapping>, StoreError> {
        if let Some(m) = self.lookup(scope, side, &[id.to_owned()]).await?.remove(id) {
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
    pub async fn mapping_counts(
        &self,
        tenant: &TenantId,
        integration: &IntegrationId,
    ) -> Result<Vec<(String, MappingStatus, u64)>, StoreError> {
        on_backend!(self, b => b.mapping_counts(tenant, integration).await)
    }

    /// Up to `limit` `mapped` mappings of `scope` whose record id on `side`
    /// comes after `after`, in that id's order, as ids only: a
    /// reconciliation pass walks the ID map with these, once a side, never
    /// holding more than a page.
    pub async fn mapped_ids_page(
        &self,
        scope: &EntityScope,
        side: Side,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<MappedId>, StoreError> {
        on_backend!(self, b => b.mapped_ids_page(scope, side, after, limit).await)
    }

    /// Up to `limit` `mapped` mappings of `scope` last verified before
    /// `before`, the longest unverified first.
    pub async fn unverified_page(
        &self,
        scope: &EntityScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<IdMapping>, StoreError> {
        on_backend!(self, b => b.unverified_page(scope, before, limit).await)
    }

    /// How many mappings of `scope` are `mapped`.
    pub async fn count_mapped(&self, scope: &EntityScope) -> Result<u64, StoreError> {
        on_backend!(self, b => b.count_mapped(scope).await)
    }

    /// When `scope` was last reconciled.
    pub async fn last_reconciled(&self, scope: &EntityScope) -> Result<Option<DateTime<Utc>>, StoreError> {
        on_backend!(self, b => b.last_reconciled(scope).await)
    }

    /// How many delete candidates `run` recorded for `entity`.
    pub async fn count_candidates(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
    ) -> Result<u64, StoreError> {
        on_backend!(self, b => b.count_candidates(tenant, run_id, entity).await)
    }

    /// The delete candidates of `run` for `entity` with mapping ids after
    /// `after`, in mapping-id order, with their mappings as they are now.
    pub async fn candidates_page(
        &self,
        tenant: &TenantId,
        run_id: Uuid,
        entity: &EntityType,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(IdMapping, Gone)>, StoreError> {
        on_backend!(self, b => b.candidates_page(tenant, run_id, entity, after, limit).await)
    }

    /// Records that `hold` stops its run (kept if already there).
    pub async fn add_hold(&self, hold: &RunHold) -> Result<(), StoreError> {
        on_backend!(self, b => b.add_hold(hold).await)
    }

    /// The brake holds of `run_id`, confirmed or not.
    pub async fn run_holds(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
    ) -> Result<Vec<RunHold>, StoreError> {
        on_backend!(self, b => b.run_holds(tenant, run_id).await)
    }

    /// Confirms every unconfirmed hold of `run_id` as `by`; returns the
    /// holds confirmed (none when the run was not held). The worker then
    /// resumes the run like any other suspended one.
    pub async fn confirm_deletes(
        &self,
        tenant: Option<&TenantId>,
        run_id: Uuid,
        by: &str,
    ) -> Result<Vec<RunHold>, StoreError> {
        let now = Utc::now();
        on_backend!(self, b => b.confirm_deletes(tenant, run_id, by, now).await)
    }
}

/// Whether `v` holds a NUL character in a string or a key.
fn holds_nul(v: &serde_json::Value) -> bool {
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
fn json_bound(fields: &syncd_core::record::Fields) -> usize {
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

/// How many characters of a token name it (`syncd_` and 8 hex digits):
/// enough to tell tokens apart, far too few to guess one.
pub const TOKEN_PREFIX_LEN: usize = 14;

/// A token as stored: never its secret.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    /// Its first characters (empty for tokens made before prefixes were
    /// kept: name those by id).
    pub prefix: String,
    /// The tenant, or empty for an admin token.
    pub tenant: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

type TokenRow = (
    String,
    String,
    String,
    bool,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

impl TokenInfo {
    fn from_row(r: TokenRow) -> TokenInfo {
        TokenInfo {
            id: r.0.parse().unwrap_or_default(),
            prefix: r.1,
            tenant: r.2,
            admin: r.3,
            created_at: r.4,
            expires_at: r.5,
            revoked_at: r.6,
            last_used_at: r.7,
        }
    }
}

/// What a token may do.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenCheck {
    Valid(Principal),
    Unknown,
    Revoked { prefix: String, at: DateTime<Utc> },
    Expired { prefix: String, at: DateTime<Utc> },
}

/// Counts the bytes written to it: the size of a JSON document without
/// building it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a mapping is named in messages: its source id, else its target id.
fn record_name(m: &IdMapping) -> String {
    m.source_id
        .as_deref()
        .or(m.target_id.as_deref())
        .unwrap_or("?")
        .to_owned()
}

/// A held mapping as its reservation row keeps it: what a new pending
/// mapping has of its own (id, source id, target id, idempotency key,
/// attempts). The rest is the reservation's (scope, time) or the same for
/// every held mapping (`pending`, no base, no error, version 1).
#[derive(serde::Serialize, serde::Deserialize)]
struct HeldRow(Uuid, Option<String>, Option<String>, Option<String>, u32);

impl Reservation {
    /// Whether `m`, a new mapping, can be held: its row keeps only what
    /// [`HeldRow`] has.
    fn can_hold(m: &IdMapping) -> bool {
        m.status == MappingStatus::Pending && m.base.is_none() && m.last_error.is_none()
    }

    /// The held mappings as the reservation row stores them.
    pub(crate) fn rows_json(&self) -> String {
        let rows: Vec<HeldRow> = self
            .held
            .iter()
            .map(|m| {
                HeldRow(
                    m.id,
                    m.source_id.clone(),
                    m.target_id.clone(),
                    m.idempotency_key.clone(),
                    m.attempts,
                )
            })
            .collect();
        serde_json::to_string(&rows).expect("held rows serialize")
    }
}

/// The pending mappings of reservation rows of `scope`, given as (id, held
/// rows, time of the reservation).
pub(crate) fn held_mappings(
    scope: &EntityScope,
    rows: &[(Uuid, String, DateTime<Utc>)],
) -> Result<Vec<IdMapping>, StoreError> {
    let mut held = Vec::new();
    for (id, json, at) in rows {
        let kept: Vec<HeldRow> = serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
            table: "reservations",
            reason: format!("reservation {id}: {e}"),
        })?;
        held.extend(
            kept.into_iter()
                .map(|HeldRow(id, source_id, target_id, key, attempts)| IdMapping {
                    idempotency_key: key,
                    attempts,
                    version: 1,
                    ..IdMapping::reserve(id, scope.clone(), source_id, target_id, String::new(), *at)
                }),
        );
    }
    Ok(held)
}

/// `mapping` after `change`, one version on, or the core's refusal.
fn applied(
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

/// Logs held mappings of leftover reservations that were not added because
/// their source or target id had a mapping by then (the page was done
/// again); expected to be none.
pub(crate) fn skipped_held(scope: &EntityScope, reservations: &[Uuid], held: u64, added: u64) {
    if added < held {
        tracing::warn!(
            entity = %scope.entity_type,
            skipped = held - added,
            ?reservations,
            "held mappings of leftover reservations already had a mapping; kept the mapping there"
        );
    }
}

/// Explains why a conditional update matched no row: the row moved on to
/// `actual`, from which `wanted` may or may not be allowed.
pub(crate) fn lost_race(wanted: &IdMapping, read_version: u64, actual: Option<MappingStatus>) -> StoreError {
    let entity_type = wanted.entity_type.to_string();
    let record = record_name(wanted);
    match actual.map(|a| a.transition(wanted.status)) {
        Some(Err(source)) => StoreError::Transition {
            entity_type,
            record,
            source,
        },
        _ => StoreError::Concurrent {
            entity_type,
            record,
            read: read_version,
        },
    }
}

/// Maps a unique-key violation to [`StoreError::Duplicate`].
pub(crate) fn duplicate_or(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate {
            detail: db.message().to_owned(),
        },
        _ => StoreError::Database(e),
    }
}

#[cfg(test)]
mod tests {
    use super::json_bound;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z0-9.]{0,30}".prop_map(|d| serde_json::from_str(&format!("1{}", d.replace(['.'], "")))
                .unwrap_or(serde_json::Value::Null)),
            ".{0,40}".prop_map(serde_json::Value::String),
            "[\\x00-\\x1f\"\\\\]{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[\\x00-\\x7f]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The bound that spares measuring a record never undercounts it.
        #[test]
        fn the_size_bound_is_never_below_the_json_size(
            fields in proptest::collection::btree_map("[\\x00-\\x7f]{0,8}", json(), 0..8)
        ) {
            let fields: syncd_core::record::Fields = fields.into_iter().collect();
            let size = serde_json::to_string(&fields).unwrap().len();
            prop_assert!(json_bound(&fields) >= size, "{} < {size}", json_bound(&fields));
        }
    }
}
