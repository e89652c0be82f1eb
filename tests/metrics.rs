//! `/metrics` as Prometheus reads it: a `syncd worker` started with
//! `--metrics-bind` executes a run, and its scrape (no token) counts each
//! step's records exactly as the run's summary does; runs by state are
//! counted by the database, past 10,000.

use syncd_test_support as support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::systems::{Kind, SystemDb, crm_rows, workflow_toml};
use support::{PgSchema, TempDir};
use syncd_engine::run::RunState;
use syncd_store::Store;
use syncd_store::cache::MappingCache;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The samples of a scrape: `name{labels}` to value.
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let reply = support::http::exchange(addr, "GET", "/metrics", &[], None)
        .await
        .expect("a scrape");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.contains("openmetrics-text")),
        "{:?}",
        reply.headers
    );
    let text = reply.body.as_str().expect("text").to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_scrape_counts_what_its_runs_did_and_runs_by_state_past_ten_thousand() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("metrics");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let (accounts, contacts, orders) = crm_rows(40);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    let toml = workflow_toml("e2e", "bidirectional", &source.url(), &target.url(), &[]);
    std::fs::create_dir_all(dir.0.join("workflows")).unwrap();
    std::fs::write(dir.0.join("workflows/e2e.toml"), &toml).unwrap();
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _worker = Running(
        Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["worker", "--workflows"])
            .arg(dir.0.join("workflows"))
            .args(["--poll-ms", "100", "--metrics-bind", &addr.to_string()])
            .env("SYNCD_DATABASE_URL", &pg.url)
            .env_remove("SYNCD_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A run the worker executes (planned, as an operator or the API would).
    let wf = syncd_core::workflow::Workflow::parse("e2e.toml", &toml).unwrap();
    let plan = wf
        .graph_within(&syncd_core::plan::DependencyGraph::builtin_default())
        .unwrap()
        .stages()
        .unwrap();
    let run = syncd_engine::run::executor::create_run(&store, &wf, &plan, &"t1".into(), "test")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = store.load_run(None, run.id).await.unwrap().unwrap().state;
        if state == RunState::Succeeded {
            break;
        }
        assert!(Instant::now() < deadline, "the run is {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let samples = scrape(addr).await;
    let steps = store.load_steps(run.id).await.unwrap();
    let mut compared = 0;
    for step in &steps {
        for (outcome, n) in step.counters.named() {
            let key = format!(
                "syncd_records_total{{tenant=\"t1\",integration=\"e2e\",entity=\"{}\",direction=\"{}\",outcome=\"{outcome}\"}}",
                step.entity_type,
                step.direction.as_str()
            );
            assert_eq!(samples.get(&key).copied().unwrap_or(0.0), n as f64, "{key}");
            compared += u64::from(n > 0);
        }
    }
    assert!(compared >= 10, "the run counted records: {steps:?}");
    let created: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("syncd_records_total{") && k.contains("outcome=\"created\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(created, 240.0, "40 accounts, 80 contacts, 120 orders");
    let step_durations = samples
        .iter()
        .filter(|(k, _)| k.starts_with("syncd_step_duration_seconds_count{"))
        .count();
    assert_eq!(step_durations, steps.len(), "a duration for each step");
    assert_eq!(
        samples[r#"syncd_run_duration_seconds_count{integration="e2e",state="succeeded"}"#],
        1.0
    );
    assert_eq!(samples[r#"syncd_runs{state="succeeded"}"#], 1.0);

    // 10,000 more finished runs: the gauge counts them all.
    sqlx::query(
        "INSERT INTO runs (id, tenant_id, integration_id, state, plan, trigger, created_at, updated_at, finished_at) \
         SELECT gen_random_uuid(), 'bulk', 'e2e', 'succeeded', '{}', 'test', now(), now(), now() \
         FROM generate_series(1, 10000)",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let samples = scrape(addr).await;
    assert_eq!(samples[r#"syncd_runs{state="succeeded"}"#], 10_001.0);
    assert_eq!(samples[r#"syncd_runs{state="running"}"#], 0.0);

    // What an alert on an integration reads: when its last run that
    // succeeded ended, and whether one that failed ended after it.
    let finished = store
        .load_run(None, run.id)
        .await
        .unwrap()
        .unwrap()
        .finished_at
        .unwrap();
    let last = |samples: &HashMap<String, f64>, tenant: &str| {
        samples[&format!(r#"syncd_last_success_timestamp_seconds{{tenant="{tenant}",integration="e2e"}}"#)]
    };
    let failing = |samples: &HashMap<String, f64>, tenant: &str| {
        samples[&format!(r#"syncd_failing{{tenant="{tenant}",integration="e2e"}}"#)]
    };
    assert!((last(&samples, "t1") - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.002);
    assert_eq!(failing(&samples, "t1"), 0.0);
    sqlx::query(
        "INSERT INTO runs (id, tenant_id, integration_id, state, plan, trigger, error, created_at, updated_at, \
         finished_at) VALUES (gen_random_uuid(), 't1', 'e2e', 'failed', '{}', 'test', 'the target refused', \
         now(), now(), now() + interval '1 second')",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let samples = scrape(addr).await;
    assert_eq!(failing(&samples, "t1"), 1.0, "a failure after the last success");
    assert_eq!(failing(&samples, "bulk"), 0.0);
    assert!((last(&samples, "t1") - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.002);
    drop(_worker);
    pg.drop().await;
}
