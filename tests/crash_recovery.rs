//! Crash safety, proven with the real binary: `syncd run` killed with
//! SIGKILL at random moments and started again ends where an uninterrupted
//! run ends — every source record exactly once in the target, references
//! translated, every mapping `mapped`, nothing left to write — and two
//! processes started on one run never execute it together.
//!
//! Kills land at seeded random points of the run's progress (records read,
//! as checkpointed) plus a random delay, so they are spread over every step
//! and fall anywhere inside a page: while reading, between the reservation
//! and the writes, between the writes and the checkpoint. Set
//! `SYNCD_CRASH_SEED` to replay another sequence; a failure prints its seed.

use syncd_test_support as support;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use support::systems::{Kind, SystemDb, crm_rows, workflow_toml};
use support::{PgSchema, TempDir};
use syncd_core::ids::EntityScope;
use syncd_core::mapping::MappingStatus;
use syncd_core::record::Side;
use syncd_engine::run::{RunState, StepDirection, StepState};
use syncd_store::cache::MappingCache;
use syncd_store::{RunRow, Store, StoreConfig};
use uuid::Uuid;

const INTEGRATION: &str = "crash";
const TENANT: &str = "t1";
/// What `syncd run` says when another worker holds the run.
const BUSY: &str = "is being executed by worker";

/// Two systems, a state store and a workflow file connecting them.
struct Setup {
    dir: TempDir,
    source: SystemDb,
    target: SystemDb,
    workflow: PathBuf,
    /// `SYNCD_DATABASE_URL` of the binary.
    database_url: String,
    /// The test's own view of the state store.
    store: Store,
    /// Accounts; the source has `n` accounts, `2n` contacts, `3n` orders.
    n: usize,
    /// Drops the PostgreSQL state schema, if any, at the end.
    state_schema: Option<PgSchema>,
    spawned: usize,
}

impl Setup {
    /// `n` accounts' worth of CRM rows in a `kind` source, an empty target of
    /// the same kind, and a bidirectional workflow between them; the state
    /// store is SQLite in the test's directory or a PostgreSQL schema.
    async fn new(kind: Kind, n: usize, label: &str) -> Option<Setup> {
        let dir = TempDir::new(label);
        let source = SystemDb::with_tables(kind, &dir, "source").await?;
        let target = SystemDb::with_tables(kind, &dir, "target").await?;
        let (accounts, contacts, orders) = crm_rows(n);
        source.insert("accounts", &accounts).await;
        source.insert("contacts", &contacts).await;
        source.insert("orders", &orders).await;
        let (database_url, state_schema) = match kind {
            Kind::Sqlite => (dir.sqlite_url("state.db"), None),
            // MySQL is a system, never the state store.
            Kind::Postgres | Kind::Mariadb => {
                let schema = PgSchema::create().await?;
                (schema.url.clone(), Some(schema))
            }
        };
        let workflow = dir.0.join("crash.toml");
        let toml = workflow_toml(INTEGRATION, "bidirectional", &source.url(), &target.url(), &[]);
        std::fs::write(&workflow, toml).unwrap();
        // Migrated before any process starts, as a deployment would have it.
        let store = Store::connect(&StoreConfig::new(&database_url), MappingCache::local())
            .await
            .expect("state store");
        Some(Setup {
            dir,
            source,
            target,
            workflow,
            database_url,
            store,
            n,
            state_schema,
            spawned: 0,
        })
    }

    /// Starts `syncd run` in the background, its output going to files.
    fn spawn(&mut self) -> Attempt {
        self.spawned += 1;
        let out = self.dir.0.join(format!("attempt-{}.out", self.spawned));
        let err = self.dir.0.join(format!("attempt-{}.err", self.spawned));
        let child = support::spawn_syncd_run(&self.workflow, TENANT, &self.database_url, &[], &out, &err);
        Attempt { child, out, err }
    }

    async fn active_run(&self) -> Option<RunRow> {
        self.store
            .active_run(&TENANT.into(), &INTEGRATION.into())
            .await
            .unwrap()
    }

    /// Records read by the run so far, summed over its steps, as checkpointed.
    async fn reads(&self, run: &RunRow) -> u64 {
        self.store
            .load_steps(run.id)
            .await
            .unwrap()
            .iter()
            .map(|s| s.counters.read)
            .sum()
    }

    /// The first step of the active run that is not done, as
    /// `entity:direction`; `start` when there is no active run yet.
    async fn current_step(&self) -> String {
        let Some(run) = self.active_run().await else {
            return "start".into();
        };
        let steps = self.store.load_steps(run.id).await.unwrap();
        steps
            .iter()
            .find(|s| s.state != StepState::Done)
            .map_or("end".into(), |s| {
                format!("{}:{}", s.entity_type, s.direction.as_str())
            })
    }

    /// Whether process `pid` holds the lease on `run`.
    async fn holds_lease(&self, run: &RunRow, pid: u32) -> bool {
        self.store
            .lease_holder(run.id)
            .await
            .unwrap()
            .is_some_and(|(worker, _)| worker.starts_with(&format!("{pid}-")))
    }

    async fn drop(self) {
        self.source.drop().await;
        self.target.drop().await;
        if let Some(schema) = self.state_schema {
            schema.drop().await;
        }
    }
}

/// One `syncd run` process.
struct Attempt {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Attempt {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for syncd")
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for syncd")
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap()
    }

    /// The run the process said it executes (its first line).
    fn run_id(&self) -> Option<Uuid> {
        let out = self.stdout();
        let id = out.strip_prefix("run ")?.split_whitespace().next()?;
        id.parse().ok()
    }
}

/// A test that fails leaves no process behind.
impl Drop for Attempt {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where to kill an attempt.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// `delay` after the process starts, whatever it is doing (connecting,
    /// planning, creating the run, claiming it).
    AfterSpawn { delay: Duration },
    /// `delay` after the process holds the lease and the run has read
    /// `reads` records.
    InRun { reads: u64, delay: Duration },
}

/// SplitMix64: a seeded sequence, so a failing run of kills can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> u64 {
    std::env::var("SYNCD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5)
}

/// `kills` moments: the first while the process starts, the others at
/// sorted random points of the run's first `reads_span` reads, each plus
/// up to `max_delay_ms`.
fn moments(rng: &mut Rng, kills: usize, reads_span: u64, max_delay_ms: u64) -> Vec<Moment> {
    let mut reads: Vec<u64> = (1..kills).map(|_| rng.range(0, reads_span)).collect();
    reads.sort_unstable();
    let mut out = vec![Moment::AfterSpawn {
        delay: Duration::from_millis(rng.range(20, 300)),
    }];
    out.extend(reads.into_iter().map(|reads| Moment::InRun {
        reads,
        delay: Duration::from_millis(rng.range(0, max_delay_ms)),
    }));
    out
}

/// What happened on the way to a finished run.
#[derive(Debug, Default)]
struct KillReport {
    /// Processes killed while the run was active.
    kills: usize,
    /// Processes killed after the run had ended (the kill came too late).
    late: usize,
    /// Processes that found the run held by a (dead) worker and said so.
    busy: usize,
    /// The one run every process worked on.
    run_id: Option<Uuid>,
    /// The step each kill interrupted (`entity:direction`, `start` before the
    /// run existed), with the kills there, in plan order.
    kills_by_step: Vec<(String, usize)>,
}

impl KillReport {
    /// Notes the run a process works on: always the same one.
    fn saw(&mut self, run_id: Uuid) {
        let first = *self.run_id.get_or_insert(run_id);
        assert_eq!(first, run_id, "a second run started before the first ended");
    }
}

/// Executes the run, killing a `syncd run` process at each of `moments`
/// and starting another after each kill, then lets the last one finish.
/// A process that finds the run leased to a killed worker exits with
/// [`BUSY`]; it is started again shortly after, until the lease expires.
async fn run_with_kills(setup: &mut Setup, moments: &[Moment]) -> KillReport {
    let mut report = KillReport::default();
    let mut pending = moments.iter();
    let mut moment = pending.next();
    loop {
        let mut attempt = setup.spawn();
        let started = Instant::now();
        let reached = match moment {
            None => false,
            Some(Moment::AfterSpawn { delay }) => {
                tokio::time::sleep(*delay).await;
                true
            }
            Some(&Moment::InRun { reads, delay }) => {
                let pid = attempt.child.id();
                let reached = loop {
                    if attempt.exited().is_some() {
                        break false;
                    }
                    if let Some(run) = setup.active_run().await {
                        report.saw(run.id);
                        if setup.holds_lease(&run, pid).await && setup.reads(&run).await >= reads {
                            break true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                if reached {
                    tokio::time::sleep(delay).await;
                }
                reached
            }
        };
        let ended = match report.run_id {
            Some(id) => !setup
                .store
                .load_run(None, id)
                .await
                .unwrap()
                .is_some_and(|r| r.state.is_active()),
            None => false,
        };
        if reached && !ended && attempt.exited().is_none() {
            attempt.child.kill().expect("SIGKILL syncd");
            attempt.wait();
            let run = match report.run_id {
                Some(id) => setup.store.load_run(None, id).await.unwrap(),
                None => setup.active_run().await,
            };
            if let Some(run) = &run {
                report.saw(run.id);
                if !run.state.is_active() {
                    report.late += 1;
                    return report;
                }
            }
            report.kills += 1;
            let step = setup.current_step().await;
            match report.kills_by_step.last_mut() {
                Some((last, count)) if *last == step => *count += 1,
                _ => report.kills_by_step.push((step, 1)),
            }
            moment = pending.next();
            continue;
        }
        let status = attempt.wait();
        if status.success() {
            report.saw(attempt.run_id().expect("the run id on stdout"));
            let out = attempt.stdout();
            assert!(out.contains("succeeded"), "{out}");
            return report;
        }
        let stderr = attempt.stderr();
        assert!(
            stderr.contains(BUSY),
            "attempt {} exited with {status} after {:?} and not because the run was busy:\n{stderr}",
            setup.spawned,
            started.elapsed()
        );
        report.busy += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The id in the target of each source id, for one entity type; every
/// source id must be mapped.
async fn target_ids(store: &Store, entity: &str, source_ids: &[String]) -> HashMap<String, String> {
    let scope = EntityScope::new(TENANT, INTEGRATION, entity);
    let found = store.lookup(&scope, Side::Source, source_ids).await.unwrap();
    assert_eq!(
        found.len(),
        source_ids.len(),
        "{entity}: source ids without a mapping"
    );
    found
        .into_iter()
        .map(|(k, m)| {
            assert_eq!(
                m.status,
                MappingStatus::Mapped,
                "{entity} {k}: {:?}",
                m.last_error
            );
            (k, m.target_id.expect("a mapped mapping has a target id"))
        })
        .collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The target's rows of one entity, by id, after checking that they are
/// exactly the mapped ones: none missing, none extra, none twice.
fn exactly_mapped<'a>(
    entity: &str,
    rows: &'a [Value],
    map: &HashMap<String, String>,
) -> HashMap<&'a str, &'a Value> {
    let by_id: HashMap<&str, &Value> = rows.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
    assert_eq!(by_id.len(), rows.len(), "{entity}: a target id twice");
    let mapped: HashSet<&str> = map.values().map(String::as_str).collect();
    assert_eq!(
        mapped.len(),
        map.len(),
        "{entity}: two source records mapped to one target record"
    );
    let present: HashSet<&str> = by_id.keys().copied().collect();
    let missing: Vec<_> = mapped.difference(&present).take(5).collect();
    let extra: Vec<_> = present.difference(&mapped).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{entity}: target rows {} for {} mappings; missing {missing:?}, not mapped {extra:?}",
        rows.len(),
        map.len()
    );
    by_id
}

/// The end state of an uninterrupted run: the source as it was, every
/// source record once in the target with its fields and references
/// translated, every mapping `mapped`, and the run's counters exact.
async fn assert_synced_once(setup: &Setup, run_id: Uuid) {
    let (n, store) = (setup.n, &setup.store);
    support::assert_accounted(store, run_id).await;
    let accounts = setup.source.dump("accounts").await;
    let contacts = setup.source.dump("contacts").await;
    let orders = setup.source.dump("orders").await;
    assert_eq!(
        (accounts.len(), contacts.len(), orders.len()),
        (n, 2 * n, 3 * n),
        "the source gained or lost records"
    );
    let customers = setup.target.dump("customers").await;
    let people = setup.target.dump("people").await;
    let sales = setup.target.dump("sales_orders").await;
    assert_eq!((customers.len(), people.len(), sales.len()), (n, 2 * n, 3 * n));

    let account_map = target_ids(store, "account", &ids(&accounts)).await;
    let contact_map = target_ids(store, "contact", &ids(&contacts)).await;
    let order_map = target_ids(store, "order", &ids(&orders)).await;
    let customers_by_id = exactly_mapped("account", &customers, &account_map);
    let people_by_id = exactly_mapped("contact", &people, &contact_map);
    let sales_by_id = exactly_mapped("order", &sales, &order_map);
    let to_account = |v: &Value| v.as_str().map_or(Value::Null, |id| json!(account_map[id]));
    for a in &accounts {
        let t = customers_by_id[account_map[a["id"].as_str().unwrap()].as_str()];
        assert_eq!(t["customer_name"], a["name"], "{}", a["id"]);
        assert_eq!(t["industry"], a["industry"], "{}", a["id"]);
        assert_eq!(
            t["parent_id"],
            to_account(&a["parent_id"]),
            "parent of {}",
            a["id"]
        );
    }
    for c in &contacts {
        let t = people_by_id[contact_map[c["id"].as_str().unwrap()].as_str()];
        assert_eq!(t["full_name"], c["name"], "{}", c["id"]);
        assert_eq!(t["email"], c["email"], "{}", c["id"]);
        assert_eq!(t["customer_id"], to_account(&c["account_id"]), "{}", c["id"]);
    }
    for o in &orders {
        let t = sales_by_id[order_map[o["id"].as_str().unwrap()].as_str()];
        assert_eq!(t["customer_id"], to_account(&o["account_id"]), "{}", o["id"]);
        assert_eq!(
            t["contact_id"],
            json!(contact_map[o["contact_id"].as_str().unwrap()]),
            "{}",
            o["id"]
        );
        assert_eq!(t["total"].as_f64(), o["total"].as_f64(), "{}", o["id"]);
        assert_eq!(t["status"], o["status"], "{}", o["id"]);
    }

    let counts = store
        .mapping_counts(&TENANT.into(), &INTEGRATION.into())
        .await
        .unwrap();
    assert!(
        counts
            .iter()
            .all(|(_, status, _)| *status == MappingStatus::Mapped),
        "{counts:?}"
    );
    assert_eq!(
        counts.iter().map(|(_, _, k)| *k).sum::<u64>(),
        6 * n as u64,
        "{counts:?}"
    );

    // Counters are checkpointed with the work, so a page done twice (once
    // before a kill, once after) counts once.
    let run = store.load_run(None, run_id).await.unwrap().expect("the run");
    assert_eq!(run.state, RunState::Succeeded);
    let steps = store.load_steps(run_id).await.unwrap();
    assert!(steps.iter().all(|s| s.state == StepState::Done), "{steps:?}");
    let created = |direction| -> u64 {
        steps
            .iter()
            .filter(|s| s.direction == direction)
            .map(|s| s.counters.created)
            .sum()
    };
    assert_eq!(created(StepDirection::Forward), 6 * n as u64, "{steps:?}");
    assert_eq!(created(StepDirection::Backward), 0, "{steps:?}");
    assert!(steps.iter().all(|s| s.counters.failed == 0), "{steps:?}");
}

/// A further `syncd run` finds nothing to write, as after an uninterrupted
/// run: no pending mapping, no base snapshot out of step.
async fn assert_nothing_left(setup: &mut Setup) {
    let mut attempt = setup.spawn();
    let status = attempt.wait();
    assert!(status.success(), "{}", attempt.stderr());
    let run_id = attempt.run_id().expect("the run id on stdout");
    let steps = setup.store.load_steps(run_id).await.unwrap();
    let writes: u64 = steps
        .iter()
        .map(|s| s.counters.created + s.counters.updated)
        .sum();
    assert_eq!(writes, 0, "{steps:?}");
}

/// Kills `syncd run` at up to `moments_count` moments (`at_least` of them
/// must find the run still going) over a run of `n` accounts' worth of
/// records on `kind` systems and store, then checks the end state.
async fn survives_kills(kind: Kind, n: usize, moments_count: usize, at_least: usize, label: &str) {
    let Some(mut setup) = Setup::new(kind, n, label).await else {
        return;
    };
    let seed = seed();
    let mut rng = Rng(seed);
    // Records read by a whole run: each entity once per direction, and the
    // accounts once more to patch parents written after their children.
    // Kills stop short of the end, so that each one finds the run going.
    let total_reads = 13 * n as u64;
    let moments = moments(&mut rng, moments_count, total_reads * 4 / 5, 300);
    let started = Instant::now();
    let report = run_with_kills(&mut setup, &moments).await;
    eprintln!(
        "{label}: seed {seed}: {} records, {} kills, {} busy restarts, {} processes, {:?}; kills by step: {:?}",
        6 * n,
        report.kills,
        report.busy,
        setup.spawned,
        started.elapsed(),
        report.kills_by_step
    );
    assert!(
        report.kills >= at_least,
        "seed {seed}: only {} kills hit the run before it ended, {at_least} wanted ({report:?})",
        report.kills
    );
    assert!(
        report.busy > 0,
        "a restart right after a kill finds the lease held: {report:?}"
    );
    let run_id = report.run_id.expect("the run the processes worked on");
    assert_synced_once(&setup, run_id).await;
    assert_nothing_left(&mut setup).await;
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_run_killed_twenty_times_ends_as_if_uninterrupted() {
    survives_kills(Kind::Sqlite, 3400, 24, 20, "crash-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_killed_five_times_ends_as_if_uninterrupted() {
    survives_kills(Kind::Postgres, 500, 7, 5, "crash-pg").await;
}

/// MariaDB as source and target (the state in PostgreSQL): ten kills and
/// more, inside its multi-row inserts and updates too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_run_killed_ten_times_ends_as_if_uninterrupted() {
    survives_kills(Kind::Mariadb, 1000, 14, 10, "crash-mariadb").await;
}

/// Whether a `COPY` sent by a connection named `app` is executing.
async fn copy_active(store_url: &str, app: &str) -> bool {
    let pool = sqlx::PgPool::connect(store_url).await.expect("PostgreSQL");
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' \
         AND query LIKE 'COPY %'",
    )
    .bind(app)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    active > 0
}

/// The first load into a PostgreSQL target is written by `COPY`: SIGKILLs
/// that land while a `COPY` of a page is executing (a row trigger makes
/// each take a while) leave no duplicate and no lost record. (The killed
/// page's records were reserved, so the next process writes them by its
/// retry pass; a COPY that meets an id already there falls back to the
/// upsert: `a_create_repeated_after_a_crash_overwrites_and_duplicates_nothing`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_run_killed_inside_copy_ends_as_if_uninterrupted() {
    let Some(mut setup) = Setup::new(Kind::Postgres, 300, "crash-copy").await else {
        return;
    };
    // The target's connections carry a name of their own, so that this
    // test sees its own COPY among every test's.
    let app = format!("syncd-crash-copy-{}", Uuid::new_v4().simple());
    let target_url = format!("{}&application_name={app}", setup.target.url());
    let toml = workflow_toml(
        INTEGRATION,
        "bidirectional",
        &setup.source.url(),
        &target_url,
        &[],
    );
    std::fs::write(&setup.workflow, toml).unwrap();
    setup
        .target
        .exec(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION slow_row();
             CREATE TRIGGER slow BEFORE INSERT ON people FOR EACH ROW EXECUTE FUNCTION slow_row();
             CREATE TRIGGER slow BEFORE INSERT ON sales_orders FOR EACH ROW EXECUTE FUNCTION slow_row();",
        )
        .await;
    let seed = seed();
    let mut rng = Rng(seed);
    let (mut inside, mut busy) = (0, 0);
    let run_id = loop {
        let mut attempt = setup.spawn();
        let mut killed = false;
        // Up to three kills, each in a COPY of a page not written before.
        while inside < 3 && attempt.exited().is_none() {
            if copy_active(&setup.database_url, &app).await {
                tokio::time::sleep(Duration::from_millis(rng.range(0, 150))).await;
                if copy_active(&setup.database_url, &app).await && attempt.exited().is_none() {
                    attempt.child.kill().expect("SIGKILL syncd");
                    attempt.wait();
                    inside += 1;
                    killed = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if killed {
            continue;
        }
        let status = attempt.wait();
        if status.success() {
            break attempt.run_id().expect("the run id on stdout");
        }
        let stderr = attempt.stderr();
        assert!(stderr.contains(BUSY), "exited with {status}:\n{stderr}");
        busy += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("crash-copy: seed {seed}: {inside} kills inside COPY, {busy} busy restarts");
    assert_eq!(
        inside, 3,
        "seed {seed}: three SIGKILLs landed while a COPY executed"
    );
    assert_synced_once(&setup, run_id).await;
    assert_nothing_left(&mut setup).await;
    setup.drop().await;
}

/// Two `syncd run` processes started together on `kind` systems and store.
async fn two_processes(kind: Kind, n: usize, label: &str) {
    let Some(mut setup) = Setup::new(kind, n, label).await else {
        return;
    };
    let mut first = setup.spawn();
    let mut second = setup.spawn();
    let (a, b) = (first.wait(), second.wait());
    let (winner, loser) = match (a.success(), b.success()) {
        (true, false) => (&first, &second),
        (false, true) => (&second, &first),
        _ => panic!(
            "exactly one process executes the run; exits {a} and {b}:\n{}\n{}\n{}\n{}",
            first.stdout(),
            first.stderr(),
            second.stdout(),
            second.stderr()
        ),
    };
    let run_id = winner.run_id().expect("the run id on stdout");
    assert!(
        winner.stdout().contains(&format!("run {run_id} succeeded")),
        "{}",
        winner.stdout()
    );
    // Both processes found or made the same run; the loser names it and who
    // holds it, and writes nothing.
    assert_eq!(loser.run_id(), Some(run_id), "{}", loser.stdout());
    let stderr = loser.stderr();
    assert!(
        stderr.contains(&format!("error: run {run_id} {BUSY} `")) && stderr.contains("try again later"),
        "{stderr}"
    );
    // The other process's steps, half done, are not printed as its own.
    assert!(!loser.stdout().contains("stage entity"), "{}", loser.stdout());
    let runs = setup
        .store
        .list_runs(&syncd_store::RunFilter {
            tenant: Some(TENANT.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "one run for both processes: {runs:?}");
    assert_synced_once(&setup, run_id).await;
    setup.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_run_one_executes_the_other_says_busy() {
    two_processes(Kind::Sqlite, 1000, "crash-pair").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_run_one_executes_the_other_says_busy() {
    two_processes(Kind::Postgres, 500, "crash-pair-pg").await;
}

/// The lease knob the tests above rely on refuses what it cannot use, by
/// name, before touching the run.
#[tokio::test]
async fn a_lease_ttl_that_is_not_whole_seconds_is_refused() {
    let setup = Setup::new(Kind::Sqlite, 1, "crash-ttl").await.unwrap();
    for bad in ["0", "1.5", "soon"] {
        let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .arg("run")
            .arg(&setup.workflow)
            .args(["--tenant", TENANT])
            .env("SYNCD_DATABASE_URL", &setup.database_url)
            .env("SYNCD_LEASE_TTL_SECS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("error: SYNCD_LEASE_TTL_SECS `{bad}` is not a whole number of seconds above 0")
        );
    }
    assert!(setup.active_run().await.is_none(), "no run was started");
    setup.drop().await;
}

/// A worker killed after reserving a page and before confirming it leaves
/// `pending` mappings; the run that continues creates those records again
/// (safely: same ids) and must treat a parent of the same page, still
/// pending, as it treated it the first time — write the child, patch the
/// parent in — rather than fail the child for a "missing parent".
#[tokio::test]
async fn pending_parents_left_by_a_kill_do_not_fail_their_children() {
    let dir = TempDir::new("crash-pending");
    let source = SystemDb::with_tables(Kind::Sqlite, &dir, "source").await.unwrap();
    let target = SystemDb::with_tables(Kind::Sqlite, &dir, "target").await.unwrap();
    // A chain: each account's parent is the one before it, in the same page.
    let accounts: Vec<Value> = (0..10)
        .map(|i| {
            let parent = (i > 0).then(|| format!("A-{}", i - 1));
            json!({"id": format!("A-{i}"), "name": format!("Account {i}"), "industry": "x",
                   "parent_id": parent, "updated_at": support::systems::ts(i)})
        })
        .collect();
    source.insert("accounts", &accounts).await;
    let store = std::sync::Arc::new(
        Store::connect(
            &StoreConfig::new(dir.sqlite_url("state.db")),
            MappingCache::local(),
        )
        .await
        .unwrap(),
    );
    // What the killed worker's reservation committed.
    let scope = EntityScope::new(TENANT, INTEGRATION, "account");
    let now = chrono::Utc::now();
    let reserved = ids(&accounts)
        .into_iter()
        .map(|id| {
            syncd_store::MappingWrite::Insert(syncd_core::mapping::IdMapping::reserve(
                Uuid::new_v4(),
                scope.clone(),
                Some(id.clone()),
                None,
                format!("fwd:killed-{id}"),
                now,
            ))
        })
        .collect();
    store
        .commit_page(syncd_store::PageCommit {
            mappings: reserved,
            ..Default::default()
        })
        .await
        .unwrap();

    let toml = workflow_toml(INTEGRATION, "one_way", &source.url(), &target.url(), &[]);
    let run = support::systems::sync_once(store.clone(), &toml, 500)
        .await
        .unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let map = target_ids(&store, "account", &ids(&accounts)).await;
    let customers = target.dump("customers").await;
    let by_id = exactly_mapped("account", &customers, &map);
    for a in &accounts {
        let parent = a["parent_id"].as_str().map_or(Value::Null, |p| json!(map[p]));
        assert_eq!(
            by_id[map[a["id"].as_str().unwrap()].as_str()]["parent_id"],
            parent,
            "{}",
            a["id"]
        );
    }
}

/// A delete pass killed at random moments (while it reconciles, counts and
/// deletes) and started again ends as an uninterrupted one: exactly the
/// deleted source records are gone from the target, their mappings are
/// tombstones, the rest is untouched, and a further run deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_pass_killed_twelve_times_ends_as_if_uninterrupted() {
    let n = 2500;
    let Some(mut setup) = Setup::new(Kind::Sqlite, n, "crash-deletes").await else {
        return;
    };
    // Reconcile on every run, and no brake for this many deletions.
    let toml = std::fs::read_to_string(&setup.workflow).unwrap();
    let policy = "reconcile_every = \"0s\"\ndelete_brake = { percent = 100, max = 1000000 }\n";
    let toml = ["customers", "people", "sales_orders"]
        .iter()
        .fold(toml, |t, table| {
            let line = format!("target_table = \"{table}\"\n");
            t.replace(&line, &format!("{line}{policy}"))
        });
    std::fs::write(&setup.workflow, toml).unwrap();
    let first = run_with_kills(&mut setup, &[]).await;
    assert_synced_once(&setup, first.run_id.unwrap()).await;

    let before = (
        setup.target.dump("customers").await,
        setup.target.dump("people").await,
        setup.target.dump("sales_orders").await,
    );
    let scope = |e: &str| EntityScope::new(TENANT, INTEGRATION, e);
    let all_orders = ids(&setup.source.dump("orders").await);
    let all_contacts = ids(&setup.source.dump("contacts").await);
    let order_map = target_ids(&setup.store, "order", &all_orders).await;
    let contact_map = target_ids(&setup.store, "contact", &all_contacts).await;
    // A third of the orders and a quarter of the contacts go.
    setup
        .source
        .exec(
            "DELETE FROM orders WHERE CAST(substr(id, 3) AS INTEGER) % 3 = 0;
             DELETE FROM contacts WHERE CAST(substr(id, 3) AS INTEGER) % 4 = 0;",
        )
        .await;
    let kept_orders: HashSet<String> = ids(&setup.source.dump("orders").await).into_iter().collect();
    let kept_contacts: HashSet<String> = ids(&setup.source.dump("contacts").await).into_iter().collect();

    let seed = seed();
    let mut rng = Rng(seed ^ 0xde1e7e);
    // Reads of the delete run: the reconciliation passes over every mapping.
    // Reconciliation reads in pages of 5,000 and runs fast: a kill often
    // lands after its step, so more moments than the ten kills asserted.
    let moments = moments(&mut rng, 24, 6 * n as u64 * 4 / 5, 150);
    let report = run_with_kills(&mut setup, &moments).await;
    eprintln!(
        "crash-deletes: seed {seed}: {} kills, {} busy restarts; kills by step: {:?}",
        report.kills, report.busy, report.kills_by_step
    );
    assert!(
        report.kills >= 10,
        "seed {seed}: only {} kills hit the run ({report:?})",
        report.kills
    );
    let run = setup
        .store
        .load_run(None, report.run_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.state, RunState::Succeeded);

    let fresh = Store::connect(&StoreConfig::new(&setup.database_url), MappingCache::disabled())
        .await
        .unwrap();
    // Exactly the deleted records are gone from the target.
    for (entity, all, kept, map, rows_before, table) in [
        (
            "order",
            &all_orders,
            &kept_orders,
            &order_map,
            &before.2,
            "sales_orders",
        ),
        (
            "contact",
            &all_contacts,
            &kept_contacts,
            &contact_map,
            &before.1,
            "people",
        ),
    ] {
        let expected: HashSet<String> = ids(rows_before)
            .into_iter()
            .filter(|t| all.iter().any(|s| kept.contains(s) && map[s] == *t))
            .collect();
        let now: Vec<String> = ids(&setup.target.dump(table).await);
        assert_eq!(now.len(), expected.len(), "{entity}: seed {seed}");
        assert_eq!(
            now.into_iter().collect::<HashSet<_>>(),
            expected,
            "{entity}: seed {seed}"
        );
        // Read past the test's own in-process cache, which holds the
        // mappings as they were before the other processes' run.
        let mappings = fresh.lookup(&scope(entity), Side::Source, all).await.unwrap();
        for s in all {
            let m = &mappings[s];
            if kept.contains(s) {
                assert_eq!(m.status, MappingStatus::Mapped, "{entity} {s}");
            } else {
                assert_eq!(m.status, MappingStatus::Stale, "{entity} {s}");
                assert_eq!(
                    m.last_error.as_deref(),
                    Some("source record deleted: target deleted")
                );
                assert_eq!(
                    m.target_id.as_deref(),
                    Some(map[s].as_str()),
                    "tombstone keeps both ids"
                );
            }
        }
    }
    assert_eq!(setup.target.dump("customers").await, before.0);
    let steps = setup.store.load_steps(run.id).await.unwrap();
    let deleted = |entity: &str| {
        steps
            .iter()
            .find(|s| s.direction == StepDirection::Delete && s.entity_type.as_str() == entity)
            .map(|s| s.counters.deleted)
    };
    assert_eq!(
        deleted("order"),
        Some((all_orders.len() - kept_orders.len()) as u64)
    );
    assert_eq!(
        deleted("contact"),
        Some((all_contacts.len() - kept_contacts.len()) as u64)
    );

    // And once more: nothing to delete, nothing to write.
    let mut attempt = setup.spawn();
    assert!(attempt.wait().success(), "{}", attempt.stderr());
    let again = setup.store.load_steps(attempt.run_id().unwrap()).await.unwrap();
    assert!(
        again
            .iter()
            .all(|s| s.counters.deleted + s.counters.created + s.counters.updated == 0),
        "{again:?}"
    );
    setup.drop().await;
}
