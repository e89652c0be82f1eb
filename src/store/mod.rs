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

mod postgres;
mod sqlite;

use crate::cache::MappingCache;
use crate::conflict::ConflictRecord;
use crate::ids::EntityScope;
use crate::mapping::{IdMapping, MappingChange, MappingStatus, TransitionError};
use crate::record::Side;
use crate::run::StepCheckpoint;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use uuid::Uuid;

pub use postgres::PgStore;
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
    #[error("unsupported database URL `{0}` (expected postgres://... or sqlite://...)")]
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
    #[error("new {entity_type} mapping `{record}` must start as pending, not {status}")]
    NotPending {
        entity_type: String,
        record: String,
        status: MappingStatus,
    },
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

/// One change to the ID map within a page.
#[derive(Clone, Debug, PartialEq)]
pub enum MappingWrite {
    /// A mapping seen for the first time; must be `pending`.
    Insert(IdMapping),
    /// Apply `change` to a mapping as it was read (its status and version
    /// are what the database must still hold).
    Transition {
        current: IdMapping,
        change: MappingChange,
    },
}

/// Everything one page of a step commits, atomically.
#[derive(Clone, Debug, Default)]
pub struct PageCommit {
    pub mappings: Vec<MappingWrite>,
    pub conflicts: Vec<ConflictRecord>,
    pub checkpoint: Option<StepCheckpoint>,
}

/// A mapping write after the core has decided it.
pub(crate) struct Decided {
    pub(crate) next: IdMapping,
    /// `None` for inserts; the version read for transitions.
    pub(crate) read_version: Option<u64>,
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
        match &self.backend {
            Backend::Postgres(pg) => pg.migrate().await,
            Backend::Sqlite(lite) => lite.migrate().await,
        }
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
        let keys: Vec<String> = ids.iter().map(|id| self.cache.key(scope, side, id)).collect();
        let missing: Vec<String> = match self.cache.get_many(&keys).await {
            Some(cached) => {
                let mut missing = Vec::new();
                for (id, hit) in ids.iter().zip(cached) {
                    match hit {
                        Some(m) => {
                            found.insert(id.clone(), m);
                        }
                        None => missing.push(id.clone()),
                    }
                }
                missing
            }
            None => ids.to_vec(),
        };
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = match &self.backend {
            Backend::Postgres(pg) => pg.fetch_mappings(scope, side, &missing).await?,
            Backend::Sqlite(lite) => lite.fetch_mappings(scope, side, &missing).await?,
        };
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

    fn check_size(
        &self,
        what: impl FnOnce() -> String,
        value: &impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
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
                        if m.status != MappingStatus::Pending {
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
                        let mut next = current.clone();
                        next.apply(change, now).map_err(|source| StoreError::Transition {
                            entity_type: current.entity_type.to_string(),
                            record: record_name(&current),
                            source,
                        })?;
                        next.version = current.version + 1;
                        Decided {
                            next,
                            read_version: Some(current.version),
                        }
                    }
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
        let now = Utc::now();
        let decided = self.decide(page.mappings, now)?;
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
        match &self.backend {
            Backend::Postgres(pg) => {
                pg.commit_page(&decided, &page.conflicts, page.checkpoint.as_ref(), now)
                    .await?
            }
            Backend::Sqlite(lite) => {
                lite.commit_page(&decided, &page.conflicts, page.checkpoint.as_ref(), now)
                    .await?
            }
        }
        if self.cache.is_enabled() {
            let stored: Vec<IdMapping> = decided.iter().map(|d| d.next.clone()).collect();
            self.cache.put_many(&stored).await;
        }
        Ok(decided.into_iter().map(|d| d.next).collect())
    }

    /// The checkpoint of one step, if it has committed a page.
    pub async fn load_checkpoint(
        &self,
        run_id: Uuid,
        entity_type: &str,
        direction: crate::run::StepDirection,
    ) -> Result<Option<StepCheckpoint>, StoreError> {
        match &self.backend {
            Backend::Postgres(pg) => pg.load_checkpoint(run_id, entity_type, direction).await,
            Backend::Sqlite(lite) => lite.load_checkpoint(run_id, entity_type, direction).await,
        }
    }

    /// Conflict records of `tenant` by id; other tenants' ids are absent.
    pub async fn load_conflicts(
        &self,
        tenant: &crate::ids::TenantId,
        ids: &[Uuid],
    ) -> Result<Vec<ConflictRecord>, StoreError> {
        match &self.backend {
            Backend::Postgres(pg) => pg.load_conflicts(tenant, ids).await,
            Backend::Sqlite(lite) => lite.load_conflicts(tenant, ids).await,
        }
    }

    /// Inserts a `planned` run row; the run module owns its lifecycle.
    pub async fn insert_run(
        &self,
        id: Uuid,
        scope: (&crate::ids::TenantId, &crate::ids::IntegrationId),
        plan: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        match &self.backend {
            Backend::Postgres(pg) => pg.insert_run(id, scope, plan, now).await,
            Backend::Sqlite(lite) => lite.insert_run(id, scope, plan, now).await,
        }
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
