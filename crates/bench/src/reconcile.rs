//! `syncd bench reconcile`: one real run whose delete step reconciles a
//! large ID map against both systems, with a few of the source records
//! gone: the time of the pass and the process's peak memory.
//!
//! Setup is done by the database itself, so it neither takes long nor
//! shows in the process's memory: a source table (`orders`) and a target
//! table (`sales_orders`) of `records` rows each from `generate_series`,
//! the same number of `mapped` mappings inserted straight into the state
//! store's `id_mappings` (migrated by [`Store::connect`] first), each with
//! a base snapshot such as a sync writes, a sync cursor at the end of the
//! source table so the sync step finds no changes, and a `reconciles` row a
//! day old so the reconciliation is due. The tables are vacuumed and
//! analyzed, as autovacuum would have done on a system this size, and then
//! `gone` random source rows are deleted.
//!
//! The run is the real thing (`Job::prepare`, `start`, `execute`), with a
//! definition that reconciles on every run and a brake that never holds.
//! The bench refuses to print its figures unless the run did exactly what
//! it is meant to: no changes synced, every mapping checked, exactly the
//! gone records' target rows deleted and their mappings `stale`.
//!
//! Memory is the process's peak resident set (VmHWM), which only grows; to
//! show it does not grow with the ID map, run the bench once at 100,000
//! and once at 1,000,000 records, each in a process of its own.

use super::api::{cleaned, load_average, schema_url};
use super::sync::peak_rss_mib;
use super::{BenchError, BenchSchema, thousands};
use sqlx::PgPool;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::Workflow;
use syncd_engine::run::executor::{Job, Options, Progress, RunError};
use syncd_engine::run::{RunState, StepCounters, StepDirection};
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};

const TENANT: &str = "bench";
const INTEGRATION: &str = "bench-reconcile";
const ENTITY: &str = "order";

/// The pass must take less than this at 1,000,000 records (issue 7).
pub const TARGET: Duration = Duration::from_secs(10);

/// What `syncd bench reconcile` runs.
#[derive(Clone, Debug)]
pub struct ReconcileBench {
    /// Mapped records (rows in each table, mappings in the ID map).
    pub records: usize,
    /// Source rows deleted before the run.
    pub gone: usize,
    /// Records per page, as `syncd run --page-size`.
    pub page_size: u32,
    pub postgres_url: String,
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct ReconcileReport {
    pub postgres_version: String,
    pub records: usize,
    pub gone: usize,
    pub page_size: u32,
    pub load_before: String,
    pub load_after: String,
    /// Tables, mappings, vacuum and the deletes, all server-side.
    pub setup: Duration,
    /// `start` and `execute`: the sync step and the delete step.
    pub run: Duration,
    /// From the end of the sync step to the delete step's last checkpoint.
    pub delete_step: Duration,
    /// The walk over the mappings, and the brake's count of what it found.
    pub reconcile: Duration,
    /// Deleting the gone records' target rows, marking their mappings stale.
    pub act: Duration,
    /// Peak resident memory once the setup was done, and at the end (MiB).
    pub peak_after_setup: Option<f64>,
    pub peak_at_end: Option<f64>,
    /// CPU time (user and system, all threads) this process spent in the
    /// run: what is not the databases' work or waiting for them.
    pub run_cpu: Option<Duration>,
}

impl ReconcileReport {
    /// Whether the delete step took less than [`TARGET`]; the target is set
    /// for 1,000,000 records, so a smaller run only shows the trend.
    pub fn met(&self) -> bool {
        self.delete_step < TARGET
    }
}

impl fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "PostgreSQL {}; load average {} at the start, {} at the end",
            self.postgres_version, self.load_before, self.load_after
        )?;
        writeln!(
            f,
            "{} mapped `{ENTITY}` records, {} of them gone from the source; pages of {}; \
             setup {:.1} s (server-side)",
            thousands(self.records as f64),
            thousands(self.gone as f64),
            self.page_size,
            self.setup.as_secs_f64()
        )?;
        writeln!(f, "{:<42} {:>9} {:>12}", "what", "seconds", "records/s")?;
        let rows = [
            ("whole run (sync step + delete step)", self.run, self.records),
            ("delete step", self.delete_step, self.records),
            (
                "  reconcile: check all, count for brake",
                self.reconcile,
                self.records,
            ),
            ("  act: delete the gone targets", self.act, self.gone),
        ];
        for (what, took, n) in rows {
            writeln!(
                f,
                "{what:<42} {:>9.3} {:>12}",
                took.as_secs_f64(),
                thousands(n as f64 / took.as_secs_f64())
            )?;
        }
        let mib = |m: Option<f64>| m.map_or("unknown".into(), |m| format!("{m:.0} MiB"));
        writeln!(
            f,
            "peak resident memory: {} after the setup, {} at the end",
            mib(self.peak_after_setup),
            mib(self.peak_at_end)
        )?;
        if let Some(cpu) = self.run_cpu {
            writeln!(
                f,
                "CPU time of this process during the run: {:.2} s (the rest is the databases and the waits)",
                cpu.as_secs_f64()
            )?;
        }
        write!(
            f,
            "target: delete step < {} s at 1,000,000 records: {}",
            TARGET.as_secs(),
            match (self.met(), self.records >= 1_000_000) {
                (true, true) => "met",
                (false, true) => "MISSED",
                (_, false) => "(not judged below 1,000,000 records)",
            }
        )
    }
}

/// Runs the bench in three schemas of its own (source, target, state) and
/// removes them.
pub async fn run(bench: &ReconcileBench) -> Result<ReconcileReport, BenchError> {
    if bench.records == 0 || bench.gone > bench.records || bench.page_size == 0 {
        return Err(BenchError::Invalid(
            "need at least one record, no more gone than records, and a page size".into(),
        ));
    }
    let load_before = load_average();
    let mut schemas = Vec::new();
    let mut result = Err(BenchError::Invalid("no schemas to work in".into()));
    for _ in 0..3 {
        match BenchSchema::create(&bench.postgres_url).await {
            Ok(schema) => schemas.push(schema),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let [source, target, state] = &schemas[..] {
        result = measure(bench, source, target, state).await;
    }
    let mut cleanup = Ok(());
    for schema in schemas {
        if let Err(e) = schema.drop().await {
            cleanup = Err(e);
        }
    }
    let mut report = cleaned(result, cleanup)?;
    report.load_before = load_before;
    report.load_after = load_average();
    Ok(report)
}

/// A one-way definition of orders that reconciles on every run, with a brake
/// that never holds.
fn workflow(source: &str, target: &str, records: usize) -> String {
    format!(
        r#"name = "{INTEGRATION}"
direction = "one_way"
source = "shop"
target = "erp"
[systems.shop]
connector = "sql"
url = "{source}"
[systems.erp]
connector = "sql"
url = "{target}"
[[entities]]
name = "{ENTITY}"
source_table = "orders"
target_table = "sales_orders"
reconcile_every = "0s"
delete_brake = {{ percent = 100, max = {records} }}
[entities.fields]
customer = {{ source = "customer", target = "customer_name" }}
[tenants.{TENANT}]
"#
    )
}

/// Row `i`'s values, shared by both tables and the base snapshot, so the
/// three agree as they would after a sync.
const SOURCE_ID: &str = "'O' || lpad(i::text, 9, '0')";
const TARGET_ID: &str = "md5('order-' || i)::uuid::text";
const CUSTOMER: &str = "'Customer ' || (i % 5000)";
const TOTAL: &str = "(i % 1000) + 0.5";
const STAMP: &str = "timestamptz '2026-01-01' + i * interval '1 millisecond'";

async fn seed_systems(source: &PgPool, target: &PgPool, n: i64) -> Result<(), BenchError> {
    sqlx::raw_sql(
        "CREATE TABLE orders (id text PRIMARY KEY, customer text, total numeric(12,2), status text, \
         updated_at timestamptz NOT NULL); \
         CREATE INDEX orders_changes ON orders (updated_at, id);",
    )
    .execute(source)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO orders SELECT {SOURCE_ID}, {CUSTOMER}, {TOTAL}, 'open', {STAMP} \
         FROM generate_series(1, $1) AS s(i)"
    ))
    .bind(n)
    .execute(source)
    .await?;
    sqlx::raw_sql(
        "CREATE TABLE sales_orders (id text PRIMARY KEY, customer_name text, total numeric(12,2), \
         status text, updated_at timestamptz NOT NULL); \
         CREATE INDEX sales_orders_changes ON sales_orders (updated_at, id);",
    )
    .execute(target)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO sales_orders SELECT {TARGET_ID}, {CUSTOMER}, {TOTAL}, 'open', {STAMP} \
         FROM generate_series(1, $1) AS s(i)"
    ))
    .bind(n)
    .execute(target)
    .await?;
    Ok(())
}

/// The mappings a sync of the two tables would have left, the source's
/// sync cursor at its last row, and a reconciliation a day ago.
async fn seed_state(state: &PgPool, source_schema: &str, n: i64) -> Result<(), BenchError> {
    sqlx::query(&format!(
        "WITH scope AS (INSERT INTO mapping_scopes (tenant_id, integration_id, entity_type) \
             VALUES ($2, $3, $4) RETURNING id) \
         INSERT INTO id_mappings (id, tenant_id, integration_id, entity_type, source_id, target_id, status, \
         base, attempts, version, created_at, updated_at, scope) \
         SELECT md5('mapping-' || i)::uuid, $2, $3, $4, {SOURCE_ID}, {TARGET_ID}, 'mapped', \
         jsonb_build_object('customer', {CUSTOMER}, 'status', 'open', 'total', {TOTAL}), \
         0, 2, now() - interval '2 days', now() - interval '2 days', (SELECT id FROM scope) \
         FROM generate_series(1, $1) AS s(i)"
    ))
    .bind(n)
    .bind(TENANT)
    .bind(INTEGRATION)
    .bind(ENTITY)
    .execute(state)
    .await?;
    let cursor = sqlx::query(&format!(
        "INSERT INTO sync_cursors (tenant_id, integration_id, entity_type, side, cursor, updated_at) \
         SELECT $1, $2, $3, 'source', jsonb_build_object('updated_at', to_jsonb(o.updated_at), \
         'id', to_jsonb(o.id)), now() \
         FROM \"{source_schema}\".orders o ORDER BY o.updated_at DESC, o.id DESC LIMIT 1"
    ))
    .bind(TENANT)
    .bind(INTEGRATION)
    .bind(ENTITY)
    .execute(state)
    .await?;
    if cursor.rows_affected() != 1 {
        return Err(BenchError::Invalid(
            "no source row to put the sync cursor at".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO reconciles (tenant_id, integration_id, entity_type, reconciled_at) \
         VALUES ($1, $2, $3, now() - interval '1 day')",
    )
    .bind(TENANT)
    .bind(INTEGRATION)
    .bind(ENTITY)
    .execute(state)
    .await?;
    Ok(())
}

/// When the run's progress reports came: the last of the sync step, the
/// last of the delete step before it acted on anything, and its last.
#[derive(Default)]
struct Marks {
    sync_done: Option<Instant>,
    reconciled: Option<Instant>,
    delete_done: Option<Instant>,
}

impl Marks {
    fn note(&mut self, p: &Progress) {
        let now = Instant::now();
        if p.direction != StepDirection::Delete {
            self.sync_done = Some(now);
            return;
        }
        if p.counters.deleted == 0 {
            self.reconciled = Some(now);
        }
        self.delete_done = Some(now);
    }
}

async fn measure(
    bench: &ReconcileBench,
    source: &BenchSchema,
    target: &BenchSchema,
    state: &BenchSchema,
) -> Result<ReconcileReport, BenchError> {
    let n = bench.records as i64;
    let postgres_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&state.pool)
        .await?;
    let store = Arc::new(
        Store::connect(
            &StoreConfig::new(schema_url(&bench.postgres_url, &state.name)),
            MappingCache::local(),
        )
        .await?,
    );

    let started = Instant::now();
    seed_systems(&source.pool, &target.pool, n).await?;
    seed_state(&state.pool, &source.name, n).await?;
    for (schema, table) in [
        (source, "orders"),
        (target, "sales_orders"),
        (state, "id_mappings"),
    ] {
        sqlx::query(&format!("VACUUM ANALYZE {table}"))
            .execute(&schema.pool)
            .await?;
    }
    let gone: Vec<String> = sqlx::query_scalar(
        "DELETE FROM orders WHERE id IN (SELECT id FROM orders ORDER BY random() LIMIT $1) RETURNING id",
    )
    .bind(bench.gone as i64)
    .fetch_all(&source.pool)
    .await?;
    let gone_targets: Vec<String> =
        sqlx::query_scalar("SELECT target_id FROM id_mappings WHERE tenant_id = $1 AND source_id = ANY($2)")
            .bind(TENANT)
            .bind(&gone)
            .fetch_all(&state.pool)
            .await?;
    if gone.len() != bench.gone || gone_targets.len() != bench.gone {
        return Err(BenchError::Invalid(format!(
            "deleted {} source rows with {} mappings, not {}",
            gone.len(),
            gone_targets.len(),
            bench.gone
        )));
    }
    // Flushed, so the checkpointer does not write the setup's pages out
    // during the run, as it would not on a system in its steady state.
    sqlx::query("CHECKPOINT").execute(&state.pool).await?;
    let setup = started.elapsed();
    let peak_after_setup = peak_rss_mib();

    let toml = workflow(
        &schema_url(&bench.postgres_url, &source.name),
        &schema_url(&bench.postgres_url, &target.name),
        bench.records,
    );
    let wf = Workflow::parse("bench-reconcile.toml", &toml).map_err(RunError::from)?;
    let options = Options {
        page_size: bench.page_size,
        ..Options::default()
    };
    let job = Job::prepare(
        store.clone(),
        wf,
        &DependencyGraph::builtin_default(),
        TENANT.into(),
        options,
    )
    .await?;
    let mut marks = Marks::default();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let run = job.start("bench").await?;
    let run = job.execute(run, &mut |p| marks.note(p)).await?;
    let run_time = started.elapsed();
    let peak_at_end = peak_rss_mib();
    let run_cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));

    check(
        &store,
        &run,
        bench,
        (&target.pool, &state.pool),
        (&gone, &gone_targets),
    )
    .await?;
    let (Some(sync_done), Some(reconciled), Some(delete_done)) =
        (marks.sync_done, marks.reconciled, marks.delete_done)
    else {
        return Err(BenchError::Invalid(
            "the run reported no sync or no delete step".into(),
        ));
    };
    Ok(ReconcileReport {
        postgres_version,
        records: bench.records,
        gone: bench.gone,
        page_size: bench.page_size,
        load_before: String::new(),
        load_after: String::new(),
        setup,
        run: run_time,
        delete_step: delete_done - sync_done,
        reconcile: reconciled - sync_done,
        act: delete_done - reconciled,
        peak_after_setup,
        peak_at_end,
        run_cpu,
    })
}

/// User and system time of this process so far, all threads (Linux:
/// `/proc/self/stat`, in the kernel's fixed 100 ticks a second).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let ticks: u64 = rest.next()?.parse::<u64>().ok()? + rest.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Fails unless the run synced nothing, checked every mapping, deleted
/// exactly the gone records' target rows and left exactly their mappings
/// `stale`.
async fn check(
    store: &Store,
    run: &syncd_store::RunRow,
    bench: &ReconcileBench,
    (target, state): (&PgPool, &PgPool),
    (gone, gone_targets): (&[String], &[String]),
) -> Result<(), BenchError> {
    let invalid = |what: String| Err(BenchError::Invalid(what));
    if run.state != RunState::Succeeded {
        return invalid(format!("the run ended {}: {:?}", run.state, run.error));
    }
    let steps = store.load_steps(run.id).await?;
    let counters = |direction: StepDirection| -> StepCounters {
        steps
            .iter()
            .filter(|s| s.direction == direction)
            .map(|s| s.counters)
            .next()
            .unwrap_or_default()
    };
    let (sync, delete) = (counters(StepDirection::Forward), counters(StepDirection::Delete));
    if sync.read != 0 {
        return invalid(format!("the sync step read {} changes, not none", sync.read));
    }
    let expected = StepCounters {
        read: bench.records as u64,
        deleted: bench.gone as u64,
        ..StepCounters::default()
    };
    if delete != expected {
        return invalid(format!(
            "the delete step counted {delete:?}, not {} checked and {} deleted",
            bench.records, bench.gone
        ));
    }
    let (left, still_there): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE id = ANY($1)) FROM sales_orders")
            .bind(gone_targets)
            .fetch_one(target)
            .await?;
    if left as usize != bench.records - bench.gone || still_there != 0 {
        return invalid(format!(
            "{left} target rows left ({still_there} of the gone ones), not {}",
            bench.records - bench.gone
        ));
    }
    let (mapped, stale, stale_gone): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'mapped'), count(*) FILTER (WHERE status = 'stale'), \
         count(*) FILTER (WHERE status = 'stale' AND source_id = ANY($2)) \
         FROM id_mappings WHERE tenant_id = $1",
    )
    .bind(TENANT)
    .bind(gone)
    .fetch_one(state)
    .await?;
    if mapped as usize != bench.records - bench.gone
        || stale as usize != bench.gone
        || stale_gone as usize != bench.gone
    {
        return invalid(format!(
            "{mapped} mappings mapped and {stale} stale ({stale_gone} of the gone records), \
             not {} and {}",
            bench.records - bench.gone,
            bench.gone
        ));
    }
    Ok(())
}
