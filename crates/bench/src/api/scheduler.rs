//! The scheduler's part of the API bench: from a cron tick to the start of its run.

use super::*;

/// Serves a schedule that fires every second with an in-process worker
/// until `ticks` runs have finished, then reads each tick's times.
pub(super) async fn scheduler(bench: &ApiBench, schema: &BenchSchema) -> Result<SchedulerFigure, BenchError> {
    let dir = std::env::temp_dir().join(format!("syncd-bench-api-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = scheduled_runs(bench, schema, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let fires = result?;

    let since = |from: DateTime<Utc>, to: DateTime<Utc>| {
        (to - from)
            .to_std()
            .map_err(|_| BenchError::Invalid(format!("{to} is before {from}")))
    };
    let (mut created, mut started, mut ran, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (tick, created_at, started_at, finished_at, state) in &fires {
        if started.len() == bench.ticks {
            break;
        }
        let (Some(created_at), Some(started_at), Some(finished_at)) = (created_at, started_at, finished_at)
        else {
            if created_at.is_none() {
                skipped += 1;
                continue;
            }
            return Err(BenchError::Invalid(format!(
                "the run of tick {tick} has no start or end"
            )));
        };
        if state.as_deref() != Some("succeeded") {
            return Err(BenchError::Invalid(format!(
                "the run of tick {tick} ended {}",
                state.as_deref().unwrap_or("?")
            )));
        }
        created.push(since(*tick, *created_at)?);
        started.push(since(*tick, *started_at)?);
        ran.push(since(*started_at, *finished_at)?);
    }
    if started.len() < bench.ticks {
        return Err(BenchError::Invalid(format!(
            "{} of {} ticks started a run",
            started.len(),
            bench.ticks
        )));
    }
    let span = fires.len().min(started.len() + skipped);
    let missed = fires[..span]
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0).num_seconds() - 1).max(0) as usize)
        .sum();
    let none = || BenchError::Invalid("no ticks measured".into());
    Ok(SchedulerFigure {
        cron: EVERY_SECOND,
        poll: bench.poll,
        created: Latencies::of(created).ok_or_else(none)?,
        started: Latencies::of(started).ok_or_else(none)?,
        ran: Latencies::of(ran).ok_or_else(none)?,
        skipped,
        missed,
    })
}

/// The empty systems of the scheduled integration, as SQLite files in `dir`.
pub(super) async fn systems(dir: &std::path::Path) -> Result<(String, String), BenchError> {
    let mut urls = Vec::new();
    for (name, ddl) in [("source", crate::sync::SOURCE), ("target", crate::sync::TARGET)] {
        let path = dir.join(format!("{name}.db"));
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await?;
        sqlx::raw_sql(ddl).execute(&pool).await?;
        pool.close().await;
        urls.push(format!("sqlite://{}", path.display()));
    }
    let target = urls.pop().expect("two systems");
    Ok((urls.pop().expect("two systems"), target))
}

pub(super) async fn scheduled_runs(
    bench: &ApiBench,
    schema: &BenchSchema,
    dir: &std::path::Path,
) -> Result<Vec<Fire>, BenchError> {
    let (source, target) = systems(dir).await?;
    let url = schema_url(&bench.postgres_url, &schema.name);
    let store = Arc::new(Store::connect(&StoreConfig::new(url), MappingCache::local()).await?);
    sqlx::raw_sql(START_TRIGGER).execute(&schema.pool).await?;
    let def = definition(&workflow(
        &source,
        &target,
        &[SCHEDULED_TENANT],
        Some(EVERY_SECOND),
    ))?;

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = Worker {
        store,
        definitions: vec![def],
        options: Options {
            shutdown: Some(shutdown.clone()),
            ..Options::default()
        },
        poll: bench.poll,
        clock: std::sync::Arc::new(syncd_core::clock::SystemClock),
    };
    let serving = tokio::spawn(async move { worker.serve(shutdown).await });
    let waited = finished_runs(&schema.pool, bench.ticks).await;
    let _ = stop.send(true);
    let served = serving
        .await
        .map_err(|e| BenchError::Invalid(format!("the worker panicked: {e}")))?;
    waited?;
    served?;
    Ok(sqlx::query_as(
        "SELECT f.fire_at, r.created_at, s.started_at, r.finished_at, r.state \
         FROM schedule_fires f LEFT JOIN runs r ON r.id = f.run_id \
         LEFT JOIN bench_run_starts s ON s.run_id = f.run_id ORDER BY f.fire_at",
    )
    .fetch_all(&schema.pool)
    .await?)
}

/// Waits until `ticks` scheduled runs have finished; fails when that takes
/// a minute longer than the ticks themselves.
pub(super) async fn finished_runs(pool: &sqlx::PgPool, ticks: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(ticks as u64 + 60);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM schedule_fires f JOIN runs r ON r.id = f.run_id \
             WHERE r.finished_at IS NOT NULL",
        )
        .fetch_one(pool)
        .await?;
        if done as usize >= ticks {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Invalid(format!(
                "only {done} of {ticks} scheduled runs finished in time"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
