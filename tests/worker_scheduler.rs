//! Workers and schedules: two worker processes on one PostgreSQL start
//! exactly one run per tick, a killed worker's run is finished by the other,
//! missed ticks fire once, and a reviewed conflict resumes its run without
//! an operator.

mod support;

use chrono::Utc;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::systems::{Kind, SystemDb, crm_rows, sync_once, ts, workflow_toml};
use support::{PgSchema, TempDir};
use syncd::cache::MappingCache;
use syncd::plan::DependencyGraph;
use syncd::run::RunState;
use syncd::run::executor::Options;
use syncd::store::{ConflictFilter, RunFilter, Store};
use syncd::worker::{Definition, Worker};
use syncd::workflow::Workflow;

fn scheduled(toml: &str, cron: &str) -> String {
    toml.replace("direction = ", &format!("schedule = \"{cron}\"\ndirection = "))
}

/// A worker process, killed when the test ends however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(dir: &TempDir, db_url: &str, id: &str) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["worker", "--workflows"])
            .arg(dir.0.join("workflows"))
            .args(["--poll-ms", "100", "--worker-id", id])
            .env("SYNCD_DATABASE_URL", db_url)
            .env("SYNCD_LEASE_TTL_SECS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn syncd worker"),
    )
}

#[tokio::test]
async fn two_workers_one_run_per_tick_and_a_killed_workers_run_is_finished() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("workers");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let (accounts, contacts, orders) = crm_rows(400);
    source.insert("accounts", &accounts).await;
    source.insert("contacts", &contacts).await;
    source.insert("orders", &orders).await;
    std::fs::create_dir_all(dir.0.join("workflows")).unwrap();
    let toml = scheduled(
        &workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]),
        "* * * * * *",
    );
    std::fs::write(dir.0.join("workflows/e2e.toml"), &toml).unwrap();
    let store = Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
        .await
        .unwrap();

    let mut a = spawn_worker(&dir, &pg.url, "worker-a");
    let mut b = spawn_worker(&dir, &pg.url, "worker-b");

    // Kill whichever worker holds the first run's lease, mid-run.
    let started = Instant::now();
    let mut killed = None;
    while started.elapsed() < Duration::from_secs(20) && killed.is_none() {
        for run in store
            .list_runs(&RunFilter {
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap()
        {
            if run.state == RunState::Running
                && let Some((holder, _)) = store.lease_holder(run.id).await.unwrap()
            {
                let child = if holder == "worker-a" { &mut a.0 } else { &mut b.0 };
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed = Some((run.id, holder));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (killed_run, killed_worker) = killed.expect("a run was seen running");
    // The survivor finishes it once the lease expires.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = store.load_run(None, killed_run).await.unwrap().unwrap();
        if run.state == RunState::Succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run {killed_run} of {killed_worker} was not finished: {}",
            run.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the survivor serve the schedule for a while, alone.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let survivor = if killed_worker == "worker-a" {
        &mut b.0
    } else {
        &mut a.0
    };
    let term = Command::new("kill")
        .args(["-TERM", &survivor.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = survivor.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    // Each tick fired once (the table's key) and started at most one run;
    // a tick started no run only while another was active.
    let fires: Vec<(chrono::DateTime<Utc>, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT fire_at, run_id FROM schedule_fires ORDER BY fire_at")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    let runs = store
        .list_runs(&RunFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        fires.len() >= 10,
        "the schedule fired every second: {} fires",
        fires.len()
    );
    let with_run: Vec<_> = fires.iter().filter_map(|(_, r)| *r).collect();
    let scheduled_runs: Vec<_> = runs.iter().filter(|r| r.trigger == "schedule").collect();
    assert_eq!(
        with_run.len(),
        scheduled_runs.len(),
        "one run per fired tick, no more"
    );
    let mut distinct = with_run.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), with_run.len(), "no run belongs to two ticks");
    assert!(runs.iter().all(|r| r.state != RunState::Failed), "{runs:?}");
    // Nothing was written twice: the target has each record once.
    assert_eq!(target.dump("customers").await.len(), 400);
    assert_eq!(target.dump("people").await.len(), 800);
    assert_eq!(target.dump("sales_orders").await.len(), 1200);
    pg.drop().await;
}

fn definition(toml: &str) -> Definition {
    Definition {
        workflow: Workflow::parse("test.toml", toml).unwrap(),
        graph: DependencyGraph::builtin_default(),
    }
}

#[tokio::test]
async fn missed_ticks_fire_once() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("missed");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let toml = scheduled(
        &workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]),
        "* * * * * *",
    );
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    // The schedule was due ten ticks ago: every worker was down since.
    let ten_ago = Utc::now() - chrono::Duration::seconds(10);
    store
        .ensure_schedule(&"t1".into(), &"e2e".into(), "* * * * * *", ten_ago)
        .await
        .unwrap();
    let worker = Worker {
        store: store.clone(),
        definitions: vec![definition(&toml)],
        options: Options::default(),
        poll: Duration::from_millis(100),
    };
    assert_eq!(worker.fire_due().await.unwrap(), 1, "one catch-up run");
    assert_eq!(worker.fire_due().await.unwrap(), 0, "not ten");
    let runs = store
        .list_runs(&RunFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].trigger, "schedule");
    let fires: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_fires")
        .fetch_one(&pg.pool)
        .await
        .unwrap();
    assert_eq!(fires, 1);
    pg.drop().await;
}

#[tokio::test]
async fn a_reviewed_conflict_resumes_its_run_within_two_seconds() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("review");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    source
        .insert(
            "accounts",
            &[json!({"id": "A-1", "name": "Acme", "industry": "retail", "updated_at": ts(0)})],
        )
        .await;
    let toml = workflow_toml(
        "e2e",
        "bidirectional",
        &source.url(),
        &target.url(),
        &[("account", "manual")],
    );
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    sync_once(store.clone(), &toml, 100).await.unwrap();
    let now = syncd::connector::format_time(Utc::now());
    source
        .exec(&format!(
            "UPDATE accounts SET name = 'Acme S', updated_at = '{now}'"
        ))
        .await;
    target
        .exec(&format!(
            "UPDATE customers SET customer_name = 'Acme T', updated_at = '{now}'"
        ))
        .await;
    let run = sync_once(store.clone(), &toml, 100).await.unwrap();
    assert_eq!(run.state, RunState::Suspended);

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = Worker {
        store: store.clone(),
        definitions: vec![definition(&toml)],
        options: Options {
            shutdown: Some(shutdown.clone()),
            ..Options::default()
        },
        poll: Duration::from_millis(250),
    };
    let serving = tokio::spawn(async move { worker.serve(shutdown).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let untouched = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(
        untouched.state,
        RunState::Suspended,
        "nothing moves before the review"
    );

    let conflict = store
        .list_conflicts(&ConflictFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    // The reviewer decides through the API, with the tenant's token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = syncd::api::router(store.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let token = store
        .create_token(&syncd::store::Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let body = br#"{"values": {"name": "Acme Reviewed"}, "by": "reviewer-1"}"#;
    let path = format!("/api/conflicts/{}/resolve", conflict.id);
    let (status, reply) = support::http::request(addr, "POST", &path, Some(&token), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    let resolved_at = Instant::now();
    loop {
        let r = store.load_run(None, run.id).await.unwrap().unwrap();
        if r.state == RunState::Succeeded {
            break;
        }
        assert!(
            resolved_at.elapsed() < Duration::from_secs(2),
            "still {} after 2 s",
            r.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(source.dump("accounts").await[0]["name"], "Acme Reviewed");
    assert_eq!(
        target.dump("customers").await[0]["customer_name"],
        "Acme Reviewed"
    );
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    pg.drop().await;
}
