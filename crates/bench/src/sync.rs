//! `syncd bench sync`: end-to-end records per second of a one-way run over
//! three stages (accounts, contacts, orders), next to the floor a plain bulk
//! copy of the same rows between the same databases reaches, the time of a
//! re-run with nothing new, and the process's peak memory.

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::Workflow;
use syncd_engine::run::executor::{Job, Options};
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};
use uuid::Uuid;

/// What to measure.
pub struct SyncBench {
    pub records: usize,
    pub sqlite: bool,
    pub postgres_url: Option<String>,
    /// A MariaDB (or MySQL) server for MariaDB -> PostgreSQL (a database is
    /// created and dropped); needs `postgres_url` too.
    pub mysql_url: Option<String>,
}

/// The source tables in MariaDB (its `seq_1_to_N` tables seed them).
const SOURCE_MYSQL: &str = "
CREATE TABLE accounts (id VARCHAR(16) PRIMARY KEY, name TEXT, industry TEXT, updated_at DATETIME(6) NOT NULL,
                       INDEX accounts_changes (updated_at, id));
CREATE TABLE contacts (id VARCHAR(16) PRIMARY KEY, name TEXT, email TEXT, account_id VARCHAR(16),
                       updated_at DATETIME(6) NOT NULL, INDEX contacts_changes (updated_at, id));
CREATE TABLE orders (id VARCHAR(16) PRIMARY KEY, account_id VARCHAR(16), contact_id VARCHAR(16), total DOUBLE,
                     status TEXT, updated_at DATETIME(6) NOT NULL, INDEX orders_changes (updated_at, id));
";

/// Generates the source rows in MariaDB itself.
fn seed_mysql(n: usize) -> String {
    let (a, c, o) = split(n);
    let pad = |e: &str| format!("LPAD({e}, 8, '0')");
    let stamp = "TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq * 1000 MICROSECOND";
    format!(
        "INSERT INTO accounts SELECT CONCAT('A', {pa}), CONCAT('Account ', seq), CONCAT('industry ', seq % 7), {stamp} \
         FROM seq_1_to_{a};
         INSERT INTO contacts SELECT CONCAT('C', {pa}), CONCAT('Person ', seq), CONCAT('p', seq, '@example.com'), \
         CONCAT('A', {ca}), {stamp} FROM seq_1_to_{c};
         INSERT INTO orders SELECT CONCAT('O', {pa}), CONCAT('A', {ca}), CONCAT('C', {oc}), (seq % 1000) + 0.5, 'open', \
         {stamp} FROM seq_1_to_{o};",
        pa = pad("seq"),
        ca = pad(&format!("(seq % {a}) + 1")),
        oc = pad(&format!("(seq % {c}) + 1")),
    )
}

pub(crate) const SOURCE: &str = "
CREATE TABLE accounts (id TEXT PRIMARY KEY, name TEXT, industry TEXT, updated_at TEXT NOT NULL);
CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, account_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE orders (id TEXT PRIMARY KEY, account_id TEXT, contact_id TEXT, total REAL, status TEXT,
                     updated_at TEXT NOT NULL);
CREATE INDEX accounts_changes ON accounts (updated_at, id);
CREATE INDEX contacts_changes ON contacts (updated_at, id);
CREATE INDEX orders_changes ON orders (updated_at, id);
";

pub(crate) const TARGET: &str = "
CREATE TABLE customers (id TEXT PRIMARY KEY, customer_name TEXT, industry TEXT, updated_at TEXT NOT NULL);
CREATE TABLE people (id TEXT PRIMARY KEY, full_name TEXT, email TEXT, customer_id TEXT, updated_at TEXT NOT NULL);
CREATE TABLE sales_orders (id TEXT PRIMARY KEY, customer_id TEXT, contact_id TEXT, total REAL, status TEXT,
                           updated_at TEXT NOT NULL);
CREATE INDEX customers_changes ON customers (updated_at, id);
CREATE INDEX people_changes ON people (updated_at, id);
CREATE INDEX sales_orders_changes ON sales_orders (updated_at, id);
";

/// (source column, target column)
type ColumnPairs = &'static [(&'static str, &'static str)];

/// (source table, target table, column pairs)
const COPIES: [(&str, &str, ColumnPairs); 3] = [
    (
        "accounts",
        "customers",
        &[
            ("id", "id"),
            ("name", "customer_name"),
            ("industry", "industry"),
            ("updated_at", "updated_at"),
        ],
    ),
    (
        "contacts",
        "people",
        &[
            ("id", "id"),
            ("name", "full_name"),
            ("email", "email"),
            ("account_id", "customer_id"),
            ("updated_at", "updated_at"),
        ],
    ),
    (
        "orders",
        "sales_orders",
        &[
            ("id", "id"),
            ("account_id", "customer_id"),
            ("contact_id", "contact_id"),
            ("total", "total"),
            ("status", "status"),
            ("updated_at", "updated_at"),
        ],
    ),
];

/// The bench's definition; `tenants` are its `[tenants.…]` sections.
pub(crate) fn workflow(source: &str, target: &str, tenants: &str) -> String {
    format!(
        r#"name = "bench"
direction = "one_way"
source = "src"
target = "dst"
[systems.src]
connector = "sql"
url = "{source}"
[systems.dst]
connector = "sql"
url = "{target}"
[[entities]]
name = "account"
source_table = "accounts"
target_table = "customers"
[entities.fields]
name = {{ source = "name", target = "customer_name" }}
[[entities]]
name = "contact"
source_table = "contacts"
target_table = "people"
[entities.fields]
name = {{ source = "name", target = "full_name" }}
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
[[entities]]
name = "order"
source_table = "orders"
target_table = "sales_orders"
[entities.fields]
account_id = {{ source = "account_id", target = "customer_id", references = "account" }}
contact_id = {{ references = "contact" }}
{tenants}"#
    )
}

/// Splits `n` records over the three stages: 10% accounts, 30% contacts,
/// 60% orders.
pub(crate) fn split(n: usize) -> (usize, usize, usize) {
    let a = (n / 10).max(1);
    let c = (n * 3 / 10).max(1);
    (a, c, n.saturating_sub(a + c).max(1))
}

/// Generates the source rows in the database itself.
pub(crate) fn seed_sql(n: usize, pg: bool) -> String {
    let (a, c, o) = split(n);
    let series = |count: usize, body: &str| {
        if pg {
            format!("{body} FROM generate_series(1, {count}) AS s(i);\n")
        } else {
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {count}) {body} FROM s;\n"
            )
        }
    };
    let pad = |e: &str| {
        if pg {
            format!("lpad(({e})::text, 8, '0')")
        } else {
            format!("printf('%08d', {e})")
        }
    };
    let stamp = if pg {
        "to_char(timestamp '2026-01-01' + i * interval '1 millisecond', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            .to_owned()
    } else {
        "strftime('%Y-%m-%dT%H:%M:%f', '2026-01-01', '+' || (i / 1000.0) || ' seconds') || '000Z'".to_owned()
    };
    let mut sql = String::new();
    sql += &series(
        a,
        &format!(
            "INSERT INTO accounts SELECT 'A' || {}, 'Account ' || i, 'industry ' || (i % 7), {stamp}",
            pad("i")
        ),
    );
    sql += &series(
        c,
        &format!(
            "INSERT INTO contacts SELECT 'C' || {}, 'Person ' || i, 'p' || i || '@example.com', 'A' || {}, {stamp}",
            pad("i"),
            pad(&format!("(i % {a}) + 1"))
        ),
    );
    sql += &series(
        o,
        &format!(
            "INSERT INTO orders SELECT 'O' || {}, 'A' || {}, 'C' || {}, (i % 1000) + 0.5, 'open', {stamp}",
            pad("i"),
            pad(&format!("(i % {a}) + 1")),
            pad(&format!("(i % {c}) + 1"))
        ),
    );
    sql
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Mysql(sqlx::MySqlPool),
}

impl Db {
    async fn exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Db::Mysql(p) => {
                for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::raw_sql(statement)
                        .execute(p)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
        .map_err(|e| e.to_string())
    }

    async fn count(&self, table: &str) -> Result<i64, String> {
        let sql = format!("SELECT count(*) FROM {table}");
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            Db::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            Db::Mysql(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// A plain client's bulk copy: pages of 1,000 rows read from `from` and
/// inserted into `to`, the floor the engine is measured against.
async fn bulk_copy(from: &Db, to: &Db) -> Result<usize, String> {
    let mut copied = 0;
    for (src, dst, cols) in COPIES {
        let mut after = String::new();
        loop {
            let rows: Vec<Value> = match from {
                Db::Postgres(p) => {
                    let sql = format!("SELECT to_jsonb(t) FROM {src} t WHERE id > $1 ORDER BY id LIMIT 1000");
                    let docs: Vec<sqlx::types::Json<Value>> = sqlx::query_scalar(&sql)
                        .bind(&after)
                        .fetch_all(p)
                        .await
                        .map_err(|e| e.to_string())?;
                    docs.into_iter().map(|d| d.0).collect()
                }
                Db::Mysql(p) => {
                    let pairs: Vec<String> = cols
                        .iter()
                        .map(|(s, _)| match *s {
                            "updated_at" => format!("'{s}', DATE_FORMAT({s}, '%Y-%m-%dT%H:%i:%s.%fZ')"),
                            _ => format!("'{s}', {s}"),
                        })
                        .collect();
                    let sql = format!(
                        "SELECT CAST(JSON_OBJECT({}) AS CHAR) FROM {src} WHERE id > ? ORDER BY id LIMIT 1000",
                        pairs.join(", ")
                    );
                    let docs: Vec<String> = sqlx::query_scalar(&sql)
                        .bind(&after)
                        .fetch_all(p)
                        .await
                        .map_err(|e| e.to_string())?;
                    docs.iter()
                        .map(|d| serde_json::from_str(d).unwrap_or(Value::Null))
                        .collect()
                }
                Db::Sqlite(p) => {
                    let pairs: Vec<String> = cols.iter().map(|(s, _)| format!("'{s}', {s}")).collect();
                    let sql = format!(
                        "SELECT json_object({}) FROM {src} WHERE id > ?1 ORDER BY id LIMIT 1000",
                        pairs.join(", ")
                    );
                    let docs: Vec<String> = sqlx::query_scalar(&sql)
                        .bind(&after)
                        .fetch_all(p)
                        .await
                        .map_err(|e| e.to_string())?;
                    docs.iter()
                        .map(|d| serde_json::from_str(d).unwrap_or(Value::Null))
                        .collect()
                }
            };
            let Some(last) = rows.last() else { break };
            after = last["id"].as_str().unwrap_or_default().to_owned();
            let renamed: Vec<Value> = rows
                .iter()
                .map(|r| Value::Object(cols.iter().map(|(s, d)| (d.to_string(), r[*s].clone())).collect()))
                .collect();
            let list = cols.iter().map(|(_, d)| *d).collect::<Vec<_>>().join(", ");
            match to {
                Db::Postgres(p) => {
                    let sql = format!(
                        "INSERT INTO {dst} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{dst}, $1)"
                    );
                    sqlx::query(&sql)
                        .bind(sqlx::types::Json(&renamed))
                        .execute(p)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Db::Sqlite(p) => {
                    let marks = vec!["?"; cols.len()].join(", ");
                    let sql = format!("INSERT INTO {dst} ({list}) VALUES ({marks})");
                    let mut tx = p.begin().await.map_err(|e| e.to_string())?;
                    for r in &renamed {
                        let mut q = sqlx::query(&sql);
                        for (_, d) in cols {
                            q = match &r[*d] {
                                Value::Number(n) if n.is_i64() => q.bind(n.as_i64()),
                                Value::Number(n) => q.bind(n.as_f64()),
                                Value::String(s) => q.bind(s.clone()),
                                _ => q.bind(None::<String>),
                            };
                        }
                        q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
                    }
                    tx.commit().await.map_err(|e| e.to_string())?;
                }
                Db::Mysql(_) => return Err("the bench writes to MariaDB nowhere".into()),
            }
            copied += rows.len();
        }
    }
    Ok(copied)
}

/// PostgreSQL's own bulk path, the real floor: each table's rows out of
/// `from` with a binary `COPY ... TO STDOUT`, straight into the empty
/// tables of `to` with a binary `COPY ... FROM STDIN`. Answers the rows.
async fn binary_copy(from: &PgPool, to: &PgPool) -> Result<u64, String> {
    use futures_util::StreamExt;
    use sqlx::postgres::PgPoolCopyExt;
    let mut rows = 0;
    for (src, dst, cols) in COPIES {
        let read: Vec<&str> = cols.iter().map(|(s, _)| *s).collect();
        let write: Vec<&str> = cols.iter().map(|(_, d)| *d).collect();
        let mut out = from
            .copy_out_raw(&format!(
                "COPY (SELECT {} FROM {src}) TO STDOUT (FORMAT binary)",
                read.join(", ")
            ))
            .await
            .map_err(|e| e.to_string())?;
        let mut into = to
            .copy_in_raw(&format!(
                "COPY {dst} ({}) FROM STDIN (FORMAT binary)",
                write.join(", ")
            ))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(chunk) = out.next().await {
            into.send(chunk.map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
        }
        rows += into.finish().await.map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

/// Peak resident memory of this process so far, in MiB (Linux).
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) used so far by the processes `/proc` lists
/// whose command is `comm` (`None`: this process), in seconds (Linux; the
/// kernel counts it in ticks of 1/100 s); `None` when there is none. The
/// time of children that ended and were waited for counts with their
/// parent (PostgreSQL's postmaster waits for its backends and workers).
pub(super) fn cpu_secs(comm: Option<&str>) -> Option<f64> {
    let ticks = |stat: &str| -> Option<(String, u64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_owned();
        // Fields after the command: state is the first, then utime (the
        // 12th), stime, cutime and cstime.
        let times: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        (times.len() == 4).then(|| (name, times.iter().sum()))
    };
    let total: u64 = match comm {
        None => ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1,
        Some(comm) => {
            let found: Vec<u64> = std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter_map(|stat| ticks(&stat))
                .filter(|(name, _)| name == comm)
                .map(|(_, t)| t)
                .collect();
            if found.is_empty() {
                return None;
            }
            found.iter().sum()
        }
    };
    Some(total as f64 / 100.0)
}

async fn sqlite_db(path: &std::path::Path) -> Result<Db, String> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    Ok(Db::Sqlite(
        SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| e.to_string())?,
    ))
}

/// The figures of one backend.
struct Figures {
    label: &'static str,
    records: usize,
    sync_secs: f64,
    floor_secs: f64,
    /// Binary `COPY` out of the source and into an empty copy of the
    /// target, when both are PostgreSQL.
    copy_secs: Option<f64>,
    rerun_secs: f64,
    /// CPU seconds the sync took in this process and in the local
    /// PostgreSQL server's processes (when it runs on this machine).
    sync_cpu: Option<(f64, f64)>,
    /// The same for the binary `COPY`.
    copy_cpu: Option<(f64, f64)>,
}

/// CPU seconds of this process and of the local PostgreSQL server's
/// processes so far.
fn cpu_now() -> Option<(f64, f64)> {
    cpu_secs(None).zip(cpu_secs(Some("postgres")))
}

/// CPU seconds used since `before` (from [`cpu_now`]).
fn cpu_since(before: Option<(f64, f64)>) -> Option<(f64, f64)> {
    before
        .zip(cpu_now())
        .map(|((own, pg), (own_after, pg_after))| (own_after - own, pg_after - pg))
}

async fn measure(
    label: &'static str,
    n: usize,
    source: (Db, String),
    target: (Db, String),
    floor: Db,
    copy: Option<PgPool>,
    state_url: String,
) -> Result<Figures, String> {
    match &source.0 {
        Db::Mysql(_) => {
            source.0.exec(SOURCE_MYSQL).await?;
            source.0.exec(&seed_mysql(n)).await?;
        }
        db => {
            db.exec(SOURCE).await?;
            db.exec(&seed_sql(n, matches!(db, Db::Postgres(_)))).await?;
        }
    }
    target.0.exec(TARGET).await?;
    floor.exec(TARGET).await?;

    let (copy_secs, copy_cpu) = match (&source.0, &copy) {
        (Db::Postgres(from), Some(to)) => {
            let to_db = Db::Postgres(to.clone());
            to_db.exec(TARGET).await?;
            let cpu = cpu_now();
            let started = Instant::now();
            binary_copy(from, to).await?;
            (Some(started.elapsed().as_secs_f64()), cpu_since(cpu))
        }
        _ => (None, None),
    };
    let started = Instant::now();
    let copied = bulk_copy(&source.0, &floor).await?;
    let floor_secs = started.elapsed().as_secs_f64();

    let store = Arc::new(
        Store::connect(&StoreConfig::new(&state_url), MappingCache::local())
            .await
            .map_err(|e| e.to_string())?,
    );
    let wf = Workflow::parse("bench.toml", &workflow(&source.1, &target.1, "[tenants.bench]\n"))
        .map_err(|e| e.to_string())?;
    let job = Job::prepare(
        store,
        wf,
        &DependencyGraph::builtin_default(),
        "bench".into(),
        Options {
            page_size: 1000,
            ..Options::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let cpu = cpu_now();
    let started = Instant::now();
    let run = job.start("bench").await.map_err(|e| e.to_string())?;
    let run = job.execute(run, &mut |_| {}).await.map_err(|e| e.to_string())?;
    let sync_secs = started.elapsed().as_secs_f64();
    let sync_cpu = cpu_since(cpu);
    let synced = target.0.count("customers").await?
        + target.0.count("people").await?
        + target.0.count("sales_orders").await?;
    if synced as usize != copied || run.state != syncd_engine::run::RunState::Succeeded {
        return Err(format!(
            "{label}: the run ended {} with {synced} of {copied} records",
            run.state
        ));
    }
    let started = Instant::now();
    let again = job.start("bench").await.map_err(|e| e.to_string())?;
    job.execute(again, &mut |_| {}).await.map_err(|e| e.to_string())?;
    let rerun_secs = started.elapsed().as_secs_f64();
    Ok(Figures {
        label,
        records: copied,
        sync_secs,
        floor_secs,
        copy_secs,
        rerun_secs,
        sync_cpu,
        copy_cpu,
    })
}

/// MariaDB -> PostgreSQL: the source in a database of its own on the
/// server at `base`, the target, floor and state in the schemas of
/// `pools`/`urls` (1, 2, 3).
async fn mariadb_to_postgres(
    n: usize,
    base: &str,
    pools: &[PgPool],
    urls: &[String],
) -> Result<Figures, String> {
    use sqlx::mysql::MySqlPoolOptions;
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let name = format!("syncd_bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        .execute(&admin)
        .await
        .map_err(|e| e.to_string())?;
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => format!("{base}/{name}"),
    };
    let result = async {
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        measure(
            "MariaDB -> PostgreSQL",
            n,
            (Db::Mysql(pool), url.clone()),
            (Db::Postgres(pools[1].clone()), urls[1].clone()),
            Db::Postgres(pools[2].clone()),
            None,
            urls[3].clone(),
        )
        .await
    }
    .await;
    let _ = sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(&admin)
        .await;
    result
}

/// Runs the benchmark and returns the report.
pub async fn run(bench: &SyncBench) -> Result<String, String> {
    let mut figures = Vec::new();
    if bench.sqlite {
        let dir = std::env::temp_dir().join(format!("syncd-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let url = |name: &str| format!("sqlite://{}", dir.join(name).display());
        let result = measure(
            "SQLite -> SQLite",
            bench.records,
            (sqlite_db(&dir.join("source.db")).await?, url("source.db")),
            (sqlite_db(&dir.join("target.db")).await?, url("target.db")),
            sqlite_db(&dir.join("floor.db")).await?,
            None,
            url("state.db"),
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        figures.push(result?);
    }
    if let Some(base) = &bench.postgres_url {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        let tag = Uuid::new_v4().simple().to_string();
        let schemas: Vec<String> = ["source", "target", "floor", "state", "copy"]
            .iter()
            .map(|s| format!("syncd_bench_{s}_{tag}"))
            .collect();
        let mut urls = Vec::new();
        let mut pools = Vec::new();
        for s in &schemas {
            sqlx::query(&format!("CREATE SCHEMA {s}"))
                .execute(&admin)
                .await
                .map_err(|e| e.to_string())?;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options=-c%20search_path%3D{s}");
            pools.push(
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            urls.push(url);
        }
        let result = measure(
            "PostgreSQL -> PostgreSQL",
            bench.records,
            (Db::Postgres(pools[0].clone()), urls[0].clone()),
            (Db::Postgres(pools[1].clone()), urls[1].clone()),
            Db::Postgres(pools[2].clone()),
            Some(pools[4].clone()),
            urls[3].clone(),
        )
        .await;
        let mysql = match (&result, &bench.mysql_url) {
            (Ok(_), Some(my)) => {
                // Fresh target, floor and state schemas for the second pair.
                for (s, pool) in schemas[1..4].iter().zip(&pools[1..4]) {
                    sqlx::raw_sql(&format!("DROP SCHEMA {s} CASCADE; CREATE SCHEMA {s}"))
                        .execute(pool)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Some(mariadb_to_postgres(bench.records, my, &pools, &urls).await)
            }
            _ => None,
        };
        for s in &schemas {
            let _ = sqlx::query(&format!("DROP SCHEMA {s} CASCADE"))
                .execute(&admin)
                .await;
        }
        figures.push(result?);
        if let Some(mysql) = mysql {
            figures.push(mysql?);
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>9} {:>9} {:>11} {:>9} {:>11} {:>6} {:>9} {:>11} {:>6} {:>10}",
        "one-way, 3 stages",
        "records",
        "sync s",
        "sync rec/s",
        "insert s",
        "insert r/s",
        "ratio",
        "COPY s",
        "COPY r/s",
        "ratio",
        "re-run s"
    );
    for f in &figures {
        let (rate, floor) = (f.records as f64 / f.sync_secs, f.records as f64 / f.floor_secs);
        let (copy_s, copy_rate, copy_ratio) = match f.copy_secs {
            Some(s) => {
                let r = f.records as f64 / s;
                (format!("{s:.2}"), format!("{r:.0}"), format!("{:.3}", rate / r))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<26} {:>9} {:>9.2} {:>11.0} {:>9.2} {:>11.0} {:>6.2} {:>9} {:>11} {:>6} {:>10.3}",
            f.label,
            f.records,
            f.sync_secs,
            rate,
            f.floor_secs,
            floor,
            rate / floor,
            copy_s,
            copy_rate,
            copy_ratio,
            f.rerun_secs
        );
    }
    for f in &figures {
        let per = |secs: f64| secs * 1e6 / f.records as f64;
        if let Some((own, server)) = f.sync_cpu {
            let _ = writeln!(
                out,
                "{}: CPU a record, sync: syncd {:.1} us + PostgreSQL {:.1} us ({own:.2} + {server:.2} s in {:.2} s)",
                f.label,
                per(own),
                per(server),
                f.sync_secs
            );
        }
        if let (Some((own, server)), Some(secs)) = (f.copy_cpu, f.copy_secs) {
            let _ = writeln!(
                out,
                "{}: CPU a row, binary COPY: client {:.1} us + PostgreSQL {:.1} us ({own:.2} + {server:.2} s in {secs:.2} s)",
                f.label,
                per(own),
                per(server),
            );
        }
    }
    let _ = writeln!(
        out,
        "CPU: user + system time of this process and of the processes named postgres on this machine \
         (none when the server runs elsewhere)"
    );
    let _ = writeln!(
        out,
        "insert: a plain client's keyset pages of 1,000, one statement each; \
         COPY: binary COPY out of the source and into empty tables (PostgreSQL's own bulk path)"
    );
    if let Some(mib) = peak_rss_mib() {
        let _ = writeln!(out, "peak resident memory of the process: {mib:.0} MiB");
    }
    let _ = writeln!(
        out,
        "targets: >= 20,000 rec/s PostgreSQL -> PostgreSQL, ratio >= 0.25, re-run < 1 s"
    );
    Ok(out)
}
