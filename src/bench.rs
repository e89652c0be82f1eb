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
//! The bench works in a PostgreSQL schema and a Redis key prefix of its own
//! and removes both when it ends, also when a step fails.

use crate::cache::MappingCache;
use crate::ids::EntityScope;
use crate::mapping::{IdMapping, MappingChange};
use crate::record::{Fields, Side};
use crate::store::{DEFAULT_MAX_SNAPSHOT_BYTES, MappingWrite, PageCommit, Store, StoreError};
use chrono::Utc;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// PostgreSQL used when neither `--postgres-url` nor a PostgreSQL
/// `SYNCD_DATABASE_URL` is given.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Redis used when neither `--redis-url` nor `SYNCD_REDIS_URL` is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Ids per lookup and mappings per page, as a sync step uses them.
pub const BATCH: usize = 1_000;

/// The smallest acceptable ratio of our rate to the raw client's.
pub const RATIO_TARGET: f64 = 0.7;

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
        flag.or_else(|| std::env::var("SYNCD_REDIS_URL").ok())
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
    /// A raw client's own figure, shown beneath ours.
    pub is_raw: bool,
}

impl Figure {
    /// Records per second.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Our rate over the raw client's: raw time over ours.
    pub fn ratio(&self) -> Option<f64> {
        self.raw.map(|raw| raw.as_secs_f64() / self.elapsed.as_secs_f64())
    }

    /// Whether the rate and the ratio reach their targets.
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
    let digits = format!("{:.0}", n);
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
            "{:<44} {:>8} {:>8} {:>11} {:>9} {:>6} {:>5}",
            "what", "records", "seconds", "rate/s", "target/s", "ratio", "met"
        )?;
        for fig in &self.figures {
            writeln!(
                f,
                "{:<44} {:>8} {:>8.3} {:>11} {:>9} {:>6} {:>5}",
                if fig.is_raw {
                    format!("  {}", fig.what)
                } else {
                    fig.what.to_owned()
                },
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
            "ratio: our rate over the raw client's on the same ids, timed batch by batch \
             in turn (target {RATIO_TARGET:.2})"
        )
    }
}

/// Runs the store bench in a fresh schema and key prefix, and removes both.
pub async fn store(bench: &StoreBench) -> Result<StoreReport, BenchError> {
    let schema = BenchSchema::create(&bench.postgres_url).await?;
    let redis = redis::Client::open(bench.redis_url.as_str())?;
    let prefix = format!("syncd-bench-{}", Uuid::new_v4().simple());
    let result = measure(bench, &schema.pool, &redis, &prefix).await;
    let cleaned = async {
        delete_prefix(&redis, &prefix).await?;
        schema.drop().await?;
        Ok::<(), BenchError>(())
    }
    .await;
    match (result, cleaned) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), cleanup) => {
            if let Err(c) = cleanup {
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
        let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
        let name = format!("syncd_bench_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&admin)
            .await?;
        let options = PgConnectOptions::from_str(url)?
            .options([("search_path", name.as_str())])
            .disable_statement_logging();
        let pool = match PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
        {
            Ok(pool) => pool,
            Err(e) => {
                let _ = sqlx::query(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                    .execute(&admin)
                    .await;
                return Err(e.into());
            }
        };
        Ok(BenchSchema { name, pool, admin })
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
            .arg(1000)
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
    let value = serde_json::json!({
        "name": format!("Account {i}"),
        "email": format!("account{i}@example.com"),
        "country": "DE",
        "credit_limit": 1000 + i % 5000,
        "active": i % 7 != 0,
    });
    match value {
        serde_json::Value::Object(fields) => fields,
        _ => unreachable!("an object literal"),
    }
}

async fn measure(
    bench: &StoreBench,
    pool: &PgPool,
    redis: &redis::Client,
    prefix: &str,
) -> Result<StoreReport, BenchError> {
    let n = bench.records;
    let scope = EntityScope::new("bench-tenant", "bench-integration", "account");
    let ids: Vec<String> = (0..n).map(|i| format!("src-{i:09}")).collect();
    let batches: Vec<&[String]> = ids.chunks(BATCH).collect();
    let mut figures = Vec::new();

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

    // Seed: every record reserved as pending, a page at a time.
    let db = Store::postgres(pool.clone(), MappingCache::disabled(), DEFAULT_MAX_SNAPSHOT_BYTES).await?;
    let now = Utc::now();
    let mut pending = Vec::with_capacity(n);
    for batch in &batches {
        let mappings = batch
            .iter()
            .map(|id| {
                MappingWrite::Insert(IdMapping::reserve(
                    Uuid::new_v4(),
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
            .await?,
        );
    }

    // Transitions: pending → mapped, a page of Confirms at a time. The
    // pages are built first so that only the store is timed.
    let pages: Vec<PageCommit> = pending
        .chunks(BATCH)
        .enumerate()
        .map(|(p, chunk)| PageCommit {
            mappings: chunk
                .iter()
                .enumerate()
                .map(|(j, m)| MappingWrite::Transition {
                    current: m.clone(),
                    change: MappingChange::Confirm {
                        source_id: m.source_id.clone().unwrap_or_default(),
                        target_id: format!("tgt-{:09}", p * BATCH + j),
                        base: base_of(p * BATCH + j),
                    },
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    drop(pending);
    let cpu0 = cpu_ticks();
    let start = Instant::now();
    for page in pages {
        db.commit_page(page).await?;
    }
    eprintln!(
        "XXX transitions: wall {:?} cpu ticks {}",
        start.elapsed(),
        cpu_ticks() - cpu0
    );
    figures.push(Figure {
        what: "Store::commit_page, pending→mapped, PostgreSQL",
        records: n,
        elapsed: start.elapsed(),
        target: Some(30_000.0),
        raw: None,
        is_raw: false,
    });
    // Steady state for the lookups: no dead rows from the updates, fresh
    // statistics, and no autovacuum starting in the middle of a pass.
    sqlx::query("VACUUM ANALYZE id_mappings").execute(pool).await?;

    // Lookups from PostgreSQL, cache disabled, against the raw query.
    let raw_sql = "SELECT id, tenant_id, integration_id, entity_type, source_id, target_id, status, base, \
                   idempotency_key, last_error, attempts, version, created_at, updated_at \
                   FROM id_mappings \
                   WHERE tenant_id = $1 AND integration_id = $2 AND entity_type = $3 AND source_id = ANY($4)";
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for pass in 0..2 {
        for batch in &batches {
            let t = Instant::now();
            let rows = sqlx::query(raw_sql)
                .bind(scope.tenant_id.as_str())
                .bind(scope.integration_id.as_str())
                .bind(scope.entity_type.as_str())
                .bind(*batch)
                .fetch_all(pool)
                .await?;
            let raw_t = t.elapsed();
            let t = Instant::now();
            let found = db.lookup(&scope, Side::Source, batch).await?;
            let ours_t = t.elapsed();
            expect_all(&found, batch.len(), "PostgreSQL lookup")?;
            expect_all_rows(rows.len(), batch.len())?;
            // The first pass warms PostgreSQL's buffers and both statements.
            if pass == 1 {
                raw += raw_t;
                ours += ours_t;
            }
        }
    }
    figures.push(Figure {
        what: "Store::lookup, PostgreSQL, cache disabled",
        records: n,
        elapsed: ours,
        target: Some(100_000.0),
        raw: Some(raw),
        is_raw: false,
    });
    figures.push(Figure {
        what: "raw sqlx SELECT … source_id = ANY($4)",
        records: n,
        elapsed: raw,
        target: None,
        raw: None,
        is_raw: true,
    });

    // Lookups through a warm Redis cache, against a raw MGET of the same keys.
    let cached = Store::postgres(
        pool.clone(),
        MappingCache::redis(&bench.redis_url, prefix)?,
        DEFAULT_MAX_SNAPSHOT_BYTES,
    )
    .await?;
    let keys: Vec<Vec<String>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|id| cached.cache().key(&scope, Side::Source, id))
                .collect()
        })
        .collect();
    for batch in &batches {
        cached.lookup(&scope, Side::Source, batch).await?;
    }
    let before = cached.cache().counts();
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    for (batch, keys) in batches.iter().zip(&keys) {
        let t = Instant::now();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(keys).query_async(&mut raw_redis).await?;
        raw += t.elapsed();
        let t = Instant::now();
        let found = cached.lookup(&scope, Side::Source, batch).await?;
        ours += t.elapsed();
        expect_all(&found, batch.len(), "Redis lookup")?;
        if values.iter().any(Option::is_none) {
            return Err(BenchError::Invalid(
                "raw MGET missed a key the cache was warmed with".into(),
            ));
        }
    }
    expect_warm(cached.cache(), before, n, "Redis")?;
    figures.push(Figure {
        what: "Store::lookup, Redis cache warm",
        records: n,
        elapsed: ours,
        target: Some(300_000.0),
        raw: Some(raw),
        is_raw: false,
    });
    figures.push(Figure {
        what: "raw redis MGET",
        records: n,
        elapsed: raw,
        target: None,
        raw: None,
        is_raw: true,
    });

    // Lookups through a warm in-process cache; there is no raw client here.
    let local = Store::postgres(pool.clone(), MappingCache::local(), DEFAULT_MAX_SNAPSHOT_BYTES).await?;
    for batch in &batches {
        local.lookup(&scope, Side::Source, batch).await?;
    }
    let before = local.cache().counts();
    let start = Instant::now();
    for batch in &batches {
        let found = local.lookup(&scope, Side::Source, batch).await?;
        expect_all(&found, batch.len(), "in-process lookup")?;
    }
    let elapsed = start.elapsed();
    expect_warm(local.cache(), before, n, "in-process")?;
    figures.push(Figure {
        what: "Store::lookup, in-process cache warm",
        records: n,
        elapsed,
        target: None,
        raw: None,
        is_raw: false,
    });

    Ok(StoreReport {
        postgres_version,
        redis_version,
        figures,
    })
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn expect_all<V>(
    found: &std::collections::HashMap<String, V>,
    wanted: usize,
    what: &str,
) -> Result<(), BenchError> {
    if found.len() != wanted {
        return Err(BenchError::Invalid(format!(
            "{what} found {} of {wanted} mappings",
            found.len()
        )));
    }
    Ok(())
}

fn expect_all_rows(rows: usize, wanted: usize) -> Result<(), BenchError> {
    if rows != wanted {
        return Err(BenchError::Invalid(format!(
            "raw SELECT returned {rows} of {wanted} rows"
        )));
    }
    Ok(())
}

/// Checks that a timed pass was answered by the cache alone.
fn expect_warm(
    cache: &MappingCache,
    before: crate::cache::CacheCounts,
    n: usize,
    what: &str,
) -> Result<(), BenchError> {
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
            what: "x",
            records: 100_000,
            elapsed: Duration::from_secs_f64(secs),
            target: Some(100_000.0),
            raw: raw.map(Duration::from_secs_f64),
            is_raw: false,
        };
        assert_eq!(fig(0.5, Some(0.4)).met(), Some(true));
        assert_eq!(fig(2.0, Some(1.9)).met(), Some(false), "too slow");
        assert_eq!(fig(0.5, Some(0.1)).met(), Some(false), "too far behind raw");
        assert_eq!(fig(0.5, None).met(), Some(true));
    }
}

#[cfg(test)]
mod experiment {
    use super::*;
    use std::hint::black_box;

    #[test]
    #[ignore]
    fn costs() {
        let scope = EntityScope::new("bench-tenant", "bench-integration", "account");
        let cache = MappingCache::local();
        let n = 100_000;
        let ids: Vec<String> = (0..n).map(|i| format!("src-{i:09}")).collect();
        let t = Instant::now();
        for id in &ids {
            black_box(cache.key(&scope, Side::Source, id));
        }
        println!("key: {:?}/item", t.elapsed() / n as u32);
        let mut m = IdMapping::reserve(
            Uuid::new_v4(),
            scope.clone(),
            Some("src-000000001".into()),
            None,
            "bench-src-000000001".into(),
            Utc::now(),
        );
        m.apply(
            MappingChange::Confirm {
                source_id: "src-000000001".into(),
                target_id: "tgt-000000001".into(),
                base: base_of(1),
            },
            Utc::now(),
        )
        .unwrap();
        let json = serde_json::to_string(&m).unwrap();
        let value = format!("2|{json}");
        println!("value: {} bytes: {value}", value.len());
        let t = Instant::now();
        for _ in 0..n {
            let (_, j) = black_box(&value)
                .split_once('|')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .unwrap();
            black_box(serde_json::from_str::<IdMapping>(&j).unwrap());
        }
        println!("decode: {:?}/item", t.elapsed() / n as u32);

        let t = Instant::now();
        for _ in 0..n {
            let j = black_box(&value).split_once('|').unwrap().1;
            black_box(serde_json::from_str::<IdMapping>(j).unwrap());
        }
        println!("decode no copy: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            black_box(serde_json::from_str::<serde_json::Value>(black_box(&json)).unwrap());
        }
        println!("decode as Value: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            black_box(
                serde_json::from_str::<chrono::DateTime<Utc>>(black_box(
                    "\"2026-11-25T18:34:16.172618812Z\"",
                ))
                .unwrap(),
            );
        }
        println!("datetime: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            black_box(
                serde_json::from_str::<Uuid>(black_box("\"0f6f4d4c-5c3d-43f4-987f-f59dcb763b78\"")).unwrap(),
            );
        }
        println!("uuid: {:?}/item", t.elapsed() / n as u32);
        let basej = serde_json::to_string(&base_of(1)).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            black_box(serde_json::from_str::<Fields>(black_box(&basej)).unwrap());
        }
        println!("base: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            black_box(serde_json::to_string(black_box(&m)).unwrap());
        }
        println!("encode: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        for _ in 0..n {
            black_box(black_box(&m).clone());
        }
        println!("clone: {:?}/item", t.elapsed() / n as u32);
        let t = Instant::now();
        let mut map = std::collections::HashMap::with_capacity(1000);
        for (i, id) in ids.iter().enumerate() {
            if i % 1000 == 0 {
                map = std::collections::HashMap::with_capacity(1000);
            }
            map.insert(id.clone(), i);
        }
        black_box(map);
        println!("hashmap insert: {:?}/item", t.elapsed() / n as u32);
    }
}
