//! `syncd bench store`: throughput of the mapping store, measured by a
//! command instead of in tests.
//!
//! A timed assertion in a test fails on a busy machine and passes on a fast
//! one, so it proves little. This module instead runs the store's hot paths
//! (batched lookups, batched transitions) against real PostgreSQL and Redis
//! and prints each figure next to what the raw `sqlx` and `redis` clients do
//! with the same ids on the same machine. The ratio to raw is the figure to
//! watch: it is what our own code costs, whatever the hardware.
//!
//! Each of our batches is timed next to the raw client's batch on the same
//! ids, the two taking turns to go first, so a machine that slows down
//! mid-run slows both alike. The bench
//! works in a PostgreSQL schema and a Redis key prefix of its own and removes
//! both when it ends, also when a step fails.

pub mod api;
pub mod reconcile;
pub mod sync;
pub mod workers;

use chrono::{DateTime, Utc};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::{IdMapping, MappingChange};
use syncd_core::record::{Fields, Side};
use syncd_store::cache::{CacheCounts, MappingCache};
use syncd_store::{CUSTOM_PLANS, DEFAULT_MAX_SNAPSHOT_BYTES, MappingWrite, PageCommit, Store, StoreError};
use uuid::Uuid;

/// PostgreSQL used when neither `--postgres-url` nor a PostgreSQL
/// `SYNCD_DATABASE_URL` is given.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Redis used when neither `--redis-url` nor `SYNCD_REDIS_URL` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Ids per lookup and mappings per page, as a sync step uses them.
pub const BATCH: usize = 1_000;

/// Records the in-process cache is warmed with and read back, pass after
/// pass: it clears itself when it grows past its bound, and a confirmed
/// mapping fills two entries (source and target id).
pub const LOCAL_WORKING_SET: usize = 10_000;

/// The smallest acceptable ratio of our rate to the raw client's.
pub const RATIO_TARGET: f64 = 0.7;

/// The raw lookup: the same rows the store's PostgreSQL lookup reads, by
/// the same index (its scope number, then the ids), in the plainest SQL.
const RAW_SELECT: &str = "SELECT id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
     idempotency_key, last_error, attempts, version, created_at, updated_at \
     FROM id_mappings WHERE scope = $1 AND source_id = ANY($2)";

/// The raw transition: the store's conditional batch update, written out.
const RAW_UPDATE: &str = "UPDATE id_mappings AS m SET source_id = u.source_id, target_id = u.target_id, \
     status = u.status, base = u.base, idempotency_key = u.idempotency_key, \
     last_error = u.last_error, attempts = u.attempts, version = u.version, updated_at = u.updated_at \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], \
     $7::text[], $8::text[], $9::int4[], $10::int8[], $11::timestamptz[], $12::int8[]) \
     AS u(id, tenant_id, source_id, target_id, status, base, idempotency_key, last_error, \
     attempts, version, updated_at, read_version) \
     WHERE m.id = ANY($1) AND m.id = u.id AND m.tenant_id = u.tenant_id \
     AND m.version = u.read_version \
     RETURNING m.id";

/// What `syncd bench store` runs against.
#[derive(Clone, Debug)]
pub struct StoreBench {
    /// Mappings created and then looked up, in batches of [`BATCH`].
    pub records: usize,
    pub postgres_url: String,
    pub redis_url: String,
}

impl StoreBench {
    /// The PostgreSQL URL: `flag`, else `SYNCD_DATABASE_URL` when it names
    /// PostgreSQL, else [`DEFAULT_POSTGRES_URL`].
    pub fn postgres_url(flag: Option<String>) -> String {
        flag.or_else(|| {
            std::env::var("SYNCD_DATABASE_URL")
                .ok()
                .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        })
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.into())
    }

    /// The Redis URL: `flag`, else `SYNCD_REDIS_URL`, else
    /// [`DEFAULT_REDIS_URL`].
    pub fn redis_url(flag: Option<String>) -> String {
        flag.or_else(|| std::env::var("SYNCD_REDIS_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_REDIS_URL.into())
    }
}

/// Why the bench could not produce its figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("run: {0}")]
    Run(#[from] syncd_engine::run::executor::RunError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A pass did not do what it was meant to measure (a lookup that missed,
    /// a "warm" cache that went to the database): its figure would be wrong.
    #[error("bench invalid: {0}")]
    Invalid(String),
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    pub what: &'static str,
    pub records: usize,
    pub elapsed: Duration,
    /// The rate this figure should reach, per second.
    pub target: Option<f64>,
    /// Time the raw client took for the same records, when compared.
    pub raw: Option<Duration>,
    /// A raw client's own figure, shown indented beneath ours.
    pub is_raw: bool,
}

impl Figure {
    fn ours(what: &'static str, records: usize, elapsed: Duration, target: Option<f64>) -> Figure {
        Figure {
            what,
            records,
            elapsed,
            target,
            raw: None,
            is_raw: false,
        }
    }

    /// Our figure and the raw client's beneath it.
    fn against_raw(
        what: &'static str,
        raw_what: &'static str,
        records: usize,
        (ours, raw): (Duration, Duration),
        target: Option<f64>,
    ) -> [Figure; 2] {
        [
            Figure {
                raw: Some(raw),
                ..Figure::ours(what, records, ours, target)
            },
            Figure {
                is_raw: true,
                ..Figure::ours(raw_what, records, raw, None)
            },
        ]
    }

    /// Records per second.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Our rate over the raw client's (raw time over ours).
    pub fn ratio(&self) -> Option<f64> {
        self.raw.map(|raw| raw.as_secs_f64() / self.elapsed.as_secs_f64())
    }

    /// Whether the rate and the ratio reach their targets; `None` when the
    /// figure has neither.
    pub fn met(&self) -> Option<bool> {
        match (self.target, self.ratio()) {
            (None, None) => None,
            (target, ratio) => {
                Some(target.is_none_or(|t| self.rate() >= t) && ratio.is_none_or(|r| r >= RATIO_TARGET))
            }
        }
    }
}

/// The figures of one `syncd bench store` run, printed as a table.
#[derive(Clone, Debug)]
pub struct StoreReport {
    pub postgres_version: String,
    pub redis_version: String,
    pub figures: Vec<Figure>,
}

impl StoreReport {
    /// True when every figure with a target reaches it.
    pub fn all_met(&self) -> bool {
        self.figures.iter().all(|f| f.met() != Some(false))
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(n: f64) -> String {
    let digits = format!("{n:.0}");
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for StoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "PostgreSQL {}, Redis {}, batches of {BATCH}",
            self.postgres_version, self.redis_version
        )?;
        writeln!(
            f,
            "{:<48} {:>8} {:>8} {:>10} {:>9} {:>5} {:>4}",
            "what", "records", "seconds", "rate/s", "target/s", "ratio", "met"
        )?;
        for fig in &self.figures {
            let what = if fig.is_raw {
                format!("  {}", fig.what)
            } else {
                fig.what.to_owned()
            };
            writeln!(
                f,
                "{what:<48} {:>8} {:>8.3} {:>10} {:>9} {:>5} {:>4}",
                fig.records,
                fig.elapsed.as_secs_f64(),
                thousands(fig.rate()),
                fig.target.map_or("-".into(), thousands),
                fig.ratio().map_or("-".into(), |r| format!("{r:.2}")),
                match fig.met() {
                    None => "-",
                    Some(true) => "yes",
                    Some(false) => "NO",
                },
            )?;
        }
        write!(
            f,
            "ratio: our rate over the raw client's on the same ids, batch by batch (target {RATIO_TARGET:.2})"
        )
    }
}

/// Runs the store bench in a fresh schema and key prefix, and removes both.
pub async fn store(bench: &StoreBench) -> Result<StoreReport, BenchError> {
    if bench.records == 0 {
        return Err(BenchError::Invalid("no records to measure".into()));
    }
    let redis = redis::Client::open(bench.redis_url.as_str())?;
    let schema = BenchSchema::create(&bench.postgres_url).await?;
    let prefix = format!("syncd-bench-{}", Uuid::new_v4().simple());
    let result = measure(bench, &schema.pool, &redis, &prefix).await;
    let cleaned = async {
        delete_prefix(&redis, &prefix).await?;
        schema.drop().await
    }
    .await;
    match (result, cleaned) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), cleaned) => {
            if let Err(c) = cleaned {
                eprintln!("bench cleanup failed too: {c}");
            }
            Err(e)
        }
    }
}

/// A PostgreSQL schema of the bench's own, on the search path of `pool`.
struct BenchSchema {
    name: String,
    pool: PgPool,
    admin: PgPool,
}

impl BenchSchema {
    async fn create(url: &str) -> Result<BenchSchema, BenchError> {
        let options = PgConnectOptions::from_str(url)?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let name = format!("syncd_bench_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&admin)
            .await?;
        let options = options
            .options([("search_path", name.as_str()), CUSTOM_PLANS])
            .disable_statement_logging();
        match PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
        {
            Ok(pool) => Ok(BenchSchema { name, pool, admin }),
            Err(e) => {
                let _ = sqlx::query(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                    .execute(&admin)
                    .await;
                Err(e.into())
            }
        }
    }

    async fn drop(self) -> Result<(), BenchError> {
        self.pool.close().await;
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.name))
            .execute(&self.admin)
            .await?;
        self.admin.close().await;
        Ok(())
    }
}

/// Deletes every key under `prefix` (a uuid: no glob characters).
async fn delete_prefix(client: &redis::Client, prefix: &str) -> Result<(), BenchError> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The agreed values of record `i`: a handful of typical CDM fields.
fn base_of(i: usize) -> Fields {
    let mut fields = Fields::new();
    fields.insert("name".into(), format!("Account {i}").into());
    fields.insert("email".into(), format!("account{i}@example.com").into());
    fields.insert("country".into(), "DE".into());
    fields.insert("credit_limit".into(), (1000 + i % 5000).into());
    fields.insert("active".into(), (!i.is_multiple_of(7)).into());
    fields
}

async fn measure(
    bench: &StoreBench,
    pool: &PgPool,
    redis: &redis::Client,
    prefix: &str,
) -> Result<StoreReport, BenchError> {
    let n = bench.records;
    let ours = EntityScope::new("bench-tenant", "bench-integration", "account");
    let ids: Vec<String> = (0..n).map(|i| format!("src-{i:09}")).collect();
    let batches: Vec<&[String]> = ids.chunks(BATCH).collect();

    let postgres_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;
    let mut raw_redis = redis.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut raw_redis)
        .await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();

    let db = Store::postgres(pool.clone(), MappingCache::disabled(), DEFAULT_MAX_SNAPSHOT_BYTES).await?;
    let mut figures = Vec::new();

    // The raw updates get rows of their own, in another entity type.
    let ours_pending = reserve_all(&db, &ours, &batches).await?;
    let raw_scope = EntityScope::new("bench-tenant", "bench-integration", "account_raw");
    let raw_pending = reserve_all(&db, &raw_scope, &batches).await?;
    figures.extend(Figure::against_raw(
        "Store::commit_page, pending→mapped, PostgreSQL",
        "raw sqlx UPDATE … FROM UNNEST, one tx a page",
        n,
        transitions(&db, pool, ours_pending, raw_pending).await?,
        Some(30_000.0),
    ));
    // Steady state for the lookups: no dead rows from the updates, fresh
    // statistics, and no autovacuum starting in the middle of a pass.
    sqlx::query("VACUUM ANALYZE id_mappings").execute(pool).await?;

    figures.extend(Figure::against_raw(
        "Store::lookup, PostgreSQL, cache disabled",
        "raw sqlx SELECT … source_id = ANY($2)",
        n,
        postgres_lookups(&db, pool, &ours, &batches).await?,
        Some(100_000.0),
    ));

    let cached = Store::postgres(
        pool.clone(),
        MappingCache::redis(&bench.redis_url, prefix)?,
        DEFAULT_MAX_SNAPSHOT_BYTES,
    )
    .await?;
    figures.extend(Figure::against_raw(
        "Store::lookup, Redis cache warm",
        "raw redis MGET of the same keys",
        n,
        redis_lookups(&cached, &mut raw_redis, &ours, &batches).await?,
        Some(300_000.0),
    ));

    let local = Store::postgres(pool.clone(), MappingCache::local(), DEFAULT_MAX_SNAPSHOT_BYTES).await?;
    let (lookups, elapsed) = local_lookups(&local, &ours, &batches).await?;
    figures.push(Figure::ours(
        "Store::lookup, in-process cache warm (10k set)",
        lookups,
        elapsed,
        None,
    ));

    Ok(StoreReport {
        postgres_version,
        redis_version,
        figures,
    })
}

/// Reserves every id as a pending mapping, a page at a time.
async fn reserve_all(
    db: &Store,
    scope: &EntityScope,
    batches: &[&[String]],
) -> Result<Vec<IdMapping>, BenchError> {
    let now = Utc::now();
    let mut pending = Vec::with_capacity(batches.len() * BATCH);
    for batch in batches {
        let mappings = batch
            .iter()
            .map(|id| {
                MappingWrite::Insert(IdMapping::reserve(
                    Uuid::now_v7(),
                    scope.clone(),
                    Some(id.clone()),
                    None,
                    format!("bench-{id}"),
                    now,
                ))
            })
            .collect();
        pending.extend(
            db.commit_page(PageCommit {
                mappings,
                ..Default::default()
            })
            .await?
            .into_iter()
            .map(std::sync::Arc::unwrap_or_clone),
        );
    }
    Ok(pending)
}

/// The Confirm that maps pending mapping number `i` to its target.
fn confirm(i: usize, m: &IdMapping) -> MappingChange {
    MappingChange::Confirm {
        source_id: m.source_id.clone().unwrap_or_default(),
        target_id: format!("tgt-{i:09}"),
        base: base_of(i),
    }
}

/// Confirms every pending mapping through the store, and every raw one with
/// the store's update statement sent by hand, page by page in turn. Pages
/// are built before the clock starts: only the writes are timed.
async fn transitions(
    db: &Store,
    pool: &PgPool,
    ours: Vec<IdMapping>,
    raw: Vec<IdMapping>,
) -> Result<(Duration, Duration), BenchError> {
    let pages: Vec<PageCommit> = ours
        .chunks(BATCH)
        .enumerate()
        .map(|(p, chunk)| PageCommit {
            mappings: chunk
                .iter()
                .enumerate()
                .map(|(j, m)| MappingWrite::Transition {
                    current: m.clone(),
                    change: confirm(p * BATCH + j, m),
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let now = Utc::now();
    let raw_pages: Vec<RawPage> = raw
        .chunks(BATCH)
        .enumerate()
        .map(|(p, chunk)| RawPage::confirm(p * BATCH, chunk, now))
        .collect();
    let (mut ours_t, mut raw_t) = (Duration::ZERO, Duration::ZERO);
    for (i, (page, raw_page)) in pages.into_iter().zip(&raw_pages).enumerate() {
        let ((_, t), (updated, r)) = in_turn(i, db.commit_page(page), raw_page.commit(pool)).await?;
        ours_t += t;
        raw_t += r;
        if updated != raw_page.id.len() {
            return Err(BenchError::Invalid(format!(
                "raw update changed {updated} of {} rows",
                raw_page.id.len()
            )));
        }
    }
    Ok((ours_t, raw_t))
}

/// One page of raw Confirms, as the column arrays the update binds.
struct RawPage {
    id: Vec<Uuid>,
    tenant_id: Vec<String>,
    source_id: Vec<Option<String>>,
    target_id: Vec<String>,
    status: Vec<&'static str>,
    base: Vec<Json<Fields>>,
    /// Idempotency key and last error: both cleared by a Confirm.
    cleared: Vec<Option<String>>,
    attempts: Vec<i32>,
    version: Vec<i64>,
    updated_at: Vec<DateTime<Utc>>,
    read_version: Vec<i64>,
}

impl RawPage {
    fn confirm(first: usize, chunk: &[IdMapping], now: DateTime<Utc>) -> RawPage {
        RawPage {
            id: chunk.iter().map(|m| m.id).collect(),
            tenant_id: chunk.iter().map(|m| m.tenant_id.to_string()).collect(),
            source_id: chunk.iter().map(|m| m.source_id.clone()).collect(),
            target_id: (first..first + chunk.len())
                .map(|i| format!("tgt-{i:09}"))
                .collect(),
            status: vec!["mapped"; chunk.len()],
            base: (first..first + chunk.len()).map(|i| Json(base_of(i))).collect(),
            cleared: vec![None; chunk.len()],
            attempts: vec![0; chunk.len()],
            version: chunk.iter().map(|m| m.version as i64 + 1).collect(),
            updated_at: vec![now; chunk.len()],
            read_version: chunk.iter().map(|m| m.version as i64).collect(),
        }
    }

    /// Runs the update in its own transaction; returns the rows it changed.
    async fn commit(&self, pool: &PgPool) -> Result<usize, BenchError> {
        let mut tx = pool.begin().await?;
        let updated: Vec<Uuid> = sqlx::query_scalar(RAW_UPDATE)
            .bind(&self.id)
            .bind(&self.tenant_id)
            .bind(&self.source_id)
            .bind(&self.target_id)
            .bind(&self.status)
            .bind(&self.base)
            .bind(&self.cleared)
            .bind(&self.cleared)
            .bind(&self.attempts)
            .bind(&self.version)
            .bind(&self.updated_at)
            .bind(&self.read_version)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(updated.len())
    }
}

/// Looks every id up through the store with no cache, each batch right
/// after the raw query for it. The first of two passes warms PostgreSQL's
/// buffers and both prepared statements and is not counted.
async fn postgres_lookups(
    db: &Store,
    pool: &PgPool,
    scope: &EntityScope,
    batches: &[&[String]],
) -> Result<(Duration, Duration), BenchError> {
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    // Found once, as the store keeps it.
    let number: i32 = sqlx::query_scalar(
        "SELECT id FROM mapping_scopes WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3",
    )
    .bind(scope.tenant_id.as_str())
    .bind(scope.integration_id.as_str())
    .bind(scope.entity_type.as_str())
    .fetch_one(pool)
    .await?;
    for pass in 0..2 {
        for (i, batch) in batches.iter().enumerate() {
            let raw_select = sqlx::query(RAW_SELECT).bind(number).bind(*batch).fetch_all(pool);
            let ((found, ours_t), (rows, raw_t)) =
                in_turn(i, db.lookup(scope, Side::Source, batch), raw_select).await?;
            expect_all(&found, batch.len(), "PostgreSQL lookup")?;
            if rows.len() != batch.len() {
                return Err(BenchError::Invalid(format!(
                    "raw SELECT returned {} of {} rows",
                    rows.len(),
                    batch.len()
                )));
            }
            if pass == 1 {
                raw += raw_t;
                ours += ours_t;
            }
        }
    }
    Ok((ours, raw))
}

/// Warms the Redis cache with one pass, then looks every id up through the
/// store, each batch right after a raw MGET of its keys.
async fn redis_lookups(
    cached: &Store,
    raw_redis: &mut redis::aio::MultiplexedConnection,
    scope: &EntityScope,
    batches: &[&[String]],
) -> Result<(Duration, Duration), BenchError> {
    let keys: Vec<Vec<String>> = batches
        .iter()
        .map(|batch| cached.cache().keys(scope, Side::Source, batch))
        .collect();
    for batch in batches {
        cached.lookup(scope, Side::Source, batch).await?;
    }
    let before = cached.cache().counts();
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for (i, (batch, keys)) in batches.iter().zip(&keys).enumerate() {
        let raw_mget = async {
            redis::cmd("MGET")
                .arg(keys)
                .query_async::<Vec<Option<Vec<u8>>>>(&mut *raw_redis)
                .await
        };
        let ((found, ours_t), (values, raw_t)) =
            in_turn(i, cached.lookup(scope, Side::Source, batch), raw_mget).await?;
        ours += ours_t;
        raw += raw_t;
        expect_all(&found, batch.len(), "Redis lookup")?;
        if values.iter().any(Option::is_none) {
            return Err(BenchError::Invalid(
                "raw MGET missed a key the cache was warmed with".into(),
            ));
        }
    }
    expect_warm(cached.cache(), before, batches, "Redis")?;
    Ok((ours, raw))
}

/// Awaits `ours` and `raw`, timing each: raw first on even batches, ours
/// first on odd ones, so that neither always runs on the connection or
/// cache state the other just left.
async fn in_turn<T, R, E1, E2>(
    batch: usize,
    ours: impl Future<Output = Result<T, E1>>,
    raw: impl Future<Output = Result<R, E2>>,
) -> Result<((T, Duration), (R, Duration)), BenchError>
where
    BenchError: From<E1> + From<E2>,
{
    async fn timed<V, E>(f: impl Future<Output = Result<V, E>>) -> Result<(V, Duration), E> {
        let start = Instant::now();
        let v = f.await?;
        Ok((v, start.elapsed()))
    }
    if batch.is_multiple_of(2) {
        let raw = timed(raw).await?;
        Ok((timed(ours).await?, raw))
    } else {
        let ours = timed(ours).await?;
        Ok((ours, timed(raw).await?))
    }
}

/// Warms the in-process cache with the first [`LOCAL_WORKING_SET`]
/// records, then times as many lookups as there are batches, cycling
/// through that set.
async fn local_lookups(
    local: &Store,
    scope: &EntityScope,
    batches: &[&[String]],
) -> Result<(usize, Duration), BenchError> {
    let set = &batches[..(LOCAL_WORKING_SET / BATCH).clamp(1, batches.len())];
    for batch in set {
        local.lookup(scope, Side::Source, batch).await?;
    }
    let timed: Vec<&[String]> = set.iter().copied().cycle().take(batches.len()).collect();
    let before = local.cache().counts();
    let mut elapsed = Duration::ZERO;
    for batch in &timed {
        let t = Instant::now();
        let found = local.lookup(scope, Side::Source, batch).await?;
        elapsed += t.elapsed();
        expect_all(&found, batch.len(), "in-process lookup")?;
    }
    expect_warm(local.cache(), before, &timed, "in-process")?;
    Ok((timed.iter().map(|b| b.len()).sum(), elapsed))
}

fn expect_all(found: &HashMap<String, IdMapping>, wanted: usize, what: &str) -> Result<(), BenchError> {
    if found.len() != wanted {
        return Err(BenchError::Invalid(format!(
            "{what} found {} of {wanted} mappings",
            found.len()
        )));
    }
    Ok(())
}

/// Checks that a timed pass was answered by the cache alone.
fn expect_warm(
    cache: &MappingCache,
    before: CacheCounts,
    batches: &[&[String]],
    what: &str,
) -> Result<(), BenchError> {
    let n: usize = batches.iter().map(|b| b.len()).sum();
    let after = cache.counts();
    let (hits, misses, fallbacks) = (
        after.hits - before.hits,
        after.misses - before.misses,
        after.fallbacks - before.fallbacks,
    );
    if hits != n as u64 || misses != 0 || fallbacks != 0 {
        return Err(BenchError::Invalid(format!(
            "the {what} cache was not warm: {hits} hits, {misses} misses, {fallbacks} fallbacks for {n} lookups"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn a_figure_meets_its_targets_only_together() {
        let fig = |secs: f64, raw: Option<f64>| Figure {
            raw: raw.map(Duration::from_secs_f64),
            ..Figure::ours("x", 100_000, Duration::from_secs_f64(secs), Some(100_000.0))
        };
        assert_eq!(fig(0.5, Some(0.4)).met(), Some(true));
        assert_eq!(fig(2.0, Some(1.9)).met(), Some(false), "too slow");
        assert_eq!(fig(0.5, Some(0.1)).met(), Some(false), "too far behind raw");
        assert_eq!(fig(0.5, None).met(), Some(true));
        assert_eq!(Figure::ours("y", 1, Duration::from_secs(1), None).met(), None);
    }
}
