//! `syncd bench sync --workers 1,2,4 --tenants M`: how the total rate of
//! first loads grows with the number of `syncd worker` processes sharing one
//! PostgreSQL. Each tenant has a source and a target schema of its own
//! (the bench's three tables, the records split evenly over the tenants);
//! one run a tenant is planned, then N worker processes of this very binary
//! execute them, and the time from their start to the last run's success is
//! measured. Every target is counted afterwards.

use crate::sync::{SOURCE, TARGET, seed_sql, workflow};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::Workflow;
use syncd_engine::run::executor::{Job, Options};
use syncd_store::cache::MappingCache;
use syncd_store::{Store, StoreConfig};
use uuid::Uuid;

/// What to measure.
pub struct WorkersBench {
    /// Records over all tenants.
    pub records: usize,
    pub tenants: usize,
    /// Worker processes, one measurement each.
    pub workers: Vec<usize>,
    pub postgres_url: String,
}

/// One measurement.
struct Figure {
    workers: usize,
    records: usize,
    secs: f64,
}

/// Kills the worker processes when the measurement ends, however it ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn schema_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

async fn connect(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// Seeds the tenants' schemas, plans their runs, lets `workers` processes
/// execute them, and counts what arrived.
async fn measure(b: &WorkersBench, workers: usize, schemas: &mut Vec<String>) -> Result<Figure, String> {
    let base = &b.postgres_url;
    let admin = connect(base).await?;
    let tag = Uuid::new_v4().simple().to_string();
    let per_tenant = b.records / b.tenants;
    let state = format!("syncd_bench_workers_state_{tag}");
    let mut create = vec![state.clone()];
    let mut tenants = String::new();
    for t in 0..b.tenants {
        let (src, dst) = (
            format!("syncd_bench_w{t}_src_{tag}"),
            format!("syncd_bench_w{t}_dst_{tag}"),
        );
        let _ = write!(
            tenants,
            "[tenants.t{t}]\nurls = {{ src = \"{}\", dst = \"{}\" }}\n",
            schema_url(base, &src),
            schema_url(base, &dst)
        );
        create.push(src);
        create.push(dst);
    }
    for s in &create {
        sqlx::query(&format!("CREATE SCHEMA {s}"))
            .execute(&admin)
            .await
            .map_err(|e| e.to_string())?;
        schemas.push(s.clone());
    }
    for t in 0..b.tenants {
        let src = connect(&schema_url(base, &create[1 + 2 * t])).await?;
        sqlx::raw_sql(&format!("{SOURCE}{}", seed_sql(per_tenant, true)))
            .execute(&src)
            .await
            .map_err(|e| e.to_string())?;
        src.close().await;
        let dst = connect(&schema_url(base, &create[2 + 2 * t])).await?;
        sqlx::raw_sql(TARGET)
            .execute(&dst)
            .await
            .map_err(|e| e.to_string())?;
        dst.close().await;
    }
    let dir = std::env::temp_dir().join(format!("syncd-bench-workers-{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // The systems' own URLs are the first tenant's; every tenant names its own.
    let toml = workflow(
        &schema_url(base, &create[1]),
        &schema_url(base, &create[2]),
        &tenants,
    );
    std::fs::write(dir.join("bench.toml"), &toml).map_err(|e| e.to_string())?;
    let result = plan_and_execute(b, workers, &dir, &toml, &schema_url(base, &state)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let secs = result?;
    // Every tenant's target holds every record of its source.
    let mut records = 0;
    for t in 0..b.tenants {
        let dst = connect(&schema_url(base, &create[2 + 2 * t])).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM people) \
             + (SELECT count(*) FROM sales_orders)",
        )
        .fetch_one(&dst)
        .await
        .map_err(|e| e.to_string())?;
        dst.close().await;
        let (a, c, o) = crate::sync::split(per_tenant);
        if n as usize != a + c + o {
            return Err(format!("tenant t{t}: {n} of {} records arrived", a + c + o));
        }
        records += n as usize;
    }
    Ok(Figure {
        workers,
        records,
        secs,
    })
}

/// Plans one run a tenant and times `workers` worker processes executing
/// them all.
async fn plan_and_execute(
    b: &WorkersBench,
    workers: usize,
    dir: &std::path::Path,
    toml: &str,
    state_url: &str,
) -> Result<f64, String> {
    let store = Arc::new(
        Store::connect(&StoreConfig::new(state_url), MappingCache::local())
            .await
            .map_err(|e| e.to_string())?,
    );
    let wf = Workflow::parse("bench.toml", toml).map_err(|e| e.to_string())?;
    for t in 0..b.tenants {
        let job = Job::prepare(
            store.clone(),
            wf.clone(),
            &DependencyGraph::builtin_default(),
            format!("t{t}").into(),
            Options::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        job.start("bench").await.map_err(|e| e.to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut spawned = Workers(Vec::new());
    for w in 0..workers {
        let log = std::fs::File::create(dir.join(format!("worker-{w}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .args(["worker", "--poll-ms", "50", "--workflows"])
            .arg(dir)
            .args(["--db", state_url])
            .env("SYNCD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        spawned.0.push(child);
    }
    let pool = connect(state_url).await?;
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'), \
                    count(*) FILTER (WHERE state IN ('failed', 'cancelled', 'suspended')) FROM runs",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
        if failed > 0 {
            let log = std::fs::read_to_string(dir.join("worker-0.log")).unwrap_or_default();
            return Err(format!("{failed} run(s) did not succeed; worker 0 said:\n{log}"));
        }
        if done as usize == b.tenants {
            break;
        }
        for c in &mut spawned.0 {
            if let Ok(Some(status)) = c.try_wait() {
                let log = std::fs::read_to_string(dir.join("worker-0.log")).unwrap_or_default();
                return Err(format!("a worker exited ({status}):\n{log}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(spawned);
    pool.close().await;
    Ok(secs)
}

pub async fn run(b: &WorkersBench) -> Result<String, String> {
    if b.tenants == 0 || b.records < b.tenants * 10 || b.workers.contains(&0) {
        return Err("--tenants and --workers must be at least 1, --records at least 10 a tenant".into());
    }
    let mut figures = Vec::new();
    for &n in &b.workers {
        let mut schemas = Vec::new();
        let result = measure(b, n, &mut schemas).await;
        let admin = connect(&b.postgres_url).await?;
        for s in &schemas {
            let _ = sqlx::query(&format!("DROP SCHEMA {s} CASCADE"))
                .execute(&admin)
                .await;
        }
        figures.push(result?);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>9} {:>9} {:>11} {:>12}",
        "workers", "tenants", "records", "seconds", "total rec/s", "vs 1 worker"
    );
    let one = figures
        .iter()
        .find(|f| f.workers == 1)
        .map(|f| f.records as f64 / f.secs);
    for f in &figures {
        let rate = f.records as f64 / f.secs;
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>9} {:>9.2} {:>11.0} {:>12}",
            f.workers,
            b.tenants,
            f.records,
            f.secs,
            rate,
            one.map_or("-".into(), |o| format!("{:.2}", rate / o))
        );
    }
    let _ = writeln!(
        out,
        "one run a tenant (3 stages, one way, pages of 500), all planned before the workers start; \
         seconds: from the workers' start to the last run's success; {} cores here",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(out)
}
