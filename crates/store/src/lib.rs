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
mod rows;
mod shared;
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
use syncd_core::run::{PlannedStep, ResumeRefused, RunEvent, RunState, RunTransitionError, StepDirection};
use syncd_core::run::{StepCheckpoint, StepEvent, StepState};
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
    #[error(
        "its search path ({search_path}) names no schema that exists in that database: create it \
         (CREATE SCHEMA ...), or name another in the URL"
    )]
    NoSchema { search_path: String },
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
    /// A checkpoint the step's state no longer allows (the step is done).
    #[error(
        "step {entity_type} {direction} of run {run_id} is {state} or gone: this page cannot move it to {to}"
    )]
    StepChanged {
        run_id: Uuid,
        entity_type: String,
        direction: String,
        state: String,
        to: StepState,
    },
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
    /// A page of a run that has ended (an operator cancelled it, say)
    /// while its worker still held the lease: nothing of it is committed.
    #[error("run {run_id} is {state}: this worker commits nothing more of it")]
    RunEnded { run_id: Uuid, state: RunState },
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

/// When an integration of a tenant last ended a run that succeeded, and
/// one that failed (see [`Store::run_ends`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RunEnds {
    pub tenant: TenantId,
    pub integration: String,
    pub succeeded: Option<DateTime<Utc>>,
    pub failed: Option<DateTime<Utc>>,
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
    /// Resolved conflicts a run took up, each with what became of the
    /// decision (`applied`, or why not), recorded with the time.
    pub applied_conflicts: Vec<(Uuid, String)>,
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

impl Schedule {
    /// Schedules from (tenant, integration, cron, next fire) rows.
    pub(crate) fn from_rows(rows: Vec<(String, String, String, DateTime<Utc>)>) -> Vec<Schedule> {
        rows.into_iter()
            .map(|(t, i, cron, next_fire_at)| Schedule {
                tenant_id: TenantId(t),
                integration_id: IntegrationId(i),
                cron,
                next_fire_at,
            })
            .collect()
    }
}

/// Filters for listing runs.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub tenant: Option<TenantId>,
    pub integration: Option<IntegrationId>,
    pub state: Option<RunState>,
    /// Runs whose id, as text (lowercase, with hyphens), starts with this.
    pub id_prefix: Option<String>,
    pub limit: u32,
}

/// Filters for listing conflicts: oldest first, but resolved ones (when
/// `status` asks for them) most recently decided first.
#[derive(Clone, Debug, Default)]
pub struct ConflictFilter {
    pub tenant: Option<TenantId>,
    pub status: Option<ConflictStatus>,
    pub entity_type: Option<String>,
    pub run_id: Option<Uuid>,
    /// Conflicts whose id, as text (lowercase, with hyphens), starts with this.
    pub id_prefix: Option<String>,
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

// After the macro, which they use.
mod mappings;
mod removals;
mod reviews;
mod runs;
mod tokens;

use mappings::record_name;
use runs::{checkpoint_event, step_changed, step_states_before};

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
            let store = PgStore::connect(url).await?;
            // A search path naming no schema that exists left the
            // migration to fail with "no schema has been selected".
            if let Some(search_path) = store.search_path_without_schema().await? {
                return Err(StoreError::NoSchema { search_path });
            }
            Backend::Postgres(store)
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

    /// Where the change scan of `scope` on `side` stopped last time.
    pub async fn load_sync_cursor(
        &self,
        scope: &EntityScope,
        side: Side,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        on_backend!(self, b => b.load_sync_cursor(scope, side).await)
    }
}

/// What a page's commit writes, as the backends take it: the mapping
/// changes the core decided, the rest of the page, and when.
pub(crate) struct PageWrite<'a> {
    decided: &'a [Decided],
    page: &'a PageCommit,
    now: DateTime<Utc>,
}

/// A run's change of state as the backends write it: conditional on the
/// state the run was read in, with what the core says it does to the
/// run's steps (see [`RunState::step`](syncd_core::run::RunState::step)).
struct RunChange<'a> {
    to: RunState,
    error: Option<&'a str>,
    now: DateTime<Utc>,
    finished: Option<DateTime<Utc>>,
    /// Applied to the steps in a state the event leads from.
    steps: Option<StepEvent>,
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
    /// Who holds it (`tokens create --holder`): the name the API records
    /// a reviewer's decisions under.
    pub holder: Option<String>,
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
    Option<String>,
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
            holder: r.8,
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
    use super::mappings::json_bound;
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
