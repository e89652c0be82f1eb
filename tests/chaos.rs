//! Chaos: PostgreSQL instances of the test's own (initdb into a temp dir,
//! on a free port, so other tests are not disturbed), restarted and
//! stopped under one `syncd run` of 20,004 records in three stages. The run
//! waits each fault out and exits 0 with every record once, no mapping
//! failed, and the password of the URLs in no line it printed; a further run
//! writes nothing.

use syncd_test_support as support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::TempDir;
use support::systems::{SOURCE_PG, TARGET_PG, crm_rows, workflow_toml};

const PASSWORD: &str = "ChaosSecret";

/// A PostgreSQL server of the test's own, stopped and removed on drop.
struct Instance {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Instance {
    /// `initdb` and start, as the `postgres` user when the test runs as
    /// root (PostgreSQL refuses root). `None` (a skip, a failure under CI)
    /// without PostgreSQL's server binaries.
    fn start(dir: &Path, name: &str) -> Option<Instance> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            return support::missing(
                "PostgreSQL's server binaries (initdb)",
                "not under /usr/lib/postgresql",
            );
        };
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let instance = Instance {
            bin,
            data: home.join("data"),
            log: home.join("log"),
            port,
        };
        if root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        instance.pg(
            "initdb",
            &[
                "-D",
                instance.data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        instance.ctl(&["start"]);
        Some(instance)
    }

    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl VERB` (start, stop, restart), waiting for it.
    fn ctl(&self, verb_and_mode: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off -c max_connections=60",
            self.port
        );
        let mut args = verb_and_mode.to_vec();
        args.extend([
            "-w",
            "-D",
            self.data.to_str().unwrap(),
            "-l",
            self.log.to_str().unwrap(),
            "-o",
            &options,
        ]);
        self.pg("pg_ctl", &args);
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    async fn pool(&self, database: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url(database))
            .await
            .unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.ctl(&["stop", "-m", "immediate"]));
    }
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn create(db: &sqlx::PgPool, tables: &str, rows: &[(&str, &[Value])]) {
    sqlx::raw_sql(tables).execute(db).await.unwrap();
    for (table, rows) in rows {
        for chunk in rows.chunks(2_000) {
            sqlx::query(&format!(
                "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
            ))
            .bind(sqlx::types::Json(chunk))
            .execute(db)
            .await
            .unwrap();
        }
    }
}

/// Records created so far by the run, as the state store says, or `None`
/// while it cannot be asked.
async fn created(state_url: &str) -> Option<i64> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(state_url)
        .await
        .ok()?;
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(sum((counters->>'created')::bigint), 0)::bigint FROM steps")
        .fetch_one(&mut conn)
        .await
        .ok()
}

/// Waits until the run has created `at_least` records (or ended).
async fn wait_for_progress(child: &mut Child, state_url: &str, at_least: i64) {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        if created(state_url).await.is_some_and(|n| n >= at_least) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress to {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Scenario {
    dir: TempDir,
    workflow: PathBuf,
    state_url: String,
    runs: usize,
}

impl Scenario {
    fn spawn(&mut self) -> (Child, PathBuf, PathBuf) {
        self.runs += 1;
        let out = self.dir.0.join(format!("run-{}.out", self.runs));
        let err = self.dir.0.join(format!("run-{}.err", self.runs));
        let child = support::spawn_syncd_run(
            &self.workflow,
            "t1",
            &self.state_url,
            &[("SYNCD_RETRY_FOR", "5m"), ("SYNCD_LOG", "warn")],
            &out,
            &err,
        );
        (child, out, err)
    }

    /// Waits for `child` and checks what a successful run must leave.
    async fn finished(
        &self,
        mut child: Child,
        out: &Path,
        err: &Path,
        target: &sqlx::PgPool,
        records: usize,
    ) {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let printed = format!(
            "{}{}",
            std::fs::read_to_string(out).unwrap(),
            std::fs::read_to_string(err).unwrap()
        );
        assert!(status.success(), "{status}: {printed}");
        assert!(!printed.contains(PASSWORD), "a password was printed: {printed}");
        assert!(printed.contains("succeeded"), "{printed}");
        // The faults were met: waited out with a line each, or, when a
        // restart came between two statements, seen by the run's
        // connections as they were cut (the pool then opened new ones).
        assert!(
            printed.contains("transient fault") || printed.contains("terminating connection due to"),
            "{printed}"
        );
        support::assert_table_accounted(&printed);
        let mut held = 0;
        for table in ["customers", "people", "sales_orders"] {
            held += sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(target)
                .await
                .unwrap() as usize;
        }
        assert_eq!(held, records, "every record once");
        let state = <sqlx::PgConnection as sqlx::Connection>::connect(&self.state_url).await;
        let mut state = state.unwrap();
        let not_mapped: i64 = sqlx::query_scalar("SELECT count(*) FROM id_mappings WHERE status <> 'mapped'")
            .fetch_one(&mut state)
            .await
            .unwrap();
        assert_eq!(not_mapped, 0, "no mapping failed (or left pending) for a fault");
        let mapped: i64 = sqlx::query_scalar("SELECT count(*) FROM id_mappings")
            .fetch_one(&mut state)
            .await
            .unwrap();
        assert_eq!(mapped as usize, records);
    }

    /// A further run writes nothing.
    async fn writes_nothing_again(&mut self) {
        let (mut child, out, _) = self.spawn();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let stdout = std::fs::read_to_string(out).unwrap();
        assert!(status.success(), "{stdout}");
        let writes: u64 = stdout
            .lines()
            .skip_while(|l| !l.starts_with("stage"))
            .skip(1)
            .take_while(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells[5].parse::<u64>().unwrap() + cells[6].parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(writes, 0, "{stdout}");
    }
}

async fn setup(label: &str, home: &Instance, target: &Instance) -> (Scenario, sqlx::PgPool, usize) {
    let admin = home.pool("postgres").await;
    for db in ["state", "crm"] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    let target_admin = target.pool("postgres").await;
    sqlx::query("CREATE DATABASE erp")
        .execute(&target_admin)
        .await
        .unwrap();
    let (accounts, contacts, orders) = crm_rows(3_334);
    let records = accounts.len() + contacts.len() + orders.len();
    assert!(records >= 20_000);
    create(
        &home.pool("crm").await,
        SOURCE_PG,
        &[
            ("accounts", &accounts),
            ("contacts", &contacts),
            ("orders", &orders),
        ],
    )
    .await;
    let erp = target.pool("erp").await;
    create(&erp, TARGET_PG, &[]).await;
    let dir = TempDir::new(label);
    let workflow = dir.0.join("chaos.toml");
    std::fs::write(
        &workflow,
        workflow_toml("chaos", "one_way", &home.url("crm"), &target.url("erp"), &[]),
    )
    .unwrap();
    let scenario = Scenario {
        dir,
        workflow,
        state_url: home.url("state"),
        runs: 0,
    };
    (scenario, erp, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlives_three_restarts_of_its_postgresql() {
    let dir = TempDir::new("chaos-restarts");
    let Some(pg) = Instance::start(&dir.0, "pg") else {
        return;
    };
    let (mut scenario, target, records) = setup("chaos-restarts-run", &pg, &pg).await;
    // Three moments at random (SYNCD_CHAOS_SEED repeats a draw), one
    // restart of each kind and one of either.
    let seed: u64 = std::env::var("SYNCD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: SYNCD_CHAOS_SEED={seed}");
    let mut state = seed | 1;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut moments: Vec<i64> = (0..3).map(|_| 500 + next(13_500) as i64).collect();
    moments.sort_unstable();
    let modes = ["fast", "immediate", ["fast", "immediate"][next(2) as usize]];
    let (mut child, out, err) = scenario.spawn();
    for (at, mode) in moments.into_iter().zip(modes) {
        wait_for_progress(&mut child, &scenario.state_url, at).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the restart at {at}"
        );
        pg.ctl(&["restart", "-m", mode]);
    }
    scenario.finished(child, &out, &err, &target, records).await;
    scenario.writes_nothing_again().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waits_forty_seconds_for_its_target_database() {
    let dir = TempDir::new("chaos-target");
    let Some(home) = Instance::start(&dir.0, "home") else {
        return;
    };
    let Some(erp) = Instance::start(&dir.0, "erp") else {
        return;
    };
    let (mut scenario, target, records) = setup("chaos-target-run", &home, &erp).await;
    let (mut child, out, err) = scenario.spawn();
    wait_for_progress(&mut child, &scenario.state_url, 6_000).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the target went down"
    );
    erp.ctl(&["stop", "-m", "fast"]);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run waits for its target"
    );
    erp.ctl(&["start"]);
    scenario.finished(child, &out, &err, &target, records).await;
    scenario.writes_nothing_again().await;
}

/// A target down for longer than the run's retry budget: the run fails,
/// and its error says why in the database's own words (the pool that timed
/// out kept no reason) and how to go on. Once the target is back, `runs
/// resume` finishes the run from its checkpoints with every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_target_stays_down_fails_saying_why_and_resumes_once_it_is_back() {
    let dir = TempDir::new("chaos-down");
    let Some(home) = Instance::start(&dir.0, "home") else {
        return;
    };
    let Some(erp) = Instance::start(&dir.0, "erp") else {
        return;
    };
    let (mut scenario, target, records) = setup("chaos-down-run", &home, &erp).await;
    scenario.runs += 1;
    let (out, err) = (scenario.dir.0.join("down.out"), scenario.dir.0.join("down.err"));
    let mut child = support::spawn_syncd_run(
        &scenario.workflow,
        "t1",
        &scenario.state_url,
        &[("SYNCD_RETRY_FOR", "5s"), ("SYNCD_LOG", "warn")],
        &out,
        &err,
    );
    wait_for_progress(&mut child, &scenario.state_url, 6_000).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the target went down"
    );
    erp.ctl(&["stop", "-m", "fast"]);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(&err).unwrap()
    );
    assert!(!status.success(), "{printed}");
    let run_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("run ").and_then(|r| r.split_whitespace().next()))
        .unwrap()
        .to_owned();
    let shown = Command::new(support::syncd_bin())
        .args(["runs", "show", &run_id])
        .env("SYNCD_DATABASE_URL", &scenario.state_url)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("state       failed"), "{shown}");
    assert!(
        shown.contains("system `erp`: ") && shown.to_lowercase().contains("connection refused"),
        "the database's own reason: {shown}"
    );
    assert!(
        shown.contains(&format!(
            "once it is back, `syncd runs resume {run_id}` goes on from the last checkpoint"
        )),
        "{shown}"
    );
    erp.ctl(&["start"]);
    let resumed = Command::new(support::syncd_bin())
        .args(["runs", "resume", &run_id, "--workflows"])
        .arg(&scenario.dir.0)
        .env("SYNCD_DATABASE_URL", &scenario.state_url)
        .env_remove("SYNCD_REDIS_URL")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success() && said.contains("succeeded"), "{said}");
    let mut held = 0;
    for table in ["customers", "people", "sales_orders"] {
        held += sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&target)
            .await
            .unwrap() as usize;
    }
    assert_eq!(held, records, "every record once");
}
