//! Workers and schedules: two worker processes on one PostgreSQL start
//! exactly one run per tick, a killed worker's run is finished by the other,
//! missed ticks fire once, and a reviewed conflict resumes its run without
//! an operator: woken by PostgreSQL's notification within a second even
//! when the worker polls rarely, also after its listener connection died,
//! and on an operator's resume.

use syncd_test_support as support;

use chrono::Utc;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::systems::{Kind, SystemDb, crm_rows, sync_once, ts, workflow_toml};
use support::{PgSchema, TempDir};
use syncd_core::plan::DependencyGraph;
use syncd_core::workflow::Workflow;
use syncd_engine::run::RunState;
use syncd_engine::run::executor::Options;
use syncd_engine::worker::{Definition, Worker};
use syncd_store::cache::MappingCache;
use syncd_store::{ConflictFilter, RunFilter, Store};

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
    // Let the survivor serve the schedule alone for a few ticks (what
    // each tick does is tested without waiting, on a clock the test moves:
    // `two_workers_fire_each_tick_of_a_moving_clock_once`).
    let served_alone_from = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
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
    let after_takeover = fires.iter().filter(|(at, _)| *at >= served_alone_from).count();
    assert!(
        after_takeover >= 2,
        "the survivor fired the schedule every second alone: {after_takeover} of {} fires",
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

/// Empty SQLite systems in a folder of their own (kept while the first
/// value lives), a one-way definition between them firing every second, and
/// a PostgreSQL store in `pg`.
async fn every_second(pg: &PgSchema, name: &str) -> (TempDir, String, Arc<Store>) {
    let dir = TempDir::new(name);
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    let toml = scheduled(
        &workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]),
        "* * * * * *",
    );
    let store = Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
        .await
        .unwrap();
    (dir, toml, Arc::new(store))
}

#[tokio::test]
async fn missed_ticks_fire_once() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (_dir, toml, store) = every_second(&pg, "missed").await;
    // The schedule was due ten ticks ago: every worker was down since. (On
    // a clock that stands still: on the system's, a slow machine crossing
    // into the next second between the two calls below would see one more
    // tick due, rightly.)
    let clock = Arc::new(syncd_core::clock::ManualClock::at(Utc::now()));
    let ten_ago = syncd_core::clock::Clock::now(&*clock) - chrono::Duration::seconds(10);
    store
        .ensure_schedule(&"t1".into(), &"e2e".into(), "* * * * * *", ten_ago)
        .await
        .unwrap();
    let worker = Worker {
        store: store.clone(),
        definitions: vec![definition(&toml)],
        options: Options::default(),
        poll: Duration::from_millis(100),
        clock: clock.clone(),
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

/// Two workers serving a schedule that fires every second, over thirty
/// ticks of a clock the test moves (no sleeping): each tick fires once,
/// starts at most one run (none while the tick's predecessor is still
/// active), and no run belongs to two ticks, whichever worker asks first.
#[tokio::test]
async fn two_workers_fire_each_tick_of_a_moving_clock_once() {
    use syncd_core::clock::ManualClock;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (_dir, toml, store) = every_second(&pg, "ticks").await;
    let clock = Arc::new(ManualClock::at(Utc::now()));
    let worker = |id: &str| Worker {
        store: store.clone(),
        definitions: vec![definition(&toml)],
        options: Options {
            worker_id: id.into(),
            ..Options::default()
        },
        poll: Duration::from_millis(100),
        clock: clock.clone(),
    };
    let (a, b) = (worker("worker-a"), worker("worker-b"));
    a.register_schedules().await.unwrap();
    b.register_schedules().await.unwrap();
    let mut started = 0;
    for tick in 0..30 {
        clock.advance(Duration::from_secs(1));
        let (x, y) = tokio::join!(a.fire_due(), b.fire_due());
        let now = x.unwrap() + y.unwrap();
        assert!(now <= 1, "tick {tick} started {now} runs");
        started += now;
        // Every third tick's run is still active at the next tick; the
        // others end before it.
        if tick % 3 != 0 {
            for run in store
                .list_runs(&RunFilter {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
            {
                if run.state.is_active() {
                    store
                        .transition_run(&run, syncd_engine::run::RunEvent::Cancel, None)
                        .await
                        .unwrap();
                }
            }
        }
    }
    let fires: Vec<(chrono::DateTime<Utc>, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT fire_at, run_id FROM schedule_fires ORDER BY fire_at")
            .fetch_all(&pg.pool)
            .await
            .unwrap();
    assert_eq!(fires.len(), 30, "one fire a tick");
    let with_run: Vec<uuid::Uuid> = fires.iter().filter_map(|(_, r)| *r).collect();
    assert_eq!(with_run.len(), started);
    // A tick after one whose run was left active found it active.
    assert_eq!(started, 20, "{fires:?}");
    let mut distinct = with_run.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), with_run.len(), "no run belongs to two ticks");
    pg.drop().await;
}

/// A run suspended on one manual conflict (an account edited on both
/// sides), on a PostgreSQL store, with the systems it syncs.
struct Suspended {
    pg: PgSchema,
    _dir: TempDir,
    source: SystemDb,
    target: SystemDb,
    store: Arc<Store>,
    toml: String,
    run: syncd_store::RunRow,
    conflict: syncd_core::conflict::ConflictRecord,
}

impl Suspended {
    async fn create(label: &str) -> Option<Suspended> {
        let pg = PgSchema::create().await?;
        let dir = TempDir::new(label);
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
        let now = syncd_connect::format_time(Utc::now());
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
        let conflict = store
            .list_conflicts(&ConflictFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .remove(0);
        Some(Suspended {
            pg,
            _dir: dir,
            source,
            target,
            store,
            toml,
            run,
            conflict,
        })
    }

    /// Starts a worker that polls every `poll`; it stops when the returned
    /// sender says so.
    async fn serve(
        &self,
        poll: Duration,
        worker_id: &str,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), syncd_engine::run::executor::RunError>>,
    ) {
        self.serve_on(self.store.clone(), poll, worker_id).await
    }

    /// [`Self::serve`] with a store of the worker's own.
    async fn serve_on(
        &self,
        store: Arc<Store>,
        poll: Duration,
        worker_id: &str,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), syncd_engine::run::executor::RunError>>,
    ) {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let worker = Worker {
            store,
            definitions: vec![definition(&self.toml)],
            options: Options {
                shutdown: Some(shutdown.clone()),
                worker_id: worker_id.into(),
                ..Options::default()
            },
            poll,
            clock: std::sync::Arc::new(syncd_core::clock::SystemClock),
        };
        let serving = tokio::spawn(async move { worker.serve(shutdown).await });
        // Past its first look for work, the worker waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let untouched = self.store.load_run(None, self.run.id).await.unwrap().unwrap();
        assert_eq!(
            untouched.state,
            RunState::Suspended,
            "nothing moves before the review"
        );
        (stop, serving)
    }

    /// Waits until the run has succeeded, at most `limit` after `since`;
    /// returns how long it took.
    async fn succeeded_within(&self, since: Instant, limit: Duration) -> Duration {
        loop {
            let r = self.store.load_run(None, self.run.id).await.unwrap().unwrap();
            if r.state == RunState::Succeeded {
                return since.elapsed();
            }
            assert!(since.elapsed() < limit, "still {} after {limit:?}", r.state);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Both systems hold the reviewer's name.
    async fn assert_reviewed(&self) {
        assert_eq!(self.source.dump("accounts").await[0]["name"], "Acme Reviewed");
        assert_eq!(
            self.target.dump("customers").await[0]["customer_name"],
            "Acme Reviewed"
        );
    }

    fn api(&self) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let app = syncd_engine::api::router(self.store.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }
}

/// A resume far longer than the poll interval can only be the notification.
const RARELY: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_reviewed_conflict_resumes_its_run_within_two_seconds() {
    let Some(s) = Suspended::create("review").await else {
        return;
    };
    let (stop, serving) = s.serve(Duration::from_millis(250), "review-worker").await;
    // The reviewer decides through the API, with the tenant's token.
    let addr = s.api();
    let token = s
        .store
        .create_token(&syncd_store::Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let body = br#"{"values": {"name": "Acme Reviewed"}, "by": "reviewer-1"}"#;
    let path = format!("/api/conflicts/{}/resolve", s.conflict.id);
    let (status, reply) = support::http::request(addr, "POST", &path, Some(&token), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    s.succeeded_within(Instant::now(), Duration::from_secs(2)).await;
    s.assert_reviewed().await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    s.pg.drop().await;
}

#[tokio::test]
async fn a_resolution_wakes_a_worker_that_polls_rarely_within_a_second() {
    let Some(s) = Suspended::create("notify").await else {
        return;
    };
    let (stop, serving) = s.serve(RARELY, "notify-worker").await;
    let values = json!({"name": "Acme Reviewed"}).as_object().unwrap().clone();
    let resolved = Instant::now();
    s.store
        .resolve_conflict(&s.conflict, &values, "reviewer-1")
        .await
        .unwrap();
    let took = s.succeeded_within(resolved, Duration::from_secs(1)).await;
    eprintln!("resolution to succeeded run, woken by NOTIFY: {took:?}");
    s.assert_reviewed().await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    s.pg.drop().await;
}

/// The backend pids of the listener connections of `worker_id`.
async fn listener_pids(s: &Suspended, worker_id: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("syncd worker {worker_id}"))
        .fetch_all(&s.pg.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_whose_listener_connection_dies_listens_again() {
    let Some(s) = Suspended::create("relisten").await else {
        return;
    };
    let worker_id = format!("relisten-{}", uuid::Uuid::new_v4().simple());
    let (stop, serving) = s.serve(RARELY, &worker_id).await;
    let before = listener_pids(&s, &worker_id).await;
    assert_eq!(before.len(), 1, "one listener connection: {before:?}");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(before[0])
        .fetch_one(&s.pg.pool)
        .await
        .unwrap();
    assert!(killed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = listener_pids(&s, &worker_id).await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "no new listener: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!serving.is_finished(), "the worker goes on");
    let values = json!({"name": "Acme Reviewed"}).as_object().unwrap().clone();
    let resolved = Instant::now();
    s.store
        .resolve_conflict(&s.conflict, &values, "reviewer-1")
        .await
        .unwrap();
    let took = s.succeeded_within(resolved, Duration::from_secs(1)).await;
    eprintln!("resolution to succeeded run after the listener reconnected: {took:?}");
    s.assert_reviewed().await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    s.pg.drop().await;
}

/// A TCP proxy to PostgreSQL that can cut the network: every connection
/// through it is closed, and while it is cut new ones are closed at once.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let upstream = PgConnectOptions::from_str(&support::postgres_url()).unwrap();
        let upstream = format!("{}:{}", upstream.get_host(), upstream.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepting = tokio::spawn({
            let (cut, open) = (cut.clone(), open.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let upstream = upstream.clone();
                    open.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    }));
                }
            }
        });
        Proxy {
            addr,
            cut,
            open,
            accepting,
        }
    }

    fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for c in self.open.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }

    /// A store on `schema` whose connections go through the proxy.
    async fn store(&self, schema: &str) -> Arc<Store> {
        let options = PgConnectOptions::from_str(&support::postgres_url())
            .unwrap()
            .host("127.0.0.1")
            .port(self.addr.port())
            .options([("search_path", schema), syncd_store::CUSTOM_PLANS]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        Arc::new(
            Store::postgres(pool, MappingCache::disabled(), 1 << 24)
                .await
                .unwrap(),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut(true);
        self.accepting.abort();
    }
}

#[tokio::test]
async fn a_worker_outlives_a_network_outage_and_listens_again() {
    let Some(s) = Suspended::create("outage").await else {
        return;
    };
    let proxy = Proxy::start().await;
    let worker_id = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let (stop, serving) = s
        .serve_on(proxy.store(&s.pg.name).await, RARELY, &worker_id)
        .await;
    let before = listener_pids(&s, &worker_id).await;
    assert_eq!(before.len(), 1, "one listener connection: {before:?}");
    // The listener loses its connection and cannot get another for a while.
    proxy.cut(true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(listener_pids(&s, &worker_id).await.is_empty());
    assert!(!serving.is_finished(), "the worker goes on");
    proxy.cut(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while listener_pids(&s, &worker_id).await.is_empty() {
        assert!(Instant::now() < deadline, "the worker never listened again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let values = json!({"name": "Acme Reviewed"}).as_object().unwrap().clone();
    let resolved = Instant::now();
    s.store
        .resolve_conflict(&s.conflict, &values, "reviewer-1")
        .await
        .unwrap();
    let took = s.succeeded_within(resolved, Duration::from_secs(1)).await;
    eprintln!("resolution to succeeded run after a network outage: {took:?}");
    s.assert_reviewed().await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    drop(proxy);
    s.pg.drop().await;
}

#[tokio::test]
async fn an_operators_resume_wakes_the_worker() {
    let Some(s) = Suspended::create("resume").await else {
        return;
    };
    let (stop, serving) = s.serve(RARELY, "resume-worker").await;
    // Decided behind the store's back: no announcement, as if it was lost.
    sqlx::query(
        "UPDATE conflicts SET status = 'resolved', resolution = $1, resolved_by = 'reviewer-1', \
         resolved_at = now() WHERE id = $2",
    )
    .bind(json!({"name": "Acme Reviewed"}))
    .bind(s.conflict.id)
    .execute(&s.pg.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = s.store.load_run(None, s.run.id).await.unwrap().unwrap();
    assert_eq!(waiting.state, RunState::Suspended, "the worker was not told");

    let addr = s.api();
    let token = s
        .store
        .create_token(&syncd_store::Principal::Tenant("t1".into()))
        .await
        .unwrap();
    let path = format!("/api/runs/{}/resume", s.run.id);
    let asked = Instant::now();
    let (status, reply) = support::http::request(addr, "POST", &path, Some(&token), Some(b"")).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["run"]["id"], json!(s.run.id));
    let took = s.succeeded_within(asked, Duration::from_secs(1)).await;
    eprintln!("operator's resume to succeeded run: {took:?}");
    s.assert_reviewed().await;
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
    s.pg.drop().await;
}

/// A store in `pg`, a worker serving the integration `toml` (`e2e`), and a
/// run of it for tenant `t1`, planned as an operator or the API plans one.
async fn planned_for_a_worker(pg: &PgSchema, toml: &str) -> (Arc<Store>, Worker, syncd_store::RunRow) {
    let store = Arc::new(
        Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
            .await
            .unwrap(),
    );
    let worker = Worker {
        store: store.clone(),
        definitions: vec![definition(toml)],
        options: Options::default(),
        poll: Duration::from_millis(100),
        clock: std::sync::Arc::new(syncd_core::clock::SystemClock),
    };
    let run = syncd_store::RunRow {
        id: uuid::Uuid::new_v4(),
        tenant_id: "t1".into(),
        integration_id: "e2e".into(),
        state: RunState::Planned,
        plan: json!({"stages": []}),
        trigger: "manual".into(),
        error: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        finished_at: None,
    };
    store.create_run(&run, &[]).await.unwrap();
    (store, worker, run)
}

/// A run whose source cannot be reached waits, planned, with the reason
/// recorded on it (it used to wait without a word), and no password in it.
#[tokio::test]
async fn a_run_whose_source_is_unreachable_waits_with_the_reason() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("unreachable");
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    // Nothing listens on port 1.
    let toml = workflow_toml(
        "e2e",
        "one_way",
        "postgres://postgres:Hidden@127.0.0.1:1/test",
        &target.url(),
        &[],
    );
    let (store, worker, run) = planned_for_a_worker(&pg, &toml).await;
    assert!(!worker.execute_one().await.unwrap(), "nothing could run");
    let waiting = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(waiting.state, RunState::Planned);
    let error = waiting.error.unwrap_or_default();
    assert!(
        error.contains("cannot connect to postgres://postgres:***@127.0.0.1:1/test"),
        "{error}"
    );
    assert!(!error.contains("Hidden"));
    // An outage that outlasts the retry budget fails the run (the next
    // tick starts another), as one met while running does.
    let impatient = Worker {
        options: Options {
            retry_for: Duration::ZERO,
            ..Options::default()
        },
        ..worker
    };
    assert!(!impatient.execute_one().await.unwrap());
    let failed = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert!(failed.error.unwrap_or_default().contains("cannot connect to"));
    pg.drop().await;
}

/// A run whose table is missing (or whose login is refused) waited,
/// planned, for ever: every worker said so four times a second, and no
/// alert on failed runs fired. What no waiting mends fails the run at
/// once, naming the table.
#[tokio::test]
async fn a_run_that_cannot_bind_its_tables_fails_without_starting() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("unbindable");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    target.exec("ALTER TABLE customers RENAME TO customers_old").await;
    let toml = workflow_toml("e2e", "one_way", &source.url(), &target.url(), &[]);
    let (store, worker, run) = planned_for_a_worker(&pg, &toml).await;
    assert!(!worker.execute_one().await.unwrap(), "nothing could run");
    let failed = store.load_run(None, run.id).await.unwrap().unwrap();
    assert_eq!(failed.state, RunState::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("customers"), "{error}");
    pg.drop().await;
}

/// `n` accounts' worth of CRM rows of `tenant`: ids prefixed with the
/// tenant's name, and its name in `tenant_id`.
fn tenant_rows(tenant: &str, n: usize) -> [Vec<serde_json::Value>; 3] {
    let (accounts, contacts, orders) = crm_rows(n);
    [accounts, contacts, orders].map(|rows| {
        rows.into_iter()
            .map(|mut row| {
                for key in ["id", "parent_id", "account_id", "contact_id"] {
                    if let Some(id) = row.get(key).and_then(|v| v.as_str()) {
                        row[key] = json!(format!("{tenant}:{id}"));
                    }
                }
                row["tenant_id"] = json!(tenant);
                row
            })
            .collect()
    })
}

/// Rows of `table` of each tenant.
async fn per_tenant(db: &SystemDb, table: &str) -> (usize, usize, usize) {
    let rows = db.dump(table).await;
    let of = |t: &str| rows.iter().filter(|r| r["tenant_id"] == t).count();
    (of("acme"), of("globex"), rows.len())
}

/// Two tenants in one shared table pair (a MariaDB shop, a PostgreSQL
/// ERP), kept apart by a tenant column, synced both ways by one worker at
/// once: each tenant's rows reach only its own target rows, nothing comes
/// back twice, and a reconciliation of one tenant deletes nothing of the
/// other's.
#[tokio::test]
async fn tenants_sharing_tables_stay_apart_under_a_worker() {
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("shared-tables");
    let Some(shop) = SystemDb::with_tables(Kind::Mariadb, &dir, "source").await else {
        return;
    };
    let erp = SystemDb::with_tables(Kind::Postgres, &dir, "target")
        .await
        .unwrap();
    for table in ["accounts", "contacts", "orders"] {
        shop.exec(&format!(
            "ALTER TABLE {table} ADD COLUMN tenant_id VARCHAR(32) NOT NULL"
        ))
        .await;
    }
    for table in ["customers", "people", "sales_orders"] {
        erp.exec(&format!("ALTER TABLE {table} ADD COLUMN tenant_id text NOT NULL"))
            .await;
    }
    for (tenant, n) in [("acme", 20), ("globex", 30)] {
        let [accounts, contacts, orders] = tenant_rows(tenant, n);
        shop.insert("accounts", &accounts).await;
        shop.insert("contacts", &contacts).await;
        shop.insert("orders", &orders).await;
    }
    let toml = scheduled(
        &workflow_toml("shared", "bidirectional", &shop.url(), &erp.url(), &[]),
        "* * * * * *",
    )
    .replace(
        "connector = \"sql\"\n",
        "connector = \"sql\"\ntenant_column = \"tenant_id\"\n",
    )
    .replace("[tenants.t1]\n", "[tenants.acme]\n\n[tenants.globex]\n")
    .replace("[entities.fields]", "reconcile_every = \"0s\"\n[entities.fields]");
    std::fs::create_dir_all(dir.0.join("workflows")).unwrap();
    let file = dir.0.join("workflows/shared.toml");
    std::fs::write(&file, &toml).unwrap();
    let store = Store::postgres(pg.pool.clone(), MappingCache::disabled(), 1 << 24)
        .await
        .unwrap();

    // One worker runs both tenants' schedules, each tick both at once.
    let worker = spawn_worker(&dir, &pg.url, "worker-shared");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = Vec::new();
        for tenant in ["acme", "globex"] {
            let runs = store
                .list_runs(&RunFilter {
                    tenant: Some(tenant.into()),
                    state: Some(RunState::Succeeded),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            done.push(runs.len());
        }
        if done.iter().all(|n| *n >= 3) {
            break;
        }
        assert!(Instant::now() < deadline, "succeeded runs by tenant: {done:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(worker);

    assert_eq!(per_tenant(&erp, "customers").await, (20, 30, 50));
    assert_eq!(per_tenant(&erp, "people").await, (40, 60, 100));
    assert_eq!(per_tenant(&erp, "sales_orders").await, (60, 90, 150));
    // Nothing came back to the shop as new rows of either tenant.
    assert_eq!(per_tenant(&shop, "accounts").await, (20, 30, 50));
    assert_eq!(per_tenant(&shop, "orders").await, (60, 90, 150));
    // Each tenant's records map to target rows of that tenant.
    let sales = erp.dump("sales_orders").await;
    for tenant in ["acme", "globex"] {
        let scope = syncd_core::ids::EntityScope::new(tenant, "shared", "order");
        let ids: Vec<String> = (0..3).map(|i| format!("{tenant}:O-{i:06}")).collect();
        let found = store
            .lookup(&scope, syncd_core::record::Side::Source, &ids)
            .await
            .unwrap();
        assert_eq!(found.len(), 3, "{tenant}");
        for m in found.values() {
            let target = m.target_id.as_deref().unwrap();
            let row = sales.iter().find(|r| r["id"] == target).unwrap();
            assert_eq!(row["tenant_id"], tenant, "{m:?}");
        }
    }

    // The worker was killed, perhaps inside a run of acme: that run is held
    // by its lease (2 s here), `syncd run` says to try again later, and then
    // finishes it, as an operator would.
    let out = dir.0.join("acme.out");
    let err = dir.0.join("acme.err");
    let run_acme = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = support::spawn_syncd_run(&file, "acme", &pg.url, &[], &out, &err)
                .wait()
                .unwrap();
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            if status.success() {
                return;
            }
            assert!(
                stderr.contains("is being executed by worker `worker-shared`") && Instant::now() < deadline,
                "{stderr}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    run_acme().await;

    // One of acme's orders is deleted in the shop: acme's reconciliation
    // deletes its target row, and nothing of globex's.
    shop.exec("DELETE FROM orders WHERE id = 'acme:O-000004'").await;
    run_acme().await;
    assert_eq!(per_tenant(&erp, "sales_orders").await, (59, 90, 149));
    assert_eq!(per_tenant(&erp, "customers").await, (20, 30, 50));
    shop.drop().await;
    erp.drop().await;
    pg.drop().await;
}
